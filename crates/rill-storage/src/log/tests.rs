//! Unit tests of the log as a whole: append, read, roll, reopen,
//! truncate, compaction, flush observation.

use std::time::Duration;

use rill_types::ManualClock;

use super::*;
use crate::batch::{self, BatchHeader};
use crate::cleaner::CleanBounds;
use crate::error::InvalidRecord;
use crate::records::{self, BatchBuilder};

fn batch(keys: &[&str], ts: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for k in keys {
        b.push(Some(k.as_bytes()), Some(b"v"), ts);
    }
    b.build()
}

fn open(dir: &Path, config: LogConfig, options: LogOpenOptions) -> Log {
    Log::open(
        dir,
        config,
        Arc::new(ManualClock::new(1_000)),
        FileCache::new(8),
        options,
    )
    .unwrap()
}

/// Counts flush passes, for the observer test.
#[derive(Debug, Default)]
struct CountFlushes(std::sync::atomic::AtomicUsize);

impl FlushObserver for CountFlushes {
    fn flushed(&self, _elapsed: Duration) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn flush_observer_sees_each_flush_pass_once() {
    let dir = tempfile::tempdir().unwrap();
    let observer = Arc::new(CountFlushes::default());
    let log = open(dir.path(), LogConfig::default(), LogOpenOptions::default())
        .with_flush_observer(Some(Arc::clone(&observer) as Arc<dyn FlushObserver>));
    let flushes = || observer.0.load(std::sync::atomic::Ordering::Relaxed);
    // A new log has no epoch checkpoint yet: the first flush writes it.
    log.flush().unwrap();
    assert_eq!(flushes(), 1, "the epoch checkpoint");
    log.flush().unwrap();
    assert_eq!(flushes(), 1, "nothing to flush: no pass");
    log.append(&mut batch(&["a"], 100), 0).unwrap();
    log.flush_until(1).unwrap();
    assert_eq!(flushes(), 2);
    // Already durable: no second pass.
    log.flush_until(1).unwrap();
    assert_eq!(flushes(), 2);
    log.append(&mut batch(&["b"], 101), 0).unwrap();
    log.flush().unwrap();
    assert_eq!(flushes(), 3);
}

/// Early writeback claims each chunk of unflushed bytes of the active
/// segment once, starts after what a flush covered, and begins again in
/// a new segment.
#[test]
fn writeback_claims_each_unflushed_chunk_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 64 << 20,
        ..LogConfig::default()
    };
    let log = open(dir.path(), config, LogOpenOptions::default());
    let big = |ts| {
        let mut b = BatchBuilder::new();
        b.push(None, Some(&vec![7u8; 1_000_000]), ts);
        b.build()
    };
    let size = |log: &Log| lock(&log.state).active().size;
    for i in 0..4 {
        log.append(&mut big(i), 0).unwrap();
    }
    assert!(log.take_writeback().unwrap().is_none(), "4 MB: not yet");
    log.append(&mut big(4), 0).unwrap();
    let first = log.take_writeback().unwrap().expect("5 MB unflushed");
    assert_eq!(first.range(), 0..size(&log));
    first.start().unwrap();
    assert!(log.take_writeback().unwrap().is_none(), "claimed once");

    // The next chunk starts where the last writeback ended, or past what
    // a flush made durable.
    for i in 5..10 {
        log.append(&mut big(i), 0).unwrap();
    }
    let second = log.take_writeback().unwrap().expect("5 more MB");
    assert_eq!(second.range().start, first.range().end);
    log.flush().unwrap();
    let flushed = size(&log);
    for i in 10..15 {
        log.append(&mut big(i), 0).unwrap();
    }
    let third = log.take_writeback().unwrap().expect("5 MB past the flush");
    assert_eq!(third.range(), flushed..size(&log));
    third.start().unwrap();

    // A new segment is counted from its start.
    log.roll().unwrap();
    for i in 15..20 {
        log.append(&mut big(i), 0).unwrap();
    }
    assert_eq!(
        log.take_writeback().unwrap().unwrap().range(),
        0..size(&log)
    );
}

#[test]
fn append_read_roll_reopen_truncate() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 300,
        index_interval_bytes: 1,
        ..LogConfig::default()
    };
    let log = open(dir.path(), config.clone(), LogOpenOptions::default());
    let mut sizes = Vec::new();
    for i in 0..10 {
        let mut b = batch(&["a", "b"], 100 + i);
        sizes.push(b.len());
        let info = log.append(&mut b, 3).unwrap();
        assert_eq!(info.base_offset, i * 2);
        assert_eq!(info.last_offset, i * 2 + 1);
    }
    assert_eq!(log.log_end_offset(), 20);
    assert!(
        log.segment_count() > 2,
        "segments: {:?}",
        log.segment_base_offsets()
    );
    let mut out = Vec::new();
    let info = log.read_into(5, 1, 20, &mut out).unwrap();
    assert_eq!(info.next_offset, 6, "first batch always returned");
    assert_eq!(out.len(), sizes[2]);
    let header = BatchHeader::parse(&out).unwrap();
    assert_eq!(header.base_offset, 4);
    assert_eq!(header.partition_leader_epoch, 3);
    out.clear();
    let info = log.read_into(0, u64::MAX, 20, &mut out).unwrap();
    assert_eq!(info.next_offset, 20);
    assert_eq!(out.len(), sizes.iter().sum::<usize>());
    log.flush().unwrap();
    assert_eq!(log.recovery_point(), 20);
    drop(log);

    // A crash-style reopen rescans from the recovery point.
    let log = open(
        dir.path(),
        config.clone(),
        LogOpenOptions {
            recovery_point: 12,
            ..Default::default()
        },
    );
    assert_eq!(log.log_end_offset(), 20);
    let mut again = Vec::new();
    log.read_into(0, u64::MAX, 20, &mut again).unwrap();
    assert_eq!(again, out);
    assert_eq!(log.offset_for_timestamp(105).unwrap().unwrap().offset, 10);
    assert_eq!(log.max_timestamp_offset().unwrap().unwrap().offset, 18);
    // Offset 7 is inside the batch [6, 7]: the whole batch goes.
    log.truncate_to(7).unwrap();
    assert_eq!(log.log_end_offset(), 6);
    let mut kept = Vec::new();
    log.read_into(0, u64::MAX, 20, &mut kept).unwrap();
    assert_eq!(kept.len(), sizes[..3].iter().sum::<usize>());
    log.close().unwrap();
    drop(log);
    let log = open(
        dir.path(),
        config,
        LogOpenOptions {
            recovery_point: 6,
            clean_shutdown: true,
            ..Default::default()
        },
    );
    assert_eq!(log.log_end_offset(), 6);
    let mut b = batch(&["c"], 200);
    assert_eq!(log.append(&mut b, 4).unwrap().base_offset, 6);
    assert_eq!(
        log.end_offset_for_epoch(3),
        EpochEndOffset {
            epoch: 3,
            end_offset: 6
        }
    );
}

#[test]
fn compaction_keeps_latest_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 200,
        cleanup_policy: crate::CleanupPolicy::COMPACT,
        ..LogConfig::default()
    };
    let log = open(dir.path(), config, LogOpenOptions::default());
    for keys in [["a", "b"], ["a", "c"], ["b", "c"], ["a", "d"], ["x", "y"]] {
        log.append(&mut batch(&keys, 1_000), 0).unwrap();
    }
    let stats = log.compact(&CleanBounds::everything()).unwrap();
    assert!(stats.segments_cleaned > 0, "{stats:?}");
    let mut out = Vec::new();
    log.read_into(0, u64::MAX, i64::MAX, &mut out).unwrap();
    let mut seen = Vec::new();
    for b in batch::split(&out) {
        let b = b.unwrap();
        let h = batch::check(b).unwrap();
        for r in records::decode_records(b).unwrap() {
            seen.push((
                h.base_offset + i64::from(r.offset_delta),
                String::from_utf8(r.key.unwrap()).unwrap(),
            ));
        }
    }
    let keys: Vec<_> = seen.iter().map(|(o, k)| format!("{o}{k}")).collect();
    assert_eq!(keys, ["4b", "5c", "6a", "7d", "8x", "9y"], "{seen:?}");
    let mut keyless = BatchBuilder::new();
    keyless.push(None, Some(b"v"), 1);
    let err = log.append(&mut keyless.build(), 0).unwrap_err();
    assert!(matches!(
        err,
        StorageError::Invalid {
            reason: InvalidRecord::MissingKeyOnCompactedTopic { .. },
            ..
        }
    ));
}
