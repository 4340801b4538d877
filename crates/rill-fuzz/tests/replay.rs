//! Replays every input kept for the fuzz targets: the corpus
//! (`fuzz/corpus/<target>/`, inputs that reached new code) and the
//! regressions (`fuzz/regressions/<target>/`, inputs that once found a
//! bug, named after it). On the stable toolchain, as part of the normal
//! test suite; the fuzzing itself is `cargo +nightly fuzz run <target>`
//! in `fuzz/`.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted (none if it is missing).
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("list a fuzz input directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every kept input of `target`, and fails naming each input whose
/// run panicked.
fn replay(target: &str) {
    let (_, run) = rill_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    let mut count = 0;
    let mut failed = Vec::new();
    for kind in ["corpus", "regressions"] {
        for path in inputs(kind, target) {
            let data = std::fs::read(&path).expect("read a fuzz input");
            count += 1;
            if panic::catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {count} inputs failed (their panics are above):\n{}",
        failed.len(),
        failed.join("\n")
    );
    eprintln!("{target}: {count} inputs replayed");
}

#[test]
fn request() {
    replay("request");
}

#[test]
fn record_batch() {
    replay("record_batch");
}

#[test]
fn log_recovery() {
    replay("log_recovery");
}

#[test]
fn group_coordinator() {
    replay("group_coordinator");
}

/// Every target has a corpus checked in, so that a moved or emptied
/// directory does not make the replay pass by running nothing.
#[test]
fn every_target_has_a_corpus() {
    for (target, _) in rill_fuzz::TARGETS {
        assert!(
            !inputs("corpus", target).is_empty(),
            "no corpus for {target} in {}",
            fuzz_dir().join("corpus").display()
        );
    }
}
