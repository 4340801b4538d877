//! `rill group list|describe|reset-offsets|delete`.
//!
//! Groups, their states and members come from librdkafka's group list
//! (ListGroups, then DescribeGroups); committing new offsets and deleting
//! groups go through librdkafka too. A group's committed offsets of every
//! topic (OffsetFetch with no topic list) and deleting one topic's offsets
//! (OffsetDelete) have no librdkafka API, so they go through
//! [`crate::admin`] to the group's coordinator.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, Bytes};
use clap::Args;
use clap::Subcommand;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, GroupId, OffsetDeleteRequest, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::groups::GroupInfo;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::{
    admin_client, admin_options, block_on, describe_topic, list_offsets, lookup_client,
    parse_time_ms, CliContext, ConnectArgs, Table,
};
use crate::admin::{group_coordinator, is_retriable, with_message, Connection};

/// How long to wait before asking a coordinator that is loading again.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// The most offsets `reset-offsets` commits in one request.
const COMMIT_PARTITIONS_MAX: usize = 10_000;

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List the cluster's consumer groups with their states.
    List(ListArgs),
    /// Show a group's state, its members and their partitions, and each
    /// partition's committed offset, log end offset and lag.
    Describe(DescribeArgs),
    /// Move a group's committed offsets. Shows the change and commits it
    /// only with --execute; the group must have no active members.
    ResetOffsets(ResetArgs),
    /// Delete groups with their committed offsets, or, with --topic, only
    /// one topic's offsets of a group.
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// The group.
    pub group: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// The group.
    pub group: String,
    /// A topic whose offsets to reset (repeatable).
    #[arg(
        long = "topic",
        value_name = "TOPIC",
        required_unless_present = "all_topics"
    )]
    pub topics: Vec<String>,
    /// Every topic the group has committed offsets for.
    #[arg(long, conflicts_with = "topics")]
    pub all_topics: bool,
    /// Only this partition of the topics (repeatable) [default: every partition].
    #[arg(long = "partition", value_name = "PARTITION")]
    pub partitions: Vec<i32>,
    #[command(flatten)]
    pub to: ResetTo,
    /// Only show the new offsets; this is the default.
    #[arg(long, conflicts_with = "execute")]
    pub dry_run: bool,
    /// Commit the new offsets.
    #[arg(long)]
    pub execute: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Where the offsets go; exactly one.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ResetTo {
    /// To the log start offset.
    #[arg(long)]
    pub to_earliest: bool,
    /// To the log end offset.
    #[arg(long)]
    pub to_latest: bool,
    /// To this offset (kept within the log's start and end).
    #[arg(long, value_name = "OFFSET")]
    pub to_offset: Option<i64>,
    /// To the first record at or after this time (RFC 3339, or @ and
    /// milliseconds since the epoch).
    #[arg(long, value_name = "TIME", value_parser = parse_time_ms)]
    pub to_datetime: Option<i64>,
    /// Forward (or, negative, back) from the committed offset by N.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub shift_by: Option<i64>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The groups to delete.
    #[arg(required = true)]
    pub groups: Vec<String>,
    /// Delete only the group's committed offsets of this topic; the group
    /// must not be consuming it.
    #[arg(long)]
    pub topic: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

impl GroupCommand {
    pub fn connect(&self) -> &ConnectArgs {
        match self {
            GroupCommand::List(args) => &args.connect,
            GroupCommand::Describe(args) => &args.connect,
            GroupCommand::ResetOffsets(args) => &args.connect,
            GroupCommand::Delete(args) => &args.connect,
        }
    }
}

pub fn run(command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::List(args) => list(&args),
        GroupCommand::Describe(args) => describe(&args),
        GroupCommand::ResetOffsets(args) => reset_offsets(&args),
        GroupCommand::Delete(args) => delete(&args),
    }
}

/// A group's committed offsets, by topic and partition.
type Committed = BTreeMap<(String, i32), i64>;

fn list(args: &ListArgs) -> anyhow::Result<()> {
    let client = lookup_client(&args.connect)?;
    let groups = client
        .fetch_group_list(None, args.connect.timeout)
        .map_err(|error| {
            args.connect
                .failure("cannot list groups", &error, &client.context().diagnostics)
        })?;
    let mut rows: Vec<&GroupInfo> = groups.groups().iter().collect();
    rows.sort_by(|a, b| a.name().cmp(b.name()));
    let mut table = Table::new(&["GROUP", "STATE", "PROTOCOL-TYPE", "MEMBERS"]);
    for group in rows {
        table.row(vec![
            group.name().to_string(),
            group.state().to_string(),
            non_empty(group.protocol_type()),
            group.members().len().to_string(),
        ]);
    }
    table.write(&mut std::io::stdout().lock())?;
    Ok(())
}

/// A group's state and members, as DescribeGroups tells them.
#[derive(Debug)]
struct GroupState {
    state: String,
    protocol_type: String,
    protocol: String,
    members: Vec<Member>,
}

#[derive(Debug)]
struct Member {
    id: String,
    client_id: String,
    host: String,
    /// The partitions the member was assigned, if its assignment is in the
    /// consumer protocol's format.
    assignment: Vec<(String, i32)>,
}

fn group_state(
    client: &BaseConsumer<CliContext>,
    connect: &ConnectArgs,
    group: &str,
) -> anyhow::Result<GroupState> {
    let groups = client
        .fetch_group_list(Some(group), connect.timeout)
        .map_err(|error| {
            connect.failure(
                &format!("cannot describe group '{group}'"),
                &error,
                &client.context().diagnostics,
            )
        })?;
    let Some(info) = groups.groups().iter().find(|info| info.name() == group) else {
        // No answer for the group is the same as no group.
        return Ok(GroupState {
            state: "Dead".to_string(),
            protocol_type: String::new(),
            protocol: String::new(),
            members: Vec::new(),
        });
    };
    let consumer_protocol = info.protocol_type() == "consumer";
    let members = info
        .members()
        .iter()
        .map(|member| Member {
            id: member.id().to_string(),
            client_id: member.client_id().to_string(),
            host: member.client_host().to_string(),
            assignment: member
                .assignment()
                .filter(|_| consumer_protocol)
                .map(decode_assignment)
                .unwrap_or_default(),
        })
        .collect();
    Ok(GroupState {
        state: info.state().to_string(),
        protocol_type: info.protocol_type().to_string(),
        protocol: info.protocol().to_string(),
        members,
    })
}

/// The partitions in a consumer-protocol assignment: a version, then the
/// assignment at that version. Anything else reads as no partitions.
fn decode_assignment(bytes: &[u8]) -> Vec<(String, i32)> {
    let mut bytes = Bytes::copy_from_slice(bytes);
    if bytes.remaining() < 2 {
        return Vec::new();
    }
    // Newer versions only add fields, which this version's decoder skips.
    let version = bytes.get_i16().clamp(0, 3);
    let Ok(assignment) = ConsumerProtocolAssignment::decode(&mut bytes, version) else {
        return Vec::new();
    };
    let mut partitions: Vec<(String, i32)> = assignment
        .assigned_partitions
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .map(|&partition| (topic.topic.to_string(), partition))
        })
        .collect();
    partitions.sort();
    partitions
}

/// Every committed offset of a group (OffsetFetch with no topic list, to
/// its coordinator).
fn committed_offsets(connect: &ConnectArgs, group: &str) -> anyhow::Result<Committed> {
    let what = || format!("cannot read the committed offsets of group '{group}'");
    let deadline = Instant::now() + connect.timeout;
    let mut bootstrap =
        Connection::bootstrap(&connect.bootstrap, connect.timeout).with_context(what)?;
    let mut coordinator =
        group_coordinator(&mut bootstrap, group, connect.timeout).with_context(what)?;
    loop {
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_topics(None);
        // v2 is the first to take "every topic"; v8 batches groups.
        let (_, answer) = coordinator.send(request, 2..=7).with_context(what)?;
        match ResponseError::try_from_code(answer.error_code) {
            None => {}
            Some(error) if is_retriable(error) && Instant::now() < deadline => {
                std::thread::sleep(RETRY_BACKOFF);
                if matches!(error, ResponseError::NotCoordinator) {
                    coordinator = group_coordinator(&mut bootstrap, group, connect.timeout)
                        .with_context(what)?;
                }
                continue;
            }
            Some(error) => bail!("{}: {error}", what()),
        }
        let mut committed = Committed::new();
        for topic in answer.topics {
            for partition in topic.partitions {
                if partition.error_code == 0 && partition.committed_offset >= 0 {
                    committed.insert(
                        (topic.name.to_string(), partition.partition_index),
                        partition.committed_offset,
                    );
                }
            }
        }
        return Ok(committed);
    }
}

fn describe(args: &DescribeArgs) -> anyhow::Result<()> {
    let connect = &args.connect;
    let client = lookup_client(connect)?;
    let state = group_state(&client, connect, &args.group)?;
    let committed = committed_offsets(connect, &args.group)?;
    if state.state == "Dead" && committed.is_empty() {
        bail!("group '{}' does not exist", args.group);
    }

    // Every partition the group has an offset for or a member reads.
    let mut owners: BTreeMap<(String, i32), String> = BTreeMap::new();
    for member in &state.members {
        for partition in &member.assignment {
            owners.insert(partition.clone(), member.client_id.clone());
        }
    }
    let partitions: BTreeSet<(String, i32)> =
        committed.keys().chain(owners.keys()).cloned().collect();
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in &partitions {
        by_topic.entry(topic).or_default().push(*partition);
    }
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for (topic, ids) in &by_topic {
        // A topic deleted since its offsets were committed has no end.
        let Ok(found) = list_offsets(connect, topic, ids, Offset::End) else {
            continue;
        };
        for (partition, offset) in found {
            if let Offset::Offset(offset) = offset {
                ends.insert(((*topic).to_string(), partition), offset);
            }
        }
    }

    let mut out = std::io::stdout().lock();
    writeln!(out, "group: {}", args.group)?;
    writeln!(out, "state: {}", state.state)?;
    if !state.protocol_type.is_empty() {
        writeln!(
            out,
            "protocol: {} ({})",
            state.protocol_type,
            non_empty(&state.protocol)
        )?;
    }
    writeln!(out, "members: {}", state.members.len())?;
    if !state.members.is_empty() {
        writeln!(out)?;
        let mut table = Table::new(&["MEMBER", "CLIENT-ID", "HOST", "ASSIGNMENT"]);
        for member in &state.members {
            table.row(vec![
                member.id.clone(),
                member.client_id.clone(),
                member.host.clone(),
                show_assignment(&member.assignment),
            ]);
        }
        table.write(&mut out)?;
    }
    writeln!(out)?;
    let mut table = Table::new(&[
        "TOPIC",
        "PARTITION",
        "COMMITTED",
        "LOG-END",
        "LAG",
        "CLIENT-ID",
    ]);
    for key in &partitions {
        let committed = committed.get(key);
        let end = ends.get(key);
        let lag = match (committed, end) {
            (Some(committed), Some(end)) => (end - committed).max(0).to_string(),
            _ => "-".to_string(),
        };
        table.row(vec![
            key.0.clone(),
            key.1.to_string(),
            committed.map_or_else(|| "-".to_string(), i64::to_string),
            end.map_or_else(|| "-".to_string(), i64::to_string),
            lag,
            owners.get(key).cloned().unwrap_or_else(|| "-".to_string()),
        ]);
    }
    table.write(&mut out)?;
    Ok(())
}

fn show_assignment(partitions: &[(String, i32)]) -> String {
    if partitions.is_empty() {
        return "-".to_string();
    }
    let mut by_topic: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (topic, partition) in partitions {
        by_topic
            .entry(topic)
            .or_default()
            .push(partition.to_string());
    }
    by_topic
        .iter()
        .map(|(topic, ids)| format!("{topic}:{}", ids.join(",")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn non_empty(text: &str) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text.to_string()
    }
}

fn reset_offsets(args: &ResetArgs) -> anyhow::Result<()> {
    let connect = &args.connect;
    let client = lookup_client(connect)?;
    let diagnostics = &client.context().diagnostics;
    let state = group_state(&client, connect, &args.group)?;
    if !state.members.is_empty() {
        bail!(
            "group '{}' is active (state {}, members: {}); stop its consumers before resetting its offsets",
            args.group,
            state.state,
            state.members.len()
        );
    }
    let committed = committed_offsets(connect, &args.group)?;

    // The partitions to move, by topic.
    let mut targets: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    if args.all_topics {
        for (topic, partition) in committed.keys() {
            targets.entry(topic.clone()).or_default().push(*partition);
        }
        if targets.is_empty() {
            bail!("group '{}' has no committed offsets", args.group);
        }
    } else {
        for topic in &args.topics {
            let info = describe_topic(client.client(), connect, diagnostics, topic)?;
            targets.insert(
                topic.clone(),
                info.partitions.iter().map(|p| p.id).collect(),
            );
        }
    }
    if !args.partitions.is_empty() {
        for (topic, partitions) in &mut targets {
            for wanted in &args.partitions {
                if !partitions.contains(wanted) {
                    bail!("topic '{topic}' has no partition {wanted} to reset");
                }
            }
            partitions.retain(|partition| args.partitions.contains(partition));
        }
    }

    let mut plan: Vec<(String, i32, Option<i64>, i64)> = Vec::new();
    for (topic, partitions) in &targets {
        let starts = list_offsets(connect, topic, partitions, Offset::Beginning)?;
        let ends = list_offsets(connect, topic, partitions, Offset::End)?;
        let at_time = match args.to.to_datetime {
            Some(ms) => Some(list_offsets(
                connect,
                topic,
                partitions,
                Offset::Offset(ms),
            )?),
            None => None,
        };
        for &partition in partitions {
            let (Some(Offset::Offset(start)), Some(Offset::Offset(end))) =
                (starts.get(&partition), ends.get(&partition))
            else {
                bail!("cannot read the offsets of partition {partition} of topic '{topic}'");
            };
            let (start, end) = (*start, *end);
            let current = committed.get(&(topic.clone(), partition)).copied();
            let new = if args.to.to_earliest {
                start
            } else if args.to.to_latest {
                end
            } else if let Some(offset) = args.to.to_offset {
                offset.clamp(start, end)
            } else if let Some(shift) = args.to.shift_by {
                let Some(current) = current else {
                    bail!(
                        "cannot shift partition {partition} of topic '{topic}': group '{}' has no committed offset there",
                        args.group
                    );
                };
                current.saturating_add(shift).clamp(start, end)
            } else if let Some(found) = &at_time {
                match found.get(&partition) {
                    Some(Offset::Offset(offset)) => (*offset).clamp(start, end),
                    // No record at or after the time: the end.
                    Some(Offset::End) => end,
                    _ => bail!("cannot find the offset at that time in partition {partition} of topic '{topic}'"),
                }
            } else {
                bail!("give one of --to-earliest, --to-latest, --to-offset, --to-datetime, --shift-by");
            };
            plan.push((topic.clone(), partition, current, new));
        }
    }

    let mut table = Table::new(&["TOPIC", "PARTITION", "CURRENT", "NEW"]);
    for (topic, partition, current, new) in &plan {
        table.row(vec![
            topic.clone(),
            partition.to_string(),
            current.map_or_else(|| "-".to_string(), |c| c.to_string()),
            new.to_string(),
        ]);
    }
    table.write(&mut std::io::stdout().lock())?;

    if !args.execute {
        eprintln!("dry run: nothing committed; add --execute to commit these offsets");
        return Ok(());
    }
    let mut config = connect.client_config();
    config
        .set("group.id", &args.group)
        .set("enable.auto.commit", "false");
    let committer: BaseConsumer<CliContext> = config
        .create_with_context(CliContext::default())
        .context("cannot create a client for the group")?;
    // One OffsetCommit per COMMIT_PARTITIONS_MAX partitions: the
    // coordinator writes each request's offsets as one batch, which must
    // fit `__consumer_offsets`' max.message.bytes (1 MiB by default, about
    // 20,000 offsets).
    for chunk in plan.chunks(COMMIT_PARTITIONS_MAX) {
        let mut offsets = TopicPartitionList::new();
        for (topic, partition, _, new) in chunk {
            offsets
                .add_partition_offset(topic, *partition, Offset::Offset(*new))
                .context("cannot build a partition list")?;
        }
        // Not a member of the group: OffsetCommit with no generation, which
        // a coordinator takes for a group without members.
        committer
            .commit(&offsets, CommitMode::Sync)
            .map_err(|error| {
                args.connect.failure(
                    &format!("cannot commit offsets for group '{}'", args.group),
                    &error,
                    &committer.context().diagnostics,
                )
            })?;
    }
    eprintln!(
        "committed {} offsets for group '{}'",
        plan.len(),
        args.group
    );
    Ok(())
}

fn delete(args: &DeleteArgs) -> anyhow::Result<()> {
    if let Some(topic) = &args.topic {
        let [group] = args.groups.as_slice() else {
            bail!("--topic deletes the offsets of one group; name one group");
        };
        return delete_offsets(&args.connect, group, topic);
    }
    let connect = &args.connect;
    let admin = admin_client(connect)?;
    let names: Vec<&str> = args.groups.iter().map(String::as_str).collect();
    let results =
        block_on(admin.delete_groups(&names, &admin_options(connect)))?.map_err(|error| {
            connect.failure(
                "cannot delete groups",
                &error,
                &admin.inner().context().diagnostics,
            )
        })?;
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(name) => println!("deleted group {name}"),
            Err((name, RDKafkaErrorCode::GroupIdNotFound)) => {
                failures.push(format!("group '{name}' does not exist"));
            }
            Err((name, RDKafkaErrorCode::NonEmptyGroup)) => failures.push(format!(
                "group '{name}' has active members; stop its consumers before deleting it"
            )),
            Err((name, code)) => failures.push(
                connect
                    .code_failure(
                        &format!("cannot delete group '{name}'"),
                        code,
                        &admin.inner().context().diagnostics,
                    )
                    .to_string(),
            ),
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// OffsetDelete of one topic's committed offsets of a group.
fn delete_offsets(connect: &ConnectArgs, group: &str, topic: &str) -> anyhow::Result<()> {
    let committed = committed_offsets(connect, group)?;
    let partitions: Vec<i32> = committed
        .keys()
        .filter(|(name, _)| name == topic)
        .map(|(_, partition)| *partition)
        .collect();
    if partitions.is_empty() {
        bail!("group '{group}' has no committed offsets for topic '{topic}'");
    }
    let what = || format!("cannot delete the offsets of group '{group}' for topic '{topic}'");
    let mut bootstrap =
        Connection::bootstrap(&connect.bootstrap, connect.timeout).with_context(what)?;
    let mut coordinator =
        group_coordinator(&mut bootstrap, group, connect.timeout).with_context(what)?;
    let request = OffsetDeleteRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_topics(vec![OffsetDeleteRequestTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(
                partitions
                    .iter()
                    .map(|&partition| {
                        OffsetDeleteRequestPartition::default().with_partition_index(partition)
                    })
                    .collect(),
            )]);
    let (_, answer) = coordinator.send(request, 0..=0).with_context(what)?;
    if let Some(error) = ResponseError::try_from_code(answer.error_code) {
        bail!("{}: {}", what(), with_message(error, None));
    }
    for answered in &answer.topics {
        for partition in &answered.partitions {
            match ResponseError::try_from_code(partition.error_code) {
                None => {}
                Some(ResponseError::GroupSubscribedToTopic) => bail!(
                    "{}: the group's members are consuming it; stop them first",
                    what()
                ),
                Some(error) => bail!(
                    "{}: partition {}: {error}",
                    what(),
                    partition.partition_index
                ),
            }
        }
    }
    println!(
        "deleted the committed offsets of group {group} for topic {topic} ({} partitions)",
        partitions.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::protocol::Encodable;

    #[test]
    fn assignments_decode_from_the_consumer_protocol() {
        let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
            TopicPartition::default()
                .with_topic(TopicName(StrBytes::from_static_str("b")))
                .with_partitions(vec![2, 0]),
            TopicPartition::default()
                .with_topic(TopicName(StrBytes::from_static_str("a")))
                .with_partitions(vec![1]),
        ]);
        let mut bytes = bytes::BytesMut::new();
        bytes.put_i16(1);
        assignment.encode(&mut bytes, 1).unwrap();
        let decoded = decode_assignment(&bytes);
        assert_eq!(
            decoded,
            vec![("a".into(), 1), ("b".into(), 0), ("b".into(), 2)]
        );
        assert_eq!(show_assignment(&decoded), "a:1 b:0,2");
        assert!(decode_assignment(&[0]).is_empty());
        assert!(decode_assignment(&[0, 0, 0xff]).is_empty());
    }
}
