//! Removing records: truncation (a diverged follower), DeleteRecords, and
//! the retention limits.

use std::fs;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::info;

use crate::checkpoint;
use crate::error::Result;
use crate::segment::Segment;

use super::{lock, Log, LogState};

impl Log {
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
        // Aborts whose markers were cut go with them.
        state.active_mut().truncate_txn_index(log_end_offset)?;
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
