//! Consumer groups end to end: librdkafka members (through `rdkafka`) and
//! kcat member processes share a topic's partitions through the group
//! coordinator of a `rill serve` process, and commit their positions to it.
//!
//! Each librdkafka member runs in its own thread and polls without pause, as
//! an application does: librdkafka runs rebalance callbacks only from
//! `poll`, and a member that is not polled stalls its group's rebalances.
//! Members commit synchronously after processing each record. A [`Ledger`]
//! shared by the members of a test records every record processed and every
//! commit that succeeded, and checks, as each record is processed, that the
//! group never processes again a record it has committed past.
//!
//! Every wait is bounded. The brokers run with a 100 ms initial rebalance
//! delay and a 1 s minimum session timeout, so members may use short
//! session timeouts. kcat must be on PATH (`test.sh` installs it) unless
//! `RILL_SKIP_KCAT=1`, which skips the test that needs it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use bytes::{Buf, Bytes};
use common::{poll_until, Broker};
use kafka_protocol::messages::ConsumerProtocolAssignment;
use kafka_protocol::protocol::Decodable;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// The `rill serve` flags of every broker here: a short initial rebalance
/// delay (Kafka's default of 3 s would only slow the tests down) and
/// session timeouts down to 1 s.
const GROUP_BROKER_ARGS: &[&str] = &[
    "--group-initial-rebalance-delay-ms",
    "100",
    "--group-min-session-timeout-ms",
    "1000",
];
/// Partitions of every topic here.
const PARTITIONS: i32 = 6;
/// The members' `session.timeout.ms` unless a test says otherwise.
const SESSION_TIMEOUT_MS: u64 = 6000;
/// The members' `heartbeat.interval.ms`: a member learns of a rebalance
/// within this long.
const HEARTBEAT_INTERVAL_MS: u64 = 500;
/// How long any one client request may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a group may take to settle after a member joins or leaves
/// cleanly (no session timeout involved).
const REBALANCE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long produced records may take to be processed by the group.
const CONSUME_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `poll` of a member waits for a record.
const MEMBER_POLL: Duration = Duration::from_millis(50);
/// How long kcat may take to print the records of its partitions.
const KCAT_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

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

/// Runs an admin future to completion. The admin client resolves its
/// futures from its own thread, so a current-thread runtime is enough.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime")
        .block_on(future)
}

fn create_topic(broker: &Broker, name: &str) {
    let admin: AdminClient<DefaultClientContext> = client_config(broker)
        .create()
        .expect("create an admin client");
    let topic = NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1));
    let options = AdminOptions::new().request_timeout(Some(CLIENT_TIMEOUT));
    let results = block_on(admin.create_topics([&topic], &options)).expect("CreateTopics request");
    assert_eq!(results.len(), 1);
    if let Err((topic, code)) = &results[0] {
        panic!("CreateTopics {topic}: {code:?}");
    }
}

/// A consumer that never joins a group: for watermarks, committed offsets
/// (of `group`, through OffsetFetch) and group listings.
fn observer(broker: &Broker, group: &str) -> BaseConsumer {
    client_config(broker)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("create an observer consumer")
}

/// Which records a producer got delivered: (partition, offset) → payload.
type Produced = BTreeMap<(i32, i64), String>;

/// Where the broker put a record, or why it did not take it.
type DeliveryReport = Result<(i32, i64), String>;

/// Collects delivery reports; the opaque is the index of the payload.
#[derive(Debug, Default)]
struct Deliveries {
    reports: Mutex<Vec<(usize, DeliveryReport)>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        let report = match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((error, _)) => Err(error.to_string()),
        };
        lock(&self.reports).push((index, report));
    }
}

fn producer(broker: &Broker) -> BaseProducer<Deliveries> {
    client_config(broker)
        .set("enable.idempotence", "false")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create_with_context(Deliveries::default())
        .expect("create a producer")
}

/// Produces `per_partition` records to every partition of `topic`, payloads
/// `<tag>-<partition>-<i>`, and waits until each one is delivered.
fn produce(broker: &Broker, topic: &str, per_partition: usize, tag: &str) -> Produced {
    produce_to(broker, topic, &all_partitions(), per_partition, tag)
}

/// [`produce`] to some partitions only.
fn produce_to(
    broker: &Broker,
    topic: &str,
    partitions: &BTreeSet<i32>,
    per_partition: usize,
    tag: &str,
) -> Produced {
    let producer = producer(broker);
    let mut payloads = Vec::new();
    for &partition in partitions {
        for i in 0..per_partition {
            payloads.push((partition, format!("{tag}-{partition}-{i}")));
        }
    }
    for (index, (partition, payload)) in payloads.iter().enumerate() {
        let record = BaseRecord::<(), str, usize>::with_opaque_to(topic, index)
            .partition(*partition)
            .payload(payload.as_str());
        if let Err((error, _)) = producer.send(record) {
            panic!("send {payload}: {error}");
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(CLIENT_TIMEOUT).expect("flush the producer");
    let reports = std::mem::take(&mut *lock(&producer.context().reports));
    assert_eq!(
        reports.len(),
        payloads.len(),
        "one delivery report per record"
    );
    reports
        .into_iter()
        .map(|(index, report)| {
            let (partition, payload) = &payloads[index];
            match report {
                Ok((delivered_partition, offset)) => {
                    assert_eq!(delivered_partition, *partition, "{payload} went elsewhere");
                    ((*partition, offset), payload.clone())
                }
                Err(error) => panic!("{payload} was not delivered: {error}"),
            }
        })
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A member thread that panicked has already failed the test; its data
    // is still worth showing.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn partitions_of(list: &TopicPartitionList) -> BTreeSet<i32> {
    list.elements()
        .iter()
        .map(|element| element.partition())
        .collect()
}

fn all_partitions() -> BTreeSet<i32> {
    (0..PARTITIONS).collect()
}

// ---------------------------------------------------------------------------
// Group members
// ---------------------------------------------------------------------------

/// One rebalance callback, as a member saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RebalanceEvent {
    Assign(BTreeSet<i32>),
    Revoke(BTreeSet<i32>),
    Error(String),
}

/// Records every rebalance callback (after librdkafka has applied it).
#[derive(Debug)]
struct MemberContext {
    events: Arc<Mutex<Vec<RebalanceEvent>>>,
}

impl ClientContext for MemberContext {
    /// librdkafka's log lines go to stderr (which a failing test shows),
    /// tagged with the member's `client.id`; `RILL_E2E_RDKAFKA_DEBUG` (for
    /// example `cgrp,fetch`) turns on its debug contexts.
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        eprintln!("librdkafka {level:?} {facility} {message}");
    }
}

impl ConsumerContext for MemberContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let event = match rebalance {
            Rebalance::Assign(list) => RebalanceEvent::Assign(partitions_of(list)),
            Rebalance::Revoke(list) => RebalanceEvent::Revoke(partitions_of(list)),
            Rebalance::Error(error) => RebalanceEvent::Error(error.to_string()),
        };
        lock(&self.events).push(event);
    }
}

/// One record a member processed.
#[derive(Debug, Clone)]
struct Processed {
    member: String,
    partition: i32,
    offset: i64,
    payload: String,
}

/// What the members of one group (on one topic) processed and committed.
#[derive(Debug, Default)]
struct Ledger {
    processed: Vec<Processed>,
    /// Per partition, the highest offset a successful commit named: the
    /// next record to process.
    committed: BTreeMap<i32, i64>,
    /// Records processed although the group had committed past them.
    violations: Vec<String>,
    /// Commits that failed. Allowed (the record may then be processed
    /// again), but shown when a test fails.
    commit_errors: Vec<String>,
}

/// A member's own view of itself, updated after every poll.
#[derive(Debug, Default)]
struct MemberView {
    assignment: BTreeSet<i32>,
    /// Every assignment it has had, in order, consecutive repeats folded.
    history: Vec<BTreeSet<i32>>,
    /// `rebalance_protocol()`, once the member has joined.
    protocol: String,
    /// Errors `poll` returned (broker restarts produce some).
    errors: Vec<String>,
}

/// How a member is set up.
#[derive(Debug, Clone)]
struct MemberSpec<'a> {
    /// Its `client.id`, which group listings show.
    name: &'a str,
    group: &'a str,
    topic: &'a str,
    /// librdkafka settings on top of the defaults in [`Member::start`].
    settings: &'a [(&'a str, &'a str)],
}

/// A librdkafka group member polling in its own thread.
#[derive(Debug)]
struct Member {
    name: String,
    events: Arc<Mutex<Vec<RebalanceEvent>>>,
    view: Arc<Mutex<MemberView>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Member {
    fn start(broker: &Broker, spec: &MemberSpec<'_>, ledger: &Arc<Mutex<Ledger>>) -> Member {
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut config = client_config(broker);
        config
            .set("group.id", spec.group)
            .set("client.id", spec.name)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Earliest, so that a lost committed offset shows up as records
            // processed again rather than as nothing.
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", SESSION_TIMEOUT_MS.to_string())
            .set("heartbeat.interval.ms", HEARTBEAT_INTERVAL_MS.to_string())
            .set("max.poll.interval.ms", "30000");
        if let Ok(contexts) = std::env::var("RILL_E2E_RDKAFKA_DEBUG") {
            config.set("debug", contexts);
        }
        for (key, value) in spec.settings {
            config.set(*key, *value);
        }
        let consumer: BaseConsumer<MemberContext> = config
            .create_with_context(MemberContext {
                events: Arc::clone(&events),
            })
            .expect("create a group member");
        consumer.subscribe(&[spec.topic]).expect("subscribe");

        let view = Arc::new(Mutex::new(MemberView::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let name = spec.name.to_string();
            let topic = spec.topic.to_string();
            let view = Arc::clone(&view);
            let stop = Arc::clone(&stop);
            let ledger = Arc::clone(ledger);
            thread::Builder::new()
                .name(name.clone())
                .spawn(move || run_member(consumer, &name, &topic, &view, &ledger, &stop))
                .expect("spawn a member thread")
        };
        Member {
            name: spec.name.to_string(),
            events,
            view,
            stop,
            thread: Some(thread),
        }
    }

    fn assignment(&self) -> BTreeSet<i32> {
        lock(&self.view).assignment.clone()
    }

    fn history(&self) -> Vec<BTreeSet<i32>> {
        lock(&self.view).history.clone()
    }

    fn events(&self) -> Vec<RebalanceEvent> {
        lock(&self.events).clone()
    }

    fn describe(&self) -> String {
        let view = lock(&self.view);
        format!(
            "{}: assigned {:?}, protocol {}, rebalances {:?}, errors {:?}",
            self.name,
            view.assignment,
            view.protocol,
            lock(&self.events),
            view.errors
        )
    }

    /// Stops polling and closes the consumer: a dynamic member leaves the
    /// group (LeaveGroup), a static one does not.
    fn close(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run_member(
    consumer: BaseConsumer<MemberContext>,
    name: &str,
    topic: &str,
    view: &Mutex<MemberView>,
    ledger: &Mutex<Ledger>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::SeqCst) {
        match consumer.poll(MEMBER_POLL) {
            None => {}
            Some(Err(error)) => lock(view).errors.push(error.to_string()),
            Some(Ok(message)) => {
                assert_eq!(message.topic(), topic);
                let payload = message
                    .payload()
                    .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
                    .unwrap_or_default();
                process_and_commit(
                    &consumer,
                    ledger,
                    Processed {
                        member: name.to_string(),
                        partition: message.partition(),
                        offset: message.offset(),
                        payload,
                    },
                    topic,
                );
            }
        }
        let assignment = consumer.assignment().map(|list| partitions_of(&list));
        let protocol = match consumer.rebalance_protocol() {
            RebalanceProtocol::None => "None",
            RebalanceProtocol::Eager => "Eager",
            RebalanceProtocol::Cooperative => "Cooperative",
        };
        let mut view = lock(view);
        match assignment {
            Ok(assignment) => {
                if view.history.last() != Some(&assignment) {
                    view.history.push(assignment.clone());
                }
                view.assignment = assignment;
            }
            Err(error) => view.errors.push(format!("assignment(): {error}")),
        }
        view.protocol = protocol.to_string();
    }
    // Dropping the consumer closes it (rd_kafka_consumer_close).
    drop(consumer);
}

/// Records a processed record, checking it against what the group has
/// committed, then commits past it synchronously.
fn process_and_commit(
    consumer: &BaseConsumer<MemberContext>,
    ledger: &Mutex<Ledger>,
    record: Processed,
    topic: &str,
) {
    let (partition, offset) = (record.partition, record.offset);
    {
        let mut ledger = lock(ledger);
        let committed = ledger.committed.get(&partition).copied().unwrap_or(0);
        if offset < committed {
            let violation = format!(
                "{} processed {topic}-{partition} offset {offset}, but the group had \
                 committed offset {committed}",
                record.member
            );
            ledger.violations.push(violation);
        }
        ledger.processed.push(record.clone());
    }
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(offset + 1))
        .expect("add a partition to commit");
    let result = consumer.commit(&list, CommitMode::Sync);
    let mut ledger = lock(ledger);
    match result {
        Ok(()) => {
            let committed = ledger.committed.entry(partition).or_insert(0);
            *committed = (*committed).max(offset + 1);
        }
        Err(error) => {
            let message = format!(
                "{} commit {topic}-{partition} offset {}: {error}",
                record.member,
                offset + 1
            );
            ledger.commit_errors.push(message);
        }
    }
}

fn describe_members(members: &[&Member]) -> String {
    members
        .iter()
        .map(|member| member.describe())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until `members` between them hold every partition, each member at
/// least one and no two the same one; returns who holds what.
fn wait_balanced(members: &[&Member], what: &str) -> BTreeMap<String, BTreeSet<i32>> {
    let balanced = poll_until(REBALANCE_TIMEOUT, || {
        let owners: BTreeMap<String, BTreeSet<i32>> = members
            .iter()
            .map(|member| (member.name.clone(), member.assignment()))
            .collect();
        let total: usize = owners.values().map(BTreeSet::len).sum();
        let union: BTreeSet<i32> = owners.values().flatten().copied().collect();
        let each_has_some = owners.values().all(|partitions| !partitions.is_empty());
        (each_has_some && total == union.len() && union == all_partitions()).then_some(owners)
    });
    balanced.unwrap_or_else(|| {
        panic!(
            "{what}: the members did not share all {PARTITIONS} partitions within \
             {REBALANCE_TIMEOUT:?}:\n{}",
            describe_members(members)
        )
    })
}

/// Every partition each member has held at some point: who may have
/// processed what when members started with records already waiting (a
/// member may hold everything for a generation before the others join).
fn ever_held(members: &[&Member]) -> BTreeMap<String, BTreeSet<i32>> {
    members
        .iter()
        .map(|member| {
            let held = member.history().into_iter().flatten().collect();
            (member.name.clone(), held)
        })
        .collect()
}

fn processed_count(ledger: &Mutex<Ledger>) -> usize {
    lock(ledger).processed.len()
}

/// Waits until every record in `produced` has been processed at least once
/// (counting only records processed at or after `mark`, a
/// [`processed_count`]) and returns those records.
fn wait_processed(
    ledger: &Mutex<Ledger>,
    mark: usize,
    produced: &Produced,
    members: &[&Member],
) -> Vec<Processed> {
    let done = poll_until(CONSUME_TIMEOUT, || {
        let ledger = lock(ledger);
        let seen: BTreeSet<(i32, i64)> = ledger.processed[mark..]
            .iter()
            .map(|record| (record.partition, record.offset))
            .collect();
        produced
            .keys()
            .all(|key| seen.contains(key))
            .then(|| ledger.processed[mark..].to_vec())
    });
    done.unwrap_or_else(|| {
        let ledger = lock(ledger);
        let seen: BTreeSet<(i32, i64)> = ledger.processed[mark..]
            .iter()
            .map(|record| (record.partition, record.offset))
            .collect();
        let missing: Vec<&(i32, i64)> = produced.keys().filter(|k| !seen.contains(k)).collect();
        panic!(
            "{} of {} records were not processed within {CONSUME_TIMEOUT:?}, for example \
             {:?}; commit errors {:?}\n{}",
            missing.len(),
            produced.len(),
            &missing[..missing.len().min(10)],
            ledger.commit_errors,
            describe_members(members)
        )
    })
}

/// Checks that `processed` is exactly `produced`, each record once with its
/// payload, each processed by the member that holds its partition in
/// `owners`.
fn assert_processed_once(
    processed: &[Processed],
    produced: &Produced,
    owners: &BTreeMap<String, BTreeSet<i32>>,
) {
    let mut seen = BTreeMap::new();
    for record in processed {
        let key = (record.partition, record.offset);
        if let Some(previous) = seen.insert(key, record) {
            panic!("processed twice: {previous:?} and {record:?}");
        }
        let expected = produced
            .get(&key)
            .unwrap_or_else(|| panic!("processed a record that was not produced: {record:?}"));
        assert_eq!(&record.payload, expected, "the payload of {key:?}");
        let holds = owners
            .get(&record.member)
            .is_some_and(|partitions| partitions.contains(&record.partition));
        assert!(
            holds,
            "{record:?} was processed by a member that does not hold its partition; \
             owners {owners:?}"
        );
    }
    assert_eq!(
        seen.len(),
        produced.len(),
        "every produced record processed"
    );
}

fn assert_no_violations(ledger: &Mutex<Ledger>) {
    let ledger = lock(ledger);
    assert!(
        ledger.violations.is_empty(),
        "records processed again after the group committed past them: {:?}; \
         commit errors {:?}",
        ledger.violations,
        ledger.commit_errors
    );
}

/// The first offset processed in each partition among `processed`.
fn first_offsets(processed: &[Processed]) -> BTreeMap<i32, i64> {
    let mut first = BTreeMap::new();
    for record in processed {
        first.entry(record.partition).or_insert(record.offset);
    }
    first
}

// ---------------------------------------------------------------------------
// What the broker says about a group
// ---------------------------------------------------------------------------

/// One group as ListGroups and DescribeGroups describe it.
#[derive(Debug, Clone)]
struct GroupSummary {
    state: String,
    protocol_type: String,
    protocol: String,
    /// client id → (member id, the partitions of its assignment).
    members: BTreeMap<String, (String, BTreeSet<i32>)>,
}

/// [`try_describe_group`] for a polling loop: a failed listing is reported
/// (on stderr, shown if the test fails) and counts as "not yet". A fresh
/// client can fail one: librdkafka lists groups only from brokers it knows
/// by node id, and answers "transport failure" when it knows none yet.
fn poll_describe_group(broker: &Broker, group: &str, topic: &str) -> Option<GroupSummary> {
    try_describe_group(broker, group, topic).unwrap_or_else(|error| {
        eprintln!("{error}");
        None
    })
}

/// The group as the broker lists it (ListGroups, then DescribeGroups), or
/// `None` if it does not list it.
fn try_describe_group(
    broker: &Broker,
    group: &str,
    topic: &str,
) -> Result<Option<GroupSummary>, String> {
    let observer = observer(broker, "rill-e2e-observer");
    let list = observer
        .fetch_group_list(Some(group), CLIENT_TIMEOUT)
        .map_err(|error| format!("list group {group} (ListGroups, DescribeGroups): {error}"))?;
    let Some(info) = list.groups().iter().find(|info| info.name() == group) else {
        return Ok(None);
    };
    let mut members = BTreeMap::new();
    for member in info.members() {
        let partitions = decode_assignment(member.assignment().unwrap_or_default(), topic);
        let previous = members.insert(
            member.client_id().to_string(),
            (member.id().to_string(), partitions),
        );
        assert!(
            previous.is_none(),
            "two members of {group} with client id {}",
            member.client_id()
        );
    }
    Ok(Some(GroupSummary {
        state: info.state().to_string(),
        protocol_type: info.protocol_type().to_string(),
        protocol: info.protocol().to_string(),
        members,
    }))
}

/// The partitions of `topic` in a consumer-protocol assignment, as the
/// group leader wrote it and the coordinator handed it out.
fn decode_assignment(bytes: &[u8], topic: &str) -> BTreeSet<i32> {
    if bytes.is_empty() {
        return BTreeSet::new();
    }
    let mut buf = Bytes::copy_from_slice(bytes);
    assert!(buf.remaining() >= 2, "assignment of {} bytes", bytes.len());
    // Newer versions only add fields at the end, so read them as the
    // newest this decoder knows.
    let version = buf.get_i16().min(3);
    let assignment = ConsumerProtocolAssignment::decode(&mut buf, version)
        .unwrap_or_else(|error| panic!("decode the assignment {bytes:?}: {error}"));
    assignment
        .assigned_partitions
        .iter()
        .filter(|assigned| assigned.topic.0.as_str() == topic)
        .flat_map(|assigned| assigned.partitions.iter().copied())
        .collect()
}

/// Waits until the broker describes `group` as Stable with exactly the
/// members (by client id) and assignments in `owners`.
fn wait_group_matches(
    broker: &Broker,
    group: &str,
    topic: &str,
    owners: &BTreeMap<String, BTreeSet<i32>>,
) -> GroupSummary {
    let mut last = None;
    let matched = poll_until(REBALANCE_TIMEOUT, || {
        let summary = poll_describe_group(broker, group, topic)?;
        let assigned: BTreeMap<String, BTreeSet<i32>> = summary
            .members
            .iter()
            .map(|(client, (_, partitions))| (client.clone(), partitions.clone()))
            .collect();
        let matches = summary.state == "Stable" && &assigned == owners;
        last = Some(summary.clone());
        matches.then_some(summary)
    });
    let summary = matched.unwrap_or_else(|| {
        panic!(
            "the broker did not describe {group} as Stable with {owners:?} within \
             {REBALANCE_TIMEOUT:?}; last description: {last:?}"
        )
    });
    assert_eq!(summary.protocol_type, "consumer", "{summary:?}");
    assert!(!summary.protocol.is_empty(), "{summary:?}");
    summary
}

/// The group's committed offsets (OffsetFetch) for every partition of
/// `topic`; partitions without one are left out.
fn committed_offsets(broker: &Broker, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    let observer = observer(broker, group);
    let mut list = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
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
                "{group}: committed offset {other:?} for partition {}",
                element.partition()
            ),
        })
        .collect()
}

/// The group's lag per partition: high watermark − committed offset.
fn lag(broker: &Broker, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    let committed = committed_offsets(broker, group, topic);
    let observer = observer(broker, group);
    (0..PARTITIONS)
        .map(|partition| {
            let (_, high) = observer
                .fetch_watermarks(topic, partition, CLIENT_TIMEOUT)
                .unwrap_or_else(|error| panic!("watermarks of {topic}-{partition}: {error}"));
            let committed = committed.get(&partition).copied().unwrap_or(0);
            (partition, high - committed)
        })
        .collect()
}

fn uniform(value: i64) -> BTreeMap<i32, i64> {
    (0..PARTITIONS)
        .map(|partition| (partition, value))
        .collect()
}

// ---------------------------------------------------------------------------
// kcat as a member process
// ---------------------------------------------------------------------------

/// kcat's path, or `None` if the test is to be skipped.
fn kcat() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("kcat"))
            .find(|candidate| candidate.is_file())
    });
    match found {
        Some(path) => Some(path),
        None if std::env::var("RILL_SKIP_KCAT").as_deref() == Ok("1") => {
            eprintln!("kcat is not on PATH; skipped because RILL_SKIP_KCAT=1");
            None
        }
        None => panic!(
            "kcat is not on PATH: install it (`apt-get install -y kcat`) or set \
             RILL_SKIP_KCAT=1 to skip this test"
        ),
    }
}

/// A `kcat -G` process: librdkafka's balanced consumer in a process of its
/// own, printing `<partition> <offset> <payload>` per record.
#[derive(Debug)]
struct KcatMember {
    child: Option<Child>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl KcatMember {
    fn start(kcat: &PathBuf, broker: &Broker, client_id: &str, group: &str, topic: &str) -> Self {
        let mut child = Command::new(kcat)
            .arg("-b")
            .arg(broker.bootstrap())
            .arg("-G")
            .arg(group)
            .args(["-X", &format!("client.id={client_id}")])
            .args(["-X", &format!("session.timeout.ms={SESSION_TIMEOUT_MS}")])
            .args([
                "-X",
                &format!("heartbeat.interval.ms={HEARTBEAT_INTERVAL_MS}"),
            ])
            // Nothing committed: whoever takes its partitions over starts
            // from the beginning.
            .args(["-X", "enable.auto.commit=false"])
            .args(["-X", "auto.offset.reset=earliest"])
            .args(["-f", "%p %o %s\\n", "-u"])
            .arg(topic)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kcat -G");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        for (pipe, lines) in [
            (
                Box::new(child.stdout.take().expect("kcat stdout"))
                    as Box<dyn std::io::Read + Send>,
                Arc::clone(&stdout),
            ),
            (
                Box::new(child.stderr.take().expect("kcat stderr")),
                Arc::clone(&stderr),
            ),
        ] {
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    lock(&lines).push(line);
                }
            });
        }
        KcatMember {
            child: Some(child),
            stdout,
            stderr,
        }
    }

    /// (partition, offset) → payload of every record kcat printed.
    fn printed(&self) -> Produced {
        lock(&self.stdout)
            .iter()
            .filter_map(|line| {
                let mut fields = line.splitn(3, ' ');
                let partition = fields.next()?.parse().ok()?;
                let offset = fields.next()?.parse().ok()?;
                Some(((partition, offset), fields.next()?.to_string()))
            })
            .collect()
    }

    fn stderr(&self) -> String {
        lock(&self.stderr).join("\n")
    }

    /// SIGKILL: the process ends without a LeaveGroup or anything else.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("kcat is running");
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "kcat had exited already ({status}); stderr:\n{}",
                self.stderr()
            );
        }
        child.kill().expect("SIGKILL kcat");
        child.wait().expect("reap kcat");
    }
}

impl Drop for KcatMember {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Three members share six partitions, a fourth joins, one leaves cleanly:
/// at every step each partition has exactly one owner, the broker's view of
/// the group agrees with the members', and every record is processed
/// exactly once, by its partition's owner, from where the group left off.
#[test]
fn members_share_partitions_and_move_them_on_join_and_leave() {
    let broker = Broker::start_new_with_args(GROUP_BROKER_ARGS);
    let (group, topic) = ("basic-group", "basic-topic");
    create_topic(&broker, topic);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    // A session timeout longer than every wait here: if a leaving member's
    // LeaveGroup were ignored, its partitions would stay put past the wait,
    // and the test would fail.
    let session = [("session.timeout.ms", "30000")];
    let spec = |name| MemberSpec {
        name,
        group,
        topic,
        settings: &session,
    };

    let m1 = Member::start(&broker, &spec("member-1"), &ledger);
    let m2 = Member::start(&broker, &spec("member-2"), &ledger);
    let m3 = Member::start(&broker, &spec("member-3"), &ledger);
    let owners = wait_balanced(&[&m1, &m2, &m3], "three members");
    for (name, partitions) in &owners {
        assert_eq!(
            partitions.len(),
            2,
            "{name} of three holds two of six: {owners:?}"
        );
    }
    wait_group_matches(&broker, group, topic, &owners);

    let mark = processed_count(&ledger);
    let produced = produce(&broker, topic, 20, "first");
    let processed = wait_processed(&ledger, mark, &produced, &[&m1, &m2, &m3]);
    assert_processed_once(&processed, &produced, &owners);
    assert_eq!(first_offsets(&processed), uniform(0));

    // A fourth member: 6 partitions over 4 members is 2, 2, 1, 1.
    let m4 = Member::start(&broker, &spec("member-4"), &ledger);
    let owners = wait_balanced(&[&m1, &m2, &m3, &m4], "a fourth member joined");
    let mut sizes: Vec<usize> = owners.values().map(BTreeSet::len).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [1, 1, 2, 2], "{owners:?}");
    wait_group_matches(&broker, group, topic, &owners);
    let mark = processed_count(&ledger);
    let produced = produce(&broker, topic, 20, "second");
    let processed = wait_processed(&ledger, mark, &produced, &[&m1, &m2, &m3, &m4]);
    assert_processed_once(&processed, &produced, &owners);
    // Every partition continues from the first round's commits.
    assert_eq!(first_offsets(&processed), uniform(20));

    // member-2 leaves cleanly; its partitions go to the others.
    m2.close();
    let owners = wait_balanced(&[&m1, &m3, &m4], "member-2 left");
    for (name, partitions) in &owners {
        assert!(
            partitions.len() == 2,
            "{name} of three holds two of six after member-2 left: {owners:?}"
        );
    }
    let summary = wait_group_matches(&broker, group, topic, &owners);
    assert!(!summary.members.contains_key("member-2"), "{summary:?}");
    let mark = processed_count(&ledger);
    let produced = produce(&broker, topic, 20, "third");
    let processed = wait_processed(&ledger, mark, &produced, &[&m1, &m3, &m4]);
    assert_processed_once(&processed, &produced, &owners);
    assert_eq!(first_offsets(&processed), uniform(40));
    assert_no_violations(&ledger);
    assert_eq!(committed_offsets(&broker, group, topic), uniform(60));

    m1.close();
    m3.close();
    m4.close();
    let processed = lock(&ledger).processed.len();
    assert_eq!(
        processed,
        3 * 20 * PARTITIONS as usize,
        "nothing processed twice"
    );
}

/// A member process killed with SIGKILL sends nothing more: once its
/// session times out, the group rebalances without it and the records in
/// its partitions, produced after it died, are processed by the others.
#[test]
fn killed_member_process_partitions_move_after_session_timeout() {
    let Some(kcat) = kcat() else { return };
    let broker = Broker::start_new_with_args(GROUP_BROKER_ARGS);
    let (group, topic) = ("kill-group", "kill-topic");
    create_topic(&broker, topic);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let spec = |name| MemberSpec {
        name,
        group,
        topic,
        settings: &[],
    };
    let m1 = Member::start(&broker, &spec("member-1"), &ledger);
    let m2 = Member::start(&broker, &spec("member-2"), &ledger);
    let mut doomed = KcatMember::start(&kcat, &broker, "kcat-member", group, topic);

    // Three members: the broker lists kcat with the partitions the
    // in-process members do not hold.
    let in_process = poll_until(REBALANCE_TIMEOUT, || {
        let summary = poll_describe_group(&broker, group, topic)?;
        let kcat_partitions = summary.members.get("kcat-member")?.1.clone();
        let (a, b) = (m1.assignment(), m2.assignment());
        let balanced = summary.state == "Stable"
            && summary.members.len() == 3
            && !a.is_empty()
            && !b.is_empty()
            && !kcat_partitions.is_empty()
            && a.is_disjoint(&b)
            && a.len() + b.len() + kcat_partitions.len() == PARTITIONS as usize
            && a.iter()
                .chain(&b)
                .chain(&kcat_partitions)
                .copied()
                .collect::<BTreeSet<_>>()
                == all_partitions();
        balanced.then_some((a, b, kcat_partitions))
    });
    let (a, b, kcat_partitions) = in_process.unwrap_or_else(|| {
        panic!(
            "two members and kcat did not share the partitions within {REBALANCE_TIMEOUT:?}:\n\
             {}\ngroup: {:?}\nkcat stderr:\n{}",
            describe_members(&[&m1, &m2]),
            try_describe_group(&broker, group, topic),
            doomed.stderr()
        )
    });
    let owners = BTreeMap::from([("member-1".to_string(), a), ("member-2".to_string(), b)]);

    // Before the kill, kcat consumes its partitions and the others theirs.
    let mark = processed_count(&ledger);
    let before = produce(&broker, topic, 10, "before");
    let (theirs, ours): (Produced, Produced) = before
        .into_iter()
        .partition(|((partition, _), _)| kcat_partitions.contains(partition));
    let processed = wait_processed(&ledger, mark, &ours, &[&m1, &m2]);
    assert_processed_once(&processed, &ours, &owners);
    let printed = poll_until(KCAT_TIMEOUT, || {
        let printed = doomed.printed();
        theirs
            .keys()
            .all(|key| printed.contains_key(key))
            .then_some(printed)
    })
    .unwrap_or_else(|| {
        panic!(
            "kcat did not print the records of its partitions {kcat_partitions:?} within \
             {KCAT_TIMEOUT:?}; printed {:?}; stderr:\n{}",
            doomed.printed(),
            doomed.stderr()
        )
    });
    for (key, payload) in &theirs {
        assert_eq!(&printed[key], payload, "kcat printed {key:?}");
    }

    // The kill, and records for kcat's partitions, which nobody reads
    // until the group has rebalanced without it.
    doomed.kill();
    let mark = processed_count(&ledger);
    let after = produce_to(&broker, topic, &kcat_partitions, 10, "after");
    let owners = wait_balanced(&[&m1, &m2], "kcat was killed");
    for (name, partitions) in &owners {
        assert_eq!(
            partitions.len(),
            3,
            "{name} of two holds three of six: {owners:?}"
        );
    }
    let summary = wait_group_matches(&broker, group, topic, &owners);
    assert!(!summary.members.contains_key("kcat-member"), "{summary:?}");

    // kcat committed nothing, so its partitions are read again from the
    // start: what it had printed, and what was produced after it died.
    let mut expected: Produced = theirs;
    expected.extend(after);
    let processed = wait_processed(&ledger, mark, &expected, &[&m1, &m2]);
    assert_processed_once(&processed, &expected, &owners);
    // The partitions the in-process members held all along went on from
    // their commits.
    let mark = processed_count(&ledger);
    let later = produce(&broker, topic, 10, "later");
    let processed = wait_processed(&ledger, mark, &later, &[&m1, &m2]);
    assert_processed_once(&processed, &later, &owners);
    let firsts = first_offsets(&processed);
    for partition in 0..PARTITIONS {
        let expected = if kcat_partitions.contains(&partition) {
            20
        } else {
            10
        };
        assert_eq!(
            firsts[&partition], expected,
            "partition {partition}: {firsts:?}"
        );
    }
    assert_no_violations(&ledger);
}

/// With cooperative-sticky, members that join take partitions away from
/// the first member one at a time: it is never asked to give up everything,
/// and the partitions it keeps stay assigned throughout.
#[test]
fn cooperative_sticky_rebalances_are_incremental() {
    let broker = Broker::start_new_with_args(GROUP_BROKER_ARGS);
    let (group, topic) = ("cooperative-group", "cooperative-topic");
    create_topic(&broker, topic);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let cooperative = [("partition.assignment.strategy", "cooperative-sticky")];
    let spec = |name| MemberSpec {
        name,
        group,
        topic,
        settings: &cooperative,
    };

    let m1 = Member::start(&broker, &spec("member-1"), &ledger);
    let owners = wait_balanced(&[&m1], "one member");
    assert_eq!(owners["member-1"], all_partitions());
    let summary = wait_group_matches(&broker, group, topic, &owners);
    assert_eq!(summary.protocol, "cooperative-sticky", "{summary:?}");
    let mut produced = produce(&broker, topic, 10, "alone");

    let m2 = Member::start(&broker, &spec("member-2"), &ledger);
    let owners = wait_balanced(&[&m1, &m2], "a second member joined");
    for (name, partitions) in &owners {
        assert_eq!(partitions.len(), 3, "{name}: {owners:?}");
    }
    wait_group_matches(&broker, group, topic, &owners);
    produced.extend(produce(&broker, topic, 10, "two"));

    let m3 = Member::start(&broker, &spec("member-3"), &ledger);
    let owners = wait_balanced(&[&m1, &m2, &m3], "a third member joined");
    for (name, partitions) in &owners {
        assert_eq!(partitions.len(), 2, "{name}: {owners:?}");
    }
    wait_group_matches(&broker, group, topic, &owners);
    produced.extend(produce(&broker, topic, 10, "three"));

    for member in [&m1, &m2, &m3] {
        assert_eq!(
            lock(&member.view).protocol,
            "Cooperative",
            "{}",
            member.describe()
        );
    }

    // member-1's rebalances, replayed: each revocation takes away some of
    // what it holds and never all of it; the partitions it holds at the end
    // are never revoked, and every assignment it saw (sampled after each
    // poll) includes them once it had them.
    let kept = owners["member-1"].clone();
    let events = m1.events();
    let mut held = BTreeSet::new();
    for event in &events {
        match event {
            RebalanceEvent::Assign(partitions) => {
                assert!(
                    held.is_disjoint(partitions),
                    "member-1 was assigned partitions it held: {events:?}"
                );
                held.extend(partitions);
            }
            RebalanceEvent::Revoke(partitions) => {
                assert!(
                    partitions.is_subset(&held),
                    "member-1 had partitions revoked it did not hold: {events:?}"
                );
                assert!(
                    partitions.len() < held.len(),
                    "member-1 had everything revoked at once: {events:?}"
                );
                assert!(
                    partitions.is_disjoint(&kept),
                    "member-1 had partitions it kept revoked: {events:?}"
                );
                held.retain(|partition| !partitions.contains(partition));
            }
            RebalanceEvent::Error(error) => panic!("member-1 rebalance error {error}: {events:?}"),
        }
    }
    assert_eq!(held, kept, "member-1's callbacks add up to its assignment");
    let history = m1.history();
    let first_full = history
        .iter()
        .position(|assignment| assignment == &all_partitions())
        .unwrap_or_else(|| panic!("member-1 never held all partitions: {history:?}"));
    for assignment in &history[first_full..] {
        assert!(
            kept.is_subset(assignment),
            "member-1 lost a partition it kept: {history:?}"
        );
    }
    // Two joins took partitions away: six, then three, then two.
    let sizes: Vec<usize> = history[first_full..].iter().map(BTreeSet::len).collect();
    assert_eq!(sizes, [6, 3, 2], "member-1's assignments: {history:?}");
    // member-2, too, kept some of its partitions when member-3 came.
    let history = m2.history();
    let m2_kept = owners["member-2"].clone();
    let m2_first = history
        .iter()
        .position(|assignment| !assignment.is_empty())
        .expect("member-2 was assigned something");
    for assignment in &history[m2_first..] {
        assert!(m2_kept.is_subset(assignment), "member-2: {history:?}");
    }

    // Whatever moved, nothing committed was processed again and nothing
    // was skipped.
    wait_processed(&ledger, 0, &produced, &[&m1, &m2, &m3]);
    assert_no_violations(&ledger);
}

/// Static members (`group.instance.id`): each in turn closes and comes
/// back with the same instance id within its session timeout (so the
/// group's leader does too, whichever member that is). It gets the same
/// partitions back, and the others never rebalance: no callbacks, the same
/// member ids, the same assignments.
#[test]
fn static_members_rejoin_without_rebalance() {
    const NAMES: [&str; 3] = ["static-0", "static-1", "static-2"];
    let broker = Broker::start_new_with_args(GROUP_BROKER_ARGS);
    let (group, topic) = ("static-group", "static-topic");
    create_topic(&broker, topic);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    // Far longer than a close and a return take, and than every wait here:
    // a member the coordinator dropped would show as a rebalance.
    let settings: Vec<[(&str, &str); 2]> = NAMES
        .iter()
        .map(|name| {
            [
                ("group.instance.id", *name),
                ("session.timeout.ms", "30000"),
            ]
        })
        .collect();
    let spec = |i: usize| MemberSpec {
        name: NAMES[i],
        group,
        topic,
        settings: &settings[i],
    };
    let mut members: Vec<Member> = (0..NAMES.len())
        .map(|i| Member::start(&broker, &spec(i), &ledger))
        .collect();
    let owners = wait_balanced(&members.iter().collect::<Vec<_>>(), "three static members");
    let mut described = wait_group_matches(&broker, group, topic, &owners);
    let mark = processed_count(&ledger);
    let produced = produce(&broker, topic, 10, "first");
    let processed = wait_processed(
        &ledger,
        mark,
        &produced,
        &members.iter().collect::<Vec<_>>(),
    );
    assert_processed_once(&processed, &produced, &owners);

    for (round, returning) in [1, 0, 2].into_iter().enumerate() {
        let name = NAMES[returning];
        let others: Vec<usize> = (0..NAMES.len()).filter(|i| *i != returning).collect();
        let others_before: Vec<_> = others
            .iter()
            .map(|&i| (members[i].events(), members[i].history()))
            .collect();

        // The member closes (a static member sends no LeaveGroup) and a
        // new client with its instance id takes its place.
        members.remove(returning).close();
        members.insert(returning, Member::start(&broker, &spec(returning), &ledger));
        let all: Vec<&Member> = members.iter().collect();
        let owners_now = wait_balanced(&all, &format!("{name} came back"));
        assert_eq!(
            owners_now, owners,
            "{name} back: everyone holds what they held"
        );
        let after = wait_group_matches(&broker, group, topic, &owners);
        for &i in &others {
            assert_eq!(
                after.members[NAMES[i]].0, described.members[NAMES[i]].0,
                "{name} back: {} kept its member id",
                NAMES[i]
            );
        }
        assert_ne!(
            after.members[name].0, described.members[name].0,
            "{name} back: the new client got a member id of its own"
        );

        // The group goes on where it was: the returning member continues
        // from its previous self's commits.
        let mark = processed_count(&ledger);
        let produced = produce(&broker, topic, 10, &format!("round-{round}"));
        let processed = wait_processed(&ledger, mark, &produced, &all);
        assert_processed_once(&processed, &produced, &owners);
        assert_eq!(first_offsets(&processed), uniform(10 * (round as i64 + 1)));
        // Several heartbeat intervals: a rebalance the return had started
        // would have reached the others by now.
        thread::sleep(Duration::from_millis(4 * HEARTBEAT_INTERVAL_MS));
        let others_after: Vec<_> = others
            .iter()
            .map(|&i| (members[i].events(), members[i].history()))
            .collect();
        assert_eq!(
            others_after, others_before,
            "{name} back: the others saw no rebalance callback and no change of assignment"
        );
        assert_eq!(
            members[returning].events(),
            [RebalanceEvent::Assign(owners[name].clone())],
            "{name} back: assigned its partitions, once"
        );
        let last = wait_group_matches(&broker, group, topic, &owners);
        assert_eq!(
            last.members, after.members,
            "{name} back: no member id changed since"
        );
        described = last;
    }
    assert_no_violations(&ledger);
    for member in members {
        member.close();
    }
}

/// Manual commits after processing, across a clean broker restart and a
/// broker crash, with members closed and with members running: each phase
/// resumes exactly at the committed offsets, the committed offsets and the
/// lag the broker reports are right, and over all phases every record is
/// processed, none that was committed again.
#[test]
fn manual_commits_survive_broker_restart_and_crash() {
    let mut broker = Broker::start_new_with_args(GROUP_BROKER_ARGS);
    let (group, topic) = ("commit-group", "commit-topic");
    create_topic(&broker, topic);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let spec = |name| MemberSpec {
        name,
        group,
        topic,
        settings: &[],
    };
    let mut all_produced = Produced::new();

    // Phase 1: two members process 50 records per partition.
    let a1 = Member::start(&broker, &spec("a-1"), &ledger);
    let a2 = Member::start(&broker, &spec("a-2"), &ledger);
    let owners = wait_balanced(&[&a1, &a2], "phase 1");
    let summary = wait_group_matches(&broker, group, topic, &owners);
    assert_eq!(summary.members.len(), 2);
    let produced = produce(&broker, topic, 50, "one");
    let processed = wait_processed(&ledger, 0, &produced, &[&a1, &a2]);
    assert_processed_once(&processed, &produced, &owners);
    all_produced.extend(produced);
    assert_eq!(committed_offsets(&broker, group, topic), uniform(50));
    assert_eq!(lag(&broker, group, topic), uniform(0));
    a1.close();
    a2.close();

    // Phase 2: 20 more per partition while nobody consumes; a clean restart.
    let produced = produce(&broker, topic, 20, "two");
    assert_eq!(lag(&broker, group, topic), uniform(20));
    broker.restart();
    assert_eq!(
        committed_offsets(&broker, group, topic),
        uniform(50),
        "committed offsets after a clean restart"
    );
    assert_eq!(lag(&broker, group, topic), uniform(20));
    let summary = poll_until(CLIENT_TIMEOUT, || {
        poll_describe_group(&broker, group, topic)
    })
    .expect("the group is listed after the restart");
    assert_eq!(summary.state, "Empty", "{summary:?}");
    assert!(summary.members.is_empty(), "{summary:?}");

    let mark = processed_count(&ledger);
    let b1 = Member::start(&broker, &spec("b-1"), &ledger);
    let b2 = Member::start(&broker, &spec("b-2"), &ledger);
    wait_balanced(&[&b1, &b2], "phase 2");
    let processed = wait_processed(&ledger, mark, &produced, &[&b1, &b2]);
    assert_processed_once(&processed, &produced, &ever_held(&[&b1, &b2]));
    assert_eq!(
        first_offsets(&processed),
        uniform(50),
        "resumed at the commits"
    );
    all_produced.extend(produced);
    assert_eq!(committed_offsets(&broker, group, topic), uniform(70));

    // Phase 3: the broker crashes under running members and comes back;
    // they go on with what is produced next. Their commits may fail while
    // the broker is away, so this phase checks the rule (nothing committed
    // is processed again) rather than exactly once.
    broker.kill();
    broker.start();
    let mark = processed_count(&ledger);
    let produced = produce(&broker, topic, 20, "three");
    let processed = wait_processed(&ledger, mark, &produced, &[&b1, &b2]);
    assert_eq!(
        first_offsets(&processed),
        uniform(70),
        "resumed at the commits"
    );
    all_produced.extend(produced);
    let committed = poll_until(CONSUME_TIMEOUT, || {
        let committed = committed_offsets(&broker, group, topic);
        (committed == uniform(90)).then_some(committed)
    });
    assert!(
        committed.is_some(),
        "the members committed everything: {:?}; commit errors {:?}",
        committed_offsets(&broker, group, topic),
        lock(&ledger).commit_errors
    );
    b1.close();
    b2.close();

    // Phase 4: records nobody has processed yet, then a crash with no
    // member running; new members take up exactly where the commits are.
    let produced = produce(&broker, topic, 20, "four");
    assert_eq!(lag(&broker, group, topic), uniform(20));
    broker.kill();
    broker.start();
    assert_eq!(
        committed_offsets(&broker, group, topic),
        uniform(90),
        "committed offsets after a crash"
    );
    assert_eq!(lag(&broker, group, topic), uniform(20));
    let mark = processed_count(&ledger);
    let c1 = Member::start(&broker, &spec("c-1"), &ledger);
    let c2 = Member::start(&broker, &spec("c-2"), &ledger);
    let owners = wait_balanced(&[&c1, &c2], "phase 4");
    let summary = wait_group_matches(&broker, group, topic, &owners);
    assert_eq!(summary.members.len(), 2);
    let processed = wait_processed(&ledger, mark, &produced, &[&c1, &c2]);
    assert_processed_once(&processed, &produced, &ever_held(&[&c1, &c2]));
    assert_eq!(
        first_offsets(&processed),
        uniform(90),
        "resumed at the commits"
    );
    all_produced.extend(produced);
    assert_eq!(committed_offsets(&broker, group, topic), uniform(110));
    assert_eq!(lag(&broker, group, topic), uniform(0));
    c1.close();
    c2.close();

    // Over all phases: every record processed, with its payload; nothing
    // processed after the group had committed past it.
    assert_no_violations(&ledger);
    let ledger = lock(&ledger);
    let mut seen = BTreeSet::new();
    for record in &ledger.processed {
        let key = (record.partition, record.offset);
        assert_eq!(
            all_produced.get(&key),
            Some(&record.payload),
            "processed a record that was not produced: {record:?}"
        );
        seen.insert(key);
    }
    let produced: BTreeSet<(i32, i64)> = all_produced.keys().copied().collect();
    assert_eq!(seen, produced, "every produced record was processed");
    let again = ledger.processed.len() - seen.len();
    if again > 0 {
        eprintln!(
            "{again} records were processed twice after failed commits: {:?}",
            ledger.commit_errors
        );
    }
}
