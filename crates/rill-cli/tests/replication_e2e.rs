//! Replication end to end (DESIGN.md §7): real `rill serve` processes,
//! librdkafka clients and raw requests, and afterwards each replica's log
//! read straight from its data dir. What is checked is what a user counts
//! on: an acknowledged record is on every replica at its acknowledged
//! offset, once; a consumer never reads a record that later vanishes; a
//! follower that falls behind leaves the ISR and `min.insync.replicas`
//! then refuses acks=all; a deposed leader's unreplicated records are cut
//! off when it returns; a group's offsets outlive its coordinator.
//!
//! The tests take a lock each: several clusters at once on two cores would
//! make election and session timing a matter of luck.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Role};
use common::poll_until;
use common::raw::RawClient;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    CreateTopicsRequest, MetadataRequest, MetadataResponse, ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use rill_storage::batch::BatchHeader;
use rill_storage::records::BatchBuilder;
use rill_storage::{LogManager, LogManagerConfig};
use rill_types::{SystemClock, TopicPartition};

/// Heartbeats every 500 ms, fenced after 3 s.
const FAST: &[&str] = &[
    "--broker-heartbeat-interval-ms",
    "500",
    "--broker-session-timeout-ms",
    "3000",
];
/// Heartbeats every 500 ms and a session of a minute: pausing a broker
/// does not fence it, so what the test sees is the ISR's doing.
const LONG_SESSION: &[&str] = &[
    "--broker-heartbeat-interval-ms",
    "500",
    "--broker-session-timeout-ms",
    "60000",
];
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(30);
const NOT_ENOUGH_REPLICAS: i16 = 19;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn metadata(cluster: &Cluster, id: i32) -> Option<MetadataResponse> {
    let mut client = RawClient::connect(cluster.node(id).kafka_addr(), CLIENT_TIMEOUT).ok()?;
    client
        .try_send(
            12,
            MetadataRequest::default()
                .with_topics(None)
                .with_allow_auto_topic_creation(false),
        )
        .ok()
}

/// Partition `index` of `topic` in a Metadata answer: (leader, ISR).
fn partition(metadata: &MetadataResponse, topic: &str, index: i32) -> Option<(i32, Vec<i32>)> {
    let topic = metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref().map(|n| n.as_str()) == Some(topic))?;
    let p = topic
        .partitions
        .iter()
        .find(|p| p.partition_index == index)?;
    let mut isr: Vec<i32> = p.isr_nodes.iter().map(|b| b.0).collect();
    isr.sort_unstable();
    Some((p.leader_id.0, isr))
}

/// Polls node `from` until partition 0 of `topic` satisfies `check`.
fn wait_partition(
    cluster: &Cluster,
    from: i32,
    topic: &str,
    what: &str,
    check: impl Fn(i32, &[i32]) -> bool,
) -> (i32, Vec<i32>) {
    poll_until(WAIT, || {
        let m = metadata(cluster, from)?;
        let (leader, isr) = partition(&m, topic, 0)?;
        check(leader, &isr).then_some((leader, isr))
    })
    .unwrap_or_else(|| {
        panic!(
            "{topic}-0 from node {from}: {what} not seen within {WAIT:?}; last: {:?}",
            metadata(cluster, from).and_then(|m| partition(&m, topic, 0))
        )
    })
}

fn create_topic(cluster: &Cluster, id: i32, name: &str, min_insync_replicas: i32) {
    let mut client = RawClient::connect(cluster.node(id).kafka_addr(), CLIENT_TIMEOUT).unwrap();
    let response = client.send(
        7,
        CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(name.to_string())))
                .with_num_partitions(1)
                .with_replication_factor(3)
                .with_configs(vec![CreatableTopicConfig::default()
                    .with_name(StrBytes::from_static_str("min.insync.replicas"))
                    .with_value(Some(StrBytes::from_string(
                        min_insync_replicas.to_string(),
                    )))])])
            .with_timeout_ms(10_000),
    );
    assert_eq!(response.topics[0].error_code, 0, "{response:?}");
}

/// Every delivery report of a producer: the value and its offset, or the
/// error it failed with.
#[derive(Clone, Default)]
struct Deliveries(Arc<Mutex<Vec<Report>>>);

/// A delivery report: the value, and its offset or the error.
type Report = (String, Result<i64, String>);

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let value = |payload: Option<&[u8]>| {
            String::from_utf8_lossy(payload.unwrap_or_default()).into_owned()
        };
        let entry = match result {
            Ok(message) => (value(message.payload()), Ok(message.offset())),
            Err((error, message)) => (value(message.payload()), Err(error.to_string())),
        };
        self.0.lock().unwrap().push(entry);
    }
}

fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> BaseProducer<Deliveries> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("reconnect.backoff.ms", "20")
        .set("reconnect.backoff.max.ms", "500")
        .set("topic.metadata.refresh.interval.ms", "500");
    for (key, value) in extra {
        config.set(*key, *value);
    }
    config
        .create_with_context(Deliveries::default())
        .expect("create a producer")
}

/// Sends `values` to partition 0 of `topic`, waits for every report, and
/// returns them.
fn produce(producer: &BaseProducer<Deliveries>, topic: &str, values: &[&str]) -> Vec<Report> {
    let context = producer.context().clone();
    let before = context.0.lock().unwrap().len();
    for value in values {
        producer
            .send(BaseRecord::<(), _>::to(topic).partition(0).payload(*value))
            .map_err(|(e, _)| e)
            .expect("queue a record");
    }
    let _ = producer.flush(Duration::from_secs(60));
    let reports = context.0.lock().unwrap()[before..].to_vec();
    assert_eq!(reports.len(), values.len(), "a report for every record");
    reports
}

/// One record sent with acks=all to partition 0 of `topic` on node `id`
/// at Produce `version`, over a raw connection: the answer as it came.
fn produce_raw(
    cluster: &Cluster,
    id: i32,
    version: i16,
    topic: &str,
    value: &[u8],
) -> kafka_protocol::messages::ProduceResponse {
    let mut raw = RawClient::connect(cluster.node(id).kafka_addr(), CLIENT_TIMEOUT).unwrap();
    let mut builder = BatchBuilder::new();
    builder.push(None, Some(value), 0);
    raw.send(
        version,
        ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(builder.build().into()))])]),
    )
}

fn assert_delivered(reports: &[Report]) {
    for (value, result) in reports {
        assert!(result.is_ok(), "{value}: {result:?}");
    }
}

/// The records of `topic`-0 in a stopped node's data dir: (offset, value),
/// control batches left out.
fn replica_log(data_dir: &Path, topic: &str) -> Vec<(i64, String)> {
    let logs = LogManager::open(data_dir, LogManagerConfig::default(), Arc::new(SystemClock))
        .expect("open the data dir");
    let tp = TopicPartition::new(rill_types::TopicName::new(topic).unwrap(), 0);
    let log = logs.get(&tp).expect("the replica's log");
    let mut records = Vec::new();
    let mut next = log.log_start_offset();
    let end = log.log_end_offset();
    let mut buf = Vec::new();
    while next < end {
        buf.clear();
        let info = log.read_into(next, 1 << 20, end, &mut buf).expect("read");
        let mut at = 0;
        while at < buf.len() {
            let header = BatchHeader::parse(&buf[at..]).expect("a batch header");
            let batch = &buf[at..at + header.size()];
            if !header.is_control() {
                for record in rill_storage::records::decode_records(batch).expect("records") {
                    let value = String::from_utf8(record.value.unwrap_or_default()).unwrap();
                    records.push((header.base_offset + i64::from(record.offset_delta), value));
                }
            }
            at += header.size();
        }
        assert!(info.next_offset > next, "reading makes progress");
        next = info.next_offset;
    }
    records
}

/// SIGTERMs every node still running and reads each broker's replica of
/// `topic`-0.
fn stop_and_read(
    cluster: &mut Cluster,
    brokers: &[i32],
    topic: &str,
) -> BTreeMap<i32, Vec<(i64, String)>> {
    let ids: Vec<i32> = cluster.nodes().iter().map(|n| n.id).collect();
    for id in ids {
        if cluster.node(id).is_running() {
            let status = cluster.terminate(id, Duration::from_secs(30));
            assert!(status.success(), "node {id} exited with {status}");
        }
    }
    brokers
        .iter()
        .map(|id| (*id, replica_log(cluster.node(*id).data_dir(), topic)))
        .collect()
}

/// Reads partition 0 of `topic` from the start with librdkafka (with
/// `client.rack` when given) until `count` values or [`WAIT`].
fn read_values(cluster: &Cluster, topic: &str, rack: Option<&str>, count: usize) -> Vec<String> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false");
    if let Some(rack) = rack {
        config.set("client.rack", rack);
    }
    let consumer: BaseConsumer = config.create().unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut read = Vec::new();
    let deadline = Instant::now() + WAIT;
    while read.len() < count && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            read.push(String::from_utf8_lossy(message.payload().unwrap()).into_owned());
        }
    }
    read
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// RF 3, min.insync.replicas 2: an idempotent acks=all producer writes
/// while the partition's leader is SIGKILLed three times (and restarted,
/// and let back into the ISR). Every acknowledged record is afterwards at
/// its acknowledged offset on every replica, once; the replicas agree; a
/// consumer that read during the failovers read nothing that vanished.
#[test]
fn acknowledged_records_survive_leader_kills() {
    let _serial = serial();
    let mut cluster = Cluster::combined(3, FAST);
    create_topic(&cluster, 1, "acked", 2);
    wait_partition(&cluster, 1, "acked", "three in sync", |l, isr| {
        l > 0 && isr.len() == 3
    });

    let stop = Arc::new(AtomicBool::new(false));
    let bootstrap = cluster.bootstrap();
    let writer = {
        let stop = Arc::clone(&stop);
        let bootstrap = bootstrap.clone();
        thread::spawn(move || {
            let producer = producer(
                &bootstrap,
                &[
                    ("enable.idempotence", "true"),
                    ("message.timeout.ms", "90000"),
                ],
            );
            let mut sent = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let value = format!("v{sent}");
                if producer
                    .send(
                        BaseRecord::<(), _>::to("acked")
                            .partition(0)
                            .payload(&value),
                    )
                    .is_ok()
                {
                    sent += 1;
                }
                producer.poll(Duration::from_millis(5));
            }
            let _ = producer.flush(Duration::from_secs(120));
            let reports = producer.context().0.lock().unwrap().clone();
            (sent, reports)
        })
    };
    let reader = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "replication-e2e-reader")
                .set("enable.auto.commit", "false")
                .set("topic.metadata.refresh.interval.ms", "500")
                .create()
                .expect("create a consumer");
            let mut assignment = TopicPartitionList::new();
            assignment
                .add_partition_offset("acked", 0, Offset::Beginning)
                .unwrap();
            consumer.assign(&assignment).unwrap();
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                    let value = String::from_utf8_lossy(message.payload().unwrap_or_default());
                    seen.push((message.offset(), value.into_owned()));
                }
            }
            seen
        })
    };

    for round in 0..3 {
        thread::sleep(Duration::from_millis(1500));
        let (leader, _) =
            wait_partition(&cluster, 1 + round % 3, "acked", "a leader", |l, _| l > 0);
        let survivor = (1..=3).find(|id| *id != leader).unwrap();
        let killed = Instant::now();
        cluster.kill(leader);
        let (next, isr) = wait_partition(&cluster, survivor, "acked", "a new leader", |l, _| {
            l > 0 && l != leader
        });
        eprintln!(
            "round {round}: leader {leader} killed, {next} leads after {:?} (ISR {isr:?})",
            killed.elapsed()
        );
        cluster.restart(leader);
        wait_partition(
            &cluster,
            survivor,
            "acked",
            "the old leader back in sync",
            |_, isr| isr.len() == 3,
        );
    }
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let (sent, reports) = writer.join().expect("writer");
    let seen = reader.join().expect("reader");
    let failed: Vec<_> = reports.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {sent} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    let acked: Vec<(String, i64)> = reports
        .into_iter()
        .map(|(v, r)| (v, r.expect("delivered")))
        .collect();
    assert_eq!(acked.len() as u64, sent, "a report for every record");
    assert!(
        acked.len() > 100,
        "only {} records acknowledged",
        acked.len()
    );

    // Let the last one back catch up entirely, then read every replica.
    wait_partition(&cluster, 1, "acked", "three in sync", |_, isr| {
        isr.len() == 3
    });
    thread::sleep(Duration::from_secs(2));
    let replicas = stop_and_read(&mut cluster, &[1, 2, 3], "acked");
    for (id, log) in &replicas {
        let at: HashMap<i64, &str> = log.iter().map(|(o, v)| (*o, v.as_str())).collect();
        let mut values = HashSet::new();
        for (_, value) in log {
            assert!(values.insert(value.as_str()), "node {id}: {value} twice");
        }
        for (value, offset) in &acked {
            assert_eq!(
                at.get(offset).copied(),
                Some(value.as_str()),
                "node {id}: acknowledged {value} at {offset}"
            );
        }
        for (offset, value) in &seen {
            assert_eq!(
                at.get(offset).copied(),
                Some(value.as_str()),
                "node {id}: the consumer read {value} at {offset}, gone since"
            );
        }
    }
    assert_eq!(replicas[&1], replicas[&2], "replicas 1 and 2 differ");
    assert_eq!(replicas[&1], replicas[&3], "replicas 1 and 3 differ");
    eprintln!(
        "{} acknowledged, {} read during failovers, {} on each replica",
        acked.len(),
        seen.len(),
        replicas[&1].len()
    );
}

/// A follower stopped (SIGSTOP) past `replica.lag.time.max.ms` leaves the
/// ISR and acks=all goes on with two; with a second one stopped the ISR is
/// the leader alone, below min.insync.replicas 2: acks=all is refused with
/// NOT_ENOUGH_REPLICAS and nothing is appended; resumed, both catch up and
/// rejoin. The controller is a node of its own, so stopping brokers never
/// costs the quorum.
#[test]
fn lagging_followers_leave_the_isr_and_min_insync_replicas_holds() {
    let _serial = serial();
    let mut args = LONG_SESSION.to_vec();
    args.extend(["--replica-lag-time-max-ms", "2000"]);
    let mut cluster = Cluster::start(
        &[
            (1, Role::Controller),
            (2, Role::Broker),
            (3, Role::Broker),
            (4, Role::Broker),
        ],
        &args,
    );
    create_topic(&cluster, 2, "lag", 2);
    let (leader, _) = wait_partition(&cluster, 2, "lag", "three in sync", |l, isr| {
        l > 0 && isr.len() == 3
    });
    let followers: Vec<i32> = (2..=4).filter(|id| *id != leader).collect();
    let bootstrap = cluster.node(leader).kafka_addr().to_string();
    let writer = producer(&bootstrap, &[("message.timeout.ms", "30000")]);
    assert_delivered(&produce(&writer, "lag", &["a0", "a1"]));

    cluster.pause(followers[0]);
    let paused = Instant::now();
    wait_partition(
        &cluster,
        leader,
        "lag",
        "the stopped follower out",
        |_, isr| isr.len() == 2 && !isr.contains(&followers[0]),
    );
    eprintln!(
        "follower {} out of the ISR after {:?}",
        followers[0],
        paused.elapsed()
    );
    assert_delivered(&produce(&writer, "lag", &["b0", "b1"]));

    cluster.pause(followers[1]);
    wait_partition(
        &cluster,
        leader,
        "lag",
        "the ISR down to the leader",
        |_, isr| isr == [leader],
    );
    let response = produce_raw(&cluster, leader, 9, "lag", b"refused");
    let answer = &response.responses[0].partition_responses[0];
    assert_eq!(answer.error_code, NOT_ENOUGH_REPLICAS, "{answer:?}");

    cluster.resume(followers[0]);
    cluster.resume(followers[1]);
    let resumed = Instant::now();
    wait_partition(&cluster, leader, "lag", "both back in sync", |_, isr| {
        isr.len() == 3
    });
    eprintln!(
        "both followers back in the ISR after {:?}",
        resumed.elapsed()
    );
    assert_delivered(&produce(&writer, "lag", &["c0"]));
    drop(writer);

    let replicas = stop_and_read(&mut cluster, &[2, 3, 4], "lag");
    let expected: Vec<(i64, String)> = ["a0", "a1", "b0", "b1", "c0"]
        .iter()
        .enumerate()
        .map(|(o, v)| (o as i64, v.to_string()))
        .collect();
    for (id, log) in replicas {
        assert_eq!(log, expected, "node {id}");
    }
}

/// Divergence: a leader appends acks=1 records its (stopped) followers
/// never fetch, and is then shut down; a follower takes over and writes
/// other records at the same offsets. When the old leader returns it cuts
/// its unreplicated records (OffsetForLeaderEpoch) and follows: every
/// replica ends up with the same records, and none of the cut ones.
#[test]
fn a_returning_leader_truncates_what_its_followers_never_had() {
    let _serial = serial();
    let mut cluster = Cluster::start(
        &[
            (1, Role::Controller),
            (2, Role::Broker),
            (3, Role::Broker),
            (4, Role::Broker),
        ],
        LONG_SESSION,
    );
    create_topic(&cluster, 2, "div", 1);
    let (old, _) = wait_partition(&cluster, 2, "div", "three in sync", |l, isr| {
        l > 0 && isr.len() == 3
    });
    let followers: Vec<i32> = (2..=4).filter(|id| *id != old).collect();
    let all = producer(&cluster.bootstrap(), &[("message.timeout.ms", "30000")]);
    assert_delivered(&produce(&all, "div", &["a0", "a1", "a2"]));
    // Every replica has them before the followers stop.
    wait_partition(&cluster, old, "div", "three in sync", |_, isr| {
        isr.len() == 3
    });
    thread::sleep(Duration::from_secs(1));

    for id in &followers {
        cluster.pause(*id);
    }
    // A fetch the leader holds answers within 500 ms, into the stopped
    // followers' socket buffers: let those go out empty first, so that no
    // fetch is waiting when the records arrive.
    thread::sleep(Duration::from_secs(1));
    let one = producer(
        &cluster.node(old).kafka_addr().to_string(),
        &[("acks", "1"), ("message.timeout.ms", "30000")],
    );
    let unreplicated = produce(&one, "div", &["x0", "x1"]);
    assert_eq!(
        unreplicated
            .iter()
            .map(|(_, r)| r.clone())
            .collect::<Vec<_>>(),
        vec![Ok(3), Ok(4)],
        "acks=1 answered by the leader alone"
    );
    drop(one);
    // A controlled shutdown hands the partition to a (stopped, but in
    // sync and unfenced) follower.
    let status = cluster.terminate(old, Duration::from_secs(30));
    assert!(status.success(), "node {old} exited with {status}");
    for id in &followers {
        cluster.resume(*id);
    }
    let (new, _) = wait_partition(&cluster, followers[0], "div", "a new leader", |l, _| {
        l > 0 && l != old
    });
    let after = producer(
        &cluster.node(new).kafka_addr().to_string(),
        &[("message.timeout.ms", "30000")],
    );
    let written = produce(&after, "div", &["b0", "b1", "b2"]);
    assert_eq!(
        written.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
        vec![Ok(3), Ok(4), Ok(5)],
        "the new leader writes where the cut records were"
    );

    cluster.restart(old);
    wait_partition(
        &cluster,
        new,
        "div",
        "the old leader back in sync",
        |_, isr| isr.len() == 3,
    );
    assert_delivered(&produce(&after, "div", &["c0"]));
    wait_partition(&cluster, new, "div", "three in sync", |_, isr| {
        isr.len() == 3
    });
    thread::sleep(Duration::from_secs(1));
    drop(after);
    drop(all);

    let replicas = stop_and_read(&mut cluster, &[2, 3, 4], "div");
    let expected: Vec<(i64, String)> = ["a0", "a1", "a2", "b0", "b1", "b2", "c0"]
        .iter()
        .enumerate()
        .map(|(o, v)| (o as i64, v.to_string()))
        .collect();
    for (id, log) in replicas {
        assert_eq!(log, expected, "node {id} (the old leader was {old})");
    }
}

/// A consumer group keeps its committed offsets when the broker of its
/// coordinator is SIGKILLed: `__consumer_offsets` is replicated, and the
/// new leader of its partition loads the group.
#[test]
fn committed_offsets_outlive_the_coordinator() {
    let _serial = serial();
    let mut cluster = Cluster::combined(3, FAST);
    create_topic(&cluster, 1, "work", 2);
    let writer = producer(&cluster.bootstrap(), &[]);
    assert_delivered(&produce(&writer, "work", &["w0", "w1", "w2", "w3"]));
    drop(writer);

    let consumer = |bootstrap: &str| -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "survivors")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("topic.metadata.refresh.interval.ms", "500")
            .create()
            .expect("create a consumer")
    };
    let first = consumer(&cluster.bootstrap());
    first.subscribe(&["work"]).unwrap();
    let mut read = 0;
    let deadline = Instant::now() + WAIT;
    while read < 3 && Instant::now() < deadline {
        if let Some(Ok(_)) = first.poll(Duration::from_millis(100)) {
            read += 1;
        }
    }
    assert_eq!(read, 3, "three records read");
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset("work", 0, Offset::Offset(3))
        .unwrap();
    first.commit(&offsets, CommitMode::Sync).expect("commit");
    drop(first);

    // The coordinator: the leader of the group's __consumer_offsets
    // partition, as FindCoordinator names it.
    let mut raw = RawClient::connect(cluster.node(1).kafka_addr(), CLIENT_TIMEOUT).unwrap();
    let found = raw.send(
        3,
        kafka_protocol::messages::FindCoordinatorRequest::default()
            .with_key(StrBytes::from_static_str("survivors")),
    );
    assert_eq!(found.error_code, 0, "{found:?}");
    let coordinator = found.node_id.0;
    cluster.kill(coordinator);
    let survivor = (1..=3).find(|id| *id != coordinator).unwrap();

    let bootstrap: String = (1..=3)
        .filter(|id| *id != coordinator)
        .map(|id| cluster.node(id).kafka_addr().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let second = consumer(&bootstrap);
    let mut asked = TopicPartitionList::new();
    asked.add_partition("work", 0);
    let committed = poll_until(WAIT, || {
        second
            .committed_offsets(asked.clone(), Duration::from_secs(5))
            .ok()
            .and_then(|list| list.find_partition("work", 0).map(|p| p.offset()))
            .filter(|offset| *offset == Offset::Offset(3))
    });
    assert_eq!(
        committed,
        Some(Offset::Offset(3)),
        "the committed offset after coordinator {coordinator} died (asked via node {survivor})"
    );
}

/// `rill_topic_bytes_out_total` of `topic` on node `id` (consumer and
/// follower fetches alike).
fn bytes_out(cluster: &Cluster, id: i32, topic: &str) -> u64 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(cluster.node(id).ports.http).unwrap();
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let prefix = format!("rill_topic_bytes_out_total{{topic=\"{topic}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

fn fetch(
    cluster: &Cluster,
    id: i32,
    version: i16,
    topic: &str,
    rack: &str,
) -> kafka_protocol::messages::fetch_response::PartitionData {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    let mut raw = RawClient::connect(cluster.node(id).kafka_addr(), CLIENT_TIMEOUT).unwrap();
    let response = raw.send(
        version,
        kafka_protocol::messages::FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(0)
            .with_max_bytes(1 << 20)
            .with_rack_id(StrBytes::from_string(rack.to_string()))
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)])]),
    );
    response.responses[0].partitions[0].clone()
}

/// Fetch from follower (KIP-392): brokers in racks; the leader sends a
/// consumer of another rack to the in-sync replica in its rack, which
/// serves the records up to its own high watermark; librdkafka with
/// `client.rack` reads the whole partition there.
#[test]
fn consumers_read_from_the_follower_in_their_rack() {
    let _serial = serial();
    let cluster = Cluster::combined_in_racks(3, FAST);
    create_topic(&cluster, 1, "near", 2);
    let (leader, _) = wait_partition(&cluster, 1, "near", "three in sync", |l, isr| {
        l > 0 && isr.len() == 3
    });
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let rack = format!("rack-{follower}");
    let writer = producer(&cluster.bootstrap(), &[]);
    let values: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    assert_delivered(&produce(&writer, "near", &refs));

    let sent_there = fetch(&cluster, leader, 11, "near", &rack);
    assert_eq!(sent_there.error_code, 0);
    assert_eq!(
        sent_there.preferred_read_replica.0, follower,
        "{sent_there:?}"
    );
    assert!(sent_there.records.as_ref().is_none_or(|r| r.is_empty()));
    let own_rack = fetch(&cluster, leader, 11, "near", &format!("rack-{leader}"));
    assert_eq!(own_rack.preferred_read_replica.0, -1);
    assert!(own_rack.records.is_some_and(|r| !r.is_empty()));

    // The follower serves v11+ consumers, once its high watermark has
    // caught up; older versions are the leader's alone.
    let served = poll_until(WAIT, || {
        let answer = fetch(&cluster, follower, 11, "near", "");
        (answer.error_code == 0 && answer.high_watermark == 20).then_some(answer)
    })
    .expect("the follower's high watermark reaches 20");
    assert!(served.records.is_some_and(|r| !r.is_empty()));
    assert_eq!(fetch(&cluster, follower, 10, "near", "").error_code, 6);

    // KIP-951: a produce (v10+) sent to the follower is refused with the
    // current leader and its endpoint, so the client need not ask for
    // metadata first.
    let leader_epoch = metadata(&cluster, follower)
        .and_then(|m| {
            m.topics
                .iter()
                .find(|t| t.name.as_ref().map(|n| n.as_str()) == Some("near"))
                .map(|t| t.partitions[0].leader_epoch)
        })
        .expect("metadata");
    let response = produce_raw(&cluster, follower, 11, "near", b"misdirected");
    let answer = &response.responses[0].partition_responses[0];
    assert_eq!(answer.error_code, 6, "{answer:?}"); // NOT_LEADER_OR_FOLLOWER
    assert_eq!(answer.current_leader.leader_id.0, leader, "{answer:?}");
    assert_eq!(answer.current_leader.leader_epoch, leader_epoch);
    let endpoints: Vec<(i32, i32)> = response
        .node_endpoints
        .iter()
        .map(|n| (n.node_id.0, n.port))
        .collect();
    let leader_port = i32::from(cluster.node(leader).kafka_addr().port());
    assert_eq!(endpoints, [(leader, leader_port)], "{response:?}");

    let before = bytes_out(&cluster, follower, "near");
    let read = read_values(&cluster, "near", Some(&rack), values.len());
    assert_eq!(read, values);
    assert!(
        bytes_out(&cluster, follower, "near") > before,
        "the rack's follower sent the records"
    );
}

/// Eligible leader replicas (KIP-966): RF 3, min.insync.replicas 2. The
/// followers die one after the other, so the second leaves an ISR below
/// the minimum and becomes eligible; then the leader dies too. The
/// eligible replica returns alone and leads at once, cleanly (it holds
/// every committed record: the high watermark cannot move under the
/// minimum), without waiting for the last ISR member and without an
/// unclean election; with the third back, every acknowledged record is
/// readable.
#[test]
fn an_eligible_replica_leads_when_the_isr_is_gone() {
    let _serial = serial();
    let mut cluster = Cluster::start(
        &[
            (1, Role::Controller),
            (2, Role::Broker),
            (3, Role::Broker),
            (4, Role::Broker),
        ],
        FAST,
    );
    create_topic(&cluster, 2, "elr", 2);
    let (leader, _) = wait_partition(&cluster, 2, "elr", "three in sync", |l, isr| {
        l > 0 && isr.len() == 3
    });
    let followers: Vec<i32> = (2..=4).filter(|id| *id != leader).collect();
    let (first, eligible) = (followers[0], followers[1]);
    let writer = producer(&cluster.bootstrap(), &[("message.timeout.ms", "30000")]);
    let values: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    assert_delivered(&produce(&writer, "elr", &refs));
    drop(writer);
    // The high watermark reaches the followers with their next fetch.
    thread::sleep(Duration::from_secs(1));

    cluster.kill(first);
    wait_partition(
        &cluster,
        leader,
        "elr",
        "the first follower out",
        |_, isr| isr.len() == 2,
    );
    cluster.kill(eligible);
    wait_partition(
        &cluster,
        leader,
        "elr",
        "the second follower out",
        |_, isr| isr == [leader],
    );
    cluster.kill(leader);

    cluster.restart(eligible);
    let (elected, isr) = wait_partition(&cluster, eligible, "elr", "a new leader", |l, _| {
        l > 0 && l != leader
    });
    assert_eq!(
        (elected, isr),
        (eligible, vec![eligible]),
        "the eligible replica leads"
    );

    cluster.restart(first);
    wait_partition(&cluster, eligible, "elr", "two in sync", |_, isr| {
        isr.len() >= 2
    });
    let read = read_values(&cluster, "elr", None, values.len());
    assert_eq!(read, values, "every acknowledged record");
}

fn rill_topic(cluster: &Cluster, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(common::rill_binary())
        .arg("topic")
        .args(args)
        .args(["--bootstrap", &cluster.bootstrap(), "--timeout", "60s"])
        .output()
        .expect("run rill topic");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A partition being reassigned: (partition, replicas, adding, removing).
type Moving = (i32, Vec<i32>, Vec<i32>, Vec<i32>);

/// The partitions being reassigned, through node `id`.
fn reassignments(cluster: &Cluster, id: i32) -> Vec<Moving> {
    use kafka_protocol::messages::ListPartitionReassignmentsRequest;
    let mut raw = RawClient::connect(cluster.node(id).kafka_addr(), CLIENT_TIMEOUT).unwrap();
    let response = raw.send(
        0,
        ListPartitionReassignmentsRequest::default().with_timeout_ms(10_000),
    );
    assert_eq!(response.error_code, 0);
    let ids = |v: &[kafka_protocol::messages::BrokerId]| v.iter().map(|b| b.0).collect::<Vec<_>>();
    response
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    p.partition_index,
                    ids(&p.replicas),
                    ids(&p.adding_replicas),
                    ids(&p.removing_replicas),
                )
            })
        })
        .collect()
}

/// Reassignment while an idempotent producer writes: RF 1 -> 3 with
/// `rill topic reassign --replicas`, then off the leader to two others
/// with the plan generator; ListPartitionReassignments shows a move in
/// progress (its new replica stopped) until it is cancelled. Every
/// acknowledged record is read back once, in order.
#[test]
fn reassignment_moves_a_partition_while_it_is_written() {
    let _serial = serial();
    let mut cluster = Cluster::combined(3, FAST);
    let mut raw = RawClient::connect(cluster.node(1).kafka_addr(), CLIENT_TIMEOUT).unwrap();
    let created = raw.send(
        7,
        CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("moving")))
                .with_num_partitions(1)
                .with_replication_factor(1)])
            .with_timeout_ms(10_000),
    );
    assert_eq!(created.topics[0].error_code, 0);
    let (first, _) = wait_partition(&cluster, 1, "moving", "a leader", |l, _| l > 0);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let bootstrap = cluster.bootstrap();
        thread::spawn(move || {
            let producer = producer(
                &bootstrap,
                &[
                    ("enable.idempotence", "true"),
                    ("message.timeout.ms", "60000"),
                ],
            );
            let mut sent = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let value = format!("m{sent}");
                if producer
                    .send(
                        BaseRecord::<(), _>::to("moving")
                            .partition(0)
                            .payload(&value),
                    )
                    .is_ok()
                {
                    sent += 1;
                }
                producer.poll(Duration::from_millis(5));
            }
            let _ = producer.flush(Duration::from_secs(60));
            let reports = producer.context().0.lock().unwrap().clone();
            reports
        })
    };
    thread::sleep(Duration::from_secs(1));

    // RF 1 -> 3: every broker gets a replica, all in sync at the end.
    let everyone = {
        let mut v = vec![first];
        v.extend((1..=3).filter(|id| *id != first));
        v
    };
    let list = everyone
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let (ok, text) = rill_topic(
        &cluster,
        &["reassign", "moving", "--replicas", &list, "--wait"],
    );
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("moving-0: {first} -> {list}")),
        "{text}"
    );
    wait_partition(&cluster, 1, "moving", "three in sync", |_, isr| {
        isr.len() == 3
    });
    assert!(reassignments(&cluster, 1).is_empty());

    // Off the first broker: the plan generator with RF 2 (partition 0
    // starts at the lowest broker id), so the leader moves if it is 1.
    let (ok, text) = rill_topic(
        &cluster,
        &[
            "reassign",
            "moving",
            "--spread",
            "--replication-factor",
            "2",
            "--wait",
        ],
    );
    assert!(ok, "{text}");
    let (leader, isr) = wait_partition(&cluster, 1, "moving", "two replicas in sync", |l, isr| {
        isr == [1, 2] && (l == 1 || l == 2)
    });
    eprintln!("after --spread: leader {leader}, ISR {isr:?}");

    // A move to a stopped broker stays in progress, and is cancelled.
    cluster.pause(3);
    let (ok, text) = rill_topic(&cluster, &["reassign", "moving", "--replicas", "1,2,3"]);
    assert!(ok, "{text}");
    let moving = reassignments(&cluster, 1);
    assert_eq!(moving, vec![(0, vec![1, 2, 3], vec![3], vec![])]);
    let (ok, text) = rill_topic(&cluster, &["reassign", "moving", "--cancel"]);
    assert!(ok, "{text}");
    assert!(reassignments(&cluster, 1).is_empty());
    let (ok, text) = rill_topic(&cluster, &["reassign", "moving", "--cancel"]);
    assert!(
        !ok && text.contains("NO_REASSIGNMENT_IN_PROGRESS")
            || text.contains("not being reassigned"),
        "{text}"
    );
    cluster.resume(3);

    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let reports = writer.join().expect("writer");
    let failed: Vec<_> = reports.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    let acked: Vec<String> = reports.into_iter().map(|(v, _)| v).collect();
    assert!(acked.len() > 50, "only {} acknowledged", acked.len());

    let read = read_values(&cluster, "moving", None, acked.len());
    assert_eq!(read, acked, "every acknowledged record, once, in order");
}

/// Automatic preferred-leader election (`auto.leader.rebalance.enable`):
/// a broker that was killed and has caught up again gets its preferred
/// leadership back by itself, within the check interval.
#[test]
fn a_returning_preferred_leader_gets_its_partition_back() {
    let _serial = serial();
    let mut args = FAST.to_vec();
    args.extend(["--leader-imbalance-check-interval-ms", "1000"]);
    let mut cluster = Cluster::combined(3, &args);
    create_topic(&cluster, 1, "balanced", 2);
    let (preferred, _) = wait_partition(&cluster, 1, "balanced", "three in sync", |l, isr| {
        l > 0 && isr.len() == 3
    });
    let survivor = (1..=3).find(|id| *id != preferred).unwrap();
    cluster.kill(preferred);
    wait_partition(&cluster, survivor, "balanced", "another leader", |l, _| {
        l > 0 && l != preferred
    });
    cluster.restart(preferred);
    let back = Instant::now();
    wait_partition(
        &cluster,
        survivor,
        "balanced",
        "the preferred leader back",
        |l, isr| l == preferred && isr.len() == 3,
    );
    eprintln!(
        "preferred leader {preferred} leads again {:?} after its restart",
        back.elapsed()
    );
}
