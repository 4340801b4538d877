//! End to end with a real Kafka client: librdkafka, through the `rdkafka`
//! crate, against a `rill serve` process.
//!
//! Each test starts its own broker (see `common`) so tests can run in
//! parallel and a crash in one leaves the others alone. Producers run with
//! `enable.idempotence=false` (the plain path; `idempotence_e2e.rs` covers
//! idempotent producers) and consumers only `assign()`: librdkafka needs a
//! `group.id` for that, but the group is never joined and no offset is ever
//! committed.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{poll_until, run_to_exit, serve_command, Broker, Ports};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, Timestamp};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// How long any one client operation may take before the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------

/// Runs an admin future to completion. The admin client resolves its
/// futures from its own thread, so a current-thread runtime is enough.
fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime")
        .block_on(future)
}

fn client_config(broker: &Broker) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker.bootstrap())
        // A broker restart should not leave the client waiting seconds to
        // reconnect.
        .set("reconnect.backoff.ms", "20")
        .set("reconnect.backoff.max.ms", "500")
        .set("socket.timeout.ms", "10000");
    config
}

fn admin(broker: &Broker) -> AdminClient<DefaultClientContext> {
    client_config(broker)
        .create()
        .expect("create an admin client")
}

fn admin_options() -> AdminOptions {
    AdminOptions::new().request_timeout(Some(CLIENT_TIMEOUT))
}

fn create_topic(broker: &Broker, name: &str, partitions: i32) {
    create_topic_with(broker, name, partitions, &[]);
}

fn create_topic_with(broker: &Broker, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin = admin(broker);
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (key, value) in configs {
        topic = topic.set(key, value);
    }
    let results =
        block_on(admin.create_topics([&topic], &admin_options())).expect("CreateTopics request");
    assert_eq!(results.len(), 1);
    if let Err((topic, code)) = &results[0] {
        panic!("CreateTopics {topic}: {code:?}");
    }
}

/// The topics the broker lists, with their partition counts. Asks for every
/// topic, because asking for one by name would auto-create it.
fn topics(broker: &Broker) -> BTreeMap<String, usize> {
    let admin = admin(broker);
    let metadata = admin
        .inner()
        .fetch_metadata(None, CLIENT_TIMEOUT)
        .expect("Metadata request");
    metadata
        .topics()
        .iter()
        .map(|topic| (topic.name().to_string(), topic.partitions().len()))
        .collect()
}

/// One record a test produces.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    /// The CreateTime to set, if any; else librdkafka sets the current time.
    timestamp: Option<i64>,
}

impl Record {
    fn value(value: impl Into<Vec<u8>>) -> Record {
        Record {
            key: None,
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp: None,
        }
    }
}

/// A record as a consumer read it back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Consumed {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp: Timestamp,
}

impl Consumed {
    fn same_content(&self, record: &Record) -> bool {
        self.key == record.key && self.value == record.value && self.headers == record.headers
    }
}

/// Where the broker said a record went, or why it did not.
type DeliveryReport = Result<(i32, i64), KafkaError>;

/// Collects delivery reports by the index of the record in the caller's list.
#[derive(Debug, Default)]
struct Deliveries {
    reports: Mutex<HashMap<usize, DeliveryReport>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        let report = match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((error, _)) => Err(error.clone()),
        };
        let previous = self
            .reports
            .lock()
            .expect("reports lock")
            .insert(index, report);
        assert!(
            previous.is_none(),
            "two delivery reports for record {index}"
        );
    }
}

impl Deliveries {
    fn ok_count(&self) -> usize {
        let reports = self.reports.lock().expect("reports lock");
        reports.values().filter(|report| report.is_ok()).count()
    }

    fn take(&self) -> HashMap<usize, DeliveryReport> {
        std::mem::take(&mut *self.reports.lock().expect("reports lock"))
    }
}

fn producer(broker: &Broker, settings: &[(&str, &str)]) -> BaseProducer<Deliveries> {
    let mut config = client_config(broker);
    config
        .set("enable.idempotence", "false")
        .set("message.timeout.ms", "30000");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    config
        .create_with_context(Deliveries::default())
        .expect("create a producer")
}

/// Queues `records[i]` for every i in `indexes`, to `partition` if given
/// (else librdkafka's partitioner picks), waiting for room in the queue.
fn send(
    producer: &BaseProducer<Deliveries>,
    topic: &str,
    partition: Option<i32>,
    records: &[Record],
    indexes: impl IntoIterator<Item = usize>,
) {
    for index in indexes {
        let record = &records[index];
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            let mut base: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(topic, index).headers(headers.clone());
            if let Some(key) = &record.key {
                base = base.key(key.as_slice());
            }
            if let Some(value) = &record.value {
                base = base.payload(value.as_slice());
            }
            if let Some(timestamp) = record.timestamp {
                base = base.timestamp(timestamp);
            }
            if let Some(partition) = partition {
                base = base.partition(partition);
            }
            match producer.send(base) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    assert!(
                        Instant::now() < deadline,
                        "the producer queue stayed full for {CLIENT_TIMEOUT:?}"
                    );
                    producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => panic!("send record {index}: {error}"),
            }
        }
    }
}

/// Sends every record and waits for every delivery report.
fn produce_all(
    producer: &BaseProducer<Deliveries>,
    topic: &str,
    partition: Option<i32>,
    records: &[Record],
) -> HashMap<usize, DeliveryReport> {
    send(producer, topic, partition, records, 0..records.len());
    producer.flush(CLIENT_TIMEOUT).expect("flush the producer");
    let reports = producer.context().take();
    assert_eq!(
        reports.len(),
        records.len(),
        "one delivery report per record"
    );
    reports
}

/// Every report must be a success; returns index → (partition, offset).
fn expect_delivered(reports: HashMap<usize, DeliveryReport>) -> HashMap<usize, (i32, i64)> {
    reports
        .into_iter()
        .map(|(index, report)| match report {
            Ok(position) => (index, position),
            Err(error) => panic!("record {index} was not delivered: {error}"),
        })
        .collect()
}

fn consumer(broker: &Broker, settings: &[(&str, &str)]) -> BaseConsumer {
    let mut config = client_config(broker);
    config
        .set("group.id", "rill-e2e")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    config.create().expect("create a consumer")
}

fn watermarks(broker: &Broker, topic: &str, partition: i32) -> (i64, i64) {
    let consumer = consumer(broker, &[]);
    consumer
        .fetch_watermarks(topic, partition, CLIENT_TIMEOUT)
        .unwrap_or_else(|error| panic!("watermarks of {topic}-{partition}: {error}"))
}

/// Reads every partition of `topic` from its start up to the high watermark
/// it has when the read starts, sorted by partition and offset. Fails on a
/// gap, a duplicate, or a time-out.
fn read_all(broker: &Broker, topic: &str, partitions: i32) -> Vec<Consumed> {
    let ends: BTreeMap<i32, (i64, i64)> = (0..partitions)
        .map(|partition| (partition, watermarks(broker, topic, partition)))
        .collect();
    let consumer = consumer(broker, &[]);
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("add partition");
    }
    consumer.assign(&assignment).expect("assign");
    let mut consumed = read_until(&consumer, topic, &ends);
    // Partitions interleave in whatever order fetches return; each one's
    // own order was checked as it was read.
    consumed.sort_by_key(|record| (record.partition, record.offset));
    consumed
}

/// Polls `consumer` until each partition has been read up to its high
/// watermark in `ends` (partition → (low, high)), checking that offsets are
/// contiguous and ascending from the low watermark.
fn read_until(
    consumer: &BaseConsumer,
    topic: &str,
    ends: &BTreeMap<i32, (i64, i64)>,
) -> Vec<Consumed> {
    let mut next: BTreeMap<i32, i64> = ends.iter().map(|(p, (low, _))| (*p, *low)).collect();
    let done = |next: &BTreeMap<i32, i64>| ends.iter().all(|(p, (_, high))| next[p] >= *high);
    let mut consumed = Vec::new();
    let mut errors = Vec::new();
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    while !done(&next) {
        assert!(
            Instant::now() < deadline,
            "{topic}: read up to {next:?} of {ends:?} (partition → (low, high)) within \
             {CLIENT_TIMEOUT:?}; consumer errors: {errors:?}"
        );
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(error)) => errors.push(error.to_string()),
            Some(Ok(message)) => {
                assert_eq!(message.topic(), topic);
                let partition = message.partition();
                let expected = next.get_mut(&partition).expect("an assigned partition");
                assert_eq!(
                    message.offset(),
                    *expected,
                    "{topic}-{partition}: offsets must be contiguous and ascending"
                );
                *expected += 1;
                consumed.push(consumed_from(&message));
            }
        }
    }
    if !errors.is_empty() {
        // Shown with a failing test's output; the read itself succeeded.
        eprintln!("{topic}: consumer errors while reading: {errors:?}");
    }
    consumed
}

fn consumed_from(message: &impl Message) -> Consumed {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| (header.key.to_string(), header.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    Consumed {
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
        timestamp: message.timestamp(),
    }
}

/// The records of one codec's run: keyed, with null and empty keys, with
/// headers (some with a null value) and without, with null and empty values;
/// the other values compress well.
fn mixed_records(tag: &str, count: usize) -> Vec<Record> {
    (0..count)
        .map(|i| {
            // Null (absent) and empty are different on the wire (length -1
            // and 0), and must stay different.
            let key = match i % 10 {
                0 => None,
                5 => Some(Vec::new()),
                _ => Some(format!("key-{}", i % 17).into_bytes()),
            };
            let value = match i % 13 {
                5 => None,
                6 => Some(Vec::new()),
                _ => Some(format!("{tag} record {i} {}", "abcdefgh".repeat(i % 20)).into_bytes()),
            };
            let mut headers = vec![
                ("codec".to_string(), Some(tag.as_bytes().to_vec())),
                ("index".to_string(), Some(i.to_string().into_bytes())),
            ];
            if i % 7 == 0 {
                headers.push(("null-header".to_string(), None));
            }
            if i % 11 == 0 {
                headers.clear();
            }
            Record {
                key,
                value,
                headers,
                timestamp: None,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Produce and consume
// ---------------------------------------------------------------------------

const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

#[test]
fn every_codec_round_trips_keys_headers_and_nulls() {
    let broker = Broker::start_new();
    let topic = "codecs";
    let partitions = 4;
    create_topic(&broker, topic, partitions);

    // Each codec's records, and where each was acknowledged.
    let mut sent: Vec<(Record, (i32, i64))> = Vec::new();
    for codec in CODECS {
        let producer = producer(
            &broker,
            &[
                ("compression.codec", codec),
                ("linger.ms", "5"),
                ("acks", "all"),
            ],
        );
        let records = mixed_records(codec, 300);
        let delivered = expect_delivered(produce_all(&producer, topic, None, &records));
        for (index, record) in records.into_iter().enumerate() {
            sent.push((record, delivered[&index]));
        }
    }

    // A key always lands on one partition. (librdkafka's default
    // partitioner treats an empty key as no key, spreading it at random.)
    let mut partitions_of_key: HashMap<Vec<u8>, BTreeSet<i32>> = HashMap::new();
    for (record, (partition, _)) in &sent {
        if let Some(key) = record.key.as_ref().filter(|key| !key.is_empty()) {
            partitions_of_key
                .entry(key.clone())
                .or_default()
                .insert(*partition);
        }
    }
    for (key, partitions) in &partitions_of_key {
        assert_eq!(
            partitions.len(),
            1,
            "key {:?} went to partitions {partitions:?}",
            String::from_utf8_lossy(key)
        );
    }
    // Four partitions, 17 keys: the records are actually spread.
    let used: BTreeSet<i32> = sent.iter().map(|(_, (partition, _))| *partition).collect();
    assert!(used.len() > 1, "every record went to {used:?}");

    // Read back: exactly what was acknowledged, where it was acknowledged.
    let consumed = read_all(&broker, topic, partitions);
    assert_eq!(consumed.len(), sent.len(), "records read vs records sent");
    let at: HashMap<(i32, i64), &Consumed> = consumed
        .iter()
        .map(|record| ((record.partition, record.offset), record))
        .collect();
    for (index, (record, position)) in sent.iter().enumerate() {
        let got = at
            .get(position)
            .unwrap_or_else(|| panic!("record {index} acknowledged at {position:?} not read"));
        assert!(
            got.same_content(record),
            "record {index} at {position:?}: sent {record:?}, read {got:?}"
        );
        assert!(
            matches!(got.timestamp, Timestamp::CreateTime(ms) if ms > 0),
            "record {index}: timestamp {:?}",
            got.timestamp
        );
    }
}

#[test]
fn acks_0_1_and_all_each_deliver() {
    let broker = Broker::start_new();
    for acks in ["0", "1", "all"] {
        let topic = format!("acks-{acks}");
        create_topic(&broker, &topic, 2);
        let producer = producer(&broker, &[("acks", acks), ("linger.ms", "2")]);
        let records: Vec<Record> = (0..500)
            .map(|i| Record::value(format!("acks={acks} #{i}")))
            .collect();
        let reports = produce_all(&producer, &topic, None, &records);
        for (index, report) in &reports {
            match report {
                // With acks=0 the broker says nothing, so the client knows
                // no offset; with acks 1 and all it must.
                Ok((_, offset)) => assert!(
                    acks == "0" || *offset >= 0,
                    "acks={acks} record {index}: offset {offset}"
                ),
                Err(error) => panic!("acks={acks} record {index}: {error}"),
            }
        }

        // acks=0 records are appended after the client has moved on: wait
        // (bounded) until the log has them all.
        let watcher = consumer(&broker, &[]);
        let all_there = poll_until(CLIENT_TIMEOUT, || {
            let total: i64 = (0..2)
                .map(|partition| {
                    let (_, high) = watcher
                        .fetch_watermarks(&topic, partition, CLIENT_TIMEOUT)
                        .expect("ListOffsets");
                    high
                })
                .sum();
            (total >= records.len() as i64).then_some(total)
        });
        assert_eq!(
            all_there,
            Some(records.len() as i64),
            "acks={acks}: high watermarks should add up to the records sent"
        );
        let consumed = read_all(&broker, &topic, 2);
        let read: BTreeSet<Vec<u8>> = consumed.iter().filter_map(|r| r.value.clone()).collect();
        let sent: BTreeSet<Vec<u8>> = records.iter().filter_map(|r| r.value.clone()).collect();
        assert_eq!(read, sent, "acks={acks}: every record, once");
        assert_eq!(consumed.len(), records.len(), "acks={acks}: no duplicates");
    }
}

#[test]
fn pipelined_produce_keeps_per_partition_order() {
    let broker = Broker::start_new();
    let topic = "pipelined";
    let partitions = 3;
    create_topic(&broker, topic, partitions);
    // Small batches, no linger and five requests in flight per connection:
    // the broker sees many pipelined Produce requests.
    let producer = producer(
        &broker,
        &[
            ("acks", "all"),
            ("max.in.flight.requests.per.connection", "5"),
            ("linger.ms", "0"),
            ("batch.num.messages", "20"),
        ],
    );
    let per_partition = 3000;
    let mut expected: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    for partition in 0..partitions {
        let records: Vec<Record> = (0..per_partition)
            .map(|i| Record::value(format!("p{partition} seq {i:06}")))
            .collect();
        send(
            &producer,
            topic,
            Some(partition),
            &records,
            0..records.len(),
        );
        // Delivery reports are keyed by index; keep this partition's apart.
        producer.flush(CLIENT_TIMEOUT).expect("flush");
        let delivered = expect_delivered(producer.context().take());
        assert_eq!(delivered.len(), records.len());
        for index in 1..records.len() {
            let (_, before) = delivered[&(index - 1)];
            let (_, after) = delivered[&index];
            assert_eq!(
                after,
                before + 1,
                "partition {partition}: record {index} acknowledged at {after}, the one \
                 before at {before}"
            );
        }
        expected.insert(
            partition,
            records.into_iter().filter_map(|r| r.value).collect(),
        );
    }
    let consumed = read_all(&broker, topic, partitions);
    for (partition, values) in expected {
        let read: Vec<Vec<u8>> = consumed
            .iter()
            .filter(|r| r.partition == partition)
            .filter_map(|r| r.value.clone())
            .collect();
        assert!(
            read == values,
            "partition {partition}: read out of send order"
        );
    }
}

#[test]
fn pipelined_produce_keeps_order_while_interleaving_partitions() {
    let broker = Broker::start_new();
    let topic = "interleaved";
    let partitions = 2;
    create_topic(&broker, topic, partitions);
    let producer = producer(
        &broker,
        &[
            ("acks", "1"),
            ("max.in.flight.requests.per.connection", "5"),
            ("linger.ms", "1"),
            ("batch.num.messages", "50"),
        ],
    );
    let records: Vec<Record> = (0..6000)
        .map(|i| Record::value(format!("seq {i:06}")))
        .collect();
    // Alternate partitions in blocks of 7 so batches for both are in flight.
    for block in (0..records.len()).step_by(7) {
        let partition = ((block / 7) % 2) as i32;
        let end = (block + 7).min(records.len());
        send(&producer, topic, Some(partition), &records, block..end);
    }
    producer.flush(CLIENT_TIMEOUT).expect("flush");
    let delivered = expect_delivered(producer.context().take());
    // Within each partition, offsets follow send order.
    let mut last: BTreeMap<i32, (usize, i64)> = BTreeMap::new();
    for index in 0..records.len() {
        let (partition, offset) = delivered[&index];
        if let Some((previous_index, previous_offset)) = last.get(&partition) {
            assert_eq!(
                offset,
                previous_offset + 1,
                "partition {partition}: record {index} at {offset}, record {previous_index} \
                 (sent before it) at {previous_offset}"
            );
        }
        last.insert(partition, (index, offset));
    }
    let consumed = read_all(&broker, topic, partitions);
    assert_eq!(consumed.len(), records.len());
    for record in &consumed {
        let value = record.value.as_deref().expect("a value");
        let index: usize = std::str::from_utf8(&value[4..])
            .expect("utf-8")
            .parse()
            .expect("a sequence number");
        assert_eq!(delivered[&index], (record.partition, record.offset));
    }
}

// ---------------------------------------------------------------------------
// ListOffsets
// ---------------------------------------------------------------------------

#[test]
fn list_offsets_watermarks_and_times() {
    let broker = Broker::start_new();
    let topic = "timed";
    create_topic(&broker, topic, 2);
    assert_eq!(watermarks(&broker, topic, 0), (0, 0), "an empty partition");

    // Partition 0: ten records a second apart; partition 1: five.
    let base_ms: i64 = 1_700_000_000_000;
    let timed = |count: usize| -> Vec<Record> {
        (0..count)
            .map(|i| Record {
                timestamp: Some(base_ms + 1000 * i as i64),
                ..Record::value(format!("at +{i}s"))
            })
            .collect()
    };
    let producer = producer(&broker, &[("acks", "all"), ("linger.ms", "0")]);
    for (partition, count) in [(0, 10), (1, 5)] {
        let records = timed(count);
        let delivered = expect_delivered(produce_all(&producer, topic, Some(partition), &records));
        for (index, (got_partition, offset)) in delivered {
            assert_eq!((got_partition, offset), (partition, index as i64));
        }
    }
    assert_eq!(watermarks(&broker, topic, 0), (0, 10));
    assert_eq!(watermarks(&broker, topic, 1), (0, 5));

    let consumer = consumer(&broker, &[]);
    // (partition, timestamp asked for, offset expected)
    let cases = [
        (0, base_ms - 5000, Offset::Offset(0)), // before everything: the first record
        (0, base_ms, Offset::Offset(0)),        // exactly the first
        (0, base_ms + 3500, Offset::Offset(4)), // between: the next one after
        (0, base_ms + 9000, Offset::Offset(9)), // exactly the last
        (0, base_ms + 9001, Offset::End),       // after everything: none (-1)
        (1, base_ms + 2000, Offset::Offset(2)),
        (1, base_ms + 4001, Offset::End),
    ];
    for (partition, timestamp, expected) in cases {
        let mut query = TopicPartitionList::new();
        query
            .add_partition_offset(topic, partition, Offset::Offset(timestamp))
            .expect("add partition");
        let answer = consumer
            .offsets_for_times(query, CLIENT_TIMEOUT)
            .expect("ListOffsets by time");
        let element = answer
            .find_partition(topic, partition)
            .expect("the partition asked for");
        assert_eq!(
            element.error(),
            Ok(()),
            "partition {partition} at {timestamp}"
        );
        assert_eq!(
            element.offset(),
            expected,
            "partition {partition}, timestamp base{:+}ms",
            timestamp - base_ms
        );
    }

    // The timestamps read back are the ones set.
    let consumed = read_all(&broker, topic, 2);
    for record in consumed {
        assert_eq!(
            record.timestamp,
            Timestamp::CreateTime(base_ms + 1000 * record.offset),
            "{record:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Restarts and crashes
// ---------------------------------------------------------------------------

#[test]
fn clean_restart_keeps_every_record() {
    let mut broker = Broker::start_new();
    let topic = "durable";
    let partitions = 3;
    create_topic(&broker, topic, partitions);
    for codec in CODECS {
        let producer = producer(&broker, &[("compression.codec", codec), ("acks", "1")]);
        expect_delivered(produce_all(
            &producer,
            topic,
            None,
            &mixed_records(codec, 100),
        ));
    }
    let before = read_all(&broker, topic, partitions);
    assert_eq!(before.len(), 500);

    broker.restart();

    assert_eq!(topics(&broker).get(topic), Some(&(partitions as usize)));
    let after = read_all(&broker, topic, partitions);
    assert_eq!(
        after.len(),
        before.len(),
        "records read before and after a restart"
    );
    let differ: Vec<(&Consumed, &Consumed)> = before
        .iter()
        .zip(&after)
        .filter(|(before, after)| before != after)
        .collect();
    assert!(
        differ.is_empty(),
        "{} of {} records differ after a restart; the first (before, after): {:?}",
        differ.len(),
        before.len(),
        differ.first()
    );

    // The log goes on where it stopped.
    let producer = producer(&broker, &[("acks", "all")]);
    let more = vec![Record::value("after restart")];
    let delivered = expect_delivered(produce_all(&producer, topic, Some(0), &more));
    let end_before = before.iter().filter(|r| r.partition == 0).count() as i64;
    assert_eq!(delivered[&0], (0, end_before));
}

#[test]
fn sigkill_during_acks_all_produce_keeps_every_acknowledged_record() {
    let mut broker = Broker::start_new();
    let topic = "crash";
    let partitions = 2;
    create_topic(&broker, topic, partitions);
    let producer = producer(
        &broker,
        &[
            ("acks", "all"),
            ("linger.ms", "1"),
            ("batch.num.messages", "100"),
            ("max.in.flight.requests.per.connection", "5"),
        ],
    );
    let records: Vec<Record> = (0..20_000)
        .map(|i| Record::value(format!("crash {i:05}")))
        .collect();
    send(&producer, topic, None, &records, 0..records.len());

    // Kill the broker once some records are acknowledged and many are not.
    let acknowledged = poll_until(CLIENT_TIMEOUT, || {
        producer.poll(Duration::from_millis(1));
        let ok = producer.context().ok_count();
        (ok >= 2000).then_some(ok)
    });
    assert!(acknowledged.is_some(), "no 2000 acknowledgements in time");
    broker.kill();
    let acknowledged_at_kill = producer.context().ok_count();
    broker.start();

    // The producer retries what was not acknowledged against the restarted
    // broker; whatever it reports now is final.
    producer.flush(CLIENT_TIMEOUT).expect("flush after restart");
    let reports = producer.context().take();
    assert_eq!(reports.len(), records.len(), "a report for every record");
    let delivered: HashMap<usize, (i32, i64)> = reports
        .iter()
        .filter_map(|(index, report)| report.as_ref().ok().map(|position| (*index, *position)))
        .collect();
    let failed = reports.len() - delivered.len();
    let consumed = read_all(&broker, topic, partitions);
    // Without idempotence a batch written but not acknowledged before the
    // kill is written again by the retry: duplicates are allowed, loss is not.
    eprintln!(
        "{acknowledged_at_kill} acknowledged before the kill, {} in all, {failed} failed; \
         the log has {} records",
        delivered.len(),
        consumed.len()
    );
    let at: HashMap<(i32, i64), &Consumed> = consumed
        .iter()
        .map(|record| ((record.partition, record.offset), record))
        .collect();
    for (index, position) in &delivered {
        let got = at.get(position).unwrap_or_else(|| {
            panic!("record {index} was acknowledged at {position:?} but is not in the log")
        });
        assert_eq!(
            got.value, records[*index].value,
            "record {index} acknowledged at {position:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Topic administration
// ---------------------------------------------------------------------------

#[test]
fn deleted_topic_is_gone_and_recreated_topic_is_empty() {
    let broker = Broker::start_new();
    let topic = "doomed";
    create_topic(&broker, topic, 2);
    let producer = producer(&broker, &[("acks", "all")]);
    let records: Vec<Record> = (0..50).map(|i| Record::value(format!("v{i}"))).collect();
    expect_delivered(produce_all(&producer, topic, None, &records));
    // A producer with the topic in its cache would ask for its metadata
    // again and auto-create it: let it go before deleting.
    drop(producer);

    let admin = admin(&broker);
    let results = block_on(admin.delete_topics(&[topic], &admin_options())).expect("DeleteTopics");
    assert_eq!(results, vec![Ok(topic.to_string())]);
    assert_eq!(
        topics(&broker).get(topic),
        None,
        "deleted topic still listed"
    );

    create_topic(&broker, topic, 3);
    assert_eq!(topics(&broker).get(topic), Some(&3));
    for partition in 0..3 {
        assert_eq!(
            watermarks(&broker, topic, partition),
            (0, 0),
            "partition {partition} of the recreated topic"
        );
    }
    assert!(read_all(&broker, topic, 3).is_empty());
}

#[test]
fn delete_records_moves_the_log_start() {
    let broker = Broker::start_new();
    let topic = "trimmed";
    create_topic(&broker, topic, 1);
    let producer = producer(&broker, &[("acks", "all")]);
    let records: Vec<Record> = (0..100).map(|i| Record::value(format!("v{i}"))).collect();
    expect_delivered(produce_all(&producer, topic, Some(0), &records));

    let admin = admin(&broker);
    let mut before = TopicPartitionList::new();
    before
        .add_partition_offset(topic, 0, Offset::Offset(40))
        .expect("add partition");
    let result = block_on(admin.delete_records(&before, &admin_options())).expect("DeleteRecords");
    let element = result.find_partition(topic, 0).expect("the partition");
    assert_eq!(element.error(), Ok(()));
    assert_eq!(element.offset(), Offset::Offset(40), "the new log start");
    assert_eq!(watermarks(&broker, topic, 0), (40, 100));

    // A consumer asking for an offset below the start is reset to it.
    let consumer = consumer(&broker, &[("auto.offset.reset", "earliest")]);
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Offset(5))
        .expect("add partition");
    consumer.assign(&assignment).expect("assign");
    let ends = BTreeMap::from([(0, (40, 100))]);
    let consumed = read_until(&consumer, topic, &ends);
    assert_eq!(consumed.len(), 60);
    assert_eq!(consumed[0].value.as_deref(), Some(&b"v40"[..]));
}

/// Reads partition 0 of `topic` from its start up to its high watermark,
/// allowing the gaps compaction leaves, at `isolation.level`; returns
/// (key, value) in order. The last record must be a data record.
fn read_compacted(
    broker: &Broker,
    topic: &str,
    isolation: &str,
) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let (_, high) = watermarks(broker, topic, 0);
    let consumer = consumer(broker, &[("isolation.level", isolation)]);
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .expect("add partition");
    consumer.assign(&assignment).expect("assign");
    let mut read = Vec::new();
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut next = 0;
    while next < high {
        assert!(
            Instant::now() < deadline,
            "read {topic} up to {high}: stuck at {next}"
        );
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.unwrap_or_else(|error| panic!("consume {topic}: {error}"));
        assert!(message.offset() >= next, "offsets go forward");
        next = message.offset() + 1;
        read.push((
            message.key().unwrap_or_default().to_vec(),
            message.payload().map(<[u8]>::to_vec),
        ));
    }
    read
}

/// A compacted topic whose segments roll at 200 bytes or 100 ms and are
/// cleaned as soon as the cleaner (waking every 100 ms) sees them.
const QUICKLY_COMPACTED: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("min.cleanable.dirty.ratio", "0.01"),
    ("max.compaction.lag.ms", "100"),
    ("segment.bytes", "200"),
    ("segment.ms", "100"),
];

/// The log cleaner is its own loop, waking every `log.cleaner.backoff.ms`
/// rather than on retention's 300 s timer: on a compacted topic with a tiny
/// `min.cleanable.dirty.ratio` and `max.compaction.lag.ms`, overwritten
/// values are gone within seconds, and only the latest value per key is
/// left.
#[test]
fn the_log_cleaner_removes_overwritten_values_within_seconds() {
    let broker = Broker::start_new_with_args(&["--log-cleaner-backoff-ms", "100"]);
    let topic = "compacted";
    create_topic_with(&broker, topic, 1, QUICKLY_COMPACTED);
    let producer = producer(&broker, &[("linger.ms", "0")]);
    let keys = 5;
    let rounds = 4;
    for round in 0..rounds {
        // One flush per round: each round is its own batch, so segments
        // roll between rounds.
        let records: Vec<Record> = (0..keys)
            .map(|k| Record {
                key: Some(format!("k{k}").into_bytes()),
                ..Record::value(format!("v{round}"))
            })
            .collect();
        expect_delivered(produce_all(&producer, topic, Some(0), &records));
    }
    // One more batch rolls the last round out of the active segment, which
    // the cleaner never reads (as in Kafka).
    let last = Record {
        key: Some(b"last".to_vec()),
        ..Record::value("x")
    };
    expect_delivered(produce_all(&producer, topic, Some(0), &[last]));
    let mut latest: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..keys)
        .map(|k| {
            (
                format!("k{k}").into_bytes(),
                Some(format!("v{}", rounds - 1).into_bytes()),
            )
        })
        .collect();
    latest.push((b"last".to_vec(), Some(b"x".to_vec())));
    let started = Instant::now();
    let compacted = poll_until(Duration::from_secs(20), || {
        let read = read_compacted(&broker, topic, "read_committed");
        (read == latest).then_some(read)
    })
    .unwrap_or_else(|| {
        panic!(
            "overwritten values were still readable after 20 s: {:?}",
            read_compacted(&broker, topic, "read_committed")
        )
    });
    assert_eq!(compacted, latest);
    eprintln!("compacted in {:?}", started.elapsed());
    let (_, metrics) = broker.http_get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("rill_log_cleaner_runs_total{result=\"ok\"}")),
        "{metrics}"
    );
}

/// The log cleaner understands transactions, as Kafka's: records of
/// aborted transactions are removed (a read_uncommitted consumer no longer
/// sees them), records of committed ones are deduplicated like any others,
/// and markers left with nothing go later, with their aborted-transaction
/// entries: read_committed consumers read the same throughout.
#[test]
fn the_log_cleaner_removes_aborted_and_superseded_transactional_records() {
    let broker = Broker::start_new_with_args(&["--log-cleaner-backoff-ms", "100"]);
    let topic = "compacted-txn";
    // Markers whose transactions are left empty go 100 ms after that.
    let configs = [QUICKLY_COMPACTED, &[("delete.retention.ms", "100")]].concat();
    create_topic_with(&broker, topic, 1, &configs);
    let producer = producer(
        &broker,
        &[
            ("linger.ms", "0"),
            ("enable.idempotence", "true"),
            ("transactional.id", "compaction-e2e"),
        ],
    );
    producer
        .init_transactions(CLIENT_TIMEOUT)
        .expect("init transactions");
    let keys = 5;
    let rounds = [
        ("committed-0", true),
        ("aborted-1", false),
        ("committed-2", true),
        ("aborted-3", false),
    ];
    for (value, commit) in rounds {
        producer.begin_transaction().expect("begin a transaction");
        let records: Vec<Record> = (0..keys)
            .map(|k| Record {
                key: Some(format!("k{k}").into_bytes()),
                ..Record::value(value)
            })
            .collect();
        expect_delivered(produce_all(&producer, topic, Some(0), &records));
        if commit {
            producer.commit_transaction(CLIENT_TIMEOUT).expect("commit");
        } else {
            producer.abort_transaction(CLIENT_TIMEOUT).expect("abort");
        }
    }
    // A plain record after the last marker rolls it out of the active
    // segment, and ends the reads.
    let plain = self::producer(&broker, &[("linger.ms", "0")]);
    let last = Record {
        key: Some(b"last".to_vec()),
        ..Record::value("x")
    };
    expect_delivered(produce_all(&plain, topic, Some(0), &[last]));
    let mut latest: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..keys)
        .map(|k| (format!("k{k}").into_bytes(), Some(b"committed-2".to_vec())))
        .collect();
    latest.push((b"last".to_vec(), Some(b"x".to_vec())));
    poll_until(Duration::from_secs(20), || {
        (read_compacted(&broker, topic, "read_uncommitted") == latest).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "aborted or superseded records were still readable after 20 s: {:?}",
            read_compacted(&broker, topic, "read_uncommitted")
        )
    });
    assert_eq!(read_compacted(&broker, topic, "read_committed"), latest);
    // The aborted transactions' markers and their index entries go next
    // (the last one stays, after producer's last batch): read_committed
    // still reads the same.
    let partition_dir = broker.data_dir().join(format!("{topic}-0"));
    let txn_indexes = || {
        std::fs::read_dir(&partition_dir)
            .expect("the partition's directory")
            .filter(|e| {
                e.as_ref()
                    .expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".txnindex")
            })
            .count()
    };
    poll_until(Duration::from_secs(20), || {
        (txn_indexes() <= 1).then_some(())
    })
    .unwrap_or_else(|| panic!("{} transaction indexes left after 20 s", txn_indexes()));
    assert_eq!(read_compacted(&broker, topic, "read_uncommitted"), latest);
    assert_eq!(read_compacted(&broker, topic, "read_committed"), latest);
}

#[test]
fn alter_and_describe_topic_config() {
    let broker = Broker::start_new();
    let topic = "configured";
    create_topic_with(
        &broker,
        topic,
        1,
        &[("retention.ms", "3600000"), ("max.message.bytes", "500000")],
    );
    let admin = admin(&broker);
    let resource = ResourceSpecifier::Topic(topic);
    // name → (value, whether it is set on the topic rather than a default).
    let describe = || -> BTreeMap<String, (Option<String>, bool)> {
        let results = block_on(admin.describe_configs([&resource], &admin_options()))
            .expect("DescribeConfigs");
        assert_eq!(results.len(), 1);
        let config = results[0].as_ref().expect("the topic's configs");
        config
            .entries
            .iter()
            .map(|entry| {
                let on_topic = matches!(entry.source, ConfigSource::DynamicTopic);
                (entry.name.clone(), (entry.value.clone(), on_topic))
            })
            .collect()
    };
    let alter = |settings: &[(&str, &str)]| {
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
        for (key, value) in settings {
            alter = alter.set(key, value);
        }
        let results =
            block_on(admin.alter_configs([&alter], &admin_options())).expect("AlterConfigs");
        assert_eq!(results.len(), 1);
        if let Err((_, code)) = &results[0] {
            panic!("AlterConfigs {settings:?}: {code:?}");
        }
    };
    let value = |configs: &BTreeMap<String, (Option<String>, bool)>, name: &str| {
        configs
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not described"))
            .clone()
    };

    // What CreateTopics set, and the defaults of everything else.
    let configs = describe();
    assert_eq!(
        value(&configs, "retention.ms"),
        (Some("3600000".into()), true)
    );
    assert_eq!(
        value(&configs, "max.message.bytes"),
        (Some("500000".into()), true)
    );
    let (_, on_topic) = value(&configs, "segment.bytes");
    assert!(!on_topic, "segment.bytes was never set");

    alter(&[("retention.ms", "7200000"), ("cleanup.policy", "compact")]);
    let configs = describe();
    assert_eq!(
        value(&configs, "retention.ms"),
        (Some("7200000".into()), true)
    );
    assert_eq!(
        value(&configs, "cleanup.policy"),
        (Some("compact".into()), true)
    );
    // AlterConfigs (not the incremental one) replaces the whole set: what
    // it leaves out goes back to its default.
    let (max_message_bytes, on_topic) = value(&configs, "max.message.bytes");
    assert_ne!(max_message_bytes.as_deref(), Some("500000"));
    assert!(
        !on_topic,
        "max.message.bytes was left out, so it is no longer set"
    );

    // A bad value is refused and changes nothing. (rdkafka 0.39 reports
    // every AlterConfigs resource as a success, whatever its error code, so
    // the refusal shows only in what is described afterwards.)
    alter(&[("retention.ms", "soon")]);
    assert_eq!(describe(), configs);
}

#[test]
fn create_partitions_adds_usable_partitions() {
    let broker = Broker::start_new();
    let topic = "growing";
    create_topic(&broker, topic, 2);
    let admin = admin(&broker);
    let grow = NewPartitions::new(topic, 5);
    let results =
        block_on(admin.create_partitions([&grow], &admin_options())).expect("CreatePartitions");
    assert_eq!(results, vec![Ok(topic.to_string())]);
    assert_eq!(topics(&broker).get(topic), Some(&5));

    let producer = producer(&broker, &[("acks", "all")]);
    let records = vec![Record::value("in the new partition")];
    let delivered = expect_delivered(produce_all(&producer, topic, Some(4), &records));
    assert_eq!(delivered[&0], (4, 0));
    let consumed = read_all(&broker, topic, 5);
    assert_eq!(consumed.len(), 1);
    assert_eq!(consumed[0].partition, 4);

    // Shrinking is refused.
    let shrink = NewPartitions::new(topic, 3);
    let results =
        block_on(admin.create_partitions([&shrink], &admin_options())).expect("CreatePartitions");
    assert!(
        matches!(&results[0], Err((_, RDKafkaErrorCode::InvalidPartitions))),
        "{results:?}"
    );
}

// ---------------------------------------------------------------------------
// Start-up errors
// ---------------------------------------------------------------------------

/// How long a `rill serve` that should fail at start-up may take to do so.
const FAIL_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks that a start-up failure exited with 2 and said so in one `rill:`
/// line, the last on stderr, containing every one of `mentions`.
fn assert_start_up_error(finished: &common::Finished, mentions: &[&str]) {
    assert_eq!(
        finished.status.code(),
        Some(2),
        "exit status; stderr:\n{}",
        finished.stderr
    );
    let lines: Vec<&str> = finished.stderr.lines().collect();
    let errors: Vec<&&str> = lines.iter().filter(|l| l.starts_with("rill: ")).collect();
    assert_eq!(
        errors.len(),
        1,
        "one `rill: ` line on stderr, got:\n{}",
        finished.stderr
    );
    assert_eq!(
        lines.last().copied(),
        Some(*errors[0]),
        "the error is the last line"
    );
    for mention in mentions {
        assert!(
            errors[0].contains(mention),
            "{:?} does not mention {mention:?}",
            errors[0]
        );
    }
    assert!(
        !finished.stdout.contains("rill ready"),
        "said ready: {}",
        finished.stdout
    );
}

#[test]
fn start_up_fails_with_exit_2_when_an_address_is_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    for which in ["kafka", "controller", "http"] {
        let ports = Ports::pick();
        let taken = match which {
            "kafka" => ports.kafka,
            "controller" => ports.controller,
            _ => ports.http,
        };
        let _holder = std::net::TcpListener::bind(taken).expect("hold the port");
        let finished = run_to_exit(serve_command(dir.path(), &ports), FAIL_TIMEOUT);
        assert_start_up_error(&finished, &[&taken.to_string()]);
    }
}

#[test]
fn start_up_fails_with_exit_2_when_the_data_dir_is_unwritable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write a file");
    let data_dir = file.join("data");
    let finished = run_to_exit(serve_command(&data_dir, &Ports::pick()), FAIL_TIMEOUT);
    assert_start_up_error(&finished, &[&data_dir.display().to_string()]);
}

#[test]
fn start_up_errors_say_each_cause_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = Ports::pick();
    let _holder = std::net::TcpListener::bind(ports.kafka).expect("hold the port");
    let in_use = run_to_exit(serve_command(dir.path(), &ports), FAIL_TIMEOUT);
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write a file");
    let not_a_dir = run_to_exit(
        serve_command(&file.join("data"), &Ports::pick()),
        FAIL_TIMEOUT,
    );
    for finished in [in_use, not_a_dir] {
        let line = finished
            .stderr
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        // "…: Address already in use (os error 98): Address already in use
        // (os error 98)" is the error's Display and then its source again.
        let parts: Vec<&str> = line.split(": ").collect();
        let repeated = parts.windows(2).find(|pair| pair[0] == pair[1]);
        assert_eq!(repeated, None, "the cause is said twice in {line:?}");
    }
}

#[test]
fn start_up_fails_with_exit_2_on_an_out_of_range_flag_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut zero_partitions = serve_command(dir.path(), &Ports::pick());
    zero_partitions.args(["--num-partitions", "0"]);
    let finished = run_to_exit(zero_partitions, FAIL_TIMEOUT);
    assert_start_up_error(&finished, &["num-partitions"]);
}

#[test]
fn start_up_fails_with_exit_2_on_an_unparsable_flag_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Not serve_command, which sets --kafka-addr already.
    let mut bad_address = Command::new(common::rill_binary());
    bad_address
        .args(["serve", "--kafka-addr", "not-an-address", "--data-dir"])
        .arg(dir.path())
        .env_remove("RUST_LOG");
    let finished = run_to_exit(bad_address, FAIL_TIMEOUT);
    assert_start_up_error(&finished, &["not-an-address"]);
}

// ---------------------------------------------------------------------------
// Bad input on the wire
// ---------------------------------------------------------------------------

/// How long the broker may take to close a connection that broke the protocol.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A request header v1 (api key, version, correlation id, client id) and
/// `body`, with its length prefix.
fn raw_request(api_key: i16, api_version: i16, correlation_id: i32, body: &[u8]) -> Vec<u8> {
    let client_id = b"raw";
    let mut frame = Vec::new();
    frame.extend_from_slice(&api_key.to_be_bytes());
    frame.extend_from_slice(&api_version.to_be_bytes());
    frame.extend_from_slice(&correlation_id.to_be_bytes());
    frame.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    frame.extend_from_slice(client_id);
    frame.extend_from_slice(body);
    let mut out = (frame.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&frame);
    out
}

fn connect(broker: &Broker) -> TcpStream {
    let stream = TcpStream::connect(broker.ports().kafka).expect("connect");
    stream
        .set_read_timeout(Some(CLOSE_TIMEOUT))
        .expect("set read timeout");
    stream
}

/// Sends `bytes` (then, if `then_eof`, shuts down the sending side) and
/// checks that the broker closes the connection without answering.
fn assert_closes(broker: &Broker, what: &str, bytes: &[u8], then_eof: bool) {
    let mut stream = connect(broker);
    // The broker may close before it has read everything; a failed write
    // is then fine.
    let _ = stream.write_all(bytes);
    if then_eof {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut answer = Vec::new();
    let started = Instant::now();
    match stream.read_to_end(&mut answer) {
        Ok(_) => assert!(
            answer.is_empty(),
            "{what}: the broker answered {} bytes instead of closing",
            answer.len()
        ),
        Err(error) if error.kind() == ErrorKind::ConnectionReset => {}
        Err(error) => panic!(
            "{what}: the connection was not closed within {CLOSE_TIMEOUT:?} ({error}, after \
             {:?})",
            started.elapsed()
        ),
    }
}

/// A produce-and-consume round trip by a well-behaved client.
fn round_trip(broker: &Broker, topic: &str, count: usize) {
    let producer = producer(broker, &[("acks", "all")]);
    let records: Vec<Record> = (0..count)
        .map(|i| Record::value(format!("ok {i}")))
        .collect();
    let delivered = expect_delivered(produce_all(&producer, topic, Some(0), &records));
    let consumed = read_all(broker, topic, 1);
    for (index, record) in records.iter().enumerate() {
        let (_, offset) = delivered[&index];
        assert_eq!(consumed[offset as usize].value, record.value);
    }
}

#[test]
fn bad_input_closes_only_that_connection() {
    let broker = Broker::start_new();
    create_topic(&broker, "survivor", 1);
    round_trip(&broker, "survivor", 10);

    assert_closes(
        &broker,
        "a 0x7fffffff length",
        &0x7fff_ffff_i32.to_be_bytes(),
        false,
    );
    assert_closes(&broker, "a negative length", &(-1_i32).to_be_bytes(), false);
    assert_closes(&broker, "a negative length", &i32::MIN.to_be_bytes(), false);
    let truncated = &raw_request(18, 3, 1, &[0; 64])[..20];
    assert_closes(&broker, "a truncated frame then EOF", truncated, true);
    assert_closes(
        &broker,
        "HTTP instead of Kafka",
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        false,
    );
    let mut garbage = 16_i32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 16]);
    assert_closes(&broker, "a frame of 0xff bytes", &garbage, false);
    assert_closes(
        &broker,
        "unknown API key 9999",
        &raw_request(9999, 0, 2, &[]),
        false,
    );
    assert_closes(
        &broker,
        "Metadata v99",
        &raw_request(3, 99, 3, &[0; 8]),
        false,
    );
    assert_closes(
        &broker,
        "a header cut short",
        &[0, 0, 0, 3, 0, 18, 0],
        false,
    );

    // ApiVersions at a version the broker does not know is answered, at v0,
    // with UNSUPPORTED_VERSION (35), so the client can retry lower.
    // ApiVersions v3+ is a flexible version, so its header is v2: the
    // v1 fields and then tagged fields (none: 0). A client asking for v99
    // sends the same header, and a v3-shaped body (client software name and
    // version as compact strings, no tagged fields).
    let mut header_tags_and_body = vec![0];
    for text in ["raw", "1.0"] {
        header_tags_and_body.push(text.len() as u8 + 1);
        header_tags_and_body.extend_from_slice(text.as_bytes());
    }
    header_tags_and_body.push(0);
    let mut stream = connect(&broker);
    stream
        .write_all(&raw_request(18, 99, 77, &header_tags_and_body))
        .expect("send ApiVersions v99");
    let mut size = [0; 4];
    stream.read_exact(&mut size).expect("an answer's size");
    let size = i32::from_be_bytes(size);
    assert!((6..=4096).contains(&size), "answer size {size}");
    let mut answer = vec![0; size as usize];
    stream.read_exact(&mut answer).expect("the answer");
    assert_eq!(i32::from_be_bytes(answer[0..4].try_into().unwrap()), 77);
    assert_eq!(i16::from_be_bytes(answer[4..6].try_into().unwrap()), 35);
    drop(stream);

    // The broker still serves a well-behaved client, old connections and new.
    round_trip(&broker, "survivor", 10);
    assert_eq!(watermarks(&broker, "survivor", 0), (0, 20));
}
