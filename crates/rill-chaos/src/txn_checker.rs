//! The txn workload's checker: what a history of transactional producers
//! and `read_committed` readers must satisfy once every fault was healed,
//! every transaction decided and every partition read to its end.
//!
//! A transaction's outcome is what its producer was told:
//! - **committed**: `commit_transaction` returned success (a `txn-commit`
//!   `ok`). Every record must be in the final read, once.
//! - **aborted**: its producer never asked to commit it (it aborted, or
//!   was re-created, which fences and aborts it). No record may be read
//!   by any `read_committed` reader, ever.
//! - **indeterminate**: a commit was asked for and returned an error. The
//!   final read must hold all of it or none of it; and if none, no
//!   reader may have seen any of it during the run.
//!
//! **Invariant:** as `checker`, it looks only at the history.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use serde_json::json;

use crate::checker::{add, Finding};
use crate::history::{Op, Type, F};

/// What the checker found.
#[derive(Debug, Default, Serialize)]
pub struct TxnAnalysis {
    pub valid: bool,
    pub txns_committed: usize,
    /// Transactions never asked to commit (aborted, or fenced by their
    /// producer's re-creation).
    pub txns_aborted: usize,
    /// Commits asked for whose answer was an error.
    pub txns_indeterminate: usize,
    /// Records of committed transactions missing from the final read.
    pub lost: usize,
    /// Records of transactions never asked to commit that a reader saw.
    pub aborted_reads: usize,
    /// Indeterminate transactions partly in the final read, or seen during
    /// the run and absent from the final read.
    pub torn: usize,
    /// Records at two or more offsets.
    pub duplicates: usize,
    /// Each makes the history invalid.
    pub anomalies: BTreeMap<String, Finding>,
}

impl TxnAnalysis {
    fn found(&mut self, name: &str, example: serde_json::Value) {
        add(self.anomalies.entry(name.to_string()).or_default(), example);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Committed,
    Aborted,
    Indeterminate,
}

/// What the history says about one transaction.
#[derive(Debug, Default)]
struct Txn {
    /// Its records' values and partitions, in the order they were sent
    /// (sends librdkafka refused to enqueue left out).
    records: Vec<(u64, i32)>,
    commit_asked: bool,
    commit_acked: bool,
}

impl Txn {
    fn outcome(&self) -> Outcome {
        match (self.commit_asked, self.commit_acked) {
            (_, true) => Outcome::Committed,
            (true, false) => Outcome::Indeterminate,
            (false, false) => Outcome::Aborted,
        }
    }
}

/// Whether `ops` is a txn workload's history (some operation names a
/// transaction).
pub fn is_txn_history(ops: &[Op]) -> bool {
    ops.iter().any(|op| op.txn.is_some())
}

/// Checks a txn workload's history. See `docs/chaos.md`.
pub fn check(ops: &[Op]) -> TxnAnalysis {
    let mut analysis = TxnAnalysis::default();

    let mut txns: BTreeMap<&str, Txn> = BTreeMap::new();
    let mut refused: BTreeSet<u64> = BTreeSet::new();
    // Every value's positions in the final read, and the values the
    // readers saw during the run.
    let mut final_at: HashMap<u64, BTreeSet<(i32, i64)>> = HashMap::new();
    let mut seen_during: BTreeMap<u64, (&str, i32, i64)> = BTreeMap::new();
    // A partition's log end as the final reader reached it; `None` when
    // it could not read to the end.
    let mut ends: BTreeMap<i32, Option<i64>> = BTreeMap::new();

    for op in ops {
        match (op.f, op.kind) {
            (F::Send, Type::Invoke) => {
                let (Some(txn), Some(value), Some(partition)) =
                    (op.txn.as_deref(), op.value, op.partition)
                else {
                    continue;
                };
                txns.entry(txn)
                    .or_default()
                    .records
                    .push((value, partition));
            }
            (F::Send, Type::Fail) => refused.extend(op.value),
            (F::TxnBegin, _) => {
                if let Some(txn) = op.txn.as_deref() {
                    txns.entry(txn).or_default();
                }
            }
            (F::TxnCommit, kind) => {
                if let Some(txn) = op.txn.as_deref() {
                    let entry = txns.entry(txn).or_default();
                    entry.commit_asked = true;
                    entry.commit_acked |= kind == Type::Ok;
                }
            }
            (F::Read, Type::Ok) => {
                for record in op.records.iter().flatten() {
                    final_at
                        .entry(record.value)
                        .or_default()
                        .insert((record.partition, record.offset));
                }
            }
            (F::Poll, Type::Ok) => {
                for record in op.records.iter().flatten() {
                    seen_during.entry(record.value).or_insert((
                        op.process.as_str(),
                        record.partition,
                        record.offset,
                    ));
                }
            }
            (F::End, kind) => {
                if let Some(partition) = op.partition {
                    let end = if kind == Type::Ok { op.offset } else { None };
                    ends.insert(partition, end);
                }
            }
            _ => {}
        }
    }
    for txn in txns.values_mut() {
        txn.records.retain(|(value, _)| !refused.contains(value));
    }

    // Which transaction and partition each value was sent in.
    let mut sent: HashMap<u64, (&str, i32)> = HashMap::new();
    for (&id, txn) in &txns {
        for &(value, partition) in &txn.records {
            sent.insert(value, (id, partition));
        }
    }
    let read_to_end = |partition: i32| ends.get(&partition).copied().flatten().is_some();

    for (&id, txn) in &txns {
        let outcome = txn.outcome();
        match outcome {
            Outcome::Committed => analysis.txns_committed += 1,
            Outcome::Aborted => analysis.txns_aborted += 1,
            Outcome::Indeterminate => analysis.txns_indeterminate += 1,
        }
        let present: Vec<(u64, i32)> = txn
            .records
            .iter()
            .copied()
            .filter(|(value, _)| final_at.contains_key(value))
            .collect();
        let unreadable: Vec<i32> = txn
            .records
            .iter()
            .map(|&(_, partition)| partition)
            .filter(|&partition| !read_to_end(partition))
            .collect();
        match outcome {
            Outcome::Committed => {
                for &(value, partition) in &txn.records {
                    if final_at.contains_key(&value) {
                        continue;
                    }
                    let example = json!({"txn": id, "value": value, "partition": partition});
                    if read_to_end(partition) {
                        analysis.lost += 1;
                        analysis.found("lost", example);
                    } else {
                        analysis.found("unseen", example);
                    }
                }
            }
            Outcome::Aborted => {
                for &(value, partition) in &txn.records {
                    let during = seen_during.get(&value);
                    let at_end = final_at.get(&value);
                    if during.is_none() && at_end.is_none() {
                        continue;
                    }
                    analysis.aborted_reads += 1;
                    analysis.found(
                        "aborted-read",
                        json!({"txn": id, "value": value, "partition": partition,
                               "seen_by": during.map(|&(process, p, o)| json!({"process": process, "partition": p, "offset": o})),
                               "final_read": at_end}),
                    );
                }
            }
            Outcome::Indeterminate => {
                if !unreadable.is_empty() {
                    if !present.is_empty() && present.len() < txn.records.len() {
                        analysis.found(
                            "unseen",
                            json!({"txn": id, "partitions_not_read_to_end": unreadable}),
                        );
                    }
                } else if !present.is_empty() && present.len() < txn.records.len() {
                    analysis.torn += 1;
                    let missing: Vec<u64> = txn
                        .records
                        .iter()
                        .map(|&(value, _)| value)
                        .filter(|value| !final_at.contains_key(value))
                        .collect();
                    analysis.found(
                        "torn",
                        json!({"txn": id, "records": txn.records.len(),
                               "in_final_read": present.len(), "missing": missing}),
                    );
                } else if present.is_empty() {
                    let seen: Vec<serde_json::Value> = txn
                        .records
                        .iter()
                        .filter_map(|(value, _)| {
                            seen_during.get(value).map(|&(process, p, o)| {
                                json!({"value": value, "process": process, "partition": p, "offset": o})
                            })
                        })
                        .collect();
                    if !seen.is_empty() {
                        analysis.torn += 1;
                        analysis.found(
                            "torn",
                            json!({"txn": id, "records": txn.records.len(), "in_final_read": 0,
                                   "seen_during_the_run": seen}),
                        );
                    }
                }
            }
        }
        check_order(id, txn, &final_at, &mut analysis);
    }

    for (&value, positions) in &final_at {
        if positions.len() > 1 {
            analysis.duplicates += 1;
            analysis.found(
                "duplicate",
                json!({"value": value, "txn": sent.get(&value).map(|&(id, _)| id), "offsets": positions}),
            );
        }
    }
    // A record in a partition it was not sent to, or never sent at all.
    let all_reads = final_at
        .iter()
        .flat_map(|(&value, positions)| positions.iter().map(move |&(p, o)| (value, p, o)))
        .chain(seen_during.iter().map(|(&value, &(_, p, o))| (value, p, o)));
    for (value, partition, offset) in all_reads {
        match sent.get(&value) {
            Some(&(_, sent_to)) if sent_to == partition => {}
            Some(&(id, sent_to)) => analysis.found(
                "wrong-partition",
                json!({"value": value, "txn": id, "sent_to": sent_to,
                       "partition": partition, "offset": offset}),
            ),
            None => analysis.found(
                "unknown-value",
                json!({"value": value, "partition": partition, "offset": offset}),
            ),
        }
    }

    analysis.valid = analysis.anomalies.is_empty();
    analysis
}

/// Within a partition, a transaction's records are in the final read in
/// the order they were sent.
fn check_order(
    id: &str,
    txn: &Txn,
    final_at: &HashMap<u64, BTreeSet<(i32, i64)>>,
    analysis: &mut TxnAnalysis,
) {
    let mut last: HashMap<i32, (u64, i64)> = HashMap::new();
    for &(value, partition) in &txn.records {
        let Some(&(_, offset)) = final_at
            .get(&value)
            .and_then(|positions| positions.iter().find(|(p, _)| *p == partition))
        else {
            continue;
        };
        if let Some(&(previous_value, previous)) = last.get(&partition) {
            if offset <= previous {
                analysis.found(
                    "reordered",
                    json!({"txn": id, "partition": partition,
                           "sent_first": {"value": previous_value, "offset": previous},
                           "sent_next": {"value": value, "offset": offset}}),
                );
            }
        }
        last.insert(partition, (value, offset));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Record;

    /// Builds txn histories by hand.
    #[derive(Default)]
    struct H {
        ops: Vec<Op>,
    }

    impl H {
        fn push(&mut self, op: Op) -> &mut Self {
            let mut op = op;
            op.time = self.ops.len() as u64;
            self.ops.push(op);
            self
        }

        fn txn_op(&mut self, f: F, kind: Type, txn: &str) -> &mut Self {
            let mut op = Op::new("txn-0", kind, f, 0);
            op.txn = Some(txn.to_string());
            self.push(op)
        }

        /// Begins `txn` and sends `(value, partition)` records in it.
        fn txn(&mut self, txn: &str, records: &[(u64, i32)]) -> &mut Self {
            self.txn_op(F::TxnBegin, Type::Ok, txn);
            for &(value, partition) in records {
                let mut op = Op::new("txn-0", Type::Invoke, F::Send, 0);
                op.txn = Some(txn.to_string());
                op.value = Some(value);
                op.partition = Some(partition);
                self.push(op);
            }
            self
        }

        fn commit(&mut self, txn: &str, outcome: Type) -> &mut Self {
            self.txn_op(F::TxnCommit, Type::Invoke, txn)
                .txn_op(F::TxnCommit, outcome, txn)
        }

        fn abort(&mut self, txn: &str) -> &mut Self {
            self.txn_op(F::TxnAbort, Type::Invoke, txn)
                .txn_op(F::TxnAbort, Type::Ok, txn)
        }

        fn records(&mut self, process: &str, f: F, records: &[(i32, i64, u64)]) -> &mut Self {
            let mut op = Op::new(process, Type::Ok, f, 0);
            op.records = Some(
                records
                    .iter()
                    .map(|&(partition, offset, value)| Record {
                        partition,
                        offset,
                        value,
                    })
                    .collect(),
            );
            self.push(op)
        }

        fn poll(&mut self, records: &[(i32, i64, u64)]) -> &mut Self {
            self.records("reader", F::Poll, records)
        }

        fn read(&mut self, records: &[(i32, i64, u64)]) -> &mut Self {
            self.records("final", F::Read, records)
        }

        fn end(&mut self, partition: i32, end: Option<i64>) -> &mut Self {
            let kind = if end.is_some() { Type::Ok } else { Type::Fail };
            let mut op = Op::new("final", kind, F::End, 0);
            op.partition = Some(partition);
            op.offset = end;
            self.push(op)
        }

        fn check(&self) -> TxnAnalysis {
            assert!(is_txn_history(&self.ops));
            check(&self.ops)
        }
    }

    fn names(analysis: &TxnAnalysis) -> Vec<&str> {
        analysis.anomalies.keys().map(String::as_str).collect()
    }

    /// t0 committed (values 1, 2 in partition 0, 3 in partition 1), t1
    /// aborted (4 in 0, 5 in 1), t2 indeterminate and absent (6 in 0), t3
    /// indeterminate and whole (7 in 1). Markers take offsets too.
    fn valid() -> H {
        let mut h = H::default();
        h.txn("p0-t0", &[(1, 0), (2, 0), (3, 1)])
            .commit("p0-t0", Type::Ok)
            .txn("p0-t1", &[(4, 0), (5, 1)])
            .abort("p0-t1")
            .txn("p0-t2", &[(6, 0)])
            .commit("p0-t2", Type::Info)
            .txn("p0-t3", &[(7, 1)])
            .commit("p0-t3", Type::Info)
            .poll(&[(0, 0, 1)])
            .poll(&[(1, 0, 3), (1, 6, 7)]);
        h
    }

    fn finish(h: &mut H) -> &mut H {
        h.read(&[(0, 0, 1), (0, 1, 2)])
            .end(0, Some(9))
            .read(&[(1, 0, 3), (1, 6, 7)])
            .end(1, Some(8))
    }

    #[test]
    fn a_valid_history_passes() {
        let mut h = valid();
        let analysis = finish(&mut h).check();
        assert!(analysis.valid, "{analysis:?}");
        assert_eq!(analysis.txns_committed, 1);
        assert_eq!(analysis.txns_aborted, 1);
        assert_eq!(analysis.txns_indeterminate, 2);
    }

    #[test]
    fn a_queue_history_is_not_a_txn_history() {
        let mut op = Op::new("idempotent", Type::Invoke, F::Send, 0);
        op.value = Some(1);
        assert!(!is_txn_history(&[op]));
    }

    #[test]
    fn a_commit_retried_to_success_is_committed() {
        let mut h = H::default();
        h.txn("p0-t0", &[(1, 0)])
            .commit("p0-t0", Type::Info)
            .txn_op(F::TxnCommit, Type::Ok, "p0-t0")
            .end(0, Some(2));
        let analysis = h.check();
        assert_eq!(analysis.txns_committed, 1);
        assert_eq!(names(&analysis), ["lost"]);
        assert_eq!(analysis.lost, 1);
    }

    #[test]
    fn lost_committed_write() {
        let mut h = valid();
        h.read(&[(0, 0, 1)])
            .end(0, Some(9))
            .read(&[(1, 0, 3), (1, 6, 7)])
            .end(1, Some(8));
        let analysis = h.check();
        assert_eq!(names(&analysis), ["lost"]);
        assert_eq!(analysis.lost, 1);
        assert_eq!(analysis.anomalies["lost"].examples[0]["value"], 2);
    }

    #[test]
    fn a_partition_not_read_to_its_end_is_unseen_not_lost() {
        let mut h = valid();
        h.read(&[(0, 0, 1)])
            .end(0, None)
            .read(&[(1, 0, 3), (1, 6, 7)])
            .end(1, Some(8));
        let analysis = h.check();
        assert_eq!(names(&analysis), ["unseen"]);
        assert_eq!(analysis.lost, 0);
        assert!(!analysis.valid);
    }

    #[test]
    fn aborted_read_during_the_run() {
        let mut h = valid();
        h.poll(&[(1, 4, 5)]);
        let analysis = finish(&mut h).check();
        assert_eq!(names(&analysis), ["aborted-read"]);
        assert_eq!(analysis.aborted_reads, 1);
    }

    #[test]
    fn aborted_read_in_the_final_read() {
        let mut h = valid();
        finish(&mut h).read(&[(0, 3, 4)]);
        let analysis = h.check();
        assert_eq!(names(&analysis), ["aborted-read"]);
        assert_eq!(analysis.aborted_reads, 1);
    }

    #[test]
    fn a_transaction_never_asked_to_commit_is_aborted() {
        // Its producer was re-created (fenced) before it asked to commit.
        let mut h = H::default();
        h.txn("p0-t0", &[(1, 0)]).read(&[(0, 0, 1)]).end(0, Some(2));
        let analysis = h.check();
        assert_eq!(analysis.txns_aborted, 1);
        assert_eq!(names(&analysis), ["aborted-read"]);
    }

    #[test]
    fn torn_in_the_final_read() {
        let mut h = H::default();
        h.txn("p0-t0", &[(1, 0), (2, 1)])
            .commit("p0-t0", Type::Info)
            .read(&[(0, 0, 1)])
            .end(0, Some(2))
            .end(1, Some(0));
        let analysis = h.check();
        assert_eq!(names(&analysis), ["torn"]);
        assert_eq!(analysis.torn, 1);
        assert_eq!(analysis.anomalies["torn"].examples[0]["missing"][0], 2);
    }

    #[test]
    fn torn_seen_during_the_run_and_absent_at_the_end() {
        let mut h = valid();
        h.poll(&[(0, 2, 6)]);
        let analysis = finish(&mut h).check();
        assert_eq!(names(&analysis), ["torn"]);
        assert_eq!(analysis.torn, 1);
    }

    #[test]
    fn duplicate_in_the_final_read() {
        let mut h = valid();
        finish(&mut h).read(&[(0, 4, 2)]);
        let analysis = h.check();
        assert_eq!(names(&analysis), ["duplicate"]);
        assert_eq!(analysis.duplicates, 1);
    }

    #[test]
    fn reordered_within_a_partition() {
        let mut h = valid();
        h.read(&[(0, 0, 2), (0, 1, 1)])
            .end(0, Some(9))
            .read(&[(1, 0, 3), (1, 6, 7)])
            .end(1, Some(8));
        let analysis = h.check();
        assert_eq!(names(&analysis), ["reordered"]);
    }

    #[test]
    fn refused_sends_are_not_expected() {
        let mut h = H::default();
        h.txn("p0-t0", &[(1, 0), (2, 0)]);
        let mut refused = Op::new("txn-0", Type::Fail, F::Send, 0);
        refused.value = Some(2);
        refused.txn = Some("p0-t0".to_string());
        h.push(refused);
        h.abort("p0-t0").end(0, Some(0));
        let analysis = h.check();
        assert!(analysis.valid, "{analysis:?}");
    }

    #[test]
    fn wrong_partition_and_unknown_values() {
        let mut h = valid();
        finish(&mut h).poll(&[(1, 9, 2), (0, 9, 99)]);
        let analysis = h.check();
        assert_eq!(names(&analysis), ["unknown-value", "wrong-partition"]);
    }
}
