//! Group commit: making a prefix of the log durable, with concurrent
//! callers sharing one pass of fsyncs.

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkpoint;
use crate::error::{Result, StorageError};

use super::{lock, Log};

/// Told how long each flush of a log took: one pass of fsyncs (its unsynced
/// segment files, and its directory and closed segments' indexes when they
/// changed), however many `flush_until` callers shared it. This is how the
/// broker measures fsync latency while rill-storage keeps no metrics and
/// depends on no metrics crate.
pub trait FlushObserver: Send + Sync + std::fmt::Debug {
    /// Called after every flush pass, whether it succeeded or not.
    fn flushed(&self, elapsed: Duration);
}

impl Log {
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
}
