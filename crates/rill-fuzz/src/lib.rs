//! The properties rill's fuzz targets check, one plain function per target.
//!
//! `fuzz/` (a cargo-fuzz crate, nightly only, outside the workspace) calls
//! these functions from libFuzzer; `tests/replay.rs` runs every input kept
//! in `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` through them
//! on the stable toolchain, so the normal test suite replays every finding.
//!
//! Each function takes whatever bytes the fuzzer made and panics when a
//! property fails; "does not panic" is the least of them:
//! - [`request()`]: framing over bytes fed in arbitrary chunks, and request
//!   parsing of every advertised API and version; what decodes re-encodes
//!   and decodes to the same request.
//! - [`record_batch()`]: the checks the produce path runs on client batches,
//!   and the validating append into a real log: a rejected append changes
//!   nothing, an accepted one reads back byte for byte and survives
//!   recovery.
//! - [`log_recovery()`]: arbitrary segment, index and checkpoint files,
//!   opened as after a crash: what recovery keeps reads back in ascending
//!   offsets, a batch appends at the log end, and a second recovery keeps
//!   all of it.
//! - [`group_coordinator()`]: arbitrary sequences of JoinGroup, SyncGroup,
//!   Heartbeat, LeaveGroup, OffsetCommit and time against the classic group
//!   state machine, with its invariants checked after every step; and
//!   `__consumer_offsets` records decoded from arbitrary bytes.
//!
//! Temporary log directories go to `/dev/shm` when it exists (tmpfs: no disk
//! writes, and far more executions per second), else to the system's
//! temporary directory.

mod group;
pub mod log_recovery;
mod record_batch;
mod request;

pub use group::group_coordinator;
pub use log_recovery::log_recovery;
pub use record_batch::record_batch;
pub use request::request;

/// A fuzz target: takes any bytes, panics when a property fails.
pub type Target = fn(&[u8]);

/// The targets, by name (the names of `fuzz/fuzz_targets/*.rs` and of the
/// corpus and regression directories).
pub const TARGETS: &[(&str, Target)] = &[
    ("request", request),
    ("record_batch", record_batch),
    ("log_recovery", log_recovery),
    ("group_coordinator", group_coordinator),
];

/// A temporary directory for one execution, removed when dropped.
fn temp_dir() -> tempfile::TempDir {
    let mut builder = tempfile::Builder::new();
    builder.prefix("rill-fuzz-");
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = builder.tempdir_in(shm) {
            return dir;
        }
    }
    builder.tempdir().expect("create a temporary directory")
}
