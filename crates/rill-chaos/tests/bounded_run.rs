//! The bounded chaos runs of the test command, against the `rill` binary
//! of this workspace; each must end valid, with no node crash:
//! - 3 nodes, the queue workload, kill and pause faults for 75 s (at
//!   least 8 faults);
//! - as root with `ip` and `nft` only (skipped with the reason otherwise):
//!   3 nodes in a network namespace, kill, pause and partition faults
//!   (isolate, split, one-way) for 60 s, at least 8, and the namespace
//!   gone afterwards;
//! - 3 nodes, the txn workload (transactional producers, `read_committed`
//!   readers) on a compacted topic whose cleaner removes aborted records
//!   meanwhile, kill and pause faults for 45 s: no lost committed write,
//!   no aborted read, no torn transaction, no duplicate, and the cleaner
//!   did clean.
//!
//! `rill-chaos` cannot depend on the binary of another package, so the
//! tests find it: `RILL_BIN` if set, else `target/debug/rill` (under
//! `CARGO_TARGET_DIR` if set). `test.sh` builds it first; a missing
//! binary fails the test rather than skipping it.
//!
//! The topic has rill-chaos's defaults: 3 replicas, `min.insync.replicas`
//! 2, so a leader's acknowledged sends are on a follower too when it
//! fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The run's own bound is its duration, the 15 s of workload after the
/// final heal, cluster start (60 s at most), the flush (40 s), the drain
/// and the final reads (90 s a partition at most); this is the test's
/// bound on top of that.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// 14 faults, 7 kills and 7 pauses (the schedule depends on the seed only).
const SEED: u64 = 12;
/// Every fault type (kill, pause, partition), 60 s: the bounded
/// run with partitions (at least 8 faults).
const PARTITION_SEED: u64 = 2;
/// The txn run's seed: 45 s of kills and pauses.
const TXN_SEED: u64 = 3;
/// How long a rill-chaos stopped by SIGTERM may take to clean up.
const TERM_GRACE: Duration = Duration::from_secs(20);

/// The two runs would share the machine's cores and slow each other's
/// nodes into faults of their own: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn rill_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RILL_BIN") {
        return PathBuf::from(path);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                manifest.join("../..").join(dir)
            }
        })
        .unwrap_or_else(|| manifest.join("../../target"));
    target.join("debug").join("rill")
}

/// A running `rill-chaos run`. Dropping it (a failed assertion included)
/// stops it if it still runs (SIGTERM, then SIGKILL) and removes its
/// network namespace if it left one (it cannot after a SIGKILL).
struct Run {
    child: Child,
    out: tempfile::TempDir,
}

impl Run {
    fn start(args: &[&str]) -> Run {
        let rill = rill_binary();
        assert!(
            rill.exists(),
            "no rill binary at {} (build it with `cargo build -p rill-cli`, or set RILL_BIN)",
            rill.display()
        );
        let out = tempfile::tempdir().expect("a temporary dir");
        let child = Command::new(env!("CARGO_BIN_EXE_rill-chaos"))
            .arg("run")
            .arg("--rill")
            .arg(&rill)
            .args(args)
            .arg("--out")
            .arg(out.path())
            .stdin(Stdio::null())
            .spawn()
            .expect("run rill-chaos");
        Run { child, out }
    }

    fn namespace(&self) -> String {
        format!("rill-chaos-{}", self.child.id())
    }

    /// Waits for the end within [`RUN_TIMEOUT`] and returns `report.json`;
    /// panics if the run failed, keeping its directory for whoever reads
    /// the failure.
    fn finish(&mut self, seed: u64) -> serde_json::Value {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if started.elapsed() > RUN_TIMEOUT {
                panic!("rill-chaos did not finish within {RUN_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let report =
            std::fs::read_to_string(self.out.path().join("report.json")).unwrap_or_default();
        if !status.success() {
            self.keep(status, seed, &report);
        }
        assert!(self.out.path().join("history.jsonl").exists());
        assert!(self.out.path().join("report.svg").exists());
        serde_json::from_str(&report).expect("report.json")
    }

    fn keep(&mut self, status: ExitStatus, seed: u64, report: &str) -> ! {
        let kept = std::mem::replace(&mut self.out, tempfile::tempdir().expect("a temporary dir"));
        let kept = kept.keep();
        panic!(
            "rill-chaos exited with {status} (seed {seed}); history, logs and report kept in {}:\n{report}",
            kept.display()
        );
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM lets rill-chaos stop its nodes and remove its
            // namespace; SIGKILL if it cannot.
            let pid = rustix::process::Pid::from_child(&self.child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + TERM_GRACE;
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let namespace = self.namespace();
        if namespace_exists(&namespace) {
            let _ = Command::new("ip")
                .args(["netns", "del", &namespace])
                .status();
        }
    }
}

fn namespace_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}

/// Why partitions cannot run here, or `None`.
fn partitions_unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root".to_string());
    }
    for command in ["ip", "nft"] {
        let found = Command::new(command)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!("no `{command}` command"));
        }
    }
    None
}

fn assert_valid(report: &serde_json::Value, seed: u64) {
    assert_eq!(report["valid"], true, "{report:#}");
    assert_eq!(report["seed"], seed);
    assert!(report["acked"].as_u64().unwrap() >= 1_000, "{report:#}");
    assert_eq!(report["lost"], 0);
    assert_eq!(report["duplicated"], 0);
    assert_eq!(report["replication_factor"], 3);
    // A node that stopped by itself was restarted and the history may
    // still be valid, but it is a bug all the same.
    assert_eq!(report["crashes"], serde_json::json!([]), "{report:#}");
}

#[test]
fn a_bounded_run_under_kill_and_pause_is_valid() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let mut run = Run::start(&[
        "--nodes",
        "3",
        "--duration",
        "75",
        "--faults",
        "kill,pause",
        "--workload",
        "queue",
        "--seed",
        &SEED.to_string(),
    ]);
    let report = run.finish(SEED);
    assert_valid(&report, SEED);
    assert!(report["faults"].as_u64().unwrap() >= 8, "{report:#}");
    assert!(
        report["faults_by_kind"]["kill"].as_u64().unwrap() >= 3,
        "{report:#}"
    );
    assert!(
        report["faults_by_kind"]["pause"].as_u64().unwrap() >= 3,
        "{report:#}"
    );
    eprintln!("bounded chaos run: {:?}", started.elapsed());
}

#[test]
fn a_bounded_run_under_every_fault_type_is_valid() {
    if let Some(why) = partitions_unavailable() {
        eprintln!("skipped: partitions need root, `ip` and `nft`: {why}");
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let mut run = Run::start(&[
        "--nodes",
        "3",
        "--duration",
        "60",
        "--faults",
        "kill,pause,partition",
        "--seed",
        &PARTITION_SEED.to_string(),
    ]);
    let namespace = run.namespace();
    let report = run.finish(PARTITION_SEED);
    assert_valid(&report, PARTITION_SEED);
    assert_eq!(report["network"], format!("namespace {namespace}"));
    assert!(report["faults"].as_u64().unwrap() >= 8, "{report:#}");
    for kind in ["kill", "pause", "partition"] {
        assert!(
            report["faults_by_kind"][kind].as_u64().unwrap() >= 1,
            "{kind}: {report:#}"
        );
    }
    assert_eq!(report["faults_unavailable"], serde_json::json!([]));
    assert!(
        !namespace_exists(&namespace),
        "rill-chaos left its namespace {namespace}"
    );
    eprintln!("bounded partition run: {:?}", started.elapsed());
}

#[test]
fn a_bounded_txn_run_under_kill_and_pause_is_valid() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let mut run = Run::start(&[
        "--nodes",
        "3",
        "--duration",
        "45",
        "--faults",
        "kill,pause",
        "--workload",
        "txn",
        "--compact",
        "--seed",
        &TXN_SEED.to_string(),
    ]);
    let report = run.finish(TXN_SEED);
    // The topic is compacted: the cleaner ran under the faults, and the
    // checks below hold over what it left.
    let cleaned_passes: usize = (1..=3)
        .map(|node| {
            let log = std::fs::read_to_string(run.out.path().join(format!("node-{node}.log")))
                .unwrap_or_default();
            log.lines()
                .filter(|line| line.contains("compacted") && line.contains("log=chaos-"))
                .count()
        })
        .sum();
    assert!(
        cleaned_passes > 0,
        "the log cleaner cleaned nothing: {report:#}"
    );
    eprintln!("bounded txn run: {cleaned_passes} cleaner passes rewrote segments");
    assert_eq!(report["valid"], true, "{report:#}");
    assert_eq!(report["workload"], "txn");
    assert_eq!(report["seed"], TXN_SEED);
    for count in ["lost", "aborted_reads", "torn", "duplicates"] {
        assert_eq!(report[count], 0, "{count}: {report:#}");
    }
    assert!(
        report["txns_committed"].as_u64().unwrap() >= 100,
        "{report:#}"
    );
    assert!(report["txns_aborted"].as_u64().unwrap() >= 10, "{report:#}");
    assert!(report["faults"].as_u64().unwrap() >= 5, "{report:#}");
    assert!(
        report["faults_by_kind"]["kill"].as_u64().unwrap() >= 2,
        "{report:#}"
    );
    assert_eq!(report["crashes"], serde_json::json!([]), "{report:#}");
    eprintln!("bounded txn run: {:?}", started.elapsed());
}
