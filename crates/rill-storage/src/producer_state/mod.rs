//! Producer state for idempotent and transactional producers: for each
//! producer id seen in a partition, its epoch, the metadata of its last five
//! batches, its transaction coordinator's epoch and the first offset of its
//! ongoing transaction; the rules that decide whether a new batch is a retry
//! of one already in the log, the next in sequence, or to be refused; the
//! transactions that are open, which hold the last stable offset back; and
//! snapshots of the state, so that a restart replays only the log written
//! since the last snapshot.
//!
//! The rules are Kafka's (`ProducerStateManager`, `ProducerAppendInfo`,
//! `ProducerStateEntry` in Kafka's storage module):
//! - A batch with the producer's current epoch and the same first and last
//!   sequence as one of its last [`BATCHES_RETAINED`] batches is a
//!   duplicate: it is not appended again, and the caller answers with the
//!   offsets the original got.
//! - An epoch older than the producer's current one is refused
//!   ([`ProducerStateError::InvalidProducerEpoch`]).
//! - A newer epoch must start at sequence 0, unless the producer is unknown.
//! - Within an epoch, a batch must start right after the last one's last
//!   sequence ([`ProducerStateError::OutOfOrderSequence`]); sequences wrap
//!   from `i32::MAX` to 0.
//! - A producer this partition does not know (never seen, expired, or its
//!   batches deleted by retention before the last restart) may start at
//!   any sequence: Kafka stopped answering UNKNOWN_PRODUCER_ID in 2.5
//!   (KIP-360), because a producer cannot tell that case from data loss.
//! - A transactional batch from a producer without an ongoing transaction
//!   begins one at its first offset. A non-transactional batch from a
//!   producer with one is refused ([`ProducerStateError::InvalidTxnState`]).
//! - A transaction marker ([`crate::txn`]) ends the producer's ongoing
//!   transaction ([`ProducerStateManager::record_marker`], which yields a
//!   [`CompletedTxn`] if there was one). A marker with an older producer
//!   epoch is refused as a data batch is, and one from an older transaction
//!   coordinator epoch is a zombie's
//!   ([`ProducerStateError::TransactionCoordinatorFenced`]).
//! - The first offset of the oldest ongoing transaction is the partition's
//!   first unstable offset: read_committed consumers read no further.
//!
//! Producers idle for `producer.id.expiration.ms` are forgotten
//! ([`ProducerStateManager::expire`]), unless a transaction of theirs is
//! ongoing (Kafka's rule: only its coordinator may end it), and at most
//! [`ProducerStateConfig::producers_max`] are kept per partition; past
//! that, the longest idle without an ongoing transaction is forgotten to
//! make room (or, if every producer has one, the longest idle of all: a
//! bound on memory matters more than one open transaction, whose records
//! then count as stable).
//!
//! **Concurrency:** a [`ProducerStateManager`] is plain data. The caller
//! makes the check of a batch, its append to the log and its recording one
//! atomic step per partition; otherwise two copies of one retried batch
//! could both pass the check.
//!
//! This module knows nothing of Kafka's error codes; the broker maps
//! [`ProducerStateError`].
//!
//! # Snapshots
//! `<offset, 20 digits>.snapshot` in the partition's directory holds the
//! state after every batch below `offset`. At open ([`load`]) the newest
//! snapshot at or below the log end is read and the batches after it are
//! replayed from the log; a snapshot past the log end (a crash cut the
//! unflushed tail under it) is deleted. The replay reads the bytes of
//! control batches (a marker's type is in its record) and headers alone
//! for the rest, and puts each abort it replays into the log's
//! aborted-transaction index, which ignores one it already holds. The
//! format, all big-endian:
//!
//! ```text
//! version u16 (2)   crc u32 (CRC32C of everything after it)   producer_count u32
//! per producer:     producer_id i64  producer_epoch i16  last_append_ms i64
//!                   coordinator_epoch i32  current_txn_first_offset i64 (-1: none)
//!                   batch_count u8
//! per batch:        first_seq i32  last_seq i32  first_offset i64  last_offset i64  timestamp i64
//! ```
//!
//! Version 1, written before transactions, lacks the two transaction
//! fields; it still decodes, as producers without coordinator epoch (-1)
//! or ongoing transaction.
//!
//! # Layout
//! - `mod.rs`: the entries, the rules (check, record, markers) and the
//!   ongoing transactions.
//! - `snapshot`: the snapshot format and files.
//! - `load`: the state rebuilt at open from a snapshot and the log.

mod load;
mod snapshot;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};

use tracing::warn;

use crate::batch::BatchHeader;
use crate::txn::{AbortedTxn, ControlType, EndTxnMarker};

pub use load::{load, LoadReport};
pub use snapshot::{remove_snapshots_after, snapshot_offsets, write_snapshot, SnapshotError};

/// How many of a producer's latest batches are kept for duplicate
/// detection: the most a producer may have in flight with idempotence on
/// (`max.in.flight.requests.per.connection` <= 5), as in Kafka.
pub const BATCHES_RETAINED: usize = 5;
/// The epoch of a producer this partition has no state for.
pub const NO_PRODUCER_EPOCH: i16 = -1;
/// The sequence of a batch without one, and the last sequence of a
/// producer without batches.
pub const NO_SEQUENCE: i32 = -1;
/// The coordinator epoch of a producer no marker has been written for.
pub const NO_COORDINATOR_EPOCH: i32 = -1;
/// The suffix of snapshot files, after `<offset, 20 digits>.`.
pub const SNAPSHOT_SUFFIX: &str = "snapshot";
/// How many snapshot files are kept: the newest, and the one before in
/// case the newest cannot be used.
pub const SNAPSHOTS_KEPT: usize = 2;
/// Offsets replayed per read of the log at load, which bounds the batch
/// headers held in memory at once.
const REPLAY_OFFSETS_PER_READ: i64 = 64 * 1024;
const SNAPSHOT_VERSION: u16 = 2;
/// The version written before transactions, which still decodes.
const SNAPSHOT_VERSION_V1: u16 = 1;
const SNAPSHOT_HEADER_LEN: usize = 2 + 4 + 4;
const SNAPSHOT_PRODUCER_LEN_V1: usize = 8 + 2 + 8 + 1;
const SNAPSHOT_PRODUCER_LEN: usize = SNAPSHOT_PRODUCER_LEN_V1 + 4 + 8;
const SNAPSHOT_BATCH_LEN: usize = 4 + 4 + 8 + 8 + 8;

/// Settings of a partition's producer state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStateConfig {
    /// `producer.id.expiration.ms`: a producer that has not appended for
    /// this long is forgotten. Kafka's default is one day.
    pub producer_id_expiration_ms: i64,
    /// The most producers one partition remembers. Kafka has no such bound
    /// (KIP-936 throttles new ids instead); without one, a client inventing
    /// producer ids could fill the broker's memory before they expire.
    pub producers_max: usize,
}

impl ProducerStateConfig {
    pub const PRODUCER_ID_EXPIRATION_MS_DEFAULT: i64 = 24 * 60 * 60 * 1000;
    pub const PRODUCERS_MAX_DEFAULT: usize = 10_000;
}

impl Default for ProducerStateConfig {
    fn default() -> Self {
        Self {
            producer_id_expiration_ms: Self::PRODUCER_ID_EXPIRATION_MS_DEFAULT,
            producers_max: Self::PRODUCERS_MAX_DEFAULT,
        }
    }
}

/// Where one batch of a producer went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMetadata {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    /// The batch's max timestamp as stored (the append time under
    /// LogAppendTime).
    pub timestamp: i64,
}

/// What a partition knows about one producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    producer_epoch: i16,
    /// Oldest first; at most [`BATCHES_RETAINED`].
    batches: VecDeque<BatchMetadata>,
    /// The broker's time of the producer's last append, for expiry. Kafka
    /// uses the batch's own timestamp, which a producer with a slow clock
    /// (or replaying old data under CreateTime) sets far in the past, so
    /// that its state expires at once and a retry is appended twice.
    last_append_ms: i64,
    /// The epoch of the transaction coordinator that wrote the producer's
    /// last marker, or [`NO_COORDINATOR_EPOCH`].
    coordinator_epoch: i32,
    /// The first offset of the producer's ongoing transaction here.
    current_txn_first_offset: Option<i64>,
}

impl ProducerEntry {
    pub fn producer_epoch(&self) -> i16 {
        self.producer_epoch
    }

    /// The retained batches, oldest first.
    pub fn batches(&self) -> impl Iterator<Item = &BatchMetadata> {
        self.batches.iter()
    }

    /// The last sequence of the latest batch, or [`NO_SEQUENCE`].
    pub fn last_seq(&self) -> i32 {
        self.batches.back().map_or(NO_SEQUENCE, |b| b.last_seq)
    }

    pub fn last_append_ms(&self) -> i64 {
        self.last_append_ms
    }

    /// The epoch of the coordinator that wrote the producer's last marker,
    /// or [`NO_COORDINATOR_EPOCH`].
    pub fn coordinator_epoch(&self) -> i32 {
        self.coordinator_epoch
    }

    /// The first offset of the producer's ongoing transaction, if one is.
    pub fn current_txn_first_offset(&self) -> Option<i64> {
        self.current_txn_first_offset
    }

    /// Moves to `epoch`, forgetting the batches of the old one.
    fn set_epoch(&mut self, epoch: i16) {
        if self.producer_epoch != epoch {
            self.producer_epoch = epoch;
            self.batches.clear();
        }
    }

    fn add_batch(&mut self, batch: BatchMetadata) {
        if self.batches.len() == BATCHES_RETAINED {
            self.batches.pop_front();
        }
        self.batches.push_back(batch);
        assert!(self.batches.len() <= BATCHES_RETAINED);
    }
}

/// The producer fields of one batch, as the rules need them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
    /// The batch's offsets; final only once it is appended.
    pub first_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub is_transactional: bool,
    pub is_control: bool,
}

impl ProducerBatch {
    /// The producer fields of a batch, or `None` if it has no producer id
    /// (a producer without idempotence).
    pub fn from_header(header: &BatchHeader) -> Option<Self> {
        if header.producer_id < 0 {
            return None;
        }
        Some(Self {
            producer_id: header.producer_id,
            producer_epoch: header.producer_epoch,
            first_seq: header.base_sequence,
            last_seq: last_sequence(header.base_sequence, header.last_offset_delta),
            first_offset: header.base_offset,
            last_offset: header.last_offset(),
            max_timestamp: header.max_timestamp,
            is_transactional: header.is_transactional(),
            is_control: header.is_control(),
        })
    }

    fn metadata(&self) -> BatchMetadata {
        BatchMetadata {
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            first_offset: self.first_offset,
            last_offset: self.last_offset,
            timestamp: self.max_timestamp,
        }
    }
}

/// The last sequence of a batch whose first is `first_seq` and whose last
/// offset delta is `last_offset_delta`, wrapping past `i32::MAX` to 0 as
/// Kafka's `DefaultRecordBatch.incrementSequence` does.
pub fn last_sequence(first_seq: i32, last_offset_delta: i32) -> i32 {
    if first_seq == NO_SEQUENCE {
        return NO_SEQUENCE;
    }
    let last = i64::from(first_seq) + i64::from(last_offset_delta);
    if last > i64::from(i32::MAX) {
        (last - i64::from(i32::MAX) - 1) as i32
    } else {
        last as i32
    }
}

/// Whether `next` is the sequence right after `last`.
fn in_sequence(last: i32, next: i32) -> bool {
    i64::from(next) == i64::from(last) + 1 || (next == 0 && last == i32::MAX)
}

/// What to do with a batch that passed the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendCheck {
    /// Append it, then [`ProducerStateManager::record`] it.
    Append,
    /// It is a retry of this batch, already in the log: append nothing and
    /// answer with the original's offsets.
    Duplicate(BatchMetadata),
}

/// Why a producer's batch is refused. Named after the Kafka errors the
/// broker answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProducerStateError {
    /// INVALID_RECORD upstream: Kafka requires a sequence on every batch
    /// that carries a producer id.
    #[error("batch of producer {producer_id} has sequence {sequence}; a batch with a producer id needs one of at least 0")]
    InvalidSequence { producer_id: i64, sequence: i32 },
    /// INVALID_PRODUCER_EPOCH upstream: a newer epoch of this producer id
    /// has written here, so this one was fenced.
    #[error("epoch {producer_epoch} of producer {producer_id} is older than its current epoch {current_epoch}")]
    InvalidProducerEpoch {
        producer_id: i64,
        producer_epoch: i16,
        current_epoch: i16,
    },
    /// OUT_OF_ORDER_SEQUENCE_NUMBER upstream: a gap, or an old batch no
    /// longer among the retained ones, or a new epoch not starting at 0.
    #[error("out of order sequence for producer {producer_id} epoch {producer_epoch}: batch starts at {sequence} but the last sequence written is {last_seq}")]
    OutOfOrderSequence {
        producer_id: i64,
        producer_epoch: i16,
        sequence: i32,
        /// [`NO_SEQUENCE`] when the batch opens a new epoch.
        last_seq: i32,
    },
    /// INVALID_TXN_STATE upstream: a non-transactional batch from a
    /// producer whose transaction here is still open.
    #[error("expected a transactional write from producer {producer_id}: its transaction from offset {txn_first_offset} is ongoing")]
    InvalidTxnState {
        producer_id: i64,
        txn_first_offset: i64,
    },
    /// TRANSACTION_COORDINATOR_FENCED upstream: the marker comes from a
    /// coordinator older than the one that wrote this producer's last.
    #[error("marker for producer {producer_id} has coordinator epoch {coordinator_epoch}, older than the current {current_coordinator_epoch}")]
    TransactionCoordinatorFenced {
        producer_id: i64,
        coordinator_epoch: i32,
        current_coordinator_epoch: i32,
    },
}

/// A transaction that a marker ended in this partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletedTxn {
    pub producer_id: i64,
    /// The offset of the transaction's first batch here.
    pub first_offset: i64,
    /// The offset of the marker.
    pub last_offset: i64,
    pub is_aborted: bool,
}

impl CompletedTxn {
    /// The `.txnindex` entry of an aborted transaction, given the
    /// partition's last stable offset once it ended
    /// ([`ProducerStateManager::last_stable_offset_after`]).
    pub fn aborted_txn(&self, last_stable_offset: i64) -> AbortedTxn {
        assert!(self.is_aborted);
        AbortedTxn {
            producer_id: self.producer_id,
            first_offset: self.first_offset,
            last_offset: self.last_offset,
            last_stable_offset,
        }
    }
}

/// The producer state of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerStateManager {
    config: ProducerStateConfig,
    producers: HashMap<i64, ProducerEntry>,
    /// The ongoing transactions, producer id by first offset, so that the
    /// first unstable offset is the first key.
    ///
    /// Invariant: it holds exactly the producers whose entry has a
    /// `current_txn_first_offset`, each under that offset.
    ongoing: BTreeMap<i64, i64>,
    /// Producers forgotten to stay within `producers_max` and not yet
    /// reported by [`ProducerStateManager::take_evicted`].
    evicted: u64,
    /// Something changed since the last [`ProducerStateManager::take_snapshot`].
    dirty: bool,
}

impl ProducerStateManager {
    pub fn new(config: ProducerStateConfig) -> Self {
        assert!(config.producers_max > 0);
        Self {
            config,
            producers: HashMap::new(),
            ongoing: BTreeMap::new(),
            evicted: 0,
            dirty: false,
        }
    }

    pub fn config(&self) -> ProducerStateConfig {
        self.config
    }

    pub fn set_config(&mut self, config: ProducerStateConfig) {
        assert!(config.producers_max > 0);
        self.config = config;
    }

    /// How many producers this partition remembers.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// What the log cleaner must keep of each producer (see
    /// [`crate::CleanBounds`]).
    pub fn tails(&self) -> HashMap<i64, crate::cleaner::ProducerTail> {
        self.entries()
            .map(|(&producer_id, entry)| {
                (
                    producer_id,
                    crate::cleaner::ProducerTail {
                        last_data_offset: entry.batches.back().map(|b| b.last_offset),
                    },
                )
            })
            .collect()
    }

    pub fn entry(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Every producer this partition remembers, in no order.
    pub fn entries(&self) -> impl Iterator<Item = (&i64, &ProducerEntry)> {
        self.producers.iter()
    }

    /// Checks a batch a producer sent against the state, Kafka's rules for
    /// an append from a client: see the module doc. Changes nothing.
    pub fn check(&self, batch: &ProducerBatch) -> Result<AppendCheck, ProducerStateError> {
        assert!(batch.producer_id >= 0);
        assert!(!batch.is_control, "markers are checked with check_marker");
        let producer_id = batch.producer_id;
        if batch.first_seq < 0 {
            return Err(ProducerStateError::InvalidSequence {
                producer_id,
                sequence: batch.first_seq,
            });
        }
        let entry = self.producers.get(&producer_id);
        let current_epoch = entry.map_or(NO_PRODUCER_EPOCH, |e| e.producer_epoch);
        if let Some(entry) = entry {
            if entry.producer_epoch == batch.producer_epoch {
                if let Some(original) = entry
                    .batches
                    .iter()
                    .find(|b| b.first_seq == batch.first_seq && b.last_seq == batch.last_seq)
                {
                    return Ok(AppendCheck::Duplicate(*original));
                }
            }
        }
        if batch.producer_epoch < current_epoch {
            return Err(ProducerStateError::InvalidProducerEpoch {
                producer_id,
                producer_epoch: batch.producer_epoch,
                current_epoch,
            });
        }
        if batch.producer_epoch != current_epoch {
            // A new epoch (or a producer seen for the first time).
            if batch.first_seq != 0 && current_epoch != NO_PRODUCER_EPOCH {
                return Err(ProducerStateError::OutOfOrderSequence {
                    producer_id,
                    producer_epoch: batch.producer_epoch,
                    sequence: batch.first_seq,
                    last_seq: NO_SEQUENCE,
                });
            }
        } else {
            let last_seq = entry.map_or(NO_SEQUENCE, ProducerEntry::last_seq);
            if current_epoch != NO_PRODUCER_EPOCH && !in_sequence(last_seq, batch.first_seq) {
                return Err(ProducerStateError::OutOfOrderSequence {
                    producer_id,
                    producer_epoch: batch.producer_epoch,
                    sequence: batch.first_seq,
                    last_seq,
                });
            }
        }
        // Kafka checks this after the epoch and the sequence
        // (`ProducerAppendInfo.appendDataBatch`).
        if let Some(txn_first_offset) = entry.and_then(|e| e.current_txn_first_offset) {
            if !batch.is_transactional {
                return Err(ProducerStateError::InvalidTxnState {
                    producer_id,
                    txn_first_offset,
                });
            }
        }
        Ok(AppendCheck::Append)
    }

    /// Checks a transaction marker the coordinator asks to write for
    /// `producer_id` at `producer_epoch` (Kafka's
    /// `ProducerAppendInfo.appendEndTxnMarker`). Changes nothing. A marker
    /// for a producer this partition does not know is accepted: its
    /// transaction may have had no batch here, or the producer expired.
    pub fn check_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        coordinator_epoch: i32,
    ) -> Result<(), ProducerStateError> {
        assert!(producer_id >= 0);
        let Some(entry) = self.producers.get(&producer_id) else {
            return Ok(());
        };
        if producer_epoch < entry.producer_epoch {
            return Err(ProducerStateError::InvalidProducerEpoch {
                producer_id,
                producer_epoch,
                current_epoch: entry.producer_epoch,
            });
        }
        if coordinator_epoch < entry.coordinator_epoch {
            return Err(ProducerStateError::TransactionCoordinatorFenced {
                producer_id,
                coordinator_epoch,
                current_coordinator_epoch: entry.coordinator_epoch,
            });
        }
        Ok(())
    }

    /// Records a batch that [`ProducerStateManager::check`] accepted and the
    /// log appended, with its final offsets, at the broker's time `now_ms`.
    pub fn record(&mut self, batch: &ProducerBatch, now_ms: i64) {
        assert!(batch.producer_id >= 0);
        assert!(batch.first_offset >= 0);
        assert!(batch.first_offset <= batch.last_offset);
        assert!(!batch.is_control, "markers are recorded with record_marker");
        self.update(batch, now_ms);
    }

    /// Records a marker that [`ProducerStateManager::check_marker`]
    /// accepted and the log appended at `marker_offset`: the producer takes
    /// its epoch and coordinator epoch, and its ongoing transaction ends.
    /// Returns that transaction, or `None` if none was ongoing (a marker
    /// for a transaction without batches here, or a retried marker), which
    /// moves no offset and needs no index entry.
    pub fn record_marker(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        marker: EndTxnMarker,
        marker_offset: i64,
        now_ms: i64,
    ) -> Option<CompletedTxn> {
        assert!(producer_id >= 0);
        assert!(marker_offset >= 0);
        let entry = self.entry_for(producer_id, producer_epoch, now_ms);
        entry.set_epoch(producer_epoch);
        entry.coordinator_epoch = marker.coordinator_epoch;
        entry.last_append_ms = entry.last_append_ms.max(now_ms);
        let first_offset = entry.current_txn_first_offset.take();
        self.dirty = true;
        let first_offset = first_offset?;
        let removed = self.ongoing.remove(&first_offset);
        assert_eq!(
            removed,
            Some(producer_id),
            "the ongoing index agrees with the entry"
        );
        // The log puts a marker after its transaction's batches; a log that
        // does not (damage the CRCs did not catch) must not stop a replay.
        debug_assert!(
            first_offset < marker_offset,
            "a marker follows its transaction"
        );
        Some(CompletedTxn {
            producer_id,
            first_offset,
            last_offset: marker_offset,
            is_aborted: marker.control_type == ControlType::Abort,
        })
    }

    /// Applies a batch read back from the log at load, without checks (the
    /// leader checked it when it was appended), as Kafka rebuilds its state.
    /// `marker` is what a control batch's record says ([`txn::parse_marker`]);
    /// a control batch without one (its record could not be read) changes
    /// nothing, as an emptied control batch does in Kafka. Batches without a
    /// producer id are ignored. Returns the transaction a marker ended, as
    /// [`ProducerStateManager::record_marker`] does.
    pub fn replay(
        &mut self,
        header: &BatchHeader,
        marker: Option<EndTxnMarker>,
        now_ms: i64,
    ) -> Option<CompletedTxn> {
        let batch = ProducerBatch::from_header(header)?;
        if !batch.is_control {
            self.update(&batch, now_ms);
            return None;
        }
        let marker = marker?;
        self.record_marker(
            batch.producer_id,
            batch.producer_epoch,
            marker,
            batch.first_offset,
            now_ms,
        )
    }

    /// The first offset of the oldest ongoing transaction: the partition's
    /// last stable offset is at most this.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.ongoing.keys().next().copied()
    }

    /// The partition's last stable offset once `completed` ended (Kafka's
    /// `lastStableOffset(completedTxn)`): the first offset of the oldest
    /// transaction still ongoing of another producer, or else the offset
    /// after the marker.
    pub fn last_stable_offset_after(&self, completed: &CompletedTxn) -> i64 {
        self.ongoing
            .iter()
            .find(|(_, &producer_id)| producer_id != completed.producer_id)
            .map_or(completed.last_offset + 1, |(&first_offset, _)| first_offset)
    }

    /// The producer's entry, made (with room for it) if it is new.
    fn entry_for(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        now_ms: i64,
    ) -> &mut ProducerEntry {
        if !self.producers.contains_key(&producer_id)
            && self.producers.len() >= self.config.producers_max
        {
            self.evict_longest_idle();
        }
        let entry = self
            .producers
            .entry(producer_id)
            .or_insert_with(|| ProducerEntry {
                producer_epoch,
                batches: VecDeque::with_capacity(BATCHES_RETAINED),
                last_append_ms: now_ms,
                coordinator_epoch: NO_COORDINATOR_EPOCH,
                current_txn_first_offset: None,
            });
        entry
    }

    fn update(&mut self, batch: &ProducerBatch, now_ms: i64) {
        assert!(!batch.is_control);
        let entry = self.entry_for(batch.producer_id, batch.producer_epoch, now_ms);
        entry.set_epoch(batch.producer_epoch);
        entry.add_batch(batch.metadata());
        entry.last_append_ms = entry.last_append_ms.max(now_ms);
        let begins_txn = batch.is_transactional && entry.current_txn_first_offset.is_none();
        if begins_txn {
            entry.current_txn_first_offset = Some(batch.first_offset);
            let clash = self.ongoing.insert(batch.first_offset, batch.producer_id);
            assert_eq!(clash, None, "two transactions cannot begin at one offset");
        }
        self.dirty = true;
        assert!(self.producers.len() <= self.config.producers_max);
    }

    /// Forgets the longest idle producer, preferring one without an
    /// ongoing transaction (see the module doc).
    fn evict_longest_idle(&mut self) {
        let oldest = self
            .producers
            .iter()
            .min_by_key(|(id, entry)| {
                (
                    entry.current_txn_first_offset.is_some(),
                    entry.last_append_ms,
                    **id,
                )
            })
            .map(|(id, _)| *id);
        if let Some(producer_id) = oldest {
            self.remove(producer_id);
            self.evicted += 1;
        }
    }

    fn remove(&mut self, producer_id: i64) {
        let Some(entry) = self.producers.remove(&producer_id) else {
            return;
        };
        if let Some(first_offset) = entry.current_txn_first_offset {
            warn!(
                producer_id,
                first_offset,
                "forgetting a producer with an ongoing transaction to stay within producers_max"
            );
            let removed = self.ongoing.remove(&first_offset);
            assert_eq!(removed, Some(producer_id));
        }
    }

    /// Forgets producers that have not appended for
    /// `producer_id_expiration_ms` before `now_ms`, except those with an
    /// ongoing transaction. Returns how many.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        let expiration_ms = self.config.producer_id_expiration_ms;
        let before = self.producers.len();
        self.producers.retain(|_, entry| {
            entry.current_txn_first_offset.is_some()
                || now_ms.saturating_sub(entry.last_append_ms) < expiration_ms
        });
        let expired = before - self.producers.len();
        if expired > 0 {
            self.dirty = true;
        }
        expired
    }

    /// How many producers were forgotten to make room since the last call.
    pub fn take_evicted(&mut self) -> u64 {
        std::mem::take(&mut self.evicted)
    }

    /// The encoded state if it changed since the last call, for
    /// [`write_snapshot`]. A caller whose write fails calls
    /// [`ProducerStateManager::mark_dirty`] so that it is tried again.
    pub fn take_snapshot(&mut self) -> Option<Vec<u8>> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some(self.encode())
    }

    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Checks that the ongoing-transaction index and the entries agree, and
    /// that every retained batch and transaction has its first offset at or
    /// below its last. O(producers): called after a load and by tests, while
    /// each change checks its own part as it makes it.
    pub fn check_invariants(&self) {
        let with_txn = self
            .producers
            .values()
            .filter(|e| e.current_txn_first_offset.is_some())
            .count();
        assert_eq!(with_txn, self.ongoing.len());
        for (&first_offset, producer_id) in &self.ongoing {
            let entry = &self.producers[producer_id];
            assert_eq!(entry.current_txn_first_offset, Some(first_offset));
            assert!(first_offset >= 0);
            // The transaction's first offset is not above its last batch's.
            let last_offset = entry.batches.back().map(|b| b.last_offset);
            assert!(last_offset.is_some_and(|last| first_offset <= last));
        }
        for entry in self.producers.values() {
            assert!(entry.batches.len() <= BATCHES_RETAINED);
            for batch in &entry.batches {
                assert!(batch.first_offset <= batch.last_offset);
            }
        }
        assert!(self.producers.len() <= self.config.producers_max);
    }
}
