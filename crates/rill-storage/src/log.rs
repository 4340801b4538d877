//! The partition log: an ordered set of segments with one active segment at
//! the end, and the operations the broker performs on it.
//!
//! # Concurrency
//! A `Log` is shared (`&self` everywhere). Three locks, always taken in this
//! order when more than one is needed:
//! - `flush`: whether a flush is running; group commit waits on its condvar.
//! - `structure`: held by operations that remove or rewrite segment files
//!   (flush's fsync phase, truncation, deletion, retention, the cleaner's
//!   swap), so that none of them sees another's half-done work.
//! - `state`: the segment map and offsets. Held briefly; appends hold it for
//!   offset assignment and the page-cache write, reads only to plan which
//!   file ranges to scan. No fsync happens under it on the append path.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rill_types::Clock;
use tracing::{info, warn};

use crate::batch::{self, BatchHeader, TimestampType};
use crate::checkpoint;
use crate::config::LogConfig;
use crate::epoch::{EpochEndOffset, EpochEntry, LeaderEpochCache};
use crate::error::{InvalidRecord, Result, StorageError};
use crate::files::FileCache;
use crate::records;
use crate::segment::{self, BatchCursor, Segment, CLEANED_SUFFIX, LOG_SUFFIX};

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

/// Told how long each flush of a log took: one pass of fsyncs (its unsynced
/// segment files, and its directory and closed segments' indexes when they
/// changed), however many `flush_until` callers shared it. This is how the
/// broker measures fsync latency while rill-storage keeps no metrics and
/// depends on no metrics crate.
pub trait FlushObserver: Send + Sync + std::fmt::Debug {
    /// Called after every flush pass, whether it succeeded or not.
    fn flushed(&self, elapsed: Duration);
}

/// The outcome of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The time stamped on the batches under LogAppendTime, else -1.
    pub log_append_time: i64,
    pub log_start_offset: i64,
    pub batch_count: usize,
}

/// A byte range of a segment file holding whole batches, ready for `sendfile`.
#[derive(Debug, Clone)]
pub struct FileRegion {
    pub file: Arc<File>,
    pub position: u64,
    pub len: u64,
}

/// The outcome of a read.
#[derive(Debug, Clone, Default)]
pub struct ReadInfo {
    pub regions: Vec<FileRegion>,
    /// Total bytes in `regions`.
    pub bytes: u64,
    /// The offset after the last batch returned (the start offset if none).
    pub next_offset: i64,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
}

/// A closed segment as the cleaner sees it: enough to read it, and to
/// check at swap time that it is still the same file.
#[derive(Debug)]
pub(crate) struct ClosedSegment {
    pub base_offset: i64,
    pub next_offset: i64,
    pub file_id: crate::files::FileId,
    pub file: Arc<File>,
    pub log_path: PathBuf,
    pub size: u64,
    pub max_timestamp: i64,
    pub first_timestamp: i64,
}

impl ClosedSegment {
    pub fn summary(&self) -> SegmentSummary {
        SegmentSummary {
            base_offset: self.base_offset,
            next_offset: self.next_offset,
            size: self.size,
            max_timestamp: self.max_timestamp,
            first_timestamp: self.first_timestamp,
        }
    }
}

/// The closed segments and the cleaner's point, read together.
#[derive(Debug)]
pub(crate) struct CleanerView {
    pub segments: Vec<ClosedSegment>,
    pub active_base_offset: i64,
    pub first_dirty_offset: i64,
    pub truncations: u64,
}

/// What the cleaner needs of a closed segment to judge a log's dirtiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentSummary {
    pub base_offset: i64,
    pub next_offset: i64,
    pub size: u64,
    /// The largest batch timestamp, -1 if none.
    pub max_timestamp: i64,
    /// The first batch's timestamp (what KIP-354 measures the lag from).
    pub first_timestamp: i64,
}

/// A record found by timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampOffset {
    pub timestamp: i64,
    pub offset: i64,
}

/// The batches of one append, as the roll decision sees them.
#[derive(Debug)]
struct Incoming {
    bytes: u64,
    base_offset: i64,
    last_offset: i64,
    max_timestamp: i64,
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
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic under one of these locks is a bug that has already been
    // reported; the data it guards is still the best there is.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Log {
    /// Opens (creating if needed) the log in `dir`, recovering what a crash
    /// may have left. File contents never make this fail: damage is cut off
    /// and logged. Only the operating system refusing file operations does.
    pub fn open(
        dir: &Path,
        config: LogConfig,
        clock: Arc<dyn Clock>,
        files: Arc<FileCache>,
        options: LogOpenOptions,
    ) -> Result<Self> {
        config.validate()?;
        fs::create_dir_all(dir).map_err(StorageError::io("create directory", dir))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut bases = Vec::new();
        for entry in fs::read_dir(dir).map_err(StorageError::io("list", dir))? {
            let entry = entry.map_err(StorageError::io("list", dir))?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            match segment::parse_file_name(file_name) {
                Some((base, LOG_SUFFIX)) => bases.push(base),
                Some((_, suffix))
                    if suffix.ends_with(CLEANED_SUFFIX) || suffix.ends_with("tmp") =>
                {
                    info!(log = %name, file = file_name, "removing an unfinished file");
                    segment::remove_if_exists(&entry.path())?;
                }
                _ => {}
            }
        }
        bases.sort_unstable();
        let mut epochs = LeaderEpochCache::load(dir);
        let rebuild_epochs = epochs.needs_rebuild();
        let recovery_segment_base = if options.clean_shutdown {
            i64::MAX
        } else {
            bases
                .iter()
                .copied()
                .filter(|&b| b <= options.recovery_point)
                .max()
                .unwrap_or(i64::MIN)
        };

        let mut segments = BTreeMap::new();
        let mut recovering = false;
        let mut previous_end = i64::MIN;
        for (i, &base) in bases.iter().enumerate() {
            let mut seg = Segment::existing(dir, base, &files);
            if base < previous_end {
                warn!(log = %name, base_offset = base, previous_end, "segment overlaps the one before; removing it and all later segments");
                for &later in &bases[i..] {
                    Segment::existing(dir, later, &files).delete_files(&files)?;
                }
                break;
            }
            let file = seg.file(&files)?;
            recovering |= base >= recovery_segment_base;
            if !recovering {
                if !seg.load_trusted(&file, &config)? {
                    warn!(log = %name, base_offset = base, "segment or its indexes are inconsistent; recovering from here on");
                    recovering = true;
                } else if rebuild_epochs {
                    seg.scan_headers(&file, 0, seg.size, |location| {
                        let header = &location.header;
                        epochs.assign(header.partition_leader_epoch, header.base_offset);
                        true
                    })?;
                }
            }
            let mut cut = None;
            if recovering {
                cut = seg.recover(&file, &config, |h| {
                    epochs.assign(h.partition_leader_epoch, h.base_offset)
                })?;
            }
            previous_end = seg.next_offset;
            segments.insert(base, seg);
            if let Some((position, reason)) = cut {
                let later = &bases[i + 1..];
                warn!(log = %name, base_offset = base, position, %reason, later_segments_removed = later.len(), "truncated the log at a damaged batch");
                for &later in later {
                    Segment::existing(dir, later, &files).delete_files(&files)?;
                }
                break;
            }
        }
        let recovered_end = segments
            .values()
            .next_back()
            .map_or(i64::MIN, |s| s.next_offset);
        if options.log_start_offset > recovered_end {
            // The log was emptied past its data (DeleteRecords up to the end,
            // or a truncation after it) before the crash: start it afresh
            // where it started, so offsets below are never reused.
            if !segments.is_empty() {
                info!(log = %name, log_start_offset = options.log_start_offset, recovered_end, "log start is past the recovered data; restarting the log there");
            }
            for (_, seg) in std::mem::take(&mut segments) {
                seg.delete_files(&files)?;
            }
        }
        if segments.is_empty() {
            let base = options.log_start_offset.max(0);
            segments.insert(base, Segment::create(dir, base, &files)?);
        }

        let mut state = LogState {
            config: Arc::new(config),
            segments,
            log_start_offset: 0,
            recovery_point: 0,
            epochs,
            dir_dirty: true,
            closed: false,
            fsync_failed: false,
            first_dirty_offset: 0,
            truncations: 0,
        };
        let log_end_offset = state.log_end_offset();
        let first_base = state.segments.keys().next().copied().unwrap_or(0);
        state.log_start_offset = options.log_start_offset.max(first_base).min(log_end_offset);
        // Start first, then end: an epoch moved up to a log start that is
        // also the log end goes too, so an empty log opens with no epochs
        // whether they were checkpointed or rebuilt from batches below its
        // start (and opening it again changes nothing).
        state.epochs.truncate_from_start(state.log_start_offset);
        state.epochs.truncate_from_end(log_end_offset);
        // Recovered segments were checked but not fsynced (their `synced_size`
        // is zero, so the next flush covers them); until then the recovery
        // point stays where it was. Opening many logs thus costs no fsyncs.
        state.recovery_point = if options.clean_shutdown {
            log_end_offset
        } else {
            options
                .recovery_point
                .clamp(state.log_start_offset, log_end_offset)
        };
        let log = Self {
            dir: dir.to_path_buf(),
            name,
            clock,
            files,
            flush: Mutex::new(false),
            flushed: Condvar::new(),
            structure: Mutex::new(()),
            high_watermark: AtomicI64::new(state.log_start_offset),
            state: Mutex::new(state),
            flush_observer: None,
        };
        Ok(log)
    }

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

    /// Checks every batch of a produce request's records: structure, CRC,
    /// record count, size, and keys on compacted logs. Returns their headers.
    fn validate_produced(records: &[u8], config: &LogConfig) -> Result<Vec<BatchHeader>> {
        let mut headers = Vec::new();
        for (batch_index, batch) in batch::split(records).enumerate() {
            let corrupt = |reason| StorageError::Corrupt {
                batch_index,
                reason,
            };
            let batch = batch.map_err(corrupt)?;
            if batch.len() as u64 > config.max_message_bytes {
                return Err(StorageError::BatchTooLarge {
                    size: batch.len(),
                    max: config.max_message_bytes as usize,
                });
            }
            let header = batch::check(batch).map_err(corrupt)?;
            batch::check_record_count(&header).map_err(corrupt)?;
            // Uncompressed records are walked (not decoded) to check that
            // the count is true; compressed ones would need decompressing,
            // which the produce path avoids unless the log is compacted.
            if header.compression() == Ok(crate::batch::Compression::None) {
                records::check_uncompressed_count(batch).map_err(corrupt)?;
            }
            if config.cleanup_policy.compact && !header.is_control() {
                let record_indexes = records::keyless_records(batch).map_err(corrupt)?;
                if !record_indexes.is_empty() {
                    return Err(StorageError::Invalid {
                        batch_index,
                        reason: InvalidRecord::MissingKeyOnCompactedTopic { record_indexes },
                    });
                }
            }
            headers.push(header);
        }
        if headers.is_empty() {
            return Err(StorageError::EmptyAppend);
        }
        Ok(headers)
    }

    /// Appends the record batches of a produce request as the partition's
    /// leader in `leader_epoch`: validates every batch, then assigns offsets
    /// (rewriting each `baseOffset`), stamps the epoch and, under
    /// LogAppendTime, the time. `records` is rewritten in place and written
    /// to the page cache; nothing is fsynced (see [`Log::flush_until`]).
    /// A rejected request leaves the log unchanged.
    pub fn append(&self, records: &mut [u8], leader_epoch: i32) -> Result<AppendInfo> {
        let config = self.config();
        let mut headers = Self::validate_produced(records, &config)?;
        let now_ms = self.clock.now_ms();
        let log_append_time = config.timestamp_type == TimestampType::LogAppendTime;
        // Everything that does not depend on the offsets happens before the lock.
        let mut position = 0;
        for header in &mut headers {
            let bytes = &mut records[position..position + header.size()];
            batch::set_partition_leader_epoch(bytes, leader_epoch);
            if log_append_time {
                batch::set_log_append_time(bytes, now_ms);
            }
            *header = BatchHeader::parse(bytes).expect("a validated header stays parseable");
            position += header.size();
        }

        let mut state = lock(&self.state);
        self.ensure_open(&state)?;
        let base_offset = state.log_end_offset();
        let mut next_offset = base_offset;
        let mut position = 0;
        for header in &mut headers {
            batch::set_base_offset(&mut records[position..], next_offset);
            header.base_offset = next_offset;
            next_offset = header.next_offset();
            position += header.size();
        }
        let last_offset = next_offset - 1;
        self.write_batches(
            &mut state,
            records,
            &headers,
            (base_offset, last_offset),
            now_ms,
        )?;
        state.epochs.assign(leader_epoch, base_offset);
        Ok(AppendInfo {
            base_offset,
            last_offset,
            log_append_time: if log_append_time { now_ms } else { -1 },
            log_start_offset: state.log_start_offset,
            batch_count: headers.len(),
        })
    }

    /// Appends batches fetched from the leader, as a follower: offsets and
    /// epochs are the leader's and are kept; the batches must start at or
    /// after this log's end.
    pub fn append_replicated(&self, records: &[u8]) -> Result<AppendInfo> {
        let mut headers = Vec::new();
        for (batch_index, batch) in batch::split(records).enumerate() {
            let corrupt = |reason| StorageError::Corrupt {
                batch_index,
                reason,
            };
            let header = batch::check(batch.map_err(corrupt)?).map_err(corrupt)?;
            if !header.offsets_are_sane() {
                return Err(StorageError::Invalid {
                    batch_index,
                    reason: InvalidRecord::BadOffsets {
                        base_offset: header.base_offset,
                        last_offset: header.last_offset(),
                    },
                });
            }
            headers.push(header);
        }
        let (Some(first), Some(last)) = (headers.first(), headers.last()) else {
            return Err(StorageError::EmptyAppend);
        };
        let (base_offset, last_offset) = (first.base_offset, last.last_offset());
        let now_ms = self.clock.now_ms();
        let mut state = lock(&self.state);
        self.ensure_open(&state)?;
        let mut expected = state.log_end_offset();
        for (batch_index, header) in headers.iter().enumerate() {
            if header.base_offset < expected {
                return Err(StorageError::Invalid {
                    batch_index,
                    reason: InvalidRecord::OffsetBelowLogEnd {
                        base_offset: header.base_offset,
                        log_end_offset: expected,
                    },
                });
            }
            expected = header.next_offset();
        }
        self.write_batches(
            &mut state,
            records,
            &headers,
            (base_offset, last_offset),
            now_ms,
        )?;
        for header in &headers {
            state
                .epochs
                .assign(header.partition_leader_epoch, header.base_offset);
        }
        Ok(AppendInfo {
            base_offset,
            last_offset,
            log_append_time: -1,
            log_start_offset: state.log_start_offset,
            batch_count: headers.len(),
        })
    }

    /// Writes whole batches (offsets final) at the end of the log, rolling
    /// first if the active segment cannot take them. Shared by leader and
    /// follower appends; the caller holds the state lock.
    fn write_batches(
        &self,
        state: &mut LogState,
        records: &[u8],
        headers: &[BatchHeader],
        (base_offset, last_offset): (i64, i64),
        now_ms: i64,
    ) -> Result<()> {
        if last_offset - base_offset > i64::from(i32::MAX) {
            // Offsets within a segment are 32-bit; no request may need more.
            return Err(StorageError::Invalid {
                batch_index: 0,
                reason: InvalidRecord::OffsetSpanTooLarge(last_offset - base_offset + 1),
            });
        }
        let incoming = Incoming {
            bytes: records.len() as u64,
            base_offset,
            last_offset,
            max_timestamp: headers.iter().map(|h| h.max_timestamp).max().unwrap_or(-1),
        };
        self.roll_if_needed(state, &incoming, now_ms)?;
        let index_interval_bytes = state.config.index_interval_bytes;
        let active = state.active_mut();
        let file = active.file(&self.files)?;
        active.append(&file, records, headers, index_interval_bytes, now_ms)
    }

    fn ensure_open(&self, state: &LogState) -> Result<()> {
        if state.closed {
            return Err(StorageError::Closed(self.name.clone()));
        }
        Ok(())
    }

    /// Rolls to a new segment at `base_offset` if the incoming bytes would
    /// overflow the active one by size, age, index capacity or offset range.
    fn roll_if_needed(&self, state: &mut LogState, incoming: &Incoming, now_ms: i64) -> Result<()> {
        let config = Arc::clone(&state.config);
        let active = state.active();
        // Kafka's rule: a segment is old when the incoming batches' largest
        // timestamp is `segment.ms` past the segment's first batch's (both
        // in the producers' time), or, for batches without timestamps, when
        // the clock is that far past the first append.
        let waited_ms = match active.rolling_timestamp_ms {
            Some(first) => incoming.max_timestamp.saturating_sub(first),
            None => active
                .first_append_ms
                .map_or(0, |t| now_ms.saturating_sub(t)),
        };
        let must_roll = !active.can_hold_offset(incoming.last_offset);
        let should_roll = !active.is_empty()
            && (active.size + incoming.bytes > config.segment_bytes
                || waited_ms >= config.segment_ms
                || active.indexes_full(&config));
        if must_roll || should_roll {
            self.roll_at(state, incoming.base_offset)?;
        }
        Ok(())
    }

    fn roll_at(&self, state: &mut LogState, base_offset: i64) -> Result<()> {
        let active = state.active();
        assert!(
            base_offset >= active.next_offset,
            "a new segment starts after the last"
        );
        if active.is_empty() {
            // An empty active segment is replaced rather than followed.
            let base = active.base_offset;
            if base == base_offset {
                return Ok(());
            }
            if let Some(old) = state.segments.remove(&base) {
                old.delete_files(&self.files)?;
            }
        }
        let segment = Segment::create(&self.dir, base_offset, &self.files)?;
        state.segments.insert(base_offset, segment);
        state.dir_dirty = true;
        Ok(())
    }

    /// Closes the active segment and starts a new one at the log end, if the
    /// active segment holds anything.
    pub fn roll(&self) -> Result<()> {
        let mut state = lock(&self.state);
        self.ensure_open(&state)?;
        if !state.active().is_empty() {
            let log_end_offset = state.log_end_offset();
            self.roll_at(&mut state, log_end_offset)?;
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

    /// The next segment to scan and from which byte, chosen under the lock
    /// so that the scan itself can run without it.
    fn plan_scan(&self, state: &LogState, from: ScanFrom) -> Result<Option<SegmentScan>> {
        let (seg, start_position) = match from {
            ScanFrom::Offset(offset) => {
                let Some(seg) = state.segment_for(offset) else {
                    return Ok(None);
                };
                let relative = u32::try_from(offset - seg.base_offset).unwrap_or(u32::MAX);
                let position = if offset > seg.base_offset {
                    seg.offset_index
                        .floor(relative)
                        .map_or(0, |e| u64::from(e.position))
                } else {
                    0
                };
                (seg, position)
            }
            ScanFrom::After(base) => match state.segments.range(base + 1..).next() {
                Some((_, seg)) => (seg, 0),
                None => return Ok(None),
            },
        };
        Ok(Some(SegmentScan {
            base_offset: seg.base_offset,
            file: seg.file(&self.files)?,
            start_position,
            size: seg.size,
            expected_first: seg.indexed_last_offset_at(start_position),
        }))
    }

    /// Reads whole batches from `start_offset` (the batch containing it
    /// first) up to `max_bytes`, excluding any batch whose last offset is at
    /// or beyond `upper_bound` (the high watermark for consumers, the log end
    /// for followers). The first batch is returned even if it alone exceeds
    /// `max_bytes`, so that a reader always makes progress.
    pub fn read(&self, start_offset: i64, max_bytes: u64, upper_bound: i64) -> Result<ReadInfo> {
        let mut info = ReadInfo {
            next_offset: start_offset,
            ..ReadInfo::default()
        };
        let mut scan = {
            let state = lock(&self.state);
            self.ensure_open(&state)?;
            info.log_start_offset = state.log_start_offset;
            info.log_end_offset = state.log_end_offset();
            if start_offset < state.log_start_offset || start_offset > info.log_end_offset {
                return Err(Self::out_of_range(&state, start_offset));
            }
            if start_offset == info.log_end_offset || start_offset >= upper_bound {
                return Ok(info);
            }
            self.plan_scan(&state, ScanFrom::Offset(start_offset))?
        };
        // One segment at a time: scan it without the lock, then plan the next.
        while let Some(plan) = scan {
            if plan.base_offset >= upper_bound {
                break;
            }
            let mut cursor =
                BatchCursor::new(&plan.file, plan.start_position, plan.size, HEADER_CHUNK)
                    .expecting_first(plan.expected_first);
            loop {
                let (position, header) = match cursor.next_located() {
                    Ok(Some(located)) => located,
                    Ok(None) => break,
                    Err(segment::CursorError::Corrupt(reason)) => {
                        let position = cursor.position;
                        warn!(log = %self.name, position, %reason, "unreadable batch while reading; the read stops here");
                        return Ok(info);
                    }
                    Err(segment::CursorError::Io(e)) => {
                        return Err(StorageError::io("read", &self.dir)(e));
                    }
                };
                if header.last_offset() < start_offset {
                    continue;
                }
                let len = header.size() as u64;
                if header.last_offset() >= upper_bound
                    || (info.bytes > 0 && info.bytes + len > max_bytes)
                {
                    return Ok(info);
                }
                match info.regions.last_mut() {
                    Some(last)
                        if Arc::ptr_eq(&last.file, &plan.file)
                            && last.position + last.len == position =>
                    {
                        last.len += len;
                    }
                    _ => info.regions.push(FileRegion {
                        file: Arc::clone(&plan.file),
                        position,
                        len,
                    }),
                }
                info.bytes += len;
                info.next_offset = header.next_offset();
            }
            let state = lock(&self.state);
            scan = self.plan_scan(&state, ScanFrom::After(plan.base_offset))?;
        }
        Ok(info)
    }

    /// [`Log::read`], with the batches copied into `out` (appended).
    pub fn read_into(
        &self,
        start_offset: i64,
        max_bytes: u64,
        upper_bound: i64,
        out: &mut Vec<u8>,
    ) -> Result<ReadInfo> {
        let info = self.read(start_offset, max_bytes, upper_bound)?;
        out.reserve(info.bytes as usize);
        for region in &info.regions {
            let from = out.len();
            out.resize(from + region.len as usize, 0);
            region
                .file
                .read_exact_at(&mut out[from..], region.position)
                .map_err(StorageError::io("read", &self.dir))?;
        }
        Ok(info)
    }

    /// The headers of the batches from `start_offset` below `upper_bound`,
    /// for rebuilding producer state (idempotence, transactions) from the log.
    pub fn batch_headers(&self, start_offset: i64, upper_bound: i64) -> Result<Vec<BatchHeader>> {
        let mut headers = Vec::new();
        let mut offset = start_offset;
        loop {
            let info = self.read(offset, 1024 * 1024, upper_bound)?;
            if info.regions.is_empty() {
                return Ok(headers);
            }
            for region in &info.regions {
                let end = region.position + region.len;
                let mut cursor = BatchCursor::new(&region.file, region.position, end, HEADER_CHUNK);
                loop {
                    match cursor.next_header() {
                        Ok(Some(header)) => headers.push(header),
                        // `read` walked these very batches; a region that no
                        // longer parses was cut meanwhile (truncation).
                        Ok(None) | Err(segment::CursorError::Corrupt(_)) => break,
                        Err(segment::CursorError::Io(e)) => {
                            return Err(StorageError::io("read", &self.dir)(e))
                        }
                    }
                }
            }
            offset = info.next_offset;
        }
    }

    /// The first record whose timestamp is at least `timestamp`, at or after
    /// the log start (ListOffsets by time). `None` if every record is older.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<TimestampOffset>> {
        let (mut scan, log_start_offset, mut time_entry, segment_start) = {
            let state = lock(&self.state);
            self.ensure_open(&state)?;
            let log_start_offset = state.log_start_offset;
            // Segments before the first whose largest timestamp reaches the
            // target hold nothing as new; within it, the time index says
            // where to begin.
            let Some(seg) = state
                .segments
                .values()
                .find(|s| s.max_timestamp >= timestamp && s.next_offset > log_start_offset)
            else {
                return Ok(None);
            };
            let entry = seg.time_index.last_below(timestamp);
            // The entry says the batch based at its offset first carried
            // its timestamp; that is checked when the scan gets there.
            let time_entry =
                entry.map(|e| (seg.base_offset + i64::from(e.relative_offset), e.timestamp));
            let from = time_entry.map_or(seg.base_offset, |(offset, _)| offset);
            let segment_start = seg.base_offset.max(log_start_offset);
            (
                self.plan_scan(&state, ScanFrom::Offset(from.max(log_start_offset)))?,
                log_start_offset,
                time_entry.filter(|&(offset, _)| offset >= log_start_offset),
                segment_start,
            )
        };
        'segments: while let Some(plan) = scan {
            let mut cursor =
                BatchCursor::new(&plan.file, plan.start_position, plan.size, HEADER_CHUNK)
                    .expecting_first(plan.expected_first);
            loop {
                let (position, header) = match cursor.next_located() {
                    Ok(Some(located)) => located,
                    Ok(None) | Err(segment::CursorError::Corrupt(_)) => break,
                    Err(segment::CursorError::Io(e)) => {
                        return Err(StorageError::io("read", &self.dir)(e))
                    }
                };
                if let Some((offset, entry_timestamp)) = time_entry {
                    if header.last_offset() >= offset {
                        time_entry = None;
                        if header.base_offset != offset || header.max_timestamp != entry_timestamp {
                            warn!(log = %self.name, offset, "time index entry disagrees with the log; scanning the segment from its start");
                            let state = lock(&self.state);
                            scan = self.plan_scan(&state, ScanFrom::Offset(segment_start))?;
                            continue 'segments;
                        }
                    }
                }
                if header.last_offset() < log_start_offset || header.max_timestamp < timestamp {
                    continue;
                }
                let bytes = read_batch(&plan.file, position, &header, &self.dir)?;
                let found = records_at_or_after(&bytes, &header, timestamp, log_start_offset);
                if found.is_some() {
                    return Ok(found);
                }
            }
            let state = lock(&self.state);
            scan = self.plan_scan(&state, ScanFrom::After(plan.base_offset))?;
        }
        Ok(None)
    }

    /// The earliest record carrying the largest timestamp in the log
    /// (ListOffsets MAX_TIMESTAMP). `None` for an empty log.
    pub fn max_timestamp_offset(&self) -> Result<Option<TimestampOffset>> {
        let (file, max_timestamp, batch_offset, size, position, expected_first) = {
            let state = lock(&self.state);
            self.ensure_open(&state)?;
            let mut best: Option<&Segment> = None;
            for seg in state.segments.values().filter(|s| !s.is_empty()) {
                if best.is_none_or(|b| seg.max_timestamp > b.max_timestamp) {
                    best = Some(seg);
                }
            }
            let Some(seg) = best else { return Ok(None) };
            let relative =
                u32::try_from(seg.offset_of_max_timestamp - seg.base_offset).unwrap_or(0);
            let position = seg
                .offset_index
                .floor(relative)
                .map_or(0, |e| u64::from(e.position));
            let file = seg.file(&self.files)?;
            let expected_first = seg.indexed_last_offset_at(position);
            (
                file,
                seg.max_timestamp,
                seg.offset_of_max_timestamp,
                seg.size,
                position,
                expected_first,
            )
        };
        let mut cursor =
            BatchCursor::new(&file, position, size, HEADER_CHUNK).expecting_first(expected_first);
        loop {
            match cursor.next_located() {
                Ok(Some((batch_position, header))) if header.base_offset == batch_offset => {
                    let bytes = read_batch(&file, batch_position, &header, &self.dir)?;
                    return Ok(
                        records_at_or_after(&bytes, &header, max_timestamp, i64::MIN).or(Some(
                            TimestampOffset {
                                timestamp: max_timestamp,
                                offset: batch_offset,
                            },
                        )),
                    );
                }
                Ok(Some(_)) => continue,
                Ok(None) | Err(segment::CursorError::Corrupt(_)) => return Ok(None),
                Err(segment::CursorError::Io(e)) => {
                    return Err(StorageError::io("read", &self.dir)(e))
                }
            }
        }
    }

    /// Makes everything below `offset` (capped at the log end) durable.
    /// Concurrent callers share fsyncs: while one flush runs, later callers
    /// wait and the next flush covers all of them (group commit).
    pub fn flush_until(&self, offset: i64) -> Result<()> {
        let mut running = lock(&self.flush);
        loop {
            {
                let state = lock(&self.state);
                // Nothing to sync, unless the epoch checkpoint changed with
                // no new data (opening a log can drop epochs).
                let synced = state.recovery_point >= offset.min(state.log_end_offset());
                if state.closed || (synced && !state.epochs.is_dirty()) {
                    return Ok(());
                }
                if state.fsync_failed {
                    return Err(StorageError::Io {
                        op: "fsync",
                        path: self.dir.clone(),
                        source: std::io::Error::other(
                            "an earlier fsync of this log failed; nothing after its recovery \
                             point counts as durable until the broker restarts",
                        ),
                    });
                }
            }
            if *running {
                running = self
                    .flushed
                    .wait(running)
                    .unwrap_or_else(|p| p.into_inner());
                continue;
            }
            *running = true;
            drop(running);
            let started = Instant::now();
            let result = self.flush_once();
            if let Some(observer) = &self.flush_observer {
                observer.flushed(started.elapsed());
            }
            running = lock(&self.flush);
            *running = false;
            self.flushed.notify_all();
            result?;
        }
    }

    /// Flushes everything appended so far.
    pub fn flush(&self) -> Result<()> {
        self.flush_until(i64::MAX)
    }

    /// One fsync pass: every segment with unsynced bytes, the indexes of
    /// closed segments, the epoch checkpoint and the directory.
    fn flush_once(&self) -> Result<()> {
        let _structure = lock(&self.structure);
        struct Work {
            base_offset: i64,
            file: Arc<File>,
            size: u64,
        }
        let (target, work, closed_indexes, dir_dirty) = {
            let mut state = lock(&self.state);
            let active_base = state.active().base_offset;
            let mut work = Vec::new();
            let mut closed_indexes = Vec::new();
            for seg in state.segments.values() {
                if seg.synced_size < seg.size {
                    work.push(Work {
                        base_offset: seg.base_offset,
                        file: seg.file(&self.files)?,
                        size: seg.size,
                    });
                }
                if seg.base_offset != active_base {
                    if let Some(pending) = seg.pending_indexes() {
                        closed_indexes.push((seg.base_offset, pending));
                    }
                }
            }
            let dir_dirty = std::mem::take(&mut state.dir_dirty);
            // The epoch checkpoint changes only when leadership does; writing
            // it here, under the lock, keeps it consistent with the log.
            state.epochs.persist()?;
            (state.log_end_offset(), work, closed_indexes, dir_dirty)
        };
        for w in &work {
            if let Err(error) = w.file.sync_data() {
                lock(&self.state).fsync_failed = true;
                return Err(StorageError::io("fsync", &self.dir)(error));
            }
        }
        if dir_dirty {
            if let Err(e) = checkpoint::sync_dir(&self.dir) {
                lock(&self.state).dir_dirty = true;
                return Err(e);
            }
        }
        // Closed segments' indexes no longer change (only truncation and
        // the cleaner's swap rewrite them, and both wait for `structure`);
        // writing them now, before the recovery point passes them, is what
        // lets a restart trust them. They are written outside the state
        // lock so that appends do not wait for these fsyncs.
        for (_, pending) in &closed_indexes {
            pending.write(true)?;
        }
        let mut state = lock(&self.state);
        for (base, pending) in &closed_indexes {
            if let Some(seg) = state.segments.get_mut(base) {
                seg.mark_indexes_written(pending);
            }
        }
        for w in work {
            if let Some(seg) = state.segments.get_mut(&w.base_offset) {
                seg.synced_size = seg.synced_size.max(w.size);
            }
        }
        state.recovery_point = state.recovery_point.max(target);
        Ok(())
    }

    /// Removes every record at or after `offset` (a follower whose log
    /// diverged from its new leader's). Below the log start, the log is
    /// emptied and restarted at `offset`. The cut is fsynced before return;
    /// every intermediate state on disk is a prefix of the old log.
    ///
    /// The cut falls at a batch boundary: a batch holding `offset` goes
    /// whole, and the log then ends where the kept batches end (or at the
    /// log start, if that is later). Kafka instead sets the end to `offset`
    /// itself; the two differ only for a cut inside a batch or a compaction
    /// gap, which a follower (truncating at the leader's batch boundaries)
    /// never asks for. The recovery-point checkpoint is the log manager's:
    /// use [`crate::LogManager::truncate_to`] for a crash-safe truncation.
    pub fn truncate_to(&self, offset: i64) -> Result<()> {
        let _structure = lock(&self.structure);
        let mut state = lock(&self.state);
        self.ensure_open(&state)?;
        if offset >= state.log_end_offset() {
            return Ok(());
        }
        if offset < state.log_start_offset {
            return self.restart_at(&mut state, offset);
        }
        info!(log = %self.name, offset, log_end_offset = state.log_end_offset(), "truncating");
        let doomed: Vec<i64> = state
            .segments
            .range(offset + 1..)
            .map(|(&b, _)| b)
            .rev()
            .collect();
        for base in doomed {
            if let Some(seg) = state.segments.remove(&base) {
                seg.delete_files(&self.files)?;
            }
        }
        let files = Arc::clone(&self.files);
        let active = state.active_mut();
        let file = active.file(&files)?;
        active.truncate_to(&file, offset)?;
        // The cut falls at a batch boundary, so the log now ends at the
        // first batch removed (Kafka's followers always truncate at
        // boundaries, where the two agree). It never ends below its start:
        // cutting the batch that holds the log start leaves an empty log
        // ending there, which is also what a restart finds (see `open`).
        let log_start_offset = state.log_start_offset;
        let active = state.active_mut();
        active.next_offset = active.next_offset.max(log_start_offset);
        let log_end_offset = state.log_end_offset();
        state.recovery_point = state.recovery_point.min(log_end_offset);
        state.first_dirty_offset = state.first_dirty_offset.min(log_end_offset);
        state.truncations += 1;
        self.clamp_high_watermark(&state);
        state.epochs.truncate_from_end(log_end_offset);
        state.epochs.persist()?;
        Ok(())
    }

    /// Empties the log and restarts it at `offset` (a follower far behind
    /// a leader whose log now starts later).
    pub fn truncate_fully_and_start_at(&self, offset: i64) -> Result<()> {
        let _structure = lock(&self.structure);
        let mut state = lock(&self.state);
        self.ensure_open(&state)?;
        self.restart_at(&mut state, offset)
    }

    fn restart_at(&self, state: &mut LogState, offset: i64) -> Result<()> {
        let offset = offset.max(0);
        info!(log = %self.name, offset, "emptying the log and restarting it");
        let fresh = Segment::create(&self.dir, offset, &self.files);
        let bases: Vec<i64> = state.segments.keys().copied().rev().collect();
        for base in bases {
            if base == offset {
                continue; // `Segment::create` replaced its files already.
            }
            if let Some(seg) = state.segments.remove(&base) {
                seg.delete_files(&self.files)?;
            }
        }
        if let Some(old) = state.segments.remove(&offset) {
            self.files.evict(old.file_id);
        }
        let fresh = fresh?;
        state.segments.insert(fresh.base_offset, fresh);
        state.log_start_offset = offset;
        state.recovery_point = offset;
        state.first_dirty_offset = offset;
        state.truncations += 1;
        self.high_watermark.store(offset, Ordering::Release);
        state.epochs.truncate_from_end(i64::MIN);
        state.epochs.persist()?;
        checkpoint::sync_dir(&self.dir)
    }

    /// Advances the log start offset to `offset` (DeleteRecords) and deletes
    /// the segments wholly below it, oldest first. Returns the new log start.
    pub fn delete_before(&self, offset: i64) -> Result<i64> {
        let _structure = lock(&self.structure);
        let mut state = lock(&self.state);
        self.ensure_open(&state)?;
        if offset > state.log_end_offset() || offset < 0 {
            return Err(Self::out_of_range(&state, offset));
        }
        if offset > state.log_start_offset {
            state.log_start_offset = offset;
            state.epochs.truncate_from_start(offset);
            self.clamp_high_watermark(&state);
            state.epochs.persist()?;
            self.delete_segments_below_start(&mut state)?;
        }
        Ok(state.log_start_offset)
    }

    /// Deletes closed segments whose every offset is below the log start.
    fn delete_segments_below_start(&self, state: &mut LogState) -> Result<usize> {
        let bases: Vec<i64> = state.segments.keys().copied().collect();
        let mut deleted = 0;
        for pair in bases.windows(2) {
            if pair[1] > state.log_start_offset {
                break;
            }
            if let Some(seg) = state.segments.remove(&pair[0]) {
                seg.delete_files(&self.files)?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Applies `retention.ms` and `retention.bytes` (under the delete
    /// policy) and removes segments below the log start. Deletes whole
    /// closed segments, oldest first, never the active one. Returns how
    /// many segments went.
    pub fn apply_retention(&self) -> Result<usize> {
        let _structure = lock(&self.structure);
        let mut state = lock(&self.state);
        self.ensure_open(&state)?;
        let config = Arc::clone(&state.config);
        let now_ms = self.clock.now_ms();
        let mut deleted = self.delete_segments_below_start(&mut state)?;
        if config.cleanup_policy.delete {
            let mut total: u64 = state.segments.values().map(|s| s.size).sum();
            while state.segments.len() > 1 {
                let Some((&base, seg)) = state.segments.iter().next() else {
                    break;
                };
                let expired = config.retention_ms >= 0
                    && now_ms - segment_largest_timestamp(seg) > config.retention_ms;
                let oversize = config.retention_bytes >= 0
                    && total - seg.size >= config.retention_bytes as u64;
                if !expired && !oversize {
                    break;
                }
                info!(log = %self.name, base_offset = base, expired, oversize, "retention deletes a segment");
                total -= seg.size;
                if let Some(seg) = state.segments.remove(&base) {
                    seg.delete_files(&self.files)?;
                }
                deleted += 1;
            }
        }
        let first_base = state.segments.keys().next().copied().unwrap_or(0);
        if first_base > state.log_start_offset {
            state.log_start_offset = first_base;
            state.epochs.truncate_from_start(first_base);
            self.clamp_high_watermark(&state);
            state.epochs.persist()?;
        }
        Ok(deleted)
    }

    /// Flushes everything, writes every index and checkpoint, and closes
    /// the log: later calls fail with [`StorageError::Closed`].
    pub fn close(&self) -> Result<()> {
        self.flush()?;
        self.close_files(true)
    }

    /// Closes the log without fsyncing anything, for a caller that makes
    /// the whole file system durable at once (`syncfs`) and then calls
    /// [`Log::mark_durable`]. Shutting down 10,000 partitions one fsync at a
    /// time would take minutes.
    pub(crate) fn close_unsynced(&self) -> Result<()> {
        self.close_files(false)
    }

    fn close_files(&self, sync: bool) -> Result<()> {
        let _structure = lock(&self.structure);
        let mut state = lock(&self.state);
        if state.closed {
            return Ok(());
        }
        for seg in state.segments.values_mut() {
            seg.persist_indexes(sync)?;
            self.files.evict(seg.file_id);
        }
        state.epochs.persist_with(sync)?;
        state.closed = true;
        Ok(())
    }

    /// Records that everything written is durable (the caller synced the
    /// file system after [`Log::close_unsynced`]).
    pub(crate) fn mark_durable(&self) {
        let mut state = lock(&self.state);
        if state.fsync_failed {
            // A later sync's success proves nothing (see `fsync_failed`).
            return;
        }
        for seg in state.segments.values_mut() {
            seg.synced_size = seg.size;
        }
        state.recovery_point = state.log_end_offset();
    }

    /// Closes the log and removes its directory. The directory is first
    /// renamed to `<name>.<time>-delete` (durably), so that a crash part-way
    /// leaves a name the log manager finishes deleting at the next start,
    /// never a half-deleted log under the partition's own name.
    pub fn delete(&self) -> Result<()> {
        let _structure = lock(&self.structure);
        let mut state = lock(&self.state);
        state.closed = true;
        for seg in state.segments.values() {
            self.files.evict(seg.file_id);
        }
        let doomed = self.dir.with_file_name(format!(
            "{}.{}{}",
            self.name,
            self.clock.now_ms(),
            crate::manager::DELETE_SUFFIX
        ));
        fs::rename(&self.dir, &doomed).map_err(StorageError::io("rename", &self.dir))?;
        if let Some(parent) = self.dir.parent() {
            checkpoint::sync_dir(parent)?;
        }
        fs::remove_dir_all(&doomed).map_err(StorageError::io("remove directory", &doomed))
    }

    // The cleaner (see `cleaner.rs`) works on closed segments through these.

    pub(crate) fn clock_now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Every closed segment, as the cleaner reads it, with the cleaner's
    /// point and the truncation count to hand back to
    /// [`Log::advance_first_dirty_offset`].
    pub(crate) fn closed_segments(&self) -> Result<CleanerView> {
        let state = lock(&self.state);
        self.ensure_open(&state)?;
        let active_base = state.active().base_offset;
        let segments = state
            .segments
            .values()
            .filter(|s| s.base_offset != active_base)
            .map(|s| {
                Ok(ClosedSegment {
                    base_offset: s.base_offset,
                    next_offset: s.next_offset,
                    file_id: s.file_id,
                    file: s.file(&self.files)?,
                    log_path: s.log_path.clone(),
                    size: s.size,
                    max_timestamp: s.max_timestamp,
                    first_timestamp: s.rolling_timestamp_ms.unwrap_or(s.max_timestamp),
                })
            })
            .collect::<Result<_>>()?;
        Ok(CleanerView {
            segments,
            active_base_offset: active_base,
            first_dirty_offset: state.first_dirty_offset.max(state.log_start_offset),
            truncations: state.truncations,
        })
    }

    /// The cleaner's summary of every closed segment, without opening any
    /// file: what choosing the dirtiest log needs.
    pub(crate) fn cleaner_summary(&self) -> (Vec<SegmentSummary>, i64, i64) {
        let state = lock(&self.state);
        let active_base = state.active().base_offset;
        let segments = state
            .segments
            .values()
            .filter(|s| s.base_offset != active_base)
            .map(|s| SegmentSummary {
                base_offset: s.base_offset,
                next_offset: s.next_offset,
                size: s.size,
                max_timestamp: s.max_timestamp,
                first_timestamp: s.rolling_timestamp_ms.unwrap_or(s.max_timestamp),
            })
            .collect();
        let first_dirty = state.first_dirty_offset.max(state.log_start_offset);
        (segments, first_dirty, active_base)
    }

    /// Records that the cleaner cleaned everything below `offset`, unless
    /// the log was truncated since it read `view`.
    pub(crate) fn advance_first_dirty_offset(&self, view: &CleanerView, offset: i64) {
        let mut state = lock(&self.state);
        if state.truncations == view.truncations {
            state.first_dirty_offset = state.first_dirty_offset.max(offset);
        }
    }

    /// Replaces a closed segment with a cleaned copy written at
    /// `<base>.log.cleaned`, if the segment is still the one that was read
    /// (`file_id`, `size`). Crash-safe: the old indexes are removed first
    /// (a restart rebuilds missing ones), then the cleaned file is renamed
    /// over the old, which is atomic.
    pub(crate) fn swap_cleaned(
        &self,
        base_offset: i64,
        file_id: u64,
        size: u64,
        cleaned: &Path,
    ) -> Result<bool> {
        let _structure = lock(&self.structure);
        let cleaned_file = File::open(cleaned).map_err(StorageError::io("open", cleaned))?;
        let mut replacement = Segment::existing(&self.dir, base_offset, &self.files);
        let config = self.config();
        if let Some((position, reason)) = replacement.recover(&cleaned_file, &config, |_| {})? {
            // A cleaned segment that fails its own checks is a cleaner bug;
            // keep the original.
            warn!(log = %self.name, base_offset, position, %reason, "cleaned segment failed validation; keeping the original");
            segment::remove_if_exists(cleaned)?;
            return Ok(false);
        }
        drop(cleaned_file);
        let mut state = lock(&self.state);
        let current = state.segments.get(&base_offset);
        if state.closed || current.is_none_or(|s| s.file_id != file_id || s.size != size) {
            segment::remove_if_exists(cleaned)?;
            return Ok(false);
        }
        let log_path = replacement.log_path.clone();
        segment::remove_if_exists(&replacement.index_path())?;
        segment::remove_if_exists(&replacement.time_index_path())?;
        fs::rename(cleaned, &log_path).map_err(StorageError::io("rename", cleaned))?;
        checkpoint::sync_dir(&self.dir)?;
        replacement.synced_size = replacement.size;
        replacement.persist_indexes(true)?;
        if let Some(old) = state.segments.insert(base_offset, replacement) {
            self.files.evict(old.file_id);
        }
        Ok(true)
    }
}

/// A segment's age for `retention.ms`: its largest record timestamp, or the
/// file's modification time if its batches carry none (as in Kafka).
fn segment_largest_timestamp(seg: &Segment) -> i64 {
    if seg.max_timestamp >= 0 {
        return seg.max_timestamp;
    }
    fs::metadata(&seg.log_path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(i64::MAX, |d| d.as_millis() as i64)
}

fn read_batch(file: &File, position: u64, header: &BatchHeader, dir: &Path) -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; header.size()];
    file.read_exact_at(&mut bytes, position)
        .map_err(StorageError::io("read", dir))?;
    Ok(bytes)
}

/// The first record of `bytes` (one batch) at or after `timestamp` and
/// `min_offset`. A batch whose records cannot be decoded answers with its
/// first offset, so a lookup still lands near the right place.
fn records_at_or_after(
    bytes: &[u8],
    header: &BatchHeader,
    timestamp: i64,
    min_offset: i64,
) -> Option<TimestampOffset> {
    let log_append_time = header.timestamp_type() == TimestampType::LogAppendTime;
    match records::decode_records(bytes) {
        Ok(records) => records.iter().find_map(|r| {
            // Wrapping, as Kafka's Java arithmetic does: crafted deltas must
            // not panic.
            let offset = header.base_offset.wrapping_add(i64::from(r.offset_delta));
            let ts = if log_append_time {
                header.max_timestamp
            } else {
                header.base_timestamp.wrapping_add(r.timestamp_delta)
            };
            (ts >= timestamp && offset >= min_offset).then_some(TimestampOffset {
                timestamp: ts,
                offset,
            })
        }),
        Err(_) => Some(TimestampOffset {
            timestamp: header.max_timestamp,
            offset: header.base_offset.max(min_offset),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::BatchBuilder;
    use rill_types::ManualClock;

    fn batch(keys: &[&str], ts: i64) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for k in keys {
            b.push(Some(k.as_bytes()), Some(b"v"), ts);
        }
        b.build()
    }

    fn open(dir: &Path, config: LogConfig, options: LogOpenOptions) -> Log {
        Log::open(
            dir,
            config,
            Arc::new(ManualClock::new(1_000)),
            FileCache::new(8),
            options,
        )
        .unwrap()
    }

    /// Counts flush passes, for the observer test.
    #[derive(Debug, Default)]
    struct CountFlushes(std::sync::atomic::AtomicUsize);

    impl FlushObserver for CountFlushes {
        fn flushed(&self, _elapsed: Duration) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn flush_observer_sees_each_flush_pass_once() {
        let dir = tempfile::tempdir().unwrap();
        let observer = Arc::new(CountFlushes::default());
        let log = open(dir.path(), LogConfig::default(), LogOpenOptions::default())
            .with_flush_observer(Some(Arc::clone(&observer) as Arc<dyn FlushObserver>));
        let flushes = || observer.0.load(std::sync::atomic::Ordering::Relaxed);
        // A new log has no epoch checkpoint yet: the first flush writes it.
        log.flush().unwrap();
        assert_eq!(flushes(), 1, "the epoch checkpoint");
        log.flush().unwrap();
        assert_eq!(flushes(), 1, "nothing to flush: no pass");
        log.append(&mut batch(&["a"], 100), 0).unwrap();
        log.flush_until(1).unwrap();
        assert_eq!(flushes(), 2);
        // Already durable: no second pass.
        log.flush_until(1).unwrap();
        assert_eq!(flushes(), 2);
        log.append(&mut batch(&["b"], 101), 0).unwrap();
        log.flush().unwrap();
        assert_eq!(flushes(), 3);
    }

    #[test]
    fn append_read_roll_reopen_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: 300,
            index_interval_bytes: 1,
            ..LogConfig::default()
        };
        let log = open(dir.path(), config.clone(), LogOpenOptions::default());
        let mut sizes = Vec::new();
        for i in 0..10 {
            let mut b = batch(&["a", "b"], 100 + i);
            sizes.push(b.len());
            let info = log.append(&mut b, 3).unwrap();
            assert_eq!(info.base_offset, i * 2);
            assert_eq!(info.last_offset, i * 2 + 1);
        }
        assert_eq!(log.log_end_offset(), 20);
        assert!(
            log.segment_count() > 2,
            "segments: {:?}",
            log.segment_base_offsets()
        );
        let mut out = Vec::new();
        let info = log.read_into(5, 1, 20, &mut out).unwrap();
        assert_eq!(info.next_offset, 6, "first batch always returned");
        assert_eq!(out.len(), sizes[2]);
        let header = BatchHeader::parse(&out).unwrap();
        assert_eq!(header.base_offset, 4);
        assert_eq!(header.partition_leader_epoch, 3);
        out.clear();
        let info = log.read_into(0, u64::MAX, 20, &mut out).unwrap();
        assert_eq!(info.next_offset, 20);
        assert_eq!(out.len(), sizes.iter().sum::<usize>());
        log.flush().unwrap();
        assert_eq!(log.recovery_point(), 20);
        drop(log);

        // A crash-style reopen rescans from the recovery point.
        let log = open(
            dir.path(),
            config.clone(),
            LogOpenOptions {
                recovery_point: 12,
                ..Default::default()
            },
        );
        assert_eq!(log.log_end_offset(), 20);
        let mut again = Vec::new();
        log.read_into(0, u64::MAX, 20, &mut again).unwrap();
        assert_eq!(again, out);
        assert_eq!(log.offset_for_timestamp(105).unwrap().unwrap().offset, 10);
        assert_eq!(log.max_timestamp_offset().unwrap().unwrap().offset, 18);
        // Offset 7 is inside the batch [6, 7]: the whole batch goes.
        log.truncate_to(7).unwrap();
        assert_eq!(log.log_end_offset(), 6);
        let mut kept = Vec::new();
        log.read_into(0, u64::MAX, 20, &mut kept).unwrap();
        assert_eq!(kept.len(), sizes[..3].iter().sum::<usize>());
        log.close().unwrap();
        drop(log);
        let log = open(
            dir.path(),
            config,
            LogOpenOptions {
                recovery_point: 6,
                clean_shutdown: true,
                ..Default::default()
            },
        );
        assert_eq!(log.log_end_offset(), 6);
        let mut b = batch(&["c"], 200);
        assert_eq!(log.append(&mut b, 4).unwrap().base_offset, 6);
        assert_eq!(
            log.end_offset_for_epoch(3),
            EpochEndOffset {
                epoch: 3,
                end_offset: 6
            }
        );
    }

    #[test]
    fn compaction_keeps_latest_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: 200,
            cleanup_policy: crate::CleanupPolicy::COMPACT,
            ..LogConfig::default()
        };
        let log = open(dir.path(), config, LogOpenOptions::default());
        for keys in [["a", "b"], ["a", "c"], ["b", "c"], ["a", "d"], ["x", "y"]] {
            log.append(&mut batch(&keys, 1_000), 0).unwrap();
        }
        let stats = log.compact().unwrap();
        assert!(stats.segments_cleaned > 0, "{stats:?}");
        let mut out = Vec::new();
        log.read_into(0, u64::MAX, i64::MAX, &mut out).unwrap();
        let mut seen = Vec::new();
        for b in batch::split(&out) {
            let b = b.unwrap();
            let h = batch::check(b).unwrap();
            for r in records::decode_records(b).unwrap() {
                seen.push((
                    h.base_offset + i64::from(r.offset_delta),
                    String::from_utf8(r.key.unwrap()).unwrap(),
                ));
            }
        }
        let keys: Vec<_> = seen.iter().map(|(o, k)| format!("{o}{k}")).collect();
        assert_eq!(keys, ["4b", "5c", "6a", "7d", "8x", "9y"], "{seen:?}");
        let mut keyless = BatchBuilder::new();
        keyless.push(None, Some(b"v"), 1);
        let err = log.append(&mut keyless.build(), 0).unwrap_err();
        assert!(matches!(
            err,
            StorageError::Invalid {
                reason: InvalidRecord::MissingKeyOnCompactedTopic { .. },
                ..
            }
        ));
    }
}
