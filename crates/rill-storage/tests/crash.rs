//! Damaged files: a torn or overwritten segment tail, damaged indexes and
//! checkpoints, and files of pure garbage named like segments. After each,
//! the log must open without panicking, keep every batch before the damage
//! byte for byte, return nothing damaged, and take new appends from its end.
//!
//! Each test builds one pristine log, then for ~50 seeded positions copies it,
//! damages the copy and reopens it.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use common::*;
use rill_storage::batch::{self, BatchHeader};
use rill_storage::{
    EpochEntry, Log, LogConfig, LogManager, LogManagerConfig, LogOpenOptions, TimestampOffset,
};
use rill_types::{TopicName, TopicPartition};

const POSITIONS: u64 = 50;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 700,
        index_interval_bytes: 100,
        retention_ms: -1,
        retention_bytes: -1,
        ..LogConfig::default()
    }
}

/// One batch of the pristine log and where it lives.
#[derive(Debug, Clone)]
struct Stored {
    segment: i64,
    position: u64,
    bytes: Vec<u8>,
}

impl Stored {
    fn header(&self) -> BatchHeader {
        header(&self.bytes)
    }

    fn end(&self) -> u64 {
        self.position + self.bytes.len() as u64
    }
}

/// A closed log to copy and damage, and what it held.
#[derive(Debug)]
struct Pristine {
    h: Harness,
    batches: Vec<Stored>,
    log_end_offset: i64,
    segments: Vec<i64>,
    epochs: Vec<EpochEntry>,
    /// (timestamp asked, answer) pairs.
    by_time: Vec<(i64, Option<TimestampOffset>)>,
}

impl Pristine {
    fn build(seed: u64) -> Self {
        let h = Harness::new(config());
        let log = h.open();
        let mut rng = Rng::new(seed);
        for i in 0..36u64 {
            let count = 1 + rng.below(4) as usize;
            let records: Vec<(Vec<u8>, Vec<u8>, i64)> = (0..count)
                .map(|j| {
                    let value_len = 1 + rng.below(20) as usize;
                    (
                        format!("key{}", rng.below(10)).into_bytes(),
                        rng.bytes(value_len),
                        START_MS + 10 * i as i64 + j as i64,
                    )
                })
                .collect();
            let refs: Vec<Rec<'_>> = records
                .iter()
                .map(|(k, v, ts)| (Some(k.as_slice()), Some(v.as_slice()), *ts))
                .collect();
            let epoch = (i / 8) as i32 * 2;
            log.append(&mut batch_of(&refs), epoch).unwrap();
        }
        let segments = log.segment_base_offsets();
        assert!(
            segments.len() >= 4,
            "want several segments, got {segments:?}"
        );
        let bytes = read_all(&log);
        let mut batches = Vec::new();
        let mut position = 0;
        let mut segment = segments[0];
        for b in split_batches(&bytes) {
            let base = header(&b).base_offset;
            let holder = segments
                .iter()
                .copied()
                .filter(|&s| s <= base)
                .max()
                .unwrap();
            if holder != segment {
                segment = holder;
                position = 0;
            }
            let len = b.len() as u64;
            batches.push(Stored {
                segment,
                position,
                bytes: b,
            });
            position += len;
        }
        let by_time = [
            0,
            START_MS,
            START_MS + 55,
            START_MS + 201,
            START_MS + 349,
            START_MS + 10_000,
        ]
        .into_iter()
        .map(|ts| (ts, log.offset_for_timestamp(ts).unwrap()))
        .collect();
        let pristine = Self {
            log_end_offset: log.log_end_offset(),
            segments,
            epochs: log.leader_epochs(),
            by_time,
            batches,
            h,
        };
        log.close().unwrap();
        pristine
    }

    fn last_segment(&self) -> i64 {
        *self.segments.last().unwrap()
    }

    /// A fresh copy of the closed log's directory.
    fn copy(&self) -> Harness {
        let h = Harness::new(config());
        copy_dir(&self.h.log_dir(), &h.log_dir());
        h
    }

    /// The options a log manager would pass after a crash: everything was
    /// flushed, but the clean-shutdown marker is missing.
    fn crash_options(&self) -> LogOpenOptions {
        LogOpenOptions {
            recovery_point: self.log_end_offset,
            log_start_offset: 0,
            clean_shutdown: false,
        }
    }

    fn clean_options(&self) -> LogOpenOptions {
        LogOpenOptions {
            clean_shutdown: true,
            ..self.crash_options()
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn truncate_file(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Overwrites bytes at `at`; returns the position of the first byte that
/// really changed, if any did.
fn overwrite(path: &Path, at: u64, garbage: &[u8]) -> Option<u64> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = file.metadata().unwrap().len();
    let garbage = &garbage[..garbage.len().min((len - at) as usize)];
    let mut old = vec![0u8; garbage.len()];
    file.read_exact_at(&mut old, at).unwrap();
    file.write_all_at(garbage, at).unwrap();
    old.iter()
        .zip(garbage)
        .position(|(a, b)| a != b)
        .map(|i| at + i as u64)
}

/// Fields of a batch header that the CRC does not cover: baseOffset and
/// partitionLeaderEpoch.
fn outside_crc(relative: usize) -> bool {
    relative < batch::BATCH_LENGTH_AT
        || (batch::PARTITION_LEADER_EPOCH_AT..batch::MAGIC_AT).contains(&relative)
}

/// Checks a log reopened over damage to the last segment's `.log` starting
/// at `damage` (the first changed byte; `None` if nothing changed):
/// everything before it intact, nothing damaged returned, appends continue.
fn check_after_log_damage(p: &Pristine, log: &Log, damage: Option<u64>, what: &str) {
    let last = p.last_segment();
    let intact = p
        .batches
        .iter()
        .take_while(|b| b.segment != last || damage.is_none_or(|d| b.end() <= d))
        .count();
    let (_, bytes) = read_all_from(log, log.log_start_offset());
    let returned = split_batches(&bytes);
    assert!(
        returned.len() >= intact,
        "{what}: {} batches returned but the {intact} before the damage are intact",
        returned.len()
    );
    for (i, (got, want)) in returned.iter().zip(&p.batches).enumerate() {
        if got == &want.bytes {
            continue;
        }
        // Only a change the CRC cannot see, in the damaged batch itself.
        let changed: Vec<usize> = got
            .iter()
            .zip(&want.bytes)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(at, _)| at)
            .collect();
        assert!(
            i == intact
                && got.len() == want.bytes.len()
                && changed.iter().all(|&at| outside_crc(at)),
            "{what}: returned batch {i} differs from what was appended at bytes {changed:?} \
             (damage at {damage:?}, {intact} intact batches)"
        );
        eprintln!(
            "{what}: batch {i} kept with damage in fields the CRC does not cover (bytes {changed:?})"
        );
    }
    let expected_end = returned
        .last()
        .map_or(p.segments[0], |b| header(b).next_offset());
    assert_eq!(log.log_end_offset(), expected_end, "{what}: log end");
    // Every returned offset reads back its own batch.
    for b in &returned {
        let h = header(b);
        let mut out = Vec::new();
        log.read_into(h.base_offset, 1, i64::MAX, &mut out).unwrap();
        assert_eq!(&out, b, "{what}: read from {}", h.base_offset);
    }
    // New appends continue from the log end and read back.
    let mut new = simple_batch(2, START_MS + 999);
    let info = log.append(&mut new, 100).unwrap();
    assert_eq!(
        info.base_offset, expected_end,
        "{what}: append after recovery"
    );
    let (_, tail) = read_all_from(log, expected_end);
    assert_eq!(tail, new, "{what}: the new batch reads back");
    log.flush().unwrap();
}

/// Checks a log whose data files were not damaged: identical to the pristine one.
fn check_intact(p: &Pristine, log: &Log, what: &str, check_time: bool) {
    let (_, bytes) = read_all_from(log, 0);
    let all: Vec<u8> = p.batches.iter().flat_map(|b| b.bytes.clone()).collect();
    assert!(
        bytes == all,
        "{what}: contents differ from what was appended"
    );
    assert_eq!(log.log_end_offset(), p.log_end_offset, "{what}: log end");
    assert_eq!(log.segment_base_offsets(), p.segments, "{what}: segments");
    for b in &p.batches {
        let h = b.header();
        for offset in h.base_offset..=h.last_offset() {
            let mut out = Vec::new();
            log.read_into(offset, 1, i64::MAX, &mut out).unwrap();
            assert!(
                out == b.bytes,
                "{what}: read from {offset} did not return its batch"
            );
        }
    }
    if check_time {
        for &(ts, answer) in &p.by_time {
            assert_eq!(
                log.offset_for_timestamp(ts).unwrap(),
                answer,
                "{what}: offset_for_timestamp({ts})"
            );
        }
    }
    let info = log
        .append(&mut simple_batch(1, START_MS + 999), 100)
        .unwrap();
    assert_eq!(
        info.base_offset, p.log_end_offset,
        "{what}: append after reopen"
    );
}

// ---------------------------------------------------------------------------
// The last segment's `.log`.

#[test]
fn torn_last_segment_is_cut_at_the_tear() {
    let p = Pristine::build(1);
    let path = p.h.segment_file(p.last_segment(), "log");
    let len = fs::metadata(&path).unwrap().len();
    let mut rng = Rng::new(11);
    for case in 0..POSITIONS {
        let at = rng.below(len);
        let h = p.copy();
        truncate_file(&h.segment_file(p.last_segment(), "log"), at);
        let options = if case % 5 == 0 {
            LogOpenOptions::default()
        } else {
            p.crash_options()
        };
        let log = h.open_with(options);
        check_after_log_damage(&p, &log, Some(at), &format!("torn at {at} of {len}"));
    }
}

#[test]
fn overwritten_bytes_in_last_segment_are_cut_off() {
    let p = Pristine::build(2);
    let path = p.h.segment_file(p.last_segment(), "log");
    let len = fs::metadata(&path).unwrap().len();
    let mut rng = Rng::new(22);
    for case in 0..POSITIONS {
        let at = rng.below(len);
        let garbage_len = 1 + rng.below(16) as usize;
        let garbage = rng.bytes(garbage_len);
        let h = p.copy();
        let changed = overwrite(&h.segment_file(p.last_segment(), "log"), at, &garbage);
        let options = if case % 5 == 0 {
            LogOpenOptions::default()
        } else {
            p.crash_options()
        };
        let log = h.open_with(options);
        check_after_log_damage(
            &p,
            &log,
            changed,
            &format!("{garbage_len} garbage bytes at {at} of {len}"),
        );
    }
}

/// A zeroed tail (a file system that extended the file but never wrote the
/// data) is cut like a tear.
#[test]
fn zeroed_tail_is_cut() {
    let p = Pristine::build(3);
    let last = p.batches.last().unwrap().clone();
    for cut in [last.position, last.position + 5, last.end() - 1] {
        let h = p.copy();
        let path = h.segment_file(p.last_segment(), "log");
        let zeros = vec![0u8; (last.end() - cut) as usize];
        let changed = overwrite(&path, cut, &zeros);
        // Plus some zeros past the end.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(last.end() + 4096).unwrap();
        let log = h.open_with(p.crash_options());
        check_after_log_damage(&p, &log, changed, &format!("zeroed from {cut}"));
    }
}

/// The base offset is not covered by the CRC: a batch whose base offset
/// reads as nearly i64::MAX must be cut, not overflow.
#[test]
fn recovery_survives_a_base_offset_near_i64_max() {
    let p = Pristine::build(4);
    let victim = p
        .batches
        .iter()
        .rev()
        .find(|b| b.segment == p.last_segment() && b.header().last_offset_delta >= 1)
        .expect("a multi-record batch in the last segment")
        .clone();
    let h = p.copy();
    let path = h.segment_file(p.last_segment(), "log");
    overwrite(&path, victim.position, &(i64::MAX - 1).to_be_bytes());
    let result = std::panic::catch_unwind(|| h.open_with(p.crash_options()));
    let log =
        result.unwrap_or_else(|_| panic!("recovery panicked on a base offset of i64::MAX - 1"));
    check_after_log_damage(&p, &log, Some(victim.position), "base offset i64::MAX - 1");
}

/// A clean shutdown trusts the indexes but checks the batches after the last
/// index entry; damage there must still be caught, never returned.
#[test]
fn clean_open_over_a_damaged_tail_returns_no_damaged_bytes() {
    let p = Pristine::build(5);
    let last = p.last_segment();
    let index = fs::read(p.h.segment_file(last, "index")).unwrap_or_default();
    let tail_start = decode_offset_index(&index)
        .last()
        .map_or(0, |&(_, pos)| u64::from(pos));
    let len = fs::metadata(p.h.segment_file(last, "log")).unwrap().len();
    assert!(tail_start < len);
    let mut rng = Rng::new(55);
    for case in 0..POSITIONS {
        let h = p.copy();
        let path = h.segment_file(last, "log");
        // Damage the CRC-covered part of a batch in the tail.
        let batch = loop {
            let candidate = &p.batches[rng.below(p.batches.len() as u64) as usize];
            if candidate.segment == last && candidate.position >= tail_start {
                break candidate.clone();
            }
        };
        let at = batch.position
            + batch::ATTRIBUTES_AT as u64
            + rng.below(batch.bytes.len() as u64 - batch::ATTRIBUTES_AT as u64);
        let damage = if case % 2 == 0 {
            truncate_file(&path, at);
            Some(at)
        } else {
            overwrite(&path, at, &[!batch.bytes[(at - batch.position) as usize]])
        };
        let log = h.open_with(p.clean_options());
        check_after_log_damage(&p, &log, damage, &format!("clean open, damage at {at}"));
    }
}

// ---------------------------------------------------------------------------
// Indexes.

fn damage_index_files(p: &Pristine, clean: bool, segments: &[i64], seed: u64) {
    let mut rng = Rng::new(seed);
    for case in 0..POSITIONS {
        let segment = segments[rng.below(segments.len() as u64) as usize];
        let suffix = if case % 2 == 0 { "index" } else { "timeindex" };
        let h = p.copy();
        let path = h.segment_file(segment, suffix);
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        let len = meta.len();
        if len == 0 {
            continue;
        }
        let at = rng.below(len);
        let what = if rng.below(2) == 0 {
            truncate_file(&path, at);
            format!("{suffix} of segment {segment} torn at {at} of {len}")
        } else {
            let n = 1 + rng.below(12) as usize;
            overwrite(&path, at, &rng.bytes(n));
            format!("{suffix} of segment {segment}: {n} garbage bytes at {at} of {len}")
        };
        let options = if clean {
            p.clean_options()
        } else {
            p.crash_options()
        };
        let log = h.open_with(options);
        check_intact(
            p,
            &log,
            &format!("{} open, {what}", if clean { "clean" } else { "crash" }),
            true,
        );
    }
}

#[test]
fn damaged_indexes_of_the_last_segment_are_rebuilt() {
    let p = Pristine::build(6);
    damage_index_files(&p, false, &[p.last_segment()], 66);
}

#[test]
fn damaged_indexes_of_any_segment_never_lose_or_misplace_data() {
    let p = Pristine::build(7);
    damage_index_files(&p, false, &p.segments, 77);
    damage_index_files(&p, true, &p.segments, 78);
}

#[test]
fn missing_indexes_are_rebuilt() {
    let p = Pristine::build(8);
    for clean in [false, true] {
        let h = p.copy();
        for &segment in &p.segments {
            let _ = fs::remove_file(h.segment_file(segment, "index"));
            let _ = fs::remove_file(h.segment_file(segment, "timeindex"));
        }
        let options = if clean {
            p.clean_options()
        } else {
            p.crash_options()
        };
        let log = h.open_with(options);
        check_intact(&p, &log, &format!("no index files, clean {clean}"), true);
    }
}

// ---------------------------------------------------------------------------
// The leader-epoch checkpoint.

#[test]
fn damaged_epoch_checkpoint_never_loses_data() {
    let p = Pristine::build(9);
    let checkpoint = p.h.log_dir().join("leader-epoch-checkpoint");
    let len = fs::metadata(&checkpoint).unwrap().len();
    let mut rng = Rng::new(99);
    for case in 0..POSITIONS {
        let h = p.copy();
        let path = h.log_dir().join("leader-epoch-checkpoint");
        let at = rng.below(len);
        if case % 2 == 0 {
            truncate_file(&path, at);
        } else {
            let n = 1 + rng.below(8) as usize;
            overwrite(&path, at, &rng.bytes(n));
        }
        let log = h.open_with(p.crash_options());
        check_intact(
            &p,
            &log,
            &format!("epoch checkpoint damaged at {at}"),
            false,
        );
    }
}

/// An unreadable epoch checkpoint is ignored; the epochs must then come back
/// from the batches themselves (each carries its leader epoch), or a
/// follower's OffsetForLeaderEpoch gets wrong answers after the restart.
#[test]
fn unreadable_epoch_checkpoint_is_rebuilt_from_the_log() {
    let p = Pristine::build(10);
    assert!(p.epochs.len() >= 3, "{:?}", p.epochs);
    for (what, contents) in [
        ("garbage", b"\x00\x01garbage".to_vec()),
        ("empty", Vec::new()),
        ("count too high", b"0\n9\n0 0\n".to_vec()),
    ] {
        let h = p.copy();
        fs::write(h.log_dir().join("leader-epoch-checkpoint"), contents).unwrap();
        let log = h.open_with(p.crash_options());
        assert_eq!(
            log.leader_epochs(),
            p.epochs,
            "epochs after a {what} checkpoint"
        );
        check_intact(&p, &log, what, false);
    }
}

// ---------------------------------------------------------------------------
// Garbage files named like segments.

#[test]
fn garbage_segment_files_open_as_an_empty_or_truncated_log() {
    let mut rng = Rng::new(1234);
    let good = simple_batch(3, START_MS);
    for case in 0..POSITIONS {
        let h = Harness::new(config());
        fs::create_dir_all(h.log_dir()).unwrap();
        let len = rng.below(3000) as usize;
        let mut contents = rng.bytes(len);
        // Some files start with a real batch, so recovery has something to keep.
        let starts_good = case % 3 == 0;
        if starts_good {
            let mut b = good.clone();
            batch::set_base_offset(&mut b, 0);
            contents = [b, contents].concat();
        }
        fs::write(h.segment_file(0, "log"), &contents).unwrap();
        if case % 2 == 0 {
            let n = rng.below(100) as usize;
            fs::write(h.segment_file(0, "index"), rng.bytes(n)).unwrap();
            let n = rng.below(100) as usize;
            fs::write(h.segment_file(0, "timeindex"), rng.bytes(n)).unwrap();
        }
        if case % 4 == 1 {
            let n = rng.below(500) as usize;
            fs::write(h.segment_file(100, "log"), rng.bytes(n)).unwrap();
            fs::write(h.log_dir().join("leader-epoch-checkpoint"), rng.bytes(n)).unwrap();
        }
        for options in [
            LogOpenOptions::default(),
            LogOpenOptions {
                recovery_point: 1000,
                log_start_offset: 0,
                clean_shutdown: case % 2 == 0,
            },
        ] {
            let log = h.open_with(options);
            let what = format!("case {case}: {len} garbage bytes, options {options:?}");
            let bytes = read_all(&log);
            let returned = split_batches(&bytes);
            if starts_good {
                assert!(!returned.is_empty(), "{what}: the good batch is lost");
                assert_eq!(returned[0], good_at_zero(&good), "{what}");
            }
            let end = returned.last().map_or(0, |b| header(b).next_offset());
            assert_eq!(log.log_end_offset(), end, "{what}");
            let info = log.append(&mut simple_batch(1, START_MS), 0).unwrap();
            assert_eq!(info.base_offset, end, "{what}");
            log.close().unwrap();
        }
    }
}

fn good_at_zero(good: &[u8]) -> Vec<u8> {
    let mut b = good.to_vec();
    batch::set_base_offset(&mut b, 0);
    b
}

// ---------------------------------------------------------------------------
// The log manager's checkpoints.

fn tp(partition: i32) -> TopicPartition {
    TopicPartition::new(TopicName::new("orders").unwrap(), partition)
}

#[test]
fn damaged_manager_checkpoints_never_lose_data() {
    init_tracing();
    let template = tempfile::tempdir().unwrap();
    let clock = Arc::new(rill_types::ManualClock::new(START_MS));
    let manager_config = LogManagerConfig {
        default_log_config: config(),
        ..LogManagerConfig::default()
    };
    // Three logs, several segments each, one with a moved log start.
    let mut pristine = Vec::new();
    {
        let manager =
            LogManager::open(template.path(), manager_config.clone(), clock.clone()).unwrap();
        for partition in 0..3 {
            let log = manager.get_or_create(&tp(partition), config()).unwrap();
            for i in 0..20 {
                log.append(&mut simple_batch(1 + i % 3, START_MS + i as i64), 1)
                    .unwrap();
            }
            log.flush().unwrap();
            // Everything appended, including what the moved log start hides.
            pristine.push((read_all_from(&log, 0).1, log.log_end_offset()));
        }
        manager.delete_before(&tp(1), 7).unwrap();
        manager.checkpoint().unwrap();
        // A crash: no shutdown.
    }
    let mut rng = Rng::new(4321);
    for case in 0..POSITIONS {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(template.path(), dir.path());
        let name = if case % 2 == 0 {
            "recovery-point-offset-checkpoint"
        } else {
            "log-start-offset-checkpoint"
        };
        let path = dir.path().join(name);
        let len = fs::metadata(&path).unwrap().len();
        let at = rng.below(len);
        if rng.below(2) == 0 {
            truncate_file(&path, at);
        } else {
            let n = 1 + rng.below(6) as usize;
            overwrite(&path, at, &rng.bytes(n));
        }
        let what = format!("{name} damaged at {at} of {len}");
        let manager = LogManager::open(dir.path(), manager_config.clone(), clock.clone()).unwrap();
        assert_eq!(manager.len(), 3, "{what}");
        for (partition, (bytes, end)) in pristine.iter().enumerate() {
            let log = manager.get(&tp(partition as i32)).unwrap();
            assert_eq!(
                log.log_end_offset(),
                *end,
                "{what}: log end of partition {partition}"
            );
            let start = log.log_start_offset();
            assert!(start <= *end, "{what}");
            // From the log start on, exactly what was appended.
            let expected: Vec<u8> = split_batches(bytes)
                .into_iter()
                .filter(|b| header(b).last_offset() >= start)
                .flatten()
                .collect();
            assert!(
                read_all(&log) == expected,
                "{what}: contents of partition {partition}"
            );
            assert_eq!(
                log.append(&mut simple_batch(1, START_MS), 1)
                    .unwrap()
                    .base_offset,
                *end
            );
        }
        manager.shutdown().unwrap();
    }
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != ".lock" {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A compaction interrupted before its swap leaves `<base>.log.cleaned`; one
/// interrupted after removing the old indexes leaves none. Both open intact.
#[test]
fn interrupted_compaction_leftovers_are_cleared() {
    let p = Pristine::build(12);
    for clean in [false, true] {
        let h = p.copy();
        let first = p.segments[0];
        fs::write(
            h.segment_file(first, "log.cleaned"),
            b"half a cleaned segment",
        )
        .unwrap();
        let _ = fs::remove_file(h.segment_file(p.segments[1], "index"));
        let _ = fs::remove_file(h.segment_file(p.segments[1], "timeindex"));
        let options = if clean {
            p.clean_options()
        } else {
            p.crash_options()
        };
        let log = h.open_with(options);
        assert!(
            !h.segment_file(first, "log.cleaned").exists(),
            "the leftover is removed"
        );
        check_intact(
            &p,
            &log,
            &format!("compaction leftovers, clean {clean}"),
            true,
        );
    }
}
