//! `rill-storage`: the partition log.
//!
//! A partition is a directory of segments; each segment is a `.log` file of
//! Kafka record batches (magic v2, byte for byte as produced, with the
//! broker-assigned base offset and leader epoch) and two sparse indexes. This
//! crate appends, reads, recovers, truncates, retains and compacts such logs.
//!
//! **Architecture Invariant:** this crate knows nothing of Kafka APIs,
//! networking or Raft. It returns its own [`StorageError`]; only the broker
//! turns errors into Kafka error codes. Time comes from a
//! [`rill_types::Clock`].
//!
//! # Layout
//! - [`batch`]: the v2 batch header, validation, in-place edits.
//! - [`records`]: the records inside a batch, and [`records::BatchBuilder`].
//! - [`compression`]: gzip, snappy, lz4 and zstd as Kafka frames them.
//! - [`config`]: [`LogConfig`], the topic-level settings of a log.
//! - `index`, `segment`: the sparse indexes and one segment file.
//! - [`log`]: [`Log`], the partition log itself (append, read, offsets,
//!   flush with group commit, truncation, retention).
//! - `cleaner`: compaction: a log's [`Dirtiness`], one cleaning pass
//!   ([`Log::clean`]) with its bounded key map, and [`Log::compact`].
//! - [`epoch`]: the leader-epoch cache.
//! - [`producer_state`]: producers' epochs, last batches and ongoing
//!   transactions per partition, the sequence and transaction rules, and
//!   its snapshots (the caller holds a lock across check, append and
//!   record).
//! - [`txn`]: transaction markers (control batches) and the entries of the
//!   aborted-transaction index (`.txnindex`, kept per segment by [`Log`]).
//! - [`manager`]: [`LogManager`], all logs of a data directory and their
//!   checkpoints.
//! - [`files`]: the bounded cache of open segment files.
//! - `checkpoint`: atomic replacement of small text files.

pub mod batch;
mod checkpoint;
mod cleaner;
pub mod compression;
pub mod config;
pub mod epoch;
pub mod error;
pub mod files;
mod index;
pub mod log;
pub mod manager;
pub mod producer_state;
pub mod records;
mod segment;
pub mod txn;

pub use batch::{BatchHeader, Compression, ProducerFields, TimestampType};
pub use checkpoint::{write_atomically, write_atomically_with};
pub use cleaner::{
    CleanBounds, CleanerStats, Dirtiness, ProducerTail, DEDUPE_BUFFER_BYTES_DEFAULT,
};
pub use config::{CleanupPolicy, LogConfig};
pub use epoch::{EpochEndOffset, EpochEntry};
pub use error::{CorruptBatch, InvalidRecord, Result, StorageError};
pub use files::FileCache;
pub use log::{
    AppendInfo, FileRegion, FlushObserver, Log, LogOpenOptions, ReadInfo, TimestampOffset,
    Writeback,
};
pub use manager::{CleanerRound, LogManager, LogManagerConfig};
pub use txn::{AbortedTxn, ControlType, EndTxnMarker};
