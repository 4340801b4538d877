//! The client commands of `rill`: everyday work against any
//! Kafka-compatible broker.
//!
//! Layout: `topic`, `produce`, `consume`, `group`, `txn` and `cluster` are one
//! module per command; this module holds what they share — the connection
//! flags, the librdkafka client set-up with a context that keeps
//! librdkafka's own log quiet (at `debug`) but remembers its last error for
//! the one-line message, metadata look-ups, and plain-text tables.
//! Produce, consume and most admin work go through librdkafka (`rdkafka`);
//! what it has no API for goes through [`crate::admin`].

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::Client;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset};

pub mod cluster;
pub mod consume;
pub mod group;
pub mod local_cluster;
pub mod produce;
pub mod topic;
pub mod txn;

/// The client commands, flattened into `rill`'s own list.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Send one record per line of standard input (or of --file) to a topic.
    Produce(produce::ProduceArgs),
    /// Print a topic's records, one per line.
    Consume(consume::ConsumeArgs),
    /// List, describe, reset the offsets of, and delete consumer groups.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// List and describe transactions, describe a partition's producers,
    /// and abort a hanging transaction.
    #[command(subcommand)]
    Txn(txn::TxnCommand),
    /// Show the cluster (its id, nodes, controller and API versions), or
    /// start a local one.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

/// Runs a client command. A closed standard output (`rill consume t | head`)
/// is a normal end, not an error.
pub fn run(command: ClientCommand) -> anyhow::Result<()> {
    if let Some(connect) = command.connect() {
        connect.check_reachable()?;
    }
    let result = match command {
        ClientCommand::Topic(command) => topic::run(command),
        ClientCommand::Produce(args) => produce::run(&args),
        ClientCommand::Consume(args) => consume::run(&args),
        ClientCommand::Group(command) => group::run(command),
        ClientCommand::Txn(command) => txn::run(command),
        ClientCommand::Cluster(command) => cluster::run(command),
    };
    match result {
        Err(error) if is_broken_pipe(&error) => Ok(()),
        other => other,
    }
}

impl ClientCommand {
    fn connect(&self) -> Option<&ConnectArgs> {
        match self {
            ClientCommand::Topic(command) => Some(command.connect()),
            ClientCommand::Produce(args) => Some(&args.connect),
            ClientCommand::Consume(args) => Some(&args.connect),
            ClientCommand::Group(command) => Some(command.connect()),
            ClientCommand::Txn(command) => Some(command.connect()),
            ClientCommand::Cluster(command) => command.connect(),
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Where to connect and how long to wait; every client command takes these.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// The broker(s) to bootstrap from: host:port[,host:port...].
    #[arg(long, env = "RILL_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// How long to wait for the cluster to answer (e.g. 500ms, 10s, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl ConnectArgs {
    /// librdkafka settings every client of the CLI shares.
    pub fn client_config(&self) -> ClientConfig {
        let timeout_ms = self.timeout.as_millis();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("client.id", "rill-cli")
            // Looking a topic up must never create it: a typo would.
            .set("allow.auto.create.topics", "false")
            // librdkafka's bounds for these two: 10 ms and 1 s at least.
            .set(
                "socket.timeout.ms",
                timeout_ms.clamp(10, 300_000).to_string(),
            )
            .set(
                "socket.connection.setup.timeout.ms",
                timeout_ms.clamp(1000, i32::MAX as u128).to_string(),
            )
            .set_log_level(RDKafkaLogLevel::Debug);
        config
    }

    /// Fails at once, with the operating system's reason, if no bootstrap
    /// address takes a TCP connection; librdkafka would retry until the
    /// timeout and then say only that it timed out.
    pub fn check_reachable(&self) -> anyhow::Result<()> {
        match probe(&self.bootstrap, self.timeout) {
            Some(reason) => bail!("cannot reach the cluster: {reason}"),
            None => Ok(()),
        }
    }

    /// The error for a request that failed: a cluster that could not be
    /// reached says so, with librdkafka's reason for it.
    pub fn failure(
        &self,
        what: &str,
        error: &KafkaError,
        diagnostics: &Diagnostics,
    ) -> anyhow::Error {
        let code = match error {
            KafkaError::AdminOp(code) => Some(*code),
            other => other.rdkafka_error_code(),
        };
        match code {
            Some(code) if is_unreachable(code) => {
                self.unreachable(what, &error.to_string(), diagnostics)
            }
            _ => anyhow!("{what}: {error}"),
        }
    }

    /// [`ConnectArgs::failure`] for the error code of one item of an
    /// admin request (one topic, one group).
    pub fn code_failure(
        &self,
        what: &str,
        code: RDKafkaErrorCode,
        diagnostics: &Diagnostics,
    ) -> anyhow::Error {
        if is_unreachable(code) {
            self.unreachable(what, &code.to_string(), diagnostics)
        } else {
            anyhow!("{what}: {code}")
        }
    }

    fn unreachable(&self, what: &str, error: &str, diagnostics: &Diagnostics) -> anyhow::Error {
        // librdkafka queues the reason a connection failed as a log event
        // that only a polled client sees; asking the addresses directly
        // gives the operating system's reason for any client.
        let reason = probe(&self.bootstrap, self.timeout.min(PROBE_TIMEOUT_MAX))
            .or_else(|| diagnostics.last_error())
            .unwrap_or_else(|| error.to_string());
        anyhow!(
            "{what}: no answer from {} within {}: {reason}",
            self.bootstrap,
            show_duration(self.timeout)
        )
    }
}

/// How long the connection check after a failure may take.
const PROBE_TIMEOUT_MAX: Duration = Duration::from_secs(2);

/// Why no bootstrap address takes a TCP connection, or `None` if one does.
fn probe(bootstrap: &str, timeout: Duration) -> Option<String> {
    use std::net::{TcpStream, ToSocketAddrs};
    let mut reasons = Vec::new();
    for addr in bootstrap
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        let targets = match addr.to_socket_addrs() {
            Ok(targets) => targets,
            Err(error) => {
                reasons.push(format!("cannot resolve {addr}: {error}"));
                continue;
            }
        };
        for target in targets {
            match TcpStream::connect_timeout(&target, timeout) {
                Ok(_) => return None,
                Err(error) => reasons.push(format!("cannot connect to {target}: {error}")),
            }
        }
    }
    if reasons.is_empty() {
        None
    } else {
        Some(reasons.join("; "))
    }
}

/// Error codes that mean the cluster did not answer in time.
fn is_unreachable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::Resolve
    )
}

/// What librdkafka reported on its own while a command ran: its errors
/// (a refused connection, a failed name look-up) arrive here rather than
/// with the call that failed.
#[derive(Debug, Default)]
pub struct Diagnostics {
    last_error: Mutex<Option<String>>,
}

impl Diagnostics {
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|last| last.clone())
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        tracing::debug!(target: "librdkafka", ?level, facility, "{message}");
        // A failed connection is only logged (as FAIL), not reported as an
        // error event to a client nobody polls, such as a look-up client.
        let failure = facility == "FAIL"
            || matches!(
                level,
                RDKafkaLogLevel::Emerg
                    | RDKafkaLogLevel::Alert
                    | RDKafkaLogLevel::Critical
                    | RDKafkaLogLevel::Error
            );
        if failure {
            self.note(message);
        }
    }

    fn note(&self, reason: &str) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(reason.to_string());
        }
    }

    fn error(&self, error: &KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", %error, "{reason}");
        // "1/1 brokers are down" follows the reason they are down; keep the
        // reason.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown)
            && self.last_error().is_some()
        {
            return;
        }
        self.note(reason);
    }
}

/// The librdkafka context of admin and look-up clients.
#[derive(Debug, Default)]
pub struct CliContext {
    pub diagnostics: Diagnostics,
}

impl ClientContext for CliContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.diagnostics.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.diagnostics.error(&error, reason);
    }
}

impl ConsumerContext for CliContext {}

/// Implements [`ClientContext`] for a context with a `diagnostics` field.
macro_rules! quiet_client_context {
    ($context:ty) => {
        impl rdkafka::ClientContext for $context {
            fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
                self.diagnostics.log(level, facility, message);
            }

            fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
                self.diagnostics.error(&error, reason);
            }
        }
    };
}
pub(crate) use quiet_client_context;

/// One partition as Metadata describes it.
#[derive(Debug, Clone)]
pub struct PartitionInfo {
    pub id: i32,
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub error: Option<String>,
}

/// A topic's partitions, in partition order.
#[derive(Debug, Clone)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: Vec<PartitionInfo>,
}

/// Looks a topic up, failing clearly if it does not exist.
pub fn describe_topic<C: ClientContext>(
    client: &Client<C>,
    connect: &ConnectArgs,
    diagnostics: &Diagnostics,
    topic: &str,
) -> anyhow::Result<TopicInfo> {
    let metadata = client
        .fetch_metadata(Some(topic), connect.timeout)
        .map_err(|error| {
            connect.failure(
                &format!("cannot look up topic '{topic}'"),
                &error,
                diagnostics,
            )
        })?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        bail!("topic '{topic}' does not exist");
    };
    match found.error() {
        None => {}
        Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {
            bail!("topic '{topic}' does not exist")
        }
        Some(error) => bail!(
            "cannot look up topic '{topic}': {}",
            RDKafkaErrorCode::from(error)
        ),
    }
    Ok(topic_info(found))
}

/// Every topic of the cluster, by name.
pub fn list_topics<C: ClientContext>(
    client: &Client<C>,
    connect: &ConnectArgs,
    diagnostics: &Diagnostics,
) -> anyhow::Result<BTreeMap<String, TopicInfo>> {
    let metadata = client
        .fetch_metadata(None, connect.timeout)
        .map_err(|error| connect.failure("cannot list topics", &error, diagnostics))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|topic| topic.error().is_none())
        .map(|topic| (topic.name().to_string(), topic_info(topic)))
        .collect())
}

fn topic_info(topic: &rdkafka::metadata::MetadataTopic) -> TopicInfo {
    let mut partitions: Vec<PartitionInfo> = topic
        .partitions()
        .iter()
        .map(|partition| PartitionInfo {
            id: partition.id(),
            leader: partition.leader(),
            replicas: partition.replicas().to_vec(),
            isr: partition.isr().to_vec(),
            error: partition
                .error()
                .map(|error| RDKafkaErrorCode::from(error).to_string()),
        })
        .collect();
    partitions.sort_by_key(|partition| partition.id);
    TopicInfo {
        name: topic.name().to_string(),
        partitions,
    }
}

/// ListOffsets for some partitions of a topic, by partition: `position` is
/// `Beginning` (the log start), `End` (the log end) or `Offset(ms)`, a time
/// (the first offset at or after it, or `End` if there is none). A
/// partition whose leader did not answer is missing from the map. Asks
/// through the CLI's own protocol client (see `admin::list_offsets`), one
/// request per leader.
pub fn list_offsets(
    connect: &ConnectArgs,
    topic: &str,
    partitions: &[i32],
    position: Offset,
) -> anyhow::Result<BTreeMap<i32, Offset>> {
    // ListOffsets takes the special times -2 (earliest) and -1 (latest).
    let timestamp = match position {
        Offset::Beginning => -2,
        Offset::End => -1,
        Offset::Offset(ms) => ms,
        other => bail!("cannot list offsets at {other:?}"),
    };
    let what = || format!("cannot read the offsets of topic '{topic}'");
    let mut bootstrap = crate::admin::Connection::bootstrap(&connect.bootstrap, connect.timeout)
        .with_context(what)?;
    let found = crate::admin::list_offsets(
        &mut bootstrap,
        connect.timeout,
        topic,
        partitions,
        timestamp,
    )
    .with_context(what)?;
    Ok(found
        .into_iter()
        .map(|(partition, offset)| {
            // A time past every record finds no offset (-1): the log end.
            let offset = if offset < 0 {
                Offset::End
            } else {
                Offset::Offset(offset)
            };
            (partition, offset)
        })
        .collect())
}

/// A librdkafka admin client for the cluster.
pub fn admin_client(connect: &ConnectArgs) -> anyhow::Result<AdminClient<CliContext>> {
    connect
        .client_config()
        .create_with_context(CliContext::default())
        .context("cannot create the admin client")
}

/// Admin requests wait for the cluster as long as `--timeout` says.
pub fn admin_options(connect: &ConnectArgs) -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(connect.timeout))
        .operation_timeout(Some(connect.timeout))
}

/// A plain client for look-ups: metadata and offsets.
pub fn lookup_client(connect: &ConnectArgs) -> anyhow::Result<BaseConsumer<CliContext>> {
    connect
        .client_config()
        .create_with_context(CliContext::default())
        .context("cannot create a client")
}

/// Runs one of rdkafka's admin futures to completion. They resolve from
/// librdkafka's own threads, so a single-threaded runtime is enough.
pub fn block_on<F: Future>(future: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(future))
}

/// A plain-text table: a header line and left-aligned columns two spaces
/// apart, easy to read and to cut with `awk`.
#[derive(Debug)]
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, row: Vec<String>) {
        debug_assert_eq!(row.len(), self.header.len());
        self.rows.push(row);
    }

    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  "));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// A list of node ids as `1,2,3`.
pub fn node_list(nodes: &[i32]) -> String {
    if nodes.is_empty() {
        return "-".to_string();
    }
    nodes
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `key=value` (`--config`, `--header`); the value may be empty.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("'{text}' is not key=value")),
    }
}

/// Parses a duration: a number with `ms`, `s`, `m` or `h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration such as 500ms, 10s or 2m"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("'{text}' has an unknown unit; use ms, s, m or h")),
    };
    if !(seconds.is_finite() && seconds > 0.0 && seconds < 1e9) {
        return Err(format!("'{text}' must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

pub fn show_duration(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        return format!("{}ms", duration.as_millis());
    }
    let seconds = format!("{:.3}", duration.as_secs_f64());
    format!("{}s", seconds.trim_end_matches('0').trim_end_matches('.'))
}

/// A byte count for people: `512 B`, `4.0 KiB`, `1.5 MiB`.
pub fn show_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Parses a point in time: RFC 3339 (`2024-05-01T12:00:00Z`,
/// `2024-05-01T14:00:00+02:00`) or `@` and milliseconds since the epoch.
pub fn parse_time_ms(text: &str) -> Result<i64, String> {
    if let Some(millis) = text.strip_prefix('@') {
        return millis
            .parse::<i64>()
            .ok()
            .filter(|ms| *ms >= 0)
            .ok_or_else(|| format!("'{text}': expected @ and milliseconds since the epoch"));
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|time| time.timestamp_millis())
        .map_err(|error| {
            format!("'{text}' is not an RFC 3339 time such as 2024-05-01T12:00:00Z: {error}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn key_values_need_a_key() {
        assert_eq!(
            parse_key_value("retention.ms=1000"),
            Ok(("retention.ms".into(), "1000".into()))
        );
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_key_value("a="), Ok(("a".into(), String::new())));
        assert!(parse_key_value("=b").is_err());
        assert!(parse_key_value("ab").is_err());
    }

    #[test]
    fn times_parse_as_rfc3339_or_epoch_millis() {
        assert_eq!(parse_time_ms("1970-01-01T00:00:01Z"), Ok(1000));
        assert_eq!(parse_time_ms("1970-01-01T01:00:01+01:00"), Ok(1000));
        assert_eq!(parse_time_ms("@1234"), Ok(1234));
        assert!(parse_time_ms("yesterday").is_err());
        assert!(parse_time_ms("@-5").is_err());
    }

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&["A", "LONGER"]);
        table.row(vec!["wide cell".into(), "x".into()]);
        let mut out = Vec::new();
        table.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A          LONGER\nwide cell  x\n"
        );
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(show_bytes(512), "512 B");
        assert_eq!(show_bytes(1536), "1.5 KiB");
        assert_eq!(show_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(show_duration(Duration::from_secs(2)), "2s");
    }
}
