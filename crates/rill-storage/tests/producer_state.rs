//! Producer state rebuilt from a real log at open: from the log alone, from
//! a snapshot plus the log after it, and with snapshots that cannot be used.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Instant;

use common::*;
use rill_storage::batch::BatchHeader;
use rill_storage::producer_state::{
    self, AppendCheck, ProducerBatch, ProducerStateConfig, ProducerStateManager,
};
use rill_storage::records::{BatchBuilder, Record};
use rill_storage::{Log, LogConfig};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 256,
        retention_ms: -1,
        retention_bytes: -1,
        ..LogConfig::default()
    }
}

/// An idempotent batch of `count` records.
fn idempotent(producer_id: i64, epoch: i16, first_seq: i32, count: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    builder.producer_id = producer_id;
    builder.producer_epoch = epoch;
    builder.base_sequence = first_seq;
    for i in 0..count {
        builder.push(Some(b"k"), Some(format!("v{i}").as_bytes()), START_MS);
    }
    builder.build()
}

/// Checks, appends and records a batch as the broker does.
fn produce(log: &Log, state: &mut ProducerStateManager, mut bytes: Vec<u8>) -> AppendCheck {
    let header = BatchHeader::parse(&bytes).unwrap();
    let check = state
        .check(&ProducerBatch::from_header(&header).unwrap())
        .unwrap();
    if check == AppendCheck::Append {
        log.append(&mut bytes, 0).unwrap();
        let header = BatchHeader::parse(&bytes).unwrap();
        state.record(&ProducerBatch::from_header(&header).unwrap(), START_MS);
    }
    check
}

/// A few producers, epochs and a non-idempotent batch in between.
fn fill(log: &Log, state: &mut ProducerStateManager, rounds: i32) {
    for round in 0..rounds {
        for producer_id in 0..3 {
            let seq = round * 2;
            assert_eq!(
                produce(log, state, idempotent(producer_id, 0, seq, 2)),
                AppendCheck::Append
            );
        }
        let mut plain = simple_batch(1, START_MS);
        log.append(&mut plain, 0).unwrap();
    }
}

fn entries(
    state: &ProducerStateManager,
) -> Vec<(i64, Option<rill_storage::producer_state::ProducerEntry>)> {
    (0..4).map(|id| (id, state.entry(id).cloned())).collect()
}

fn snapshot_files(h: &Harness) -> Vec<i64> {
    producer_state::snapshot_offsets(&h.log_dir()).unwrap()
}

#[test]
fn load_rebuilds_from_the_whole_log_without_a_snapshot() {
    let h = Harness::new(config());
    let log = h.open();
    let mut live = ProducerStateManager::new(ProducerStateConfig::default());
    fill(&log, &mut live, 10);
    assert!(log.segment_count() > 1, "the replay crosses segments");
    let log = h.reopen_clean(log);

    let (loaded, report) = producer_state::load(&log, live.config(), START_MS).unwrap();
    assert_eq!(report.snapshot_offset, None);
    assert_eq!(report.replay_start_offset, 0);
    assert_eq!(report.replay_end_offset, log.log_end_offset());
    assert_eq!(report.batches_replayed, 40);
    assert_eq!(entries(&loaded), entries(&live));

    // Retries of the last batches are still recognised after the restart.
    let mut loaded = loaded;
    let before = log.log_end_offset();
    assert!(matches!(
        produce(&log, &mut loaded, idempotent(1, 0, 18, 2)),
        AppendCheck::Duplicate(_)
    ));
    assert_eq!(log.log_end_offset(), before);
    assert_eq!(
        produce(&log, &mut loaded, idempotent(1, 0, 20, 2)),
        AppendCheck::Append
    );
}

#[test]
fn load_starts_from_the_newest_snapshot_and_replays_the_rest() {
    let h = Harness::new(config());
    let log = h.open();
    let mut live = ProducerStateManager::new(ProducerStateConfig::default());
    fill(&log, &mut live, 4);
    let first = log.log_end_offset();
    let bytes = live.take_snapshot().unwrap();
    producer_state::write_snapshot(log.dir(), first, &bytes, true).unwrap();
    fill_more(&log, &mut live);
    let second = log.log_end_offset();
    let bytes = live.take_snapshot().unwrap();
    producer_state::write_snapshot(log.dir(), second, &bytes, true).unwrap();
    assert_eq!(
        produce(&log, &mut live, idempotent(3, 0, 0, 1)),
        AppendCheck::Append
    );
    let log = h.reopen_clean(log);

    let (loaded, report) = producer_state::load(&log, live.config(), START_MS).unwrap();
    assert_eq!(report.snapshot_offset, Some(second));
    assert_eq!(report.batches_replayed, 1);
    assert_eq!(entries(&loaded), entries(&live));

    // A third snapshot leaves the two newest.
    let third = log.log_end_offset();
    producer_state::write_snapshot(log.dir(), third, &loaded.encode(), true).unwrap();
    assert_eq!(snapshot_files(&h), vec![second, third]);
}

fn fill_more(log: &Log, state: &mut ProducerStateManager) {
    for seq in (8..14).step_by(2) {
        assert_eq!(
            produce(log, state, idempotent(0, 0, seq, 2)),
            AppendCheck::Append
        );
    }
    // Producer 2 moves to a new epoch.
    assert_eq!(
        produce(log, state, idempotent(2, 1, 0, 3)),
        AppendCheck::Append
    );
}

#[test]
fn snapshots_past_the_log_end_or_damaged_are_dropped() {
    let h = Harness::new(config());
    let log = h.open();
    let mut live = ProducerStateManager::new(ProducerStateConfig::default());
    fill(&log, &mut live, 3);
    let good = log.log_end_offset();
    producer_state::write_snapshot(log.dir(), good, &live.encode(), true).unwrap();
    // A snapshot from beyond the log end, as if a crash had cut the log
    // below it, holds producers the log does not: it must not be used.
    let mut phantom = live.clone();
    phantom.record(
        &ProducerBatch::from_header(&BatchHeader::parse(&idempotent(9, 0, 0, 1)).unwrap())
            .map(|mut b| {
                b.first_offset = good + 100;
                b.last_offset = good + 100;
                b
            })
            .unwrap(),
        START_MS,
    );
    let beyond = good + 1000;
    std::fs::write(
        log.dir().join(format!("{beyond:020}.snapshot")),
        phantom.encode(),
    )
    .unwrap();
    let (loaded, report) = producer_state::load(&log, live.config(), START_MS).unwrap();
    assert_eq!(report.snapshot_offset, Some(good));
    assert!(loaded.entry(9).is_none());
    assert_eq!(entries(&loaded), entries(&live));
    assert_eq!(snapshot_files(&h), vec![good]);

    // A damaged snapshot is removed and the log replayed from its start.
    let path = log.dir().join(format!("{good:020}.snapshot"));
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let (loaded, report) = producer_state::load(&log, live.config(), START_MS).unwrap();
    assert_eq!(report.snapshot_offset, None);
    assert_eq!(report.replay_start_offset, 0);
    assert_eq!(entries(&loaded), entries(&live));
    assert!(snapshot_files(&h).is_empty());
}

#[test]
fn a_batch_wider_than_one_replay_read_is_replayed() {
    let h = Harness::new(LogConfig {
        segment_bytes: 8 * 1024 * 1024,
        max_message_bytes: 4 * 1024 * 1024,
        ..config()
    });
    let log = h.open();
    let mut live = ProducerStateManager::new(ProducerStateConfig::default());
    let mut builder = BatchBuilder::new();
    builder.producer_id = 5;
    builder.producer_epoch = 0;
    builder.base_sequence = 0;
    builder.base_timestamp = Some(START_MS);
    // `push` looks for the largest delta so far; records with their deltas
    // set keep this linear.
    for offset_delta in 0..100_000 {
        builder.push_record(Record {
            attributes: 0,
            timestamp_delta: 0,
            offset_delta,
            key: None,
            value: Some(Vec::new()),
            headers: Vec::new(),
        });
    }
    assert_eq!(
        produce(&log, &mut live, builder.build()),
        AppendCheck::Append
    );
    assert_eq!(
        produce(&log, &mut live, idempotent(5, 0, 100_000, 1)),
        AppendCheck::Append
    );
    let (loaded, report) = producer_state::load(&log, live.config(), START_MS).unwrap();
    assert_eq!(report.batches_replayed, 2);
    assert_eq!(loaded.entry(5), live.entry(5));
}

#[test]
fn expired_producers_are_dropped_at_load() {
    let h = Harness::new(config());
    let log = h.open();
    let config = ProducerStateConfig {
        producer_id_expiration_ms: 1_000,
        ..ProducerStateConfig::default()
    };
    let mut live = ProducerStateManager::new(config);
    fill(&log, &mut live, 2);
    let end = log.log_end_offset();
    producer_state::write_snapshot(log.dir(), end, &live.encode(), true).unwrap();
    // Replayed producers count as active at load time.
    let (loaded, _) = producer_state::load(&log, config, START_MS + 5_000).unwrap();
    assert_eq!(loaded.len(), 0);
    std::fs::remove_file(log.dir().join(format!("{end:020}.snapshot"))).unwrap();
    let (loaded, _) = producer_state::load(&log, config, START_MS + 5_000).unwrap();
    assert_eq!(loaded.len(), 3);
}

/// A rough figure for the rebuild of a 1 GiB partition without a
/// snapshot: `cargo test --release -p rill-storage --test producer_state
/// -- --ignored --nocapture`. Not part of the normal run.
#[test]
#[ignore]
fn rebuild_time_of_a_one_gib_partition() {
    for batch_bytes in [16 * 1024, 1024] {
        let h = Harness::new(LogConfig {
            retention_ms: -1,
            retention_bytes: -1,
            ..LogConfig::default()
        });
        let log = h.open();
        let mut live = ProducerStateManager::new(ProducerStateConfig::default());
        let value = vec![b'x'; batch_bytes - 80];
        let mut seq = 0;
        let mut written = 0usize;
        while written < 1024 * 1024 * 1024 {
            let mut builder = BatchBuilder::new();
            builder.producer_id = i64::from(seq % 64);
            builder.producer_epoch = 0;
            builder.base_sequence = seq / 64;
            builder.push(None, Some(&value), START_MS);
            let bytes = builder.build();
            written += bytes.len();
            produce(&log, &mut live, bytes);
            seq += 1;
        }
        let log = h.reopen_clean(log);
        let started = Instant::now();
        let (loaded, report) = producer_state::load(&log, live.config(), START_MS).unwrap();
        eprintln!(
            "{batch_bytes}-byte batches: {} batches, {} MiB, rebuilt in {:?}",
            report.batches_replayed,
            log.size_bytes() / (1024 * 1024),
            started.elapsed()
        );
        assert_eq!(loaded.len(), live.len());
    }
}
