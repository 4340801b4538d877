//! Producer state for idempotent producers: for each producer id seen in a
//! partition, its epoch and the metadata of its last five batches; the rules
//! that decide whether a new batch is a retry of one already in the log, the
//! next in sequence, or to be refused; and snapshots of the state, so that a
//! restart replays only the log written since the last snapshot.
//!
//! The rules are Kafka's (`ProducerStateManager`, `ProducerAppendInfo`,
//! `ProducerStateEntry` in Kafka's storage module), without transactions:
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
//!
//! Producers idle for `producer.id.expiration.ms` are forgotten
//! ([`ProducerStateManager::expire`]), and at most
//! [`ProducerStateConfig::producers_max`] are kept per partition; past
//! that, the longest idle is forgotten to make room.
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
//! unflushed tail under it) is deleted. The format, all big-endian:
//!
//! ```text
//! version u16 (1)   crc u32 (CRC32C of everything after it)   producer_count u32
//! per producer:     producer_id i64  producer_epoch i16  last_append_ms i64  batch_count u8
//! per batch:        first_seq i32  last_seq i32  first_offset i64  last_offset i64  timestamp i64
//! ```

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::batch::BatchHeader;
use crate::checkpoint;
use crate::error::{Result, StorageError};
use crate::log::Log;
use crate::segment;

/// How many of a producer's latest batches are kept for duplicate
/// detection: the most a producer may have in flight with idempotence on
/// (`max.in.flight.requests.per.connection` <= 5), as in Kafka.
pub const BATCHES_RETAINED: usize = 5;
/// The epoch of a producer this partition has no state for.
pub const NO_PRODUCER_EPOCH: i16 = -1;
/// The sequence of a batch without one, and the last sequence of a
/// producer without batches.
pub const NO_SEQUENCE: i32 = -1;
/// The suffix of snapshot files, after `<offset, 20 digits>.`.
pub const SNAPSHOT_SUFFIX: &str = "snapshot";
/// How many snapshot files are kept: the newest, and the one before in
/// case the newest cannot be used.
pub const SNAPSHOTS_KEPT: usize = 2;
/// Offsets replayed per read of the log at load, which bounds the batch
/// headers held in memory at once.
const REPLAY_OFFSETS_PER_READ: i64 = 64 * 1024;
const SNAPSHOT_VERSION: u16 = 1;
const SNAPSHOT_HEADER_LEN: usize = 2 + 4 + 4;
const SNAPSHOT_PRODUCER_LEN: usize = 8 + 2 + 8 + 1;
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
}

/// The producer state of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerStateManager {
    config: ProducerStateConfig,
    producers: HashMap<i64, ProducerEntry>,
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

    pub fn entry(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Checks a batch a producer sent against the state, Kafka's rules for
    /// an append from a client: see the module doc. Changes nothing.
    pub fn check(&self, batch: &ProducerBatch) -> Result<AppendCheck, ProducerStateError> {
        assert!(batch.producer_id >= 0);
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
        Ok(AppendCheck::Append)
    }

    /// Records a batch that [`ProducerStateManager::check`] accepted and the
    /// log appended, with its final offsets, at the broker's time `now_ms`.
    pub fn record(&mut self, batch: &ProducerBatch, now_ms: i64) {
        assert!(batch.producer_id >= 0);
        assert!(batch.first_offset >= 0);
        assert!(batch.first_offset <= batch.last_offset);
        self.update(batch, now_ms);
    }

    /// Applies a batch read back from the log at load, without checks (the
    /// leader checked it when it was appended), as Kafka rebuilds its state.
    /// Batches without a producer id are ignored.
    pub fn replay(&mut self, header: &BatchHeader, now_ms: i64) {
        if let Some(batch) = ProducerBatch::from_header(header) {
            self.update(&batch, now_ms);
        }
    }

    fn update(&mut self, batch: &ProducerBatch, now_ms: i64) {
        if !self.producers.contains_key(&batch.producer_id)
            && self.producers.len() >= self.config.producers_max
        {
            self.evict_longest_idle();
        }
        let entry = self
            .producers
            .entry(batch.producer_id)
            .or_insert_with(|| ProducerEntry {
                producer_epoch: batch.producer_epoch,
                batches: VecDeque::with_capacity(BATCHES_RETAINED),
                last_append_ms: now_ms,
            });
        entry.set_epoch(batch.producer_epoch);
        // A control batch (a transaction marker) moves the epoch but holds
        // no sequences.
        if !batch.is_control {
            entry.add_batch(batch.metadata());
        }
        entry.last_append_ms = entry.last_append_ms.max(now_ms);
        self.dirty = true;
        assert!(self.producers.len() <= self.config.producers_max);
    }

    fn evict_longest_idle(&mut self) {
        let oldest = self
            .producers
            .iter()
            .min_by_key(|(id, entry)| (entry.last_append_ms, **id))
            .map(|(id, _)| *id);
        if let Some(producer_id) = oldest {
            self.producers.remove(&producer_id);
            self.evicted += 1;
        }
    }

    /// Forgets producers that have not appended for
    /// `producer_id_expiration_ms` before `now_ms`. Returns how many.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        let expiration_ms = self.config.producer_id_expiration_ms;
        let before = self.producers.len();
        self.producers
            .retain(|_, entry| now_ms.saturating_sub(entry.last_append_ms) < expiration_ms);
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

    /// The state in the snapshot format, producers in id order so that
    /// equal states give equal bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut ids: Vec<i64> = self.producers.keys().copied().collect();
        ids.sort_unstable();
        let mut body = Vec::with_capacity(
            4 + ids.len() * (SNAPSHOT_PRODUCER_LEN + BATCHES_RETAINED * SNAPSHOT_BATCH_LEN),
        );
        let count = u32::try_from(ids.len()).expect("bounded by producers_max");
        body.extend_from_slice(&count.to_be_bytes());
        for id in ids {
            let entry = &self.producers[&id];
            body.extend_from_slice(&id.to_be_bytes());
            body.extend_from_slice(&entry.producer_epoch.to_be_bytes());
            body.extend_from_slice(&entry.last_append_ms.to_be_bytes());
            body.push(u8::try_from(entry.batches.len()).expect("at most BATCHES_RETAINED"));
            for batch in &entry.batches {
                body.extend_from_slice(&batch.first_seq.to_be_bytes());
                body.extend_from_slice(&batch.last_seq.to_be_bytes());
                body.extend_from_slice(&batch.first_offset.to_be_bytes());
                body.extend_from_slice(&batch.last_offset.to_be_bytes());
                body.extend_from_slice(&batch.timestamp.to_be_bytes());
            }
        }
        let mut out = Vec::with_capacity(6 + body.len());
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Reads a snapshot back. Any damage is an error, never a panic.
    pub fn decode(bytes: &[u8], config: ProducerStateConfig) -> Result<Self, SnapshotError> {
        let mut reader = Reader { bytes, at: 0 };
        if bytes.len() < SNAPSHOT_HEADER_LEN {
            return Err(SnapshotError::Truncated);
        }
        let version = reader.u16()?;
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version(version));
        }
        let stored = reader.u32()?;
        let computed = crc32c::crc32c(&bytes[reader.at..]);
        if stored != computed {
            return Err(SnapshotError::Crc { stored, computed });
        }
        let count = reader.u32()? as usize;
        // Checked against what is left before anything is allocated.
        if count > (bytes.len() - reader.at) / SNAPSHOT_PRODUCER_LEN {
            return Err(SnapshotError::Truncated);
        }
        let mut manager = Self::new(config);
        for _ in 0..count {
            let producer_id = reader.i64()?;
            let producer_epoch = reader.u16()? as i16;
            let last_append_ms = reader.i64()?;
            let batch_count = usize::from(reader.u8()?);
            if producer_id < 0 || batch_count > BATCHES_RETAINED {
                return Err(SnapshotError::Invalid(format!(
                    "producer {producer_id} with {batch_count} batches"
                )));
            }
            let mut batches = VecDeque::with_capacity(batch_count);
            for _ in 0..batch_count {
                let batch = BatchMetadata {
                    first_seq: reader.u32()? as i32,
                    last_seq: reader.u32()? as i32,
                    first_offset: reader.i64()?,
                    last_offset: reader.i64()?,
                    timestamp: reader.i64()?,
                };
                if batch.first_offset < 0 || batch.first_offset > batch.last_offset {
                    return Err(SnapshotError::Invalid(format!(
                        "producer {producer_id} has a batch at offsets {}..={}",
                        batch.first_offset, batch.last_offset
                    )));
                }
                batches.push_back(batch);
            }
            let entry = ProducerEntry {
                producer_epoch,
                batches,
                last_append_ms,
            };
            if manager.producers.insert(producer_id, entry).is_some() {
                return Err(SnapshotError::Invalid(format!(
                    "producer {producer_id} appears twice"
                )));
            }
        }
        if reader.at != bytes.len() {
            return Err(SnapshotError::Invalid(format!(
                "{} bytes after the last producer",
                bytes.len() - reader.at
            )));
        }
        // A snapshot written under a larger bound keeps its most recent.
        while manager.producers.len() > config.producers_max {
            manager.evict_longest_idle();
        }
        Ok(manager)
    }
}

/// Why a snapshot file cannot be used. The caller deletes it and falls
/// back to an older one or to the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot ends early")]
    Truncated,
    #[error("unknown snapshot version {0}")]
    Version(u16),
    #[error("snapshot CRC32C is {stored:#010x} but its bytes sum to {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    #[error("snapshot is malformed: {0}")]
    Invalid(String),
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let end = self.at.checked_add(N).ok_or(SnapshotError::Truncated)?;
        let bytes = self
            .bytes
            .get(self.at..end)
            .ok_or(SnapshotError::Truncated)?;
        self.at = end;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_be_bytes(self.take()?))
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_be_bytes(self.take()?))
    }

    fn i64(&mut self) -> Result<i64, SnapshotError> {
        Ok(i64::from_be_bytes(self.take()?))
    }
}

fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{offset:020}.{SNAPSHOT_SUFFIX}"))
}

/// The offsets of the snapshot files in `dir`, ascending.
pub fn snapshot_offsets(dir: &Path) -> Result<Vec<i64>> {
    let mut offsets = Vec::new();
    for entry in fs::read_dir(dir).map_err(StorageError::io("list", dir))? {
        let entry = entry.map_err(StorageError::io("list", dir))?;
        let name = entry.file_name();
        if let Some((offset, SNAPSHOT_SUFFIX)) = name.to_str().and_then(segment::parse_file_name) {
            offsets.push(offset);
        }
    }
    offsets.sort_unstable();
    Ok(offsets)
}

/// Writes `bytes` ([`ProducerStateManager::take_snapshot`]) as the snapshot
/// at `offset` in `dir`, atomically, and removes all but the
/// [`SNAPSHOTS_KEPT`] newest. With `sync` the file is durable on return;
/// without, the caller makes the file system durable before relying on it
/// (one `syncfs` at shutdown).
///
/// The snapshot must describe only batches that a crash cannot take back
/// (flushed), or a restart could start from a state that remembers batches
/// the log lost; [`load`] drops snapshots past the log end, which covers a
/// lost tail but not one lost and then rewritten.
pub fn write_snapshot(dir: &Path, offset: i64, bytes: &[u8], sync: bool) -> Result<()> {
    assert!(offset >= 0);
    checkpoint::write_atomically_with(&snapshot_path(dir, offset), bytes, sync)?;
    let offsets = snapshot_offsets(dir)?;
    let stale = offsets.len().saturating_sub(SNAPSHOTS_KEPT);
    for &old in &offsets[..stale] {
        segment::remove_if_exists(&snapshot_path(dir, old))?;
    }
    Ok(())
}

/// Removes the snapshots past `offset`, for a caller that truncates the log
/// there.
pub fn remove_snapshots_after(dir: &Path, offset: i64) -> Result<()> {
    for stale in snapshot_offsets(dir)?.into_iter().filter(|&o| o > offset) {
        segment::remove_if_exists(&snapshot_path(dir, stale))?;
    }
    Ok(())
}

/// What [`load`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadReport {
    /// The offset of the snapshot it started from, if any.
    pub snapshot_offset: Option<i64>,
    /// Where the replay of the log started and ended.
    pub replay_start_offset: i64,
    pub replay_end_offset: i64,
    /// Batch headers read from the log.
    pub batches_replayed: usize,
    /// Producers dropped at load because they had expired.
    pub expired: usize,
}

/// Builds a partition's producer state at open: the newest usable snapshot
/// in the log's directory, then every batch after it up to the log end.
/// Reads the log; call it before the partition takes appends.
///
/// Producers replayed from the log count as active at `now_ms`: the log
/// holds only their batches' own timestamps, and expiring a live producer
/// early would let its retries in twice, while keeping an idle one a day
/// longer costs only memory.
pub fn load(
    log: &Log,
    config: ProducerStateConfig,
    now_ms: i64,
) -> Result<(ProducerStateManager, LoadReport)> {
    let dir = log.dir();
    let log_start_offset = log.log_start_offset();
    let log_end_offset = log.log_end_offset();
    let offsets = snapshot_offsets(dir)?;
    let mut report = LoadReport::default();
    let mut loaded = None;
    for &offset in offsets.iter().rev() {
        let path = snapshot_path(dir, offset);
        if offset > log_end_offset {
            info!(dir = %dir.display(), offset, log_end_offset, "removing a producer snapshot past the log end");
            segment::remove_if_exists(&path)?;
            continue;
        }
        if loaded.is_some() {
            continue;
        }
        let bytes = fs::read(&path).map_err(StorageError::io("read", &path))?;
        match ProducerStateManager::decode(&bytes, config) {
            Ok(manager) => {
                report.snapshot_offset = Some(offset);
                loaded = Some(manager);
            }
            Err(reason) => {
                warn!(path = %path.display(), %reason, "producer snapshot is unusable; removing it");
                segment::remove_if_exists(&path)?;
            }
        }
    }
    let mut manager = loaded.unwrap_or_else(|| ProducerStateManager::new(config));
    let mut from = report
        .snapshot_offset
        .unwrap_or(log_start_offset)
        .max(log_start_offset);
    report.replay_start_offset = from;
    let mut span = REPLAY_OFFSETS_PER_READ;
    while from < log_end_offset {
        let upper = from.saturating_add(span).min(log_end_offset);
        let headers = log.batch_headers(from, upper)?;
        match headers.last() {
            Some(last) => {
                assert!(last.next_offset() > from);
                from = last.next_offset();
                span = REPLAY_OFFSETS_PER_READ;
                report.batches_replayed += headers.len();
                for header in &headers {
                    manager.replay(header, now_ms);
                }
            }
            // Nothing ends below `upper`: one batch spans past it; look
            // further. At the log end, the rest is unreadable (the read
            // stops at damage it finds), and there is nothing more to do.
            None if upper < log_end_offset => span = span.saturating_mul(2),
            None => break,
        }
    }
    report.replay_end_offset = from.max(report.replay_start_offset);
    report.expired = manager.expire(now_ms);
    // A state rebuilt from the log is worth a snapshot; one read from a
    // snapshot and unchanged is not.
    manager.dirty = report.batches_replayed > 0 || report.expired > 0;
    Ok((manager, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: i64 = 7;

    fn batch(epoch: i16, first_seq: i32, count: i32, first_offset: i64) -> ProducerBatch {
        ProducerBatch {
            producer_id: PID,
            producer_epoch: epoch,
            first_seq,
            last_seq: last_sequence(first_seq, count - 1),
            first_offset,
            last_offset: first_offset + i64::from(count) - 1,
            max_timestamp: 1_000,
            is_control: false,
        }
    }

    fn manager() -> ProducerStateManager {
        ProducerStateManager::new(ProducerStateConfig::default())
    }

    /// Checks and records a batch as the broker does, returning the check.
    fn append(
        state: &mut ProducerStateManager,
        batch: ProducerBatch,
    ) -> Result<AppendCheck, ProducerStateError> {
        let check = state.check(&batch)?;
        if check == AppendCheck::Append {
            state.record(&batch, 0);
        }
        Ok(check)
    }

    #[test]
    fn sequences_follow_on_and_wrap() {
        assert_eq!(last_sequence(0, 0), 0);
        assert_eq!(last_sequence(0, 9), 9);
        assert_eq!(last_sequence(i32::MAX, 0), i32::MAX);
        assert_eq!(last_sequence(i32::MAX, 1), 0);
        assert_eq!(last_sequence(i32::MAX - 1, 5), 3);
        assert_eq!(last_sequence(NO_SEQUENCE, 5), NO_SEQUENCE);
        assert!(in_sequence(NO_SEQUENCE, 0));
        assert!(in_sequence(4, 5));
        assert!(in_sequence(i32::MAX, 0));
        assert!(!in_sequence(4, 4));
        assert!(!in_sequence(4, 6));
        assert!(!in_sequence(i32::MAX - 1, 0));
    }

    #[test]
    fn batches_in_sequence_are_appended() {
        let mut state = manager();
        assert_eq!(
            append(&mut state, batch(0, 0, 3, 0)),
            Ok(AppendCheck::Append)
        );
        assert_eq!(
            append(&mut state, batch(0, 3, 1, 3)),
            Ok(AppendCheck::Append)
        );
        assert_eq!(
            append(&mut state, batch(0, 4, 10, 4)),
            Ok(AppendCheck::Append)
        );
        let entry = state.entry(PID).unwrap();
        assert_eq!(entry.producer_epoch(), 0);
        assert_eq!(entry.last_seq(), 13);
        assert_eq!(entry.batches().count(), 3);
    }

    #[test]
    fn a_retry_of_any_of_the_last_five_is_a_duplicate_with_the_original_offsets() {
        let mut state = manager();
        for i in 0..7 {
            append(&mut state, batch(0, i * 2, 2, 100 + i64::from(i) * 2)).unwrap();
        }
        // Batches 2..=6 are retained; each retry gets its original offsets.
        for i in 2..7 {
            let original = batch(0, i * 2, 2, 100 + i64::from(i) * 2);
            let retry = batch(0, i * 2, 2, -1);
            assert_eq!(
                state.check(&retry),
                Ok(AppendCheck::Duplicate(original.metadata())),
                "batch {i}"
            );
        }
        // Batch 1 fell out of the window: Kafka now calls it out of order.
        assert!(matches!(
            state.check(&batch(0, 2, 2, -1)),
            Err(ProducerStateError::OutOfOrderSequence { last_seq: 13, .. })
        ));
        // A batch that overlaps a retained one without matching it exactly
        // is not a duplicate.
        assert!(matches!(
            state.check(&batch(0, 12, 1, -1)),
            Err(ProducerStateError::OutOfOrderSequence { .. })
        ));
        assert_eq!(
            state.entry(PID).unwrap().batches().count(),
            BATCHES_RETAINED
        );
    }

    #[test]
    fn a_gap_is_out_of_order() {
        let mut state = manager();
        append(&mut state, batch(0, 0, 5, 0)).unwrap();
        assert_eq!(
            state.check(&batch(0, 6, 1, -1)),
            Err(ProducerStateError::OutOfOrderSequence {
                producer_id: PID,
                producer_epoch: 0,
                sequence: 6,
                last_seq: 4
            })
        );
        // Nothing was recorded: the right batch still goes in.
        assert_eq!(
            append(&mut state, batch(0, 5, 1, 5)),
            Ok(AppendCheck::Append)
        );
    }

    #[test]
    fn older_epochs_are_fenced_and_new_epochs_start_at_zero() {
        let mut state = manager();
        append(&mut state, batch(3, 0, 2, 0)).unwrap();
        assert_eq!(
            state.check(&batch(2, 2, 1, -1)),
            Err(ProducerStateError::InvalidProducerEpoch {
                producer_id: PID,
                producer_epoch: 2,
                current_epoch: 3
            })
        );
        // Even a retry of an old-epoch batch is fenced, not a duplicate.
        assert!(matches!(
            state.check(&batch(2, 0, 2, -1)),
            Err(ProducerStateError::InvalidProducerEpoch { .. })
        ));
        assert_eq!(
            state.check(&batch(4, 2, 1, -1)),
            Err(ProducerStateError::OutOfOrderSequence {
                producer_id: PID,
                producer_epoch: 4,
                sequence: 2,
                last_seq: NO_SEQUENCE
            })
        );
        assert_eq!(
            append(&mut state, batch(4, 0, 1, 2)),
            Ok(AppendCheck::Append)
        );
        let entry = state.entry(PID).unwrap();
        assert_eq!(entry.producer_epoch(), 4);
        // The old epoch's batches are gone with it.
        assert_eq!(entry.batches().count(), 1);
        assert_eq!(
            append(&mut state, batch(4, 1, 1, 3)),
            Ok(AppendCheck::Append)
        );
        assert!(matches!(
            state.check(&batch(3, 2, 1, -1)),
            Err(ProducerStateError::InvalidProducerEpoch { .. })
        ));
    }

    #[test]
    fn an_unknown_producer_may_start_at_any_sequence() {
        let mut state = manager();
        assert_eq!(
            append(&mut state, batch(5, 42, 3, 0)),
            Ok(AppendCheck::Append)
        );
        assert_eq!(state.entry(PID).unwrap().last_seq(), 44);
        assert!(matches!(
            state.check(&batch(5, 46, 1, -1)),
            Err(ProducerStateError::OutOfOrderSequence { .. })
        ));
    }

    #[test]
    fn a_batch_with_a_producer_id_needs_a_sequence() {
        let state = manager();
        assert_eq!(
            state.check(&batch(0, -1, 1, -1)),
            Err(ProducerStateError::InvalidSequence {
                producer_id: PID,
                sequence: -1
            })
        );
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let mut state = manager();
        append(&mut state, batch(0, i32::MAX - 2, 2, 0)).unwrap();
        // The next batch spans the wrap: MAX-0 .. 1.
        let spanning = batch(0, i32::MAX, 3, 2);
        assert_eq!(spanning.last_seq, 1);
        assert_eq!(append(&mut state, spanning), Ok(AppendCheck::Append));
        assert_eq!(
            state.check(&batch(0, i32::MAX, 3, -1)),
            Ok(AppendCheck::Duplicate(spanning.metadata()))
        );
        assert_eq!(
            append(&mut state, batch(0, 2, 1, 5)),
            Ok(AppendCheck::Append)
        );
        // And a batch ending exactly at MAX is followed by 0.
        let mut state = manager();
        append(&mut state, batch(0, i32::MAX - 1, 2, 0)).unwrap();
        assert_eq!(
            append(&mut state, batch(0, 0, 1, 2)),
            Ok(AppendCheck::Append)
        );
    }

    #[test]
    fn producers_are_independent() {
        let mut state = manager();
        append(&mut state, batch(0, 0, 1, 0)).unwrap();
        let mut other = batch(0, 0, 1, 1);
        other.producer_id = PID + 1;
        assert_eq!(append(&mut state, other), Ok(AppendCheck::Append));
        assert_eq!(
            append(&mut state, batch(0, 1, 1, 2)),
            Ok(AppendCheck::Append)
        );
        assert_eq!(state.len(), 2);
    }

    #[test]
    fn idle_producers_expire() {
        let config = ProducerStateConfig {
            producer_id_expiration_ms: 1_000,
            ..ProducerStateConfig::default()
        };
        let mut state = ProducerStateManager::new(config);
        state.record(&batch(0, 0, 1, 0), 10_000);
        let mut other = batch(0, 0, 1, 1);
        other.producer_id = PID + 1;
        state.record(&other, 10_500);
        assert_eq!(state.expire(10_999), 0);
        assert_eq!(state.expire(11_000), 1);
        assert!(state.entry(PID).is_none());
        assert!(state.entry(PID + 1).is_some());
        // Forgotten, it may start anywhere again.
        assert_eq!(state.check(&batch(0, 9, 1, -1)), Ok(AppendCheck::Append));
    }

    #[test]
    fn the_longest_idle_producer_makes_room() {
        let config = ProducerStateConfig {
            producers_max: 3,
            ..ProducerStateConfig::default()
        };
        let mut state = ProducerStateManager::new(config);
        for (i, now) in [(0, 30), (1, 10), (2, 20)] {
            let mut b = batch(0, 0, 1, i);
            b.producer_id = i;
            state.record(&b, now);
        }
        let mut b = batch(0, 0, 1, 3);
        b.producer_id = 3;
        state.record(&b, 40);
        assert_eq!(state.len(), 3);
        assert!(state.entry(1).is_none());
        assert_eq!(state.take_evicted(), 1);
        assert_eq!(state.take_evicted(), 0);
    }

    #[test]
    fn replay_rebuilds_what_appends_recorded() {
        let mut live = manager();
        let mut headers = Vec::new();
        let mut offset = 0;
        for (epoch, seq, count) in [(0, 0, 3), (0, 3, 2), (1, 0, 4), (1, 4, 1), (1, 5, 1)] {
            let b = batch(epoch, seq, count, offset);
            append(&mut live, b).unwrap();
            headers.push(BatchHeader {
                base_offset: offset,
                batch_length: 100,
                partition_leader_epoch: 0,
                magic: 2,
                crc: 0,
                attributes: 0,
                last_offset_delta: count - 1,
                base_timestamp: 0,
                max_timestamp: 1_000,
                producer_id: PID,
                producer_epoch: epoch,
                base_sequence: seq,
                record_count: count,
            });
            offset += i64::from(count);
        }
        let mut rebuilt = manager();
        for header in &headers {
            rebuilt.replay(header, 0);
        }
        assert_eq!(rebuilt.entry(PID), live.entry(PID));
    }

    #[test]
    fn snapshots_round_trip_and_refuse_damage() {
        let mut state = manager();
        for pid in 0..4 {
            for i in 0..(pid as i32 + 2) {
                let mut b = batch(pid as i16, i, 1, pid * 100 + i64::from(i));
                b.producer_id = pid;
                state.record(&b, 1_000 + pid);
            }
        }
        let bytes = state.take_snapshot().unwrap();
        assert!(state.take_snapshot().is_none(), "nothing changed since");
        let back = ProducerStateManager::decode(&bytes, state.config()).unwrap();
        assert_eq!(back.producers, state.producers);
        assert_eq!(back.encode(), bytes);

        for cut in 0..bytes.len() {
            assert!(ProducerStateManager::decode(&bytes[..cut], state.config()).is_err());
        }
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            assert!(
                ProducerStateManager::decode(&damaged, state.config()).is_err(),
                "flipped byte {at}"
            );
        }
        let empty = manager().encode();
        assert!(ProducerStateManager::decode(&empty, state.config())
            .unwrap()
            .is_empty());
    }
}
