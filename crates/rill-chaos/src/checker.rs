//! The checker: what a history must satisfy for a Kafka-compatible log
//! whose producers use `acks=all`, after every fault was healed and every
//! partition was read from its start (Jepsen's Kafka queue checks).
//!
//! **Invariant:** it looks only at the history, never at the cluster, so
//! a recorded history can be checked again offline (`rill-chaos check`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use crate::history::{Op, Type, F};

/// How many examples of one anomaly the report keeps.
const EXAMPLES_MAX: usize = 10;
/// How soon after the final heal (the history's last nemesis operation)
/// every producer must have a send acknowledged and every consumer must
/// poll records. Long enough for a restarted node's broker to register,
/// for librdkafka's reconnect backoff (at most 10 s by default) and a
/// group's rebalance; `run` keeps the workload going this long after the
/// final heal.
pub const PROGRESS_AFTER_HEAL_MAX: Duration = Duration::from_secs(15);

/// What the checker found.
#[derive(Debug, Default, Serialize)]
pub struct Analysis {
    pub valid: bool,
    /// Sends the broker acknowledged.
    pub acked: usize,
    /// Sends that failed or whose outcome is unknown.
    pub indeterminate: usize,
    pub lost: usize,
    /// Duplicates that nothing allows (not retries of a plain producer).
    pub duplicated: usize,
    /// Anomalies: each makes the history invalid.
    pub anomalies: BTreeMap<String, Finding>,
    /// What at-least-once delivery allows, counted but not invalid.
    pub allowed: BTreeMap<String, Finding>,
}

/// One kind of anomaly: how often, and a few examples.
#[derive(Debug, Default, Serialize)]
pub struct Finding {
    pub count: usize,
    pub examples: Vec<serde_json::Value>,
}

impl Analysis {
    fn found(&mut self, name: &str, example: serde_json::Value) {
        add(self.anomalies.entry(name.to_string()).or_default(), example);
    }

    fn allowed(&mut self, name: &str, example: serde_json::Value) {
        add(self.allowed.entry(name.to_string()).or_default(), example);
    }
}

pub fn add(finding: &mut Finding, example: serde_json::Value) {
    finding.count += 1;
    if finding.examples.len() < EXAMPLES_MAX {
        finding.examples.push(example);
    }
}

/// What the history says about one sent value.
#[derive(Debug, Default)]
struct Send {
    idempotent: Option<bool>,
    /// The partition and offset of the acknowledgement.
    acked: Option<(i32, i64)>,
}

/// Checks a history. See `docs/chaos.md` for what each anomaly means.
pub fn check(ops: &[Op]) -> Analysis {
    let mut analysis = Analysis::default();

    let mut sends: HashMap<u64, Send> = HashMap::new();
    // Every (partition, offset) → values anyone saw there, and back.
    let mut at_offset: BTreeMap<(i32, i64), BTreeSet<u64>> = BTreeMap::new();
    let mut value_offsets: HashMap<u64, BTreeSet<(i32, i64)>> = HashMap::new();
    let mut saw = |partition: i32, offset: i64, value: u64| {
        at_offset
            .entry((partition, offset))
            .or_default()
            .insert(value);
        value_offsets
            .entry(value)
            .or_default()
            .insert((partition, offset));
    };
    let mut final_values: BTreeSet<u64> = BTreeSet::new();
    // A partition's log end as the final reader reached it; `None` when
    // it could not read to the end.
    let mut ends: BTreeMap<i32, Option<i64>> = BTreeMap::new();

    for op in ops {
        match (op.f, op.kind) {
            (F::Send, _) => {
                let Some(value) = op.value else { continue };
                let send = sends.entry(value).or_default();
                if op.idempotent.is_some() {
                    send.idempotent = op.idempotent;
                }
                if op.kind == Type::Ok {
                    if let (Some(partition), Some(offset)) = (op.partition, op.offset) {
                        send.acked = Some((partition, offset));
                        saw(partition, offset, value);
                    }
                }
            }
            (F::Poll | F::Read, Type::Ok) => {
                for record in op.records.iter().flatten() {
                    saw(record.partition, record.offset, record.value);
                    if op.f == F::Read {
                        final_values.insert(record.value);
                    }
                }
            }
            (F::End, Type::Ok) => {
                if let Some(partition) = op.partition {
                    ends.insert(partition, op.offset);
                }
            }
            (F::End, _) => {
                if let Some(partition) = op.partition {
                    ends.entry(partition).or_insert(None);
                }
            }
            _ => {}
        }
    }

    for ((partition, offset), values) in &at_offset {
        if values.len() > 1 {
            analysis.found(
                "inconsistent-offsets",
                json!({"partition": partition, "offset": offset, "values": values}),
            );
        }
    }

    for (value, offsets) in &value_offsets {
        if offsets.len() < 2 {
            continue;
        }
        let example = json!({"value": value, "offsets": offsets});
        let idempotent = sends.get(value).and_then(|s| s.idempotent);
        if idempotent == Some(false) {
            analysis.allowed("duplicated-retry", example);
        } else {
            analysis.duplicated += 1;
            analysis.found("duplicated", example);
        }
    }

    let mut acked: Vec<(u64, i32, i64)> = sends
        .iter()
        .filter_map(|(&value, send)| send.acked.map(|(p, o)| (value, p, o)))
        .collect();
    acked.sort_unstable();
    analysis.acked = acked.len();
    analysis.indeterminate = sends.len() - acked.len();
    for &(value, partition, offset) in &acked {
        if final_values.contains(&value) {
            continue;
        }
        let example = json!({"value": value, "partition": partition, "offset": offset});
        match ends.get(&partition).copied().flatten() {
            Some(_) => {
                analysis.lost += 1;
                analysis.found("lost", example);
            }
            None => analysis.found("unseen", example),
        }
    }

    check_send_order(ops, &mut analysis);
    check_poll_order(ops, &at_offset, &mut analysis);
    check_commits(ops, &ends, &mut analysis);
    check_progress_after_heal(ops, &mut analysis);

    analysis.valid = analysis.anomalies.is_empty();
    analysis
}

/// An idempotent producer's acknowledged offsets rise within a partition
/// in the order the acknowledgements came. (A plain producer's retries
/// may reorder, which at-least-once allows.)
fn check_send_order(ops: &[Op], analysis: &mut Analysis) {
    let mut last: HashMap<(&str, i32), (i64, u64)> = HashMap::new();
    for op in ops {
        if op.f != F::Send || op.kind != Type::Ok || op.idempotent != Some(true) {
            continue;
        }
        let (Some(partition), Some(offset), Some(value)) = (op.partition, op.offset, op.value)
        else {
            continue;
        };
        let key = (op.process.as_str(), partition);
        if let Some(&(previous, previous_value)) = last.get(&key) {
            if offset <= previous {
                analysis.found(
                    "nonmonotonic-send",
                    json!({"process": op.process, "partition": partition,
                           "previous": {"offset": previous, "value": previous_value},
                           "next": {"offset": offset, "value": value}}),
                );
            }
        }
        last.insert(key, (offset, value));
    }
}

/// A consumer reads each partition's offsets in rising order (until it is
/// reassigned) and skips none that the log holds.
fn check_poll_order(
    ops: &[Op],
    at_offset: &BTreeMap<(i32, i64), BTreeSet<u64>>,
    analysis: &mut Analysis,
) {
    let mut last: HashMap<(&str, i32), i64> = HashMap::new();
    for op in ops {
        match (op.f, op.kind) {
            (F::Assign, Type::Ok) => last.retain(|(process, _), _| *process != op.process),
            (F::Poll | F::Read, Type::Ok) => {
                for record in op.records.iter().flatten() {
                    let key = (op.process.as_str(), record.partition);
                    if let Some(&previous) = last.get(&key) {
                        if record.offset <= previous {
                            analysis.found(
                                "nonmonotonic-poll",
                                json!({"process": op.process, "partition": record.partition,
                                       "previous": previous, "offset": record.offset}),
                            );
                        } else if let Some(((_, skipped), _)) = at_offset
                            .range(
                                (record.partition, previous + 1)..(record.partition, record.offset),
                            )
                            .next()
                        {
                            analysis.found(
                                "poll-skip",
                                json!({"process": op.process, "partition": record.partition,
                                       "previous": previous, "offset": record.offset,
                                       "skipped": skipped}),
                            );
                        }
                    }
                    last.insert(key, record.offset);
                }
            }
            _ => {}
        }
    }
}

/// What the group coordinator holds for a partition never moves back: a
/// read-back (`committed`) is at least the last acknowledged commit and
/// the last read-back. Nor does it pass the log end the final reader
/// found. A read-back that moved back to a commit whose outcome was
/// unknown (it timed out and may have landed late) is allowed.
fn check_commits(ops: &[Op], ends: &BTreeMap<i32, Option<i64>>, analysis: &mut Analysis) {
    let mut floor: HashMap<(&str, i32), (i64, F)> = HashMap::new();
    let mut unknown: HashMap<(&str, i32), BTreeSet<i64>> = HashMap::new();
    for op in ops {
        if !matches!(op.f, F::Commit | F::Committed) {
            continue;
        }
        let (Some(partition), Some(offset)) = (op.partition, op.offset) else {
            continue;
        };
        let key = (op.process.as_str(), partition);
        match op.kind {
            Type::Ok => {}
            Type::Info => {
                unknown.entry(key).or_default().insert(offset);
                continue;
            }
            Type::Invoke | Type::Fail => continue,
        }
        if op.f == F::Committed {
            if let Some(&(previous, from)) = floor.get(&key) {
                if offset < previous {
                    let example = json!({"process": op.process, "partition": partition,
                                         "previous": previous, "previous_from": from,
                                         "offset": offset});
                    if unknown.get(&key).is_some_and(|set| set.contains(&offset)) {
                        analysis.allowed("commit-backwards-late", example);
                    } else {
                        analysis.found("commit-backwards", example);
                    }
                }
            }
        }
        floor.insert(key, (offset, op.f));
        if let Some(end) = ends.get(&partition).copied().flatten() {
            if offset > end {
                analysis.found(
                    "commit-past-end",
                    json!({"process": op.process, "partition": partition, "f": op.f,
                           "offset": offset, "log_end": end}),
                );
            }
        }
    }
}

/// Liveness: once every fault is healed, the workload goes on. Within
/// [`PROGRESS_AFTER_HEAL_MAX`] of the final heal (the last nemesis
/// operation), every producer (a process that sent) has a send
/// acknowledged and every consumer (a process that polled, committed or
/// was assigned; not the final reader) polls records. A history without
/// nemesis operations has no heal and is not checked. (Progress that came
/// later than the bound still counts against it: the bound is the
/// claim.)
fn check_progress_after_heal(ops: &[Op], analysis: &mut Analysis) {
    let Some(healed) = ops
        .iter()
        .rev()
        .find(|op| op.process == "nemesis")
        .map(|op| op.time)
    else {
        return;
    };
    let bound = u64::try_from(PROGRESS_AFTER_HEAL_MAX.as_nanos()).unwrap_or(u64::MAX);
    let deadline = healed.saturating_add(bound);
    // Process → (what it must do, when it last did it, whether it did it
    // within the bound after the heal).
    let mut processes: BTreeMap<&str, (F, Option<u64>, bool)> = BTreeMap::new();
    for op in ops {
        let f = match op.f {
            F::Send => F::Send,
            F::Poll | F::Commit | F::Committed | F::Assign => F::Poll,
            _ => continue,
        };
        if op.process == "final" || op.process == "nemesis" {
            continue;
        }
        let entry = processes
            .entry(op.process.as_str())
            .or_insert((f, None, false));
        let progress = match f {
            F::Send => op.f == F::Send && op.kind == Type::Ok,
            _ => {
                op.f == F::Poll
                    && op.kind == Type::Ok
                    && op.records.as_ref().is_some_and(|r| !r.is_empty())
            }
        };
        if !progress {
            continue;
        }
        if op.time > healed && op.time <= deadline {
            entry.2 = true;
        }
        entry.1 = Some(op.time);
    }
    for (process, (f, last, progressed)) in processes {
        if !progressed {
            analysis.found(
                "no-progress-after-heal",
                json!({"process": process,
                       "f": if f == F::Send { "send ok" } else { "poll ok" },
                       "healed_ns": healed,
                       "bound_s": PROGRESS_AFTER_HEAL_MAX.as_secs(),
                       "last_ns": last}),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Record;

    /// Builds histories by hand.
    #[derive(Default)]
    struct H {
        ops: Vec<Op>,
        /// The next operation's time: a nanosecond after the last, unless
        /// time passed (`wait`).
        clock: u64,
    }

    impl H {
        fn push(&mut self, op: Op) -> &mut Self {
            let mut op = op;
            op.time = self.clock;
            self.clock += 1;
            self.ops.push(op);
            self
        }

        /// Time passes: the next operation comes `d` later.
        fn wait(&mut self, d: Duration) -> &mut Self {
            self.clock += u64::try_from(d.as_nanos()).unwrap();
            self
        }

        fn nemesis(&mut self, f: F, node: Option<i32>) -> &mut Self {
            let mut op = Op::new("nemesis", Type::Invoke, f, 0);
            op.node = node;
            self.push(op.clone());
            op.kind = Type::Ok;
            self.push(op)
        }

        fn send(
            &mut self,
            process: &str,
            idempotent: bool,
            value: u64,
            at: Option<(i32, i64)>,
        ) -> &mut Self {
            let mut invoke = Op::new(process, Type::Invoke, F::Send, 0);
            invoke.value = Some(value);
            invoke.idempotent = Some(idempotent);
            self.push(invoke.clone());
            let mut done = invoke;
            match at {
                Some((partition, offset)) => {
                    done.kind = Type::Ok;
                    done.partition = Some(partition);
                    done.offset = Some(offset);
                }
                None => done.kind = Type::Info,
            }
            self.push(done)
        }

        fn records(&mut self, process: &str, f: F, records: &[(i32, i64, u64)]) -> &mut Self {
            self.push(Op::new(process, Type::Invoke, f, 0));
            let mut ok = Op::new(process, Type::Ok, f, 0);
            ok.records = Some(
                records
                    .iter()
                    .map(|&(partition, offset, value)| Record {
                        partition,
                        offset,
                        value,
                    })
                    .collect(),
            );
            self.push(ok)
        }

        fn poll(&mut self, process: &str, records: &[(i32, i64, u64)]) -> &mut Self {
            self.records(process, F::Poll, records)
        }

        fn read(&mut self, records: &[(i32, i64, u64)]) -> &mut Self {
            self.records("final", F::Read, records)
        }

        fn end(&mut self, partition: i32, end: Option<i64>) -> &mut Self {
            let mut op = Op::new(
                "final",
                if end.is_some() { Type::Ok } else { Type::Fail },
                F::End,
                0,
            );
            op.partition = Some(partition);
            op.offset = end;
            self.push(op)
        }

        fn commit_with(
            &mut self,
            process: &str,
            kind: Type,
            partition: i32,
            offset: i64,
        ) -> &mut Self {
            let mut op = Op::new(process, Type::Invoke, F::Commit, 0);
            op.partition = Some(partition);
            op.offset = Some(offset);
            self.push(op.clone());
            op.kind = kind;
            self.push(op)
        }

        fn commit(&mut self, process: &str, partition: i32, offset: i64) -> &mut Self {
            self.commit_with(process, Type::Ok, partition, offset)
        }

        fn committed(&mut self, process: &str, partition: i32, offset: i64) -> &mut Self {
            self.push(Op::new(process, Type::Invoke, F::Committed, 0));
            let mut op = Op::new(process, Type::Ok, F::Committed, 0);
            op.partition = Some(partition);
            op.offset = Some(offset);
            self.push(op)
        }

        fn assign(&mut self, process: &str) -> &mut Self {
            self.push(Op::new(process, Type::Ok, F::Assign, 0))
        }

        fn check(&self) -> Analysis {
            // Every history must survive its own format.
            let text: Vec<String> = self
                .ops
                .iter()
                .map(|op| serde_json::to_string(op).unwrap())
                .collect();
            let back: Vec<Op> = text
                .iter()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect();
            assert_eq!(back, self.ops);
            check(&self.ops)
        }
    }

    /// Two producers, two partitions, a consumer, the final read: valid.
    fn valid() -> H {
        let mut h = H::default();
        h.send("idem", true, 1, Some((0, 0)))
            .send("plain", false, 2, Some((1, 0)))
            .send("idem", true, 3, Some((0, 1)))
            .send("plain", false, 4, None)
            .poll("assign", &[(0, 0, 1), (1, 0, 2)])
            .commit("assign", 0, 1)
            .committed("assign", 0, 1)
            .poll("assign", &[(0, 1, 3)])
            .committed("assign", 0, 1)
            .commit("assign", 0, 2)
            .committed("assign", 0, 2)
            .read(&[(0, 0, 1), (0, 1, 3)])
            .end(0, Some(2))
            .read(&[(1, 0, 2)])
            .end(1, Some(1));
        h
    }

    fn names(analysis: &Analysis) -> Vec<&str> {
        analysis.anomalies.keys().map(String::as_str).collect()
    }

    #[test]
    fn a_valid_history_passes() {
        let analysis = valid().check();
        assert!(analysis.valid, "{analysis:?}");
        assert_eq!(analysis.acked, 3);
        assert_eq!(analysis.indeterminate, 1);
        assert_eq!(analysis.lost, 0);
        assert!(analysis.allowed.is_empty());
    }

    #[test]
    fn an_unacknowledged_send_may_appear_or_not() {
        let mut h = valid();
        // Value 4 was indeterminate; it landed after all.
        h.read(&[(1, 1, 4)]).end(1, Some(2));
        let analysis = h.check();
        assert!(analysis.valid, "{analysis:?}");
    }

    #[test]
    fn a_reassigned_group_consumer_may_read_again() {
        let mut h = valid();
        h.assign("assign").poll("assign", &[(0, 0, 1)]);
        assert!(h.check().valid);
    }

    #[test]
    fn lost() {
        let mut h = H::default();
        h.send("idem", true, 1, Some((0, 0)))
            .send("idem", true, 2, Some((0, 1)))
            .read(&[(0, 0, 1)])
            .end(0, Some(1));
        let analysis = h.check();
        assert_eq!(names(&analysis), ["lost"]);
        assert_eq!(analysis.lost, 1);
        assert_eq!(analysis.anomalies["lost"].examples[0]["value"], 2);
    }

    #[test]
    fn unseen_when_the_final_read_did_not_reach_the_end() {
        let mut h = H::default();
        h.send("idem", true, 1, Some((0, 0))).end(0, None);
        let analysis = h.check();
        assert_eq!(names(&analysis), ["unseen"]);
        assert_eq!(analysis.lost, 0);
    }

    #[test]
    fn duplicated_by_an_idempotent_producer() {
        let mut h = H::default();
        h.send("idem", true, 1, Some((0, 0)))
            .read(&[(0, 0, 1), (0, 1, 1)])
            .end(0, Some(2));
        let analysis = h.check();
        assert_eq!(names(&analysis), ["duplicated"]);
        assert_eq!(analysis.duplicated, 1);
    }

    #[test]
    fn a_plain_producers_retry_is_allowed() {
        let mut h = H::default();
        h.send("plain", false, 1, Some((0, 1)))
            .read(&[(0, 0, 1), (0, 1, 1)])
            .end(0, Some(2));
        let analysis = h.check();
        assert!(analysis.valid, "{analysis:?}");
        assert_eq!(analysis.allowed["duplicated-retry"].count, 1);
        assert_eq!(analysis.duplicated, 0);
    }

    #[test]
    fn inconsistent_offsets() {
        let mut h = H::default();
        h.send("idem", true, 1, Some((0, 0)))
            .send("idem", true, 2, Some((0, 1)))
            .poll("assign", &[(0, 0, 2)])
            .read(&[(0, 0, 1), (0, 1, 2)])
            .end(0, Some(2));
        let analysis = h.check();
        // Value 2 at two offsets is also a duplicate.
        assert_eq!(names(&analysis), ["duplicated", "inconsistent-offsets"]);
        assert_eq!(
            analysis.anomalies["inconsistent-offsets"].examples[0]["offset"],
            0
        );
    }

    #[test]
    fn nonmonotonic_send() {
        let mut h = H::default();
        h.send("idem", true, 1, Some((0, 1)))
            .send("idem", true, 2, Some((0, 0)))
            .read(&[(0, 0, 2), (0, 1, 1)])
            .end(0, Some(2));
        assert_eq!(names(&h.check()), ["nonmonotonic-send"]);
    }

    #[test]
    fn nonmonotonic_poll() {
        let mut h = valid();
        h.poll("assign", &[(0, 0, 1)]);
        assert_eq!(names(&h.check()), ["nonmonotonic-poll"]);
    }

    #[test]
    fn poll_skip() {
        let mut h = H::default();
        h.send("idem", true, 1, Some((0, 0)))
            .send("idem", true, 2, Some((0, 1)))
            .send("idem", true, 3, Some((0, 2)))
            .poll("assign", &[(0, 0, 1), (0, 2, 3)])
            .read(&[(0, 0, 1), (0, 1, 2), (0, 2, 3)])
            .end(0, Some(3));
        let analysis = h.check();
        assert_eq!(names(&analysis), ["poll-skip"]);
        assert_eq!(analysis.anomalies["poll-skip"].examples[0]["skipped"], 1);
    }

    #[test]
    fn commit_backwards() {
        let mut h = valid();
        h.committed("assign", 0, 1);
        assert_eq!(names(&h.check()), ["commit-backwards"]);
    }

    #[test]
    fn commit_backwards_behind_an_acknowledged_commit() {
        let mut h = valid();
        h.commit("group", 1, 1).committed("group", 1, 0);
        let analysis = h.check();
        assert_eq!(names(&analysis), ["commit-backwards"]);
        assert_eq!(
            analysis.anomalies["commit-backwards"].examples[0]["previous_from"],
            "commit"
        );
    }

    #[test]
    fn a_late_commit_of_unknown_outcome_may_move_it_back() {
        let mut h = valid();
        h.commit_with("group", Type::Info, 1, 0)
            .commit("group", 1, 1)
            .committed("group", 1, 0);
        let analysis = h.check();
        assert!(analysis.valid, "{analysis:?}");
        assert_eq!(analysis.allowed["commit-backwards-late"].count, 1);
    }

    /// A kill and its restart, then the final heal; both producers and the
    /// consumer go on within the bound after it.
    fn healed() -> H {
        let mut h = H::default();
        h.send("idem", true, 1, Some((0, 0)))
            .send("plain", false, 2, Some((1, 0)))
            .poll("assign", &[(0, 0, 1), (1, 0, 2)])
            .nemesis(F::Kill, Some(2))
            .wait(Duration::from_secs(3))
            .nemesis(F::Restart, Some(2))
            .nemesis(F::Heal, None)
            .wait(Duration::from_secs(4))
            .send("idem", true, 3, Some((0, 1)))
            .send("plain", false, 4, Some((1, 1)))
            .poll("assign", &[(0, 1, 3), (1, 1, 4)]);
        h
    }

    fn finish(h: &mut H) -> &mut H {
        h.read(&[(0, 0, 1), (0, 1, 3)])
            .end(0, Some(2))
            .read(&[(1, 0, 2), (1, 1, 4)])
            .end(1, Some(2))
    }

    #[test]
    fn progress_after_the_final_heal_passes() {
        let mut h = healed();
        let analysis = finish(&mut h).check();
        assert!(analysis.valid, "{analysis:?}");
        assert_eq!(analysis.acked, 4);
    }

    #[test]
    fn no_progress_after_the_final_heal() {
        // The plain producer's sends after the heal all time out (finding
        // 5's stall), and the consumer reads nothing more.
        let mut h = H::default();
        h.send("idem", true, 1, Some((0, 0)))
            .send("plain", false, 2, Some((1, 0)))
            .poll("assign", &[(0, 0, 1), (1, 0, 2)])
            .nemesis(F::Pause, Some(1))
            .nemesis(F::Resume, Some(1))
            .nemesis(F::Heal, None)
            .send("idem", true, 3, Some((0, 1)))
            .send("plain", false, 4, None)
            .wait(Duration::from_secs(30));
        finish(&mut h);
        let analysis = h.check();
        assert_eq!(names(&analysis), ["no-progress-after-heal"]);
        let finding = &analysis.anomalies["no-progress-after-heal"];
        assert_eq!(finding.count, 2);
        let who: Vec<&str> = finding
            .examples
            .iter()
            .map(|e| e["process"].as_str().unwrap())
            .collect();
        assert_eq!(who, ["assign", "plain"]);
    }

    #[test]
    fn progress_later_than_the_bound_is_no_progress() {
        let mut h = H::default();
        h.send("idem", true, 1, Some((0, 0)))
            .nemesis(F::Heal, None)
            .wait(PROGRESS_AFTER_HEAL_MAX + Duration::from_secs(1))
            .send("idem", true, 2, Some((0, 1)))
            .read(&[(0, 0, 1), (0, 1, 2)])
            .end(0, Some(2));
        let analysis = h.check();
        assert_eq!(names(&analysis), ["no-progress-after-heal"]);
        assert_eq!(
            analysis.anomalies["no-progress-after-heal"].examples[0]["process"],
            "idem"
        );
    }

    #[test]
    fn commit_past_the_log_end() {
        let mut h = valid();
        h.commit("assign", 1, 5);
        assert_eq!(names(&h.check()), ["commit-past-end"]);
        let mut h = valid();
        h.committed("assign", 1, 5);
        assert_eq!(names(&h.check()), ["commit-past-end"]);
    }
}
