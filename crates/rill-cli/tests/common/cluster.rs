//! A cluster of real `rill serve` processes on free loopback ports, for
//! the cluster tests and the replication and fault tests after them.
//!
//! [`Cluster::start`] starts every node at once (the voters form their
//! quorum together) and waits for each ready line; nodes can then be
//! killed (SIGKILL), stopped (SIGTERM), paused (SIGSTOP) and resumed
//! (SIGCONT), and started again on the same data dir and ports. Dropping
//! the cluster resumes and stops every node and removes the data dirs.
//! Every wait is bounded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};
use tempfile::TempDir;

use super::{serve_command, spawn_serve, wait_timeout, Ports, STOP_TIMEOUT};

/// How long a cluster node may take to be ready: it waits for the quorum.
pub const NODE_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How many stderr lines a failing test prints per node.
const STDERR_TAIL_LINES: usize = 40;

/// What a node of the test cluster does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A voter that serves clients (`broker,controller`).
    Combined,
    /// A voter only (`controller`).
    Controller,
    /// A broker that follows the metadata (`broker`).
    Broker,
}

impl Role {
    fn flag(self) -> &'static str {
        match self {
            Role::Combined => "broker,controller",
            Role::Controller => "controller",
            Role::Broker => "broker",
        }
    }

    pub fn is_voter(self) -> bool {
        self != Role::Broker
    }

    pub fn is_broker(self) -> bool {
        self != Role::Controller
    }
}

/// One node of a [`Cluster`].
#[derive(Debug)]
pub struct Node {
    pub id: i32,
    pub role: Role,
    pub ports: Ports,
    data_dir: PathBuf,
    child: Option<Child>,
    paused: bool,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Node {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn kafka_addr(&self) -> SocketAddr {
        self.ports.kafka
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().expect("stderr lock").clone()
    }

    fn signal(&self, signal: Signal) {
        let child = self.child.as_ref().expect("the node is not running");
        kill_process(Pid::from_child(child), signal).expect("send a signal");
    }
}

/// Several `rill serve` processes forming one cluster.
#[derive(Debug)]
pub struct Cluster {
    // Dropped after the nodes are stopped (see `Drop`).
    dir: TempDir,
    nodes: Vec<Node>,
    quorum: String,
    extra_args: Vec<String>,
    /// Each node in a rack of its own, `rack-<id>`.
    racked: bool,
}

impl Cluster {
    /// `n` combined nodes (ids 1..=n).
    pub fn combined(n: i32, extra_args: &[&str]) -> Cluster {
        let roles: Vec<(i32, Role)> = (1..=n).map(|id| (id, Role::Combined)).collect();
        Cluster::start(&roles, extra_args)
    }

    /// `n` combined nodes, node `id` in rack `rack-<id>`.
    pub fn combined_in_racks(n: i32, extra_args: &[&str]) -> Cluster {
        let roles: Vec<(i32, Role)> = (1..=n).map(|id| (id, Role::Combined)).collect();
        Cluster::start_with(&roles, extra_args, true)
    }

    /// Starts the given nodes at once, each with `extra_args` on top of its
    /// identity, quorum and ports, and waits until every one is ready.
    pub fn start(roles: &[(i32, Role)], extra_args: &[&str]) -> Cluster {
        Cluster::start_with(roles, extra_args, false)
    }

    fn start_with(roles: &[(i32, Role)], extra_args: &[&str], racked: bool) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("rill-cluster-")
            .tempdir()
            .expect("create a temporary dir");
        let ports = Ports::pick_many(roles.len());
        let nodes: Vec<Node> = roles
            .iter()
            .zip(ports)
            .map(|(&(id, role), ports)| Node {
                id,
                role,
                ports,
                data_dir: dir.path().join(format!("node-{id}")),
                child: None,
                paused: false,
                stderr: Arc::new(Mutex::new(Vec::new())),
            })
            .collect();
        let quorum = nodes
            .iter()
            .filter(|n| n.role.is_voter())
            .map(|n| format!("{}@{}", n.id, n.ports.controller))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            dir,
            nodes,
            quorum,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            racked,
        };
        let starting: Vec<_> = (0..cluster.nodes.len())
            .map(|i| {
                let node = &cluster.nodes[i];
                spawn_serve(cluster.command(node), &node.stderr)
                    .unwrap_or_else(|e| panic!("node {}: {e}", node.id))
            })
            .collect();
        let mut starting = starting.into_iter().enumerate();
        while let Some((i, next)) = starting.next() {
            match next.wait_ready(NODE_READY_TIMEOUT) {
                Ok((child, _)) => cluster.nodes[i].child = Some(child),
                Err(error) => {
                    // The nodes not yet waited for are not the cluster's
                    // yet: kill them here, or they would outlive the test
                    // (the cluster's drop stops the ones already started).
                    for (_, rest) in starting {
                        rest.kill();
                    }
                    panic!("node {} did not start: {error}", cluster.nodes[i].id);
                }
            }
        }
        cluster
    }

    /// The `rill serve` command of `node`, as it is started every time.
    fn command(&self, node: &Node) -> Command {
        let mut command = serve_command(&node.data_dir, &node.ports);
        command
            .args(["--node-id", &node.id.to_string()])
            .args(["--controller-quorum", &self.quorum])
            .args(["--process-roles", node.role.flag()])
            .args(&self.extra_args);
        if self.racked {
            command.args(["--rack", &format!("rack-{}", node.id)]);
        }
        command
    }

    /// A `rill serve` command for a node that is not part of the cluster
    /// yet (a refusal test's), with the cluster's quorum.
    pub fn outsider_command(&self, id: i32, role: Role, data_dir: &Path, ports: &Ports) -> Command {
        let mut command = serve_command(data_dir, ports);
        command
            .args(["--node-id", &id.to_string()])
            .args(["--controller-quorum", &self.quorum])
            .args(["--process-roles", role.flag()])
            .args(&self.extra_args);
        command
    }

    pub fn quorum(&self) -> &str {
        &self.quorum
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, id: i32) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn node_mut(&mut self, id: i32) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// `bootstrap.servers` naming every running broker.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.role.is_broker() && n.is_running() && !n.paused)
            .map(|n| n.ports.kafka.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self, id: i32) {
        let node = self.node_mut(id);
        let mut child = node.child.take().expect("the node is not running");
        child.kill().expect("send SIGKILL");
        child.wait().expect("reap the killed node");
        node.paused = false;
    }

    /// SIGTERM; returns the exit status, which must come within `timeout`.
    pub fn terminate(&mut self, id: i32, timeout: Duration) -> ExitStatus {
        let node = self.node_mut(id);
        node.signal(Signal::TERM);
        let mut child = node.child.take().expect("running");
        match wait_timeout(&mut child, timeout) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node {id} did not exit within {timeout:?} of SIGTERM; stderr:\n{}",
                    self.stderr_tail(id)
                );
            }
        }
    }

    /// SIGSTOP.
    pub fn pause(&mut self, id: i32) {
        let node = self.node_mut(id);
        node.signal(Signal::STOP);
        node.paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: i32) {
        let node = self.node_mut(id);
        node.signal(Signal::CONT);
        node.paused = false;
    }

    /// Starts a stopped node again on its data dir and ports and waits
    /// until it is ready.
    pub fn restart(&mut self, id: i32) {
        let node = self.node(id);
        assert!(!node.is_running(), "node {id} is running");
        let starting = spawn_serve(self.command(node), &node.stderr)
            .unwrap_or_else(|e| panic!("node {id}: {e}"));
        match starting.wait_ready(NODE_READY_TIMEOUT) {
            Ok((child, _)) => self.node_mut(id).child = Some(child),
            Err(error) => panic!("node {id} did not restart: {error}"),
        }
    }

    pub fn stderr_tail(&self, id: i32) -> String {
        let lines = self.node(id).stderr_lines();
        let from = lines.len().saturating_sub(STDERR_TAIL_LINES);
        lines[from..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Resume the paused, then stop everyone at once: stopped one by one,
        // the last nodes would wait for a quorum that has already gone.
        for node in &mut self.nodes {
            if node.paused && node.child.is_some() {
                node.signal(Signal::CONT);
                node.paused = false;
            }
            if let Some(child) = &node.child {
                let _ = kill_process(Pid::from_child(child), Signal::TERM);
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                if wait_timeout(&mut child, STOP_TIMEOUT).is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        if thread::panicking() {
            for node in &self.nodes {
                let lines = node.stderr_lines();
                let from = lines.len().saturating_sub(STDERR_TAIL_LINES);
                eprintln!(
                    "--- node {} stderr (last {STDERR_TAIL_LINES} lines) ---\n{}\n---",
                    node.id,
                    lines[from..].join("\n")
                );
            }
        }
    }
}
