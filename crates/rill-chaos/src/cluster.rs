//! The cluster under test: `rill serve` processes, each with a data dir in
//! a temporary directory, which the nemesis kills (SIGKILL), restarts on
//! the same data dir, pauses (SIGSTOP) and resumes (SIGCONT). Dropping the
//! cluster kills every node (paused ones included) and removes the data
//! dirs, also when the run failed; a node also dies with `rill-chaos`
//! itself. Every wait is bounded.
//!
//! Where the nodes listen ([`Placement`]): on free 127.0.0.1 ports of the
//! host, or in the run's network namespace, node `i` on `127.0.0.(10+i)`
//! as its own user (see `netns`).

use std::fs::Permissions;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rustix::process::{kill_process, Pid, Signal};
use tempfile::TempDir;

use crate::netns;

/// How long a node may take to print its ready line: a start waits for
/// the controller quorum.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a wait looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long a killed node may take to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

/// The listeners of one node.
#[derive(Debug, Clone, Copy)]
struct Ports {
    kafka: SocketAddr,
    controller: SocketAddr,
    http: SocketAddr,
}

#[derive(Debug)]
struct Node {
    id: i32,
    ports: Ports,
    data_dir: PathBuf,
    /// stdout and stderr of every start, appended.
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// Where the nodes listen and as whom they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Free ports on the host's 127.0.0.1, as the user of `rill-chaos`.
    Loopback,
    /// Node `i` on `netns::node_address(i)` (fixed ports: the namespace
    /// is the run's alone), as uid and gid `netns::node_uid(i)`. The
    /// thread that starts the cluster must be in the namespace already:
    /// the nodes inherit it.
    Namespace,
}

/// The ports a node in the namespace listens on, at its own address.
const NAMESPACE_PORTS: (u16, u16, u16) = (9092, 9093, 9644);

/// Several `rill serve` processes forming one cluster.
#[derive(Debug)]
pub struct Cluster {
    rill: PathBuf,
    placement: Placement,
    quorum: String,
    nodes: Vec<Node>,
    extra_args: Vec<String>,
    // Removed after the nodes are killed (see `Drop`).
    dir: TempDir,
}

impl Cluster {
    /// Starts `n` combined (broker and controller) nodes with ids 1..=n at
    /// once, so that the voters form their quorum together, and waits
    /// until each is ready. Node logs go to `log_dir/node-N.log`.
    pub fn start(
        rill: &Path,
        n: usize,
        placement: Placement,
        log_dir: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("rill-chaos-")
            .tempdir()
            .context("create a temporary dir for the data dirs")?;
        let ports = match placement {
            Placement::Loopback => pick_ports(n)?,
            Placement::Namespace => {
                // The nodes' users must reach their data dirs.
                std::fs::set_permissions(dir.path(), Permissions::from_mode(0o755))
                    .context("open the data root to the nodes' users")?;
                (1..=n as i32).map(namespace_ports).collect()
            }
        };
        let nodes: Vec<Node> = ports
            .into_iter()
            .enumerate()
            .map(|(i, ports)| {
                let id = i as i32 + 1;
                Node {
                    id,
                    ports,
                    data_dir: dir.path().join(format!("node-{id}")),
                    log: log_dir.join(format!("node-{id}.log")),
                    child: None,
                    paused: false,
                }
            })
            .collect();
        let quorum = nodes
            .iter()
            .map(|n| format!("{}@{}", n.id, n.ports.controller))
            .collect::<Vec<_>>()
            .join(",");
        if placement == Placement::Namespace {
            for node in &nodes {
                let uid = netns::node_uid(node.id);
                std::fs::create_dir(&node.data_dir)
                    .with_context(|| format!("create {}", node.data_dir.display()))?;
                std::os::unix::fs::chown(&node.data_dir, Some(uid), Some(uid))
                    .with_context(|| format!("chown {} to {uid}", node.data_dir.display()))?;
            }
        }
        let mut cluster = Cluster {
            rill: rill.to_path_buf(),
            placement,
            quorum,
            nodes,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            dir,
        };
        // Each node is the cluster's as soon as it is spawned, so that a
        // failure to start another one still stops it (see `Drop`).
        let mut starting = Vec::new();
        for i in 0..cluster.nodes.len() {
            starting.push(cluster.spawn(i)?);
        }
        for (i, ready) in starting.into_iter().enumerate() {
            cluster.wait_ready(i, &ready)?;
        }
        Ok(cluster)
    }

    pub fn node_ids(&self) -> Vec<i32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// `bootstrap.servers` naming every node.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.ports.kafka.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn data_root(&self) -> &Path {
        self.dir.path()
    }

    fn index(&self, id: i32) -> anyhow::Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .with_context(|| format!("no node {id}"))
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self, id: i32) -> anyhow::Result<()> {
        let i = self.index(id)?;
        let node = &mut self.nodes[i];
        let Some(mut child) = node.child.take() else {
            bail!("node {id} is not running")
        };
        child.kill().with_context(|| format!("SIGKILL node {id}"))?;
        node.paused = false;
        match wait_timeout(&mut child, REAP_TIMEOUT)? {
            Some(_) => Ok(()),
            None => bail!("node {id} was not gone within {REAP_TIMEOUT:?} of SIGKILL"),
        }
    }

    /// Starts a killed node again on its data dir and ports, and waits
    /// until it is ready.
    pub fn restart(&mut self, id: i32) -> anyhow::Result<()> {
        let i = self.index(id)?;
        if self.nodes[i].child.is_some() {
            bail!("node {id} is running");
        }
        let ready = self.spawn(i)?;
        self.wait_ready(i, &ready)
    }

    pub fn pause(&mut self, id: i32) -> anyhow::Result<()> {
        self.signal(id, Signal::STOP)?;
        let i = self.index(id)?;
        self.nodes[i].paused = true;
        Ok(())
    }

    pub fn resume(&mut self, id: i32) -> anyhow::Result<()> {
        self.signal(id, Signal::CONT)?;
        let i = self.index(id)?;
        self.nodes[i].paused = false;
        Ok(())
    }

    fn signal(&self, id: i32, signal: Signal) -> anyhow::Result<()> {
        let node = &self.nodes[self.index(id)?];
        let child = node
            .child
            .as_ref()
            .with_context(|| format!("node {id} is not running"))?;
        kill_process(Pid::from_child(child), signal)
            .with_context(|| format!("send {signal:?} to node {id}"))
    }

    /// The nodes that exited without being killed (a crash: a panic, or a
    /// node stopping itself on a fatal error), each with its exit status.
    /// They count as not running from now on; [`Cluster::restart`] starts
    /// them again.
    pub fn reap_crashed(&mut self) -> anyhow::Result<Vec<(i32, String)>> {
        let mut crashed = Vec::new();
        for node in &mut self.nodes {
            let Some(child) = node.child.as_mut() else {
                continue;
            };
            if let Some(status) = child.try_wait().context("try_wait")? {
                node.child = None;
                node.paused = false;
                crashed.push((node.id, status.to_string()));
            }
        }
        Ok(crashed)
    }

    /// Resumes every paused node and restarts every killed one.
    pub fn heal(&mut self) -> anyhow::Result<Vec<(i32, &'static str)>> {
        let mut healed = Vec::new();
        for id in self.node_ids() {
            let i = self.index(id)?;
            if self.nodes[i].paused {
                self.resume(id)?;
                healed.push((id, "resume"));
            }
        }
        for id in self.node_ids() {
            let i = self.index(id)?;
            if self.nodes[i].child.is_none() {
                self.restart(id)?;
                healed.push((id, "restart"));
            }
        }
        Ok(healed)
    }

    /// Starts node `i`'s process; the receiver gets its ready line.
    fn spawn(&mut self, i: usize) -> anyhow::Result<mpsc::Receiver<()>> {
        let node = &self.nodes[i];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("open {}", node.log.display()))?;
        let stderr = log.try_clone().context("clone the log file")?;
        let mut command = Command::new(&self.rill);
        if self.placement == Placement::Namespace {
            // Its own user, so that the namespace's NAT gives its
            // connections its own address (see `netns`). std drops root's
            // supplementary groups with it (a node's `Groups:` in
            // /proc/PID/status is empty).
            let uid = netns::node_uid(node.id);
            command.uid(uid).gid(uid);
        }
        die_with_parent(&mut command);
        let mut child = command
            .arg("serve")
            .args(["--node-id", &node.id.to_string()])
            .args(["--controller-quorum", &self.quorum])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--kafka-addr", &node.ports.kafka.to_string()])
            .args(["--controller-addr", &node.ports.controller.to_string()])
            .args(["--http-addr", &node.ports.http.to_string()])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("run {}", self.rill.display()))?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let (ready_tx, ready_rx) = mpsc::channel();
        // The ready line comes on stdout; a thread hands it over, so that
        // the wait for it is bounded, and copies everything to the log.
        thread::spawn(move || copy_watching(stdout, log, ready_tx));
        self.nodes[i].child = Some(child);
        self.nodes[i].paused = false;
        Ok(ready_rx)
    }

    /// Waits for node `i`'s ready line; kills the node if it does not come.
    fn wait_ready(&mut self, i: usize, ready: &mpsc::Receiver<()>) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if ready.recv_timeout(POLL_INTERVAL).is_ok() {
                return Ok(());
            }
            let node = &mut self.nodes[i];
            let Some(child) = node.child.as_mut() else {
                bail!("node {} is not running", node.id)
            };
            if let Some(status) = child.try_wait().context("try_wait")? {
                node.child = None;
                bail!(
                    "node {} exited with {status} before it was ready (log: {})",
                    node.id,
                    node.log.display()
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                node.child = None;
                bail!(
                    "node {} was not ready within {READY_TIMEOUT:?} (log: {})",
                    node.id,
                    node.log.display()
                );
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGKILL works on a stopped process too; nothing of the nodes'
        // state is needed after the run.
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = wait_timeout(&mut child, REAP_TIMEOUT);
            }
        }
    }
}

/// Has the node killed (SIGKILL) when `rill-chaos` dies, even by SIGKILL,
/// when `Drop` cannot run. The signal comes when the *thread* that spawned
/// the node ends: every node is spawned by the main thread (the nemesis
/// and the heal run there), which lives as long as the process.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed: it makes one prctl(2)
    // system call and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
}

fn copy_watching(stdout: impl Read, mut log: File, ready: mpsc::Sender<()>) {
    use std::io::Write;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        if line.starts_with("rill ready:") {
            let _ = ready.send(());
        }
        let _ = log.write_all(line.as_bytes());
        line.clear();
    }
}

fn namespace_ports(id: i32) -> Ports {
    let address = IpAddr::V4(netns::node_address(id));
    let (kafka, controller, http) = NAMESPACE_PORTS;
    Ports {
        kafka: SocketAddr::new(address, kafka),
        controller: SocketAddr::new(address, controller),
        http: SocketAddr::new(address, http),
    }
}

/// Three distinct free ports per node. Every listener is held until all
/// are picked, so the kernel cannot hand one out twice; another process
/// could still take one before the node binds it, and the start then
/// fails (the run is not done, exit 2).
fn pick_ports(n: usize) -> anyhow::Result<Vec<Ports>> {
    let listeners = (0..3 * n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("bind a free port")?;
    let addrs = listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<Vec<_>, _>>()
        .context("local addr")?;
    Ok((0..n)
        .map(|i| Ports {
            kafka: addrs[3 * i],
            controller: addrs[3 * i + 1],
            http: addrs[3 * i + 2],
        })
        .collect())
}

/// Waits up to `timeout` for `child` to exit; `None` if it has not.
pub(crate) fn wait_timeout(
    child: &mut Child,
    timeout: Duration,
) -> anyhow::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("try_wait")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(POLL_INTERVAL);
    }
}
