//! rill's data plane: a node's listeners, its connections, one handler per
//! Kafka API, and the partition replicas they read and write.
//!
//! # Layout
//! - [`server`]: [`start`] a node (data dir, controller, replicas,
//!   listeners) and [`RunningBroker::shutdown`] it; [`Broker`], the state
//!   every connection shares.
//! - `connection`: one client connection — frames in, the ordered part of
//!   each request, answers written in request order (Produce and Fetch wait
//!   off the connection's path).
//! - `handlers`: one module per Kafka API with the same shape:
//!   `handle(broker, version, request) -> response`.
//! - [`disk`]: the threads that do partitions' disk work (appends, file
//!   work, fsyncs), each partition on one of them, so that the async
//!   workers never wait on a disk.
//! - [`replica`], with [`replica::Partition`] (log, leader epoch, high
//!   watermark, idempotent producers' state) and [`replica::ReplicaManager`],
//!   kept in step with the controller's metadata image.
//! - [`group`]: the group coordinator — consumer groups (Kafka's classic
//!   protocol) and committed offsets, kept in `__consumer_offsets`.
//! - `producer_ids`: producer ids for InitProducerId, from blocks the
//!   controller allocates.
//! - `errors`: storage and controller errors → Kafka error codes; the only
//!   place that mapping lives.
//! - `http`: the HTTP port, `/health` and `/metrics`.
//! - `metrics`: the Prometheus metrics `/metrics` serves: counted as
//!   requests are answered, or read from the broker's state when scraped.
//! - [`config`]: [`BrokerConfig`], every setting with its default.
//! - [`topic_config`]: topic configs → the storage `LogConfig` each
//!   partition's log uses, and back.
//!
//! **Architecture Invariant:** handlers read metadata only from the image
//! the controller committed, and change it only by proposing commands to
//! the controller; no handler writes metadata anywhere else.

pub mod config;
mod connection;
pub mod disk;
mod errors;
pub mod group;
mod handlers;
mod http;
pub mod metadata;
mod metrics;
mod peer;
mod producer_ids;
mod record_codec;
pub mod replica;
mod replication;
pub mod server;
pub mod topic_config;
pub mod txn;

pub use config::BrokerConfig;
pub use server::{start, Broker, RunningBroker, StartError};
