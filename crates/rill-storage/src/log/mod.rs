//! The partition log: an ordered set of segments with one active segment at
//! the end, and the operations the broker performs on it.
//!
//! # Layout
//! This file holds the `Log` and its locked state; each concern adds its own
//! `impl Log` block:
//! - `open`: opening with crash recovery, closing, deleting.
//! - `append`: produced and replicated appends, rolling segments.
//! - `read`: fetch reads and batch scans.
//! - `search`: lookups by timestamp (ListOffsets).
//! - `flush`: group commit of fsyncs.
//! - `retention`: truncation, DeleteRecords and the retention limits.
//! - `cleaning`: what the log cleaner reads and swaps.
//! - `txn`: the aborted-transaction index (`.txnindex` per segment).
//!
//! # Concurrency
//! A `Log` is shared (`&self` everywhere). Three locks, always taken in this
//! order when more than one is needed:
//! - `flush`: whether a flush is running; group commit waits on its condvar.
//! - `structure`: held by operations that remove or rewrite segment files
//!   (flush's fsync phase, truncation, deletion, retention, the cleaner's
//!   swap, the fsynced append of an aborted transaction to a `.txnindex`),
//!   so that none of them sees another's half-done work.
//! - `state`: the segment map and offsets. Held briefly; appends hold it for
//!   offset assignment and the page-cache write, reads only to plan which
//!   file ranges to scan. No fsync happens under it on the append path.

mod append;
mod cleaning;
mod flush;
mod open;
mod read;
mod retention;
mod search;
#[cfg(test)]
mod tests;
mod txn;
mod writeback;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use rill_types::Clock;

use crate::config::LogConfig;
use crate::epoch::{EpochEndOffset, EpochEntry, LeaderEpochCache};
use crate::error::{Result, StorageError};
use crate::files::FileCache;
use crate::segment::Segment;

pub use append::AppendInfo;
pub(crate) use cleaning::{ClosedSegment, SegmentSummary};
pub use flush::FlushObserver;
pub use read::{FileRegion, ReadInfo, ReplayBatch};
pub use search::TimestampOffset;
pub use writeback::Writeback;

/// What the log knows from outside itself when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogOpenOptions {
    /// Everything below this offset was flushed before the last stop.
    pub recovery_point: i64,
    /// The log start offset last checkpointed.
    pub log_start_offset: i64,
    /// The previous process stopped cleanly: no segment needs a full scan.
    pub clean_shutdown: bool,
}

/// Bytes read at a time when scanning batch headers.
const HEADER_CHUNK: usize = 64 * 1024;

/// Where a scan of the segments begins.
#[derive(Debug, Clone, Copy)]
enum ScanFrom {
    /// In the segment holding this offset, from the index entry before it.
    Offset(i64),
    /// At the start of the segment after the one based here.
    After(i64),
}

/// A segment's file and the byte range to scan, taken under the lock.
#[derive(Debug)]
struct SegmentScan {
    base_offset: i64,
    file: Arc<File>,
    start_position: u64,
    size: u64,
    /// What the offset index says the batch at `start_position` ends with.
    expected_first: Option<i64>,
}

#[derive(Debug)]
struct LogState {
    config: Arc<LogConfig>,
    /// Keyed by base offset; never empty; the last one is active.
    segments: BTreeMap<i64, Segment>,
    log_start_offset: i64,
    recovery_point: i64,
    epochs: LeaderEpochCache,
    /// A segment file was created since the directory was last fsynced.
    dir_dirty: bool,
    closed: bool,
    /// An fsync of a segment failed since the log was opened. After a
    /// failed fsync the kernel may have dropped the dirty pages it could not
    /// write and still report the next fsync as a success ("fsyncgate"), so
    /// nothing written since the recovery point can be called durable
    /// again in this process: every later flush that has something to do
    /// fails, acks=all answers are errors, and the recovery point stays
    /// where it was, so that the next start scans that tail with its CRCs
    /// (Kafka takes the whole log dir offline instead).
    fsync_failed: bool,
    /// The log cleaner's point: records below it were cleaned (Kafka's
    /// cleaner checkpoint). Kept in memory only, so a restart cleans a
    /// compacted log once in full.
    first_dirty_offset: i64,
    /// Counts truncations, so that a cleaning pass that raced with one
    /// does not move `first_dirty_offset` over records it never read.
    truncations: u64,
    /// The segment (by base offset) and position below which the kernel
    /// was asked to write the active segment back ([`Log::take_writeback`]).
    writeback_started: (i64, u64),
}

impl LogState {
    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a log always has a segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has a segment")
    }

    fn log_end_offset(&self) -> i64 {
        self.active().next_offset
    }

    fn segment_for(&self, offset: i64) -> Option<&Segment> {
        self.segments.range(..=offset).next_back().map(|(_, s)| s)
    }
}

#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    /// `<topic>-<partition>`, for log lines.
    name: String,
    clock: Arc<dyn Clock>,
    files: Arc<FileCache>,
    flush: Mutex<bool>,
    flushed: Condvar,
    structure: Mutex<()>,
    state: Mutex<LogState>,
    flush_observer: Option<Arc<dyn FlushObserver>>,
    /// The offset below which records are committed (Kafka keeps it in
    /// its log too): the replica layer moves it, truncation and a new log
    /// start keep it within the log. Starts at the log start until
    /// [`Log::restore_high_watermark`] gives the checkpointed value.
    high_watermark: AtomicI64,
    /// Whether any segment has held an aborted transaction since the log
    /// was opened (never reset): a read_committed fetch of a log that has
    /// none, the common case, skips the index search and its lock.
    has_aborted_txns: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic under one of these locks is a bug that has already been
    // reported; the data it guards is still the best there is.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Log {
    /// The log, telling `observer` the duration of each flush pass.
    pub fn with_flush_observer(mut self, observer: Option<Arc<dyn FlushObserver>>) -> Self {
        self.flush_observer = observer;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> Arc<LogConfig> {
        Arc::clone(&lock(&self.state).config)
    }

    /// Changes the log's configuration; it applies to the next operation.
    pub fn set_config(&self, config: LogConfig) -> Result<()> {
        config.validate()?;
        lock(&self.state).config = Arc::new(config);
        Ok(())
    }

    pub fn log_start_offset(&self) -> i64 {
        lock(&self.state).log_start_offset
    }

    pub fn log_end_offset(&self) -> i64 {
        lock(&self.state).log_end_offset()
    }

    /// The base offset of the active (last) segment: a read from below it
    /// reads a closed segment, whose pages may have left the page cache.
    pub fn active_segment_base_offset(&self) -> i64 {
        lock(&self.state).active().base_offset
    }

    /// The offset below which records are committed: what consumers may
    /// read.
    ///
    /// Invariant: `log_start_offset <= high_watermark <= log_end_offset`
    /// (each move is clamped under the state lock).
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// Moves the high watermark forward to `offset`, clamped to the log
    /// end; never back. Returns whether it moved.
    pub fn advance_high_watermark(&self, offset: i64) -> bool {
        let state = lock(&self.state);
        let offset = offset.min(state.log_end_offset());
        let before = self.high_watermark.fetch_max(offset, Ordering::AcqRel);
        offset > before
    }

    /// Sets the high watermark to the checkpointed `offset`, clamped to
    /// the log (a checkpoint may predate a truncation or a new log start).
    pub fn restore_high_watermark(&self, offset: i64) {
        let state = lock(&self.state);
        let offset = offset.clamp(state.log_start_offset, state.log_end_offset());
        self.high_watermark.store(offset, Ordering::Release);
    }

    /// Keeps the high watermark within the log after its end or start moved.
    fn clamp_high_watermark(&self, state: &LogState) {
        let hw = self.high_watermark.load(Ordering::Acquire);
        let clamped = hw.clamp(state.log_start_offset, state.log_end_offset());
        if clamped != hw {
            self.high_watermark.store(clamped, Ordering::Release);
        }
    }

    /// Records that `epoch` begins at the log end: a new leader does so
    /// when it takes over, before its first append, so that a follower's
    /// OffsetForLeaderEpoch for the previous epoch ends where this one
    /// starts (Kafka's `Partition.makeLeader`). An epoch not above the
    /// latest is ignored.
    pub fn begin_epoch(&self, epoch: i32) -> Result<()> {
        let mut state = lock(&self.state);
        self.ensure_open(&state)?;
        if state.epochs.latest_epoch().is_some_and(|e| e >= epoch) {
            return Ok(());
        }
        let end = state.log_end_offset();
        state.epochs.assign(epoch, end);
        // Written (fsynced) by the next flush, with the log it describes,
        // as an append's new epoch is: one fsync per partition here made
        // creating 30,000 partitions take minutes.
        Ok(())
    }

    /// Everything below this offset is known to be durable.
    pub fn recovery_point(&self) -> i64 {
        lock(&self.state).recovery_point
    }

    /// Whether an fsync of this log failed since it was opened (see
    /// `LogState::fsync_failed`).
    pub fn fsync_failed(&self) -> bool {
        lock(&self.state).fsync_failed
    }

    pub fn segment_count(&self) -> usize {
        lock(&self.state).segments.len()
    }

    /// The base offsets of the segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<i64> {
        lock(&self.state).segments.keys().copied().collect()
    }

    /// Bytes of record batches held by the log.
    pub fn size_bytes(&self) -> u64 {
        lock(&self.state).segments.values().map(|s| s.size).sum()
    }

    pub fn leader_epochs(&self) -> Vec<EpochEntry> {
        lock(&self.state).epochs.entries().to_vec()
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        lock(&self.state).epochs.latest_epoch()
    }

    /// OffsetForLeaderEpoch: where the largest epoch not above `epoch` ends.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> EpochEndOffset {
        let state = lock(&self.state);
        state
            .epochs
            .end_offset_for_epoch(epoch, state.log_end_offset())
    }

    fn ensure_open(&self, state: &LogState) -> Result<()> {
        if state.closed {
            return Err(StorageError::Closed(self.name.clone()));
        }
        Ok(())
    }

    fn out_of_range(state: &LogState, offset: i64) -> StorageError {
        StorageError::OffsetOutOfRange {
            offset,
            log_start_offset: state.log_start_offset,
            log_end_offset: state.log_end_offset(),
        }
    }
}
