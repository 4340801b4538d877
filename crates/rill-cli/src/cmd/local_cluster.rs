//! `rill cluster local`: a cluster of N nodes on this machine, one `rill
//! serve` process per node, for trying things out and for tests.
//!
//! Each node gets free loopback ports for Kafka, the controller and HTTP,
//! and a data dir `DIR/node-N`; its log goes to `DIR/node-N.log`. The ports
//! are kept in `DIR/ports` so that a second run on the same dir finds the
//! quorum where its log says it is. Every node is a voter and a broker
//! (combined roles). Ctrl-C (or SIGTERM) stops every node with SIGTERM —
//! a controlled shutdown each — and kills what has not stopped in time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

/// How long the nodes may take to print their ready lines.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the nodes may take to stop after SIGTERM before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(40);
/// The most nodes one command starts.
const NODES_MAX: u32 = 9;

#[derive(Debug, Args)]
pub struct LocalArgs {
    /// How many nodes (each a controller voter and a broker).
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Where the nodes' data dirs, logs and ports file live.
    #[arg(long, default_value = "rill-cluster")]
    pub dir: PathBuf,
    /// More `rill serve` flags for every node, e.g. `--serve-arg=--num-partitions=3`.
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
}

/// The three ports of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NodePorts {
    kafka: u16,
    controller: u16,
    http: u16,
}

pub fn run(args: &LocalArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=NODES_MAX).contains(&args.nodes),
        "--nodes must be between 1 and {NODES_MAX}"
    );
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let ports = ports_for(&args.dir, args.nodes)?;
    let quorum = ports
        .iter()
        .map(|(id, p)| format!("{id}@127.0.0.1:{}", p.controller))
        .collect::<Vec<_>>()
        .join(",");
    let exe = std::env::current_exe().context("cannot find the rill binary")?;

    let (ready_tx, ready_rx) = mpsc::channel::<(u32, String)>();
    let mut children: Vec<(u32, Child)> = Vec::new();
    for (&id, p) in &ports {
        let log_path = args.dir.join(format!("node-{id}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut child = Command::new(&exe)
            .arg("serve")
            .args(["--node-id", &id.to_string()])
            .args(["--controller-quorum", &quorum])
            .arg("--data-dir")
            .arg(args.dir.join(format!("node-{id}")))
            .args(["--kafka-addr", &format!("127.0.0.1:{}", p.kafka)])
            .args(["--controller-addr", &format!("127.0.0.1:{}", p.controller)])
            .args(["--http-addr", &format!("127.0.0.1:{}", p.http)])
            .args(&args.serve_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            // Ctrl-C reaches the whole process group; this command stops
            // the nodes itself, each with a controlled shutdown.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start node {id}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let ready_tx = ready_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("rill ready") {
                    let _ = ready_tx.send((id, line));
                }
            }
        });
        children.push((id, child));
    }
    drop(ready_tx);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let stop = runtime.block_on(async { stop_signal() })?;

    let result = wait_ready(&ready_rx, &mut children, args, &stop);
    if result.is_ok() {
        let bootstrap = ports
            .values()
            .map(|p| format!("127.0.0.1:{}", p.kafka))
            .collect::<Vec<_>>()
            .join(",");
        println!("rill cluster ready: {} nodes", args.nodes);
        println!("bootstrap: {bootstrap}");
        println!(
            "logs: {}/node-N.log; Ctrl-C stops every node",
            args.dir.display()
        );
        wait_for_stop_or_exit(&mut children, &stop);
    }
    stop_all(&mut children);
    result
}

/// A flag set when SIGINT or SIGTERM arrives.
fn stop_signal() -> anyhow::Result<mpsc::Receiver<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = mpsc::channel();
    for kind in [SignalKind::interrupt(), SignalKind::terminate()] {
        let mut stream = signal(kind).context("cannot watch signals")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(stream.recv());
                let _ = tx.send(());
            }
        });
    }
    Ok(rx)
}

fn wait_ready(
    ready: &mpsc::Receiver<(u32, String)>,
    children: &mut [(u32, Child)],
    args: &LocalArgs,
    stop: &mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut waiting: Vec<u32> = children.iter().map(|(id, _)| *id).collect();
    while !waiting.is_empty() {
        if stop.try_recv().is_ok() {
            anyhow::bail!("stopped before the cluster was ready");
        }
        if let Ok((id, line)) = ready.recv_timeout(Duration::from_millis(100)) {
            println!("node {id}: {line}");
            waiting.retain(|w| *w != id);
        }
        for (id, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                anyhow::bail!(
                    "node {id} exited with {status} before it was ready; see {}",
                    args.dir.join(format!("node-{id}.log")).display()
                );
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "nodes {waiting:?} were not ready within {READY_TIMEOUT:?}; see their logs in {}",
                args.dir.display()
            );
        }
    }
    Ok(())
}

/// Runs until a stop signal. A node that exits on its own is reported; the
/// others go on.
fn wait_for_stop_or_exit(children: &mut [(u32, Child)], stop: &mpsc::Receiver<()>) {
    let mut reported: Vec<u32> = Vec::new();
    while stop.recv_timeout(Duration::from_millis(200)).is_err() {
        for (id, child) in children.iter_mut() {
            if reported.contains(id) {
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("node {id} exited with {status}");
                reported.push(*id);
            }
        }
    }
    println!("stopping every node");
}

fn stop_all(children: &mut [(u32, Child)]) {
    use rustix::process::{kill_process, Pid, Signal};
    for (_, child) in children.iter_mut() {
        if matches!(child.try_wait(), Ok(None)) {
            let _ = kill_process(Pid::from_child(child), Signal::TERM);
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for (id, child) in children.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    eprintln!("node {id} did not stop in time; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// The ports of nodes `1..=nodes`: those `DIR/ports` recorded, or new
/// free ones (written there).
fn ports_for(dir: &Path, nodes: u32) -> anyhow::Result<BTreeMap<u32, NodePorts>> {
    let path = dir.join("ports");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let mut ports = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let fields: Vec<u16> = line
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .with_context(|| format!("bad line in {}: {line:?}", path.display()))?;
            let [id, kafka, controller, http] = fields[..] else {
                anyhow::bail!("bad line in {}: {line:?}", path.display());
            };
            ports.insert(
                u32::from(id),
                NodePorts {
                    kafka,
                    controller,
                    http,
                },
            );
        }
        anyhow::ensure!(
            ports.len() == nodes as usize && ports.keys().copied().eq(1..=nodes),
            "{} holds a cluster of {} nodes; use another --dir for {nodes}",
            dir.display(),
            ports.len()
        );
        return Ok(ports);
    }
    // Hold every listener until all are picked, so no port comes twice.
    let listeners: Vec<TcpListener> = (0..nodes * 3)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("cannot find free ports")?;
    let port = |i: u32| -> anyhow::Result<u16> { Ok(listeners[i as usize].local_addr()?.port()) };
    let mut ports = BTreeMap::new();
    let mut text = String::from("# node kafka controller http\n");
    for id in 1..=nodes {
        let base = (id - 1) * 3;
        let p = NodePorts {
            kafka: port(base)?,
            controller: port(base + 1)?,
            http: port(base + 2)?,
        };
        writeln!(text, "{id} {} {} {}", p.kafka, p.controller, p.http).expect("a String");
        ports.insert(id, p);
    }
    drop(listeners);
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(ports)
}
