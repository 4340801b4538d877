//! rill's controller: the cluster metadata as a deterministic state machine,
//! run by a Raft group (openraft).
//!
//! # Layout
//! - [`state`]: [`MetadataCommand`], [`MetadataImage`] and [`apply`], the
//!   state machine itself: topics (by name and by id), partitions with their
//!   replicas, leader, leader epoch and ISR, topic and broker configs,
//!   registered brokers, and the next free producer id (blocks of ids go to
//!   brokers, which hand them to idempotent producers). No I/O, no clock,
//!   no randomness.
//! - [`config`]: which topic configs exist, what values they take
//!   (INVALID_CONFIG otherwise) and their defaults; which broker configs
//!   may change at run time.
//! - [`broker_config`]: the rest of Kafka's dynamic broker configs (listener
//!   SSL and SASL settings, thread pools, the log cleaner, …): their types
//!   and whether they may be set as the cluster-wide default.
//! - [`raft`]: the state machine run by openraft with this node as the only
//!   voter: the log store (one file per entry), the snapshot file, a network
//!   that has no peers, and [`Controller`], the handle the broker uses.
//!
//! **Architecture Invariant:** state is a deterministic function of the log.
//! Time and topic ids enter inside commands, chosen by the proposer; `apply`
//! reads no clock and draws no random numbers, so every replay of the log
//! (after a restart, or on another node) builds the same image.
//!
//! Log entries and snapshots are JSON (`serde_json`): the controller's log
//! is small and written rarely, so compactness buys nothing, while a file
//! one can `cat` is worth a lot when a cluster's metadata is in question;
//! JSON also tolerates added optional fields, which eases format changes.
//!
//! One process must open a data dir at a time; the broker's data-dir lock
//! covers the controller's directory inside it.
//!
//! **Architecture Invariant:** this crate knows nothing of the Kafka wire
//! protocol. Rejections are [`MetadataError`] variants named after the Kafka
//! errors the broker maps them to.

pub mod broker_config;
pub mod config;
pub mod raft;
pub mod state;

pub use raft::{Controller, ControllerError, ControllerOptions};
pub use state::{
    apply, check, ApplyOutcome, BrokerRegistration, ConfigResource, ElectionResult, ElectionType,
    MetadataCommand, MetadataError, MetadataImage, PartitionState, TopicId, TopicState,
};
