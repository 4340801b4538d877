//! The history: one JSON object per line for every operation a client or
//! the nemesis began or finished, in the shape of Jepsen's histories
//! (`process`, `type`, `f`, `value`, `time`). The format is documented in
//! `docs/chaos.md`; [`Recorder`] writes it and [`read`] reads it back.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Whether an operation began, or how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Type {
    /// The operation began.
    Invoke,
    /// It happened.
    Ok,
    /// It certainly did not happen.
    Fail,
    /// It may or may not have happened (a timeout, a lost connection).
    Info,
}

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum F {
    /// A producer sends one record: `value`, `key`; on `ok`, the
    /// `partition` and `offset` the broker acknowledged.
    Send,
    /// A consumer polls: on `ok`, the `records` it got.
    Poll,
    /// A consumer commits `offset` (the next one to read) for
    /// `partition`: `ok` once a read-back shows it, `info` when it was
    /// not seen in time (it may still land).
    Commit,
    /// A consumer read back its group's committed `offset` for
    /// `partition` from the coordinator (OffsetFetch).
    Committed,
    /// A group consumer was given partitions (`records` empty); the
    /// positions it reads from start again.
    Assign,
    /// The final reader read `records` from the start of a partition.
    Read,
    /// The final reader reached `offset`, the partition's log end
    /// (`ok`), or could not (`fail`).
    End,
    /// The nemesis: SIGKILL of `node`, its restart on the same data dir,
    /// SIGSTOP and SIGCONT.
    Kill,
    Restart,
    Pause,
    Resume,
    /// The nemesis drops the packets between the node pairs in `drops`
    /// (a `cut` drawn around `node`).
    Partition,
    /// A node exited without being killed (`error`: its exit status), a
    /// crash, and was started again on its data dir as a supervisor
    /// would (`ok`, or `fail` with why). Not a fault the nemesis chose:
    /// the report counts these as `crashes`.
    Crash,
    /// The nemesis lets every packet through again. The last `heal` of a
    /// run (without `drops`) comes once every fault is healed: the
    /// workload must make progress after it.
    Heal,
    /// The txn workload: a transactional producer began transaction
    /// `txn` (`ok`), or could not (`fail`). Its sends carry `txn`.
    #[serde(rename = "txn-begin")]
    TxnBegin,
    /// The producer asked to commit `txn` (`invoke`): `ok` when
    /// `commit_transaction` returned success, `info` when it returned an
    /// error (the commit may or may not have happened; a later `ok` for
    /// the same `txn` after a retry still counts).
    #[serde(rename = "txn-commit")]
    TxnCommit,
    /// The producer asked to abort `txn`: `ok` when `abort_transaction`
    /// returned success, `info` when it did not (a transaction never asked
    /// to commit must stay invisible either way).
    #[serde(rename = "txn-abort")]
    TxnAbort,
}

/// One record a consumer or the final reader got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub value: u64,
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub process: String,
    #[serde(rename = "type")]
    pub kind: Type,
    pub f: F,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
    /// Nanoseconds since the run began.
    pub time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<Vec<Record>>,
    /// Sends only: whether the producer was idempotent (its retries must
    /// not duplicate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent: Option<bool>,
    /// Nemesis only: the node acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<i32>,
    /// Partitions only: the shape (`isolate`, `split`, `one-way`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<String>,
    /// Partitions only: the `[source, target]` node pairs whose packets
    /// are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drops: Option<Vec<(i32, i32)>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The txn workload: the transaction (`p{producer}-t{number}`) a
    /// send or a `txn-*` operation belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<String>,
}

impl Op {
    /// An operation with only the required fields; the others are set by
    /// the caller.
    pub fn new(process: &str, kind: Type, f: F, time: u64) -> Op {
        Op {
            process: process.to_string(),
            kind,
            f,
            value: None,
            time,
            key: None,
            partition: None,
            offset: None,
            records: None,
            idempotent: None,
            node: None,
            cut: None,
            drops: None,
            error: None,
            txn: None,
        }
    }
}

/// Appends operations to `history.jsonl` as they happen, from every
/// thread of the run; times are taken under the lock, so the file is in
/// time order.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    out: Mutex<Output>,
}

#[derive(Debug)]
struct Output {
    writer: BufWriter<File>,
    /// The first write error: the run goes on (its clients must not stall
    /// on a full disk) but is reported as not done.
    error: Option<std::io::Error>,
}

impl Recorder {
    pub fn create(path: &Path) -> anyhow::Result<Recorder> {
        let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
        Ok(Recorder {
            start: Instant::now(),
            out: Mutex::new(Output {
                writer: BufWriter::new(file),
                error: None,
            }),
        })
    }

    /// Nanoseconds since the run began.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records `op` with the current time (whatever `op.time` was).
    pub fn record(&self, mut op: Op) {
        // The lock is held only to stamp and buffer one line.
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        op.time = self.now();
        if out.error.is_some() {
            return;
        }
        let result = serde_json::to_writer(&mut out.writer, &op)
            .map_err(std::io::Error::from)
            .and_then(|()| out.writer.write_all(b"\n"));
        if let Err(error) = result {
            out.error = Some(error);
        }
    }

    /// Flushes the file; the first write error, if any, is returned.
    pub fn finish(&self) -> anyhow::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(error) = out.error.take() {
            return Err(error).context("write the history");
        }
        out.writer.flush().context("write the history")?;
        out.writer.get_ref().sync_all().context("sync the history")
    }
}

/// Reads a history written by [`Recorder`].
pub fn read(path: &Path) -> anyhow::Result<Vec<Op>> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut ops = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let op: Op = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not an operation", path.display(), i + 1))?;
        ops.push(op);
    }
    Ok(ops)
}
