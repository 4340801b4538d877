//! `rill bench`: throughput and latency of any Kafka-compatible broker,
//! measured through librdkafka (the `rdkafka` crate).
//!
//! `produce` sends `--records` records of `--record-size` bytes and times
//! each from `send` to its delivery report; `consume` reads `--records`
//! records from the start of every partition of a topic. Latencies go into
//! an HDR histogram (microsecond resolution).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Produce records as fast as the broker takes them.
    Produce(ProduceArgs),
    /// Consume records from the beginning of a topic.
    Consume(ConsumeArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Acks {
    #[value(name = "0")]
    Zero,
    #[value(name = "1")]
    One,
    #[value(name = "all")]
    All,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// A broker to bootstrap from.
    #[arg(long, env = "RILL_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    #[arg(long, default_value_t = 100)]
    record_size: usize,
    /// Create the topic with this many partitions if it does not exist.
    #[arg(long)]
    partitions: Option<i32>,
    #[arg(long, value_enum, default_value = "1")]
    acks: Acks,
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// librdkafka's `batch.size`: the most bytes in one batch.
    #[arg(long, default_value_t = 1_000_000)]
    batch_bytes: u64,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    compression: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[arg(long, env = "RILL_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    #[arg(long)]
    json: bool,
}

/// What a run measured.
struct Outcome {
    records: u64,
    bytes: u64,
    seconds: f64,
    latency_us: Option<Histogram<u64>>,
    failed: u64,
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    let (json, outcome) = match command {
        BenchCommand::Produce(args) => (args.json, produce(&args)?),
        BenchCommand::Consume(args) => (args.json, consume(&args)?),
    };
    report(&outcome, json);
    if outcome.failed > 0 {
        bail!("{} records were not delivered", outcome.failed);
    }
    Ok(())
}

/// Records each delivery report's latency.
struct Deliveries {
    start: Instant,
    latency_us: std::sync::Mutex<Histogram<u64>>,
    failed: std::sync::atomic::AtomicU64,
    /// Delivery reports served, successful or not.
    reported: std::sync::atomic::AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    /// Microseconds since the run started, when the record was sent.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_at_us: usize) {
        self.reported
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(_) => {
                let now_us = self.start.elapsed().as_micros() as u64;
                let latency = now_us.saturating_sub(sent_at_us as u64).max(1);
                let mut histogram = self.latency_us.lock().unwrap_or_else(|p| p.into_inner());
                histogram.saturating_record(latency);
            }
            Err((error, _)) => {
                self.failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| error.to_string());
            }
        }
    }
}

fn ensure_topic(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("cannot create an admin client")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}

fn produce(args: &ProduceArgs) -> anyhow::Result<Outcome> {
    if let Some(partitions) = args.partitions {
        ensure_topic(&args.bootstrap, &args.topic, partitions)?;
    }
    let acks = match args.acks {
        Acks::Zero => "0",
        Acks::One => "1",
        Acks::All => "all",
    };
    let context = Deliveries {
        start: Instant::now(),
        // 1 µs to 10 minutes at 3 significant digits.
        latency_us: std::sync::Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        failed: Default::default(),
        reported: Default::default(),
        first_error: Default::default(),
    };
    let producer: BaseProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("acks", acks)
        .set("enable.idempotence", "false")
        .set("linger.ms", args.linger_ms.to_string())
        .set("batch.size", args.batch_bytes.to_string())
        .set("compression.codec", &args.compression)
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .set("message.timeout.ms", "120000")
        .create_with_context(context)
        .context("cannot create a producer")?;
    let payload = vec![b'x'; args.record_size];
    let start = producer.context().start;
    for sent in 0..args.records {
        // Delivery reports are served only by `poll`; serve them often so
        // that each latency is taken close to its report's arrival.
        if sent % 256 == 0 {
            producer.poll(Duration::ZERO);
        }
        let mut record: BaseRecord<'_, (), [u8], usize> =
            BaseRecord::with_opaque_to(&args.topic, 0usize).payload(&payload[..]);
        loop {
            record.delivery_opaque = start.elapsed().as_micros() as usize;
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(1));
                }
                Err((error, _)) => bail!("cannot send: {error}"),
            }
        }
    }
    // `flush` waits for the broker's answers but leaves their delivery
    // reports queued; poll until every one is served.
    let deadline = Instant::now() + Duration::from_secs(300);
    let context = producer.context();
    while context.reported.load(std::sync::atomic::Ordering::Relaxed) < args.records {
        if Instant::now() > deadline {
            bail!("not every record was delivered within 5 minutes");
        }
        producer.poll(Duration::from_millis(1));
    }
    let seconds = start.elapsed().as_secs_f64();
    let failed = context.failed.load(std::sync::atomic::Ordering::Relaxed);
    if let Some(error) = context
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        eprintln!("rill bench: first delivery error: {error}");
    }
    let latency = context
        .latency_us
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Outcome {
        records: args.records - failed,
        bytes: (args.records - failed) * args.record_size as u64,
        seconds,
        latency_us: Some(latency),
        failed,
    })
}

fn consume(args: &ConsumeArgs) -> anyhow::Result<Outcome> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("group.id", "rill-bench")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("queued.max.messages.kbytes", "1048576")
        .create()
        .context("cannot create a consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(&args.topic), Duration::from_secs(30))
        .context("cannot read topic metadata")?;
    let topic = metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .with_context(|| format!("topic {} does not exist", args.topic))?;
    let mut assignment = TopicPartitionList::new();
    for partition in topic.partitions() {
        assignment.add_partition_offset(&args.topic, partition.id(), Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let start = Instant::now();
    let mut records = 0u64;
    let mut bytes = 0u64;
    let mut idle_since = Instant::now();
    while records < args.records {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                records += 1;
                bytes += message.payload_len() as u64;
                idle_since = Instant::now();
            }
            Some(Err(error)) => bail!("consume failed: {error}"),
            None if idle_since.elapsed() > Duration::from_secs(30) => {
                bail!("no records for 30 s after {records} of {}", args.records)
            }
            None => {}
        }
    }
    Ok(Outcome {
        records,
        bytes,
        seconds: start.elapsed().as_secs_f64(),
        latency_us: None,
        failed: 0,
    })
}

fn report(outcome: &Outcome, json: bool) {
    let records_per_sec = outcome.records as f64 / outcome.seconds;
    let mb_per_sec = outcome.bytes as f64 / outcome.seconds / 1e6;
    let ms = |q: f64| {
        outcome
            .latency_us
            .as_ref()
            .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
    };
    let max = outcome.latency_us.as_ref().map(|h| h.max() as f64 / 1000.0);
    if json {
        let latency = match outcome.latency_us {
            Some(_) => serde_json::json!({
                "p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": max,
            }),
            None => serde_json::Value::Null,
        };
        let value = serde_json::json!({
            "records": outcome.records,
            "bytes": outcome.bytes,
            "seconds": outcome.seconds,
            "records_per_sec": records_per_sec,
            "mb_per_sec": mb_per_sec,
            "failed": outcome.failed,
            "latency_ms": latency,
        });
        println!("{value}");
        return;
    }
    println!("records      {}", outcome.records);
    println!("bytes        {}", outcome.bytes);
    println!("seconds      {:.3}", outcome.seconds);
    println!("records/s    {records_per_sec:.0}");
    println!("MB/s         {mb_per_sec:.1}");
    if let (Some(p50), Some(p99), Some(p999), Some(max)) = (ms(0.5), ms(0.99), ms(0.999), max) {
        println!("latency ms   p50 {p50:.2}  p99 {p99:.2}  p99.9 {p999:.2}  max {max:.2}");
    }
}
