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
use kafka_protocol::messages::MetadataRequest;

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
    let mut brokers = metadata.brokers.clone();
    brokers.sort_by_key(|broker| broker.node_id.0);
    let mut table = Table::new(&["NODE", "HOST", "PORT", "RACK"]);
    for broker in &brokers {
        table.row(vec![
            broker.node_id.0.to_string(),
            broker.host.to_string(),
            broker.port.to_string(),
            broker
                .rack
                .as_ref()
                .map_or_else(|| "-".to_string(), ToString::to_string),
        ]);
    }
    table.write(&mut out)?;
    writeln!(out)?;
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
