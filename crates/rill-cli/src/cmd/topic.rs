//! `rill topic create|list|describe|alter|reassign|delete`.
//!
//! Create, delete, add partitions and describe configs through librdkafka's
//! admin API; config changes through IncrementalAlterConfigs
//! ([`crate::admin`]), because librdkafka only has AlterConfigs, which
//! replaces every dynamic config of a topic with the given set; partition
//! layout from Metadata, and log start and end offsets from ListOffsets.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::IncrementalAlterConfigsRequest;
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{ConfigSource, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Offset;

use super::{
    admin_client, admin_options, block_on, describe_topic, list_offsets, list_topics, node_list,
    parse_key_value, CliContext, ConnectArgs, Table,
};
use crate::admin::{with_message, Connection};

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create(CreateArgs),
    /// List the cluster's topics with their partition counts.
    List(ListArgs),
    /// Show a topic's partitions (leader, replicas, ISR, log start and end
    /// offsets) and its configs that are not the defaults.
    Describe(DescribeArgs),
    /// Add partitions to a topic, or set or remove its configs.
    Alter(AlterArgs),
    /// Move a topic's partitions to other brokers (or change their
    /// replication factor): new replicas copy the data, join the ISR, and
    /// then the replicas no longer wanted are removed.
    Reassign(ReassignArgs),
    /// Delete topics and every record in them.
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The topic's name.
    pub topic: String,
    /// Partitions [default: the broker's num.partitions].
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: Option<i32>,
    /// Copies of each partition [default: the broker's default.replication.factor].
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub replication_factor: Option<i32>,
    /// A topic config, as name=value (repeatable): --config retention.ms=86400000.
    #[arg(long = "config", value_name = "NAME=VALUE", value_parser = parse_key_value)]
    pub configs: Vec<(String, String)>,
    /// Succeed without changing anything if the topic already exists.
    #[arg(long)]
    pub if_not_exists: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// The topic.
    pub topic: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct AlterArgs {
    /// The topic.
    pub topic: String,
    /// The new number of partitions (partitions can be added, not removed).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: Option<i32>,
    /// Set a topic config, as name=value (repeatable).
    #[arg(long = "config", value_name = "NAME=VALUE", value_parser = parse_key_value)]
    pub configs: Vec<(String, String)>,
    /// Remove a topic config, so the broker's default applies again (repeatable).
    #[arg(long = "delete-config", value_name = "NAME")]
    pub delete_configs: Vec<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct ReassignArgs {
    /// The topic.
    pub topic: String,
    /// The new replicas of each partition moved, as broker ids (the first
    /// is the preferred leader): --replicas 1,2,3.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["spread", "cancel"])]
    pub replicas: Vec<i32>,
    /// Generate the plan: spread every partition over all brokers, round
    /// robin, with --replication-factor replicas (default: as now).
    #[arg(long, conflicts_with = "cancel")]
    pub spread: bool,
    /// With --spread: the replication factor to move to.
    #[arg(long, requires = "spread", value_parser = clap::value_parser!(i32).range(1..))]
    pub replication_factor: Option<i32>,
    /// Cancel the partitions' reassignments under way: their original
    /// replicas come back.
    #[arg(long)]
    pub cancel: bool,
    /// Only these partitions (repeatable) [default: every partition].
    #[arg(long = "partition")]
    pub partitions: Vec<i32>,
    /// Wait until the moves are done (bounded by --timeout).
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The topics to delete.
    #[arg(required = true)]
    pub topics: Vec<String>,
    /// Succeed for topics that do not exist.
    #[arg(long)]
    pub if_exists: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

impl TopicCommand {
    pub fn connect(&self) -> &ConnectArgs {
        match self {
            TopicCommand::Create(args) => &args.connect,
            TopicCommand::List(args) => &args.connect,
            TopicCommand::Describe(args) => &args.connect,
            TopicCommand::Alter(args) => &args.connect,
            TopicCommand::Reassign(args) => &args.connect,
            TopicCommand::Delete(args) => &args.connect,
        }
    }
}

pub fn run(command: TopicCommand) -> anyhow::Result<()> {
    match command {
        TopicCommand::Create(args) => create(&args),
        TopicCommand::List(args) => list(&args),
        TopicCommand::Describe(args) => describe(&args),
        TopicCommand::Alter(args) => alter(&args),
        TopicCommand::Reassign(args) => reassign(&args),
        TopicCommand::Delete(args) => delete(&args),
    }
}

fn create(args: &CreateArgs) -> anyhow::Result<()> {
    let admin = admin_client(&args.connect)?;
    let replication = TopicReplication::Fixed(args.replication_factor.unwrap_or(-1));
    // -1 asks the broker for its defaults (CreateTopics v4 and later).
    let mut topic = NewTopic::new(&args.topic, args.partitions.unwrap_or(-1), replication);
    for (name, value) in &args.configs {
        topic = topic.set(name, value);
    }
    let results = block_on(admin.create_topics([&topic], &admin_options(&args.connect)))?.map_err(
        |error| {
            let diagnostics = &admin.inner().context().diagnostics;
            args.connect.failure(
                &format!("cannot create topic '{}'", args.topic),
                &error,
                diagnostics,
            )
        },
    )?;
    for result in results {
        match result {
            Ok(name) => println!("created topic {name}"),
            Err((name, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))
                if args.if_not_exists =>
            {
                println!("topic {name} already exists");
            }
            Err((name, code)) => {
                return Err(args.connect.code_failure(
                    &format!("cannot create topic '{name}'"),
                    code,
                    &admin.inner().context().diagnostics,
                ))
            }
        }
    }
    Ok(())
}

fn list(args: &ListArgs) -> anyhow::Result<()> {
    let admin = admin_client(&args.connect)?;
    let topics = list_topics(
        admin.inner(),
        &args.connect,
        &admin.inner().context().diagnostics,
    )?;
    let mut table = Table::new(&["TOPIC", "PARTITIONS", "REPLICATION-FACTOR"]);
    for topic in topics.values() {
        let replication = topic
            .partitions
            .first()
            .map_or(0, |partition| partition.replicas.len());
        table.row(vec![
            topic.name.clone(),
            topic.partitions.len().to_string(),
            replication.to_string(),
        ]);
    }
    table.write(&mut std::io::stdout().lock())?;
    Ok(())
}

fn describe(args: &DescribeArgs) -> anyhow::Result<()> {
    let connect = &args.connect;
    let consumer: BaseConsumer<CliContext> = connect
        .client_config()
        .create_with_context(CliContext::default())
        .context("cannot create a client")?;
    let diagnostics = &consumer.context().diagnostics;
    let info = describe_topic(consumer.client(), connect, diagnostics, &args.topic)?;
    let ids: Vec<i32> = info.partitions.iter().map(|p| p.id).collect();
    let starts = list_offsets(connect, &info.name, &ids, Offset::Beginning)?;
    let ends = list_offsets(connect, &info.name, &ids, Offset::End)?;

    let admin = admin_client(connect)?;
    let configs = block_on(admin.describe_configs(
        [&ResourceSpecifier::Topic(&args.topic)],
        &admin_options(connect),
    ))?
    .map_err(|error| {
        connect.failure(
            &format!("cannot describe the configs of topic '{}'", args.topic),
            &error,
            &admin.inner().context().diagnostics,
        )
    })?;
    let mut overrides = Vec::new();
    for resource in configs {
        let resource = resource.map_err(|code| {
            anyhow::anyhow!(
                "cannot describe the configs of topic '{}': {code}",
                args.topic
            )
        })?;
        for entry in resource.entries {
            let source = match entry.source {
                ConfigSource::DynamicTopic => "",
                ConfigSource::DynamicBroker => " (dynamic broker config)",
                ConfigSource::DynamicDefaultBroker => " (dynamic default broker config)",
                ConfigSource::StaticBroker => " (static broker config)",
                ConfigSource::Default | ConfigSource::Unknown => continue,
            };
            let value = if entry.is_sensitive {
                "(sensitive)".to_string()
            } else {
                entry.value.unwrap_or_else(|| "(null)".to_string())
            };
            overrides.push(format!("{}={value}{source}", entry.name));
        }
    }
    overrides.sort();

    let mut out = std::io::stdout().lock();
    let replication = info.partitions.first().map_or(0, |p| p.replicas.len());
    writeln!(out, "topic: {}", info.name)?;
    writeln!(out, "partitions: {}", info.partitions.len())?;
    writeln!(out, "replication factor: {replication}")?;
    if overrides.is_empty() {
        writeln!(out, "configs: (all defaults)")?;
    } else {
        writeln!(out, "configs:")?;
        for config in &overrides {
            writeln!(out, "  {config}")?;
        }
    }
    writeln!(out)?;
    let mut table = Table::new(&[
        "PARTITION",
        "LEADER",
        "REPLICAS",
        "ISR",
        "LOG-START",
        "LOG-END",
    ]);
    for partition in &info.partitions {
        let offset = |offsets: &BTreeMap<i32, Offset>| match offsets.get(&partition.id) {
            Some(Offset::Offset(offset)) => offset.to_string(),
            _ => "-".to_string(),
        };
        let leader = match &partition.error {
            Some(error) if partition.leader < 0 => format!("none ({error})"),
            _ => partition.leader.to_string(),
        };
        table.row(vec![
            partition.id.to_string(),
            leader,
            node_list(&partition.replicas),
            node_list(&partition.isr),
            offset(&starts),
            offset(&ends),
        ]);
    }
    table.write(&mut out)?;
    Ok(())
}

fn alter(args: &AlterArgs) -> anyhow::Result<()> {
    let connect = &args.connect;
    if args.partitions.is_none() && args.configs.is_empty() && args.delete_configs.is_empty() {
        bail!("nothing to alter: give --partitions, --config or --delete-config");
    }
    let admin = admin_client(connect)?;
    let diagnostics = &admin.inner().context().diagnostics;
    let info = describe_topic(admin.inner(), connect, diagnostics, &args.topic)?;
    if let Some(partitions) = args.partitions {
        let current = info.partitions.len();
        let wanted = usize::try_from(partitions).unwrap_or(0);
        if wanted < current {
            bail!(
                "topic '{}' has {current} partitions; partitions can be added, not removed",
                args.topic
            );
        }
        if wanted > current {
            let request = NewPartitions::new(&args.topic, wanted);
            let results = block_on(admin.create_partitions([&request], &admin_options(connect)))?
                .map_err(|error| {
                connect.failure(
                    &format!("cannot add partitions to topic '{}'", args.topic),
                    &error,
                    diagnostics,
                )
            })?;
            for result in results {
                if let Err((name, code)) = result {
                    return Err(connect.code_failure(
                        &format!("cannot add partitions to topic '{name}'"),
                        code,
                        diagnostics,
                    ));
                }
            }
            println!("partitions: {current} -> {wanted}");
        } else {
            println!("partitions: {current} (unchanged)");
        }
    }
    if !args.configs.is_empty() || !args.delete_configs.is_empty() {
        alter_configs(args)?;
        for (name, value) in &args.configs {
            println!("set {name}={value}");
        }
        for name in &args.delete_configs {
            println!("removed {name} (the default applies)");
        }
    }
    Ok(())
}

/// AlterPartitionReassignments for the partitions asked for, printing each
/// partition's plan and result; with `--wait`, then polls
/// ListPartitionReassignments until none of them is moving.
fn reassign(args: &ReassignArgs) -> anyhow::Result<()> {
    use kafka_protocol::messages::alter_partition_reassignments_request::{
        ReassignablePartition, ReassignableTopic,
    };
    use kafka_protocol::messages::{AlterPartitionReassignmentsRequest, BrokerId, TopicName};
    let connect = &args.connect;
    if args.replicas.is_empty() && !args.spread && !args.cancel {
        bail!("nothing to do: give --replicas, --spread or --cancel");
    }
    let admin = admin_client(connect)?;
    let diagnostics = &admin.inner().context().diagnostics;
    let info = describe_topic(admin.inner(), connect, diagnostics, &args.topic)?;
    let partitions: Vec<i32> = if args.partitions.is_empty() {
        info.partitions.iter().map(|p| p.id).collect()
    } else {
        args.partitions.clone()
    };
    let brokers: Vec<i32> = {
        let metadata = admin
            .inner()
            .fetch_metadata(None, connect.timeout)
            .map_err(|error| connect.failure("cannot list brokers", &error, diagnostics))?;
        let mut ids: Vec<i32> = metadata.brokers().iter().map(|b| b.id()).collect();
        ids.sort_unstable();
        ids
    };
    let mut plan: Vec<(i32, Option<Vec<i32>>)> = Vec::new();
    for &id in &partitions {
        let Some(current) = info.partitions.iter().find(|p| p.id == id) else {
            bail!("topic '{}' has no partition {id}", args.topic);
        };
        let target = if args.cancel {
            None
        } else if args.spread {
            let factor = args
                .replication_factor
                .map_or(current.replicas.len(), |f| f as usize);
            if factor > brokers.len() {
                bail!(
                    "replication factor {factor} is more than the {} brokers",
                    brokers.len()
                );
            }
            let start = usize::try_from(id).unwrap_or(0);
            Some(
                (0..factor)
                    .map(|i| brokers[(start + i) % brokers.len()])
                    .collect(),
            )
        } else {
            Some(args.replicas.clone())
        };
        plan.push((id, target));
    }
    let request = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(i32::try_from(connect.timeout.as_millis()).unwrap_or(i32::MAX))
        .with_allow_replication_factor_change(true)
        .with_topics(vec![ReassignableTopic::default()
            .with_name(TopicName(StrBytes::from_string(args.topic.clone())))
            .with_partitions(
                plan.iter()
                    .map(|(id, target)| {
                        ReassignablePartition::default()
                            .with_partition_index(*id)
                            .with_replicas(
                                target
                                    .as_ref()
                                    .map(|t| t.iter().copied().map(BrokerId).collect()),
                            )
                    })
                    .collect(),
            )]);
    let mut connection = Connection::bootstrap(&connect.bootstrap, connect.timeout)?;
    let (_, response) = connection.send(request, 0..=1)?;
    if response.error_code != 0 {
        let error = ResponseError::try_from_code(response.error_code);
        bail!(
            "cannot reassign topic '{}': {}",
            args.topic,
            error.map_or_else(
                || format!("error {}", response.error_code),
                |e| with_message(e, response.error_message.as_deref())
            )
        );
    }
    let mut failed = 0;
    for topic in &response.responses {
        for p in &topic.partitions {
            let before = info
                .partitions
                .iter()
                .find(|x| x.id == p.partition_index)
                .map(|x| node_list(&x.replicas))
                .unwrap_or_default();
            let after = plan
                .iter()
                .find(|(id, _)| *id == p.partition_index)
                .and_then(|(_, t)| t.as_ref())
                .map_or_else(|| "cancelled".to_string(), |t| node_list(t));
            if p.error_code == 0 {
                println!("{}-{}: {before} -> {after}", args.topic, p.partition_index);
            } else {
                failed += 1;
                let error = ResponseError::try_from_code(p.error_code);
                eprintln!(
                    "{}-{}: {}",
                    args.topic,
                    p.partition_index,
                    error.map_or_else(
                        || format!("error {}", p.error_code),
                        |e| with_message(e, p.error_message.as_deref())
                    )
                );
            }
        }
    }
    if failed > 0 {
        bail!("{failed} partition(s) not reassigned");
    }
    if args.wait && !args.cancel {
        let deadline = std::time::Instant::now() + connect.timeout;
        loop {
            let moving = moving_partitions(&mut connection, &args.topic)?;
            if !moving.iter().any(|p| partitions.contains(p)) {
                println!("done");
                break;
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "partitions {moving:?} of topic '{}' still moving after {:?}",
                    args.topic,
                    connect.timeout
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    Ok(())
}

/// The partitions of `topic` being reassigned (ListPartitionReassignments).
fn moving_partitions(connection: &mut Connection, topic: &str) -> anyhow::Result<Vec<i32>> {
    use kafka_protocol::messages::list_partition_reassignments_request::ListPartitionReassignmentsTopics;
    use kafka_protocol::messages::ListPartitionReassignmentsRequest;
    let request = ListPartitionReassignmentsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(None::<Vec<ListPartitionReassignmentsTopics>>);
    let (_, response) = connection.send(request, 0..=0)?;
    if response.error_code != 0 {
        bail!(
            "ListPartitionReassignments failed with error {}",
            response.error_code
        );
    }
    Ok(response
        .topics
        .iter()
        .filter(|t| t.name.0.as_str() == topic)
        .flat_map(|t| t.partitions.iter().map(|p| p.partition_index))
        .collect())
}

/// IncrementalAlterConfigs on one topic: set and remove only the named
/// configs, leaving the others as they are.
fn alter_configs(args: &AlterArgs) -> anyhow::Result<()> {
    const RESOURCE_TOPIC: i8 = 2;
    const OPERATION_SET: i8 = 0;
    const OPERATION_DELETE: i8 = 1;
    let mut configs: Vec<AlterableConfig> = args
        .configs
        .iter()
        .map(|(name, value)| {
            AlterableConfig::default()
                .with_name(StrBytes::from_string(name.clone()))
                .with_config_operation(OPERATION_SET)
                .with_value(Some(StrBytes::from_string(value.clone())))
        })
        .collect();
    configs.extend(args.delete_configs.iter().map(|name| {
        AlterableConfig::default()
            .with_name(StrBytes::from_string(name.clone()))
            .with_config_operation(OPERATION_DELETE)
    }));
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(StrBytes::from_string(args.topic.clone()))
            .with_configs(configs),
    ]);
    let what = format!("cannot change the configs of topic '{}'", args.topic);
    let mut connection = Connection::bootstrap(&args.connect.bootstrap, args.connect.timeout)
        .with_context(|| what.clone())?;
    let (_, answer) = connection
        .send(request, 0..=1)
        .with_context(|| what.clone())?;
    for response in answer.responses {
        if let Some(error) = ResponseError::try_from_code(response.error_code) {
            let message = response.error_message.as_ref().map(|m| m.as_str());
            bail!("{what}: {}", with_message(error, message));
        }
    }
    Ok(())
}

fn delete(args: &DeleteArgs) -> anyhow::Result<()> {
    let admin = admin_client(&args.connect)?;
    let names: Vec<&str> = args.topics.iter().map(String::as_str).collect();
    let results =
        block_on(admin.delete_topics(&names, &admin_options(&args.connect)))?.map_err(|error| {
            args.connect.failure(
                "cannot delete topics",
                &error,
                &admin.inner().context().diagnostics,
            )
        })?;
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(name) => println!("deleted topic {name}"),
            Err((name, rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                if args.if_exists {
                    println!("topic {name} does not exist");
                } else {
                    failures.push(format!("topic '{name}' does not exist"));
                }
            }
            Err((name, code)) => failures.push(
                args.connect
                    .code_failure(
                        &format!("cannot delete topic '{name}'"),
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
