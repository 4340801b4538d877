//! The txn workload: transactional producers write a few records spread
//! over the partitions in each transaction and commit it, or abort it
//! now and then; `read_committed` readers read every partition during
//! the run; at the end a final `read_committed` reader reads every
//! partition from its start to its high watermark, once the last stable
//! offset has caught up with it (every transaction decided). Every client
//! records what it did and saw; `txn_checker` judges it.
//!
//! The producers follow librdkafka's rules for transactions: an error
//! that is retriable is retried (a bounded number of times); one that
//! requires an abort is followed by `abort_transaction`; any other (fatal,
//! or a retriable one that stays) re-creates the producer with the same
//! `transactional.id`, which fences the old one and aborts its open
//! transaction. Every call is bounded.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::history::{Op, Record, Recorder, Type, F};
use crate::nemesis::SplitMix64;
use crate::workload::{poll_batch, FINAL_READ_TIMEOUT, POLL_BATCH_MAX, TOPIC};

/// Transactional producers, each with its own `transactional.id`.
pub const PRODUCERS: usize = 3;
/// Records a transaction writes, spread over consecutive partitions
/// (more than the 4 partitions, so some partition gets two and their
/// order is checked).
const TXN_RECORDS: i32 = 6;
/// Of every 100 transactions, how many are aborted instead of committed.
const ABORT_PERCENT: u64 = 20;
/// The coordinator aborts a transaction open longer than this: short, so
/// that one left open by a producer that was re-created or stopped does
/// not hold the last stable offset back for long.
const TRANSACTION_TIMEOUT_MS: &str = "10000";
/// librdkafka requires it below the transaction timeout.
const MESSAGE_TIMEOUT_MS: &str = "9000";
/// The bound on each init, commit and abort call.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Tries of one commit or abort whose errors are retriable.
const CALL_ATTEMPTS_MAX: usize = 3;
/// A producer's pause between transactions, and before it tries again
/// after a failed start.
const TXN_INTERVAL: Duration = Duration::from_millis(20);
const RETRY_INTERVAL: Duration = Duration::from_millis(500);
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How long the final reader waits for the last stable offset to reach
/// the high watermark (every transaction decided): the transaction
/// timeout and then some.
const STABLE_TIMEOUT: Duration = Duration::from_secs(45);

/// A send's value and transaction, handed back with its delivery.
struct Sent {
    value: u64,
    txn: String,
}

/// Records deliveries into the history.
struct TxnContext {
    recorder: Arc<Recorder>,
    process: String,
}

impl ClientContext for TxnContext {}

impl ProducerContext for TxnContext {
    type DeliveryOpaque = Box<Sent>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Sent>) {
        let mut op = Op::new(&self.process, Type::Ok, F::Send, 0);
        op.value = Some(sent.value);
        op.txn = Some(sent.txn);
        match result {
            Ok(message) => {
                op.partition = Some(message.partition());
                op.offset = Some(message.offset());
            }
            Err((error, message)) => {
                op.kind = Type::Info;
                op.partition = Some(message.partition());
                op.error = Some(error.to_string());
            }
        }
        self.recorder.record(op);
    }
}

/// Threaded: librdkafka's `abort_transaction` waits for the delivery
/// reports of the purged records, which only a poll of the event queue
/// drains; with a `BaseProducer` polled by this thread alone it waits
/// out its whole timeout (seen: every abort timed out).
type TxnProducer = ThreadedProducer<TxnContext>;

fn txn_op(process: &str, kind: Type, f: F, txn: &str, error: Option<String>) -> Op {
    let mut op = Op::new(process, kind, f, 0);
    op.txn = Some(txn.to_string());
    op.error = error;
    op
}

/// What to do after an error of a transactional call.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Retry,
    Abort,
    Recreate,
}

fn next_after(error: &KafkaError) -> Next {
    match error {
        KafkaError::Transaction(error) if error.is_fatal() => Next::Recreate,
        KafkaError::Transaction(error) if error.txn_requires_abort() => Next::Abort,
        KafkaError::Transaction(error) if error.is_retriable() => Next::Retry,
        // A flush that timed out (before the commit was sent), or
        // anything else: start afresh.
        _ => Next::Recreate,
    }
}

/// Runs transactions until `stop`, as producer `index`; which ones abort
/// is drawn from `seed`.
pub fn produce(
    bootstrap: &str,
    index: usize,
    partitions: i32,
    seed: u64,
    recorder: Arc<Recorder>,
    next_value: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let process = format!("txn-{index}");
    let mut rng = SplitMix64(seed ^ (0x5eed_0000 + index as u64));
    let mut number = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let producer: TxnProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("transactional.id", format!("chaos-txn-{index}"))
            .set("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS)
            .set("message.timeout.ms", MESSAGE_TIMEOUT_MS)
            .set("acks", "all")
            .set("linger.ms", "5")
            .create_with_context(TxnContext {
                recorder: Arc::clone(&recorder),
                process: process.clone(),
            })
            .with_context(|| format!("create producer {process}"))?;
        if producer.init_transactions(CALL_TIMEOUT).is_err() {
            discard(producer);
            thread::sleep(RETRY_INTERVAL);
            continue;
        }
        while !stop.load(Ordering::Relaxed) {
            let txn = format!("p{index}-t{number}");
            number += 1;
            if let Err(error) = producer.begin_transaction() {
                recorder.record(txn_op(
                    &process,
                    Type::Fail,
                    F::TxnBegin,
                    &txn,
                    Some(error.to_string()),
                ));
                break;
            }
            recorder.record(txn_op(&process, Type::Ok, F::TxnBegin, &txn, None));
            let first = rng.below(partitions as u64) as i32;
            let mut enqueued = true;
            for i in 0..TXN_RECORDS {
                let value = next_value.fetch_add(1, Ordering::Relaxed);
                let partition = (first + i) % partitions;
                let mut op = txn_op(&process, Type::Invoke, F::Send, &txn, None);
                op.value = Some(value);
                op.partition = Some(partition);
                recorder.record(op.clone());
                let payload = value.to_string();
                // Each record its own key, so that compaction (--compact)
                // removes only aborted records.
                let key = format!("{txn}/{value}");
                let sent = Box::new(Sent {
                    value,
                    txn: txn.clone(),
                });
                let record = BaseRecord::with_opaque_to(TOPIC, sent)
                    .partition(partition)
                    .key(key.as_str())
                    .payload(&payload);
                if let Err((error, _)) = producer.send(record) {
                    // Not enqueued: it certainly was not sent. The
                    // transaction is aborted.
                    op.kind = Type::Fail;
                    op.error = Some(error.to_string());
                    recorder.record(op);
                    enqueued = false;
                    break;
                }
            }
            let healthy = if enqueued && rng.below(100) >= ABORT_PERCENT {
                commit(&producer, &process, &txn, &recorder)
            } else {
                // Delivered first, so that the aborted records are in the
                // log (and what read_committed readers must skip, and
                // what the cleaner removes) rather than purged unsent by
                // the abort. A flush that fails changes nothing: the
                // abort follows either way.
                if enqueued {
                    let _ = producer.flush(CALL_TIMEOUT);
                }
                abort(&producer, &process, &txn, &recorder)
            };
            if !healthy {
                break;
            }
            thread::sleep(TXN_INTERVAL);
        }
        discard(producer);
    }
    Ok(())
}

/// Commits `txn`; false when the producer must be re-created.
fn commit(producer: &TxnProducer, process: &str, txn: &str, recorder: &Recorder) -> bool {
    recorder.record(txn_op(process, Type::Invoke, F::TxnCommit, txn, None));
    for _ in 0..CALL_ATTEMPTS_MAX {
        let error = match producer.commit_transaction(CALL_TIMEOUT) {
            Ok(()) => {
                recorder.record(txn_op(process, Type::Ok, F::TxnCommit, txn, None));
                return true;
            }
            Err(error) => error,
        };
        // The commit may or may not have happened.
        recorder.record(txn_op(
            process,
            Type::Info,
            F::TxnCommit,
            txn,
            Some(error.to_string()),
        ));
        match next_after(&error) {
            Next::Retry => continue,
            Next::Abort => return abort(producer, process, txn, recorder),
            Next::Recreate => return false,
        }
    }
    false
}

/// Aborts `txn`; false when the producer must be re-created.
fn abort(producer: &TxnProducer, process: &str, txn: &str, recorder: &Recorder) -> bool {
    recorder.record(txn_op(process, Type::Invoke, F::TxnAbort, txn, None));
    for _ in 0..CALL_ATTEMPTS_MAX {
        let error = match producer.abort_transaction(CALL_TIMEOUT) {
            Ok(()) => {
                recorder.record(txn_op(process, Type::Ok, F::TxnAbort, txn, None));
                return true;
            }
            Err(error) => error,
        };
        recorder.record(txn_op(
            process,
            Type::Info,
            F::TxnAbort,
            txn,
            Some(error.to_string()),
        ));
        if next_after(&error) != Next::Retry {
            return false;
        }
    }
    false
}

/// Drops a producer on a thread of its own: librdkafka's destroy of a
/// producer that cannot reach the cluster may take a while, and the next
/// producer (which fences this one) need not wait for it.
fn discard(producer: TxnProducer) {
    thread::spawn(move || drop(producer));
}

fn read_committed_consumer(bootstrap: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .context("create a read_committed consumer")
}

fn assign_all_from_start(
    consumer: &BaseConsumer,
    partitions: impl IntoIterator<Item = i32>,
) -> anyhow::Result<()> {
    let mut list = TopicPartitionList::new();
    for partition in partitions {
        list.add_partition_offset(TOPIC, partition, Offset::Beginning)
            .context("add a partition")?;
    }
    consumer.assign(&list).context("assign")
}

/// A `read_committed` reader of every partition until `stop`.
pub fn read(
    bootstrap: &str,
    process: &str,
    partitions: i32,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("chaos-{process}"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("socket.timeout.ms", "10000")
        .create()
        .with_context(|| format!("create consumer {process}"))?;
    assign_all_from_start(&consumer, 0..partitions)?;
    while !stop.load(Ordering::Relaxed) {
        let (records, error) = poll_batch(&consumer);
        if !records.is_empty() {
            recorder.record(Op::new(process, Type::Invoke, F::Poll, 0));
            let mut op = Op::new(process, Type::Ok, F::Poll, 0);
            op.records = Some(records);
            op.error = error;
            recorder.record(op);
        } else if let Some(error) = error {
            let mut op = Op::new(process, Type::Fail, F::Poll, 0);
            op.error = Some(error);
            recorder.record(op);
        }
    }
    Ok(())
}

/// Reads every partition with `read_committed` from its start to its
/// high watermark, once the last stable offset has reached it, and
/// records an `end` for each: `ok` with the high watermark when it got
/// there, `fail` with why.
pub fn final_read(bootstrap: &str, partitions: i32, recorder: &Recorder) -> anyhow::Result<()> {
    for partition in 0..partitions {
        let mut end_op = Op::new("final", Type::Fail, F::End, 0);
        end_op.partition = Some(partition);
        match read_partition(bootstrap, partition, recorder) {
            Ok(high) => {
                end_op.kind = Type::Ok;
                end_op.offset = Some(high);
            }
            Err(error) => end_op.error = Some(format!("{error:#}")),
        }
        recorder.record(end_op);
    }
    Ok(())
}

fn record_read(recorder: &Recorder, records: Vec<Record>) {
    recorder.record(Op::new("final", Type::Invoke, F::Read, 0));
    let mut op = Op::new("final", Type::Ok, F::Read, 0);
    op.records = Some(records);
    recorder.record(op);
}

/// One partition of [`final_read`]: its high watermark when read to it.
fn read_partition(bootstrap: &str, partition: i32, recorder: &Recorder) -> anyhow::Result<i64> {
    let deadline = Instant::now() + FINAL_READ_TIMEOUT;
    // ListOffsets answers the high watermark to a read_uncommitted
    // client and the last stable offset to a read_committed one.
    let uncommitted: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "chaos-final")
        .create()
        .context("create the final reader")?;
    let consumer = read_committed_consumer(bootstrap, "chaos-final")?;
    let watermark = |client: &BaseConsumer| loop {
        match client.fetch_watermarks(TOPIC, partition, Duration::from_secs(5)) {
            Ok((_, high)) => return Ok(high),
            Err(error) if Instant::now() >= deadline => {
                return Err(anyhow::anyhow!("log end: {error}"))
            }
            Err(_) => thread::sleep(RETRY_INTERVAL),
        }
    };
    let high = watermark(&uncommitted)?;
    let stable_deadline = Instant::now() + STABLE_TIMEOUT;
    loop {
        let stable = watermark(&consumer)?;
        if stable >= high {
            break;
        }
        if Instant::now() >= stable_deadline {
            anyhow::bail!(
                "the last stable offset {stable} did not reach the high watermark {high} within {STABLE_TIMEOUT:?}"
            );
        }
        thread::sleep(RETRY_INTERVAL);
    }
    assign_all_from_start(&consumer, [partition])?;
    // The end: librdkafka reports the partition's EOF when its fetch
    // position reaches the last stable offset, past aborted records and
    // transaction markers (which no message shows).
    let mut records = Vec::new();
    let mut at_end = false;
    while !at_end {
        if Instant::now() >= deadline {
            break;
        }
        match consumer.poll(POLL_TIMEOUT) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => at_end = true,
            Some(Err(_)) => {}
            Some(Ok(message)) => {
                let value = message
                    .payload()
                    .and_then(|p| std::str::from_utf8(p).ok())
                    .and_then(|s| s.parse::<u64>().ok());
                match value {
                    Some(value) => records.push(Record {
                        partition: message.partition(),
                        offset: message.offset(),
                        value,
                    }),
                    None => {
                        anyhow::bail!("offset {}: the payload is not a value", message.offset())
                    }
                }
            }
        }
        if records.len() >= POLL_BATCH_MAX {
            record_read(recorder, std::mem::take(&mut records));
        }
    }
    if !records.is_empty() {
        record_read(recorder, records);
    }
    anyhow::ensure!(
        at_end,
        "not read to the end ({high}) within {FINAL_READ_TIMEOUT:?}"
    );
    Ok(high)
}
