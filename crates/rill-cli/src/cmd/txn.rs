//! `rill txn list|describe|describe-producers|abort`, after Kafka's
//! `kafka-transactions.sh`.
//!
//! librdkafka has no API for any of these, so each goes through
//! [`crate::admin`]: ListTransactions to every broker (each answers for
//! the transactional ids it coordinates), DescribeTransactions at an id's
//! coordinator (found with FindCoordinator, key type 1), DescribeProducers
//! and WriteTxnMarkers at a partition's leader.
//!
//! `abort` is for a *hanging* transaction: one that a partition still has
//! open (holding back its last stable offset, so read_committed consumers
//! wait) while its coordinator has forgotten it or cannot end it. Like
//! Kafka's tool it writes the abort marker straight to the partition, as a
//! coordinator would; the coordinator is not told.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::builder::PossibleValuesParser;
use clap::{Args, Subcommand};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::describe_producers_response::ProducerState;
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    DescribeProducersRequest, DescribeTransactionsRequest, ListTransactionsRequest, ProducerId,
    TopicName, TransactionalId, WriteTxnMarkersRequest,
};
use kafka_protocol::protocol::StrBytes;

use super::{show_duration, ConnectArgs, Table};
use crate::admin::{
    brokers, coordinator, error_name, is_retriable, topic_leaders, Connection, CoordinatorKey,
};

/// How long to wait before asking again when a coordinator is loading or
/// a leader is moving.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// The states of a transaction, as Kafka's `TransactionState` names them
/// (ListTransactions' state filter).
const STATES: [&str; 8] = [
    "Empty",
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "CompleteCommit",
    "CompleteAbort",
    "Dead",
    "PrepareEpochFence",
];

#[derive(Debug, Subcommand)]
pub enum TxnCommand {
    /// List the transactional ids of the cluster with their coordinator,
    /// producer id and state.
    List(ListArgs),
    /// Show a transactional id: its coordinator, producer id and epoch,
    /// state, timeout, when its transaction began and its partitions.
    Describe(DescribeArgs),
    /// Show the producers a partition's leader knows, with the offset where
    /// each one's open transaction began: how to find a hanging transaction.
    DescribeProducers(ProducersArgs),
    /// Abort a hanging transaction in one partition: write its abort marker
    /// there, as its coordinator would.
    Abort(AbortArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only transactions in this state (repeatable).
    #[arg(long = "state", value_name = "STATE", value_parser = PossibleValuesParser::new(STATES))]
    pub states: Vec<String>,
    /// Only transactions of this producer id (repeatable).
    #[arg(long = "producer-id", value_name = "ID")]
    pub producer_ids: Vec<i64>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// The transactional id.
    pub transactional_id: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct ProducersArgs {
    #[arg(long)]
    pub topic: String,
    #[arg(long)]
    pub partition: i32,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct AbortArgs {
    #[arg(long)]
    pub topic: String,
    #[arg(long)]
    pub partition: i32,
    /// The producer whose open transaction in the partition to abort.
    #[arg(
        long,
        value_name = "ID",
        required_unless_present = "start_offset",
        conflicts_with = "start_offset"
    )]
    pub producer_id: Option<i64>,
    /// Or: the open transaction that began at this offset of the partition.
    #[arg(long, value_name = "OFFSET")]
    pub start_offset: Option<i64>,
    /// The producer's epoch [default: as the partition's leader knows it].
    #[arg(long, value_name = "EPOCH", requires_all = ["producer_id", "coordinator_epoch"])]
    pub producer_epoch: Option<i16>,
    /// The epoch of the transaction's coordinator [default: as the
    /// partition's leader knows it].
    #[arg(
        long,
        value_name = "EPOCH",
        requires = "producer_epoch",
        allow_negative_numbers = true
    )]
    pub coordinator_epoch: Option<i32>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

impl TxnCommand {
    pub fn connect(&self) -> &ConnectArgs {
        match self {
            TxnCommand::List(args) => &args.connect,
            TxnCommand::Describe(args) => &args.connect,
            TxnCommand::DescribeProducers(args) => &args.connect,
            TxnCommand::Abort(args) => &args.connect,
        }
    }
}

pub fn run(command: TxnCommand) -> anyhow::Result<()> {
    match command {
        TxnCommand::List(args) => list(&args),
        TxnCommand::Describe(args) => describe(&args),
        TxnCommand::DescribeProducers(args) => describe_producers(&args),
        TxnCommand::Abort(args) => abort(&args),
    }
}

/// One row of `txn list`.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Listed {
    transactional_id: String,
    coordinator: i32,
    producer_id: i64,
    state: String,
}

fn list(args: &ListArgs) -> anyhow::Result<()> {
    let connect = &args.connect;
    let what = "cannot list transactions";
    let deadline = Instant::now() + connect.timeout;
    let mut bootstrap = Connection::bootstrap(&connect.bootstrap, connect.timeout).context(what)?;
    let nodes = brokers(&mut bootstrap).context(what)?;
    let mut rows = BTreeSet::new();
    let mut unknown_states = BTreeSet::new();
    for node in &nodes {
        let mut other = None;
        let connection = bootstrap
            .or_connect(&node.addr, connect.timeout, &mut other)
            .with_context(|| format!("{what}: node {} did not answer", node.id))?;
        let answer = loop {
            let request = ListTransactionsRequest::default()
                .with_state_filters(
                    args.states
                        .iter()
                        .map(|s| StrBytes::from_string(s.clone()))
                        .collect(),
                )
                .with_producer_id_filters(
                    args.producer_ids.iter().map(|&p| ProducerId(p)).collect(),
                );
            // v1 adds a duration filter, v2 an id pattern; neither is used.
            let (_, answer) = connection.send(request, 0..=2).context(what)?;
            match ResponseError::try_from_code(answer.error_code) {
                None => break answer,
                Some(error) if is_retriable(error) && Instant::now() < deadline => {
                    std::thread::sleep(RETRY_BACKOFF);
                }
                Some(error) => bail!("{what}: node {} answered {}", node.id, error_name(error)),
            }
        };
        unknown_states.extend(answer.unknown_state_filters.iter().map(|s| s.to_string()));
        rows.extend(answer.transaction_states.into_iter().map(|txn| Listed {
            transactional_id: txn.transactional_id.0.to_string(),
            coordinator: node.id,
            producer_id: txn.producer_id.0,
            state: txn.transaction_state.to_string(),
        }));
    }
    for state in unknown_states {
        eprintln!("rill: the cluster knows no transaction state '{state}'");
    }
    let mut table = Table::new(&["TRANSACTIONAL-ID", "COORDINATOR", "PRODUCER-ID", "STATE"]);
    for row in rows {
        table.row(vec![
            row.transactional_id,
            row.coordinator.to_string(),
            row.producer_id.to_string(),
            row.state,
        ]);
    }
    table.write(&mut std::io::stdout().lock())?;
    Ok(())
}

fn describe(args: &DescribeArgs) -> anyhow::Result<()> {
    let connect = &args.connect;
    let id = args.transactional_id.as_str();
    let what = || format!("cannot describe transactional id '{id}'");
    let deadline = Instant::now() + connect.timeout;
    let mut bootstrap =
        Connection::bootstrap(&connect.bootstrap, connect.timeout).with_context(what)?;
    let (node, state) = loop {
        // Found again on every try: NOT_COORDINATOR means it moved.
        let (node, mut at) = coordinator(
            &mut bootstrap,
            CoordinatorKey::Transaction(id),
            connect.timeout,
        )
        .with_context(what)?;
        let request = DescribeTransactionsRequest::default()
            .with_transactional_ids(vec![TransactionalId(StrBytes::from_string(id.to_string()))]);
        let (_, answer) = at.send(request, 0..=0).with_context(what)?;
        let Some(state) = answer
            .transaction_states
            .into_iter()
            .find(|s| s.transactional_id.0.as_str() == id)
        else {
            bail!("{}: node {node} left it out of its answer", what());
        };
        match ResponseError::try_from_code(state.error_code) {
            None => break (node, state),
            Some(ResponseError::TransactionalIdNotFound) => {
                bail!("transactional id '{id}' does not exist")
            }
            Some(error) if is_retriable(error) && Instant::now() < deadline => {
                std::thread::sleep(RETRY_BACKOFF);
            }
            Some(error) => bail!("{}: node {node} answered {}", what(), error_name(error)),
        }
    };

    let start_ms = state.transaction_start_time_ms;
    let (started, running) = if start_ms >= 0 {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let running = Duration::from_millis(u64::try_from(now_ms - start_ms).unwrap_or(0));
        (show_time_ms(start_ms), show_duration(running))
    } else {
        ("-".to_string(), "-".to_string())
    };
    let partitions: Vec<(String, i32)> = state
        .topics
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .map(|&partition| (topic.topic.0.to_string(), partition))
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "transactional-id: {id}")?;
    writeln!(out, "coordinator: {node}")?;
    writeln!(out, "producer-id: {}", state.producer_id.0)?;
    writeln!(out, "producer-epoch: {}", state.producer_epoch)?;
    writeln!(out, "state: {}", state.transaction_state)?;
    writeln!(out, "timeout-ms: {}", state.transaction_timeout_ms)?;
    writeln!(out, "started: {started}")?;
    writeln!(out, "running: {running}")?;
    writeln!(out, "partitions: {}", partitions.len())?;
    if !partitions.is_empty() {
        writeln!(out)?;
        let mut table = Table::new(&["TOPIC", "PARTITION"]);
        for (topic, partition) in partitions {
            table.row(vec![topic, partition.to_string()]);
        }
        table.write(&mut out)?;
    }
    Ok(())
}

/// `ms` since the epoch as RFC 3339 in UTC, with milliseconds.
fn show_time_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || format!("@{ms}"),
        |time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// DescribeProducers of one partition at its leader: the leader's node id
/// and the producers it knows. Asks again while the leader moves.
fn producers(
    bootstrap: &mut Connection,
    connect: &ConnectArgs,
    topic: &str,
    partition: i32,
) -> anyhow::Result<(i32, Vec<ProducerState>)> {
    let what =
        || format!("cannot describe the producers of partition {partition} of topic '{topic}'");
    let deadline = Instant::now() + connect.timeout;
    loop {
        let leader = topic_leaders(bootstrap, topic)?.leader(topic, partition)?;
        let mut other = None;
        let at = bootstrap
            .or_connect(&leader.addr, connect.timeout, &mut other)
            .with_context(what)?;
        let request = DescribeProducersRequest::default()
            .with_topics(vec![TopicRequest::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_indexes(vec![partition])]);
        let (_, answer) = at.send(request, 0..=0).with_context(what)?;
        let Some(found) = answer
            .topics
            .into_iter()
            .filter(|t| t.name.0.as_str() == topic)
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == partition)
        else {
            bail!("{}: node {} left it out of its answer", what(), leader.id);
        };
        match ResponseError::try_from_code(found.error_code) {
            None => return Ok((leader.id, found.active_producers)),
            Some(error) if is_leader_moving(error) && Instant::now() < deadline => {
                std::thread::sleep(RETRY_BACKOFF);
            }
            Some(error) => {
                let message = found.error_message.map(|m| m.to_string());
                bail!(
                    "{}: node {} answered {}{}",
                    what(),
                    leader.id,
                    error_name(error),
                    message.map(|m| format!(" ({m})")).unwrap_or_default()
                );
            }
        }
    }
}

/// Errors that mean the partition's leader is elsewhere now (or not yet
/// known): look it up and ask again, as Kafka's admin client does.
fn is_leader_moving(error: ResponseError) -> bool {
    matches!(
        error,
        ResponseError::NotLeaderOrFollower
            | ResponseError::LeaderNotAvailable
            | ResponseError::ReplicaNotAvailable
            | ResponseError::BrokerNotAvailable
            | ResponseError::UnknownTopicOrPartition
    )
}

fn describe_producers(args: &ProducersArgs) -> anyhow::Result<()> {
    let connect = &args.connect;
    let mut bootstrap = Connection::bootstrap(&connect.bootstrap, connect.timeout)
        .context("cannot describe producers")?;
    let (_, mut producers) = producers(&mut bootstrap, connect, &args.topic, args.partition)?;
    producers.sort_by_key(|p| p.producer_id.0);
    let mut table = Table::new(&[
        "PRODUCER-ID",
        "PRODUCER-EPOCH",
        "COORDINATOR-EPOCH",
        "LAST-SEQUENCE",
        "LAST-TIMESTAMP",
        "TXN-START-OFFSET",
    ]);
    for p in producers {
        table.row(vec![
            p.producer_id.0.to_string(),
            p.producer_epoch.to_string(),
            p.coordinator_epoch.to_string(),
            p.last_sequence.to_string(),
            p.last_timestamp.to_string(),
            if p.current_txn_start_offset >= 0 {
                p.current_txn_start_offset.to_string()
            } else {
                "-".to_string()
            },
        ]);
    }
    table.write(&mut std::io::stdout().lock())?;
    Ok(())
}

/// The marker `abort` writes: Kafka's `AbortTransactionSpec`.
#[derive(Debug)]
struct AbortSpec {
    producer_id: i64,
    producer_epoch: i16,
    coordinator_epoch: i32,
    /// Where the transaction began, when the leader said.
    start_offset: Option<i64>,
}

fn abort(args: &AbortArgs) -> anyhow::Result<()> {
    let connect = &args.connect;
    let (topic, partition) = (args.topic.as_str(), args.partition);
    let what = || format!("cannot abort a transaction in partition {partition} of topic '{topic}'");
    let deadline = Instant::now() + connect.timeout;
    let mut bootstrap =
        Connection::bootstrap(&connect.bootstrap, connect.timeout).with_context(what)?;
    let spec = match (
        args.producer_id,
        args.producer_epoch,
        args.coordinator_epoch,
    ) {
        (Some(producer_id), Some(producer_epoch), Some(coordinator_epoch)) => AbortSpec {
            producer_id,
            producer_epoch,
            coordinator_epoch,
            start_offset: None,
        },
        _ => find_open(&mut bootstrap, args)?,
    };
    // As Kafka's tool: a producer whose first transaction hangs has no
    // coordinator epoch at the partition yet (-1); 0 is at most any
    // coordinator's epoch.
    let coordinator_epoch = spec.coordinator_epoch.max(0);
    loop {
        let leader = topic_leaders(&mut bootstrap, topic)?.leader(topic, partition)?;
        let mut other = None;
        let at = bootstrap
            .or_connect(&leader.addr, connect.timeout, &mut other)
            .with_context(what)?;
        let request =
            WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
                .with_producer_id(ProducerId(spec.producer_id))
                .with_producer_epoch(spec.producer_epoch)
                .with_transaction_result(false)
                .with_coordinator_epoch(coordinator_epoch)
                .with_topics(vec![WritableTxnMarkerTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partition_indexes(vec![partition])])]);
        let (_, answer) = at.send(request, 1..=1).with_context(what)?;
        let Some(code) = answer
            .markers
            .iter()
            .filter(|m| m.producer_id.0 == spec.producer_id)
            .flat_map(|m| &m.topics)
            .filter(|t| t.name.0.as_str() == topic)
            .flat_map(|t| &t.partitions)
            .find(|p| p.partition_index == partition)
            .map(|p| p.error_code)
        else {
            bail!("{}: node {} left it out of its answer", what(), leader.id);
        };
        match ResponseError::try_from_code(code) {
            None => {
                let began = spec
                    .start_offset
                    .map(|offset| format!(", which began at offset {offset}"))
                    .unwrap_or_default();
                println!(
                    "aborted the transaction of producer {} (epoch {}, coordinator epoch {coordinator_epoch}){began}: abort marker written to partition {partition} of topic {topic} at node {}",
                    spec.producer_id, spec.producer_epoch, leader.id
                );
                return Ok(());
            }
            Some(error) if is_leader_moving(error) && Instant::now() < deadline => {
                std::thread::sleep(RETRY_BACKOFF);
            }
            Some(error) => {
                let why = match error {
                    ResponseError::InvalidProducerEpoch => format!(
                        " (the partition has seen a newer epoch of producer {} than {})",
                        spec.producer_id, spec.producer_epoch
                    ),
                    ResponseError::TransactionCoordinatorFenced => format!(
                        " (a coordinator with an epoch newer than {coordinator_epoch} has written there)"
                    ),
                    _ => String::new(),
                };
                bail!(
                    "{}: node {} refused the marker of producer {}: {}{why}",
                    what(),
                    leader.id,
                    spec.producer_id,
                    error_name(error)
                );
            }
        }
    }
}

/// The open transaction `args` names (by producer id or start offset), as
/// the partition's leader describes it.
fn find_open(bootstrap: &mut Connection, args: &AbortArgs) -> anyhow::Result<AbortSpec> {
    let (topic, partition) = (args.topic.as_str(), args.partition);
    let (leader, producers) = producers(bootstrap, &args.connect, topic, partition)?;
    let found = match (args.producer_id, args.start_offset) {
        (Some(producer_id), _) => {
            let Some(found) = producers.iter().find(|p| p.producer_id.0 == producer_id) else {
                bail!(
                    "producer {producer_id} is not known in partition {partition} of topic '{topic}' (its leader, node {leader}, lists {}); nothing to abort",
                    producer_ids(&producers)
                );
            };
            if found.current_txn_start_offset < 0 {
                bail!("producer {producer_id} has no open transaction in partition {partition} of topic '{topic}'; nothing to abort");
            }
            found
        }
        (None, Some(offset)) => {
            let Some(found) = producers
                .iter()
                .find(|p| p.current_txn_start_offset == offset)
            else {
                bail!("no open transaction began at offset {offset} of partition {partition} of topic '{topic}'; nothing to abort");
            };
            found
        }
        (None, None) => bail!("name the transaction with --producer-id or --start-offset"),
    };
    Ok(AbortSpec {
        producer_id: found.producer_id.0,
        producer_epoch: i16::try_from(found.producer_epoch).with_context(|| {
            format!(
                "producer {} has epoch {}, out of range",
                found.producer_id.0, found.producer_epoch
            )
        })?,
        coordinator_epoch: found.coordinator_epoch,
        start_offset: Some(found.current_txn_start_offset),
    })
}

/// Producer ids for a message: `none` or `1, 2, 3`.
fn producer_ids(producers: &[ProducerState]) -> String {
    let ids: BTreeSet<i64> = producers.iter().map(|p| p.producer_id.0).collect();
    if ids.is_empty() {
        return "none".to_string();
    }
    ids.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_producer_lists_read_well() {
        assert_eq!(show_time_ms(1_000), "1970-01-01T00:00:01.000Z");
        assert_eq!(producer_ids(&[]), "none");
        let producer = |id| ProducerState::default().with_producer_id(ProducerId(id));
        assert_eq!(
            producer_ids(&[producer(7), producer(2), producer(7)]),
            "2, 7"
        );
    }

    #[test]
    fn error_names_are_kafkas() {
        assert_eq!(
            error_name(ResponseError::InvalidProducerEpoch),
            "INVALID_PRODUCER_EPOCH"
        );
        assert_eq!(
            error_name(ResponseError::TransactionCoordinatorFenced),
            "TRANSACTION_COORDINATOR_FENCED"
        );
        assert_eq!(error_name(ResponseError::Unknown(999)), "UNKNOWN_CODE_999");
    }
}
