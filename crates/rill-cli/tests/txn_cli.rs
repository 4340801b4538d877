//! `rill txn` against a `rill serve` process, with transactions made by a
//! real transactional client (librdkafka): a committed one, an aborted one
//! and a hanging one (begun, written, never ended). The commands must show
//! the hanging transaction as Kafka's `kafka-transactions.sh` would, and
//! `rill txn abort` must end it in its partition so that read_committed
//! consumers read past it without its records. The transaction metrics of
//! `/metrics` are checked along the way: completions counted, open
//! transactions, and how far the last stable offset trails. On a cluster,
//! `rill txn list` merges what every coordinator holds.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::Cluster;
use common::output::{field, table};
use common::{poll_until, rill_binary, run_to_exit, Broker, Finished};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// How long one `rill` command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client call (init, commit, flush) or a wait for the broker
/// to catch up may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
const TOPIC: &str = "orders";

/// `rill ARGS` against `bootstrap` (through RILL_BOOTSTRAP, as a user
/// would set it).
fn rill(bootstrap: &str, args: &[&str]) -> Finished {
    let mut command = Command::new(rill_binary());
    command
        .args(args)
        .env("RILL_BOOTSTRAP", bootstrap)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    run_to_exit(command, COMMAND_TIMEOUT)
}

/// `rill ARGS`, which must succeed; its stdout.
fn ok(bootstrap: &str, args: &[&str]) -> String {
    let finished = rill(bootstrap, args);
    assert!(
        finished.status.success(),
        "rill {args:?} failed: {}",
        finished.stderr
    );
    finished.stdout
}

/// `rill ARGS`, which must fail with exit code 1 and a one-line `rill: `
/// error containing `expected`; the error line.
fn fails(bootstrap: &str, args: &[&str], expected: &str) -> String {
    let finished = rill(bootstrap, args);
    assert_eq!(
        finished.status.code(),
        Some(1),
        "rill {args:?}: exit code; stdout:\n{}\nstderr:\n{}",
        finished.stdout,
        finished.stderr
    );
    let error = finished
        .stderr
        .lines()
        .find(|line| line.starts_with("rill: "))
        .unwrap_or_else(|| panic!("no 'rill: ' line in stderr:\n{}", finished.stderr))
        .to_string();
    assert!(
        error.contains(expected),
        "{error:?} does not contain {expected:?}"
    );
    assert!(!finished.stderr.contains("panicked"), "{}", finished.stderr);
    error
}

/// The value of the sample `name{labels}` in a scrape, if there is one
/// (label values here have no quotes or commas).
fn metric(broker: &Broker, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (status, body) = broker.http_get("/metrics");
    assert_eq!(status, 200, "{body}");
    let wanted: BTreeMap<&str, &str> = labels.iter().copied().collect();
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            let found: BTreeMap<&str, &str> = series_labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k, v.trim_matches('"')))
                .collect();
            (series_name == name && found == wanted).then(|| value.parse().expect("a number"))
        })
}

/// Waits (bounded) until the metric has `expected`; fails with what it had.
fn wait_metric(broker: &Broker, name: &str, labels: &[(&str, &str)], expected: f64) {
    let reached = poll_until(CLIENT_TIMEOUT, || {
        (metric(broker, name, labels) == Some(expected)).then_some(())
    });
    assert!(
        reached.is_some(),
        "{name}{labels:?} is {:?}, not {expected}",
        metric(broker, name, labels)
    );
}

/// A producer with `transactional.id` `id`, its transactions initialised.
fn transactional_producer(bootstrap: &str, id: &str) -> BaseProducer {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", id)
        // Long enough that the coordinator does not abort the hanging
        // transaction itself while the test runs.
        .set("transaction.timeout.ms", "600000")
        .create()
        .expect("create a transactional producer");
    producer
        .init_transactions(CLIENT_TIMEOUT)
        .unwrap_or_else(|error| panic!("init_transactions of '{id}': {error}"));
    producer
}

/// Sends `values` to partition 0 and waits until all are delivered.
fn send(producer: &BaseProducer, values: &[&str]) {
    for value in values {
        producer
            .send(BaseRecord::<(), _>::to(TOPIC).partition(0).payload(*value))
            .map_err(|(error, _)| error)
            .expect("queue a record");
    }
    producer.flush(CLIENT_TIMEOUT).expect("records delivered");
}

/// Every record a read_committed consumer reads from partition 0 until it
/// has read `last` (bounded).
fn read_committed_until(broker: &Broker, last: &str) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "txn-cli-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("create a consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(TOPIC, 0, Offset::Beginning)
        .expect("assignment");
    consumer.assign(&assignment).expect("assign");
    let mut read = Vec::new();
    let done = poll_until(CLIENT_TIMEOUT, || {
        while let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("a record");
            let value = String::from_utf8_lossy(message.payload().unwrap_or_default()).to_string();
            read.push(value);
        }
        read.iter().any(|value| value == last).then_some(())
    });
    assert!(done.is_some(), "read {read:?} and never {last:?}");
    read
}

#[test]
fn a_hanging_transaction_is_found_and_aborted() {
    let broker = Broker::start_new();
    let bootstrap = broker.bootstrap();
    ok(&bootstrap, &["topic", "create", TOPIC, "--partitions", "1"]);

    // Offsets 0-1 and the commit marker at 2.
    let committer = transactional_producer(&bootstrap, "committer");
    committer.begin_transaction().expect("begin");
    send(&committer, &["c1", "c2"]);
    committer
        .commit_transaction(CLIENT_TIMEOUT)
        .expect("commit");
    // Offset 3 and the abort marker at 4.
    let aborter = transactional_producer(&bootstrap, "aborter");
    aborter.begin_transaction().expect("begin");
    send(&aborter, &["a1"]);
    aborter.abort_transaction(CLIENT_TIMEOUT).expect("abort");
    // Offsets 5-7, never ended: the last stable offset stays at 5.
    let hanger = transactional_producer(&bootstrap, "hanger");
    hanger.begin_transaction().expect("begin");
    send(&hanger, &["h1", "h2", "h3"]);

    // The coordinator counts completions once their markers are written,
    // after EndTxn is answered: waited for.
    wait_metric(&broker, "rill_transactions_committed_total", &[], 1.0);
    wait_metric(&broker, "rill_transactions_aborted_total", &[], 1.0);
    wait_metric(&broker, "rill_transactions_ongoing", &[], 1.0);
    let partition = [("partition", "0"), ("topic", TOPIC)];
    wait_metric(&broker, "rill_partition_lso_lag", &partition, 3.0);

    // list: every transactional id, with its coordinator (the one node).
    let listed = table(&ok(&bootstrap, &["txn", "list"]), "TRANSACTIONAL-ID");
    let states: BTreeMap<&str, &str> = listed
        .iter()
        .map(|row| (row["TRANSACTIONAL-ID"].as_str(), row["STATE"].as_str()))
        .collect();
    assert_eq!(
        states,
        BTreeMap::from([
            ("aborter", "CompleteAbort"),
            ("committer", "CompleteCommit"),
            ("hanger", "Ongoing"),
        ]),
        "{listed:?}"
    );
    assert!(
        listed.iter().all(|row| row["COORDINATOR"] == "1"),
        "{listed:?}"
    );
    let producer_id = |id: &str| -> String {
        listed
            .iter()
            .find(|row| row["TRANSACTIONAL-ID"] == id)
            .map(|row| row["PRODUCER-ID"].clone())
            .expect("listed")
    };
    let hanging_id = producer_id("hanger");
    let ongoing = table(
        &ok(&bootstrap, &["txn", "list", "--state", "Ongoing"]),
        "TRANSACTIONAL-ID",
    );
    assert_eq!(ongoing.len(), 1, "{ongoing:?}");
    assert_eq!(ongoing[0]["TRANSACTIONAL-ID"], "hanger");
    let by_producer = table(
        &ok(
            &bootstrap,
            &["txn", "list", "--producer-id", &producer_id("committer")],
        ),
        "TRANSACTIONAL-ID",
    );
    assert_eq!(by_producer.len(), 1, "{by_producer:?}");
    assert_eq!(by_producer[0]["TRANSACTIONAL-ID"], "committer");

    // describe: the hanging transaction's producer, state and partition.
    let described = ok(&bootstrap, &["txn", "describe", "hanger"]);
    assert_eq!(field(&described, "coordinator"), "1", "{described}");
    assert_eq!(field(&described, "producer-id"), hanging_id, "{described}");
    assert_eq!(field(&described, "producer-epoch"), "0", "{described}");
    assert_eq!(field(&described, "state"), "Ongoing", "{described}");
    assert_eq!(field(&described, "timeout-ms"), "600000", "{described}");
    assert_ne!(field(&described, "started"), "-", "{described}");
    let partitions = table(&described, "TOPIC");
    assert_eq!(partitions.len(), 1, "{described}");
    assert_eq!(partitions[0]["TOPIC"], TOPIC);
    assert_eq!(partitions[0]["PARTITION"], "0");
    fails(
        &bootstrap,
        &["txn", "describe", "no-such-id"],
        "transactional id 'no-such-id' does not exist",
    );

    // describe-producers: the hanging producer's transaction began at 5.
    let producers_args = [
        "txn",
        "describe-producers",
        "--topic",
        TOPIC,
        "--partition",
        "0",
    ];
    let producers = table(&ok(&bootstrap, &producers_args), "PRODUCER-ID");
    let start_offsets: BTreeMap<String, String> = producers
        .iter()
        .map(|row| (row["PRODUCER-ID"].clone(), row["TXN-START-OFFSET"].clone()))
        .collect();
    assert_eq!(
        start_offsets,
        BTreeMap::from([
            (producer_id("committer"), "-".to_string()),
            (producer_id("aborter"), "-".to_string()),
            (hanging_id.clone(), "5".to_string()),
        ]),
        "{producers:?}"
    );

    // abort: producers with nothing to abort are refused, with the reason.
    let abort = |producer: &str| -> Vec<String> {
        [
            "txn",
            "abort",
            "--topic",
            TOPIC,
            "--partition",
            "0",
            "--producer-id",
            producer,
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect()
    };
    fn args(owned: &[String]) -> Vec<&str> {
        owned.iter().map(String::as_str).collect()
    }
    fails(
        &bootstrap,
        &args(&abort("987654")),
        "producer 987654 is not known in partition 0 of topic 'orders'",
    );
    fails(
        &bootstrap,
        &args(&abort(&producer_id("committer"))),
        "has no open transaction in partition 0 of topic 'orders'",
    );
    fails(
        &bootstrap,
        &[
            "txn",
            "abort",
            "--topic",
            TOPIC,
            "--partition",
            "0",
            "--start-offset",
            "4",
        ],
        "no open transaction began at offset 4 of partition 0 of topic 'orders'",
    );
    fails(
        &bootstrap,
        &[
            "txn",
            "abort",
            "--topic",
            "no-such-topic",
            "--partition",
            "0",
            "--producer-id",
            "1",
        ],
        "topic 'no-such-topic' does not exist",
    );

    // The hanging transaction is aborted in its partition.
    let aborted = ok(&bootstrap, &args(&abort(&hanging_id)));
    assert!(
        aborted.contains(&format!(
            "aborted the transaction of producer {hanging_id} (epoch 0, coordinator epoch 0), which began at offset 5"
        )),
        "{aborted}"
    );
    wait_metric(&broker, "rill_partition_lso_lag", &partition, 0.0);
    let producers = table(&ok(&bootstrap, &producers_args), "PRODUCER-ID");
    assert!(
        producers.iter().all(|row| row["TXN-START-OFFSET"] == "-"),
        "{producers:?}"
    );

    // A read_committed consumer reads past it, without its records (nor
    // the aborted transaction's).
    let plain: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("create a producer");
    send(&plain, &["after"]);
    assert_eq!(
        read_committed_until(&broker, "after"),
        ["c1", "c2", "after"]
    );

    // The coordinator still had it open: a new producer of the id fences
    // the old one, and the coordinator's own abort marker (epoch 1) follows
    // the one written by hand. A marker of the old epoch is then refused.
    let successor = transactional_producer(&bootstrap, "hanger");
    wait_metric(&broker, "rill_transactions_aborted_total", &[], 2.0);
    wait_metric(&broker, "rill_transactions_ongoing", &[], 0.0);
    let stale = [
        "txn",
        "abort",
        "--topic",
        TOPIC,
        "--partition",
        "0",
        "--producer-id",
        &hanging_id,
        "--producer-epoch",
        "0",
        "--coordinator-epoch",
        "0",
    ];
    fails(&bootstrap, &stale, "INVALID_PRODUCER_EPOCH");
    drop(successor);
    drop(hanger);
}

#[test]
fn txn_commands_refuse_bad_flags() {
    let broker = Broker::start_new();
    let bootstrap = broker.bootstrap();
    let usage = rill(&bootstrap, &["txn", "list", "--state", "Running"]);
    assert_eq!(usage.status.code(), Some(2), "{}", usage.stderr);
    // Neither --producer-id nor --start-offset.
    let usage = rill(
        &bootstrap,
        &["txn", "abort", "--topic", TOPIC, "--partition", "0"],
    );
    assert_eq!(usage.status.code(), Some(2), "{}", usage.stderr);
    // An epoch without the other.
    let usage = rill(
        &bootstrap,
        &[
            "txn",
            "abort",
            "--topic",
            TOPIC,
            "--partition",
            "0",
            "--producer-id",
            "1",
            "--producer-epoch",
            "0",
        ],
    );
    assert_eq!(usage.status.code(), Some(2), "{}", usage.stderr);
    // No transactions yet: an empty table, not an error.
    let listed = table(&ok(&bootstrap, &["txn", "list"]), "TRANSACTIONAL-ID");
    assert!(listed.is_empty(), "{listed:?}");
}

#[test]
fn list_merges_the_coordinators_of_a_cluster() {
    let cluster = Cluster::combined(3, &[]);
    let bootstrap = cluster.bootstrap();
    ok(
        &bootstrap,
        &[
            "topic",
            "create",
            TOPIC,
            "--partitions",
            "1",
            "--replication-factor",
            "3",
        ],
    );
    // The ids hash to `__transaction_state` partitions whose leaders, placed
    // round-robin, are not all one node.
    let ids: Vec<String> = (0..6).map(|i| format!("spread-{i}")).collect();
    let producers: Vec<BaseProducer> = ids
        .iter()
        .map(|id| {
            let producer = transactional_producer(&bootstrap, id);
            producer.begin_transaction().expect("begin");
            send(&producer, &[id.as_str()]);
            producer
        })
        .collect();

    let listed = table(&ok(&bootstrap, &["txn", "list"]), "TRANSACTIONAL-ID");
    let listed: BTreeMap<String, (String, String)> = listed
        .into_iter()
        .map(|row| {
            (
                row["TRANSACTIONAL-ID"].clone(),
                (row["COORDINATOR"].clone(), row["STATE"].clone()),
            )
        })
        .collect();
    assert_eq!(
        listed.keys().cloned().collect::<Vec<_>>(),
        ids,
        "{listed:?}"
    );
    for (id, (coordinator, state)) in &listed {
        assert_eq!(state, "Ongoing", "{id}");
        let described = ok(&bootstrap, &["txn", "describe", id]);
        assert_eq!(field(&described, "coordinator"), coordinator, "{described}");
        assert_eq!(field(&described, "state"), "Ongoing", "{described}");
    }
    let coordinators: BTreeSet<&String> = listed.values().map(|(c, _)| c).collect();
    assert!(
        coordinators.len() > 1,
        "every id on one coordinator: {listed:?}"
    );
    drop(producers);
}
