//! The aborted-transaction index: each segment's `.txnindex`, kept in
//! memory with the segment, added to as aborts are written and searched by
//! read_committed fetches.

use std::sync::atomic::Ordering;

use crate::error::Result;
use crate::segment;
use crate::txn::AbortedTxn;

use super::{lock, Log};

impl Log {
    /// Records an aborted transaction with the segment that holds its
    /// marker (`txn.last_offset`, which must be in the log), durably: the
    /// entry is fsynced before return, so that the index never depends on
    /// segment flushes or producer snapshots. An entry for the same
    /// producer and marker is not added twice (a replay of the log at
    /// load offers entries the index may already hold). A marker below
    /// the first segment (retention took it meanwhile) is not indexed.
    pub fn add_aborted_txn(&self, txn: AbortedTxn) -> Result<()> {
        txn.assert_valid();
        self.has_aborted_txns.store(true, Ordering::Release);
        // The structure lock keeps the segment and its file in place while
        // the entry is written without the state lock: no truncation,
        // retention or cleaner swap runs meanwhile, and appends, which
        // never remove a segment holding data, go on.
        let _structure = lock(&self.structure);
        let (base_offset, path, entries_before) = {
            let mut state = lock(&self.state);
            self.ensure_open(&state)?;
            assert!(
                txn.last_offset < state.log_end_offset(),
                "an aborted transaction is indexed after its marker is appended"
            );
            let Some(seg) = state.segment_for(txn.last_offset) else {
                return Ok(());
            };
            let base_offset = seg.base_offset;
            let known = seg
                .aborted_txns
                .iter()
                .any(|t| t.producer_id == txn.producer_id && t.last_offset == txn.last_offset);
            if known {
                return Ok(());
            }
            if seg
                .aborted_txns
                .last()
                .is_some_and(|t| t.last_offset > txn.last_offset)
            {
                // Out of marker order, which only a replay over a log whose
                // index lost entries could ask for: insert in order and
                // rewrite the (small) file, under the lock, as truncation
                // does.
                let seg = state
                    .segments
                    .get_mut(&base_offset)
                    .expect("the segment was just found");
                let at = seg
                    .aborted_txns
                    .partition_point(|t| t.last_offset <= txn.last_offset);
                seg.aborted_txns.insert(at, txn);
                return seg.rewrite_txn_index();
            }
            (base_offset, seg.txn_index_path(), seg.aborted_txns.len())
        };
        segment::append_txn_index_entry(&path, entries_before, &txn)?;
        let mut state = lock(&self.state);
        let seg = state
            .segments
            .get_mut(&base_offset)
            .expect("the structure lock keeps the segment");
        assert_eq!(seg.aborted_txns.len(), entries_before);
        seg.aborted_txns.push(txn);
        Ok(())
    }

    /// The aborted transactions a read_committed fetch of
    /// `[start_offset, upper_bound)` must name: every one whose marker is at
    /// or after `start_offset` and whose first offset is below
    /// `upper_bound`, ordered by first offset (Kafka's
    /// `collectAbortedTxns`). Reads no file.
    pub fn aborted_txns(&self, start_offset: i64, upper_bound: i64) -> Vec<AbortedTxn> {
        if !self.has_aborted_txns.load(Ordering::Acquire) {
            return Vec::new();
        }
        let state = lock(&self.state);
        // An entry lives with its marker, at or after `start_offset`.
        let from = state
            .segment_for(start_offset)
            .map_or(i64::MIN, |s| s.base_offset);
        let mut found = Vec::new();
        'segments: for seg in state.segments.range(from..).map(|(_, s)| s) {
            for txn in &seg.aborted_txns {
                if txn.last_offset >= start_offset && txn.first_offset < upper_bound {
                    found.push(*txn);
                }
                // Every transaction that began below this entry's last
                // stable offset had ended by its marker, so no later entry
                // can start below `upper_bound`.
                if txn.last_stable_offset >= upper_bound {
                    break 'segments;
                }
            }
        }
        found.sort_by_key(|t| (t.first_offset, t.producer_id));
        found
    }
}
