//! `rill bench consume`: `--consumers` librdkafka consumers, one thread
//! each, read `--records` records between them from the beginning of a
//! topic. Without `--group` the topic's partitions are assigned to them by
//! hand; with it they subscribe as members of that consumer group and the
//! broker's group coordinator shares the partitions out.
//!
//! The clock runs from the first record any consumer receives to the
//! `--records`th, so that connecting and a group's join (which a broker may
//! hold back for `group.initial.rebalance.delay.ms`) are not counted as
//! reading time. Nothing is committed: the same group can be measured again.
//!
//! `--isolation-level read_committed` (librdkafka's default, and so what
//! this mode always did) reads up to the last stable offset and drops the
//! records of aborted transactions; `read_uncommitted` reads up to the high
//! watermark. Transaction markers are never counted as records.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, ValueEnum};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::{consumer_config, topic_partitions, KafkaContext, Outcome, CLIENTS_MAX, IDLE_TIMEOUT};

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// A broker to bootstrap from.
    #[arg(long, env = "RILL_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// The topic to read.
    #[arg(long)]
    topic: String,
    /// How many records to read, across all consumers.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// How many consumers read at once, each a client of its own in a thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=CLIENTS_MAX))]
    consumers: u64,
    /// Read as members of this consumer group (without it, partitions are assigned by hand).
    #[arg(long)]
    group: Option<String>,
    /// Which records a fetch may return: those of committed (and of no)
    /// transactions only, or every record below the high watermark.
    #[arg(long, value_enum, default_value = "read_committed")]
    isolation_level: IsolationLevel,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum IsolationLevel {
    #[value(name = "read_committed")]
    ReadCommitted,
    #[value(name = "read_uncommitted")]
    ReadUncommitted,
}

impl IsolationLevel {
    /// librdkafka's `isolation.level` value.
    fn as_config(self) -> &'static str {
        match self {
            IsolationLevel::ReadCommitted => "read_committed",
            IsolationLevel::ReadUncommitted => "read_uncommitted",
        }
    }
}

/// What the consumer threads share.
struct Shared {
    /// Records taken so far; a record counts only while this is below the
    /// target, so the total is exact however the consumers interleave.
    taken: AtomicU64,
    bytes: AtomicU64,
    /// Set when the run is over: the target reached or a consumer failed.
    done: AtomicBool,
    first_record_at: OnceLock<Instant>,
    last_record_at: OnceLock<Instant>,
    /// Microseconds since `started` at the last record any consumer took.
    last_progress_us: AtomicU64,
    started: Instant,
}

pub(super) fn run(args: &ConsumeArgs) -> anyhow::Result<Outcome> {
    let partitions = topic_partitions(&args.bootstrap, &args.topic)?;
    if args.group.is_none() && args.consumers as usize > partitions.len() {
        bail!(
            "{} consumers without --group need as many partitions; topic {} has {}",
            args.consumers,
            args.topic,
            partitions.len()
        );
    }
    let shared = Shared {
        taken: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        done: AtomicBool::new(args.records == 0),
        first_record_at: OnceLock::new(),
        last_record_at: OnceLock::new(),
        last_progress_us: AtomicU64::new(0),
        started: Instant::now(),
    };
    let results: Vec<anyhow::Result<()>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..args.consumers)
            .map(|index| {
                // Partitions dealt round-robin: consumer i takes i, i+K, ...
                let assigned: Vec<i32> = partitions
                    .iter()
                    .skip(index as usize)
                    .step_by(args.consumers as usize)
                    .copied()
                    .collect();
                let shared = &shared;
                scope.spawn(move || {
                    let result = consume_one(args, &assigned, shared);
                    if result.is_err() {
                        shared.done.store(true, Ordering::Relaxed);
                    }
                    result
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| match thread.join() {
                Ok(result) => result,
                Err(_) => Err(anyhow::anyhow!("a consumer thread panicked")),
            })
            .collect()
    });
    for result in results {
        result?;
    }
    let records = shared.taken.load(Ordering::Relaxed).min(args.records);
    let seconds = match (shared.first_record_at.get(), shared.last_record_at.get()) {
        (Some(first), Some(last)) => last.duration_since(*first).as_secs_f64(),
        _ => 0.0,
    };
    Ok(Outcome {
        mode: "consume",
        records,
        bytes: shared.bytes.load(Ordering::Relaxed),
        seconds,
        // Reading stored records has no per-record latency worth the name:
        // their timestamps say how old the data is, not how fast it came.
        latency_us: None,
        failed: 0,
        first_error: None,
        extra: vec![
            ("topic", args.topic.clone().into()),
            ("partitions", partitions.len().into()),
            ("consumers", args.consumers.into()),
            ("group", args.group.clone().into()),
            ("isolation_level", args.isolation_level.as_config().into()),
        ],
    })
}

fn consume_one(args: &ConsumeArgs, assigned: &[i32], shared: &Shared) -> anyhow::Result<()> {
    // librdkafka wants a group id even for assigned partitions; with
    // nothing committed under it, the broker never hears of it.
    let group = args.group.as_deref().unwrap_or("rill-bench");
    let mut config = consumer_config(&args.bootstrap, group);
    config
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", args.isolation_level.as_config());
    let consumer: BaseConsumer = config
        .create()
        .kafka_context(|| "cannot create a consumer".to_string())?;
    match &args.group {
        Some(group) => consumer
            .subscribe(&[&args.topic])
            .kafka_context(|| format!("cannot join group {group}"))?,
        None => {
            let mut assignment = TopicPartitionList::new();
            for &partition in assigned {
                assignment.add_partition_offset(&args.topic, partition, Offset::Beginning)?;
            }
            consumer
                .assign(&assignment)
                .kafka_context(|| "cannot assign partitions".to_string())?;
        }
    }
    while !shared.done.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => take(shared, args.records, message.payload_len() as u64),
            Some(Err(error)) => bail!("consume failed: {error}"),
            None => {
                let last = Duration::from_micros(shared.last_progress_us.load(Ordering::Relaxed));
                let idle = shared.started.elapsed().saturating_sub(last);
                if idle > IDLE_TIMEOUT {
                    bail!(
                        "no records for {} s after {} of {}",
                        IDLE_TIMEOUT.as_secs(),
                        shared.taken.load(Ordering::Relaxed).min(args.records),
                        args.records
                    );
                }
            }
        }
    }
    Ok(())
}

/// Counts one record of `bytes` bytes if the target is not yet reached.
fn take(shared: &Shared, target: u64, bytes: u64) {
    let now = Instant::now();
    let index = shared.taken.fetch_add(1, Ordering::Relaxed);
    if index >= target {
        return;
    }
    shared.first_record_at.get_or_init(|| now);
    shared.bytes.fetch_add(bytes, Ordering::Relaxed);
    shared.last_progress_us.store(
        now.duration_since(shared.started).as_micros() as u64,
        Ordering::Relaxed,
    );
    if index + 1 == target {
        let _ = shared.last_record_at.set(now);
        shared.done.store(true, Ordering::Relaxed);
    }
}
