//! `rill bench produce`: `--producers` librdkafka producers, one thread
//! each, send `--records` records between them; each record is timed from
//! `send` to its delivery report.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::{
    check_record_size, ensure_topic, latency_histogram, topic_partitions, KafkaContext, Outcome,
    Payloads, ProducerArgs, SplitMix64, CLIENTS_MAX, METADATA_TIMEOUT,
};

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// A broker to bootstrap from.
    #[arg(long, env = "RILL_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// The topic to write to.
    #[arg(long)]
    topic: String,
    /// How many records to send, across all producers.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// The size of each record's value, in bytes.
    #[arg(long, default_value_t = 100)]
    record_size: usize,
    /// Create the topic with this many partitions if it does not exist.
    #[arg(long)]
    partitions: Option<i32>,
    #[command(flatten)]
    producer: ProducerArgs,
    /// How many producers send at once, each a client of its own in a thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=CLIENTS_MAX))]
    producers: u64,
    /// Give each record a key drawn from this many distinct values (no keys without it).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    keys: Option<u64>,
    /// The most records per second, across all producers (no cap without it).
    #[arg(long)]
    rate: Option<f64>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(super) json: bool,
}

/// Records each delivery report's latency, for one producer.
pub(super) struct Deliveries {
    start: Instant,
    latency_us: Mutex<Histogram<u64>>,
    failed: AtomicU64,
    /// Delivery reports served, successful or not.
    reported: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Deliveries {
    fn new(start: Instant) -> anyhow::Result<Deliveries> {
        Ok(Deliveries {
            start,
            latency_us: Mutex::new(latency_histogram()?),
            failed: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            first_error: Mutex::new(None),
        })
    }

    pub(super) fn latency(&self) -> Histogram<u64> {
        self.latency_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn clear_latency(&self) {
        self.latency_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reset();
    }

    pub(super) fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    /// Microseconds since `start`, when the record was sent.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_at_us: usize) {
        self.reported.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(_) => {
                let now_us = self.start.elapsed().as_micros() as u64;
                let latency = now_us.saturating_sub(sent_at_us as u64).max(1);
                let mut histogram = self.latency_us.lock().unwrap_or_else(|p| p.into_inner());
                histogram.saturating_record(latency);
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| error.to_string());
            }
        }
    }
}

/// A benchmark producer: the shared settings, and delivery reports timed
/// against `start`.
pub(super) fn create_producer(
    settings: &ProducerArgs,
    bootstrap: &str,
    start: Instant,
) -> anyhow::Result<BaseProducer<Deliveries>> {
    let producer: BaseProducer<Deliveries> = settings
        .client_config(bootstrap)
        .create_with_context(Deliveries::new(start)?)
        .kafka_context(|| "cannot create a producer".to_string())?;
    Ok(producer)
}

/// Sends one record, waiting (and serving delivery reports) while
/// librdkafka's queue is full.
pub(super) fn send(
    producer: &BaseProducer<Deliveries>,
    mut record: BaseRecord<'_, [u8], [u8], usize>,
) -> anyhow::Result<()> {
    let start = producer.context().start;
    loop {
        record.delivery_opaque = start.elapsed().as_micros() as usize;
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(1));
            }
            Err((error, _)) => bail!("cannot send: {error}"),
        }
    }
}

/// Serves delivery reports until every one of `sent` records has its own.
/// (`flush` waits for the broker's answers but leaves their reports queued.)
pub(super) fn await_deliveries(
    producer: &BaseProducer<Deliveries>,
    sent: u64,
) -> anyhow::Result<()> {
    let context = producer.context();
    let mut last_progress = Instant::now();
    let mut reported = context.reported.load(Ordering::Relaxed);
    while reported < sent {
        producer.poll(Duration::from_millis(1));
        let now_reported = context.reported.load(Ordering::Relaxed);
        if now_reported > reported {
            reported = now_reported;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > super::IDLE_TIMEOUT {
            bail!(
                "{} of {sent} records have had no answer from the broker for {} s",
                sent - reported,
                super::IDLE_TIMEOUT.as_secs()
            );
        }
    }
    Ok(())
}

/// Waits until `sent` records may have been sent at `rate` records per
/// second since `start`, serving delivery reports meanwhile; false if that
/// moment is past `until`. Records go out in bursts of about a
/// millisecond's worth, so high rates cost no more wake-ups than low ones.
pub(super) fn pace(
    producer: &BaseProducer<Deliveries>,
    start: Instant,
    rate: f64,
    sent: u64,
    until: Option<Instant>,
) -> bool {
    loop {
        let allowed = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
        if sent < allowed {
            return true;
        }
        if until.is_some_and(|until| Instant::now() >= until) {
            return false;
        }
        producer.poll(Duration::from_millis(1));
    }
}

/// What one producer thread did.
struct ProducerRun {
    sent: u64,
    failed: u64,
    latency_us: Histogram<u64>,
    first_error: Option<String>,
}

pub(super) fn run(args: &ProduceArgs) -> anyhow::Result<Outcome> {
    check_record_size(args.record_size)?;
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number of records per second, not {rate}");
        }
    }
    if let Some(partitions) = args.partitions {
        ensure_topic(&args.bootstrap, &args.topic, partitions)?;
    }
    let partitions = topic_partitions(&args.bootstrap, &args.topic)?;
    let payloads = Payloads::new(args.record_size, 0x5eed);
    let producers = args.producers;
    let rate_each = args.rate.map(|rate| rate / producers as f64);
    let start_line = Barrier::new(producers as usize + 1);
    let mut start = Instant::now();

    let runs: Vec<anyhow::Result<ProducerRun>> = std::thread::scope(|scope| {
        let mut threads = Vec::new();
        for index in 0..producers {
            // The first producers take one more record each when the count
            // does not divide evenly.
            let records = args.records / producers + u64::from(index < args.records % producers);
            let (payloads, start_line) = (&payloads, &start_line);
            threads.push(
                scope.spawn(move || {
                    produce_one(args, index, records, rate_each, payloads, start_line)
                }),
            );
        }
        // Every producer has connected and read the topic's metadata at the
        // barrier, so the clock measures sending, not connecting.
        start_line.wait();
        start = Instant::now();
        threads
            .into_iter()
            .map(|thread| match thread.join() {
                Ok(result) => result,
                Err(_) => Err(anyhow::anyhow!("a producer thread panicked")),
            })
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();

    let mut latency_us = latency_histogram()?;
    let (mut sent, mut failed, mut first_error) = (0, 0, None);
    for run in runs {
        let run = run?;
        sent += run.sent;
        failed += run.failed;
        latency_us
            .add(&run.latency_us)
            .context("cannot merge latency histograms")?;
        if first_error.is_none() {
            first_error = run.first_error;
        }
    }
    let delivered = sent - failed;
    Ok(Outcome {
        mode: "produce",
        records: delivered,
        bytes: delivered * args.record_size as u64,
        seconds,
        latency_us: Some(latency_us),
        failed,
        first_error,
        extra: vec![
            ("topic", args.topic.clone().into()),
            ("partitions", partitions.len().into()),
            ("record_size", args.record_size.into()),
            ("acks", args.producer.acks.as_config().into()),
            ("compression", args.producer.compression.as_config().into()),
            ("producers", producers.into()),
            ("keys", args.keys.into()),
            ("rate", args.rate.into()),
        ],
    })
}

/// One producer thread: connect, wait for the others at `start_line`, send
/// `records` records, wait for their delivery reports.
fn produce_one(
    args: &ProduceArgs,
    index: u64,
    records: u64,
    rate: Option<f64>,
    payloads: &Payloads,
    start_line: &Barrier,
) -> anyhow::Result<ProducerRun> {
    // Every thread must reach the barrier, even one whose producer cannot be
    // made, or the others would wait for it forever.
    let setup =
        create_producer(&args.producer, &args.bootstrap, Instant::now()).and_then(|producer| {
            producer
                .client()
                .fetch_metadata(Some(&args.topic), METADATA_TIMEOUT)
                .kafka_context(|| {
                    format!("cannot read metadata from a broker at {}", args.bootstrap)
                })?;
            Ok(producer)
        });
    start_line.wait();
    let producer = setup?;
    let start = Instant::now();
    let mut random = SplitMix64(0xb0a7 ^ index.wrapping_mul(0x1000_0001));
    let mut key = Vec::with_capacity(24);
    for sent in 0..records {
        if let Some(rate) = rate {
            pace(&producer, start, rate, sent, None);
        }
        // Delivery reports are served only by `poll`; serve them often so
        // that each latency is taken close to its report's arrival.
        if sent.is_multiple_of(256) {
            producer.poll(Duration::ZERO);
        }
        let mut record =
            BaseRecord::with_opaque_to(&args.topic, 0usize).payload(payloads.value(&mut random));
        if let Some(keys) = args.keys {
            key.clear();
            // Writing to a Vec cannot fail.
            let _ = write!(key, "key-{}", random.next() % keys);
            record = record.key(&key[..]);
        }
        send(&producer, record)?;
    }
    await_deliveries(&producer, records)?;
    let context = producer.context();
    Ok(ProducerRun {
        sent: records,
        failed: context.failed.load(Ordering::Relaxed),
        latency_us: context.latency(),
        first_error: context.first_error(),
    })
}
