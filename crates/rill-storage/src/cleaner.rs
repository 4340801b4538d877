//! Log compaction (`cleanup.policy=compact`): rewrite closed segments keeping
//! only the latest record for each key. The broker's log cleaner loop picks
//! which log to clean and when; this module judges a log's dirtiness and
//! cleans it.
//!
//! As in Kafka, a compacted log has a clean head and a dirty tail: below
//! its *first dirty offset* (the cleaner's point) every key was already
//! deduplicated. A log's dirty ratio is the dirty tail's share of its
//! closed bytes, and the cleaner takes the dirtiest log whose ratio is
//! above `min.cleanable.dirty.ratio`, or whose oldest dirty record is older
//! than `max.compaction.lag.ms` (KIP-354). Segments holding records newer
//! than `min.compaction.lag.ms`, and everything after them, are not cleaned
//! yet, nor is the active segment.
//!
//! One pass reads the dirty tail to learn each key's latest offset, into
//! a key map bounded by `log.cleaner.dedupe.buffer.size`; when the tail
//! holds more keys than fit, the pass cleans only up to the offset the map
//! covered and the next pass goes on from there. It then rewrites every
//! closed segment below that offset without the records a later one
//! supersedes. Offsets never change (a compacted log has gaps); each batch
//! keeps its base offset and its `lastOffsetDelta`, so producer state
//! derived from batch ends survives. Tombstones (null values) are kept
//! until `delete.retention.ms` past their batch's timestamp, so that a
//! consumer reading more slowly than that still sees the deletion.
//!
//! Transactions: a pass cleans only below the partition's *last stable
//! offset* (which its caller gives, with the partition's producers: see
//! [`CleanBounds`]), so every transactional batch it sees belongs to a
//! transaction that has ended; the log's aborted-transaction index says
//! which ended in an abort. Records of committed transactions are
//! deduplicated as any others (and supersede older values); records of
//! aborted ones are removed and never supersede anything.
//!
//! Batches and markers go as in Kafka's cleaner. A batch left without
//! records is removed, unless it is an active producer's last data batch
//! (kept empty: its sequence and epoch are what a producer state rebuilt
//! from the log needs). A commit or abort marker whose transaction has no
//! batch left is first rewritten with a *delete horizon* (KIP-534: the
//! batch's base timestamp, flagged in its attributes) `delete.retention.ms`
//! ahead, and removed by a pass after that time, so that a consumer that
//! read the transaction's data before it went still gets its marker; an
//! abort's `.txnindex` entry goes with its marker. A marker after its
//! producer's last data batch (it may carry a newer epoch) stays while the
//! producer is active. Together these keep the log's transactions whole
//! for a read_committed consumer and for a replay: no batch of a
//! transaction is left without its marker.

use std::collections::HashMap;
use std::fs::File;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;

use tracing::info;

use crate::batch::{self, BatchHeader, TimestampType};
use crate::config::LogConfig;
use crate::error::{CorruptBatch, Result, StorageError};
use crate::log::{ClosedSegment, Log, SegmentSummary};
use crate::records::{self, BatchBuilder};
use crate::segment::{self, BatchCursor, CursorError, CLEANED_SUFFIX, LOG_SUFFIX};
use crate::txn::{self, AbortedTxn};

const READ_CHUNK_BYTES: usize = 1024 * 1024;

/// Kafka's default `log.cleaner.dedupe.buffer.size`: 128 MiB.
pub const DEDUPE_BUFFER_BYTES_DEFAULT: u64 = 128 * 1024 * 1024;

/// What one cleaning pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanerStats {
    pub segments_cleaned: usize,
    pub records_read: u64,
    pub records_kept: u64,
    pub tombstones_dropped: u64,
    /// Records of aborted transactions removed.
    pub aborted_records_dropped: u64,
    /// Batches left with no record and removed whole.
    pub batches_removed: u64,
    /// Commit and abort markers removed (their transactions empty, their
    /// delete horizon passed).
    pub markers_removed: u64,
    /// Bytes of the segments the pass went through (rewritten or not).
    pub bytes_read: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// The pass cleaned below this offset; the next one starts here.
    pub end_offset: i64,
    /// The key map filled up before the end of the dirty tail.
    pub key_map_full: bool,
}

/// Where a compacted log stands for the cleaner at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dirtiness {
    /// Below this every key was deduplicated by an earlier pass.
    pub first_dirty_offset: i64,
    /// A pass stops here: the active segment's base, the last stable
    /// offset, or the first dirty segment holding a record newer than
    /// `min.compaction.lag.ms`, whichever comes first.
    pub first_uncleanable_offset: i64,
    /// Bytes of the closed segments wholly below `first_dirty_offset`.
    pub clean_bytes: u64,
    /// Bytes of the segments a pass would deduplicate.
    pub cleanable_bytes: u64,
    /// The oldest cleanable record is older than `max.compaction.lag.ms`.
    pub compaction_due: bool,
    /// The log's `min.cleanable.dirty.ratio`.
    pub min_cleanable_dirty_ratio: f64,
}

impl Dirtiness {
    /// Judges a log from its closed segments (in offset order), as of
    /// `now_ms`, cleaning nothing at or past `stable_offset`.
    pub(crate) fn of(
        segments: &[SegmentSummary],
        first_dirty_offset: i64,
        active_base_offset: i64,
        stable_offset: i64,
        config: &LogConfig,
        now_ms: i64,
    ) -> Self {
        let lag_horizon_ms = now_ms.saturating_sub(config.min_compaction_lag_ms);
        let mut first_uncleanable_offset = active_base_offset.min(stable_offset);
        if config.min_compaction_lag_ms > 0 {
            if let Some(young) = segments
                .iter()
                .filter(|s| s.next_offset > first_dirty_offset)
                .find(|s| s.max_timestamp > lag_horizon_ms)
            {
                first_uncleanable_offset =
                    first_uncleanable_offset.min(young.base_offset.max(first_dirty_offset));
            }
        }
        let mut clean_bytes = 0;
        let mut cleanable_bytes = 0;
        let mut oldest_dirty_ms: Option<i64> = None;
        for s in segments {
            if s.next_offset <= first_dirty_offset {
                clean_bytes += s.size;
            } else if s.base_offset < first_uncleanable_offset
                && first_dirty_offset < first_uncleanable_offset
            {
                // The segment overlaps `[first_dirty, first_uncleanable)`;
                // one straddling the cleaner's point with nothing cleanable
                // after it is not counted, or the cleaner would take the
                // log again and again with nothing to do.
                cleanable_bytes += s.size;
                if s.first_timestamp >= 0 {
                    oldest_dirty_ms = Some(
                        oldest_dirty_ms.map_or(s.first_timestamp, |t| t.min(s.first_timestamp)),
                    );
                }
            }
        }
        let compaction_due = cleanable_bytes > 0
            && oldest_dirty_ms
                .is_some_and(|t| now_ms.saturating_sub(t) > config.max_compaction_lag_ms);
        Self {
            first_dirty_offset,
            first_uncleanable_offset,
            clean_bytes,
            cleanable_bytes,
            compaction_due,
            min_cleanable_dirty_ratio: config.min_cleanable_dirty_ratio,
        }
    }

    /// The cleanable bytes' share of the closed bytes (Kafka's `cleanableRatio`).
    pub fn dirty_ratio(&self) -> f64 {
        let total = self.clean_bytes + self.cleanable_bytes;
        if total == 0 {
            return 0.0;
        }
        self.cleanable_bytes as f64 / total as f64
    }

    /// Whether the cleaner should take this log now: there is something to
    /// clean, and either its ratio is above the log's minimum (strictly, as
    /// in Kafka) or `max.compaction.lag.ms` has passed.
    pub fn needs_cleaning(&self) -> bool {
        self.cleanable_bytes > 0
            && (self.compaction_due || self.dirty_ratio() > self.min_cleanable_dirty_ratio)
    }
}

/// The latest offset of each key in the dirty tail, bounded in bytes.
/// Kafka's `SkimpyOffsetMap` keeps a 16-byte hash per key and accepts the
/// (tiny) chance of two keys sharing one; this keeps whole keys, so that
/// a collision can never drop a live record, and counts their length.
#[derive(Debug)]
pub(crate) struct KeyMap {
    offsets: HashMap<Vec<u8>, i64>,
    bytes: u64,
    bytes_max: u64,
}

impl KeyMap {
    /// What an entry costs besides its key: the offset, the key's `Vec`
    /// header and the hash table's own share.
    pub(crate) const ENTRY_OVERHEAD_BYTES: u64 = 48;

    pub(crate) fn new(bytes_max: u64) -> Self {
        Self {
            offsets: HashMap::new(),
            bytes: 0,
            bytes_max,
        }
    }

    /// Records `offset` as `key`'s latest. Returns false, changing nothing,
    /// when a new key does not fit; the first key always fits, so that
    /// every pass makes progress.
    pub(crate) fn insert(&mut self, key: Vec<u8>, offset: i64) -> bool {
        if let Some(latest) = self.offsets.get_mut(&key) {
            assert!(*latest < offset, "keys are read in offset order");
            *latest = offset;
            return true;
        }
        let cost = key.len() as u64 + Self::ENTRY_OVERHEAD_BYTES;
        if !self.offsets.is_empty() && self.bytes.saturating_add(cost) > self.bytes_max {
            return false;
        }
        self.bytes += cost;
        self.offsets.insert(key, offset);
        true
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<i64> {
        self.offsets.get(key).copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.offsets.len()
    }
}

/// How far the cleaner may go in a partition, as the partition's replica
/// knows it (Kafka's last stable offset and `lastRecordsOfActiveProducers`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CleanBounds {
    /// Nothing at or past this offset is cleaned: the last stable offset.
    pub stable_offset: i64,
    /// The producers the partition remembers, by producer id.
    pub producers: HashMap<i64, ProducerTail>,
}

impl CleanBounds {
    /// No bound: everything closed is cleanable and no producer is active
    /// (for tests, and for logs whose producers do not matter).
    pub fn everything() -> Self {
        Self {
            stable_offset: i64::MAX,
            producers: HashMap::new(),
        }
    }
}

/// What the cleaner keeps of an active producer so that its state rebuilt
/// from the log is still right: the last offset of its last data batch
/// (which holds its last sequence and epoch), if any; and every marker
/// after that batch (one may carry a newer epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerTail {
    pub last_data_offset: Option<i64>,
}

/// What becomes of a marker in a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MarkerFate {
    Keep,
    /// Its transaction has no data left: removable once this time passes.
    SetHorizon(i64),
    Remove,
}

/// Kafka's batch retention, for one pass over a log in offset order: a
/// batch left without records is removed unless it is its producer's last
/// data batch; a marker is removed once its transaction has no data left,
/// `delete.retention.ms` after that was first seen (the delete horizon it
/// then carries: a consumer that read the transaction's data before it
/// went still gets the marker), and only if a later data batch of its
/// producer keeps the producer's epoch, or the producer is gone.
struct BatchRetention<'a> {
    producers: &'a HashMap<i64, ProducerTail>,
    /// Per producer: a data batch of its current transaction was kept.
    txn_has_data: HashMap<i64, bool>,
    now_ms: i64,
    delete_retention_ms: i64,
}

impl BatchRetention<'_> {
    fn is_producers_last(&self, header: &BatchHeader) -> bool {
        header.producer_id >= 0
            && self
                .producers
                .get(&header.producer_id)
                .is_some_and(|p| p.last_data_offset == Some(header.last_offset()))
    }

    /// A data batch stays in the log (with records or empty).
    fn data_kept(&mut self, header: &BatchHeader) {
        if header.is_transactional() {
            self.txn_has_data.insert(header.producer_id, true);
        }
    }

    fn marker(&mut self, header: &BatchHeader) -> MarkerFate {
        let has_data = self
            .txn_has_data
            .remove(&header.producer_id)
            .unwrap_or(false);
        let epoch_kept_elsewhere = self.producers.get(&header.producer_id).is_none_or(|p| {
            p.last_data_offset
                .is_some_and(|last| last > header.base_offset)
        });
        if has_data || !epoch_kept_elsewhere {
            return MarkerFate::Keep;
        }
        if !header.has_delete_horizon() {
            return MarkerFate::SetHorizon(self.now_ms.saturating_add(self.delete_retention_ms));
        }
        if header.base_timestamp <= self.now_ms {
            MarkerFate::Remove
        } else {
            MarkerFate::Keep
        }
    }
}

/// The aborted transactions below a pass's end, by producer: a
/// transactional batch is aborted when its producer's transaction that
/// spans it (first offset to marker) is one of them. A producer has at
/// most one transaction open at a time, so the spans of one producer never
/// overlap.
#[derive(Debug, Default)]
struct AbortedRanges(HashMap<i64, Vec<(i64, i64)>>);

impl AbortedRanges {
    fn new(txns: Vec<AbortedTxn>) -> Self {
        let mut ranges = Self::default();
        for txn in txns {
            ranges
                .0
                .entry(txn.producer_id)
                .or_default()
                .push((txn.first_offset, txn.last_offset));
        }
        ranges
    }

    fn contains(&self, header: &BatchHeader) -> bool {
        header.is_transactional()
            && !header.is_control()
            && self.0.get(&header.producer_id).is_some_and(|spans| {
                spans
                    .iter()
                    .any(|&(first, last)| first <= header.base_offset && header.base_offset <= last)
            })
    }
}

impl Log {
    /// How dirty the log is now, cleaning nothing at or past
    /// `stable_offset` (the partition's last stable offset); `None` unless
    /// its policy is compact.
    pub fn dirtiness(&self, stable_offset: i64) -> Option<Dirtiness> {
        let config = self.config();
        if !config.cleanup_policy.compact {
            return None;
        }
        let (segments, first_dirty_offset, active_base_offset) = self.cleaner_summary();
        Some(Dirtiness::of(
            &segments,
            first_dirty_offset,
            active_base_offset,
            stable_offset,
            &config,
            self.clock_now_ms(),
        ))
    }

    /// Compacts all the closed segments within `bounds` (whatever the
    /// cleaner cleaned before), if the log's policy says so.
    pub fn compact(&self, bounds: &CleanBounds) -> Result<CleanerStats> {
        self.clean_pass(true, DEDUPE_BUFFER_BYTES_DEFAULT, bounds)
    }

    /// One pass of the log cleaner: deduplicates the dirty tail (as far as
    /// a key map of `dedupe_buffer_bytes` covers, and never at or past
    /// `bounds.stable_offset`, the partition's last stable offset) against
    /// everything before it, and moves the cleaner's point past what it
    /// covered.
    pub fn clean(&self, dedupe_buffer_bytes: u64, bounds: &CleanBounds) -> Result<CleanerStats> {
        self.clean_pass(false, dedupe_buffer_bytes, bounds)
    }

    fn clean_pass(
        &self,
        from_start: bool,
        dedupe_buffer_bytes: u64,
        bounds: &CleanBounds,
    ) -> Result<CleanerStats> {
        let stable_offset = bounds.stable_offset;
        let config = self.config();
        let mut stats = CleanerStats::default();
        if !config.cleanup_policy.compact {
            return Ok(stats);
        }
        let view = self.closed_segments()?;
        let segments = &view.segments;
        let summaries: Vec<SegmentSummary> = segments.iter().map(ClosedSegment::summary).collect();
        let first_dirty_offset = if from_start {
            segments
                .first()
                .map_or(view.first_dirty_offset, |s| s.base_offset)
        } else {
            view.first_dirty_offset
        };
        let now_ms = self.clock_now_ms();
        let dirtiness = Dirtiness::of(
            &summaries,
            first_dirty_offset,
            view.active_base_offset,
            stable_offset,
            &config,
            now_ms,
        );
        let uncleanable = dirtiness.first_uncleanable_offset;
        stats.end_offset = first_dirty_offset;
        if dirtiness.cleanable_bytes == 0 {
            return Ok(stats);
        }
        // Below `uncleanable` every transaction has ended; these aborted.
        let aborted = AbortedRanges::new(self.aborted_txns(i64::MIN, uncleanable));

        // Pass 1: the latest offset of every key in the dirty tail, until
        // the map is full. Markers carry no keys, and aborted records
        // supersede nothing.
        let mut latest = KeyMap::new(dedupe_buffer_bytes);
        let mut end_offset = uncleanable;
        for seg in segments
            .iter()
            .filter(|s| s.next_offset > first_dirty_offset && s.base_offset < uncleanable)
        {
            for_each_batch(seg, |header, bytes| {
                if header.base_offset >= uncleanable {
                    return Ok(ControlFlow::Break(()));
                }
                let last_offset = header.base_offset + i64::from(header.last_offset_delta);
                if last_offset < first_dirty_offset
                    || header.is_control()
                    || aborted.contains(header)
                {
                    return Ok(ControlFlow::Continue(()));
                }
                for record in records::decode_records(bytes)? {
                    let offset = header.base_offset + i64::from(record.offset_delta);
                    if offset < first_dirty_offset {
                        continue;
                    }
                    if let Some(key) = record.key {
                        if !latest.insert(key, offset) {
                            end_offset = offset;
                            stats.key_map_full = true;
                            return Ok(ControlFlow::Break(()));
                        }
                    }
                }
                Ok(ControlFlow::Continue(()))
            })?;
            if stats.key_map_full {
                break;
            }
        }
        stats.end_offset = end_offset;

        // Pass 2: rewrite each segment below the end, in offset order from
        // the log's start, so that a transaction's data is seen before its
        // marker.
        let tombstone_horizon = now_ms.saturating_sub(config.delete_retention_ms);
        let mut retention = BatchRetention {
            producers: &bounds.producers,
            txn_has_data: HashMap::new(),
            now_ms,
            delete_retention_ms: config.delete_retention_ms,
        };
        for seg in segments.iter().filter(|s| s.base_offset < end_offset) {
            let (base_offset, file_id, size) = (seg.base_offset, seg.file_id, seg.size);
            stats.bytes_read += size;
            let mut out = Vec::with_capacity(size as usize);
            let mut changed = false;
            let mut removed_aborts = Vec::new();
            for_each_batch(seg, |header, bytes| {
                if header.base_offset >= end_offset {
                    out.extend_from_slice(bytes);
                    return Ok(ControlFlow::Continue(()));
                }
                if header.is_control() {
                    match retention.marker(header) {
                        MarkerFate::Keep => out.extend_from_slice(bytes),
                        MarkerFate::SetHorizon(horizon) => {
                            let kept = records::decode_records(bytes)?;
                            out.extend_from_slice(&rebuild(header, kept, Some(horizon))?);
                            changed = true;
                        }
                        MarkerFate::Remove => {
                            if txn::parse_marker(bytes)
                                .ok()
                                .flatten()
                                .is_some_and(|m| m.control_type == txn::ControlType::Abort)
                            {
                                removed_aborts.push((header.producer_id, header.base_offset));
                            }
                            stats.markers_removed += 1;
                            changed = true;
                        }
                    }
                    return Ok(ControlFlow::Continue(()));
                }
                let all = records::decode_records(bytes)?;
                let read = all.len();
                let keep_tombstones = header.max_timestamp >= tombstone_horizon;
                let is_aborted = aborted.contains(header);
                let mut kept = Vec::with_capacity(all.len());
                for record in all {
                    let offset = header.base_offset + i64::from(record.offset_delta);
                    if offset >= end_offset {
                        // Past what the key map covered: the next pass's.
                        kept.push(record);
                        continue;
                    }
                    if is_aborted {
                        stats.aborted_records_dropped += 1;
                        continue;
                    }
                    let Some(key) = &record.key else { continue };
                    if latest.get(key).is_some_and(|latest| latest > offset) {
                        continue;
                    }
                    if record.value.is_none() && !keep_tombstones {
                        stats.tombstones_dropped += 1;
                        continue;
                    }
                    kept.push(record);
                }
                stats.records_read += read as u64;
                stats.records_kept += kept.len() as u64;
                // An empty batch (emptied now, or by an earlier pass) stays
                // only as its producer's last, so that the producer's epoch
                // and sequence survive a rebuild of its state from the log.
                let keep = !kept.is_empty() || retention.is_producers_last(header);
                if !keep {
                    stats.batches_removed += 1;
                    changed = true;
                    return Ok(ControlFlow::Continue(()));
                }
                retention.data_kept(header);
                if kept.len() == read {
                    out.extend_from_slice(bytes);
                } else {
                    out.extend_from_slice(&rebuild(header, kept, None)?);
                    changed = true;
                }
                Ok(ControlFlow::Continue(()))
            })?;
            if !changed {
                continue;
            }
            let cleaned = self.dir().join(format!(
                "{}.{CLEANED_SUFFIX}",
                segment::file_name(base_offset, LOG_SUFFIX)
            ));
            let cleaned_file =
                File::create(&cleaned).map_err(StorageError::io("create", &cleaned))?;
            cleaned_file
                .write_all_at(&out, 0)
                .map_err(StorageError::io("write", &cleaned))?;
            cleaned_file
                .sync_all()
                .map_err(StorageError::io("fsync", &cleaned))?;
            drop(cleaned_file);
            if self.swap_cleaned(base_offset, file_id, size, &cleaned, &removed_aborts)? {
                stats.segments_cleaned += 1;
                stats.bytes_before += size;
                stats.bytes_after += out.len() as u64;
            }
        }
        self.advance_first_dirty_offset(&view, end_offset);
        if stats.segments_cleaned > 0 {
            info!(log = %self.name(), keys = latest.len(), ?stats, "compacted");
        }
        Ok(stats)
    }
}

/// Re-encodes a batch with only `kept` records, keeping its base offset,
/// offset span, epoch, producer fields, codec and timestamps; with a
/// `delete_horizon` (a marker's, KIP-534), the batch carries it as its base
/// timestamp and says so in its attributes, and its records keep their
/// timestamps.
fn rebuild(
    header: &BatchHeader,
    mut kept: Vec<records::Record>,
    delete_horizon: Option<i64>,
) -> std::result::Result<Vec<u8>, CorruptBatch> {
    let mut builder = BatchBuilder::new();
    if let Some(horizon) = delete_horizon {
        for record in &mut kept {
            let timestamp = header.base_timestamp.wrapping_add(record.timestamp_delta);
            record.timestamp_delta = timestamp.wrapping_sub(horizon);
        }
        builder.base_timestamp = Some(horizon);
        builder.delete_horizon = true;
        builder.max_timestamp = Some(header.max_timestamp);
    } else {
        builder.base_timestamp = Some(header.base_timestamp);
    }
    builder.base_offset = header.base_offset;
    builder.partition_leader_epoch = header.partition_leader_epoch;
    builder.compression = header.compression()?;
    builder.timestamp_type = header.timestamp_type();
    builder.producer_id = header.producer_id;
    builder.producer_epoch = header.producer_epoch;
    builder.base_sequence = header.base_sequence;
    builder.is_transactional = header.is_transactional();
    builder.is_control = header.is_control();
    builder.last_offset_delta = Some(header.last_offset_delta);
    for record in kept {
        builder.push_record(record);
    }
    if header.timestamp_type() == TimestampType::LogAppendTime {
        // The broker's append time is the batch's timestamp; keep it.
        builder.max_timestamp = Some(header.max_timestamp);
    }
    Ok(builder.build())
}

/// Calls `visit` with every batch of a segment file, in order, until it
/// says to stop. A batch that
/// fails its checks or whose records do not decode stops the pass with
/// [`StorageError::CorruptLog`], naming the file and position.
fn for_each_batch(
    seg: &ClosedSegment,
    mut visit: impl FnMut(&BatchHeader, &[u8]) -> std::result::Result<ControlFlow<()>, CorruptBatch>,
) -> Result<()> {
    let corrupt = |position, reason| StorageError::CorruptLog {
        path: seg.log_path.clone(),
        position,
        reason,
    };
    let mut cursor = BatchCursor::new(&seg.file, 0, seg.size, READ_CHUNK_BYTES);
    loop {
        let position = cursor.position;
        match cursor.next_batch() {
            Ok(Some(bytes)) => {
                let header = batch::check(bytes).map_err(|reason| corrupt(position, reason))?;
                if visit(&header, bytes)
                    .map_err(|reason| corrupt(position, reason))?
                    .is_break()
                {
                    return Ok(());
                }
            }
            Ok(None) => return Ok(()),
            Err(CursorError::Corrupt(reason)) => return Err(corrupt(position, reason)),
            Err(CursorError::Io(e)) => return Err(StorageError::io("read", &seg.log_path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(base_offset: i64, next_offset: i64, size: u64, timestamp: i64) -> SegmentSummary {
        SegmentSummary {
            base_offset,
            next_offset,
            size,
            max_timestamp: timestamp,
            first_timestamp: timestamp,
        }
    }

    #[test]
    fn dirty_ratio_is_the_cleanable_share_of_the_closed_bytes() {
        let config = LogConfig {
            cleanup_policy: crate::CleanupPolicy::COMPACT,
            min_cleanable_dirty_ratio: 0.5,
            ..LogConfig::default()
        };
        let segments = [
            segment(0, 10, 100, 1),
            segment(10, 20, 100, 2),
            segment(20, 30, 200, 3),
        ];
        // Cleaned below 20: 200 clean bytes, 200 dirty.
        let d = Dirtiness::of(&segments, 20, 30, i64::MAX, &config, 10);
        assert_eq!((d.clean_bytes, d.cleanable_bytes), (200, 200));
        assert_eq!(d.dirty_ratio(), 0.5);
        assert!(!d.needs_cleaning(), "Kafka cleans only strictly above");
        // Never cleaned: everything is dirty.
        let d = Dirtiness::of(&segments, 0, 30, i64::MAX, &config, 10);
        assert_eq!(d.dirty_ratio(), 1.0);
        assert!(d.needs_cleaning());
        // All cleaned: nothing to do.
        let d = Dirtiness::of(&segments, 30, 30, i64::MAX, &config, 10);
        assert_eq!(d.dirty_ratio(), 0.0);
        assert!(!d.needs_cleaning());
        // No closed segments at all.
        assert_eq!(
            Dirtiness::of(&[], 0, 0, i64::MAX, &config, 10).dirty_ratio(),
            0.0
        );
    }

    #[test]
    fn min_lag_stops_the_cleanable_range_and_max_lag_forces_a_clean() {
        let config = LogConfig {
            min_cleanable_dirty_ratio: 0.9,
            min_compaction_lag_ms: 100,
            max_compaction_lag_ms: 1000,
            ..LogConfig::default()
        };
        let segments = [
            segment(0, 10, 100, 0),
            segment(10, 20, 100, 500),
            segment(20, 30, 100, 950),
        ];
        // At 1000 the third segment is younger than the min lag.
        let d = Dirtiness::of(&segments, 10, 30, i64::MAX, &config, 1000);
        assert_eq!(d.first_uncleanable_offset, 20);
        assert_eq!((d.clean_bytes, d.cleanable_bytes), (100, 100));
        assert!(!d.compaction_due, "its oldest dirty record is 500 ms old");
        assert!(!d.needs_cleaning(), "a ratio of 0.5 is below 0.9");
        // At 1501 the oldest dirty record is past the max lag.
        let d = Dirtiness::of(&segments, 10, 30, i64::MAX, &config, 1501);
        assert_eq!(d.first_uncleanable_offset, 30);
        assert!(d.compaction_due);
        assert!(d.needs_cleaning());
        // A log with nothing cleanable is never due.
        let d = Dirtiness::of(&segments, 30, 30, i64::MAX, &config, 100_000);
        assert!(!d.compaction_due);
    }

    #[test]
    fn nothing_at_or_past_the_stable_offset_is_cleanable() {
        let config = LogConfig {
            cleanup_policy: crate::CleanupPolicy::COMPACT,
            ..LogConfig::default()
        };
        let segments = [segment(0, 10, 100, 1), segment(10, 20, 100, 2)];
        // An open transaction at 15: the second segment is cut there.
        let d = Dirtiness::of(&segments, 0, 20, 15, &config, 10);
        assert_eq!(d.first_uncleanable_offset, 15);
        assert_eq!(d.cleanable_bytes, 200);
        // Once cleaned up to 15, the segment straddling it has nothing
        // cleanable left until the transaction ends.
        let d = Dirtiness::of(&segments, 15, 20, 15, &config, 10);
        assert_eq!(d.cleanable_bytes, 0);
        assert!(!d.needs_cleaning());
        let d = Dirtiness::of(&segments, 15, 20, 20, &config, 10);
        assert_eq!(d.cleanable_bytes, 100);
        // A stable offset below the cleaner's point cleans nothing either.
        let d = Dirtiness::of(&segments, 15, 20, 5, &config, 10);
        assert_eq!(d.cleanable_bytes, 0);
    }

    #[test]
    fn key_map_refuses_new_keys_beyond_its_bytes_but_updates_known_ones() {
        let entry = 3 + KeyMap::ENTRY_OVERHEAD_BYTES;
        let mut map = KeyMap::new(2 * entry);
        assert!(map.insert(b"aaa".to_vec(), 0));
        assert!(map.insert(b"bbb".to_vec(), 1));
        assert!(!map.insert(b"ccc".to_vec(), 2), "a third key does not fit");
        assert!(map.insert(b"aaa".to_vec(), 3), "a known key still moves on");
        assert_eq!(map.get(b"aaa"), Some(3));
        assert_eq!(map.get(b"ccc"), None);
        assert_eq!(map.len(), 2);
        // A map too small for any key still takes one, so a pass progresses.
        let mut tiny = KeyMap::new(0);
        assert!(tiny.insert(b"key".to_vec(), 0));
        assert!(!tiny.insert(b"other".to_vec(), 1));
    }
}
