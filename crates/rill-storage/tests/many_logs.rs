//! Ten thousand logs in one data directory behind one `LogManager`: the
//! process never holds more segment files open than the manager's bound, and
//! a clean restart brings every log back.
//!
//! The memory each log costs is printed (run with `--nocapture`), not
//! asserted: it is a figure for the record.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::*;
use rill_storage::{LogConfig, LogManager, LogManagerConfig};
use rill_types::{Clock, ManualClock, TopicName, TopicPartition};

const LOGS: usize = 10_000;
const OPEN_FILES_MAX: usize = 512;
/// Descriptors the process holds besides segment files: stdio, the test
/// harness, the data directory's lock file, a checkpoint being written.
const OTHER_FDS_MAX: usize = 100;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Resident memory in KiB, from /proc/self/status.
fn vm_rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn tp(i: usize) -> TopicPartition {
    TopicPartition::new(
        TopicName::new(format!("topic{}", i / 100)).unwrap(),
        (i % 100) as i32,
    )
}

fn value(i: usize) -> Vec<u8> {
    format!("value-{i}").into_bytes()
}

fn assert_fds_bounded(when: &str) {
    let fds = open_fds();
    assert!(
        fds < OPEN_FILES_MAX + OTHER_FDS_MAX,
        "{fds} descriptors open {when}; the bound is {OPEN_FILES_MAX} segment files"
    );
}

#[test]
fn ten_thousand_logs_within_the_open_file_bound() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(START_MS));
    let log_config = LogConfig::default();
    let manager_config = LogManagerConfig {
        open_files_max: OPEN_FILES_MAX,
        default_log_config: log_config.clone(),
        ..LogManagerConfig::default()
    };
    let fds_at_start = open_fds();

    let started = Instant::now();
    let manager = LogManager::open(dir.path(), manager_config.clone(), Arc::clone(&clock)).unwrap();
    let rss_before = vm_rss_kib();
    for i in 0..LOGS {
        let log = manager.get_or_create(&tp(i), log_config.clone()).unwrap();
        let mut batch = batch_of(&[(Some(b"key"), Some(&value(i)), START_MS + i as i64)]);
        let info = log.append(&mut batch, 0).unwrap();
        assert_eq!((info.base_offset, info.last_offset), (0, 0));
        if i % 1000 == 999 {
            assert_fds_bounded(&format!("after creating {} logs", i + 1));
        }
    }
    let rss_after = vm_rss_kib();
    let created = started.elapsed();
    assert_eq!(manager.len(), LOGS);
    assert!(manager.files().open_count() <= OPEN_FILES_MAX);
    assert_fds_bounded("with every log created");
    eprintln!(
        "{LOGS} logs created with one append each in {created:.2?}; VmRSS {rss_before} KiB -> \
         {rss_after} KiB: {:.0} bytes per log (open descriptors {} at start, {} now)",
        (rss_after - rss_before) as f64 * 1024.0 / LOGS as f64,
        fds_at_start,
        open_fds()
    );

    // Reading back a hundred logs spread over the set, most of whose files
    // the cache has closed.
    let mut rng = Rng::new(10_000);
    for _ in 0..100 {
        let i = rng.below(LOGS as u64) as usize;
        let log = manager.get(&tp(i)).unwrap();
        let records = decode_all(&read_all(&log));
        assert_eq!(records.len(), 1, "log {i}");
        assert_eq!(
            records[0].value.as_deref(),
            Some(value(i).as_slice()),
            "log {i}"
        );
        assert_eq!(records[0].offset, 0);
    }
    assert_fds_bounded("after the reads");

    let shutdown_started = Instant::now();
    manager.shutdown().unwrap();
    let shutdown = shutdown_started.elapsed();
    drop(manager);

    let reopen_started = Instant::now();
    let rss_before_reopen = vm_rss_kib();
    let manager = LogManager::open(dir.path(), manager_config, Arc::clone(&clock)).unwrap();
    let reopened = reopen_started.elapsed();
    let rss_after_reopen = vm_rss_kib();
    assert_fds_bounded("after reopening every log");
    assert_eq!(manager.len(), LOGS);
    for i in 0..LOGS {
        let log = manager
            .get(&tp(i))
            .unwrap_or_else(|| panic!("log {i} is missing after the restart"));
        assert_eq!(log.log_end_offset(), 1, "log {i}");
        assert_eq!(log.recovery_point(), 1, "log {i}");
    }
    for _ in 0..100 {
        let i = rng.below(LOGS as u64) as usize;
        let records = decode_all(&read_all(&manager.get(&tp(i)).unwrap()));
        assert_eq!(
            records[0].value.as_deref(),
            Some(value(i).as_slice()),
            "log {i}"
        );
    }
    eprintln!(
        "shutdown of {LOGS} logs took {shutdown:.2?}; the clean reopen took {reopened:.2?}, \
         VmRSS {rss_before_reopen} KiB -> {rss_after_reopen} KiB: {:.0} bytes per log",
        (rss_after_reopen - rss_before_reopen) as f64 * 1024.0 / LOGS as f64
    );
    manager.shutdown().unwrap();
    drop(manager);
    let removal_started = Instant::now();
    drop(dir);
    eprintln!(
        "removing the data directory took {:.2?}; total {:.2?}",
        removal_started.elapsed(),
        started.elapsed()
    );
}

/// The high watermark survives a restart through the manager's
/// `replication-offset-checkpoint`, moves only forward, never past the log
/// end, and is pulled back by a truncation below it (and up by a new log
/// start above it).
#[test]
fn high_watermarks_are_checkpointed_and_kept_within_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_000));
    let tp = TopicPartition::new(TopicName::new("hw").unwrap(), 0);
    {
        let manager =
            LogManager::open(dir.path(), LogManagerConfig::default(), Arc::clone(&clock)).unwrap();
        let log = manager.get_or_create(&tp, LogConfig::default()).unwrap();
        for i in 0..10u8 {
            let mut builder = rill_storage::records::BatchBuilder::new();
            builder.push(None, Some(&[i]), 0);
            log.append(&mut builder.build(), 0).unwrap();
        }
        assert_eq!(log.high_watermark(), 0);
        assert!(log.advance_high_watermark(7));
        assert!(!log.advance_high_watermark(5), "never back");
        assert!(log.advance_high_watermark(99));
        assert_eq!(log.high_watermark(), 10, "never past the log end");
        manager.truncate_to(&tp, 6).unwrap();
        assert_eq!(log.high_watermark(), 6, "a truncation pulls it back");
        manager.checkpoint().unwrap();
    }
    let manager =
        LogManager::open(dir.path(), LogManagerConfig::default(), Arc::clone(&clock)).unwrap();
    let log = manager.get(&tp).unwrap();
    assert_eq!(log.high_watermark(), 6, "restored from the checkpoint");
    manager.delete_before(&tp, 6).unwrap();
    assert_eq!(log.high_watermark(), 6);
    log.truncate_fully_and_start_at(20).unwrap();
    assert_eq!(
        log.high_watermark(),
        20,
        "a log restarted later starts there"
    );
}
