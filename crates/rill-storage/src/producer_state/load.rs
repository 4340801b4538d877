//! Rebuilding a partition's producer state at open: the newest usable
//! snapshot, then a replay of the log after it.

use std::fs;

use tracing::{info, warn};

use crate::error::{Result, StorageError};
use crate::log::{Log, ReplayBatch};
use crate::segment;
use crate::txn;

use super::snapshot::snapshot_path;
use super::*;

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
    /// Aborted transactions the replay offered the log's index (which
    /// ignores those it holds already).
    pub aborts_replayed: usize,
    /// Control batches of producers whose marker could not be read; they
    /// changed nothing.
    pub unreadable_markers: usize,
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
        let batches = log.batches_for_replay(from, upper)?;
        match batches.last() {
            Some(last) => {
                assert!(last.header.next_offset() > from);
                from = last.header.next_offset();
                span = REPLAY_OFFSETS_PER_READ;
                report.batches_replayed += batches.len();
                for batch in &batches {
                    replay_one(log, &mut manager, batch, now_ms, &mut report)?;
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
    manager.check_invariants();
    // A state rebuilt from the log is worth a snapshot; one read from a
    // snapshot and unchanged is not.
    manager.dirty = report.batches_replayed > 0 || report.expired > 0;
    Ok((manager, report))
}

/// Replays one batch at load, putting the abort a marker ends into the
/// log's index as the live path does.
fn replay_one(
    log: &Log,
    manager: &mut ProducerStateManager,
    batch: &ReplayBatch,
    now_ms: i64,
    report: &mut LoadReport,
) -> Result<()> {
    let header = &batch.header;
    let marker = match &batch.control {
        Some(bytes) if header.producer_id >= 0 => match txn::parse_marker(bytes) {
            Ok(marker) => marker,
            Err(reason) => {
                warn!(dir = %log.dir().display(), offset = header.base_offset, producer_id = header.producer_id, %reason, "control batch without a readable marker; replay skips it");
                report.unreadable_markers += 1;
                None
            }
        },
        _ => None,
    };
    if let Some(completed) = manager.replay(header, marker, now_ms) {
        if completed.is_aborted {
            let last_stable_offset = manager.last_stable_offset_after(&completed);
            log.add_aborted_txn(completed.aborted_txn(last_stable_offset))?;
            report.aborts_replayed += 1;
        }
    }
    Ok(())
}
