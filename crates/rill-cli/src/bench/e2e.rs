//! `rill bench e2e`: one producer sends records at a fixed `--rate` for
//! `--duration` seconds while one consumer reads them; each record's latency
//! runs from the moment it was sent to the moment the consumer got it.
//!
//! The send time travels in the record's value (microseconds on this
//! process's monotonic clock) rather than in its Kafka timestamp, whose
//! millisecond resolution would blur latencies of a few milliseconds and
//! which a topic with `LogAppendTime` replaces with the broker's clock. The
//! value also carries a run id, so records other writers put in the topic
//! are not counted.
//!
//! Before the clock starts, one warm-up record per partition goes through,
//! so that connections and the first fetch are not in any latency.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::produce::{await_deliveries, create_producer, pace, send};
use super::{
    check_record_size, consumer_config, ensure_topic, latency_histogram, latency_json,
    topic_partitions, KafkaContext, Outcome, Payloads, ProducerArgs, SplitMix64, IDLE_TIMEOUT,
    METADATA_TIMEOUT,
};

/// A value starts with its send time (u64, little endian, µs), its run id
/// (u64) and a flag byte (1 for a warm-up record).
const HEADER_BYTES: usize = 17;
/// The longest run: a day.
const DURATION_MAX_SECONDS: f64 = 86_400.0;

#[derive(Debug, Args)]
pub struct E2eArgs {
    /// A broker to bootstrap from.
    #[arg(long, env = "RILL_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// The topic to write to and read from.
    #[arg(long)]
    topic: String,
    /// Records per second to send.
    #[arg(long)]
    rate: f64,
    /// How long to send, in seconds.
    #[arg(long)]
    duration: f64,
    /// The size of each record's value, in bytes (at least 17: the send time and run id).
    #[arg(long, default_value_t = 100)]
    record_size: usize,
    /// Create the topic with this many partitions if it does not exist.
    #[arg(long)]
    partitions: Option<i32>,
    #[command(flatten)]
    producer: ProducerArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(super) json: bool,
}

/// What the consumer thread hands back.
struct Consumed {
    records: u64,
    latency_us: Histogram<u64>,
}

/// What the producer side tells the consumer thread.
struct Progress {
    /// Records sent in the timed part so far.
    sent: AtomicU64,
    /// Set once every record is sent and answered: `sent` is final.
    sending_done: AtomicBool,
    /// Set by the consumer when it has seen every warm-up record.
    warmed_up: AtomicBool,
    /// Set when either side fails, so the other stops.
    abort: AtomicBool,
}

pub(super) fn run(args: &E2eArgs) -> anyhow::Result<Outcome> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number of records per second");
    }
    if !(args.duration > 0.0 && args.duration <= DURATION_MAX_SECONDS) {
        bail!("--duration must be more than 0 and at most {DURATION_MAX_SECONDS} seconds");
    }
    check_record_size(args.record_size)?;
    if args.record_size < HEADER_BYTES {
        bail!("--record-size must be at least {HEADER_BYTES} for e2e (send time and run id)");
    }
    if let Some(partitions) = args.partitions {
        ensure_topic(&args.bootstrap, &args.topic, partitions)?;
    }
    let partitions = topic_partitions(&args.bootstrap, &args.topic)?;
    // One clock for both sides: they are threads of this process.
    let clock = Instant::now();
    let wall_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    let run_id = SplitMix64(wall_ns ^ u64::from(std::process::id())).next();
    let consumer = assign_at_end(args, &partitions)?;
    let progress = Progress {
        sent: AtomicU64::new(0),
        sending_done: AtomicBool::new(false),
        warmed_up: AtomicBool::new(false),
        abort: AtomicBool::new(false),
    };

    let (consumed, produced) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let result = read(&consumer, clock, run_id, partitions.len() as u64, &progress);
            if result.is_err() {
                progress.abort.store(true, Ordering::Relaxed);
            }
            result
        });
        let produced = write(args, clock, run_id, &partitions, &progress);
        if produced.is_err() {
            progress.abort.store(true, Ordering::Relaxed);
        }
        let consumed = match reader.join() {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!("the consumer thread panicked")),
        };
        (consumed, produced)
    });
    // The consumer's error first: when it fails, the producer only stops.
    let consumed = consumed?;
    let produced = produced?;
    let lost = produced.sent.saturating_sub(consumed.records);
    Ok(Outcome {
        mode: "e2e",
        records: consumed.records,
        bytes: consumed.records * args.record_size as u64,
        seconds: produced.seconds,
        latency_us: Some(consumed.latency_us),
        failed: lost,
        first_error: produced
            .first_error
            .or_else(|| (lost > 0).then(|| format!("{lost} sent records were not consumed"))),
        extra: vec![
            ("topic", args.topic.clone().into()),
            ("partitions", partitions.len().into()),
            ("record_size", args.record_size.into()),
            ("acks", args.producer.acks.as_config().into()),
            ("target_rate", args.rate.into()),
            ("sent", produced.sent.into()),
            (
                "delivery_latency_ms",
                Some(&produced.delivery_latency_us)
                    .filter(|h| !h.is_empty())
                    .map(latency_json)
                    .into(),
            ),
        ],
    })
}

/// A consumer assigned every partition at its current end, so that it reads
/// exactly what this run sends.
fn assign_at_end(args: &E2eArgs, partitions: &[i32]) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = consumer_config(&args.bootstrap, "rill-bench-e2e")
        .create()
        .kafka_context(|| "cannot create a consumer".to_string())?;
    let mut assignment = TopicPartitionList::new();
    for &partition in partitions {
        let (_, high) = consumer
            .fetch_watermarks(&args.topic, partition, METADATA_TIMEOUT)
            .kafka_context(|| format!("cannot read the end of {}-{partition}", args.topic))?;
        assignment.add_partition_offset(&args.topic, partition, Offset::Offset(high))?;
    }
    consumer
        .assign(&assignment)
        .kafka_context(|| "cannot assign partitions".to_string())?;
    Ok(consumer)
}

/// What the producer side measured.
struct Produced {
    sent: u64,
    seconds: f64,
    delivery_latency_us: Histogram<u64>,
    first_error: Option<String>,
}

fn write(
    args: &E2eArgs,
    clock: Instant,
    run_id: u64,
    partitions: &[i32],
    progress: &Progress,
) -> anyhow::Result<Produced> {
    let producer = create_producer(&args.producer.client_config(&args.bootstrap), clock)?;
    let payloads = Payloads::new(args.record_size, run_id);
    let mut random = SplitMix64(run_id);
    let mut value = vec![0u8; args.record_size];
    let stamp = |value: &mut Vec<u8>, random: &mut SplitMix64, warm_up: bool| {
        value.copy_from_slice(payloads.value(random));
        let now_us = clock.elapsed().as_micros() as u64;
        value[0..8].copy_from_slice(&now_us.to_le_bytes());
        value[8..16].copy_from_slice(&run_id.to_le_bytes());
        value[16] = u8::from(warm_up);
    };

    for &partition in partitions {
        stamp(&mut value, &mut random, true);
        send(
            &producer,
            BaseRecord::with_opaque_to(&args.topic, 0usize)
                .partition(partition)
                .payload(&value[..]),
        )?;
    }
    await_deliveries(&producer, partitions.len() as u64)?;
    let warm_up_deadline = Instant::now() + IDLE_TIMEOUT;
    while !progress.warmed_up.load(Ordering::Relaxed) {
        if progress.abort.load(Ordering::Relaxed) {
            return Err(anyhow::anyhow!("the consumer failed"));
        }
        if Instant::now() > warm_up_deadline {
            bail!(
                "the consumer did not receive the warm-up records within {} s",
                IDLE_TIMEOUT.as_secs()
            );
        }
        producer.poll(Duration::from_millis(1));
    }
    // The warm-up's delivery latencies (connecting included) are not part
    // of the measurement.
    let warm_up_reports = partitions.len() as u64;
    producer.context().clear_latency();

    let start = Instant::now();
    let duration = Duration::from_secs_f64(args.duration);
    let mut sent = 0u64;
    let until = start + duration;
    while Instant::now() < until && !progress.abort.load(Ordering::Relaxed) {
        if !pace(&producer, start, args.rate, sent, Some(until)) {
            break;
        }
        if sent.is_multiple_of(256) {
            producer.poll(Duration::ZERO);
        }
        stamp(&mut value, &mut random, false);
        send(
            &producer,
            BaseRecord::with_opaque_to(&args.topic, 0usize).payload(&value[..]),
        )?;
        sent += 1;
        progress.sent.store(sent, Ordering::Relaxed);
    }
    let seconds = start.elapsed().as_secs_f64();
    let answered = await_deliveries(&producer, warm_up_reports + sent);
    progress.sending_done.store(true, Ordering::Relaxed);
    answered?;
    let context = producer.context();
    Ok(Produced {
        sent,
        seconds,
        delivery_latency_us: context.latency(),
        first_error: context.first_error(),
    })
}

fn read(
    consumer: &BaseConsumer,
    clock: Instant,
    run_id: u64,
    warm_up_records: u64,
    progress: &Progress,
) -> anyhow::Result<Consumed> {
    let mut histogram = latency_histogram()?;
    let mut warm_up_seen = 0u64;
    let mut records = 0u64;
    let mut last_progress = Instant::now();
    loop {
        if progress.abort.load(Ordering::Relaxed) {
            return Ok(Consumed {
                records,
                latency_us: histogram,
            });
        }
        if progress.sending_done.load(Ordering::Relaxed)
            && records >= progress.sent.load(Ordering::Relaxed)
        {
            break;
        }
        match consumer.poll(Duration::from_millis(10)) {
            Some(Ok(message)) => {
                let now_us = clock.elapsed().as_micros() as u64;
                let Some(value) = message.payload() else {
                    continue;
                };
                if value.len() < HEADER_BYTES || value[8..16] != run_id.to_le_bytes() {
                    continue;
                }
                last_progress = Instant::now();
                if value[16] == 1 {
                    warm_up_seen += 1;
                    if warm_up_seen == warm_up_records {
                        progress.warmed_up.store(true, Ordering::Relaxed);
                    }
                    continue;
                }
                let mut sent_at = [0u8; 8];
                sent_at.copy_from_slice(&value[0..8]);
                let latency = now_us.saturating_sub(u64::from_le_bytes(sent_at)).max(1);
                histogram.saturating_record(latency);
                records += 1;
            }
            Some(Err(error)) => bail!("consume failed: {error}"),
            None if last_progress.elapsed() > IDLE_TIMEOUT => {
                // Records still missing after this long are lost, not late;
                // the caller reports them as failed.
                if progress.sending_done.load(Ordering::Relaxed) {
                    break;
                }
                if !progress.warmed_up.load(Ordering::Relaxed) {
                    bail!(
                        "the consumer got {warm_up_seen} of {warm_up_records} warm-up records in {} s",
                        IDLE_TIMEOUT.as_secs()
                    );
                }
            }
            None => {}
        }
    }
    Ok(Consumed {
        records,
        latency_us: histogram,
    })
}
