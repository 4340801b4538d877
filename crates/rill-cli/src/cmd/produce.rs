//! `rill produce TOPIC`: one record per input line, through librdkafka.
//!
//! Lines are read as bytes (records need not be UTF-8) and sent as they are
//! read; librdkafka batches them. Each record carries its line number to its
//! delivery report, so a failure can say which line it was. The topic is
//! looked up first, so a missing topic or an unreachable cluster fails
//! before anything is read.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use super::{
    describe_topic, parse_key_value, quiet_client_context, show_bytes, show_duration, ConnectArgs,
    Diagnostics,
};

/// How long `flush` may wait past the delivery timeout: by then librdkafka
/// has failed every record it still held, so this only covers reporting.
const FLUSH_MARGIN: Duration = Duration::from_secs(5);
/// How long to let librdkafka drain its queue when it is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Acks {
    /// Do not wait for the broker.
    #[value(name = "0")]
    Zero,
    /// Wait for the leader's log.
    #[value(name = "1")]
    One,
    /// Wait for every in-sync replica (and send idempotently).
    #[value(name = "all")]
    All,
}

impl Acks {
    /// librdkafka's `acks` value.
    pub fn as_config(self) -> &'static str {
        match self {
            Acks::Zero => "0",
            Acks::One => "1",
            Acks::All => "all",
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// librdkafka's `compression.type` value.
    pub fn as_config(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// The topic.
    pub topic: String,
    /// Read lines from this file instead of standard input.
    #[arg(long, short)]
    pub file: Option<PathBuf>,
    /// Split each line at the first SEPARATOR into key and value; a line
    /// without it fails.
    #[arg(long, value_name = "SEPARATOR", value_parser = non_empty)]
    pub key_separator: Option<String>,
    /// A header for every record, as name=value (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_key_value)]
    pub headers: Vec<(String, String)>,
    /// Send every record to this partition [default: by the key's hash,
    /// or spread over the partitions when there is no key].
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    pub partition: Option<i32>,
    /// Which acknowledgement a record waits for.
    #[arg(long, value_enum, default_value = "all")]
    pub acks: Acks,
    /// How batches are compressed.
    #[arg(long, value_enum, default_value = "none")]
    pub compression: Compression,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn non_empty(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("must not be empty".to_string())
    } else {
        Ok(text.to_string())
    }
}

/// Counts delivery reports, and keeps the first failure with its line.
#[derive(Debug, Default)]
struct Deliveries {
    diagnostics: Diagnostics,
    delivered: AtomicU64,
    delivered_bytes: AtomicU64,
    failed: AtomicU64,
    first_failure: Mutex<Option<(usize, String)>>,
}

impl Deliveries {
    fn fail(&self, line: usize, reason: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_failure.lock() {
            if first.as_ref().is_none_or(|(earliest, _)| line < *earliest) {
                *first = Some((line, reason));
            }
        }
    }
}

quiet_client_context!(Deliveries);

impl ProducerContext for Deliveries {
    /// The record's line number, from 1.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, line: usize) {
        match result {
            Ok(message) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                let bytes = message.payload_len() + message.key_len();
                self.delivered_bytes
                    .fetch_add(bytes as u64, Ordering::Relaxed);
            }
            Err((error, _)) => self.fail(line, error.to_string()),
        }
    }
}

pub fn run(args: &ProduceArgs) -> anyhow::Result<()> {
    let connect = &args.connect;
    let mut config = connect.client_config();
    config
        .set("acks", args.acks.as_config())
        .set("compression.type", args.compression.as_config())
        // Retries of an idempotent producer cannot duplicate or reorder;
        // librdkafka allows idempotence only with acks=all.
        .set(
            "enable.idempotence",
            if matches!(args.acks, Acks::All) {
                "true"
            } else {
                "false"
            },
        )
        // A record not delivered within the timeout fails, with the reason.
        .set(
            "message.timeout.ms",
            connect
                .timeout
                .as_millis()
                .clamp(1, i32::MAX as u128)
                .to_string(),
        );
    let producer: BaseProducer<Deliveries> = config
        .create_with_context(Deliveries::default())
        .context("cannot create the producer")?;
    let deliveries = producer.context();
    let topic = describe_topic(
        producer.client(),
        connect,
        &deliveries.diagnostics,
        &args.topic,
    )?;
    if let Some(partition) = args.partition {
        if !topic.partitions.iter().any(|p| p.id == partition) {
            bail!(
                "topic '{}' has no partition {partition} (it has {})",
                args.topic,
                topic.partitions.len()
            );
        }
    }

    let (input, size): (Box<dyn Read>, Option<u64>) = match &args.file {
        Some(path) => {
            let file =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            let size = file.metadata().ok().map(|m| m.len());
            (Box::new(file), size)
        }
        None => (Box::new(std::io::stdin().lock()), None),
    };
    // A bar only for a file (its size is known) and only for a person.
    let progress = match size {
        Some(size) if std::io::stderr().is_terminal() => {
            let bar = ProgressBar::new(size);
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta} left",
            ) {
                bar.set_style(style);
            }
            Some(bar)
        }
        _ => None,
    };

    let started = Instant::now();
    let mut reader = BufReader::new(input);
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .context("cannot read the input")?;
        if read == 0 {
            break;
        }
        number += 1;
        if let Some(bar) = &progress {
            bar.inc(read as u64);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let (key, value) = match &args.key_separator {
            None => (None, &line[..]),
            Some(separator) => match find(&line, separator.as_bytes()) {
                Some(at) => (Some(&line[..at]), &line[at + separator.len()..]),
                None => {
                    deliveries.fail(
                        number,
                        format!("no key separator '{separator}' in the line"),
                    );
                    continue;
                }
            },
        };
        send(&producer, args, number, key, value);
    }
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }

    let flushed = producer.flush(connect.timeout + FLUSH_MARGIN);
    let elapsed = started.elapsed();
    let delivered = deliveries.delivered.load(Ordering::Relaxed);
    let bytes = deliveries.delivered_bytes.load(Ordering::Relaxed);
    let failed = deliveries.failed.load(Ordering::Relaxed);
    let undelivered = u64::from(producer.in_flight_count().max(0).unsigned_abs());
    eprintln!(
        "produced {delivered} records ({}) to {} in {}",
        show_bytes(bytes),
        args.topic,
        show_duration(elapsed)
    );
    if failed + undelivered > 0 {
        let first = deliveries
            .first_failure
            .lock()
            .ok()
            .and_then(|first| first.clone());
        let reason = match (first, flushed) {
            (Some((line, reason)), _) => format!("first: line {line}: {reason}"),
            (None, Err(error)) => format!("not delivered in time: {error}"),
            (None, Ok(())) => "not delivered".to_string(),
        };
        bail!(
            "{} of {number} records failed; {reason}",
            failed + undelivered
        );
    }
    Ok(())
}

/// Queues one record, waiting for room while librdkafka's queue is full.
fn send(
    producer: &BaseProducer<Deliveries>,
    args: &ProduceArgs,
    number: usize,
    key: Option<&[u8]>,
    value: &[u8],
) {
    let mut record = BaseRecord::with_opaque_to(&args.topic, number).payload(value);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(partition) = args.partition {
        record = record.partition(partition);
    }
    if !args.headers.is_empty() {
        let mut headers = OwnedHeaders::new_with_capacity(args.headers.len());
        for (name, value) in &args.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        record = record.headers(headers);
    }
    loop {
        match producer.send(record) {
            Ok(()) => break,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                producer.poll(QUEUE_FULL_WAIT);
            }
            Err((error, _)) => {
                producer.context().fail(number, error.to_string());
                break;
            }
        }
    }
    // Serves delivery reports as they arrive.
    producer.poll(Duration::ZERO);
}

/// The first position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_takes_the_first_separator() {
        assert_eq!(find(b"k:v:w", b":"), Some(1));
        assert_eq!(find(b"k::v", b"::"), Some(1));
        assert_eq!(find(b"kv", b":"), None);
        assert_eq!(find(b"", b":"), None);
    }
}
