//! `rill bench`: throughput and latency of any Kafka-compatible broker,
//! measured through librdkafka (the `rdkafka` crate), and this machine's
//! ceilings to read them against.
//!
//! Layout:
//! - this module: the command line, what the modes share (topic checks,
//!   producer settings, payloads, the report as a table or one JSON object);
//! - `produce`: `--producers` producers send `--records` records, each timed
//!   from `send` to its delivery report, or in transactions of
//!   `--records-per-transaction` records, each commit timed too;
//! - `consume`: `--consumers` consumers read `--records` records, by manual
//!   assignment or in a consumer group, read_committed or read_uncommitted;
//! - `e2e`: records sent at a fixed rate while a consumer reads them, each
//!   timed from its send time to its consumption;
//! - `limits`: sequential disk writes with fdatasync and loopback TCP.
//!
//! Latencies go into HDR histograms at microsecond resolution. A topic is
//! created only when `--partitions` is given; otherwise a missing topic is
//! an error, never created behind the user's back by a metadata request.

mod consume;
mod e2e;
mod limits;
mod produce;

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer};

pub use consume::ConsumeArgs;
pub use e2e::E2eArgs;
pub use limits::LimitsArgs;
pub use produce::ProduceArgs;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Produce records as fast as the broker takes them (or at --rate).
    Produce(ProduceArgs),
    /// Consume records from the beginning of a topic.
    Consume(ConsumeArgs),
    /// Produce at a fixed rate while consuming: end-to-end latency per record.
    E2e(E2eArgs),
    /// This machine's ceilings, measured now: disk writes with fdatasync and loopback TCP.
    Limits(LimitsArgs),
}

/// How long a metadata request or a topic creation may take. A broker that
/// is down shows up as this timeout, so it is kept short.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a run may go without progress before it gives up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most producers or consumers in one run: each is a librdkafka
/// instance with its own threads and connections.
const CLIENTS_MAX: u64 = 64;
/// The largest record value: far above any broker's default limit
/// (Kafka's is about 1 MiB), and small enough to allocate without thought.
const RECORD_SIZE_MAX: usize = 64 << 20;

fn check_record_size(record_size: usize) -> anyhow::Result<()> {
    if record_size > RECORD_SIZE_MAX {
        bail!("--record-size must be at most {RECORD_SIZE_MAX} bytes (64 MiB)");
    }
    Ok(())
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    let (json, outcome) = match command {
        BenchCommand::Produce(args) => (args.json, produce::run(&args)?),
        BenchCommand::Consume(args) => (args.json, consume::run(&args)?),
        BenchCommand::E2e(args) => (args.json, e2e::run(&args)?),
        BenchCommand::Limits(args) => return limits::run(&args),
    };
    report(&outcome, json);
    if outcome.failed > 0 {
        match &outcome.first_error {
            Some(error) => bail!("{} records failed; the first: {error}", outcome.failed),
            None => bail!("{} records failed", outcome.failed),
        }
    }
    Ok(())
}

// `rill produce` and `rill bench` take the same acks and codecs.
pub use crate::cmd::produce::{Acks, Compression};

/// The producer settings `produce` and `e2e` share.
#[derive(Debug, Args)]
pub struct ProducerArgs {
    /// Which acknowledgement a produce request waits for.
    #[arg(long, value_enum, default_value = "1")]
    acks: Acks,
    /// How long librdkafka waits to fill a batch (`linger.ms`).
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// The most bytes in one batch (librdkafka's `batch.size`).
    #[arg(long, default_value_t = 1_000_000)]
    batch_bytes: u64,
    /// Compression of each batch.
    #[arg(long, value_enum, default_value = "none")]
    compression: Compression,
}

impl ProducerArgs {
    /// The configuration of one benchmark producer.
    fn client_config(&self, bootstrap: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("acks", self.acks.as_config())
            // Idempotence would add a sequence check per batch and change
            // what is measured; Kafka's own perf tool leaves it off too.
            .set("enable.idempotence", "false")
            .set("linger.ms", self.linger_ms.to_string())
            .set("batch.size", self.batch_bytes.to_string())
            .set("compression.codec", self.compression.as_config())
            // Keyed records go where a Java client would put them.
            .set("partitioner", "murmur2_random")
            // A missing topic is an error, not something to create.
            .set("allow.auto.create.topics", "false")
            .set("queue.buffering.max.messages", "2000000")
            .set("queue.buffering.max.kbytes", "2097151")
            .set("message.timeout.ms", "120000");
        config
    }
}

/// The configuration of one benchmark consumer in `group`, which commits
/// nothing, so that a run can be repeated with the same group.
fn consumer_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("allow.auto.create.topics", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("queued.max.messages.kbytes", "1048576")
        // librdkafka stops fetching a partition once this many of its
        // records wait in the local queue, and then backs off for
        // `fetch.queue.backoff.ms` (1 s by default): with 100-byte records
        // and the default of 100,000, every 10 MB fetch left a consumer of
        // one partition idle for most of a second (0.2 M rec/s instead of
        // over 1 M).
        .set("queued.min.messages", "1000000")
        .set("fetch.queue.backoff.ms", "10");
    config
}

/// What a produce, consume or e2e run measured.
pub(crate) struct Outcome {
    mode: &'static str,
    records: u64,
    bytes: u64,
    seconds: f64,
    latency_us: Option<Histogram<u64>>,
    failed: u64,
    first_error: Option<String>,
    /// Settings and figures particular to the mode, shown after the common
    /// ones in the table and added to the JSON object.
    extra: Vec<(&'static str, serde_json::Value)>,
}

/// An empty latency histogram: 1 µs to 10 minutes at 3 significant digits.
fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).context("cannot create a latency histogram")
}

/// Adds what failed to an rdkafka error, in one line: librdkafka's error
/// code and description once (rdkafka's own message repeats them).
trait KafkaContext<T> {
    fn kafka_context(self, what: impl FnOnce() -> String) -> anyhow::Result<T>;
}

impl<T> KafkaContext<T> for Result<T, KafkaError> {
    fn kafka_context(self, what: impl FnOnce() -> String) -> anyhow::Result<T> {
        self.map_err(|error| {
            let why = match error.rdkafka_error_code() {
                Some(code) => code.to_string(),
                None => error.to_string(),
            };
            anyhow::anyhow!("{}: {why}", what())
        })
    }
}

/// Creates `topic` with `partitions` partitions unless it exists. A topic
/// that exists is used as it is (with a note if its partition count differs).
fn ensure_topic(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    if partitions < 1 {
        bail!("--partitions must be at least 1, not {partitions}");
    }
    if let Some(existing) = describe_topic(bootstrap, topic)? {
        if existing.len() != partitions as usize {
            eprintln!(
                "rill bench: topic {topic} exists with {} partitions; using it as it is",
                existing.len()
            );
        }
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .kafka_context(|| "cannot create an admin client".to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start an async runtime")?;
    let options = AdminOptions::new()
        .request_timeout(Some(METADATA_TIMEOUT))
        .operation_timeout(Some(METADATA_TIMEOUT));
    let results = runtime
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &options,
        ))
        .kafka_context(|| format!("cannot create topic {topic} at {bootstrap}"))?;
    for result in results {
        match result {
            // Someone else created it in between: use it as it is.
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("cannot create topic {name} at {bootstrap}: {code}"),
        }
    }
    Ok(())
}

/// The partition ids of `topic`. A missing topic is an error that says how
/// to create it.
fn topic_partitions(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<i32>> {
    match describe_topic(bootstrap, topic)? {
        Some(partitions) => Ok(partitions),
        None => {
            bail!("topic {topic} does not exist at {bootstrap} (give --partitions to create it)")
        }
    }
}

/// The partition ids of `topic`, or `None` if the broker does not know it;
/// asked with a client that never lets the broker create it.
fn describe_topic(bootstrap: &str, topic: &str) -> anyhow::Result<Option<Vec<i32>>> {
    let client: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("allow.auto.create.topics", "false")
        .create()
        .kafka_context(|| "cannot create a client".to_string())?;
    let metadata = client
        .client()
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .kafka_context(|| format!("cannot read metadata from a broker at {bootstrap}"))?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        bail!("the broker at {bootstrap} did not describe topic {topic}");
    };
    match found.error().map(RDKafkaErrorCode::from) {
        None if !found.partitions().is_empty() => {
            Ok(Some(found.partitions().iter().map(|p| p.id()).collect()))
        }
        None => bail!("topic {topic} has no partitions"),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Ok(None),
        Some(code) => bail!("cannot use topic {topic} at {bootstrap}: {code}"),
    }
}

/// A small, fast pseudo-random generator (SplitMix64): payload bytes and
/// key choices need to be spread, not unpredictable.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Bytes to cut record values from: random capital letters, as Kafka's
/// `kafka-producer-perf-test` sends, so compressed runs compress about as
/// much as text does (a value of one repeated byte would shrink to
/// nothing). Each record takes its value from a random place in a text
/// several MiB long, so that the records of one batch do not repeat each
/// other within a codec's window.
struct Payloads {
    text: Vec<u8>,
    record_size: usize,
}

/// How much text values are cut from, beyond one value's length.
const PAYLOAD_SPREAD_BYTES: usize = 4 << 20;

impl Payloads {
    fn new(record_size: usize, seed: u64) -> Payloads {
        let mut random = SplitMix64(seed);
        let text = (0..record_size + PAYLOAD_SPREAD_BYTES)
            .map(|_| b'A' + (random.next() % 26) as u8)
            .collect();
        Payloads { text, record_size }
    }

    fn value(&self, random: &mut SplitMix64) -> &[u8] {
        let start = (random.next() % PAYLOAD_SPREAD_BYTES as u64) as usize;
        &self.text[start..start + self.record_size]
    }
}

fn report(outcome: &Outcome, json: bool) {
    let seconds = outcome.seconds.max(1e-6);
    let records_per_sec = outcome.records as f64 / seconds;
    let mb_per_sec = outcome.bytes as f64 / seconds / 1e6;
    let latency = outcome.latency_us.as_ref().filter(|h| !h.is_empty());
    if json {
        let mut value = serde_json::json!({
            "mode": outcome.mode,
            "records": outcome.records,
            "bytes": outcome.bytes,
            "seconds": outcome.seconds,
            "records_per_sec": records_per_sec,
            "mb_per_sec": mb_per_sec,
            "failed": outcome.failed,
            "latency_ms": latency.map(latency_json),
        });
        if let Some(object) = value.as_object_mut() {
            for (key, extra) in &outcome.extra {
                object.insert((*key).to_string(), extra.clone());
            }
        }
        println!("{value}");
        return;
    }
    let row = |name: &str, value: String| println!("{name:<20} {value}");
    row("mode", outcome.mode.to_string());
    row("records", outcome.records.to_string());
    row("bytes", outcome.bytes.to_string());
    row("seconds", format!("{:.3}", outcome.seconds));
    row("records/s", format!("{records_per_sec:.0}"));
    row("MB/s", format!("{mb_per_sec:.1}"));
    if outcome.failed > 0 {
        row("failed", outcome.failed.to_string());
    }
    if let Some(histogram) = latency {
        row("latency ms", latency_line(histogram));
    }
    for (key, extra) in &outcome.extra {
        let shown = match extra {
            serde_json::Value::Null => "-".to_string(),
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Object(_) => match extra_latency_line(extra) {
                Some(line) => line,
                None => extra.to_string(),
            },
            other => other.to_string(),
        };
        row(&key.replace('_', " "), shown);
    }
}

fn latency_json(histogram: &Histogram<u64>) -> serde_json::Value {
    let ms = |us: u64| us as f64 / 1000.0;
    serde_json::json!({
        "p50": ms(histogram.value_at_quantile(0.5)),
        "p99": ms(histogram.value_at_quantile(0.99)),
        "p999": ms(histogram.value_at_quantile(0.999)),
        "max": ms(histogram.max()),
    })
}

fn latency_line(histogram: &Histogram<u64>) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        ms(histogram.value_at_quantile(0.5)),
        ms(histogram.value_at_quantile(0.99)),
        ms(histogram.value_at_quantile(0.999)),
        ms(histogram.max()),
    )
}

/// A latency object of the JSON (`latency_json`) as a table line.
fn extra_latency_line(value: &serde_json::Value) -> Option<String> {
    let get = |key: &str| value.get(key).and_then(serde_json::Value::as_f64);
    Some(format!(
        "p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        get("p50")?,
        get("p99")?,
        get("p999")?,
        get("max")?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_capital_letters_of_the_record_size() {
        let payloads = Payloads::new(100, 7);
        let mut random = SplitMix64(1);
        for _ in 0..1000 {
            let value = payloads.value(&mut random);
            assert_eq!(value.len(), 100);
            assert!(value.iter().all(u8::is_ascii_uppercase));
        }
    }

    #[test]
    fn latency_json_is_in_milliseconds() {
        let mut histogram = latency_histogram().unwrap();
        for us in 1..=1000 {
            histogram.record(us * 10).unwrap();
        }
        let value = latency_json(&histogram);
        let p50 = value["p50"].as_f64().unwrap();
        assert!((4.9..=5.1).contains(&p50), "{value}");
        let max = value["max"].as_f64().unwrap();
        assert!((9.9..=10.1).contains(&max), "{value}");
        assert!(extra_latency_line(&value).unwrap().starts_with("p50 5."));
    }
}
