//! Opening a log (with crash recovery of what the last process left),
//! closing it, and deleting it.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{Arc, Condvar, Mutex};

use rill_types::Clock;
use tracing::{info, warn};

use crate::checkpoint;
use crate::config::LogConfig;
use crate::epoch::LeaderEpochCache;
use crate::error::{Result, StorageError};
use crate::files::FileCache;
use crate::segment::{self, Segment, CLEANED_SUFFIX, LOG_SUFFIX, TXN_INDEX_SUFFIX};

/// `<base>.log.cleaned` and `<base>.txnindex.cleaned`: the cleaner's swap.
const CLEANED_LOG_SUFFIX: &str = "log.cleaned";
const CLEANED_TXN_INDEX_SUFFIX: &str = "txnindex.cleaned";

use super::{lock, Log, LogOpenOptions, LogState};

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
        let mut txn_index_bases = Vec::new();
        let mut cleaned_txn_indexes = Vec::new();
        let mut cleaned_logs = Vec::new();
        for entry in fs::read_dir(dir).map_err(StorageError::io("list", dir))? {
            let entry = entry.map_err(StorageError::io("list", dir))?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            match segment::parse_file_name(file_name) {
                Some((base, LOG_SUFFIX)) => bases.push(base),
                Some((base, TXN_INDEX_SUFFIX)) => txn_index_bases.push(base),
                Some((base, suffix)) if suffix == CLEANED_TXN_INDEX_SUFFIX => {
                    cleaned_txn_indexes.push(base);
                }
                Some((base, suffix)) if suffix == CLEANED_LOG_SUFFIX => {
                    cleaned_logs.push(base);
                    info!(log = %name, file = file_name, "removing an unfinished file");
                    segment::remove_if_exists(&entry.path())?;
                }
                Some((_, suffix))
                    if suffix.ends_with(CLEANED_SUFFIX) || suffix.ends_with("tmp") =>
                {
                    info!(log = %name, file = file_name, "removing an unfinished file");
                    segment::remove_if_exists(&entry.path())?;
                }
                _ => {}
            }
        }
        // A cleaner's swap cut short: with its `.log.cleaned` still there,
        // nothing of it took effect (both go); without, the log's rename
        // was done and the index's is finished here.
        for base in cleaned_txn_indexes {
            let segment = Segment::existing(dir, base, &files);
            if cleaned_logs.contains(&base) || !bases.contains(&base) {
                segment::remove_if_exists(&segment::cleaned_txn_index_path(&segment))?;
            } else {
                info!(log = %name, base_offset = base, "finishing a cleaned segment's transaction index");
                segment::finish_cleaned_txn_index(&segment)?;
                txn_index_bases.retain(|&b| b != base);
                if segment.txn_index_path().exists() {
                    txn_index_bases.push(base);
                }
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
        // Each segment's aborted transactions, without those whose markers
        // recovery cut off; and no index outlives its segment (a crash
        // while deleting one may leave it). Only the files listed are read:
        // most segments have none, and a start-up opens many segments.
        for base in &txn_index_bases {
            let Some(seg) = segments.get_mut(base) else {
                segment::remove_if_exists(&dir.join(segment::file_name(*base, TXN_INDEX_SUFFIX)))?;
                continue;
            };
            let dropped = seg.load_txn_index()?;
            if dropped > 0 {
                info!(log = %name, base_offset = seg.base_offset, dropped, "dropped aborted transactions whose markers are past the recovered log end");
            }
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
            writeback_started: (-1, 0),
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
            has_aborted_txns: AtomicBool::new(
                state.segments.values().any(|s| !s.aborted_txns.is_empty()),
            ),
            state: Mutex::new(state),
            flush_observer: None,
        };
        Ok(log)
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
}
