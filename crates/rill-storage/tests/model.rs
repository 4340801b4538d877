//! A state-machine property test: random sequences of operations on a log,
//! checked after every step against a simple in-memory model of the batches,
//! their records, the log start and end offsets and the leader-epoch cache.
//!
//! The model takes only the segment layout from the log (which segments are
//! closed, for compaction; where a truncation falls); everything else it
//! computes itself.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use common::*;
use proptest::prelude::*;
use rill_storage::records::BatchBuilder;
use rill_storage::{
    CleanBounds, CleanupPolicy, EpochEntry, Log, LogConfig, LogOpenOptions, StorageError,
};
use rill_types::Clock;

const KEYS: [&[u8]; 4] = [b"k0", b"k1", b"k2", b"k3"];
const DELETE_RETENTION_MS: i64 = 1000;

fn config(compact: bool) -> LogConfig {
    LogConfig {
        segment_bytes: 300,
        index_interval_bytes: 64,
        retention_ms: -1,
        retention_bytes: -1,
        delete_retention_ms: DELETE_RETENTION_MS,
        cleanup_policy: if compact {
            CleanupPolicy::COMPACT
        } else {
            CleanupPolicy::DELETE
        },
        ..LogConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Operations.

/// A record to append: key index (none past the key set), value, timestamp
/// offset from the harness start.
type GenRecord = (usize, Option<u8>, i64);

/// How the log is closed and opened again.
#[derive(Debug, Clone, Copy)]
enum Reopen {
    /// `close`, then open with the offsets a clean shutdown checkpoints.
    Clean,
    /// Dropped without `close`, opened with the checkpointed recovery point
    /// and log start, as a log manager does after a crash.
    CrashWithCheckpoints,
    /// Dropped without `close`, opened knowing nothing.
    CrashWithoutCheckpoints,
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        new_epoch: bool,
        batches: Vec<Vec<GenRecord>>,
    },
    Read {
        start: u16,
        max_bytes: u64,
        upper_bound: Option<u16>,
    },
    TruncateTo(u16),
    DeleteBefore(u16),
    Roll,
    Compact {
        advance_ms: i64,
    },
    Flush,
    Reopen(Reopen),
    OffsetForTimestamp(i64),
}

fn record_strategy(compact: bool) -> impl Strategy<Value = GenRecord> {
    // Keyless records only where the log accepts them.
    let key_count = if compact { KEYS.len() } else { KEYS.len() + 1 };
    (
        0..key_count,
        prop_oneof![4 => any::<u8>().prop_map(Some), 1 => Just(None)],
        0i64..3000,
    )
}

fn op_strategy(compact: bool) -> impl Strategy<Value = Op> {
    let batches = prop::collection::vec(
        prop::collection::vec(record_strategy(compact), 1..=5),
        1..=3,
    );
    prop_oneof![
        8 => (prop::bool::weighted(0.2), batches)
            .prop_map(|(new_epoch, batches)| Op::Append { new_epoch, batches }),
        3 => (
            any::<u16>(),
            prop::sample::select(vec![0u64, 1, 60, 100, 200, 400, u64::MAX]),
            prop::option::of(any::<u16>())
        )
            .prop_map(|(start, max_bytes, upper_bound)| Op::Read {
                start,
                max_bytes,
                upper_bound
            }),
        1 => any::<u16>().prop_map(Op::TruncateTo),
        1 => any::<u16>().prop_map(Op::DeleteBefore),
        1 => Just(Op::Roll),
        2 => (0i64..1500).prop_map(|advance_ms| Op::Compact { advance_ms }),
        1 => Just(Op::Flush),
        1 => prop::sample::select(vec![
            Reopen::Clean,
            Reopen::CrashWithCheckpoints,
            Reopen::CrashWithoutCheckpoints
        ])
        .prop_map(Op::Reopen),
        1 => (0i64..3200).prop_map(Op::OffsetForTimestamp),
    ]
}

// ---------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone, PartialEq, Eq)]
struct MRecord {
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MBatch {
    base: i64,
    last: i64,
    epoch: i32,
    records: Vec<MRecord>,
}

impl MBatch {
    fn max_timestamp(&self) -> i64 {
        self.records.iter().map(|r| r.timestamp).max().unwrap_or(-1)
    }
}

/// The leader-epoch cache, as the log documents it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Epochs(Vec<(i32, i64)>);

impl Epochs {
    fn assign(&mut self, epoch: i32, start: i64) {
        if epoch < 0 {
            return;
        }
        if let Some(&(last_epoch, last_start)) = self.0.last() {
            // Kafka's rule: a newer epoch, or the latest one starting
            // earlier than recorded.
            if epoch < last_epoch || (epoch == last_epoch && start >= last_start) {
                return;
            }
            while self.0.last().is_some_and(|&(_, s)| s >= start) {
                self.0.pop();
            }
        }
        self.0.push((epoch, start));
    }

    fn truncate_from_end(&mut self, end: i64) {
        self.0.retain(|&(_, s)| s < end);
    }

    fn truncate_from_start(&mut self, start: i64) {
        if let Some(i) = self.0.iter().rposition(|&(_, s)| s <= start) {
            self.0.drain(..i);
            self.0[0].1 = start;
        }
    }

    fn entries(&self) -> Vec<EpochEntry> {
        self.0
            .iter()
            .map(|&(epoch, start_offset)| EpochEntry {
                epoch,
                start_offset,
            })
            .collect()
    }
}

#[derive(Debug, Default)]
struct Model {
    /// Every batch still physically possible, oldest first; those wholly
    /// below the log start are never read.
    batches: Vec<MBatch>,
    start: i64,
    end: i64,
    epochs: Epochs,
    /// The epochs as last written to `leader-epoch-checkpoint`.
    persisted_epochs: Epochs,
    epoch: i32,
}

impl Model {
    fn visible_from(&self, offset: i64) -> Vec<&MBatch> {
        self.batches.iter().filter(|b| b.last >= offset).collect()
    }
}

/// Maps a selector to an offset around `[start, end]`, a little outside it
/// at times.
fn pick(selector: u16, start: i64, end: i64) -> i64 {
    let span = (end - start + 5) as u64;
    start - 2 + (u64::from(selector) % span) as i64
}

// ---------------------------------------------------------------------------
// Running.

struct Machine {
    h: Harness,
    log: Option<Log>,
    model: Model,
    compact: bool,
}

impl Machine {
    fn new(compact: bool) -> Self {
        let h = Harness::new(config(compact));
        let log = h.open();
        Self {
            h,
            log: Some(log),
            model: Model::default(),
            compact,
        }
    }

    fn log(&self) -> &Log {
        self.log.as_ref().unwrap()
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Append { new_epoch, batches } => self.append(*new_epoch, batches),
            Op::Read {
                start,
                max_bytes,
                upper_bound,
            } => self.read(*start, *max_bytes, *upper_bound),
            Op::TruncateTo(selector) => self.truncate_to(*selector),
            Op::DeleteBefore(selector) => self.delete_before(*selector),
            Op::Roll => {
                self.log().roll().unwrap();
                Ok(())
            }
            Op::Compact { advance_ms } => self.compact(*advance_ms),
            Op::Flush => {
                self.log().flush().unwrap();
                self.model.persisted_epochs = self.model.epochs.clone();
                prop_assert_eq!(self.log().recovery_point(), self.model.end);
                Ok(())
            }
            Op::Reopen(how) => self.reopen(*how),
            Op::OffsetForTimestamp(ts) => self.offset_for_timestamp(START_MS + ts),
        }
    }

    fn append(&mut self, new_epoch: bool, batches: &[Vec<GenRecord>]) -> Result<(), TestCaseError> {
        if new_epoch {
            self.model.epoch += 1;
        }
        let epoch = self.model.epoch;
        let mut bytes = Vec::new();
        let mut next = self.model.end;
        let mut new_batches = Vec::new();
        for records in batches {
            let mut builder = BatchBuilder::new();
            let mut batch = MBatch {
                base: next,
                last: next + records.len() as i64 - 1,
                epoch,
                records: Vec::new(),
            };
            for &(key, value, ts) in records {
                let key = KEYS.get(key).map(|k| k.to_vec());
                let value = value.map(|v| vec![v; 1 + usize::from(v % 7)]);
                builder.push(key.as_deref(), value.as_deref(), START_MS + ts);
                batch.records.push(MRecord {
                    offset: next,
                    key,
                    value,
                    timestamp: START_MS + ts,
                });
                next += 1;
            }
            bytes.extend_from_slice(&builder.build());
            new_batches.push(batch);
        }
        let info = self.log().append(&mut bytes, epoch).unwrap();
        prop_assert_eq!(info.base_offset, self.model.end);
        prop_assert_eq!(info.last_offset, next - 1);
        prop_assert_eq!(info.batch_count, batches.len());
        prop_assert_eq!(info.log_start_offset, self.model.start);
        self.model.epochs.assign(epoch, self.model.end);
        self.model.batches.extend(new_batches);
        self.model.end = next;
        Ok(())
    }

    fn read(
        &mut self,
        start: u16,
        max_bytes: u64,
        upper_bound: Option<u16>,
    ) -> Result<(), TestCaseError> {
        let (m_start, m_end) = (self.model.start, self.model.end);
        let offset = pick(start, m_start, m_end);
        let upper_bound = upper_bound.map_or(i64::MAX, |u| pick(u, m_start, m_end));
        let mut out = Vec::new();
        let result = self
            .log()
            .read_into(offset, max_bytes, upper_bound, &mut out);
        if offset < m_start || offset > m_end {
            match result {
                Err(StorageError::OffsetOutOfRange {
                    offset: o,
                    log_start_offset,
                    log_end_offset,
                }) => prop_assert_eq!(
                    (o, log_start_offset, log_end_offset),
                    (offset, m_start, m_end)
                ),
                other => prop_assert!(
                    false,
                    "read({}) outside [{}, {}]: {:?}",
                    offset,
                    m_start,
                    m_end,
                    other
                ),
            }
            return Ok(());
        }
        let info = result.unwrap();
        // Batch sizes come from a full read, which `check` compares with the model.
        let (_, all) = read_all_from(self.log(), m_start);
        let sizes: HashMap<i64, Vec<u8>> = split_batches(&all)
            .into_iter()
            .map(|b| (header(&b).base_offset, b))
            .collect();
        let mut expected = Vec::new();
        let mut next_offset = offset;
        for b in self.model.visible_from(offset) {
            if b.last >= upper_bound {
                break;
            }
            let bytes = &sizes[&b.base];
            if !expected.is_empty() && (expected.len() + bytes.len()) as u64 > max_bytes {
                break;
            }
            expected.extend_from_slice(bytes);
            next_offset = b.last + 1;
        }
        prop_assert_eq!(
            &out,
            &expected,
            "read({}, max_bytes {}, upper_bound {})",
            offset,
            max_bytes,
            upper_bound
        );
        prop_assert_eq!(info.next_offset, next_offset);
        prop_assert_eq!(
            (info.log_start_offset, info.log_end_offset),
            (m_start, m_end)
        );
        prop_assert_eq!(region_bytes(&info), out);
        Ok(())
    }

    fn truncate_to(&mut self, selector: u16) -> Result<(), TestCaseError> {
        let offset = pick(selector, self.model.start, self.model.end);
        let bases = self.log().segment_base_offsets();
        self.log().truncate_to(offset).unwrap();
        let m = &mut self.model;
        if offset >= m.end {
            return Ok(());
        }
        if offset < m.start {
            let restart = offset.max(0);
            m.batches.clear();
            m.start = restart;
            m.end = restart;
            m.epochs = Epochs::default();
            m.persisted_epochs = Epochs::default();
            return Ok(());
        }
        // The segment holding `offset` keeps its batches below it; the log
        // ends after the last of them, or at the segment's base.
        let segment = bases
            .iter()
            .copied()
            .filter(|&b| b <= offset)
            .max()
            .unwrap();
        m.batches.retain(|b| b.last < offset);
        let end = m
            .batches
            .iter()
            .filter(|b| b.base >= segment)
            .map(|b| b.last + 1)
            .max()
            .unwrap_or(segment);
        // Whatever the cut, the log never ends below its start: cutting the
        // batch that holds the log start (or, after compaction, every batch
        // from the log start on) leaves an empty log that ends at its start.
        m.end = end.max(m.start);
        m.epochs.truncate_from_end(m.end);
        m.persisted_epochs = m.epochs.clone();
        Ok(())
    }

    fn delete_before(&mut self, selector: u16) -> Result<(), TestCaseError> {
        let offset = pick(selector, self.model.start, self.model.end);
        let result = self.log().delete_before(offset);
        let m = &mut self.model;
        if offset > m.end || offset < 0 {
            match result {
                Err(StorageError::OffsetOutOfRange {
                    offset: o,
                    log_start_offset,
                    log_end_offset,
                }) => prop_assert_eq!(
                    (o, log_start_offset, log_end_offset),
                    (offset, m.start, m.end)
                ),
                other => prop_assert!(
                    false,
                    "delete_before({}) outside [{}, {}]: {:?}",
                    offset,
                    m.start,
                    m.end,
                    other
                ),
            }
            return Ok(());
        }
        if offset > m.start {
            m.start = offset;
            m.epochs.truncate_from_start(offset);
            m.persisted_epochs = m.epochs.clone();
        }
        prop_assert_eq!(result.unwrap(), m.start);
        Ok(())
    }

    fn compact(&mut self, advance_ms: i64) -> Result<(), TestCaseError> {
        self.h.clock.advance_ms(advance_ms);
        let bases = self.log().segment_base_offsets();
        self.log().compact(&CleanBounds::everything()).unwrap();
        if !self.compact {
            return Ok(());
        }
        let active_base = *bases.last().unwrap();
        let mut latest: HashMap<Vec<u8>, i64> = HashMap::new();
        for b in self.model.batches.iter().filter(|b| b.base < active_base) {
            for r in &b.records {
                latest.insert(r.key.clone().unwrap(), r.offset);
            }
        }
        let horizon = self.h.clock.now_ms() - DELETE_RETENTION_MS;
        for b in self
            .model
            .batches
            .iter_mut()
            .filter(|b| b.base < active_base)
        {
            let keep_tombstones = b.max_timestamp() >= horizon;
            b.records.retain(|r| {
                latest[r.key.as_ref().unwrap()] == r.offset
                    && (r.value.is_some() || keep_tombstones)
            });
        }
        self.model.batches.retain(|b| !b.records.is_empty());
        Ok(())
    }

    fn reopen(&mut self, how: Reopen) -> Result<(), TestCaseError> {
        let log = self.log.take().unwrap();
        let checkpoints = LogOpenOptions {
            recovery_point: log.recovery_point(),
            log_start_offset: log.log_start_offset(),
            clean_shutdown: false,
        };
        let m = &mut self.model;
        match how {
            Reopen::Clean => {
                let options = LogOpenOptions {
                    recovery_point: log.log_end_offset(),
                    clean_shutdown: true,
                    ..checkpoints
                };
                log.close().unwrap();
                drop(log);
                m.persisted_epochs = m.epochs.clone();
                self.log = Some(self.h.open_with(options));
            }
            Reopen::CrashWithCheckpoints | Reopen::CrashWithoutCheckpoints => {
                // Nothing written is lost (the page cache outlives a process
                // crash); what was not flushed is scanned again.
                drop(log);
                let log = if matches!(how, Reopen::CrashWithCheckpoints) {
                    self.h.open_with(checkpoints)
                } else {
                    // Without a checkpoint the log starts at its first segment.
                    let log = self.h.open();
                    let first_base = log.segment_base_offsets()[0];
                    prop_assert!(
                        first_base <= m.start,
                        "first segment {} above the log start {}",
                        first_base,
                        m.start
                    );
                    m.start = first_base;
                    // Nor does it know an end beyond its files: the last
                    // batch's, or the last segment's base if that is empty.
                    // A log end left above both by a truncation or deletion
                    // is known only from the log start checkpoint (Kafka's
                    // log comes back the same way).
                    let last_base = *log.segment_base_offsets().last().unwrap();
                    let last_batch_end = m.batches.last().map_or(i64::MIN, |b| b.last + 1);
                    m.end = last_base.max(last_batch_end);
                    log
                };
                // The checkpointed epochs, plus those of every batch in the
                // segments scanned again: from the one holding the recovery
                // point on (all of them without a checkpoint), below the log
                // start too.
                let recovery_point = match how {
                    Reopen::CrashWithCheckpoints => checkpoints.recovery_point,
                    _ => 0,
                };
                let bases = log.segment_base_offsets();
                let scanned_from = bases
                    .iter()
                    .copied()
                    .filter(|&b| b <= recovery_point)
                    .max()
                    .unwrap_or(i64::MIN);
                let mut epochs = m.persisted_epochs.clone();
                for b in m
                    .batches
                    .iter()
                    .filter(|b| b.base >= bases[0] && b.base >= scanned_from)
                {
                    epochs.assign(b.epoch, b.base);
                }
                m.epochs = epochs;
                self.log = Some(log);
            }
        }
        // Opening drops epochs that start at or past the log end, as Kafka's
        // does, after moving the first up to the log start.
        m.epochs.truncate_from_start(m.start);
        m.epochs.truncate_from_end(m.end);
        Ok(())
    }

    fn offset_for_timestamp(&mut self, timestamp: i64) -> Result<(), TestCaseError> {
        let found = self.log().offset_for_timestamp(timestamp).unwrap();
        let expected = self
            .model
            .batches
            .iter()
            .flat_map(|b| &b.records)
            .find(|r| r.offset >= self.model.start && r.timestamp >= timestamp)
            .map(|r| (r.timestamp, r.offset));
        prop_assert_eq!(
            found.map(|f| (f.timestamp, f.offset)),
            expected,
            "offset_for_timestamp({})",
            timestamp
        );
        Ok(())
    }

    /// The log as a whole equals the model.
    fn check(&self) -> Result<(), TestCaseError> {
        let log = self.log();
        let m = &self.model;
        prop_assert!(
            log.log_start_offset() <= log.log_end_offset(),
            "log start {} is above log end {}",
            log.log_start_offset(),
            log.log_end_offset()
        );
        prop_assert_eq!(log.log_start_offset(), m.start, "log start");
        prop_assert_eq!(log.log_end_offset(), m.end, "log end");
        let bases = log.segment_base_offsets();
        prop_assert!(
            bases.windows(2).all(|w| w[0] < w[1]),
            "segments {:?}",
            bases
        );
        prop_assert!(
            bases[0] <= m.start,
            "first segment {} above log start {}",
            bases[0],
            m.start
        );
        let (info, bytes) = read_all_from(log, m.start);
        prop_assert_eq!(
            info.next_offset,
            m.visible_from(m.start)
                .last()
                .map_or(m.start, |b| b.last + 1)
        );
        let stored = split_batches(&bytes);
        let expected = m.visible_from(m.start);
        prop_assert_eq!(stored.len(), expected.len(), "batch count");
        for (b, want) in stored.iter().zip(expected) {
            let h = header(b);
            prop_assert_eq!(
                (h.base_offset, h.last_offset(), h.partition_leader_epoch),
                (want.base, want.last, want.epoch)
            );
            let got: Vec<MRecord> = decode_all(b)
                .into_iter()
                .map(|r| MRecord {
                    offset: r.offset,
                    key: r.key,
                    value: r.value,
                    timestamp: r.timestamp,
                })
                .collect();
            prop_assert_eq!(&got, &want.records);
        }
        let headers: Vec<_> = stored.iter().map(|b| header(b)).collect();
        prop_assert_eq!(
            log.batch_headers(m.start, i64::MAX).unwrap(),
            headers,
            "batch headers"
        );
        prop_assert_eq!(log.leader_epochs(), m.epochs.entries(), "leader epochs");
        Ok(())
    }
}

fn run(compact: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut machine = Machine::new(compact);
    for (step, op) in ops.iter().enumerate() {
        machine
            .apply(op)
            .map_err(|e| TestCaseError::fail(format!("step {step} {op:?}: {e}")))?;
        machine
            .check()
            .map_err(|e| TestCaseError::fail(format!("after step {step} {op:?}: {e}")))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config(0x5eed_0001))]

    #[test]
    fn delete_policy_log_matches_model(ops in prop::collection::vec(op_strategy(false), 1..40)) {
        run(false, &ops)?;
    }

    #[test]
    fn compact_policy_log_matches_model(ops in prop::collection::vec(op_strategy(true), 1..40)) {
        run(true, &ops)?;
    }
}

/// An append in the current epoch of batches of `sizes` records, every one
/// the same key and value: the shape the random-seed cases below shrank to.
fn append_sizes(sizes: &[usize]) -> Op {
    Op::Append {
        new_epoch: false,
        batches: sizes
            .iter()
            .map(|&n| vec![(0usize, Some(0u8), 0i64); n])
            .collect(),
    }
}

/// Found by a random seed: a truncation leaves the log ending above its
/// empty last segment's base (the batches there were compacted away), and
/// the checkpoints are lost. The log can only come back at that base.
#[test]
fn crash_without_checkpoints_after_truncating_into_a_compacted_segment() {
    let ops = vec![
        append_sizes(&[1, 3]),
        append_sizes(&[5]),
        append_sizes(&[4, 1, 5]),
        append_sizes(&[3]),
        append_sizes(&[3, 2]),
        Op::Compact { advance_ms: 0 },
        Op::TruncateTo(30549),
        Op::DeleteBefore(8845),
        append_sizes(&[1, 1]),
        Op::TruncateTo(332),
        Op::Reopen(Reopen::CrashWithoutCheckpoints),
    ];
    run(true, &ops).unwrap();
}

/// Found by a random seed: a truncation to the log start leaves only
/// batches below it; after a crash the log restarts empty at its start and
/// must not keep the epochs it rebuilt from the segments it dropped.
#[test]
fn crash_after_truncating_to_the_log_start_keeps_no_epochs() {
    let ops = vec![
        append_sizes(&[1, 3]),
        append_sizes(&[5]),
        append_sizes(&[3]),
        Op::DeleteBefore(5125),
        append_sizes(&[1, 5, 1]),
        append_sizes(&[5]),
        append_sizes(&[3, 2]),
        append_sizes(&[4]),
        append_sizes(&[5]),
        append_sizes(&[2]),
        append_sizes(&[1, 5, 2]),
        append_sizes(&[2]),
        Op::TruncateTo(6199),
        append_sizes(&[5, 2]),
        append_sizes(&[1]),
        append_sizes(&[2, 2]),
        Op::TruncateTo(11642),
        Op::Reopen(Reopen::CrashWithCheckpoints),
    ];
    run(false, &ops).unwrap();
}

/// Found by a random seed: records deleted up to the log end leave an
/// empty log whose epoch was moved up to its start; opening it twice must
/// give the same epochs (none) whether they came from the batches below the
/// start or from the checkpoint written in between.
#[test]
fn empty_log_opens_with_the_same_epochs_twice() {
    let ops = vec![
        append_sizes(&[5, 2, 5]),
        append_sizes(&[4, 4]),
        append_sizes(&[5]),
        append_sizes(&[4]),
        Op::DeleteBefore(9330),
        Op::DeleteBefore(2281),
        append_sizes(&[5, 3, 5]),
        append_sizes(&[3, 1, 2]),
        append_sizes(&[5, 5, 1]),
        append_sizes(&[1, 2]),
        Op::DeleteBefore(39643),
        Op::TruncateTo(10509),
        Op::Reopen(Reopen::CrashWithCheckpoints),
        Op::Flush,
        Op::Reopen(Reopen::CrashWithCheckpoints),
    ];
    run(true, &ops).unwrap();
}

/// Found by a random seed: a clean open drops the epoch of a log emptied by
/// deletion; a flush with no new data must still write that down, or a
/// later crash finds the old epoch in the checkpoint.
#[test]
fn flush_writes_epochs_changed_by_opening() {
    let ops = vec![
        append_sizes(&[1, 5]),
        append_sizes(&[5, 2]),
        append_sizes(&[3]),
        Op::DeleteBefore(23118),
        Op::Reopen(Reopen::Clean),
        Op::Flush,
        Op::Reopen(Reopen::CrashWithoutCheckpoints),
    ];
    run(false, &ops).unwrap();
}
