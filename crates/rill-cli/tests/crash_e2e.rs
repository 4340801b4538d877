//! Crash safety of the real `rill serve` process, with real clients.
//!
//! `sigkill_during_acks_all_production_loses_nothing_acknowledged` kills the
//! broker again and again while librdkafka producers write with acks=all and
//! a consumer-group member commits what it reads, and checks after every
//! restart that everything the broker acknowledged is where it said it was.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Broker;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use rill_storage::batch;

/// How long any one client operation may take before the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("reconnect.backoff.ms", "20")
        .set("reconnect.backoff.max.ms", "200")
        // The broker is down for a moment in every cycle; librdkafka must
        // keep trying rather than give up on it.
        .set("socket.connection.setup.timeout.ms", "5000");
    config
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime")
        .block_on(future)
}

fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        client_config(bootstrap).create().expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().request_timeout(Some(CLIENT_TIMEOUT));
    let results = block_on(admin.create_topics([&topic], &options)).expect("CreateTopics");
    if let Err((topic, code)) = &results[0] {
        panic!("CreateTopics {topic}: {code:?}");
    }
}

/// A small xorshift generator: the test prints its seed, so a failing run's
/// timings can be told apart from another's.
struct Rng(u64);

impl Rng {
    fn from_time() -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Rng(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

// ---------------------------------------------------------------------------
// What the clients were told
// ---------------------------------------------------------------------------

/// A record the broker acknowledged: where it said the record is.
#[derive(Debug, Clone)]
struct Acked {
    partition: i32,
    offset: i64,
    value: String,
}

/// Every acknowledged record and commit, shared by the client threads.
#[derive(Debug, Default)]
struct Ledger {
    acked: Mutex<Vec<Acked>>,
    /// Records whose delivery failed (not acknowledged, so not checked).
    failed: AtomicU64,
    /// The errors of the failed deliveries, as librdkafka reported them.
    errors: Mutex<Vec<KafkaError>>,
    /// The highest offset per partition whose commit the group coordinator
    /// acknowledged.
    committed: Mutex<BTreeMap<i32, i64>>,
    commits_acked: AtomicU64,
    commits_failed: AtomicU64,
}

/// Records each delivery report in the ledger.
struct Recorder(Arc<Ledger>);

impl ClientContext for Recorder {}

impl ProducerContext for Recorder {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) => {
                let value = String::from_utf8(message.payload().expect("a value").to_vec())
                    .expect("UTF-8 value");
                lock(&self.0.acked).push(Acked {
                    partition: message.partition(),
                    offset: message.offset(),
                    value,
                });
            }
            Err((error, _)) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
                lock(&self.0.errors).push(error.clone());
            }
        }
    }
}

/// A value says who sent it and in which order: `p<producer>-<sequence>`.
fn value(producer: usize, sequence: u64) -> String {
    format!("p{producer}-{sequence:010}")
}

fn parse_value(value: &str) -> (usize, u64) {
    let (producer, sequence) = value
        .strip_prefix('p')
        .and_then(|rest| rest.split_once('-'))
        .unwrap_or_else(|| panic!("not a test value: {value:?}"));
    (
        producer.parse().expect("producer number"),
        sequence.parse().expect("sequence number"),
    )
}

/// How many records one producer may have queued and unacknowledged: enough
/// to keep the broker busy, few enough that a flush at the end is quick.
const PRODUCER_IN_FLIGHT_MAX: i32 = 2_000;

/// How many records per second one producer sends at most: a steady load
/// that keeps the logs small enough to read back whole after every kill.
const PRODUCER_RECORDS_PER_SECOND: u64 = 1_000;

/// What the test tells its client threads.
#[derive(Debug, Default)]
struct Control {
    /// Stop, flushing what is queued.
    stop: AtomicBool,
    /// Queue nothing new for now (while the test reads the topic back, so
    /// that each check reads a bounded log).
    pause: AtomicBool,
}

/// Sends `p<id>-<sequence>` records with keys spread over the partitions
/// until told to stop, then waits for every delivery report. Returns how
/// many records it sent.
fn run_producer(
    bootstrap: String,
    topic: String,
    id: usize,
    idempotent: bool,
    ledger: Arc<Ledger>,
    control: Arc<Control>,
) -> u64 {
    let mut config = client_config(&bootstrap);
    config
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "200")
        .set("retry.backoff.ms", "50")
        .set("message.timeout.ms", "60000")
        .set(
            "enable.idempotence",
            if idempotent { "true" } else { "false" },
        );
    if !idempotent {
        // One request in flight: a retry then repeats only the request
        // whose answer was lost, never overtakes a later one, so a
        // producer's records stay in order (with repeats) in every
        // partition.
        config.set("max.in.flight.requests.per.connection", "1");
    }
    let producer: BaseProducer<Recorder> = config
        .create_with_context(Recorder(ledger))
        .expect("create a producer");
    let mut sequence = 0u64;
    // A token bucket: one token per record, refilled at the rate above.
    let mut tokens = 0u64;
    let mut refilled = Instant::now();
    while !control.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let earned =
            now.duration_since(refilled).as_millis() as u64 * PRODUCER_RECORDS_PER_SECOND / 1000;
        if earned > 0 {
            tokens = (tokens + earned).min(PRODUCER_RECORDS_PER_SECOND / 10);
            refilled = now;
        }
        if tokens == 0
            || control.pause.load(Ordering::Relaxed)
            || producer.in_flight_count() >= PRODUCER_IN_FLIGHT_MAX
        {
            producer.poll(Duration::from_millis(5));
            continue;
        }
        let value = value(id, sequence);
        let key = format!("key-{}", sequence % 64);
        let record = BaseRecord::to(&topic).key(&key).payload(&value);
        match producer.send(record) {
            Ok(()) => {
                sequence += 1;
                tokens -= 1;
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                producer.poll(Duration::from_millis(5));
            }
            Err((error, _)) => panic!("producer {id}: send {sequence}: {error}"),
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(60))
        .unwrap_or_else(|error| panic!("producer {id}: flush at the end: {error}"));
    sequence
}

/// A consumer-group member that reads the topic and commits synchronously
/// what it has read, every few records, until `stop`; each commit the
/// coordinator acknowledges goes into the ledger.
fn run_group_member(
    bootstrap: String,
    topic: String,
    group: String,
    ledger: Arc<Ledger>,
    control: Arc<Control>,
) {
    let consumer: BaseConsumer = client_config(&bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .expect("create the group member");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut pending: BTreeMap<i32, i64> = BTreeMap::new();
    let mut read_since_commit = 0;
    while !control.stop.load(Ordering::Relaxed) {
        // An error (the broker is down, the group rebalances) passes.
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) {
            pending.insert(message.partition(), message.offset() + 1);
            read_since_commit += 1;
        }
        if pending.is_empty() || read_since_commit < 50 {
            continue;
        }
        let mut list = TopicPartitionList::new();
        for (&partition, &offset) in &pending {
            list.add_partition_offset(&topic, partition, Offset::Offset(offset))
                .expect("add a partition to commit");
        }
        match consumer.commit(&list, CommitMode::Sync) {
            Ok(()) => {
                let mut committed = lock(&ledger.committed);
                for (&partition, &offset) in &pending {
                    let entry = committed.entry(partition).or_insert(offset);
                    *entry = (*entry).max(offset);
                }
                ledger.commits_acked.fetch_add(1, Ordering::Relaxed);
                pending.clear();
                read_since_commit = 0;
            }
            Err(_) => {
                ledger.commits_failed.fetch_add(1, Ordering::Relaxed);
                // Try again with what was read by then.
            }
        }
    }
}

// ---------------------------------------------------------------------------
// What a fresh reader finds
// ---------------------------------------------------------------------------

/// Every record of every partition of `topic` from its start up to its
/// end in `ends`, as (offset, value) per partition, through one new
/// librdkafka consumer. Fails on a gap, a repeat or a time-out.
fn read_topic(
    bootstrap: &str,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
) -> BTreeMap<i32, Vec<(i64, String)>> {
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", "rill-crash-e2e-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .expect("reader");
    let mut assignment = TopicPartitionList::new();
    let mut logs: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for (&partition, &end) in ends {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("add partition");
        logs.insert(partition, Vec::with_capacity(end as usize));
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    while ends
        .iter()
        .any(|(partition, &end)| (logs[partition].len() as i64) < end)
    {
        assert!(
            Instant::now() < deadline,
            "read {topic} up to {ends:?} within {CLIENT_TIMEOUT:?}: read {:?}",
            logs.values().map(Vec::len).collect::<Vec<_>>()
        );
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.unwrap_or_else(|e| panic!("read {topic}: {e}"));
        let log = logs
            .get_mut(&message.partition())
            .expect("an assigned partition");
        if message.offset() >= ends[&message.partition()] {
            // Past the end this check reads up to (a late append).
            continue;
        }
        assert_eq!(
            message.offset(),
            log.len() as i64,
            "{topic}-{}: offsets are dense from 0",
            message.partition()
        );
        let value =
            String::from_utf8(message.payload().expect("a value").to_vec()).expect("UTF-8 value");
        log.push((message.offset(), value));
    }
    logs
}

/// The group's committed offset per partition (OffsetFetch).
fn committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> BTreeMap<i32, i64> {
    let observer: BaseConsumer = client_config(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("observer");
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = observer
        .committed_offsets(list, CLIENT_TIMEOUT)
        .unwrap_or_else(|error| panic!("committed offsets of {group}: {error}"));
    committed
        .elements()
        .iter()
        .filter_map(|element| match element.offset() {
            Offset::Offset(offset) => Some((element.partition(), offset)),
            Offset::Invalid => None,
            other => panic!(
                "committed offset {other:?} of partition {}",
                element.partition()
            ),
        })
        .collect()
}

/// Log end offsets (high watermarks) of every partition.
fn log_ends(bootstrap: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = client_config(bootstrap).create().expect("consumer");
    (0..partitions)
        .map(|partition| {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition, CLIENT_TIMEOUT)
                .unwrap_or_else(|error| panic!("watermarks of {topic}-{partition}: {error}"));
            (partition, high)
        })
        .collect()
}

/// What one check found, for the test's summary line.
#[derive(Debug, Default)]
struct Checked {
    records: usize,
    acked: usize,
    duplicates: usize,
}

/// Reads the whole topic with a fresh client and checks it against what
/// the producers and the group member were told before the check began.
#[allow(clippy::too_many_arguments)]
fn check_topic(
    bootstrap: &str,
    topic: &str,
    group: &str,
    partitions: i32,
    idempotent: &[bool],
    ledger: &Ledger,
    when: &str,
) -> Checked {
    // Snapshots first: everything in them was acknowledged before the log
    // ends and offsets below are read.
    let acked: Vec<Acked> = lock(&ledger.acked).clone();
    let committed_acked: BTreeMap<i32, i64> = lock(&ledger.committed).clone();
    let committed = committed_offsets(bootstrap, group, topic, partitions);
    let ends = log_ends(bootstrap, topic, partitions);

    for (&partition, &offset) in &committed {
        let end = ends[&partition];
        assert!(
            offset <= end,
            "{when}: the group's committed offset {offset} of partition {partition} is past \
             the log end {end}"
        );
    }
    for (&partition, &offset) in &committed_acked {
        let now = committed.get(&partition).copied();
        assert!(
            now.is_some_and(|now| now >= offset),
            "{when}: the group's committed offset of partition {partition} is {now:?}, below \
             the commit of {offset} it was told had succeeded"
        );
    }

    let mut checked = Checked {
        acked: acked.len(),
        ..Checked::default()
    };
    let logs = read_topic(bootstrap, topic, &ends);
    for (&partition, log) in &logs {
        checked.records += log.len();

        // Each producer's records in this partition, in log order: their
        // sequences must ascend. A producer without idempotence may repeat
        // a record whose acknowledgement was lost (its retry is appended
        // again); a repeat must then be one already seen, and what is new
        // must still ascend. An idempotent producer may repeat nothing.
        let mut last: HashMap<usize, u64> = HashMap::new();
        let mut seen: HashMap<String, i64> = HashMap::new();
        for (offset, value) in log {
            let (producer, sequence) = parse_value(value);
            if let Some(first) = seen.get(value) {
                assert!(
                    !idempotent[producer],
                    "{when}: partition {partition}: idempotent producer {producer}'s record \
                     {value} is at offsets {first} and {offset}"
                );
                checked.duplicates += 1;
                continue;
            }
            if let Some(&previous) = last.get(&producer) {
                assert!(
                    sequence > previous,
                    "{when}: partition {partition} offset {offset}: producer {producer}'s \
                     sequence {sequence} follows {previous}"
                );
            }
            last.insert(producer, sequence);
            seen.insert(value.clone(), *offset);
        }
    }

    for record in &acked {
        let log = &logs[&record.partition];
        let found = log.get(record.offset as usize).map(|(_, value)| value);
        assert_eq!(
            found,
            Some(&record.value),
            "{when}: acknowledged {} at {}-{} offset {}",
            record.value,
            topic,
            record.partition,
            record.offset
        );
    }
    checked
}

/// How many times the broker is killed.
const KILL_CYCLES: usize = 20;

#[test]
fn sigkill_during_acks_all_production_loses_nothing_acknowledged() {
    let started = Instant::now();
    let mut broker = Broker::start_new_with_args(&["--group-initial-rebalance-delay-ms", "0"]);
    let bootstrap = broker.bootstrap();
    let topic = "crash-loop";
    let group = "crash-loop-group";
    let partitions = 4;
    create_topic(&bootstrap, topic, partitions);

    let mut rng = Rng::from_time();
    println!("seed {}", rng.0);
    // Producer 2 is idempotent; 0 and 1 are not.
    let idempotent = [false, false, true];
    let ledger = Arc::new(Ledger::default());
    let control = Arc::new(Control::default());
    let producers: Vec<_> = idempotent
        .iter()
        .enumerate()
        .map(|(id, &idempotent)| {
            let (bootstrap, topic) = (bootstrap.clone(), topic.to_string());
            let (ledger, control) = (Arc::clone(&ledger), Arc::clone(&control));
            thread::spawn(move || run_producer(bootstrap, topic, id, idempotent, ledger, control))
        })
        .collect();
    let member = {
        let (bootstrap, topic, group) = (bootstrap.clone(), topic.to_string(), group.to_string());
        let (ledger, control) = (Arc::clone(&ledger), Arc::clone(&control));
        thread::spawn(move || run_group_member(bootstrap, topic, group, ledger, control))
    };
    // Stops the clients however the test ends, so that a failed assertion
    // does not leave threads producing into a dropped broker.
    struct StopOnDrop(Arc<Control>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.stop.store(true, Ordering::Relaxed);
        }
    }
    let _stop_guard = StopOnDrop(Arc::clone(&control));

    let mut last = Checked::default();
    let mut restart_total = Duration::ZERO;
    for cycle in 1..=KILL_CYCLES {
        let cycle_started = Instant::now();
        let run_ms = rng.between(100, 800);
        control.pause.store(false, Ordering::Relaxed);
        thread::sleep(Duration::from_millis(run_ms));
        broker.kill();
        // The producers pause only after the kill: their last requests meet
        // a dead broker, and their retries the new one.
        control.pause.store(true, Ordering::Relaxed);
        let restart_started = Instant::now();
        broker.start();
        let restart = restart_started.elapsed();
        restart_total += restart;
        last = check_topic(
            &bootstrap,
            topic,
            group,
            partitions,
            &idempotent,
            &ledger,
            &format!("after kill {cycle}"),
        );
        println!(
            "cycle {cycle}: ran {run_ms} ms; {} records in the log, {} acknowledged, {} \
             repeated; {} commits acknowledged; restart took {restart:?}, cycle {:?}",
            last.records,
            last.acked,
            last.duplicates,
            ledger.commits_acked.load(Ordering::Relaxed),
            cycle_started.elapsed()
        );
    }

    // The clients outlived every restart: let them run a little against the
    // last broker, then stop them; every record still queued must now be
    // delivered.
    let acked_before = lock(&ledger.acked).len();
    control.pause.store(false, Ordering::Relaxed);
    thread::sleep(Duration::from_millis(500));
    control.stop.store(true, Ordering::Relaxed);
    let sent: Vec<u64> = producers
        .into_iter()
        .map(|producer| producer.join().expect("producer thread"))
        .collect();
    member.join().expect("group member thread");
    let final_check = check_topic(
        &bootstrap,
        topic,
        group,
        partitions,
        &idempotent,
        &ledger,
        "at the end",
    );
    let failed = ledger.failed.load(Ordering::Relaxed);
    assert!(
        final_check.acked > acked_before,
        "the producers were acknowledged after the last restart"
    );
    assert_eq!(
        final_check.acked as u64 + failed,
        sent.iter().sum::<u64>(),
        "one delivery report per record sent"
    );
    assert!(
        ledger.commits_acked.load(Ordering::Relaxed) > 0,
        "the group member had commits acknowledged"
    );
    println!(
        "{KILL_CYCLES} kills in {:?} (restarts {restart_total:?}): {} records sent, {} acknowledged and found in place, \
         {} failed, {} repeats (retries of lost answers, non-idempotent producers); {} \
         commits acknowledged, {} failed; last cycle's log held {} records",
        started.elapsed(),
        sent.iter().sum::<u64>(),
        final_check.acked,
        failed,
        final_check.duplicates,
        ledger.commits_acked.load(Ordering::Relaxed),
        ledger.commits_failed.load(Ordering::Relaxed),
        last.records,
    );
}

// ---------------------------------------------------------------------------
// Torn writes: damage left in a stopped broker's files
// ---------------------------------------------------------------------------

/// Produces `batches` batches of `per_batch` records to partition 0 of
/// `topic` with acks=all, one flush per batch so that each is its own
/// request, and returns every record as acknowledged, in offset order.
fn produce_acked(
    bootstrap: &str,
    topic: &str,
    tag: &str,
    batches: usize,
    per_batch: usize,
) -> Vec<Acked> {
    let ledger = Arc::new(Ledger::default());
    let producer: BaseProducer<Recorder> = client_config(bootstrap)
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "30000")
        .create_with_context(Recorder(Arc::clone(&ledger)))
        .expect("create a producer");
    let padding = "x".repeat(80);
    for batch in 0..batches {
        for record in 0..per_batch {
            let value = format!("{tag}-{batch:04}-{record:04}-{padding}");
            let record = BaseRecord::<(), str>::to(topic)
                .partition(0)
                .payload(&value);
            producer
                .send(record)
                .unwrap_or_else(|(error, _)| panic!("send to {topic}: {error}"));
        }
        // Wait for this batch's reports before the next is sent (polling
        // in short steps: `flush` would sleep 100 ms per batch).
        let sent = (batch + 1) * per_batch;
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        while lock(&ledger.acked).len() + (ledger.failed.load(Ordering::Relaxed) as usize) < sent {
            assert!(
                Instant::now() < deadline,
                "{topic}: no delivery reports within {CLIENT_TIMEOUT:?}"
            );
            producer.poll(Duration::from_millis(1));
        }
    }
    assert_eq!(
        ledger.failed.load(Ordering::Relaxed),
        0,
        "every record to {topic} delivered"
    );
    let mut acked = lock(&ledger.acked).clone();
    acked.sort_by_key(|record| record.offset);
    assert_eq!(acked.len(), batches * per_batch);
    acked
}

/// The partition's active segment (the `.log` with the highest base offset)
/// and its batches as (position, size, base offset).
fn active_segment(data_dir: &Path, topic: &str) -> (PathBuf, Vec<(u64, u64, i64)>) {
    let dir = data_dir.join(format!("{topic}-0"));
    let mut logs: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("read {}: {error}", dir.display()))
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    logs.sort();
    let path = logs.pop().expect("a segment");
    let bytes = fs::read(&path).expect("read the segment");
    let mut batches = Vec::new();
    let mut position = 0u64;
    for batch in batch::split(&bytes) {
        let batch = batch.expect("a whole batch before the damage");
        let header = batch::check(batch).expect("a valid batch before the damage");
        batches.push((position, batch.len() as u64, header.base_offset));
        position += batch.len() as u64;
    }
    assert_eq!(position, bytes.len() as u64, "the segment is whole batches");
    (path, batches)
}

/// One way to damage a stopped broker's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Damage {
    /// The active segment ends halfway through its last batch.
    TruncateMidBatch,
    /// Garbage after the active segment's last batch.
    AppendGarbage,
    /// One byte of the last batch's records (covered by its CRC) flipped.
    FlipByteInLastBatch,
    /// The last 4 KiB of the active segment zeroed.
    ZeroLast4KiB,
    /// The partition's index files and every checkpoint deleted.
    DeleteIndexesAndCheckpoints,
    /// The partition's index files and every checkpoint full of garbage.
    GarbageIndexesAndCheckpoints,
}

const DAMAGES: [Damage; 6] = [
    Damage::TruncateMidBatch,
    Damage::AppendGarbage,
    Damage::FlipByteInLastBatch,
    Damage::ZeroLast4KiB,
    Damage::DeleteIndexesAndCheckpoints,
    Damage::GarbageIndexesAndCheckpoints,
];

/// Checkpoint files of the data dir and of one partition.
fn checkpoint_files(data_dir: &Path, topic: &str) -> Vec<PathBuf> {
    let mut files = vec![
        data_dir.join("recovery-point-offset-checkpoint"),
        data_dir.join("log-start-offset-checkpoint"),
    ];
    let dir = data_dir.join(format!("{topic}-0"));
    for entry in fs::read_dir(&dir).expect("partition dir") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if name == "leader-epoch-checkpoint" || ["index", "timeindex", "snapshot"].contains(&ext) {
            files.push(path);
        }
    }
    files
}

/// Damages `topic`'s files as `damage` says and returns the first offset
/// the damage destroyed: where the log must end after the restart.
fn damage(data_dir: &Path, topic: &str, damage: Damage, rng: &mut Rng) -> i64 {
    let (path, batches) = active_segment(data_dir, topic);
    let &(last_position, last_size, last_base) = batches.last().expect("batches");
    let file_len = last_position + last_size;
    let end = {
        let (_, _, base) = batches.last().expect("batches");
        let bytes = fs::read(&path).expect("read segment");
        let header = batch::check(&bytes[last_position as usize..]).expect("last batch");
        assert_eq!(header.base_offset, *base);
        header.next_offset()
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open the segment");
    match damage {
        Damage::TruncateMidBatch => {
            file.set_len(last_position + last_size / 2)
                .expect("truncate");
            last_base
        }
        Damage::AppendGarbage => {
            let garbage: Vec<u8> = (0..1000).map(|_| rng.next() as u8).collect();
            file.write_all_at(&garbage, file_len).expect("append");
            end
        }
        Damage::FlipByteInLastBatch => {
            // Past the 61-byte header: inside the records the CRC covers.
            let at = last_position + 61 + rng.between(0, last_size - 62);
            let mut byte = [0u8];
            file.read_exact_at(&mut byte, at).expect("read a byte");
            file.write_all_at(&[byte[0] ^ 0x40], at)
                .expect("flip a byte");
            last_base
        }
        Damage::ZeroLast4KiB => {
            let from = file_len.saturating_sub(4096);
            file.write_all_at(&vec![0u8; (file_len - from) as usize], from)
                .expect("zero-fill");
            batches
                .iter()
                .find(|(position, size, _)| position + size > from)
                .map(|&(_, _, base)| base)
                .expect("a batch in the last 4 KiB")
        }
        Damage::DeleteIndexesAndCheckpoints => {
            for path in checkpoint_files(data_dir, topic) {
                fs::remove_file(&path)
                    .unwrap_or_else(|error| panic!("remove {}: {error}", path.display()));
            }
            end
        }
        Damage::GarbageIndexesAndCheckpoints => {
            for path in checkpoint_files(data_dir, topic) {
                let garbage: Vec<u8> = (0..300).map(|_| rng.next() as u8).collect();
                fs::write(&path, garbage)
                    .unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
            }
            end
        }
    }
}

/// Produces to one topic per kind of damage, stops the broker (`kill`:
/// SIGKILL, else SIGTERM), damages each topic's files its way, restarts,
/// and checks each topic: every record before the damage is read back
/// intact, the log ends where the damage began, and new records land at
/// the next offsets and read back.
fn torn_writes_through_the_broker(kill: bool) {
    let started = Instant::now();
    let mut broker = Broker::start_new();
    let bootstrap = broker.bootstrap();
    let mut rng = Rng::from_time();
    println!("seed {}", rng.0);
    let mut acked = BTreeMap::new();
    for (index, damage) in DAMAGES.iter().enumerate() {
        let topic = format!("torn-{index}");
        create_topic(&bootstrap, &topic, 1);
        // 40 batches of 10 records of ~100 bytes: ~40 KiB, several index
        // entries, several batches in the last 4 KiB.
        let records = produce_acked(&bootstrap, &topic, "old", 40, 10);
        for (index, record) in records.iter().enumerate() {
            assert_eq!(record.offset, index as i64, "{topic}: offsets from 0");
        }
        acked.insert(*damage, (topic, records));
    }
    if kill {
        broker.kill();
    } else {
        broker.stop();
    }
    let mut damaged_at = BTreeMap::new();
    for (damage_kind, (topic, _)) in &acked {
        let at = damage(broker.data_dir(), topic, *damage_kind, &mut rng);
        damaged_at.insert(*damage_kind, at);
    }
    let lines_before = broker.stderr_lines().len();
    let produced = started.elapsed();
    broker.start();
    // What the broker said about the damage, for the test's output.
    for line in &broker.stderr_lines()[lines_before..] {
        if line.contains("WARN") {
            println!("broker: {line}");
        }
    }
    let restarted = started.elapsed();

    for (damage_kind, (topic, records)) in &acked {
        let at = damaged_at[damage_kind];
        let when = format!(
            "{damage_kind:?} after {}",
            if kill { "SIGKILL" } else { "SIGTERM" }
        );
        let ends = log_ends(&bootstrap, topic, 1);
        assert_eq!(ends[&0], at, "{when}: the log ends where the damage began");
        let log = &read_topic(&bootstrap, topic, &ends)[&0];
        for (record, (offset, value)) in records.iter().zip(log) {
            assert_eq!(record.offset, *offset);
            assert_eq!(&record.value, value, "{when}: offset {offset}");
        }
        if (at as usize) < records.len() {
            let logged = broker.stderr_lines()[lines_before..].iter().any(|line| {
                line.contains("truncated the log at a damaged batch")
                    && line.contains(&format!("{topic}-0"))
            });
            assert!(
                logged,
                "{when}: the broker logs the truncation of {topic}-0"
            );
        }
        // New records follow on at the next offsets.
        let new = produce_acked(&bootstrap, topic, "new", 3, 10);
        for (index, record) in new.iter().enumerate() {
            assert_eq!(
                record.offset,
                at + index as i64,
                "{when}: new record {index}"
            );
        }
        let ends = log_ends(&bootstrap, topic, 1);
        assert_eq!(ends[&0], at + new.len() as i64);
        let log = &read_topic(&bootstrap, topic, &ends)[&0];
        for record in records.iter().take(at as usize).chain(&new) {
            assert_eq!(
                log[record.offset as usize].1, record.value,
                "{when}: offset {} after new produces",
                record.offset
            );
        }
        println!(
            "{when}: {} records kept of {}, 30 new ones at {at}..",
            at,
            records.len()
        );
    }
    println!(
        "produced and stopped in {produced:?}, restarted by {restarted:?}, checked by {:?}",
        started.elapsed()
    );
}

#[test]
fn torn_writes_after_sigterm_are_cut_and_the_log_goes_on() {
    torn_writes_through_the_broker(false);
}

#[test]
fn torn_writes_after_sigkill_are_cut_and_the_log_goes_on() {
    torn_writes_through_the_broker(true);
}

// ---------------------------------------------------------------------------
// A full filesystem
// ---------------------------------------------------------------------------

/// A tmpfs of a fixed size mounted on a new temporary dir, unmounted when
/// dropped (lazily if something still holds it), so that a failing test
/// leaves no mount behind.
///
/// tmpfs rather than a loop device with ext4: what the broker meets is the
/// same — `write` fails with ENOSPC, possibly after writing part of the
/// buffer (ext4 with delayed allocation reserves blocks at `write` time, so
/// it too reports ENOSPC there, not at `fsync`) — and tmpfs needs no
/// `mkfs`, no loop device and no disk. What tmpfs cannot show is a failing
/// `fsync`, which is why the log's handling of that is a unit test in
/// rill-storage.
struct SmallFilesystem {
    dir: Option<tempfile::TempDir>,
}

impl SmallFilesystem {
    /// Mounts a tmpfs of `size_mib` MiB, or says why it cannot.
    fn mount(size_mib: u64) -> Result<SmallFilesystem, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("needs root to mount".into());
        }
        let dir = tempfile::Builder::new()
            .prefix("rill-full-fs-")
            .tempdir()
            .map_err(|error| format!("cannot create a mount point: {error}"))?;
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|error| format!("cannot run mount: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(SmallFilesystem { dir: Some(dir) })
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().expect("mounted").path()
    }

    /// Bytes still free (statvfs).
    fn free_bytes(&self) -> u64 {
        let stat = rustix::fs::statvfs(self.path()).expect("statvfs");
        stat.f_bavail * stat.f_frsize
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let unmounted = std::process::Command::new("umount")
            .arg(dir.path())
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(dir.path())
                .status();
        }
        drop(dir);
    }
}

/// Produces records of about 1 KiB to `topic` with `acks`, 100 at a time,
/// until a delivery fails; returns the acknowledged records and the
/// errors. librdkafka does not retry here (`retries=0`), so an error is
/// the broker's own answer.
fn produce_until_error(
    bootstrap: &str,
    topic: &str,
    acks: &str,
    tag: &str,
) -> (Vec<Acked>, Vec<KafkaError>) {
    let ledger = Arc::new(Ledger::default());
    let producer: BaseProducer<Recorder> = client_config(bootstrap)
        .set("acks", acks)
        .set("linger.ms", "1")
        .set("retries", "0")
        .set("message.timeout.ms", "30000")
        .create_with_context(Recorder(Arc::clone(&ledger)))
        .expect("create a producer");
    let padding = "f".repeat(1000);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut sent = 0usize;
    // A bound on the bytes sent: far more than the filesystem holds.
    while sent < 200_000 && ledger.failed.load(Ordering::Relaxed) == 0 {
        for _ in 0..100 {
            let value = format!("{tag}-{sent:08}-{padding}");
            let record = BaseRecord::<(), str>::to(topic).payload(&value);
            producer
                .send(record)
                .unwrap_or_else(|(error, _)| panic!("send to {topic}: {error}"));
            sent += 1;
        }
        while lock(&ledger.acked).len() + (ledger.failed.load(Ordering::Relaxed) as usize) < sent {
            assert!(
                Instant::now() < deadline,
                "{topic}: delivery reports did not come"
            );
            producer.poll(Duration::from_millis(1));
        }
    }
    let acked = lock(&ledger.acked).clone();
    let errors = lock(&ledger.errors).clone();
    (acked, errors)
}

/// Checks that every acknowledged record of `topic` reads back at its offset
/// with its value; returns the log ends.
fn check_acked(bootstrap: &str, topic: &str, partitions: i32, acked: &[Acked], when: &str) {
    let ends = log_ends(bootstrap, topic, partitions);
    let logs = read_topic(bootstrap, topic, &ends);
    for record in acked {
        let found = logs[&record.partition]
            .get(record.offset as usize)
            .map(|(_, value)| value);
        assert_eq!(
            found,
            Some(&record.value),
            "{when}: acknowledged record at {topic}-{} offset {}",
            record.partition,
            record.offset
        );
    }
}

/// Every `.log` file of `topic`'s partitions holds whole valid batches and
/// nothing else: a write the full disk cut short left no torn tail.
fn assert_segments_whole(data_dir: &Path, topic: &str, partitions: i32, when: &str) {
    for partition in 0..partitions {
        let dir = data_dir.join(format!("{topic}-{partition}"));
        for entry in fs::read_dir(&dir).expect("partition dir") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_none_or(|ext| ext != "log") {
                continue;
            }
            let bytes = fs::read(&path).expect("read a segment");
            for batch in batch::split(&bytes) {
                let batch = batch.unwrap_or_else(|error| {
                    panic!("{when}: {} is not whole batches: {error}", path.display())
                });
                batch::check(batch).unwrap_or_else(|error| {
                    panic!("{when}: {} holds a bad batch: {error}", path.display())
                });
            }
        }
    }
}

/// Writes `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = fs::File::create(path).expect("create a filler");
    let chunk = [0xaau8; 4096];
    let mut written = 0;
    while let Ok(n @ 1..) = std::io::Write::write(&mut file, &chunk) {
        written += n as u64;
    }
    written
}

/// A consumer-group member's commit of `offset` for partition 0 of `topic`.
fn commit(bootstrap: &str, group: &str, topic: &str, offset: i64) -> Result<(), KafkaError> {
    commit_with_metadata(bootstrap, group, topic, offset, "")
}

/// [`commit`] with a metadata string (up to `offset.metadata.max.bytes`).
fn commit_with_metadata(
    bootstrap: &str,
    group: &str,
    topic: &str,
    offset: i64,
    metadata: &str,
) -> Result<(), KafkaError> {
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Offset(offset))
        .expect("add a partition");
    if !metadata.is_empty() {
        for mut element in list.elements_for_topic(topic) {
            element.set_metadata(metadata);
        }
    }
    consumer.commit(&list, CommitMode::Sync)
}

/// CreateTopics of a one-partition topic: the per-topic result.
fn try_create_topic(bootstrap: &str, name: &str) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(bootstrap).create().expect("admin client");
    let topic = NewTopic::new(name, 1, TopicReplication::Fixed(1));
    let options = AdminOptions::new().request_timeout(Some(CLIENT_TIMEOUT));
    let results = block_on(admin.create_topics([&topic], &options))
        .map_err(|error| format!("request: {error}"))?;
    match &results[0] {
        Ok(_) => Ok(()),
        Err((_, code)) => Err(format!("{code:?}")),
    }
}

fn print_broker_problems(broker: &Broker, from: usize) -> usize {
    let lines = broker.stderr_lines();
    for line in &lines[from.min(lines.len())..] {
        if line.contains("WARN") || line.contains("ERROR") || line.starts_with("rill:") {
            println!("broker: {}", &line[..line.len().min(300)]);
        }
    }
    lines.len()
}

#[test]
fn a_full_filesystem_gives_errors_loses_nothing_and_recovers_when_space_is_freed() {
    let started = Instant::now();
    let fs = match SmallFilesystem::mount(48) {
        Ok(fs) => fs,
        Err(reason) => {
            println!("skipped: {reason}");
            return;
        }
    };
    // Room to free later.
    let ballast = fs.path().join("ballast");
    fs::write(&ballast, vec![0x55u8; 8 << 20]).expect("write the ballast");
    // Declared after the filesystem, so dropped (stopped) before it is
    // unmounted.
    let mut broker = Broker::start_new_in(fs.path(), &["--group-initial-rebalance-delay-ms", "0"]);
    let bootstrap = broker.bootstrap();
    let data_dir = broker.data_dir().to_path_buf();
    let topic = "full";
    let group = "full-group";
    let partitions = 2;
    {
        let admin: AdminClient<DefaultClientContext> =
            client_config(&bootstrap).create().expect("admin client");
        // Small segments, so that the disk fills across several rolls.
        let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
            .set("segment.bytes", "1048576");
        let options = AdminOptions::new().request_timeout(Some(CLIENT_TIMEOUT));
        let results = block_on(admin.create_topics([&new_topic], &options)).expect("CreateTopics");
        assert!(results[0].is_ok(), "{results:?}");
    }
    // The group and `__consumer_offsets` exist before the disk fills.
    commit(&bootstrap, group, topic, 0).expect("a commit with room on the disk");
    let free_before = fs.free_bytes();

    // Fill the disk: acks=all first, then acks=1 into what is left.
    let (mut acked, errors_all) = produce_until_error(&bootstrap, topic, "all", "all");
    let (acked_one, errors_one) = produce_until_error(&bootstrap, topic, "1", "one");
    let bytes_acked = (acked.len() + acked_one.len()) * 1010;
    println!(
        "full: {} bytes free before; {} acks=all and {} acks=1 records (~{bytes_acked} bytes) \
         acknowledged; then acks=all got {:?}, acks=1 got {:?}; {} bytes free",
        free_before,
        acked.len(),
        acked_one.len(),
        errors_all.first(),
        errors_one.first(),
        fs.free_bytes()
    );
    for error in errors_all.iter().chain(&errors_one) {
        assert_eq!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::KafkaStorageError),
            "a full disk is a KAFKA_STORAGE_ERROR: {error}"
        );
    }
    assert!(!errors_all.is_empty() && !errors_one.is_empty());
    acked.extend(acked_one);
    assert_segments_whole(&data_dir, topic, partitions, "full");
    let (status, _) = broker.http_get("/health");
    assert_eq!(status, 200, "the broker serves on a full disk");
    check_acked(&bootstrap, topic, partitions, &acked, "full");

    // What the last failed batch left free goes too: the disk is full to
    // the last page.
    let filler = fs.path().join("filler");
    let filled = fill(&filler);
    println!("filler took the last {filled} bytes");

    // Metadata and group changes on the full disk: errors, not a crash.
    let created = try_create_topic(&bootstrap, "made-while-full");
    println!("CreateTopics while full: {created:?}");
    assert!(created.is_err(), "a topic cannot be created on a full disk");
    let committed = commit(&bootstrap, group, topic, 1);
    println!("OffsetCommit while full: {committed:?}");
    // A commit with 4000 bytes of metadata needs a page the full disk does
    // not have: the coordinator's write fails, and the member is told
    // COORDINATOR_NOT_AVAILABLE (Kafka's answer for a storage error).
    let big = commit_with_metadata(&bootstrap, group, topic, 1, &"m".repeat(4000));
    println!("OffsetCommit with 4000 bytes of metadata while full: {big:?}");
    assert!(
        big.is_err(),
        "a commit that needs space fails on a full disk"
    );
    let (status, _) = broker.http_get("/health");
    assert_eq!(status, 200, "the broker serves after refusing changes");
    let mut seen = print_broker_problems(&broker, 0);

    // A restart on the full disk, clean if it can be.
    let status = broker.terminate();
    println!("SIGTERM on the full disk: {status}");
    seen = print_broker_problems(&broker, seen);
    // A clean stop writes indexes, snapshots and checkpoints; on a full
    // disk it cannot, and says so (exit 2, one line). The next start then
    // recovers as after a crash.
    if !status.success() {
        assert_eq!(status.code(), Some(2), "a failed stop exits 2");
        let said = broker
            .stderr_lines()
            .iter()
            .any(|line| line.starts_with("rill: ") && line.contains("No space left on device"));
        assert!(said, "a failed stop names the full disk");
    }
    broker.start();
    check_acked(
        &bootstrap,
        topic,
        partitions,
        &acked,
        "restarted while full",
    );
    broker.kill();
    broker.start();
    check_acked(&bootstrap, topic, partitions, &acked, "killed while full");
    let (_, errors_again) = produce_until_error(&bootstrap, topic, "all", "again");
    assert!(!errors_again.is_empty(), "still full after the restarts");
    seen = print_broker_problems(&broker, seen);

    // Free space: the same broker process takes changes and writes again.
    fs::remove_file(&ballast).expect("remove the ballast");
    fs::remove_file(&filler).expect("remove the filler");
    try_create_topic(&bootstrap, "made-after-freeing")
        .expect("a topic can be created once space is freed");
    commit(&bootstrap, group, topic, 2).expect("a commit once space is freed");
    let (acked_after, errors_after) = produce_until_error(&bootstrap, topic, "all", "after");
    println!(
        "after freeing the ballast: {} acks=all records acknowledged before the disk was full again",
        acked_after.len()
    );
    assert!(
        acked_after.len() > 1000,
        "produce works again once space is freed"
    );
    assert!(!errors_after.is_empty());
    acked.extend(acked_after);
    check_acked(&bootstrap, topic, partitions, &acked, "after freeing space");
    let _ = print_broker_problems(&broker, seen);
    println!("full-disk test took {:?}", started.elapsed());
}
