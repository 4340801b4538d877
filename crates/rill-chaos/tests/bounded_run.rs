//! The bounded chaos run of the test command: 3 nodes, the queue
//! workload, kill and pause faults for 75 s (at least 8 faults), against
//! the `rill` binary of this workspace. It must end valid.
//!
//! `rill-chaos` cannot depend on the binary of another package, so the
//! test finds it: `RILL_BIN` if set, else `target/debug/rill` (under
//! `CARGO_TARGET_DIR` if set). `test.sh` builds it first; a missing
//! binary fails the test rather than skipping it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The run's own bound is its duration plus cluster start (60 s at most),
/// the flush (40 s), the drain and the final reads (90 s a partition at
/// most); this is the test's bound on top of that.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// 14 faults, 7 kills and 7 pauses (the schedule depends on the seed only).
const SEED: u64 = 12;

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

#[test]
fn a_bounded_run_under_kill_and_pause_is_valid() {
    let rill = rill_binary();
    assert!(
        rill.exists(),
        "no rill binary at {} (build it with `cargo build -p rill-cli`, or set RILL_BIN)",
        rill.display()
    );
    let out = tempfile::tempdir().expect("a temporary dir");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rill-chaos"))
        .arg("run")
        .arg("--rill")
        .arg(&rill)
        .args(["--nodes", "3", "--duration", "75", "--faults", "kill,pause"])
        .args(["--workload", "queue", "--seed", &SEED.to_string()])
        .arg("--out")
        .arg(out.path())
        .stdin(Stdio::null())
        .spawn()
        .expect("run rill-chaos");
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > RUN_TIMEOUT {
            // SIGTERM lets rill-chaos stop its nodes; SIGKILL if it cannot.
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            std::thread::sleep(Duration::from_secs(20));
            let _ = child.kill();
            let _ = child.wait();
            panic!("rill-chaos did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let report_path = out.path().join("report.json");
    let report = std::fs::read_to_string(&report_path).unwrap_or_default();
    if !status.success() {
        // Keep what the run left for whoever reads the failure.
        let kept = out.keep();
        panic!(
            "rill-chaos exited with {status} (seed {SEED}); history, logs and report kept in {}:\n{report}",
            kept.display()
        );
    }
    let report: serde_json::Value = serde_json::from_str(&report).expect("report.json");
    assert_eq!(report["valid"], true, "{report:#}");
    assert_eq!(report["seed"], SEED);
    assert!(report["faults"].as_u64().unwrap() >= 8, "{report:#}");
    assert!(
        report["faults_by_kind"]["kill"].as_u64().unwrap() >= 3,
        "{report:#}"
    );
    assert!(
        report["faults_by_kind"]["pause"].as_u64().unwrap() >= 3,
        "{report:#}"
    );
    assert!(report["acked"].as_u64().unwrap() >= 1_000, "{report:#}");
    assert_eq!(report["lost"], 0);
    assert_eq!(report["duplicated"], 0);
    assert!(out.path().join("history.jsonl").exists());
    assert!(out.path().join("report.svg").exists());
    eprintln!("bounded chaos run: {:?}", started.elapsed());
}
