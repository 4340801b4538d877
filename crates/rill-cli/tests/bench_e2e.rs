//! `rill bench` against a started broker, with tiny record counts: every
//! mode works, its JSON is well formed and its counts are right, and its
//! errors are one clear line. Never a speed assertion.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{rill_binary, run_to_exit, Broker, Finished};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

/// How long one `rill bench` run of a test may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn bench_run(args: &[&str]) -> Finished {
    let mut command = std::process::Command::new(rill_binary());
    command.arg("bench").args(args);
    run_to_exit(command, RUN_TIMEOUT)
}

/// Runs `rill bench ARGS`, which must succeed and print one JSON object.
fn bench(args: &[&str]) -> serde_json::Value {
    let finished = bench_run(args);
    assert!(
        finished.status.success(),
        "rill bench {args:?}: {finished:?}"
    );
    serde_json::from_str(finished.stdout.trim()).expect("one JSON object on stdout")
}

/// Runs `rill bench ARGS`, which must fail with one line on stderr (exit
/// code 1, or 2 for a bad command line); that line.
fn bench_fails(args: &[&str], code: i32) -> String {
    let finished = bench_run(args);
    assert_eq!(finished.status.code(), Some(code), "{args:?}: {finished:?}");
    let stderr = finished.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "one line: {finished:?}");
    assert!(!stderr.contains("panicked"), "{finished:?}");
    stderr.to_string()
}

fn number(value: &serde_json::Value, key: &str) -> f64 {
    value[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {value}"))
}

/// The fields every produce, consume and e2e report has, checked against
/// the expected record count and size.
fn assert_common_fields(value: &serde_json::Value, records: u64, record_size: u64) {
    assert_eq!(value["records"], records, "{value}");
    assert_eq!(value["bytes"], records * record_size, "{value}");
    assert_eq!(value["failed"], 0, "{value}");
    let seconds = number(value, "seconds");
    assert!(seconds > 0.0, "{value}");
    let per_sec = number(value, "records_per_sec");
    assert!(
        (per_sec - records as f64 / seconds).abs() <= per_sec * 1e-6,
        "{value}"
    );
    let mb = number(value, "mb_per_sec");
    let expected_mb = (records * record_size) as f64 / seconds / 1e6;
    assert!((mb - expected_mb).abs() <= expected_mb * 1e-6, "{value}");
}

fn assert_latency(latency: &serde_json::Value) {
    let mut previous = 0.0;
    for quantile in ["p50", "p99", "p999", "max"] {
        let ms = number(latency, quantile);
        assert!(ms > 0.0 && ms >= previous, "{quantile}: {latency}");
        previous = ms;
    }
}

/// Every record of `topic` (with `partitions` partitions), read from the
/// start by a plain librdkafka consumer: (key, value) pairs.
fn read_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-e2e-check")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let mut records = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while records.len() < expected && std::time::Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("a record");
            records.push((
                message.key().map(<[u8]>::to_vec),
                message.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    // Nothing more than expected arrives either.
    assert!(consumer.poll(Duration::from_millis(500)).is_none());
    records
}

/// The `attributes` of the first batch in a partition's first segment:
/// its low three bits are the codec (3 is lz4).
fn first_batch_attributes(broker: &Broker, topic: &str, partition: i32) -> Option<u16> {
    let log = broker
        .data_dir()
        .join(format!("{topic}-{partition}"))
        .join("00000000000000000000.log");
    let bytes = std::fs::read(log).ok()?;
    // baseOffset 8, batchLength 4, partitionLeaderEpoch 4, magic 1, crc 4.
    let attributes = bytes.get(21..23)?;
    Some(u16::from_be_bytes([attributes[0], attributes[1]]))
}

#[test]
fn produce_then_consume_reports_json() {
    let broker = Broker::start_new();
    let bootstrap = broker.bootstrap();
    let produced = bench(&[
        "produce",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "bench",
        "--partitions",
        "2",
        "--records",
        "500",
        "--record-size",
        "10",
        "--acks",
        "all",
        "--json",
    ]);
    assert_common_fields(&produced, 500, 10);
    assert_eq!(produced["mode"], "produce");
    assert_eq!(produced["partitions"], 2);
    assert_eq!(produced["producers"], 1);
    assert!(produced["keys"].is_null(), "{produced}");
    assert_latency(&produced["latency_ms"]);
    let consumed = bench(&[
        "consume",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "bench",
        "--records",
        "500",
        "--json",
    ]);
    assert_common_fields(&consumed, 500, 10);
    assert_eq!(consumed["mode"], "consume");
    assert_eq!(consumed["consumers"], 1);
    // Stored records have no latency to report; the field is there, empty.
    assert!(consumed["latency_ms"].is_null(), "{consumed}");
}

#[test]
fn producers_keys_and_compression_reach_the_topic() {
    let broker = Broker::start_new();
    let bootstrap = broker.bootstrap();
    let produced = bench(&[
        "produce",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "keyed",
        "--partitions",
        "3",
        "--records",
        "301",
        "--record-size",
        "40",
        "--producers",
        "3",
        "--keys",
        "5",
        "--compression",
        "lz4",
        "--acks",
        "all",
        "--json",
    ]);
    assert_common_fields(&produced, 301, 40);
    assert_eq!(produced["producers"], 3);
    assert_eq!(produced["keys"], 5);
    assert_eq!(produced["compression"], "lz4");
    assert_latency(&produced["latency_ms"]);

    let records = read_all(&bootstrap, "keyed", 3, 301);
    assert_eq!(records.len(), 301);
    let keys: BTreeSet<Vec<u8>> = records
        .iter()
        .map(|(key, _)| key.clone().expect("every record has a key"))
        .collect();
    let allowed: BTreeSet<Vec<u8>> = (0..5).map(|k| format!("key-{k}").into_bytes()).collect();
    assert!(keys.is_subset(&allowed), "{keys:?}");
    assert!(
        keys.len() > 1,
        "301 draws from 5 keys give more than one: {keys:?}"
    );
    for (_, value) in &records {
        assert_eq!(value.len(), 40);
        assert!(value.iter().all(u8::is_ascii_uppercase), "{value:?}");
    }
    // The batches on disk are lz4-compressed, as sent.
    let codecs: Vec<u16> = (0..3)
        .filter_map(|partition| first_batch_attributes(&broker, "keyed", partition))
        .map(|attributes| attributes & 0b111)
        .collect();
    assert!(!codecs.is_empty());
    assert!(codecs.iter().all(|&codec| codec == 3), "{codecs:?}");
}

#[test]
fn rate_caps_records_per_second_across_producers() {
    let broker = Broker::start_new();
    let bootstrap = broker.bootstrap();
    for producers in ["1", "2"] {
        // 300 records at 1,000/s cannot be sent in less than 0.3 s, however
        // fast the machine: the cap is a lower bound on the time.
        let produced = bench(&[
            "produce",
            "--bootstrap",
            &bootstrap,
            "--topic",
            "capped",
            "--partitions",
            "2",
            "--records",
            "300",
            "--producers",
            producers,
            "--rate",
            "1000",
            "--json",
        ]);
        assert_common_fields(&produced, 300, 100);
        assert!(number(&produced, "seconds") >= 0.29, "{produced}");
        assert_eq!(produced["rate"], 1000.0);
    }
    // The table, not JSON, without --json.
    let finished = bench_run(&[
        "produce",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "capped",
        "--records",
        "10",
    ]);
    assert!(finished.status.success(), "{finished:?}");
    assert!(finished.stdout.contains("records/s"), "{finished:?}");
    assert!(finished.stdout.contains("latency ms"), "{finished:?}");
    assert!(serde_json::from_str::<serde_json::Value>(&finished.stdout).is_err());
}

#[test]
fn consumers_share_partitions_by_hand_or_in_a_group() {
    let broker = Broker::start_new();
    let bootstrap = broker.bootstrap();
    bench(&[
        "produce",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "shared",
        "--partitions",
        "4",
        "--records",
        "400",
        "--record-size",
        "20",
        "--json",
    ]);
    let assigned = bench(&[
        "consume",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "shared",
        "--records",
        "400",
        "--consumers",
        "2",
        "--json",
    ]);
    assert_common_fields(&assigned, 400, 20);
    assert_eq!(assigned["consumers"], 2);
    assert!(assigned["group"].is_null());
    let grouped = bench(&[
        "consume",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "shared",
        "--records",
        "400",
        "--consumers",
        "3",
        "--group",
        "bench-group",
        "--json",
    ]);
    assert_common_fields(&grouped, 400, 20);
    assert_eq!(grouped["consumers"], 3);
    assert_eq!(grouped["group"], "bench-group");
    // Fewer records than the topic holds: exactly that many are counted.
    let part = bench(&[
        "consume",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "shared",
        "--records",
        "150",
        "--consumers",
        "4",
        "--json",
    ]);
    assert_common_fields(&part, 150, 20);
    // More consumers than partitions cannot be assigned by hand.
    let error = bench_fails(
        &[
            "consume",
            "--bootstrap",
            &bootstrap,
            "--topic",
            "shared",
            "--records",
            "400",
            "--consumers",
            "5",
        ],
        1,
    );
    assert!(error.starts_with("rill bench:"), "{error}");
    assert!(
        error.contains("--group") && error.contains("has 4"),
        "{error}"
    );
}

#[test]
fn e2e_times_each_record_from_send_to_consumption() {
    let broker = Broker::start_new();
    let bootstrap = broker.bootstrap();
    let e2e = bench(&[
        "e2e",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "e2e",
        "--partitions",
        "2",
        "--rate",
        "200",
        "--duration",
        "1",
        "--record-size",
        "64",
        "--acks",
        "all",
        "--json",
    ]);
    assert_eq!(e2e["mode"], "e2e");
    let sent = e2e["sent"].as_u64().expect("sent");
    // 200/s for 1 s: the cap bounds it from above; a slow machine may send fewer.
    assert!((1..=201).contains(&sent), "{e2e}");
    assert_common_fields(&e2e, sent, 64);
    assert!(number(&e2e, "seconds") >= 1.0, "{e2e}");
    assert_latency(&e2e["latency_ms"]);
    assert_latency(&e2e["delivery_latency_ms"]);
    // The topic holds the warm-up record of each partition and the run's.
    let records = read_all(&bootstrap, "e2e", 2, sent as usize + 2);
    assert_eq!(records.len() as u64, sent + 2);

    // A second run on the same topic counts only its own records.
    let again = bench(&[
        "e2e",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "e2e",
        "--rate",
        "100",
        "--duration",
        "0.5",
        "--json",
    ]);
    let sent = again["sent"].as_u64().expect("sent");
    assert_common_fields(&again, sent, 100);

    let error = bench_fails(
        &[
            "e2e",
            "--bootstrap",
            &bootstrap,
            "--topic",
            "e2e",
            "--rate",
            "100",
            "--duration",
            "1",
            "--record-size",
            "8",
        ],
        1,
    );
    assert!(error.contains("--record-size"), "{error}");
}

#[test]
fn limits_measures_disk_and_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_arg = dir.path().to_str().expect("a UTF-8 path");
    let limits = bench(&[
        "limits",
        "--dir",
        dir_arg,
        "--disk-mib",
        "4",
        "--tcp-seconds",
        "0.2",
        "--json",
    ]);
    assert_eq!(limits["mode"], "limits");
    let disk = &limits["disk"];
    assert_eq!(disk["bytes"], 4 << 20);
    assert_eq!(disk["dir"], dir_arg);
    for key in [
        "fdatasync_at_end_seconds",
        "fdatasync_at_end_mb_per_sec",
        "fdatasync_every_64mib_seconds",
        "fdatasync_every_64mib_mb_per_sec",
    ] {
        assert!(number(disk, key) > 0.0, "{key}: {limits}");
    }
    let tcp = &limits["loopback_tcp"];
    assert!(number(tcp, "bytes") > 0.0, "{limits}");
    assert!(number(tcp, "seconds") > 0.0, "{limits}");
    assert!(number(tcp, "gbit_per_sec") > 0.0, "{limits}");
    // The test file is gone.
    assert_eq!(std::fs::read_dir(dir.path()).expect("read dir").count(), 0);

    let finished = bench_run(&[
        "limits",
        "--dir",
        dir_arg,
        "--disk-mib",
        "1",
        "--tcp-seconds",
        "0.1",
    ]);
    assert!(finished.status.success(), "{finished:?}");
    assert!(finished.stdout.contains("MB/s"), "{finished:?}");
    assert!(finished.stdout.contains("Gbit/s"), "{finished:?}");

    let missing = dir.path().join("missing");
    let error = bench_fails(
        &["limits", "--dir", missing.to_str().expect("a UTF-8 path")],
        1,
    );
    assert!(error.contains("missing"), "{error}");
}

#[test]
fn missing_topics_are_errors_not_created() {
    let broker = Broker::start_new();
    let bootstrap = broker.bootstrap();
    for args in [
        &["produce", "--topic", "nope", "--records", "1"][..],
        &["consume", "--topic", "nope", "--records", "1"][..],
        &["e2e", "--topic", "nope", "--rate", "10", "--duration", "1"][..],
    ] {
        let mut full = args.to_vec();
        full.extend(["--bootstrap", &bootstrap]);
        // librdkafka producers ask for auto-creation by default; the bench
        // must not, and must say what to do rather than wait for records.
        let error = bench_fails(&full, 1);
        assert!(error.starts_with("rill bench:"), "{error}");
        assert!(error.contains("topic nope does not exist"), "{error}");
        assert!(error.contains("--partitions"), "{error}");
    }
}

#[test]
fn a_broker_that_is_down_is_one_clear_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let bootstrap = format!("127.0.0.1:{port}");
    let error = bench_fails(
        &[
            "produce",
            "--bootstrap",
            &bootstrap,
            "--topic",
            "t",
            "--partitions",
            "1",
            "--records",
            "1",
        ],
        1,
    );
    assert!(error.starts_with("rill bench:"), "{error}");
    assert!(error.contains(&bootstrap), "{error}");
}

#[test]
fn bad_flags_are_one_line_usage_errors() {
    for (args, named) in [
        (&["produce", "--topic", "t", "--acks", "2"][..], "--acks"),
        (
            &["produce", "--topic", "t", "--compression", "brotli"][..],
            "--compression",
        ),
        (
            &["produce", "--topic", "t", "--producers", "0"][..],
            "--producers",
        ),
        (&["produce", "--topic", "t", "--keys", "0"][..], "--keys"),
        (
            &["consume", "--topic", "t", "--consumers", "0"][..],
            "--consumers",
        ),
        (&["limits", "--disk-mib", "0"][..], "--disk-mib"),
    ] {
        let error = bench_fails(args, 2);
        assert!(error.starts_with("rill:"), "{error}");
        assert!(error.contains(named), "{args:?}: {error}");
    }
    // A missing required flag is a usage error too.
    let error = bench_fails(&["e2e", "--topic", "t", "--duration", "1"], 2);
    assert!(error.starts_with("rill:"), "{error}");
    // Values clap accepts but the bench cannot use.
    let error = bench_fails(
        &[
            "produce",
            "--topic",
            "t",
            "--rate",
            "0",
            "--bootstrap",
            "127.0.0.1:1",
        ],
        1,
    );
    assert!(error.contains("--rate"), "{error}");
}
