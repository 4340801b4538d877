//! `/metrics` of a `rill serve` process after traffic from a real client
//! (librdkafka): records in, offsets and log size, bytes out, and the lag
//! a consumer group leaves behind. (Exact counts for every metric, and the
//! exposition format's rules, are checked in-process in rill-broker's
//! `tests/metrics.rs`.)

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{poll_until, Broker};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
const TOPIC: &str = "metered";
const GROUP: &str = "metered-readers";
const RECORDS: i64 = 40;
const COMMITTED: i64 = 15;

/// One sample line: the name, the labels and the value.
type Sample = (String, BTreeMap<String, String>, f64);

/// The samples of a scrape (label values here have no quotes or commas).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            (
                name.to_string(),
                labels,
                value.parse().expect("a numeric value"),
            )
        })
        .collect()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|(n, l, _)| n == name && *l == wanted)
        .map(|(_, _, v)| *v)
}

fn scrape(broker: &Broker) -> Vec<Sample> {
    let (status, body) = broker.http_get("/metrics");
    assert_eq!(status, 200, "{body}");
    samples(&body)
}

#[test]
fn metrics_follow_a_real_clients_traffic() {
    let broker = Broker::start_new();
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", broker.bootstrap());

    // Auto-created on first use, with one partition.
    let producer: ThreadedProducer<DefaultProducerContext> = config
        .clone()
        .set("enable.idempotence", "false")
        .set("acks", "all")
        .create()
        .expect("create a producer");
    for i in 0..RECORDS {
        let value = format!("record number {i:04}");
        producer
            .send(BaseRecord::<(), _>::to(TOPIC).payload(&value))
            .map_err(|(error, _)| error)
            .expect("queue a record");
    }
    producer
        .flush(CLIENT_TIMEOUT)
        .expect("every record delivered");

    // A consumer of the group reads from the start and commits at COMMITTED.
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .create()
        .expect("create a consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(TOPIC, 0, Offset::Beginning)
        .expect("assignment");
    consumer.assign(&assignment).expect("assign");
    let mut read = 0;
    let fetched_all = poll_until(CLIENT_TIMEOUT, || {
        while let Some(message) = consumer.poll(Duration::from_millis(100)) {
            message.expect("a record");
            read += 1;
        }
        (read == RECORDS).then_some(())
    });
    assert!(fetched_all.is_some(), "read {read} of {RECORDS} records");
    let mut commit = TopicPartitionList::new();
    commit
        .add_partition_offset(TOPIC, 0, Offset::Offset(COMMITTED))
        .expect("commit list");
    consumer
        .commit(&commit, CommitMode::Sync)
        .expect("commit the offset");
    drop(consumer);

    let scraped = scrape(&broker);
    let topic = [("topic", TOPIC)];
    let partition = [("partition", "0"), ("topic", TOPIC)];
    assert_eq!(
        value(&scraped, "rill_topic_messages_in_total", &topic),
        Some(RECORDS as f64)
    );
    assert_eq!(
        value(&scraped, "rill_log_end_offset", &partition),
        Some(RECORDS as f64)
    );
    let bytes_in = value(&scraped, "rill_topic_bytes_in_total", &topic).expect("bytes in");
    assert_eq!(
        value(&scraped, "rill_log_size_bytes", &partition),
        Some(bytes_in),
        "the log holds exactly the batches produced"
    );
    let bytes_out = value(&scraped, "rill_topic_bytes_out_total", &topic).expect("bytes out");
    assert!(
        bytes_out >= bytes_in,
        "every record was read: {bytes_out} bytes out, {bytes_in} in"
    );
    let group = [("group", GROUP), ("partition", "0"), ("topic", TOPIC)];
    assert_eq!(
        value(&scraped, "rill_consumer_group_committed_offset", &group),
        Some(COMMITTED as f64)
    );
    assert_eq!(
        value(&scraped, "rill_consumer_group_lag", &group),
        Some((RECORDS - COMMITTED) as f64)
    );
    let commits: f64 = scraped
        .iter()
        .filter(|(name, labels, _)| {
            name == "rill_requests_total" && labels.get("api").is_some_and(|a| a == "OffsetCommit")
        })
        .map(|(_, _, v)| v)
        .sum();
    assert_eq!(commits, 1.0, "the one commit was counted");
    assert!(
        value(&scraped, "rill_log_flush_duration_seconds_count", &[]).is_some_and(|n| n >= 1.0),
        "acks=all made the log flush"
    );
}
