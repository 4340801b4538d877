//! The queue workload (Jepsen's Kafka "queue"): producers send unique
//! values under a few keys; consumers read by assign and as a group
//! member, committing what they read; at the end a final reader reads
//! every partition from its start to its log end. Every client records
//! what it did and saw in the history.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::history::{Op, Record, Recorder, Type, F};

pub const TOPIC: &str = "chaos";
/// Keys the values are spread over (several per partition).
const KEYS: u64 = 8;
/// A producer's pause between sends: about 250 sends a second each, so a
/// 2-core machine keeps up and the final read stays small.
const SEND_INTERVAL: Duration = Duration::from_millis(4);
/// Sends a producer has begun and not yet seen acknowledged; beyond it,
/// it waits (a partition without a leader would otherwise queue without
/// end).
const INFLIGHT_MAX: i32 = 2_000;
/// How long librdkafka keeps trying one record: longer than a fault's
/// hold plus a restart, so most sends outlive the faults.
const MESSAGE_TIMEOUT_MS: &str = "30000";
/// How long the end of the run waits for outstanding sends.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(40);
/// Records one poll op holds at most.
pub const POLL_BATCH_MAX: usize = 500;
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How often a consumer commits what it read (when no commit is
/// outstanding), and how long a commit may take to show in a read-back
/// before it is given up as of unknown outcome.
const COMMIT_INTERVAL: Duration = Duration::from_millis(500);
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a consumer's request may wait for its answer.
const CONSUMER_SOCKET_TIMEOUT_MS: &str = "10000";
/// How often a consumer reads back its group's committed offsets, and
/// how long that may take (it blocks the consumer's polls meanwhile).
const COMMITTED_INTERVAL: Duration = Duration::from_secs(1);
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the final reader tries to reach each partition's end.
pub const FINAL_READ_TIMEOUT: Duration = Duration::from_secs(90);
/// How long topic creation may take (a controller election included).
const CREATE_TOPIC_TIMEOUT: Duration = Duration::from_secs(60);

/// Creates the topic with `replication_factor` replicas a partition and
/// `min.insync.replicas`. (Until rill replicates partition data, a
/// partition's ISR is its leader alone, whatever the replication factor.)
pub fn create_topic(
    bootstrap: &str,
    partitions: i32,
    replication_factor: i32,
    min_insync_replicas: i32,
    configs: &[(&str, &str)],
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("create the admin client")?;
    // librdkafka completes the admin futures itself; no timer or I/O
    // driver is needed.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("start a runtime for the admin client")?;
    let deadline = Instant::now() + CREATE_TOPIC_TIMEOUT;
    let min_insync_replicas = min_insync_replicas.to_string();
    loop {
        let mut topic = NewTopic::new(
            TOPIC,
            partitions,
            TopicReplication::Fixed(replication_factor),
        )
        .set("min.insync.replicas", &min_insync_replicas);
        for (key, value) in configs {
            topic = topic.set(key, value);
        }
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let result = runtime.block_on(admin.create_topics([&topic], &options));
        let error = match result {
            Ok(results) => match results.into_iter().next() {
                Some(Ok(_)) => return Ok(()),
                Some(Err((_, code))) => format!("{code}"),
                None => "no result".to_string(),
            },
            Err(error) => error.to_string(),
        };
        if Instant::now() >= deadline {
            bail!("cannot create topic {TOPIC}: {error}");
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// Records deliveries into the history.
struct SendContext {
    recorder: Arc<Recorder>,
    process: String,
    idempotent: bool,
}

impl ClientContext for SendContext {}

impl ProducerContext for SendContext {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, value: Box<u64>) {
        let mut op = self.op(Type::Ok, *value);
        match result {
            Ok(message) => {
                op.partition = Some(message.partition());
                op.offset = Some(message.offset());
            }
            // librdkafka cannot tell a record that never reached the
            // broker from one whose acknowledgement was lost: every
            // failed delivery may have been written.
            Err((error, _)) => {
                op.kind = Type::Info;
                op.error = Some(error.to_string());
            }
        }
        self.recorder.record(op);
    }
}

impl SendContext {
    fn op(&self, kind: Type, value: u64) -> Op {
        let mut op = Op::new(&self.process, kind, F::Send, 0);
        op.value = Some(value);
        op.key = Some(key(value));
        op.idempotent = Some(self.idempotent);
        op
    }
}

fn key(value: u64) -> String {
    format!("k{}", value % KEYS)
}

/// Sends unique values (from `next_value`) until `stop`, then waits up to
/// [`FLUSH_TIMEOUT`] for the outstanding ones.
pub fn produce(
    bootstrap: &str,
    process: &str,
    idempotent: bool,
    recorder: Arc<Recorder>,
    next_value: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let context = SendContext {
        recorder: Arc::clone(&recorder),
        process: process.to_string(),
        idempotent,
    };
    let producer: BaseProducer<SendContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set(
            "enable.idempotence",
            if idempotent { "true" } else { "false" },
        )
        .set("message.timeout.ms", MESSAGE_TIMEOUT_MS)
        .set("linger.ms", "5")
        .create_with_context(context)
        .with_context(|| format!("create producer {process}"))?;
    while !stop.load(Ordering::Relaxed) {
        if producer.in_flight_count() < INFLIGHT_MAX {
            let value = next_value.fetch_add(1, Ordering::Relaxed);
            let key = key(value);
            let payload = value.to_string();
            recorder.record(producer.context().op(Type::Invoke, value));
            let record = BaseRecord::with_opaque_to(TOPIC, Box::new(value))
                .key(&key)
                .payload(&payload);
            if let Err((error, _)) = producer.send(record) {
                // Not enqueued: it certainly was not sent.
                let mut op = producer.context().op(Type::Fail, value);
                op.error = Some(error.to_string());
                recorder.record(op);
            }
        }
        producer.poll(Duration::ZERO);
        thread::sleep(SEND_INTERVAL);
    }
    // Unflushed sends stay invoked without an outcome (indeterminate);
    // dropping the producer purges them as failed deliveries.
    let _ = producer.flush(FLUSH_TIMEOUT);
    Ok(())
}

/// Records (group) assignments into the history.
struct ReadContext {
    recorder: Arc<Recorder>,
    process: String,
}

impl ClientContext for ReadContext {}

impl ConsumerContext for ReadContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            self.recorder
                .record(Op::new(&self.process, Type::Ok, F::Assign, 0));
        }
    }
}

/// How a consumer gets its partitions.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Every partition, from the beginning, by `assign`.
    Assign,
    /// As a member of a consumer group (`subscribe`).
    Group,
}

/// Polls until `stop`; commits what it read (see [`Commits`]) and reads
/// the group's committed offsets back every [`COMMITTED_INTERVAL`].
pub fn consume(
    bootstrap: &str,
    process: &str,
    mode: Mode,
    partitions: i32,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let context = ReadContext {
        recorder: Arc::clone(&recorder),
        process: process.to_string(),
    };
    let consumer: BaseConsumer<ReadContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("chaos-{process}"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        // Bounds a read-back from a paused node.
        .set("socket.timeout.ms", CONSUMER_SOCKET_TIMEOUT_MS)
        .create_with_context(context)
        .with_context(|| format!("create consumer {process}"))?;
    match mode {
        Mode::Assign => {
            let mut list = TopicPartitionList::new();
            for partition in 0..partitions {
                list.add_partition_offset(TOPIC, partition, Offset::Beginning)
                    .context("add a partition")?;
            }
            consumer.assign(&list).context("assign")?;
        }
        Mode::Group => consumer.subscribe(&[TOPIC]).context("subscribe")?,
    }
    // The next offset to read of each partition read since the last commit.
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    let mut commits = Commits::default();
    let mut last_commit = Instant::now();
    let mut last_read_back = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if last_read_back.elapsed() >= COMMITTED_INTERVAL {
            commits.read_back(&consumer, process, &recorder);
            last_read_back = Instant::now();
        }
        if last_commit.elapsed() >= COMMIT_INTERVAL
            && !positions.is_empty()
            && commits.may_commit(process, &recorder)
        {
            commits.commit(&consumer, process, &positions, &recorder);
            positions.clear();
            last_commit = Instant::now();
        }
        let (records, error) = poll_batch(&consumer);
        if !records.is_empty() {
            // A poll is recorded only when it returned records; its
            // invocation is stamped when the records came.
            recorder.record(Op::new(process, Type::Invoke, F::Poll, 0));
            for record in &records {
                positions.insert(record.partition, record.offset + 1);
            }
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
    commits.give_up(process, &recorder);
    Ok(())
}

/// A consumer's commits, one at a time. They are asynchronous: a
/// synchronous commit (`rd_kafka_commit`) waits without a bound and was
/// seen never to return after faults. And one at a time, because
/// librdkafka queues and retries asynchronous commits and can land an
/// older one after a newer one, which would look like the coordinator
/// moving back. A commit is `ok` once a read-back shows its offsets; one
/// not seen within [`COMMIT_TIMEOUT`] is `info` (it may still land) and
/// the next may go.
#[derive(Debug, Default)]
struct Commits {
    /// Partition → offset of the outstanding commit.
    pending: BTreeMap<i32, i64>,
    since: Option<Instant>,
}

impl Commits {
    fn op(process: &str, kind: Type, partition: i32, offset: i64) -> Op {
        let mut op = Op::new(process, kind, F::Commit, 0);
        op.partition = Some(partition);
        op.offset = Some(offset);
        op
    }

    /// Whether a new commit may go: none is outstanding, or the
    /// outstanding one is given up.
    fn may_commit(&mut self, process: &str, recorder: &Recorder) -> bool {
        match self.since {
            None => true,
            Some(since) if since.elapsed() >= COMMIT_TIMEOUT => {
                self.give_up(process, recorder);
                true
            }
            Some(_) => false,
        }
    }

    fn give_up(&mut self, process: &str, recorder: &Recorder) {
        for (&partition, &offset) in &self.pending {
            let mut op = Commits::op(process, Type::Info, partition, offset);
            op.error = Some(format!("not seen committed within {COMMIT_TIMEOUT:?}"));
            recorder.record(op);
        }
        self.pending.clear();
        self.since = None;
    }

    fn commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        process: &str,
        positions: &BTreeMap<i32, i64>,
        recorder: &Recorder,
    ) {
        assert!(self.pending.is_empty());
        let mut list = TopicPartitionList::new();
        for (&partition, &offset) in positions {
            recorder.record(Commits::op(process, Type::Invoke, partition, offset));
            if let Err(error) = list.add_partition_offset(TOPIC, partition, Offset::Offset(offset))
            {
                let mut op = Commits::op(process, Type::Fail, partition, offset);
                op.error = Some(error.to_string());
                recorder.record(op);
                continue;
            }
            self.pending.insert(partition, offset);
        }
        if let Err(error) = consumer.commit(&list, CommitMode::Async) {
            // Refused before it was sent.
            for (partition, offset) in std::mem::take(&mut self.pending) {
                let mut op = Commits::op(process, Type::Fail, partition, offset);
                op.error = Some(error.to_string());
                recorder.record(op);
            }
            return;
        }
        self.since = Some(Instant::now());
    }

    /// Reads back the group's committed offsets for the consumer's
    /// partitions (OffsetFetch, bounded): a `committed` op per partition
    /// with a committed offset; the outstanding commit's partitions that
    /// show its offset are `ok`.
    fn read_back<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        process: &str,
        recorder: &Recorder,
    ) {
        recorder.record(Op::new(process, Type::Invoke, F::Committed, 0));
        match consumer.committed(COMMITTED_TIMEOUT) {
            Ok(list) => {
                for element in list.elements() {
                    let Offset::Offset(offset) = element.offset() else {
                        continue;
                    };
                    let partition = element.partition();
                    let mut op = Op::new(process, Type::Ok, F::Committed, 0);
                    op.partition = Some(partition);
                    op.offset = Some(offset);
                    recorder.record(op);
                    if self.pending.get(&partition) == Some(&offset) {
                        self.pending.remove(&partition);
                        recorder.record(Commits::op(process, Type::Ok, partition, offset));
                    }
                }
                if self.pending.is_empty() {
                    self.since = None;
                }
            }
            Err(error) => {
                let mut op = Op::new(process, Type::Fail, F::Committed, 0);
                op.error = Some(error.to_string());
                recorder.record(op);
            }
        }
    }
}

/// Up to [`POLL_BATCH_MAX`] records, and the error that ended the batch.
pub fn poll_batch<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> (Vec<Record>, Option<String>) {
    let mut records = Vec::new();
    let mut timeout = POLL_TIMEOUT;
    while records.len() < POLL_BATCH_MAX {
        match consumer.poll(timeout) {
            None => break,
            Some(Err(error)) => return (records, Some(error.to_string())),
            Some(Ok(message)) => {
                let value = message
                    .payload()
                    .and_then(|p| std::str::from_utf8(p).ok())
                    .and_then(|s| s.parse::<u64>().ok());
                let Some(value) = value else {
                    let error = format!(
                        "partition {} offset {}: the payload is not a value",
                        message.partition(),
                        message.offset()
                    );
                    return (records, Some(error));
                };
                records.push(Record {
                    partition: message.partition(),
                    offset: message.offset(),
                    value,
                });
            }
        }
        timeout = Duration::ZERO;
    }
    (records, None)
}

/// Reads every partition from its start to its log end (the high
/// watermark once the faults are healed and the producers done), and
/// records an `end` for each: `ok` when it got there.
pub fn final_read(bootstrap: &str, partitions: i32, recorder: &Recorder) -> anyhow::Result<()> {
    const PROCESS: &str = "final";
    for partition in 0..partitions {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.auto.commit", "false")
            .set("group.id", "chaos-final")
            .create()
            .context("create the final reader")?;
        let deadline = Instant::now() + FINAL_READ_TIMEOUT;
        let mut end_op = Op::new(PROCESS, Type::Fail, F::End, 0);
        end_op.partition = Some(partition);
        let high = loop {
            match consumer.fetch_watermarks(TOPIC, partition, Duration::from_secs(5)) {
                Ok((_, high)) => break Some(high),
                Err(error) if Instant::now() >= deadline => {
                    end_op.error = Some(format!("log end: {error}"));
                    break None;
                }
                Err(_) => thread::sleep(Duration::from_millis(500)),
            }
        };
        let Some(high) = high else {
            recorder.record(end_op);
            continue;
        };
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(TOPIC, partition, Offset::Beginning)
            .context("add a partition")?;
        consumer.assign(&list).context("assign")?;
        let mut next = 0;
        while next < high {
            if Instant::now() >= deadline {
                end_op.error = Some(format!(
                    "read to {next} of {high} within {FINAL_READ_TIMEOUT:?}"
                ));
                break;
            }
            let (records, _) = poll_batch(&consumer);
            if records.is_empty() {
                continue;
            }
            if let Some(last) = records.last() {
                next = last.offset + 1;
            }
            recorder.record(Op::new(PROCESS, Type::Invoke, F::Read, 0));
            let mut op = Op::new(PROCESS, Type::Ok, F::Read, 0);
            op.records = Some(records);
            recorder.record(op);
        }
        if next >= high {
            end_op.kind = Type::Ok;
            end_op.offset = Some(high);
        }
        recorder.record(end_op);
    }
    Ok(())
}
