//! `rill bench produce`: `--producers` librdkafka producers, one thread
//! each, send `--records` records between them; each record is timed from
//! `send` to its delivery report.
//!
//! With `--transactional-id` each producer is transactional: it calls
//! `init_transactions` once (before the clock starts), then begins a
//! transaction, sends `--records-per-transaction` records and commits,
//! again and again. Each commit is timed twice: from the transaction's last
//! `send` to the commit's return (what an application waits for after its
//! last record), and the `commit_transaction` call alone, made once every
//! record of the transaction has its delivery report (the EndTxn round
//! trip).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::{
    check_record_size, ensure_topic, latency_histogram, latency_json, topic_partitions, Acks,
    KafkaContext, Outcome, Payloads, ProducerArgs, SplitMix64, CLIENTS_MAX, IDLE_TIMEOUT,
    METADATA_TIMEOUT,
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
    /// Send in transactions under this transactional id (with more than one
    /// producer, producer i takes `ID-i`); needs `--acks all`.
    #[arg(long)]
    transactional_id: Option<String>,
    /// How many records each transaction holds (the last may hold fewer).
    #[arg(long, default_value_t = 1000, requires = "transactional_id",
          value_parser = clap::value_parser!(u64).range(1..))]
    records_per_transaction: u64,
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

/// A benchmark producer with `config` (`ProducerArgs::client_config` and
/// what the mode adds), its delivery reports timed against `start`.
pub(super) fn create_producer(
    config: &ClientConfig,
    start: Instant,
) -> anyhow::Result<BaseProducer<Deliveries>> {
    let producer: BaseProducer<Deliveries> = config
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

/// How often `await_deliveries` looks for delivery reports. The rdkafka
/// crate's `poll(timeout)` always waits out its whole timeout, even when a
/// report arrives at once, so polling in 1 ms steps ended each wait up to
/// 1 ms late; a transaction pays for that wait once per commit, which at a
/// few milliseconds per transaction was a tenth of what was measured.
const DELIVERY_POLL_INTERVAL: Duration = Duration::from_micros(100);

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
        producer.poll(Duration::ZERO);
        let now_reported = context.reported.load(Ordering::Relaxed);
        if now_reported > reported {
            reported = now_reported;
            last_progress = Instant::now();
            continue;
        }
        std::thread::sleep(DELIVERY_POLL_INTERVAL);
        if last_progress.elapsed() > IDLE_TIMEOUT {
            bail!(
                "{} of {sent} records have had no answer from the broker for {} s",
                sent - reported,
                IDLE_TIMEOUT.as_secs()
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
    transactions: Option<Transactions>,
}

/// The transactions of one producer: `records_each` records between each
/// begin and commit.
struct Transactions {
    records_each: u64,
    committed: u64,
    /// From the transaction's last `send` to the return of its commit.
    commit_us: Histogram<u64>,
    /// `commit_transaction` alone, called once every record of the
    /// transaction has its delivery report.
    end_txn_us: Histogram<u64>,
}

impl Transactions {
    fn new(records_each: u64) -> anyhow::Result<Transactions> {
        Ok(Transactions {
            records_each,
            committed: 0,
            commit_us: latency_histogram()?,
            end_txn_us: latency_histogram()?,
        })
    }

    /// Begins a transaction if record number `index` (from 0) is the first of one.
    fn begin_before(&self, producer: &BaseProducer<Deliveries>, index: u64) -> anyhow::Result<()> {
        if index.is_multiple_of(self.records_each) {
            producer
                .begin_transaction()
                .kafka_context(|| "cannot begin a transaction".to_string())?;
        }
        Ok(())
    }

    /// Commits the open transaction if `sent` records (of `records` in all)
    /// close one.
    fn commit_after(
        &mut self,
        producer: &BaseProducer<Deliveries>,
        sent: u64,
        records: u64,
    ) -> anyhow::Result<()> {
        if !(sent.is_multiple_of(self.records_each) || sent == records) {
            return Ok(());
        }
        let last_send = Instant::now();
        // librdkafka commits only once every record is delivered and its
        // report served. The rdkafka crate's `commit_transaction` waits for
        // that itself, but in steps of 100 ms, which would be most of what
        // this measured; served here first, its wait finds nothing left.
        await_deliveries(producer, sent)?;
        let end_txn = Instant::now();
        producer
            .commit_transaction(IDLE_TIMEOUT)
            .kafka_context(|| "cannot commit a transaction".to_string())?;
        let us = |since: Instant| (since.elapsed().as_micros() as u64).max(1);
        self.commit_us.saturating_record(us(last_send));
        self.end_txn_us.saturating_record(us(end_txn));
        self.committed += 1;
        Ok(())
    }

    /// Adds `other`'s counts and latencies to these.
    fn add(&mut self, other: &Transactions) -> anyhow::Result<()> {
        self.committed += other.committed;
        self.commit_us
            .add(&other.commit_us)
            .context("cannot merge latency histograms")?;
        self.end_txn_us
            .add(&other.end_txn_us)
            .context("cannot merge latency histograms")?;
        Ok(())
    }
}

pub(super) fn run(args: &ProduceArgs) -> anyhow::Result<Outcome> {
    check_record_size(args.record_size)?;
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number of records per second, not {rate}");
        }
    }
    if args.transactional_id.is_some() && !matches!(args.producer.acks, Acks::All) {
        bail!("--transactional-id needs --acks all (a transactional producer is idempotent)");
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
    let mut transactions = match args.transactional_id {
        Some(_) => Some(Transactions::new(args.records_per_transaction)?),
        None => None,
    };
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
        if let (Some(all), Some(one)) = (&mut transactions, &run.transactions) {
            all.add(one)?;
        }
    }
    let delivered = sent - failed;
    let mut extra = vec![
        ("topic", args.topic.clone().into()),
        ("partitions", partitions.len().into()),
        ("record_size", args.record_size.into()),
        ("acks", args.producer.acks.as_config().into()),
        ("compression", args.producer.compression.as_config().into()),
        ("producers", producers.into()),
        ("keys", args.keys.into()),
        ("rate", args.rate.into()),
    ];
    if let (Some(id), Some(transactions)) = (&args.transactional_id, &transactions) {
        extra.extend([
            ("transactional_id", id.clone().into()),
            ("records_per_transaction", transactions.records_each.into()),
            ("transactions", transactions.committed.into()),
            ("commit_latency_ms", latency_json(&transactions.commit_us)),
            ("end_txn_latency_ms", latency_json(&transactions.end_txn_us)),
        ]);
    }
    Ok(Outcome {
        mode: "produce",
        records: delivered,
        bytes: delivered * args.record_size as u64,
        seconds,
        latency_us: Some(latency_us),
        failed,
        first_error,
        extra,
    })
}

/// The configuration of producer `index`: the shared settings, and for a
/// transactional run its transactional id.
fn producer_config(args: &ProduceArgs, index: u64) -> ClientConfig {
    let mut config = args.producer.client_config(&args.bootstrap);
    if let Some(id) = &args.transactional_id {
        let id = match args.producers {
            1 => id.clone(),
            _ => format!("{id}-{index}"),
        };
        config
            .set("transactional.id", id)
            .set("enable.idempotence", "true")
            // librdkafka wants it no shorter than `message.timeout.ms`.
            .set("transaction.timeout.ms", "120000")
            // librdkafka sends a partition's batch at once when it holds
            // this many records, and otherwise waits `linger.ms` for more.
            // A transaction's records on one partition thus leave as soon
            // as the last is sent, as a client that flushes on commit
            // would send them, instead of idling `linger.ms` per
            // transaction. (Spread over several partitions, each
            // transaction's tail still waits `linger.ms`.)
            .set(
                "batch.num.messages",
                args.records_per_transaction
                    .min(BATCH_RECORDS_MAX)
                    .to_string(),
            );
    }
    config
}

/// librdkafka's default `batch.num.messages`: transactions larger than
/// this are sent in batches of this size, as records outside them are.
const BATCH_RECORDS_MAX: u64 = 10_000;

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
        create_producer(&producer_config(args, index), Instant::now()).and_then(|producer| {
            producer
                .client()
                .fetch_metadata(Some(&args.topic), METADATA_TIMEOUT)
                .kafka_context(|| {
                    format!("cannot read metadata from a broker at {}", args.bootstrap)
                })?;
            if args.transactional_id.is_some() {
                producer
                    .init_transactions(IDLE_TIMEOUT)
                    .kafka_context(|| "cannot initialise transactions".to_string())?;
            }
            Ok(producer)
        });
    start_line.wait();
    let producer = setup?;
    let mut transactions = match args.transactional_id {
        Some(_) => Some(Transactions::new(args.records_per_transaction)?),
        None => None,
    };
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
        if let Some(transactions) = &transactions {
            transactions.begin_before(&producer, sent)?;
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
        if let Some(transactions) = &mut transactions {
            transactions.commit_after(&producer, sent + 1, records)?;
        }
    }
    await_deliveries(&producer, records)?;
    let context = producer.context();
    Ok(ProducerRun {
        sent: records,
        failed: context.failed.load(Ordering::Relaxed),
        latency_us: context.latency(),
        first_error: context.first_error(),
        transactions,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProduceArgs,
    }

    #[test]
    fn transactional_producers_take_their_own_ids_and_batch_a_transaction() {
        let cli = Cli::try_parse_from([
            "produce",
            "--topic=t",
            "--acks=all",
            "--producers=2",
            "--transactional-id=tx",
            "--records-per-transaction=100",
        ])
        .unwrap();
        let config = producer_config(&cli.args, 1);
        assert_eq!(config.get("transactional.id"), Some("tx-1"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("batch.num.messages"), Some("100"));

        let plain = Cli::try_parse_from(["produce", "--topic=t"]).unwrap();
        let config = producer_config(&plain.args, 0);
        assert_eq!(config.get("transactional.id"), None);
        assert_eq!(config.get("enable.idempotence"), Some("false"));
    }

    #[test]
    fn records_per_transaction_needs_a_transactional_id() {
        let parsed = Cli::try_parse_from(["produce", "--topic=t", "--records-per-transaction=10"]);
        assert!(parsed.is_err());
    }
}
