//! `rill cluster describe`: the cluster id, the controller, the nodes, and
//! the API versions the bootstrap broker speaks.
//!
//! Metadata with an empty topic list carries the cluster id and controller
//! (which librdkafka's metadata API does not expose) and works on every
//! broker since Kafka 0.10.2; the versions are the connection's own
//! ApiVersions answer. Both through [`crate::admin`].

use std::io::Write;

use anyhow::Context;
use clap::{Args, Subcommand};
use kafka_protocol::messages::{
    describe_quorum_request, DescribeClusterRequest, DescribeQuorumRequest, MetadataRequest,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{ConnectArgs, Table};
use crate::admin::{api_name, Connection};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show the cluster id, the controller, the nodes, and the API versions
    /// the broker supports.
    Describe(DescribeArgs),
    /// Start a cluster of several nodes on this machine (one process per
    /// node, free loopback ports); Ctrl-C stops all of it.
    Local(super::local_cluster::LocalArgs),
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

impl ClusterCommand {
    /// The cluster a command talks to; `None` for `local`, which starts one.
    pub fn connect(&self) -> Option<&ConnectArgs> {
        match self {
            ClusterCommand::Describe(args) => Some(&args.connect),
            ClusterCommand::Local(_) => None,
        }
    }
}

pub fn run(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Describe(args) => describe(&args),
        ClusterCommand::Local(args) => super::local_cluster::run(&args),
    }
}

fn describe(args: &DescribeArgs) -> anyhow::Result<()> {
    let what = "cannot describe the cluster";
    let mut connection =
        Connection::bootstrap(&args.connect.bootstrap, args.connect.timeout).context(what)?;
    // An empty list (not a null one) asks for no topics; v0 read it as all.
    let request = MetadataRequest::default().with_topics(Some(Vec::new()));
    let (version, metadata) = connection.send(request, 1..=12).context(what)?;

    let mut out = std::io::stdout().lock();
    let cluster_id = match &metadata.cluster_id {
        Some(id) => id.to_string(),
        // Metadata v1 has no cluster id.
        None if version < 2 => "(not reported)".to_string(),
        None => "(none)".to_string(),
    };
    writeln!(out, "cluster id: {cluster_id}")?;
    let controller = metadata.controller_id.0;
    if controller < 0 {
        writeln!(out, "controller: none")?;
    } else {
        writeln!(out, "controller: {controller}")?;
    }
    writeln!(out)?;
    // Brokers: DescribeCluster v2 also lists the fenced ones; a broker
    // without it gives Metadata's (unfenced) list.
    let rack = |rack: Option<&StrBytes>| rack.map_or_else(|| "-".to_string(), ToString::to_string);
    let mut rows: Vec<(i32, String, String, String, &str)> = match connection.send(
        DescribeClusterRequest::default().with_include_fenced_brokers(true),
        2..=2,
    ) {
        Ok((_, described)) if described.error_code == 0 => described
            .brokers
            .iter()
            .map(|b| {
                let state = if b.is_fenced { "fenced" } else { "unfenced" };
                (
                    b.broker_id.0,
                    b.host.to_string(),
                    b.port.to_string(),
                    rack(b.rack.as_ref()),
                    state,
                )
            })
            .collect(),
        _ => metadata
            .brokers
            .iter()
            .map(|b| {
                (
                    b.node_id.0,
                    b.host.to_string(),
                    b.port.to_string(),
                    rack(b.rack.as_ref()),
                    "-",
                )
            })
            .collect(),
    };
    rows.sort_by_key(|row| row.0);
    let mut table = Table::new(&["BROKER", "HOST", "PORT", "RACK", "STATE"]);
    for (id, host, port, rack, state) in rows {
        table.row(vec![id.to_string(), host, port, rack, state.to_string()]);
    }
    table.write(&mut out)?;
    writeln!(out)?;

    // The controller quorum (KIP-595), where the broker answers for it.
    let quorum_request = DescribeQuorumRequest::default().with_topics(vec![
        describe_quorum_request::TopicData::default()
            .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
            .with_partitions(vec![describe_quorum_request::PartitionData::default()]),
    ]);
    if let Ok((_, quorum)) = connection.send(quorum_request, 0..=2) {
        match quorum.topics.first().and_then(|t| t.partitions.first()) {
            Some(p) if quorum.error_code == 0 && p.error_code == 0 => {
                writeln!(
                    out,
                    "controller quorum: leader {}, term {}, committed metadata offset {}",
                    p.leader_id.0, p.leader_epoch, p.high_watermark
                )?;
                let mut table = Table::new(&["NODE", "ROLE", "LOG-END", "LAG"]);
                let members = p
                    .current_voters
                    .iter()
                    .map(|r| {
                        (
                            r,
                            if r.replica_id == p.leader_id {
                                "leader"
                            } else {
                                "voter"
                            },
                        )
                    })
                    .chain(p.observers.iter().map(|r| (r, "observer")));
                for (replica, role) in members {
                    let (end, lag) = if replica.log_end_offset < 0 {
                        ("-".to_string(), "-".to_string())
                    } else {
                        (
                            replica.log_end_offset.to_string(),
                            (p.high_watermark - replica.log_end_offset)
                                .max(0)
                                .to_string(),
                        )
                    };
                    table.row(vec![
                        replica.replica_id.0.to_string(),
                        role.to_string(),
                        end,
                        lag,
                    ]);
                }
                table.write(&mut out)?;
            }
            _ => writeln!(
                out,
                "controller quorum: unavailable (error {})",
                quorum.error_code
            )?,
        }
        writeln!(out)?;
    }
    writeln!(out, "api versions of {}:", connection.addr())?;
    let mut table = Table::new(&["API", "KEY", "MIN", "MAX"]);
    for (&key, &(min, max)) in connection.versions() {
        table.row(vec![
            api_name(key),
            key.to_string(),
            min.to_string(),
            max.to_string(),
        ]);
    }
    table.write(&mut out)?;
    Ok(())
}
