//! `rill consume TOPIC`: print records, one per line, through librdkafka.
//!
//! Without `--group` the consumer assigns itself the partitions (all, or
//! `--partition`) and commits nothing. With `--group` it joins the group,
//! shares the partitions with the other members, and commits the offset
//! after each record it printed, so a later run goes on from there. Where
//! reading starts: `--from`, else the group's committed offsets, else the
//! beginning. `--from` is resolved to offsets before anything is read, and
//! applied to a group's partitions the first time each is assigned here.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use super::{
    describe_topic, list_offsets, parse_time_ms, quiet_client_context, ConnectArgs, Diagnostics,
};

/// How long one poll waits for a record before looking at the stop
/// conditions (Ctrl-C) again.
const POLL_WAIT: Duration = Duration::from_millis(100);

/// Where reading starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    Beginning,
    End,
    Offset(i64),
    /// Milliseconds since the epoch.
    Time(i64),
}

fn parse_from(text: &str) -> Result<From, String> {
    match text {
        "beginning" => Ok(From::Beginning),
        "end" => Ok(From::End),
        _ if text.bytes().all(|b| b.is_ascii_digit()) => text
            .parse()
            .map(From::Offset)
            .map_err(|_| format!("offset '{text}' is too large")),
        _ => parse_time_ms(text)
            .map(From::Time)
            .map_err(|error| format!("expected beginning, end, an offset, or a time: {error}")),
    }
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// The topic.
    pub topic: String,
    /// Consume as a member of this group: share the partitions with its
    /// other members, start from its committed offsets, and commit each
    /// printed record.
    #[arg(long, short)]
    pub group: Option<String>,
    /// Where to start: beginning, end, an offset, or a time (RFC 3339 such
    /// as 2024-05-01T12:00:00Z, or @ and milliseconds since the epoch)
    /// [default: the group's committed offsets, else beginning].
    #[arg(long, value_name = "WHERE", value_parser = parse_from)]
    pub from: Option<From>,
    /// Read only this partition.
    #[arg(long, conflicts_with = "group", value_parser = clap::value_parser!(i32).range(0..))]
    pub partition: Option<i32>,
    /// Stop after this many records.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Stop once every partition read has been read to its end.
    #[arg(long)]
    pub until_end: bool,
    /// How each record is printed, one per line: a template of {topic},
    /// {partition}, {offset}, {timestamp} (ms since the epoch), {key},
    /// {value} and {headers} (name=value,...), with \n, \t and \\ escapes;
    /// or `json`, one object per line.
    #[arg(long, default_value = "{value}", value_parser = Format::parse)]
    pub format: Format,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// The consumer's context: quiet logs, and the group's rebalances, which
/// start each newly assigned partition at `--from`.
#[derive(Debug, Default)]
struct ConsumeContext {
    diagnostics: Diagnostics,
    topic: String,
    /// `--from` resolved per partition; empty when the group's committed
    /// offsets decide.
    starts: BTreeMap<i32, Offset>,
    /// Partitions already started here: a later rebalance that gives one
    /// back goes on from the committed offset, not from `--from` again.
    started: Mutex<BTreeSet<i32>>,
    /// The last rebalance error, for the message if the group fails.
    rebalance_error: Mutex<Option<String>>,
}

quiet_client_context!(ConsumeContext);

impl ConsumerContext for ConsumeContext {
    // The default would assign the partitions as they come; this sets the
    // start of partitions not read here before. The protocol is eager
    // (librdkafka's default assignors), so an assignment is the whole set.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        error: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        match error {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Ok(mut started) = self.started.lock() {
                    let ids: Vec<i32> = partitions
                        .elements_for_topic(&self.topic)
                        .iter()
                        .map(|element| element.partition())
                        .collect();
                    for id in ids {
                        if let Some(start) = self.starts.get(&id) {
                            if started.insert(id) {
                                let _ = partitions.set_partition_offset(&self.topic, id, *start);
                            }
                        }
                    }
                }
                if let Err(error) = consumer.assign(partitions) {
                    self.note_rebalance_error(error.to_string());
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if let Err(error) = consumer.unassign() {
                    self.note_rebalance_error(error.to_string());
                }
            }
            other => {
                self.note_rebalance_error(RDKafkaErrorCode::from(other).to_string());
                let _ = consumer.unassign();
            }
        }
    }
}

impl ConsumeContext {
    fn note_rebalance_error(&self, error: String) {
        tracing::debug!(%error, "rebalance failed");
        if let Ok(mut last) = self.rebalance_error.lock() {
            *last = Some(error);
        }
    }
}

pub fn run(args: &ConsumeArgs) -> anyhow::Result<()> {
    let connect = &args.connect;
    let mut config = connect.client_config();
    config
        .set(
            "enable.partition.eof",
            if args.until_end { "true" } else { "false" },
        )
        // Where a partition with no committed offset (or an offset that is
        // gone) starts.
        .set("auto.offset.reset", "earliest");
    match &args.group {
        Some(group) => {
            config
                .set("group.id", group)
                .set("enable.auto.commit", "true")
                // Commit often, so `rill group describe` is not far behind.
                .set("auto.commit.interval.ms", "1000")
                // Offsets are stored after a record is printed, not when
                // librdkafka hands it over, so what is committed was seen.
                .set("enable.auto.offset.store", "false");
        }
        None => {
            // rdkafka hands records over only to a consumer with a group
            // id; with partitions assigned, not subscribed, it never joins
            // the group, and with auto-commit off it commits nothing.
            config
                .set("group.id", "rill-cli")
                .set("enable.auto.commit", "false");
        }
    }

    // Look the topic up and resolve --from with a plain client first: the
    // consumer's context must hold the answers before it is created.
    let lookup: BaseConsumer<super::CliContext> = connect
        .client_config()
        .create_with_context(super::CliContext::default())
        .context("cannot create a client")?;
    let diagnostics = &lookup.context().diagnostics;
    let topic = describe_topic(lookup.client(), connect, diagnostics, &args.topic)?;
    let partitions: Vec<i32> = match args.partition {
        Some(partition) => {
            if !topic.partitions.iter().any(|p| p.id == partition) {
                bail!(
                    "topic '{}' has no partition {partition} (it has {})",
                    args.topic,
                    topic.partitions.len()
                );
            }
            vec![partition]
        }
        None => topic.partitions.iter().map(|p| p.id).collect(),
    };
    let starts: BTreeMap<i32, Offset> = match args.from {
        None if args.group.is_some() => BTreeMap::new(),
        None | Some(From::Beginning) => {
            partitions.iter().map(|&p| (p, Offset::Beginning)).collect()
        }
        Some(From::End) => partitions.iter().map(|&p| (p, Offset::End)).collect(),
        Some(From::Offset(offset)) => {
            // An offset past either end of a partition's log starts at that
            // end, rather than leaving it to the reset policy.
            let low = list_offsets(connect, &args.topic, &partitions, Offset::Beginning)?;
            let high = list_offsets(connect, &args.topic, &partitions, Offset::End)?;
            let mut starts = BTreeMap::new();
            for &partition in &partitions {
                let (Some(Offset::Offset(low)), Some(Offset::Offset(high))) =
                    (low.get(&partition), high.get(&partition))
                else {
                    bail!(
                        "cannot read the offsets of partition {partition} of '{}'",
                        args.topic
                    );
                };
                starts.insert(partition, Offset::Offset(offset.clamp(*low, *high)));
            }
            starts
        }
        Some(From::Time(ms)) => {
            let found = list_offsets(connect, &args.topic, &partitions, Offset::Offset(ms))?;
            let mut starts = BTreeMap::new();
            for &partition in &partitions {
                let Some(offset) = found.get(&partition) else {
                    bail!(
                        "cannot find the offset at that time in partition {partition} of '{}'",
                        args.topic
                    );
                };
                starts.insert(partition, *offset);
            }
            starts
        }
    };
    drop(lookup);

    let context = ConsumeContext {
        topic: args.topic.clone(),
        starts: if args.group.is_some() {
            starts.clone()
        } else {
            BTreeMap::new()
        },
        ..ConsumeContext::default()
    };
    let consumer: BaseConsumer<ConsumeContext> = config
        .create_with_context(context)
        .context("cannot create the consumer")?;
    if args.group.is_some() {
        consumer
            .subscribe(&[&args.topic])
            .with_context(|| format!("cannot subscribe to '{}'", args.topic))?;
    } else {
        let mut assignment = TopicPartitionList::new();
        for (&partition, &offset) in &starts {
            assignment
                .add_partition_offset(&args.topic, partition, offset)
                .context("cannot build a partition list")?;
        }
        consumer
            .assign(&assignment)
            .context("cannot assign the partitions")?;
    }

    let interrupted = watch_interrupt();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut printed: u64 = 0;
    let mut at_end: BTreeSet<i32> = BTreeSet::new();
    let mut last_warning = None;
    let outcome = loop {
        if interrupted.load(Ordering::Relaxed) || args.count.is_some_and(|n| printed >= n) {
            break Ok(());
        }
        if args.until_end
            && all_read(
                &consumer,
                &args.topic,
                &starts,
                args.group.is_some(),
                &at_end,
            )
        {
            break Ok(());
        }
        // Output is flushed whenever the consumer has nothing waiting, so
        // a tail shows records as they come without a write per record.
        let polled = match consumer.poll(Duration::ZERO) {
            Some(polled) => Some(polled),
            None => {
                if let Err(error) = out.flush() {
                    break Err(error.into());
                }
                consumer.poll(POLL_WAIT)
            }
        };
        match polled {
            None => {}
            Some(Ok(message)) => {
                at_end.remove(&message.partition());
                if let Err(error) = args.format.write(&mut out, &message) {
                    break Err(error.into());
                }
                printed += 1;
                if args.group.is_some() {
                    if let Err(error) = consumer.store_offset_from_message(&message) {
                        tracing::debug!(%error, "cannot store an offset");
                    }
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(error)) if is_transient(&error) => {
                // librdkafka reconnects by itself; say so once per cause.
                let warning = consumer
                    .context()
                    .diagnostics
                    .last_error()
                    .unwrap_or_else(|| error.to_string());
                if last_warning.as_ref() != Some(&warning) {
                    eprintln!("rill: waiting for the cluster: {warning}");
                    last_warning = Some(warning);
                }
            }
            Some(Err(error)) => {
                let rebalance = consumer
                    .context()
                    .rebalance_error
                    .lock()
                    .ok()
                    .and_then(|e| e.clone());
                break Err(match rebalance {
                    Some(reason) => {
                        anyhow::anyhow!("consuming '{}' failed: {error} ({reason})", args.topic)
                    }
                    None => anyhow::anyhow!("consuming '{}' failed: {error}", args.topic),
                });
            }
        }
    };
    let flushed = out.flush();
    if args.group.is_some() {
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            // Nothing was read, so nothing to commit.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) if outcome.is_ok() => {
                bail!("cannot commit the group's offsets: {error}");
            }
            Err(_) => {}
        }
    }
    eprintln!("consumed {printed} records");
    outcome?;
    flushed?;
    Ok(())
}

/// Whether every partition being read has reached its end.
fn all_read(
    consumer: &BaseConsumer<ConsumeContext>,
    topic: &str,
    assigned: &BTreeMap<i32, Offset>,
    group: bool,
    at_end: &BTreeSet<i32>,
) -> bool {
    if !group {
        return assigned.keys().all(|partition| at_end.contains(partition));
    }
    // A group member reads what the group assigns it, which changes.
    let Ok(assignment) = consumer.assignment() else {
        return false;
    };
    let mine = assignment.elements_for_topic(topic);
    !mine.is_empty()
        && mine
            .iter()
            .all(|element| at_end.contains(&element.partition()))
}

fn is_transient(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
        )
    )
}

/// A flag set by Ctrl-C or SIGTERM, so that a group member commits and
/// leaves its group on the way out. A second signal exits at once.
fn watch_interrupt() -> Arc<AtomicBool> {
    use tokio::signal::unix::{signal, SignalKind};
    let flag = Arc::new(AtomicBool::new(false));
    let set = Arc::clone(&flag);
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            let (Ok(mut interrupt), Ok(mut terminate)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            set.store(true, Ordering::Relaxed);
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            std::process::exit(130);
        });
    });
    flag
}

/// How records are printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Json,
    Template(Vec<Piece>),
}

/// A part of a `--format` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Topic,
    Partition,
    Offset,
    Timestamp,
    Key,
    Value,
    Headers,
}

/// One record, as the formats see it.
#[derive(Debug)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

impl Format {
    pub fn parse(text: &str) -> Result<Format, String> {
        if text == "json" {
            return Ok(Format::Json);
        }
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => literal.push('\n'),
                    Some('t') => literal.push('\t'),
                    Some('\\') => literal.push('\\'),
                    Some(other) => return Err(format!("unknown escape \\{other} in the format")),
                    None => return Err("the format ends with a lone \\".to_string()),
                },
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("unclosed {{{name} in the format")),
                        }
                    }
                    let piece = match name.as_str() {
                        "topic" => Piece::Topic,
                        "partition" => Piece::Partition,
                        "offset" => Piece::Offset,
                        "timestamp" => Piece::Timestamp,
                        "key" => Piece::Key,
                        "value" => Piece::Value,
                        "headers" => Piece::Headers,
                        _ => {
                            return Err(format!(
                                "unknown field {{{name}}} in the format; the fields are {{topic}}, {{partition}}, {{offset}}, {{timestamp}}, {{key}}, {{value}}, {{headers}}"
                            ))
                        }
                    };
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(piece);
                }
                _ => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Format::Template(pieces))
    }

    fn write(&self, out: &mut impl Write, message: &BorrowedMessage<'_>) -> std::io::Result<()> {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| (header.key, header.value))
                    .collect()
            })
            .unwrap_or_default();
        let record = Record {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().to_millis(),
            key: message.key(),
            value: message.payload(),
            headers,
        };
        self.render(out, &record)
    }

    /// Writes one record and its line end. Keys and values go out as the
    /// bytes they are in a template, and as text (invalid UTF-8 replaced)
    /// in JSON.
    pub fn render(&self, out: &mut impl Write, record: &Record<'_>) -> std::io::Result<()> {
        match self {
            Format::Json => {
                let text = |bytes: Option<&[u8]>| {
                    bytes.map(|bytes| String::from_utf8_lossy(bytes).into_owned())
                };
                let headers: serde_json::Map<String, serde_json::Value> = record
                    .headers
                    .iter()
                    .map(|(name, value)| ((*name).to_string(), text(*value).into()))
                    .collect();
                let object = serde_json::json!({
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                    "timestamp": record.timestamp,
                    "key": text(record.key),
                    "value": text(record.value),
                    "headers": headers,
                });
                serde_json::to_writer(&mut *out, &object)?;
            }
            Format::Template(pieces) => {
                for piece in pieces {
                    match piece {
                        Piece::Text(text) => out.write_all(text.as_bytes())?,
                        Piece::Topic => out.write_all(record.topic.as_bytes())?,
                        Piece::Partition => write!(out, "{}", record.partition)?,
                        Piece::Offset => write!(out, "{}", record.offset)?,
                        Piece::Timestamp => match record.timestamp {
                            Some(ms) => write!(out, "{ms}")?,
                            None => out.write_all(b"-")?,
                        },
                        Piece::Key => out.write_all(record.key.unwrap_or_default())?,
                        Piece::Value => out.write_all(record.value.unwrap_or_default())?,
                        Piece::Headers => {
                            for (i, (name, value)) in record.headers.iter().enumerate() {
                                if i > 0 {
                                    out.write_all(b",")?;
                                }
                                out.write_all(name.as_bytes())?;
                                out.write_all(b"=")?;
                                out.write_all(value.unwrap_or_default())?;
                            }
                        }
                    }
                }
            }
        }
        out.write_all(b"\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record<'static> {
        Record {
            topic: "t",
            partition: 2,
            offset: 41,
            timestamp: Some(1_700_000_000_000),
            key: Some(b"k"),
            value: Some(b"v\xff"),
            headers: vec![("a", Some(b"1")), ("b", None)],
        }
    }

    fn render(format: &str) -> Vec<u8> {
        let mut out = Vec::new();
        Format::parse(format)
            .unwrap()
            .render(&mut out, &record())
            .unwrap();
        out
    }

    #[test]
    fn templates_fill_every_field() {
        assert_eq!(
            render("{topic}/{partition}@{offset} {timestamp}\\t{key}={value} [{headers}]"),
            b"t/2@41 1700000000000\tk=v\xff [a=1,b=]\n".to_vec()
        );
        assert_eq!(render("{value}"), b"v\xff\n".to_vec());
    }

    #[test]
    fn json_is_one_object_per_line() {
        let line = render("json");
        assert_eq!(line.last(), Some(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["partition"], 2);
        assert_eq!(value["offset"], 41);
        assert_eq!(value["timestamp"], 1_700_000_000_000_i64);
        assert_eq!(value["key"], "k");
        assert_eq!(value["value"], "v\u{fffd}");
        assert_eq!(value["headers"]["a"], "1");
        assert_eq!(value["headers"]["b"], serde_json::Value::Null);
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(Format::parse("{nope}").unwrap_err().contains("{nope}"));
        assert!(Format::parse("{value").is_err());
        assert!(Format::parse("\\q").is_err());
    }

    #[test]
    fn from_takes_names_offsets_and_times() {
        assert_eq!(parse_from("beginning"), Ok(From::Beginning));
        assert_eq!(parse_from("end"), Ok(From::End));
        assert_eq!(parse_from("42"), Ok(From::Offset(42)));
        assert_eq!(parse_from("1970-01-01T00:00:02Z"), Ok(From::Time(2000)));
        assert_eq!(parse_from("@5"), Ok(From::Time(5)));
        assert!(parse_from("soon").is_err());
    }
}
