//! What the log cleaner (`crate::cleaner`) sees of a log: its closed
//! segments, the cleaner's point, and the swap of a cleaned segment.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use crate::checkpoint;
use crate::error::{Result, StorageError};
use crate::segment::{self, Segment};
use crate::txn;

use super::{lock, Log};

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

impl Log {
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
    ///
    /// `removed_aborts` (producer id, marker offset) are the abort markers
    /// the copy no longer holds: their `.txnindex` entries go with them.
    /// The new index is written first as `<base>.txnindex.cleaned` and
    /// renamed over the old one after the log's rename; a crash between
    /// the two renames is finished by [`Log::open`] (the `.log.cleaned` is
    /// gone, the `.txnindex.cleaned` is not), so that the index never names
    /// a marker the log does not hold, nor misses one it does.
    pub(crate) fn swap_cleaned(
        &self,
        base_offset: i64,
        file_id: u64,
        size: u64,
        cleaned: &Path,
        removed_aborts: &[(i64, i64)],
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
        let mut aborted_txns = current.map_or_else(Vec::new, |s| s.aborted_txns.clone());
        aborted_txns.retain(|t| {
            !removed_aborts.iter().any(|&(producer_id, marker)| {
                t.producer_id == producer_id && t.last_offset == marker
            })
        });
        let index_changed = aborted_txns.len() != current.map_or(0, |s| s.aborted_txns.len());
        replacement.aborted_txns = aborted_txns;
        let cleaned_index = segment::cleaned_txn_index_path(&replacement);
        if index_changed {
            segment::write_synced(
                &cleaned_index,
                &txn::encode_txn_index(&replacement.aborted_txns),
            )?;
        }
        let log_path = replacement.log_path.clone();
        segment::remove_if_exists(&replacement.index_path())?;
        segment::remove_if_exists(&replacement.time_index_path())?;
        fs::rename(cleaned, &log_path).map_err(StorageError::io("rename", cleaned))?;
        if index_changed {
            segment::finish_cleaned_txn_index(&replacement)?;
        }
        checkpoint::sync_dir(&self.dir)?;
        replacement.synced_size = replacement.size;
        replacement.persist_indexes(true)?;
        if let Some(old) = state.segments.insert(base_offset, replacement) {
            self.files.evict(old.file_id);
        }
        Ok(true)
    }
}
