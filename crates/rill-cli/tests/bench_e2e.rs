//! `rill bench` against a started broker, with tiny record counts: it
//! works and its JSON is well formed. Never a speed assertion.

mod common;

use std::time::Duration;

use common::{rill_binary, run_to_exit, Broker};

fn bench(args: &[&str]) -> serde_json::Value {
    let mut command = std::process::Command::new(rill_binary());
    command.arg("bench").args(args);
    let finished = run_to_exit(command, Duration::from_secs(60));
    assert!(
        finished.status.success(),
        "rill bench {args:?}: {finished:?}"
    );
    serde_json::from_str(finished.stdout.trim()).expect("one JSON object on stdout")
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
    assert_eq!(produced["records"], 500);
    assert_eq!(produced["bytes"], 5000);
    assert_eq!(produced["failed"], 0);
    assert!(produced["seconds"].as_f64().unwrap() > 0.0);
    assert!(produced["records_per_sec"].as_f64().unwrap() > 0.0);
    for quantile in ["p50", "p99", "p999", "max"] {
        assert!(
            produced["latency_ms"][quantile].as_f64().unwrap() > 0.0,
            "{quantile}: {produced}"
        );
    }
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
    assert_eq!(consumed["records"], 500);
    assert_eq!(consumed["bytes"], 5000);
}

#[test]
fn consume_of_a_missing_topic_fails_clearly() {
    let broker = Broker::start_new();
    let mut command = std::process::Command::new(rill_binary());
    command.args([
        "bench",
        "consume",
        "--bootstrap",
        &broker.bootstrap(),
        "--topic",
        "nope",
        "--records",
        "1",
    ]);
    // librdkafka consumers do not ask for auto-creation, so the topic stays
    // unknown and the bench must say so rather than wait for records.
    let finished = run_to_exit(command, Duration::from_secs(60));
    assert!(!finished.status.success(), "{finished:?}");
    assert!(finished.stderr.contains("rill bench:"), "{finished:?}");
    assert!(finished.stderr.contains("nope"), "{finished:?}");
}
