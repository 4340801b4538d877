//! The control plane end to end: several `rill serve` processes on
//! loopback form a controller quorum, register as brokers, agree on the
//! metadata, fence a broker that dies, survive the loss of the active
//! controller, refuse what must be refused — driven by librdkafka, kcat
//! and raw requests where a field matters.
//!
//! A partition of replication factor 1 has only its leader in sync: a dead
//! leader's partitions have no leader (clients get LEADER_NOT_AVAILABLE)
//! until it returns, with a higher leader epoch. One of factor 3 moves to
//! another in-sync replica (`replication_e2e.rs` checks the data).
//!
//! The tests take a lock each: several clusters at once on two cores would
//! make election and session timing a matter of luck.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Role};
use common::raw::RawClient;
use common::{poll_until, run_to_exit, serve_command, Ports};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::describe_quorum_request;
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, DescribeQuorumRequest, ElectLeadersRequest, MetadataRequest,
    MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// Fast fencing for tests: heartbeats every 500 ms, fenced after 3 s.
const FAST: &[&str] = &[
    "--broker-heartbeat-interval-ms",
    "500",
    "--broker-session-timeout-ms",
    "3000",
];
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
/// The session timeout of [`FAST`] plus room for a busy machine.
const FENCE_WAIT: Duration = Duration::from_secs(15);
const LEADER_NOT_AVAILABLE: i16 = 5;
const REQUEST_TIMED_OUT: i16 = 7;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Metadata of every topic, as node `id` answers it.
fn metadata(cluster: &Cluster, id: i32) -> MetadataResponse {
    let mut client = RawClient::connect(cluster.node(id).kafka_addr(), CLIENT_TIMEOUT)
        .expect("connect to a broker");
    client.send(
        12,
        MetadataRequest::default()
            .with_topics(None)
            .with_allow_auto_topic_creation(false),
    )
}

/// The active controller, as node `id` answers DescribeQuorum.
fn active_controller(cluster: &Cluster, id: i32) -> i32 {
    let mut client = RawClient::connect(cluster.node(id).kafka_addr(), CLIENT_TIMEOUT)
        .expect("connect to a broker");
    let response = client.send(
        2,
        DescribeQuorumRequest::default().with_topics(vec![
            describe_quorum_request::TopicData::default()
                .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
                .with_partitions(vec![describe_quorum_request::PartitionData::default()]),
        ]),
    );
    assert_eq!(response.error_code, 0, "{response:?}");
    let partition = &response.topics[0].partitions[0];
    assert_eq!(partition.error_code, 0, "{response:?}");
    partition.leader_id.0
}

/// The brokers a Metadata answer lists.
fn broker_ids(metadata: &MetadataResponse) -> Vec<i32> {
    let mut ids: Vec<i32> = metadata.brokers.iter().map(|b| b.node_id.0).collect();
    ids.sort_unstable();
    ids
}

/// Per partition of `topic`: (error, leader, leader epoch, replicas, ISR).
type PartitionView = (i16, i32, i32, Vec<i32>, Vec<i32>);

fn partitions(metadata: &MetadataResponse, topic: &str) -> BTreeMap<i32, PartitionView> {
    let topic = metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref().map(|n| n.as_str()) == Some(topic))
        .unwrap_or_else(|| panic!("topic {topic} missing from the metadata"));
    let ids = |v: &[BrokerId]| v.iter().map(|b| b.0).collect::<Vec<_>>();
    topic
        .partitions
        .iter()
        .map(|p| {
            (
                p.partition_index,
                (
                    p.error_code,
                    p.leader_id.0,
                    p.leader_epoch,
                    ids(&p.replica_nodes),
                    ids(&p.isr_nodes),
                ),
            )
        })
        .collect()
}

/// CreateTopics through node `id`; the topic's error code.
fn create_topic(
    cluster: &Cluster,
    id: i32,
    name: &str,
    partitions: i32,
    replication_factor: i16,
    timeout_ms: i32,
) -> i16 {
    let mut client = RawClient::connect(
        cluster.node(id).kafka_addr(),
        Duration::from_millis(timeout_ms as u64) + CLIENT_TIMEOUT,
    )
    .expect("connect to a broker");
    let response = client.send(
        7,
        CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(name.to_string())))
                .with_num_partitions(partitions)
                .with_replication_factor(replication_factor)])
            .with_timeout_ms(timeout_ms),
    );
    response.topics[0].error_code
}

/// ElectLeaders v2 (`election_type` 0 preferred, 1 unclean) for one
/// partition through node `id`; the partition's error code.
fn elect_leaders(
    cluster: &Cluster,
    id: i32,
    election_type: i8,
    topic: &str,
    partition: i32,
) -> i16 {
    let mut client =
        RawClient::connect(cluster.node(id).kafka_addr(), CLIENT_TIMEOUT).expect("connect");
    let response = client.send(
        2,
        ElectLeadersRequest::default()
            .with_election_type(election_type)
            .with_topic_partitions(Some(vec![TopicPartitions::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![partition])]))
            .with_timeout_ms(10_000),
    );
    assert_eq!(response.error_code, 0, "{response:?}");
    response.replica_election_results[0].partition_result[0].error_code
}

fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> BaseProducer {
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
    config.create().expect("create a producer")
}

/// Sends `values` to `partition` of `topic` and waits for every delivery;
/// panics if one fails.
fn produce_all(producer: &BaseProducer, topic: &str, partition: i32, values: &[String]) {
    for value in values {
        producer
            .send(
                BaseRecord::<(), _>::to(topic)
                    .partition(partition)
                    .payload(value.as_str()),
            )
            .map_err(|(e, _)| e)
            .expect("queue a record");
    }
    producer
        .flush(CLIENT_TIMEOUT)
        .expect("every record delivered");
}

/// Every value in `partition` of `topic`, from the start to the end.
fn read_partition(bootstrap: &str, topic: &str, partition: i32) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "cluster-e2e-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("create a consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Beginning)
        .expect("assign");
    consumer.assign(&assignment).expect("assign");
    let mut values = Vec::new();
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => values.push(
                String::from_utf8(message.payload().expect("a value").to_vec()).expect("utf-8"),
            ),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return values,
            Some(Err(error)) => eprintln!("consumer: {error}"),
            None => {}
        }
    }
    panic!("{topic}-{partition} not read to its end within {CLIENT_TIMEOUT:?}");
}

/// Polls node `from`'s Metadata until `check` holds; panics after `timeout`.
fn wait_metadata(
    cluster: &Cluster,
    from: i32,
    timeout: Duration,
    what: &str,
    check: impl Fn(&MetadataResponse) -> bool,
) -> MetadataResponse {
    poll_until(timeout, || {
        let m = metadata(cluster, from);
        check(&m).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "node {from}: {what} not seen within {timeout:?}; last metadata: {:?}",
            metadata(cluster, from)
        )
    })
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Three combined nodes: replicas spread, every node's Metadata agrees; a
/// SIGKILLed broker is fenced within its session timeout; its partitions
/// of factor 1 have no leader (their only in-sync replica is gone), those
/// of factor 3 move to another in-sync replica, and the others go on;
/// back, it is unfenced, leads its factor-1 partitions again with a higher
/// epoch, kept every acknowledged record, rejoins the ISR of the others
/// and takes its preferred leadership back when asked.
#[test]
fn three_nodes_agree_fence_a_killed_broker_and_take_it_back() {
    let _serial = serial();
    let mut cluster = Cluster::combined(3, FAST);
    assert_eq!(create_topic(&cluster, 1, "rf3", 3, 3, 10_000), 0);
    assert_eq!(create_topic(&cluster, 2, "rf1", 6, 1, 10_000), 0);

    // Every node lists the three brokers and the same partitions.
    let reference = wait_metadata(&cluster, 1, FENCE_WAIT, "both topics", |m| {
        m.topics.len() == 2
    });
    for id in 1..=3 {
        let m = wait_metadata(&cluster, id, FENCE_WAIT, "both topics", |m| {
            m.topics.len() == 2
        });
        assert_eq!(broker_ids(&m), vec![1, 2, 3], "node {id}");
        for topic in ["rf1", "rf3"] {
            assert_eq!(
                partitions(&m, topic),
                partitions(&reference, topic),
                "node {id}, {topic}"
            );
        }
    }
    let rf1 = partitions(&reference, "rf1");
    let rf3 = partitions(&reference, "rf3");
    // Round-robin placement: each broker leads two of rf1's six partitions
    // and holds a replica of every rf3 partition, all in sync.
    for id in 1..=3 {
        assert_eq!(
            rf1.values().filter(|p| p.1 == id).count(),
            2,
            "rf1 leaders: {rf1:?}"
        );
        assert_eq!(
            rf3.values().filter(|p| p.1 == id).count(),
            1,
            "rf3 leaders: {rf3:?}"
        );
    }
    for (error, leader, _, replicas, isr) in rf3.values() {
        assert_eq!(*error, 0);
        assert_eq!(replicas.len(), 3);
        assert_eq!(replicas[0], *leader);
        assert_eq!(isr, replicas);
    }

    // Records in every partition, acknowledged by all (here: the leader).
    let first_producer = producer(&cluster.bootstrap(), &[]);
    let before: BTreeMap<i32, Vec<String>> = (0..6)
        .map(|p| (p, (0..20).map(|i| format!("before-{p}-{i}")).collect()))
        .collect();
    for (p, values) in &before {
        produce_all(&first_producer, "rf1", *p, values);
    }

    // Kill a broker that is not the active controller (that case is below).
    let controller = active_controller(&cluster, 1);
    let victim = (1..=3).find(|id| *id != controller).expect("a victim");
    let survivor = (1..=3).find(|id| *id != victim).expect("a survivor");
    let victim_partitions: Vec<i32> = rf1
        .iter()
        .filter(|(_, p)| p.1 == victim)
        .map(|(i, _)| *i)
        .collect();
    let killed = Instant::now();
    cluster.kill(victim);
    let fenced = wait_metadata(&cluster, survivor, FENCE_WAIT, "the victim fenced", |m| {
        !broker_ids(m).contains(&victim)
    });
    eprintln!(
        "broker {victim} fenced {:?} after SIGKILL",
        killed.elapsed()
    );
    let during = partitions(&fenced, "rf1");
    for (index, (error, leader, epoch, _, isr)) in &during {
        if victim_partitions.contains(index) {
            // No other replica has the data: no leader, no election.
            assert_eq!((*error, *leader), (LEADER_NOT_AVAILABLE, -1), "rf1-{index}");
            assert_eq!(
                isr,
                &vec![victim],
                "the ISR keeps the only replica with the data"
            );
            assert!(*epoch > rf1[index].2, "the leader epoch moves on");
        } else {
            assert_eq!((*error, *leader, *epoch), (0, rf1[index].1, rf1[index].2));
        }
    }
    // `rill cluster describe` shows it fenced, and the quorum of three.
    let out = Command::new(common::rill_binary())
        .args([
            "cluster",
            "describe",
            "--bootstrap",
            &cluster.node(survivor).kafka_addr().to_string(),
        ])
        .output()
        .expect("run rill cluster describe");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fenced_row = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&victim.to_string()) && l.contains("fenced"))
        .unwrap_or_else(|| panic!("no fenced row for {victim}:\n{text}"));
    assert!(
        fenced_row.split_whitespace().any(|c| c == "fenced"),
        "{text}"
    );
    assert!(text.contains("controller quorum: leader"), "{text}");
    // The quorum table: NODE ROLE LOG-END LAG, one row per voter.
    let voters = text
        .lines()
        .filter(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.len() == 4
                && cells[0].parse::<i32>().is_ok()
                && (cells[1] == "leader" || cells[1] == "voter")
        })
        .count();
    assert_eq!(voters, 3, "three voters listed:\n{text}");

    // rf3's partitions moved to another in-sync replica, and the victim
    // left their ISR.
    let (rf3_index, _) = rf3
        .iter()
        .find(|(_, p)| p.1 == victim)
        .expect("the victim leads an rf3 partition");
    let moved = partitions(&fenced, "rf3")[rf3_index].clone();
    assert!(
        moved.0 == 0 && moved.1 != -1 && moved.1 != victim,
        "{moved:?}"
    );
    assert!(!moved.4.contains(&victim), "{moved:?}");
    assert!(moved.2 > rf3[rf3_index].2);

    // The live brokers' partitions take writes all along.
    let during_producer = producer(&cluster.bootstrap(), &[]);
    for p in (0..6).filter(|p| !victim_partitions.contains(p)) {
        produce_all(&during_producer, "rf1", p, &[format!("during-{p}")]);
    }

    // Back on the same data dir: unfenced, leading again with a higher
    // epoch, with every acknowledged record.
    cluster.restart(victim);
    let back = wait_metadata(&cluster, survivor, FENCE_WAIT, "the victim back", |m| {
        broker_ids(m).contains(&victim) && partitions(m, "rf1").values().all(|p| p.1 != -1)
    });
    let after = partitions(&back, "rf1");
    for index in &victim_partitions {
        assert_eq!(after[index].1, victim);
        assert!(
            after[index].2 > during[index].2,
            "a new epoch for the new term"
        );
    }
    // The returning broker catches up and rejoins rf3's ISR; then its
    // preferred leadership can come back.
    wait_metadata(
        &cluster,
        survivor,
        FENCE_WAIT,
        "the victim back in sync",
        |m| partitions(m, "rf3")[rf3_index].4.contains(&victim),
    );
    assert_eq!(elect_leaders(&cluster, survivor, 0, "rf3", *rf3_index), 0);
    let preferred = partitions(&metadata(&cluster, survivor), "rf3")[rf3_index].clone();
    assert_eq!(preferred.1, victim, "{preferred:?}");
    for p in 0..6 {
        let mut expected = before[&p].clone();
        if !victim_partitions.contains(&p) {
            expected.push(format!("during-{p}"));
        }
        assert_eq!(
            read_partition(&cluster.bootstrap(), "rf1", p),
            expected,
            "rf1-{p}"
        );
    }
}

/// SIGTERM is a controlled shutdown: the broker asks the active controller
/// to move its leaderships and waits for it before it exits, so it is out
/// of the metadata at once (not a session timeout later); an idempotent
/// producer rides through the stop and the return without a failed
/// delivery or a duplicate.
#[test]
fn sigterm_is_a_controlled_shutdown() {
    let _serial = serial();
    // A long session: anything seen before it ends is the controlled
    // shutdown's doing.
    let args = [
        "--broker-heartbeat-interval-ms",
        "500",
        "--broker-session-timeout-ms",
        "60000",
    ];
    let mut cluster = Cluster::combined(3, &args);
    assert_eq!(create_topic(&cluster, 1, "orders", 3, 1, 10_000), 0);
    let controller = active_controller(&cluster, 1);
    let victim = (1..=3).find(|id| *id != controller).expect("a victim");
    let survivor = controller;

    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let bootstrap = cluster.bootstrap();
    let writer = {
        let stop = Arc::clone(&stop);
        let failed = Arc::clone(&failed);
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
                for p in 0..3 {
                    let value = format!("{sent}");
                    if producer
                        .send(
                            BaseRecord::<(), _>::to("orders")
                                .partition(p)
                                .payload(&value),
                        )
                        .is_err()
                    {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    sent += 1;
                }
                producer.poll(Duration::from_millis(20));
            }
            let flushed = producer.flush(Duration::from_secs(120));
            (sent, flushed.is_ok(), producer.in_flight_count())
        })
    };
    thread::sleep(Duration::from_secs(1));

    let status = cluster.terminate(victim, Duration::from_secs(30));
    assert!(status.success(), "node {victim} exited with {status}");
    // Out of the metadata now, far inside the 60 s session.
    let m = metadata(&cluster, survivor);
    assert!(
        !broker_ids(&m).contains(&victim),
        "still listed after a controlled shutdown: {m:?}"
    );
    assert!(partitions(&m, "orders").values().all(|p| p.1 != victim));

    thread::sleep(Duration::from_secs(1));
    cluster.restart(victim);
    wait_metadata(&cluster, survivor, FENCE_WAIT, "every partition led", |m| {
        partitions(m, "orders").values().all(|p| p.1 != -1)
    });
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let (sent, flushed, in_flight) = writer.join().expect("writer thread");
    assert!(
        flushed,
        "not every record was delivered ({in_flight} in flight)"
    );
    assert_eq!(failed.load(Ordering::SeqCst), 0, "a send failed");

    // Every record once: the idempotent producer's retries were recognised.
    let mut read = 0;
    for p in 0..3 {
        let values = read_partition(&cluster.bootstrap(), "orders", p);
        let mut distinct = values.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), values.len(), "a duplicate in orders-{p}");
        read += values.len() as u64;
    }
    assert_eq!(read, sent);
}

/// The quorum outlives its active controller: the others elect a new one
/// and metadata changes go on; the old one rejoins. A minority cannot change
/// anything: CreateTopics gets REQUEST_TIMED_OUT within its timeout, and
/// works again once the majority is back.
#[test]
fn the_quorum_survives_its_controller_but_not_a_lost_majority() {
    let _serial = serial();
    let mut cluster = Cluster::combined(3, FAST);
    let old = active_controller(&cluster, 1);
    assert!(
        (1..=3).contains(&old),
        "a controller among the nodes: {old}"
    );
    let asked = (1..=3).find(|id| *id != old).expect("another node");

    let killed = Instant::now();
    cluster.kill(old);
    let created = poll_until(Duration::from_secs(30), || {
        (create_topic(&cluster, asked, "after-failover", 1, 1, 2_000) == 0).then_some(())
    });
    assert!(
        created.is_some(),
        "no metadata change within 30 s of losing the controller"
    );
    eprintln!(
        "CreateTopics worked {:?} after the controller's SIGKILL",
        killed.elapsed()
    );
    let new = active_controller(&cluster, asked);
    assert_ne!(new, old);
    cluster.restart(old);
    wait_metadata(
        &cluster,
        old,
        FENCE_WAIT,
        "the old controller caught up",
        |m| {
            m.topics
                .iter()
                .any(|t| t.name.as_ref().map(|n| n.as_str()) == Some("after-failover"))
        },
    );

    // Two of three voters paused: nothing can be committed.
    let alone = 1;
    cluster.pause(2);
    cluster.pause(3);
    let asked_at = Instant::now();
    let code = create_topic(&cluster, alone, "no-majority", 1, 1, 2_000);
    let took = asked_at.elapsed();
    assert_eq!(code, REQUEST_TIMED_OUT);
    assert!(took < Duration::from_secs(8), "the timeout took {took:?}");
    cluster.resume(2);
    cluster.resume(3);
    let created = poll_until(Duration::from_secs(30), || {
        (create_topic(&cluster, alone, "majority-back", 1, 1, 2_000) == 0).then_some(())
    });
    assert!(
        created.is_some(),
        "no metadata change after the majority came back"
    );
}

/// Three controller-only voters and two broker-only nodes: only the
/// brokers are offered to clients, topics live on them, and kcat sees them.
#[test]
fn controllers_and_broker_only_nodes() {
    let _serial = serial();
    let cluster = Cluster::start(
        &[
            (1, Role::Controller),
            (2, Role::Controller),
            (3, Role::Controller),
            (4, Role::Broker),
            (5, Role::Broker),
        ],
        FAST,
    );
    assert_eq!(create_topic(&cluster, 4, "split", 4, 2, 10_000), 0);
    for id in [4, 5] {
        let m = wait_metadata(&cluster, id, FENCE_WAIT, "the topic", |m| {
            m.topics.len() == 1
        });
        assert_eq!(broker_ids(&m), vec![4, 5]);
        assert!(
            [4, 5].contains(&m.controller_id.0),
            "a broker as the clients' controller"
        );
        for (error, leader, _, replicas, _) in partitions(&m, "split").values() {
            assert_eq!(*error, 0);
            assert!([4, 5].contains(leader));
            assert_eq!(replicas.len(), 2);
        }
    }
    let producer = producer(&cluster.bootstrap(), &[]);
    for p in 0..4 {
        produce_all(&producer, "split", p, &[format!("v{p}")]);
        assert_eq!(
            read_partition(&cluster.bootstrap(), "split", p),
            vec![format!("v{p}")]
        );
    }
    // Debian's kcat (librdkafka 2.0) lists the brokers and the controller.
    let out = Command::new("kcat")
        .args(["-b", &cluster.bootstrap(), "-L", "-m", "10"])
        .output()
        .expect("run kcat");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kcat -L: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(" 2 brokers:"), "{text}");
    assert!(text.contains("(controller)"), "{text}");
    assert!(text.contains("topic \"split\" with 4 partitions"), "{text}");
}

/// What a node refuses, each with one line and exit code 2: a quorum
/// string that does not parse, a duplicate live node id, a data dir of
/// another cluster, a data dir of another quorum. Garbage on a controller
/// port closes that connection and nothing else.
#[test]
fn refusals_and_garbage() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let refused = |command: Command, what: &str, expected: &str| {
        let finished = run_to_exit(command, Duration::from_secs(60));
        assert_eq!(
            finished.status.code(),
            Some(2),
            "{what}: {}",
            finished.stderr
        );
        let lines: Vec<&str> = finished
            .stderr
            .lines()
            .filter(|l| l.starts_with("rill:"))
            .collect();
        assert_eq!(lines.len(), 1, "{what}: {}", finished.stderr);
        assert!(
            lines[0].contains(expected),
            "{what}: {:?} lacks {expected:?}",
            lines[0]
        );
    };
    let mut bad = serve_command(&dir.path().join("bad"), &Ports::pick());
    bad.args(["--node-id", "1", "--controller-quorum", "1@nohost"]);
    refused(bad, "a bad quorum", "controller-quorum");

    let cluster = Cluster::combined(3, FAST);

    // A broker-only node 4, then a second process claiming node 4.
    let first_ports = Ports::pick();
    let first = cluster.outsider_command(4, Role::Broker, &dir.path().join("n4"), &first_ports);
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let (mut first_child, _) = common::spawn_serve(first, &stderr)
        .expect("spawn node 4")
        .wait_ready(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("node 4: {e}"));
    let second = cluster.outsider_command(4, Role::Broker, &dir.path().join("n4b"), &Ports::pick());
    refused(second, "a duplicate live node id", "already registered");
    let _ = first_child.kill();
    let _ = first_child.wait();
    // Gone for good: fenced once its session ends, and given no replicas.
    wait_metadata(&cluster, 1, FENCE_WAIT, "node 4 fenced", |m| {
        !broker_ids(m).contains(&4)
    });

    // A data dir that belongs to another cluster.
    let other = dir.path().join("other-cluster");
    std::fs::create_dir_all(&other).expect("mkdir");
    std::fs::write(
        other.join("meta.properties"),
        "version=1\ncluster.id=AnotherClusterIdXXXXXX\nnode.id=5\n",
    )
    .expect("write meta.properties");
    let command = cluster.outsider_command(5, Role::Broker, &other, &Ports::pick());
    refused(command, "another cluster's data dir", "belongs to cluster");

    // The data dir of a single-node cluster: its controller log has
    // another quorum.
    let single = dir.path().join("single");
    let mut alone = serve_command(&single, &Ports::pick());
    alone.args(["--node-id", "6"]);
    let (mut alone_child, _) = common::spawn_serve(alone, &Arc::new(Mutex::new(Vec::new())))
        .expect("spawn")
        .wait_ready(Duration::from_secs(30))
        .expect("a single node starts");
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&alone_child),
        rustix::process::Signal::TERM,
    )
    .expect("SIGTERM");
    let _ = alone_child.wait();
    let command = cluster.outsider_command(6, Role::Broker, &single, &Ports::pick());
    refused(command, "another quorum's data dir", "quorum");

    // Garbage on a controller port: that connection is closed; the
    // cluster goes on serving.
    let controller_port = cluster.node(1).ports.controller;
    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0xff; 64][..],
        &[0, 0, 0, 3, b'{', b'x', b'}'][..],
    ] {
        let mut stream = TcpStream::connect(controller_port).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.write_all(garbage).expect("write");
        let mut buf = [0u8; 16];
        let read = stream.read(&mut buf);
        assert!(
            matches!(read, Ok(0)) || read.is_err(),
            "garbage {garbage:?} got an answer: {read:?}"
        );
    }
    assert_eq!(create_topic(&cluster, 2, "still-serving", 1, 3, 10_000), 0);
    let producer = producer(&cluster.bootstrap(), &[]);
    produce_all(&producer, "still-serving", 0, &["ok".to_string()]);
}

/// A paused (SIGSTOPped) active controller is replaced, and a metadata
/// change sent meanwhile through another node reaches the new one: the
/// forwarding node gives up on the silent leader once it learns of the
/// next, rather than waiting out the request's timeout on it.
#[test]
fn a_paused_controller_is_replaced_for_requests_in_flight() {
    let _serial = serial();
    let mut cluster = Cluster::combined(3, FAST);
    let old = active_controller(&cluster, 1);
    let other = (1..=3).find(|id| *id != old).unwrap();
    cluster.pause(old);
    let started = Instant::now();
    assert_eq!(
        create_topic(&cluster, other, "while-paused", 1, 1, 20_000),
        0
    );
    eprintln!("created {:?} after the pause", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    cluster.resume(old);
}
