//! `rill-chaos`: runs a real rill cluster under faults while real clients
//! (librdkafka) write and read, records everything they saw, and checks
//! that nothing acknowledged was lost, duplicated or reordered.
//!
//! Layout:
//! - `history`: the recorded operations (`history.jsonl`) and their format.
//! - `checker`: what a history must satisfy; knows nothing of the cluster.
//! - `cluster`: the `rill serve` processes, killed, paused and restarted.
//! - `netns`: the network namespace the cluster runs in as root, and the
//!   nftables rules that partition it.
//! - `nemesis`: the seeded schedule of faults.
//! - `workload`: the queue workload's producers, consumers and final reads.
//! - `txn_workload`: the txn workload's transactional producers and
//!   `read_committed` readers.
//! - `txn_checker`: what a txn workload's history must satisfy.
//! - `report`: `report.json` and `report.svg`.
//!
//! **Invariant:** no rill crate is a dependency. rill is tested as a user
//! runs it: a binary and Kafka addresses.

mod checker;
mod cluster;
mod history;
mod nemesis;
mod netns;
mod report;
mod txn_checker;
mod txn_workload;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::cluster::{Cluster, Placement};
use crate::history::{Op, Recorder, Type, F};
use crate::nemesis::{Fault, Kind};
use crate::netns::Netns;

/// Every node's flags on top of its identity and listeners: a broker is
/// fenced after 3 s of silence (9 s by default), so that the longer
/// pauses and kills (1 to 5 s) fence it and the shorter ones do not.
const NODE_ARGS: &[&str] = &[
    "--broker-heartbeat-interval-ms",
    "500",
    "--broker-session-timeout-ms",
    "3000",
];
/// With `--compact`: the log cleaner looks for work every 200 ms.
const COMPACT_NODE_ARGS: &[&str] = &["--log-cleaner-backoff-ms", "200"];
/// With `--compact`: segments roll every 8 KiB or second, any dirty
/// segment is cleaned at once, and markers with nothing left go after 1 s.
const COMPACT_TOPIC_CONFIGS: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("delete.retention.ms", "1000"),
    ("segment.bytes", "8192"),
    ("segment.ms", "1000"),
    ("min.cleanable.dirty.ratio", "0.01"),
    ("max.compaction.lag.ms", "1000"),
];
/// How long the consumers go on reading once the producers are done.
const DRAIN: Duration = Duration::from_secs(5);
/// How long an interrupted run may take to stop its nodes and clients.
const INTERRUPT_GRACE: Duration = Duration::from_secs(30);
/// How often a wait looks at the interrupt flag.
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Parser)]
#[command(
    name = "rill-chaos",
    about = "Fault injection and a history checker for rill"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a cluster under faults with a workload, then checks the history.
    /// Exit 0: valid; 1: the checker found an anomaly; 2: the run could not be done.
    Run(RunArgs),
    /// Checks a recorded history again. Exit 0: valid; 1: anomalies; 2: unreadable.
    Check {
        /// A `history.jsonl` written by `run`.
        history: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The `rill` binary.
    #[arg(long)]
    rill: PathBuf,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seconds of workload under faults (the final reads come after).
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Fault kinds: kill, pause, partition (partition needs root, `ip`
    /// and `nft`; without them it is left out and the report says why).
    #[arg(long, value_delimiter = ',', default_value = "kill,pause")]
    faults: Vec<String>,
    /// queue (producers, consumers, a group: nothing acknowledged lost) or
    /// txn (transactional producers, read_committed readers: no aborted
    /// read, no torn transaction, nothing committed lost).
    #[arg(long, default_value = "queue")]
    workload: String,
    /// The nemesis's seed; random (and printed) when not given.
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// The topic's replication factor (at most --nodes).
    #[arg(long, default_value_t = 3)]
    replication_factor: i32,
    /// The topic's min.insync.replicas.
    #[arg(long, default_value_t = 2)]
    min_insync_replicas: i32,
    /// txn workload only: the topic is compacted (small segments, each
    /// record its own key, a log cleaner waking every 200 ms), so that the
    /// cleaner removes aborted records, under the LSO, while the faults
    /// go on.
    #[arg(long)]
    compact: bool,
    /// Where history.jsonl, report.json, report.svg and the node logs go.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run(args) => run(args),
        Command::Check { history } => check(&history),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("rill-chaos: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn check(path: &Path) -> anyhow::Result<bool> {
    let ops = history::read(path)?;
    let (text, valid) = if txn_checker::is_txn_history(&ops) {
        let analysis = txn_checker::check(&ops);
        (serde_json::to_string_pretty(&analysis), analysis.valid)
    } else {
        let analysis = checker::check(&ops);
        (serde_json::to_string_pretty(&analysis), analysis.valid)
    };
    println!("{}", text.context("encode")?);
    Ok(valid)
}

fn run(args: RunArgs) -> anyhow::Result<bool> {
    let txn = match args.workload.as_str() {
        "queue" => false,
        "txn" => true,
        other => bail!("unknown workload {other:?} (queue, txn)"),
    };
    anyhow::ensure!(
        !args.compact || txn,
        "--compact needs --workload txn (the queue workload's records have no keys)"
    );
    anyhow::ensure!(
        (1..=netns::NODES_MAX).contains(&args.nodes),
        "--nodes must be 1 to {}",
        netns::NODES_MAX
    );
    anyhow::ensure!(args.partitions >= 1, "--partitions must be at least 1");
    anyhow::ensure!(
        (1..=args.nodes as i32).contains(&args.replication_factor),
        "--replication-factor {} needs 1 to --nodes ({}) nodes",
        args.replication_factor,
        args.nodes
    );
    anyhow::ensure!(
        args.min_insync_replicas >= 1,
        "--min-insync-replicas must be at least 1"
    );
    // Without root, `ip` or `nft` the cluster runs on the host's loopback
    // and cannot be partitioned.
    let namespace_unavailable = netns::unavailable();
    let mut kinds = Vec::new();
    let mut faults_unavailable = Vec::new();
    for fault in &args.faults {
        match fault.as_str() {
            "kill" => kinds.push(Kind::Kill),
            "pause" => kinds.push(Kind::Pause),
            "partition" => match &namespace_unavailable {
                None => {
                    anyhow::ensure!(args.nodes >= 2, "partition needs at least 2 nodes");
                    kinds.push(Kind::Partition);
                }
                Some(why) => faults_unavailable.push(format!("partition: {why}")),
            },
            other => bail!("unknown fault {other:?} (kill, pause, partition)"),
        }
    }
    // Sorted, so that the same kinds in any order give the same schedule.
    kinds.sort();
    kinds.dedup();
    faults_unavailable.dedup();
    for why in &faults_unavailable {
        eprintln!("rill-chaos: fault {why}: not run");
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    println!("rill-chaos: seed {seed}");
    let duration = Duration::from_secs(args.duration);
    let node_ids: Vec<i32> = (1..=args.nodes as i32).collect();
    let schedule = nemesis::schedule(seed, duration, &kinds, &node_ids);
    println!(
        "rill-chaos: {} faults planned over {}s",
        schedule.len(),
        args.duration
    );

    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let interrupted = Arc::new(AtomicBool::new(false));
    watch_signals(Arc::clone(&interrupted))?;

    // Declared before the cluster, so dropped after it: the nodes are
    // gone before their namespace is removed.
    let netns = match &namespace_unavailable {
        None => {
            let netns = Netns::create(&node_ids)?;
            // The main thread enters the namespace, so that everything
            // it starts from here on is inside it too: the nodes, the
            // client threads and librdkafka's own threads. Only the
            // signal thread, started before, stays outside.
            netns.enter_current_thread()?;
            println!("rill-chaos: network namespace {}", netns.name());
            Some(netns)
        }
        Some(why) => {
            println!("rill-chaos: no network namespace ({why}): nodes on the host's 127.0.0.1");
            None
        }
    };
    let (placement, network) = match &netns {
        Some(netns) => (Placement::Namespace, format!("namespace {}", netns.name())),
        None => (Placement::Loopback, "loopback".to_string()),
    };

    let history_path = args.out.join("history.jsonl");
    let recorder = Arc::new(Recorder::create(&history_path)?);
    let node_args: Vec<&str> = if args.compact {
        [NODE_ARGS, COMPACT_NODE_ARGS].concat()
    } else {
        NODE_ARGS.to_vec()
    };
    let mut cluster = Cluster::start(&args.rill, args.nodes, placement, &args.out, &node_args)?;
    println!(
        "rill-chaos: {} nodes ready (data in {}), bootstrap {}",
        args.nodes,
        cluster.data_root().display(),
        cluster.bootstrap()
    );
    let bootstrap = cluster.bootstrap();
    workload::create_topic(
        &bootstrap,
        args.partitions,
        args.replication_factor,
        args.min_insync_replicas,
        if args.compact {
            COMPACT_TOPIC_CONFIGS
        } else {
            &[]
        },
    )?;

    let stop_producers = Arc::new(AtomicBool::new(false));
    let stop_consumers = Arc::new(AtomicBool::new(false));
    let next_value = Arc::new(AtomicU64::new(0));
    let mut producers = Vec::new();
    let mut consumers = Vec::new();
    if txn {
        for index in 0..txn_workload::PRODUCERS {
            let (bootstrap, recorder, next_value, stop) = (
                bootstrap.clone(),
                Arc::clone(&recorder),
                Arc::clone(&next_value),
                Arc::clone(&stop_producers),
            );
            let partitions = args.partitions;
            producers.push(thread::spawn(move || {
                txn_workload::produce(
                    &bootstrap, index, partitions, seed, recorder, next_value, stop,
                )
            }));
        }
        let (bootstrap, recorder, stop) = (
            bootstrap.clone(),
            Arc::clone(&recorder),
            Arc::clone(&stop_consumers),
        );
        let partitions = args.partitions;
        consumers.push(thread::spawn(move || {
            txn_workload::read(&bootstrap, "reader", partitions, recorder, stop)
        }));
    } else {
        for (process, idempotent) in [("idempotent", true), ("plain", false)] {
            let (bootstrap, recorder, next_value, stop) = (
                bootstrap.clone(),
                Arc::clone(&recorder),
                Arc::clone(&next_value),
                Arc::clone(&stop_producers),
            );
            producers.push(thread::spawn(move || {
                workload::produce(&bootstrap, process, idempotent, recorder, next_value, stop)
            }));
        }
        for (process, mode) in [
            ("assign", workload::Mode::Assign),
            ("group", workload::Mode::Group),
        ] {
            let (bootstrap, recorder, stop) = (
                bootstrap.clone(),
                Arc::clone(&recorder),
                Arc::clone(&stop_consumers),
            );
            let partitions = args.partitions;
            consumers.push(thread::spawn(move || {
                workload::consume(&bootstrap, process, mode, partitions, recorder, stop)
            }));
        }
    }

    let start = Instant::now();
    let mut faults = 0;
    let mut crashes = Vec::new();
    for fault in &schedule {
        if !sleep_until(start + fault.at, &interrupted) {
            break;
        }
        restart_crashed(&mut cluster, &recorder, &mut crashes)?;
        inject(&mut cluster, netns.as_ref(), fault, &recorder, &interrupted)?;
        faults += 1;
    }
    sleep_until(start + duration, &interrupted);
    recorder.record(Op::new("nemesis", Type::Invoke, F::Heal, 0));
    if let Some(netns) = &netns {
        netns.heal()?;
    }
    restart_crashed(&mut cluster, &recorder, &mut crashes)?;
    for (node, action) in cluster.heal()? {
        println!("rill-chaos: healed node {node} ({action})");
    }
    // The final heal: the workload must make progress after it
    // (`checker::PROGRESS_AFTER_HEAL_MAX`), so it goes on that long.
    recorder.record(Op::new("nemesis", Type::Ok, F::Heal, 0));
    if interrupted.load(Ordering::Relaxed) {
        bail!("interrupted; every node stopped");
    }
    println!(
        "rill-chaos: every fault healed; the workload goes on for {:?}",
        checker::PROGRESS_AFTER_HEAL_MAX
    );
    sleep_until(
        Instant::now() + checker::PROGRESS_AFTER_HEAL_MAX,
        &interrupted,
    );
    if interrupted.load(Ordering::Relaxed) {
        bail!("interrupted; every node stopped");
    }

    println!("rill-chaos: faults over; waiting for outstanding sends");
    stop_producers.store(true, Ordering::Relaxed);
    for producer in producers {
        join(producer)?;
    }
    sleep_until(Instant::now() + DRAIN, &interrupted);
    stop_consumers.store(true, Ordering::Relaxed);
    for consumer in consumers {
        join(consumer)?;
    }
    restart_crashed(&mut cluster, &recorder, &mut crashes)?;
    println!("rill-chaos: reading every partition from the start");
    if txn {
        txn_workload::final_read(&bootstrap, args.partitions, &recorder)?;
    } else {
        workload::final_read(&bootstrap, args.partitions, &recorder)?;
    }
    // A node that stopped during the final read stopped serving it.
    restart_crashed(&mut cluster, &recorder, &mut crashes)?;
    recorder.finish()?;
    drop(cluster);
    drop(netns);

    let ops = history::read(&history_path)?;
    let run = RunFacts {
        seed,
        faults,
        fault_kinds: kinds.iter().map(ToString::to_string).collect(),
        faults_by_kind: kinds
            .iter()
            .map(|kind| {
                let done = schedule[..faults]
                    .iter()
                    .filter(|f| f.kind == *kind)
                    .count();
                (kind.to_string(), done)
            })
            .collect(),
        faults_unavailable,
        crashes: crashes.clone(),
        network,
        args: &args,
    };
    let valid = if txn {
        let analysis = txn_checker::check(&ops);
        run.write(&analysis, "txn")?;
        println!(
            "rill-chaos: seed {seed}, {faults} faults, transactions: {} committed, {} aborted, {} indeterminate; {} lost, {} aborted reads, {} torn, {} duplicates; {}; report in {}",
            analysis.txns_committed,
            analysis.txns_aborted,
            analysis.txns_indeterminate,
            analysis.lost,
            analysis.aborted_reads,
            analysis.torn,
            analysis.duplicates,
            verdict(analysis.valid, &analysis.anomalies),
            args.out.join("report.json").display()
        );
        analysis.valid
    } else {
        let analysis = checker::check(&ops);
        run.write(&analysis, "queue")?;
        println!(
            "rill-chaos: seed {seed}, {faults} faults, {} acknowledged, {} indeterminate, {} lost, {} duplicated; {}; report in {}",
            analysis.acked,
            analysis.indeterminate,
            analysis.lost,
            analysis.duplicated,
            verdict(analysis.valid, &analysis.anomalies),
            args.out.join("report.json").display()
        );
        analysis.valid
    };
    report::write_svg(&ops, &args.out.join("report.svg"))?;
    if !crashes.is_empty() {
        println!(
            "rill-chaos: {} node crash(es), each restarted: {}",
            crashes.len(),
            crashes.join("; ")
        );
    }
    Ok(valid)
}

/// What `report.json` says about the run besides the checker's analysis.
struct RunFacts<'a> {
    seed: u64,
    faults: usize,
    fault_kinds: Vec<String>,
    faults_by_kind: std::collections::BTreeMap<String, usize>,
    faults_unavailable: Vec<String>,
    crashes: Vec<String>,
    network: String,
    args: &'a RunArgs,
}

impl RunFacts<'_> {
    fn write<A: serde::Serialize>(&self, analysis: &A, workload: &str) -> anyhow::Result<()> {
        let report = report::Report {
            analysis,
            workload: workload.to_string(),
            seed: self.seed,
            faults: self.faults,
            fault_kinds: self.fault_kinds.clone(),
            faults_by_kind: self.faults_by_kind.clone(),
            faults_unavailable: self.faults_unavailable.clone(),
            crashes: self.crashes.clone(),
            network: self.network.clone(),
            nodes: self.args.nodes,
            partitions: self.args.partitions,
            replication_factor: self.args.replication_factor,
            min_insync_replicas: self.args.min_insync_replicas,
            duration_s: self.args.duration,
        };
        report::write_json(&report, &self.args.out.join("report.json"))
    }
}

/// `valid`, or `INVALID (name: count, …)`.
fn verdict(
    valid: bool,
    anomalies: &std::collections::BTreeMap<String, checker::Finding>,
) -> String {
    if valid {
        return "valid".to_string();
    }
    let found: Vec<String> = anomalies
        .iter()
        .map(|(name, finding)| format!("{name}: {}", finding.count))
        .collect();
    format!("INVALID ({})", found.join(", "))
}

/// Starts again every node that exited by itself, as a supervisor
/// (systemd's `Restart=on-failure`) would, and records each crash in the
/// history and in `crashes`. A crash is not a fault the nemesis chose: it
/// is a bug of its own, which the report names even when the history is
/// valid.
fn restart_crashed(
    cluster: &mut Cluster,
    recorder: &Recorder,
    crashes: &mut Vec<String>,
) -> anyhow::Result<()> {
    for (node, status) in cluster.reap_crashed()? {
        println!("rill-chaos: node {node} exited by itself ({status}); restarting it");
        crashes.push(format!("node {node}: {status}"));
        let mut op = Op::new("supervisor", Type::Invoke, F::Crash, 0);
        op.node = Some(node);
        op.error = Some(status);
        recorder.record(op);
        let restarted = cluster.restart(node);
        let mut op = Op::new(
            "supervisor",
            if restarted.is_ok() {
                Type::Ok
            } else {
                Type::Fail
            },
            F::Crash,
            0,
        );
        op.node = Some(node);
        op.error = restarted.as_ref().err().map(|e| format!("{e:#}"));
        recorder.record(op);
        restarted?;
    }
    Ok(())
}

/// Injects one fault, holds it, heals it; each step is in the history.
fn inject(
    cluster: &mut Cluster,
    netns: Option<&Netns>,
    fault: &Fault,
    recorder: &Recorder,
    interrupted: &AtomicBool,
) -> anyhow::Result<()> {
    let (begin, heal) = match fault.kind {
        Kind::Kill => (F::Kill, F::Restart),
        Kind::Pause => (F::Pause, F::Resume),
        Kind::Partition => (F::Partition, F::Heal),
    };
    let record = |f: F, kind: Type, error: Option<String>| {
        let mut op = Op::new("nemesis", kind, f, 0);
        op.node = Some(fault.node);
        if let Some(cut) = fault.cut {
            op.cut = Some(cut.to_string());
            op.drops = Some(fault.drops.clone());
        }
        op.error = error;
        recorder.record(op);
    };
    match fault.cut {
        Some(cut) => println!(
            "rill-chaos: partition ({cut} around node {}, dropping {:?}) for {:?}",
            fault.node, fault.drops, fault.hold
        ),
        None => println!(
            "rill-chaos: {} node {} for {:?}",
            fault.kind, fault.node, fault.hold
        ),
    }
    // A bug if not: partitions are scheduled only with a namespace.
    let netns = || netns.expect("a partition without a network namespace");
    record(begin, Type::Invoke, None);
    match fault.kind {
        Kind::Kill => cluster.kill(fault.node)?,
        Kind::Pause => cluster.pause(fault.node)?,
        Kind::Partition => netns().partition(&fault.drops)?,
    }
    record(begin, Type::Ok, None);
    sleep_until(Instant::now() + fault.hold, interrupted);
    record(heal, Type::Invoke, None);
    let healed = match fault.kind {
        Kind::Kill => cluster.restart(fault.node),
        Kind::Pause => cluster.resume(fault.node),
        Kind::Partition => netns().heal(),
    };
    match healed {
        Ok(()) => {
            record(heal, Type::Ok, None);
            Ok(())
        }
        Err(error) => {
            record(heal, Type::Fail, Some(format!("{error:#}")));
            Err(error)
        }
    }
}

/// Sleeps until `deadline`; false if interrupted first.
fn sleep_until(deadline: Instant, interrupted: &AtomicBool) -> bool {
    loop {
        if interrupted.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        thread::sleep(TICK.min(deadline - now));
    }
}

fn join(handle: thread::JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    match handle.join() {
        Ok(result) => result,
        Err(_) => bail!("a client thread panicked"),
    }
}

/// SIGINT and SIGTERM set `interrupted` instead of ending the process, so
/// that the run stops its nodes and removes their data dirs.
fn watch_signals(interrupted: Arc<AtomicBool>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("start the signal runtime")?;
    let (mut int, mut term) = {
        let _entered = runtime.enter();
        (
            signal(SignalKind::interrupt()).context("watch SIGINT")?,
            signal(SignalKind::terminate()).context("watch SIGTERM")?,
        )
    };
    thread::spawn(move || {
        runtime.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("rill-chaos: interrupted; stopping");
        interrupted.store(true, Ordering::Relaxed);
        // A client stuck in librdkafka could keep the run from seeing the
        // flag: exit anyway after a while. The nodes die with the process
        // (see `cluster`); only their data dirs stay.
        thread::sleep(INTERRUPT_GRACE);
        eprintln!("rill-chaos: not stopped within {INTERRUPT_GRACE:?}; exiting");
        // `exit` runs no `Drop`: the namespace is removed here.
        netns::remove_current();
        std::process::exit(2);
    });
    Ok(())
}
