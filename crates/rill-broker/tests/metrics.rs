//! `/metrics` and `/health` on the HTTP port: known traffic moves each
//! counter by exactly what it should, the state gauges (log sizes and
//! offsets, partitions, consumer lag) match what was written, and the text
//! is well-formed exposition format, checked by a strict parser written
//! here from the format's rules (independent of the encoder rill uses).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{record_batch, str_bytes, topic_name, Client, TestBroker};
use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{GroupId, ProduceRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOPIC: &str = "metered";
const GROUP: &str = "lagging";
const OFFSETS_PARTITIONS: i32 = 3;
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const OFFSET_OUT_OF_RANGE: i16 = 1;

// ---------------------------------------------------------------------
// HTTP

struct HttpResponse {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// Sends `request` (a whole HTTP/1.1 request head) and reads the answer
/// to the end: the broker closes every connection after one answer.
async fn http(addr: std::net::SocketAddr, request: &str) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect to HTTP");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(HTTP_TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .expect("the answer and the close come in time")
        .expect("read the answer");
    let raw = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_string(),
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> HttpResponse {
    http(addr, &format!("GET {path} HTTP/1.1\r\nHost: rill\r\n\r\n")).await
}

async fn scrape(broker: &TestBroker) -> Exposition {
    let response = get(broker.http_addr(), "/metrics").await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    Exposition::parse(&response.body)
}

// ---------------------------------------------------------------------
// The exposition format

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Samples of a scrape, checked against the text format's rules as it is
/// parsed (any breach panics with the line).
#[derive(Debug)]
struct Exposition {
    samples: Vec<Sample>,
    types: HashMap<String, String>,
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// `{name="value",...}` at the start of `text`; returns the labels and the
/// rest of the line.
fn parse_labels(text: &str, line: &str) -> (BTreeMap<String, String>, String) {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    assert_eq!(chars.next(), Some('{'));
    loop {
        if chars.peek() == Some(&'}') {
            chars.next();
            break;
        }
        let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        assert!(is_label_name(&name), "bad label name {name:?} in {line:?}");
        assert_eq!(chars.next(), Some('='), "{line:?}");
        assert_eq!(chars.next(), Some('"'), "label value unquoted in {line:?}");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some('"') => break,
                Some('\n') | None => panic!("unterminated label value in {line:?}"),
                Some(c) => value.push(c),
            }
        }
        assert!(
            labels.insert(name.clone(), value).is_none(),
            "label {name} twice in {line:?}"
        );
        match chars.next() {
            Some(',') => {}
            Some('}') => break,
            other => panic!("expected , or }} but got {other:?} in {line:?}"),
        }
    }
    (labels, chars.collect())
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        assert!(text.ends_with('\n'), "the text ends with a newline");
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helps: HashSet<String> = HashSet::new();
        let mut samples: Vec<Sample> = Vec::new();
        // Families whose samples have started, and the one being read:
        // a family's samples must be contiguous.
        let mut finished: HashSet<String> = HashSet::new();
        let mut current: Option<String> = None;
        let mut series: HashSet<(String, BTreeMap<String, String>)> = HashSet::new();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(is_metric_name(name), "bad name in {line:?}");
                assert!(helps.insert(name.to_string()), "HELP twice: {line:?}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split(' ');
                let name = words.next().unwrap_or_default();
                let kind = words.next().unwrap_or_default();
                assert!(is_metric_name(name), "bad name in {line:?}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "bad type in {line:?}"
                );
                assert_eq!(words.next(), None, "{line:?}");
                assert!(
                    !finished.contains(name) && current.as_deref() != Some(name),
                    "TYPE after samples: {line:?}"
                );
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "TYPE twice: {line:?}"
                );
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            assert!(is_metric_name(name), "bad sample name in {line:?}");
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end..], line)
            } else {
                (BTreeMap::new(), line[name_end..].to_string())
            };
            let mut words = rest
                .strip_prefix(' ')
                .unwrap_or_else(|| panic!("no space before the value in {line:?}"))
                .split(' ');
            let value = words
                .next()
                .and_then(parse_value)
                .unwrap_or_else(|| panic!("bad value in {line:?}"));
            if let Some(timestamp) = words.next() {
                assert!(
                    timestamp.parse::<i64>().is_ok(),
                    "bad timestamp in {line:?}"
                );
            }
            assert_eq!(words.next(), None, "extra words in {line:?}");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(name)
                .to_string();
            assert!(types.contains_key(&family), "sample without TYPE: {line:?}");
            if current.as_deref() != Some(family.as_str()) {
                assert!(
                    !finished.contains(&family),
                    "samples of {family} not together: {line:?}"
                );
                if let Some(previous) = current.replace(family.clone()) {
                    finished.insert(previous);
                }
            }
            assert!(
                series.insert((name.to_string(), labels.clone())),
                "series twice: {line:?}"
            );
            samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        let exposition = Exposition { samples, types };
        exposition.check_histograms();
        exposition
    }

    /// Buckets of every histogram series: ascending `le`, cumulative
    /// counts, a `+Inf` bucket equal to `_count`, and a `_sum`.
    fn check_histograms(&self) {
        for (family, kind) in &self.types {
            if kind != "histogram" {
                continue;
            }
            let bucket_name = format!("{family}_bucket");
            let mut by_series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> =
                BTreeMap::new();
            for sample in self.samples.iter().filter(|s| s.name == bucket_name) {
                let mut labels = sample.labels.clone();
                let le = labels
                    .remove("le")
                    .unwrap_or_else(|| panic!("{bucket_name} without le"));
                let le = parse_value(&le).unwrap_or_else(|| panic!("bad le {le:?}"));
                by_series
                    .entry(labels)
                    .or_default()
                    .push((le, sample.value));
            }
            for (labels, buckets) in by_series {
                for pair in buckets.windows(2) {
                    assert!(pair[0].0 < pair[1].0, "{family}: le not ascending");
                    assert!(pair[0].1 <= pair[1].1, "{family}: buckets not cumulative");
                }
                let last = buckets.last().expect("buckets");
                assert_eq!(last.0, f64::INFINITY, "{family}: no +Inf bucket");
                let pairs: Vec<(&str, &str)> = labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let count = self.value(&format!("{family}_count"), &pairs);
                assert_eq!(count, Some(last.1), "{family}: +Inf bucket is not _count");
                assert!(
                    self.value(&format!("{family}_sum"), &pairs).is_some(),
                    "{family}: no _sum"
                );
            }
        }
    }

    /// The value of the series with exactly these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }

    /// [`Exposition::value`], 0 for a series not (yet) there.
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// Whether any series of `name` has label `label` = `value`.
    fn has_series_with(&self, name: &str, label: &str, value: &str) -> bool {
        self.samples
            .iter()
            .any(|s| s.name == name && s.labels.get(label).map(String::as_str) == Some(value))
    }
}

/// How much a counter moved between two scrapes.
fn delta(before: &Exposition, after: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.counter(name, labels) - before.counter(name, labels)
}

// ---------------------------------------------------------------------
// Kafka traffic

/// One Produce v9 of `batch` to one partition; the error code, or `None`
/// for acks=0 (no answer).
async fn produce(
    client: &mut Client,
    acks: i16,
    topic: &str,
    partition: i32,
    batch: Bytes,
) -> Option<i16> {
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch))])]);
    if acks == 0 {
        client.send_no_answer(9, request).await;
        return None;
    }
    let response = client.send(9, request).await;
    Some(response.responses[0].partition_responses[0].error_code)
}

fn commit_request(group: &str, topic: &str, partitions: &[(i32, i64)]) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(GroupId(str_bytes(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(str_bytes(""))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(
                partitions
                    .iter()
                    .map(|(index, offset)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(*index)
                            .with_committed_offset(*offset)
                            .with_committed_leader_epoch(-1)
                    })
                    .collect(),
            )])
}

/// Scrapes until `ready` holds, for counters moved by the broker noticing
/// something (a closed connection) after the test's request returned.
async fn scrape_until(broker: &TestBroker, ready: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scraped = scrape(broker).await;
        if ready(&scraped) || Instant::now() > deadline {
            return scraped;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn quick(config: &mut rill_broker::BrokerConfig) {
    config.groups.offsets_topic_partitions = OFFSETS_PARTITIONS;
    config.groups.initial_rebalance_delay_ms = 0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_the_traffic_sent() {
    let broker = TestBroker::start_with(quick).await;
    let mut client = broker.client().await;
    client.create_topic(TOPIC, 2, &[]).await;
    let before = scrape(&broker).await;

    // Produce: records of known sizes, with acks 1, all and 0.
    let mut bytes = [0u64; 2];
    let mut records = [0i64; 2];
    let sends: [(i16, i32, usize); 6] = [
        (1, 0, 3),
        (1, 0, 4),
        (1, 0, 1),
        (-1, 0, 5),
        (0, 1, 2),
        (1, 1, 7),
    ];
    for (acks, partition, count) in sends {
        let batch = record_batch(count);
        bytes[partition as usize] += batch.len() as u64;
        records[partition as usize] += count as i64;
        let code = produce(&mut client, acks, TOPIC, partition, batch).await;
        assert!(code.is_none_or(|c| c == 0), "produce: {code:?}");
    }
    // One that fails: no such partition.
    let code = produce(&mut client, 1, TOPIC, 9, record_batch(2)).await;
    assert_eq!(code, Some(UNKNOWN_TOPIC_OR_PARTITION));
    let produce_requests = sends.len() as f64 + 1.0;

    // Fetch all of both partitions, and once past the end.
    assert_eq!(client.fetch(TOPIC, 0, 0).await.0, 0);
    assert_eq!(client.fetch(TOPIC, 1, 0).await.0, 0);
    assert_eq!(client.fetch(TOPIC, 0, 1_000).await.0, OFFSET_OUT_OF_RANGE);

    // A group commits partition 0 at 3 (and a partition that does not exist).
    let committed_at = 3;
    client
        .send(
            3,
            FindCoordinatorRequest::default().with_key(str_bytes(GROUP)),
        )
        .await;
    let commit = client
        .send(
            8,
            commit_request(GROUP, TOPIC, &[(0, committed_at), (9, 1)]),
        )
        .await;
    let codes: Vec<i16> = commit.topics[0]
        .partitions
        .iter()
        .map(|p| p.error_code)
        .collect();
    assert_eq!(codes, [0, UNKNOWN_TOPIC_OR_PARTITION]);

    let after = scrape(&broker).await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);

    // Requests, by API and version, and their latencies.
    let produce_v9 = [("api", "Produce"), ("version", "9")];
    assert_eq!(d("rill_requests_total", &produce_v9), produce_requests);
    assert_eq!(
        d(
            "rill_requests_total",
            &[("api", "Fetch"), ("version", "12")]
        ),
        3.0
    );
    assert_eq!(
        d(
            "rill_requests_total",
            &[("api", "OffsetCommit"), ("version", "8")]
        ),
        1.0
    );
    assert_eq!(
        d("rill_request_duration_seconds_count", &[("api", "Produce")]),
        produce_requests,
        "every produce timed, acks=0 included"
    );
    assert_eq!(
        d("rill_request_duration_seconds_count", &[("api", "Fetch")]),
        3.0
    );
    assert!(d("rill_request_duration_seconds_sum", &[("api", "Produce")]) > 0.0);

    // Errors: one failed partition each.
    let error = |api, version, name| [("api", api), ("version", version), ("error", name)];
    assert_eq!(
        d(
            "rill_request_errors_total",
            &error("Produce", "9", "UNKNOWN_TOPIC_OR_PARTITION")
        ),
        1.0
    );
    assert_eq!(
        d(
            "rill_request_errors_total",
            &error("Fetch", "12", "OFFSET_OUT_OF_RANGE")
        ),
        1.0
    );
    assert_eq!(
        d(
            "rill_request_errors_total",
            &error("OffsetCommit", "8", "UNKNOWN_TOPIC_OR_PARTITION")
        ),
        1.0
    );
    let produce_errors: f64 = after
        .samples
        .iter()
        .filter(|s| s.name == "rill_request_errors_total")
        .filter(|s| s.labels.get("api").map(String::as_str) == Some("Produce"))
        .map(|s| s.value)
        .sum();
    assert_eq!(produce_errors, 1.0, "no other produce error counted");

    // Bytes and records per topic: in by Produce, out by Fetch.
    let topic = [("topic", TOPIC)];
    assert_eq!(
        d("rill_topic_bytes_in_total", &topic),
        (bytes[0] + bytes[1]) as f64
    );
    assert_eq!(
        d("rill_topic_messages_in_total", &topic),
        (records[0] + records[1]) as f64
    );
    assert_eq!(
        d("rill_topic_bytes_out_total", &topic),
        (bytes[0] + bytes[1]) as f64,
        "each partition fetched whole, once"
    );

    // The state: partitions, logs, lag.
    assert_eq!(
        after.value("rill_partitions", &[]),
        Some(f64::from(2 + OFFSETS_PARTITIONS))
    );
    assert_eq!(
        after.value("rill_under_replicated_partitions", &[]),
        Some(0.0)
    );
    for partition in [0, 1] {
        let index = partition.to_string();
        let labels = [("topic", TOPIC), ("partition", index.as_str())];
        assert_eq!(
            after.value("rill_log_size_bytes", &labels),
            Some(bytes[partition] as f64)
        );
        assert_eq!(
            after.value("rill_log_end_offset", &labels),
            Some(records[partition] as f64)
        );
        assert_eq!(after.value("rill_log_start_offset", &labels), Some(0.0));
    }
    let lag_labels = [("group", GROUP), ("topic", TOPIC), ("partition", "0")];
    assert_eq!(
        after.value("rill_consumer_group_committed_offset", &lag_labels),
        Some(committed_at as f64)
    );
    assert_eq!(
        after.value("rill_consumer_group_lag", &lag_labels),
        Some((records[0] - committed_at) as f64)
    );
    assert!(
        !after.has_series_with("rill_consumer_group_lag", "partition", "1"),
        "no lag for a partition the group never committed"
    );

    // fsync: at least the acks=all produce's and the commit's, each a
    // flush of a different log.
    assert!(d("rill_log_flush_duration_seconds_count", &[]) >= 2.0);
    assert_eq!(after.value("rill_connections_open", &[]), Some(1.0));

    // A deleted topic's series go with it.
    let deleted = client
        .send(
            4,
            DeleteTopicsRequest::default()
                .with_topic_names(vec![topic_name(TOPIC)])
                .with_timeout_ms(5_000),
        )
        .await;
    assert_eq!(deleted.responses[0].error_code, 0);
    let gone = scrape(&broker).await;
    for name in [
        "rill_topic_bytes_in_total",
        "rill_topic_messages_in_total",
        "rill_topic_bytes_out_total",
        "rill_log_size_bytes",
        "rill_log_end_offset",
        "rill_consumer_group_lag",
    ] {
        assert!(
            !gone.has_series_with(name, "topic", TOPIC),
            "{name} still has {TOPIC}"
        );
    }
    assert_eq!(
        gone.value("rill_partitions", &[]),
        Some(f64::from(OFFSETS_PARTITIONS))
    );
    drop(client);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_counted_open_and_closed_by_reason() {
    let broker = TestBroker::start_with(|config| {
        config.request_bytes_max = 1024;
    })
    .await;
    let fresh = scrape(&broker).await;
    assert_eq!(fresh.value("rill_connections_open", &[]), Some(0.0));

    let mut first = broker.client().await;
    let mut second = broker.client().await;
    first.assert_serving().await;
    second.assert_serving().await;
    let both = scrape(&broker).await;
    assert_eq!(both.value("rill_connections_open", &[]), Some(2.0));

    // One leaves; the other sends a frame larger than the limit.
    drop(first);
    let mut bad = TcpStream::connect(broker.addr).await.expect("connect");
    bad.write_all(&(1u32 << 20).to_be_bytes())
        .await
        .expect("send a frame size");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), bad.read_to_end(&mut rest))
        .await
        .expect("the broker closes the bad connection")
        .expect("read to the close");
    let closed =
        |s: &Exposition, reason| s.counter("rill_connections_closed_total", &[("reason", reason)]);
    let after = scrape_until(&broker, |s| {
        closed(s, "client") == 1.0 && closed(s, "bad_frame") == 1.0
    })
    .await;
    assert_eq!(closed(&after, "client"), 1.0);
    assert_eq!(closed(&after, "bad_frame"), 1.0);
    assert_eq!(after.value("rill_connections_open", &[]), Some(1.0));
    second.assert_serving().await;
    drop(second);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_port_answers_health_and_metrics_and_refuses_the_rest() {
    let broker = TestBroker::start().await;
    let addr = broker.http_addr();

    let health = get(addr, "/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.body, "ok\n");
    assert_eq!(
        health.headers.get("connection").map(String::as_str),
        Some("close")
    );

    let missing = get(addr, "/nothing-here").await;
    assert_eq!(missing.status, 404);
    let post = http(
        addr,
        "POST /metrics HTTP/1.1\r\nHost: rill\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(post.status, 405);
    assert_eq!(post.headers.get("allow").map(String::as_str), Some("GET"));
    let garbage = http(addr, "NOT HTTP AT ALL\r\n\r\n").await;
    assert_eq!(garbage.status, 400);

    // A fresh broker's metrics parse, and every family has help and a type.
    let response = get(addr, "/metrics").await;
    assert_eq!(response.status, 200);
    let metrics = Exposition::parse(&response.body);
    assert!(response
        .body
        .contains("# TYPE rill_log_flush_duration_seconds histogram\n"));
    assert!(response.body.contains("# TYPE rill_partitions gauge\n"));
    assert_eq!(metrics.value("rill_partitions", &[]), Some(0.0));
    // A fresh broker's disk has not pushed back.
    assert_eq!(metrics.value("rill_disk_pressure", &[]), Some(0.0));
    assert_eq!(
        metrics.value("rill_appends_on_io_threads_total", &[]),
        Some(0.0)
    );

    // A client that connects and sends nothing is closed, in bounded time.
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), silent.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a silent HTTP client is closed");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "after the head timeout, not at once"
    );
    broker.stop().await;
}

/// A client that leaves while answers are owed to it (long-polling
/// Fetches, enough to fill its in-flight queue, so that the broker reads
/// nothing more from it; a JoinGroup waiting for its rebalance) frees its
/// connection at once, and its fetches' wait slots, rather than minutes
/// later when the answers would have come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_frees_its_connection_while_answers_are_owed() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::join_group_request::{
        JoinGroupRequest, JoinGroupRequestProtocol,
    };
    use kafka_protocol::messages::{BrokerId, FetchRequest};

    let broker = TestBroker::start_with(|config| {
        quick(config);
        // A new group's first rebalance waits this long for more members.
        config.groups.initial_rebalance_delay_ms = 120_000;
        config.inflight_requests_per_connection_max = 2;
    })
    .await;
    let mut client = broker.client().await;
    client.create_topic("quiet", 1, &[]).await;
    client
        .send(
            3,
            FindCoordinatorRequest::default().with_key(str_bytes("slow")),
        )
        .await;
    let waiting_max = broker.broker().config.fetch_waiting_max;

    // Fetches that wait up to a minute for data that never comes: one
    // awaited by the writer, two queued, and one the reader cannot queue.
    const FETCHES: usize = 4;
    let mut fetcher = broker.client().await;
    for _ in 0..FETCHES {
        fetcher
            .write(
                12,
                FetchRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_max_wait_ms(60_000)
                    .with_min_bytes(1)
                    .with_max_bytes(1 << 20)
                    .with_topics(vec![FetchTopic::default()
                        .with_topic(topic_name("quiet"))
                        .with_partitions(vec![FetchPartition::default()
                            .with_partition(0)
                            .with_fetch_offset(0)
                            .with_partition_max_bytes(1 << 20)])]),
            )
            .await;
    }
    // A member whose join waits for the group's first rebalance.
    let mut joiner = broker.client().await;
    let join = |member_id: &str| {
        JoinGroupRequest::default()
            .with_group_id(GroupId(str_bytes("slow")))
            .with_session_timeout_ms(30_000)
            .with_rebalance_timeout_ms(300_000)
            .with_member_id(str_bytes(member_id))
            .with_protocol_type(str_bytes("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(str_bytes("range"))
                .with_metadata(Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))])
    };
    let first = joiner.send(5, join("")).await;
    assert_eq!(first.error_code, 79, "MEMBER_ID_REQUIRED");
    joiner.write(5, join(first.member_id.as_str())).await;

    let owing = scrape_until(&broker, |s| {
        s.value("rill_connections_open", &[]) == Some(3.0)
            && broker.broker().fetch_waiting.available_permits() == waiting_max - FETCHES
    })
    .await;
    assert_eq!(owing.value("rill_connections_open", &[]), Some(3.0));
    assert_eq!(
        broker.broker().fetch_waiting.available_permits(),
        waiting_max - FETCHES,
        "the fetches wait"
    );

    // Both leave; their answers are still a minute and more away.
    let left = Instant::now();
    drop(fetcher);
    drop(joiner);
    let after = scrape_until(&broker, |s| {
        s.value("rill_connections_open", &[]) == Some(1.0)
    })
    .await;
    assert_eq!(after.value("rill_connections_open", &[]), Some(1.0));
    assert!(
        left.elapsed() < Duration::from_secs(3),
        "connections freed after {:?}",
        left.elapsed()
    );
    assert_eq!(
        after.counter("rill_connections_closed_total", &[("reason", "client")]),
        2.0
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while broker.broker().fetch_waiting.available_permits() < waiting_max
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        broker.broker().fetch_waiting.available_permits(),
        waiting_max,
        "the departed client's fetches still wait"
    );
    client.assert_serving().await;
    broker.stop().await;
}
