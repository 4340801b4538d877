//! Transactions in a real log: markers appended as the broker will append
//! them, the aborted-transaction index through truncation, recovery,
//! retention and compaction, and producer state reloaded over all of it.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;

use common::*;
use rill_storage::batch::BatchHeader;
use rill_storage::producer_state::{
    self, AppendCheck, CompletedTxn, ProducerBatch, ProducerStateConfig, ProducerStateManager,
};
use rill_storage::records::BatchBuilder;
use rill_storage::txn::{self, AbortedTxn, ControlType, EndTxnMarker};
use rill_storage::{CleanBounds, CleanupPolicy, Log, LogConfig, LogOpenOptions};

const TXN_INDEX: &str = "txnindex";

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 400,
        ..small_config()
    }
}

/// A transactional batch of `count` records keyed `k<i>`.
fn txn_batch(producer_id: i64, first_seq: i32, count: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    builder.producer_id = producer_id;
    builder.producer_epoch = 0;
    builder.base_sequence = first_seq;
    builder.is_transactional = true;
    for i in 0..count {
        builder.push(
            Some(format!("k{i}").as_bytes()),
            Some(b"transactional"),
            START_MS,
        );
    }
    builder.build()
}

/// Checks, appends and records a data batch as the broker does; returns
/// its first offset.
fn produce(log: &Log, state: &mut ProducerStateManager, mut bytes: Vec<u8>) -> i64 {
    let batch = ProducerBatch::from_header(&BatchHeader::parse(&bytes).unwrap()).unwrap();
    assert_eq!(state.check(&batch).unwrap(), AppendCheck::Append);
    let info = log.append(&mut bytes, 0).unwrap();
    let header = BatchHeader::parse(&bytes).unwrap();
    state.record(&ProducerBatch::from_header(&header).unwrap(), START_MS);
    info.base_offset
}

/// Ends `producer_id`'s transaction as the broker will: checks the marker,
/// appends it, records it, and indexes an abort.
fn end_txn(
    log: &Log,
    state: &mut ProducerStateManager,
    producer_id: i64,
    control_type: ControlType,
) -> Option<CompletedTxn> {
    let marker = EndTxnMarker {
        control_type,
        coordinator_epoch: 0,
    };
    state.check_marker(producer_id, 0, 0).unwrap();
    let mut bytes = txn::build_marker_batch(producer_id, 0, marker, START_MS);
    let offset = log.append(&mut bytes, 0).unwrap().base_offset;
    let completed = state.record_marker(producer_id, 0, marker, offset, START_MS);
    if let Some(completed) = completed.filter(|c| c.is_aborted) {
        let last_stable_offset = state.last_stable_offset_after(&completed);
        log.add_aborted_txn(completed.aborted_txn(last_stable_offset))
            .unwrap();
    }
    completed
}

fn new_state() -> ProducerStateManager {
    ProducerStateManager::new(ProducerStateConfig::default())
}

fn txn_index_bases(h: &Harness) -> Vec<i64> {
    let mut bases: Vec<i64> = fs::read_dir(h.log_dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let (stem, suffix) = name.split_once('.')?;
            (suffix == TXN_INDEX).then(|| stem.parse().unwrap())
        })
        .collect();
    bases.sort_unstable();
    bases
}

fn aborted(producer_id: i64, first_offset: i64, last_offset: i64, lso: i64) -> AbortedTxn {
    AbortedTxn {
        producer_id,
        first_offset,
        last_offset,
        last_stable_offset: lso,
    }
}

/// Three producers, interleaved: 1 aborts [0, 4], 2 commits, 3 aborts
/// [2, 6] while 2 was still open, then 1 aborts again [7, 8].
fn interleaved(log: &Log, state: &mut ProducerStateManager) -> Vec<AbortedTxn> {
    assert_eq!(produce(log, state, txn_batch(1, 0, 1)), 0);
    assert_eq!(produce(log, state, txn_batch(2, 0, 1)), 1);
    assert_eq!(produce(log, state, txn_batch(3, 0, 1)), 2);
    assert_eq!(produce(log, state, txn_batch(1, 1, 1)), 3);
    let one = end_txn(log, state, 1, ControlType::Abort).unwrap();
    assert_eq!((one.first_offset, one.last_offset), (0, 4));
    assert_eq!(state.first_unstable_offset(), Some(1));
    end_txn(log, state, 2, ControlType::Commit).unwrap();
    assert_eq!(produce(log, state, txn_batch(3, 1, 1)), 6);
    // 3's marker lands at 7... after its batch at 6.
    let three = end_txn(log, state, 3, ControlType::Abort).unwrap();
    assert_eq!((three.first_offset, three.last_offset), (2, 7));
    assert_eq!(produce(log, state, txn_batch(1, 2, 1)), 8);
    let again = end_txn(log, state, 1, ControlType::Abort).unwrap();
    assert_eq!((again.first_offset, again.last_offset), (8, 9));
    assert_eq!(state.first_unstable_offset(), None);
    vec![
        aborted(1, 0, 4, 1),
        aborted(3, 2, 7, 8),
        aborted(1, 8, 9, 10),
    ]
}

#[test]
fn aborted_txns_answer_the_ranges_a_read_committed_fetch_asks_for() {
    let h = Harness::new(config());
    let log = h.open();
    let mut state = new_state();
    let all = interleaved(&log, &mut state);
    let [a, b, c] = [all[0], all[1], all[2]];
    assert_eq!(log.aborted_txns(0, log.log_end_offset()), all);
    assert_eq!(log.aborted_txns(0, 1), vec![a]);
    // [2, 3): 1's first transaction (marker at 4) and 3's (from 2).
    assert_eq!(log.aborted_txns(2, 3), vec![a, b]);
    assert_eq!(log.aborted_txns(4, 5), vec![a, b]);
    // From 5 on, 1's first marker is behind the fetch.
    assert_eq!(log.aborted_txns(5, 6), vec![b]);
    assert_eq!(log.aborted_txns(7, 10), vec![b, c]);
    assert_eq!(log.aborted_txns(8, 9), vec![c]);
    assert_eq!(log.aborted_txns(10, 10), vec![]);
    // Adding one again changes nothing.
    log.add_aborted_txn(b).unwrap();
    assert_eq!(log.aborted_txns(0, i64::MAX), all);
    let log = h.reopen_clean(log);
    assert_eq!(log.aborted_txns(0, i64::MAX), all);
    let bytes: usize = txn_index_bases(&h)
        .iter()
        .map(|&base| fs::read(h.segment_file(base, TXN_INDEX)).unwrap().len())
        .sum();
    assert_eq!(bytes, 3 * 34);
}

#[test]
fn the_search_stops_at_an_entry_whose_last_stable_offset_covers_the_bound() {
    let h = Harness::new(config());
    let log = h.open();
    for _ in 0..20 {
        log.append(&mut simple_batch(1, START_MS), 0).unwrap();
    }
    // Entries made by hand: the first says that nothing began below 6
    // was open after its marker, so a search bounded at 6 stops there and
    // never finds the (inconsistent) second, which claims to begin at 3.
    log.add_aborted_txn(aborted(1, 0, 5, 6)).unwrap();
    log.add_aborted_txn(aborted(2, 3, 12, 13)).unwrap();
    assert_eq!(log.aborted_txns(0, 6), vec![aborted(1, 0, 5, 6)]);
    assert_eq!(log.aborted_txns(0, 7).len(), 2);
    assert_eq!(log.aborted_txns(6, 20), vec![aborted(2, 3, 12, 13)]);
}

#[test]
fn truncation_drops_the_entries_of_markers_it_cuts() {
    let h = Harness::new(config());
    let log = h.open();
    let mut state = new_state();
    let all = interleaved(&log, &mut state);
    log.truncate_to(8).unwrap();
    assert_eq!(log.aborted_txns(0, i64::MAX), all[..2].to_vec());
    log.truncate_to(5).unwrap();
    assert_eq!(log.aborted_txns(0, i64::MAX), all[..1].to_vec());
    let log = h.reopen_clean(log);
    assert_eq!(log.aborted_txns(0, i64::MAX), all[..1].to_vec());
    log.truncate_to(4).unwrap();
    assert_eq!(log.aborted_txns(0, i64::MAX), vec![]);
    assert_eq!(txn_index_bases(&h), Vec::<i64>::new());
    let log = h.reopen_clean(log);
    assert_eq!(log.aborted_txns(0, i64::MAX), vec![]);
}

#[test]
fn reopening_after_a_cut_tail_drops_entries_past_the_recovered_end() {
    let h = Harness::new(LogConfig {
        segment_bytes: 1 << 20,
        ..config()
    });
    let log = h.open();
    let mut state = new_state();
    let all = interleaved(&log, &mut state);
    assert_eq!(log.segment_count(), 1);
    log.flush().unwrap();
    // A crash took the last marker's bytes (9) but not its index entry.
    let read = read_all(&log);
    let batches = split_batches(&read);
    let kept: usize = batches[..batches.len() - 1].iter().map(Vec::len).sum();
    drop(log);
    let log_file = h.segment_file(0, "log");
    fs::OpenOptions::new()
        .write(true)
        .open(&log_file)
        .unwrap()
        .set_len(kept as u64 + 10)
        .unwrap();
    let log = h.open_with(LogOpenOptions::default());
    assert_eq!(log.log_end_offset(), 9);
    assert_eq!(log.aborted_txns(0, i64::MAX), all[..2].to_vec());
    assert_eq!(
        fs::read(h.segment_file(0, TXN_INDEX)).unwrap().len(),
        2 * 34,
        "the file was rewritten"
    );
}

#[test]
fn retention_and_restarts_delete_the_index_with_its_segment() {
    let h = Harness::new(config());
    let log = h.open();
    let mut state = new_state();
    let all = interleaved(&log, &mut state);
    for _ in 0..10 {
        log.append(&mut simple_batch(3, START_MS), 0).unwrap();
    }
    let bases = log.segment_base_offsets();
    assert!(bases.len() > 3, "{bases:?}");
    let with_index = txn_index_bases(&h);
    assert!(!with_index.is_empty());
    // Delete every segment up to the one holding the last marker (9).
    let holding_last = *bases.iter().filter(|&&b| b <= 9).max().unwrap();
    let next = *bases.iter().find(|&&b| b > holding_last).unwrap();
    log.delete_before(holding_last).unwrap();
    assert!(txn_index_bases(&h).iter().all(|&b| b >= holding_last));
    assert_eq!(
        log.aborted_txns(holding_last, i64::MAX).last(),
        Some(&all[2])
    );
    log.delete_before(next).unwrap();
    assert_eq!(txn_index_bases(&h), Vec::<i64>::new());
    assert_eq!(log.aborted_txns(next, i64::MAX), vec![]);

    // A full restart of the log takes every index.
    let log = h.reopen_clean(log);
    let mut state = new_state();
    let start = log.log_end_offset();
    produce(&log, &mut state, txn_batch(5, 0, 1));
    end_txn(&log, &mut state, 5, ControlType::Abort).unwrap();
    assert_eq!(txn_index_bases(&h).len(), 1);
    log.truncate_fully_and_start_at(start + 100).unwrap();
    assert_eq!(txn_index_bases(&h), Vec::<i64>::new());
    assert_eq!(log.aborted_txns(0, i64::MAX), vec![]);
}

#[test]
fn open_removes_indexes_without_a_segment_and_unfinished_rewrites() {
    let h = Harness::new(config());
    let log = h.open();
    let mut state = new_state();
    let all = interleaved(&log, &mut state);
    let log = h.reopen_clean(log);
    drop(log);
    let orphan = h.segment_file(123_456, TXN_INDEX);
    fs::write(&orphan, [0u8; 34]).unwrap();
    let tmp = h.segment_file(0, "txnindex.tmp");
    fs::write(&tmp, [1u8; 10]).unwrap();
    let log = h.open_with(LogOpenOptions::default());
    assert!(!orphan.exists());
    assert!(!tmp.exists());
    assert_eq!(log.aborted_txns(0, i64::MAX), all);
}

/// A transactional batch of one record.
fn txn_record(producer_id: i64, seq: i32, key: &str, value: &str) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    builder.producer_id = producer_id;
    builder.producer_epoch = 0;
    builder.base_sequence = seq;
    builder.is_transactional = true;
    builder.push(Some(key.as_bytes()), Some(value.as_bytes()), START_MS);
    builder.build()
}

fn plain_record(log: &Log, key: &str, value: &str) -> i64 {
    let mut bytes = batch_of(&[(Some(key.as_bytes()), Some(value.as_bytes()), START_MS)]);
    log.append(&mut bytes, 0).unwrap().base_offset
}

/// The (key, value) of every data record left in the log, in offset order.
fn key_values(log: &Log) -> Vec<(String, String)> {
    let data: Vec<u8> = split_batches(&read_all(log))
        .into_iter()
        .filter(|b| !header(b).is_control())
        .flatten()
        .collect();
    decode_all(&data)
        .into_iter()
        .map(|r| {
            (
                String::from_utf8(r.key.unwrap()).unwrap(),
                String::from_utf8(r.value.unwrap()).unwrap(),
            )
        })
        .collect()
}

fn compacted_config() -> LogConfig {
    LogConfig {
        cleanup_policy: CleanupPolicy::COMPACT,
        delete_retention_ms: 1000,
        segment_bytes: 300,
        ..small_config()
    }
}

/// The bounds the broker gives the cleaner: the live producer state's
/// producers, nothing at or past `stable_offset`.
fn bounds(state: &ProducerStateManager, stable_offset: i64) -> CleanBounds {
    CleanBounds {
        stable_offset,
        producers: state.tails(),
    }
}

/// What a rebuilt producer state must agree on with the live one: each
/// producer's epoch, last sequence and open transaction (the cleaner may
/// drop the batches before a producer's last, as Kafka's does).
fn assert_same_producers(loaded: &ProducerStateManager, live: &ProducerStateManager) {
    for (producer_id, entry) in live.entries() {
        let rebuilt = loaded
            .entry(*producer_id)
            .unwrap_or_else(|| panic!("producer {producer_id} lost"));
        assert_eq!(
            rebuilt.producer_epoch(),
            entry.producer_epoch(),
            "{producer_id}"
        );
        assert_eq!(rebuilt.last_seq(), entry.last_seq(), "{producer_id}");
        assert_eq!(
            rebuilt.current_txn_first_offset(),
            entry.current_txn_first_offset(),
            "{producer_id}"
        );
    }
    assert_eq!(loaded.first_unstable_offset(), live.first_unstable_offset());
}

/// What a read_committed consumer gets from the log as librdkafka reads
/// it: the aborted transactions the log names for the whole range, a
/// producer's batches skipped from an aborted transaction's first offset
/// until its abort marker; nothing at or past `last_stable_offset`.
/// Returns the (offset, key, value) delivered.
fn read_committed(log: &Log, last_stable_offset: i64) -> Vec<(i64, String, String)> {
    let mut aborted: Vec<AbortedTxn> = log.aborted_txns(log.log_start_offset(), i64::MAX);
    aborted.sort_by_key(|t| t.first_offset);
    let mut delivered = Vec::new();
    for batch in split_batches(&read_all(log)) {
        let h = header(&batch);
        let skipping = |aborted: &Vec<AbortedTxn>| {
            aborted
                .iter()
                .find(|t| t.producer_id == h.producer_id)
                .is_some_and(|t| t.first_offset <= h.base_offset)
        };
        if h.is_control() {
            let marker = txn::parse_marker(&batch).unwrap();
            if marker.is_some_and(|m| m.control_type == ControlType::Abort) {
                if let Some(at) = aborted
                    .iter()
                    .position(|t| t.producer_id == h.producer_id && t.first_offset <= h.base_offset)
                {
                    aborted.remove(at);
                }
            }
            continue;
        }
        if h.is_transactional() && skipping(&aborted) {
            continue;
        }
        for r in decode_all(&batch)
            .into_iter()
            .filter(|r| r.offset < last_stable_offset)
        {
            delivered.push((
                r.offset,
                String::from_utf8(r.key.unwrap()).unwrap(),
                String::from_utf8(r.value.unwrap()).unwrap(),
            ));
        }
    }
    delivered
}

#[test]
fn compaction_drops_aborted_records_dedupes_committed_ones_and_keeps_producers_last_batches() {
    let h = Harness::new(compacted_config());
    let log = h.open();
    let mut state = new_state();
    plain_record(&log, "a", "plain-1");
    // An aborted value never supersedes the older plain one.
    produce(&log, &mut state, txn_record(1, 0, "a", "aborted"));
    produce(&log, &mut state, txn_record(1, 1, "z", "aborted"));
    let abort = end_txn(&log, &mut state, 1, ControlType::Abort).unwrap();
    // A committed value is superseded like any other...
    produce(&log, &mut state, txn_record(2, 0, "b", "committed-1"));
    end_txn(&log, &mut state, 2, ControlType::Commit).unwrap();
    plain_record(&log, "b", "plain-2");
    // ...and supersedes like any other.
    plain_record(&log, "c", "plain-3");
    produce(&log, &mut state, txn_record(3, 0, "c", "committed-2"));
    end_txn(&log, &mut state, 3, ControlType::Commit).unwrap();
    log.roll().unwrap();
    let before = split_batches(&read_all(&log));
    let bases_before = txn_index_bases(&h);
    assert!(!bases_before.is_empty());
    let aborted_before = log.aborted_txns(0, i64::MAX);
    assert_eq!(aborted_before.len(), 1);
    assert_eq!(aborted_before[0].first_offset, abort.first_offset);

    let stats = log.compact(&bounds(&state, i64::MAX)).unwrap();
    assert!(stats.segments_cleaned > 0, "{stats:?}");
    assert_eq!(stats.aborted_records_dropped, 2, "{stats:?}");
    // Producer 1's first (aborted) batch and plain-3's go whole.
    assert_eq!(
        (stats.batches_removed, stats.markers_removed),
        (2, 0),
        "{stats:?}"
    );
    let expected = [
        ("a".to_string(), "plain-1".to_string()),
        ("b".into(), "plain-2".into()),
        ("c".into(), "committed-2".into()),
    ];
    assert_eq!(key_values(&log), expected);
    let delivered: Vec<(String, String)> = read_committed(&log, i64::MAX)
        .into_iter()
        .map(|(_, k, v)| (k, v))
        .collect();
    assert_eq!(delivered, expected);
    // Producer 1's first aborted batch is gone; its last one stays, empty,
    // as does producer 2's emptied one: each producer's last data batch.
    // Every marker stays (each producer's last batch precedes it).
    let after = split_batches(&read_all(&log));
    let spans = |batches: &[Vec<u8>]| -> Vec<(i64, i64, bool)> {
        batches
            .iter()
            .filter(|b| header(b).producer_id >= 0)
            .map(|b| {
                let h = header(b);
                (h.producer_id, h.base_offset, h.is_control())
            })
            .collect()
    };
    let mut expected_spans = spans(&before);
    expected_spans.retain(|&(producer_id, offset, _)| (producer_id, offset) != (1, 1));
    assert_eq!(spans(&after), expected_spans);
    let markers = |batches: &[Vec<u8>]| -> Vec<Vec<u8>> {
        batches
            .iter()
            .filter(|b| header(b).is_control())
            .cloned()
            .collect()
    };
    assert_eq!(markers(&after), markers(&before));
    assert_eq!(txn_index_bases(&h), bases_before);
    assert_eq!(log.aborted_txns(0, i64::MAX), aborted_before);
    // A producer state rebuilt from the cleaned log alone agrees with the
    // live one.
    let log = h.reopen_clean(log);
    assert_eq!(log.aborted_txns(0, i64::MAX), aborted_before);
    let (loaded, _) = producer_state::load(&log, state.config(), START_MS).unwrap();
    assert_same_producers(&loaded, &state);
    // A second pass finds nothing more to do.
    let stats = log.compact(&bounds(&state, i64::MAX)).unwrap();
    assert_eq!(stats.segments_cleaned, 0, "{stats:?}");
}

/// Markers go as Kafka's cleaner removes them: once their transaction has
/// no data left, a first pass marks them with a delete horizon
/// (`delete.retention.ms` on), a pass after it removes them, and an
/// abort's index entry with it; read_committed reads the same throughout.
#[test]
fn empty_markers_are_removed_after_the_delete_horizon_with_their_index_entries() {
    let h = Harness::new(compacted_config());
    let log = h.open();
    let mut state = new_state();
    produce(&log, &mut state, txn_record(1, 0, "a", "aborted"));
    end_txn(&log, &mut state, 1, ControlType::Abort).unwrap();
    produce(&log, &mut state, txn_record(2, 0, "b", "committed-1"));
    end_txn(&log, &mut state, 2, ControlType::Commit).unwrap();
    plain_record(&log, "b", "plain");
    // Each producer writes on, so its markers above are not its last word.
    produce(&log, &mut state, txn_record(1, 1, "c", "committed-2"));
    end_txn(&log, &mut state, 1, ControlType::Commit).unwrap();
    produce(&log, &mut state, txn_record(2, 1, "d", "committed-3"));
    end_txn(&log, &mut state, 2, ControlType::Commit).unwrap();
    log.roll().unwrap();
    assert_eq!(log.aborted_txns(0, i64::MAX).len(), 1);
    let expected = vec![
        (4, "b".to_string(), "plain".to_string()),
        (5, "c".into(), "committed-2".into()),
        (7, "d".into(), "committed-3".into()),
    ];

    // Pass 1: the aborted data and the superseded committed one go; their
    // markers get a delete horizon, and stay.
    let stats = log.compact(&bounds(&state, i64::MAX)).unwrap();
    assert_eq!(
        (stats.batches_removed, stats.markers_removed),
        (2, 0),
        "{stats:?}"
    );
    let horizons = |log: &Log| -> Vec<(i64, bool)> {
        split_batches(&read_all(log))
            .iter()
            .map(|b| header(b))
            .filter(|h| h.is_control())
            .map(|h| (h.base_offset, h.has_delete_horizon()))
            .collect()
    };
    assert_eq!(
        horizons(&log),
        [(1, true), (3, true), (6, false), (8, false)]
    );
    assert_eq!(read_committed(&log, i64::MAX), expected);
    assert_eq!(log.aborted_txns(0, i64::MAX).len(), 1);
    // Before the horizon nothing more goes.
    h.clock.advance_ms(999);
    assert_eq!(
        log.compact(&bounds(&state, i64::MAX))
            .unwrap()
            .markers_removed,
        0
    );
    // Past it, both markers go, the abort's index entry with its marker.
    h.clock.advance_ms(2);
    let stats = log.compact(&bounds(&state, i64::MAX)).unwrap();
    assert_eq!(stats.markers_removed, 2, "{stats:?}");
    assert_eq!(horizons(&log), [(6, false), (8, false)]);
    assert!(log.aborted_txns(0, i64::MAX).is_empty());
    assert!(txn_index_bases(&h).is_empty());
    assert_eq!(read_committed(&log, i64::MAX), expected);
    let log = h.reopen_clean(log);
    assert!(log.aborted_txns(0, i64::MAX).is_empty());
    assert_eq!(read_committed(&log, i64::MAX), expected);
    let (loaded, _) = producer_state::load(&log, state.config(), START_MS).unwrap();
    assert_same_producers(&loaded, &state);
}

/// A producer's last word is kept: a marker after its last data batch
/// carries its epoch, and stays however empty its transaction is; a
/// producer the partition no longer remembers keeps nothing.
#[test]
fn a_producers_last_marker_stays_until_the_producer_is_gone() {
    let h = Harness::new(compacted_config());
    let log = h.open();
    let mut state = new_state();
    produce(&log, &mut state, txn_record(1, 0, "a", "aborted"));
    end_txn(&log, &mut state, 1, ControlType::Abort).unwrap();
    plain_record(&log, "z", "plain");
    log.roll().unwrap();
    h.clock.advance_ms(10_000);
    for _ in 0..3 {
        log.compact(&bounds(&state, i64::MAX)).unwrap();
        h.clock.advance_ms(10_000);
    }
    // Producer 1's aborted batch is its last data batch: kept, empty; so
    // its marker is kept too.
    let kept: Vec<(i64, bool)> = split_batches(&read_all(&log))
        .iter()
        .map(|b| header(b))
        .filter(|h| h.producer_id == 1)
        .map(|h| (h.base_offset, h.is_control()))
        .collect();
    assert_eq!(kept, [(0, false), (1, true)]);
    // Forgotten (expired), the producer keeps nothing.
    for _ in 0..2 {
        log.compact(&CleanBounds::everything()).unwrap();
        h.clock.advance_ms(10_000);
    }
    assert!(split_batches(&read_all(&log))
        .iter()
        .all(|b| header(b).producer_id != 1));
    assert!(log.aborted_txns(0, i64::MAX).is_empty());
    assert_eq!(key_values(&log), [("z".to_string(), "plain".to_string())]);
}

/// A cleaner swap cut between its two renames is finished at open: with
/// the `.log.cleaned` gone the new index is put in place; with it still
/// there nothing of the swap happened and the old index stays.
#[test]
fn open_finishes_or_undoes_a_cleaned_index_swap() {
    let h = Harness::new(compacted_config());
    let log = h.open();
    let mut state = new_state();
    produce(&log, &mut state, txn_record(1, 0, "a", "aborted"));
    end_txn(&log, &mut state, 1, ControlType::Abort).unwrap();
    let log = h.reopen_clean(log);
    assert_eq!(log.aborted_txns(0, i64::MAX).len(), 1);
    drop(log);
    let cleaned_index = h.segment_file(0, "txnindex.cleaned");
    let cleaned_log = h.segment_file(0, "log.cleaned");
    // The log's rename had not happened: the swap is undone.
    fs::write(&cleaned_index, b"").unwrap();
    fs::write(&cleaned_log, b"").unwrap();
    let log = h.open();
    assert_eq!(log.aborted_txns(0, i64::MAX).len(), 1);
    assert!(!cleaned_index.exists() && !cleaned_log.exists());
    drop(log);
    // It had: the (here empty) new index replaces the old.
    fs::write(&cleaned_index, b"").unwrap();
    let log = h.open();
    assert!(log.aborted_txns(0, i64::MAX).is_empty());
    assert!(!cleaned_index.exists());
    assert!(txn_index_bases(&h).is_empty());
}

#[test]
fn compaction_stops_at_the_first_offset_of_an_open_transaction() {
    let h = Harness::new(compacted_config());
    let log = h.open();
    let mut state = new_state();
    plain_record(&log, "a", "plain-1");
    let open = produce(&log, &mut state, txn_record(1, 0, "a", "open"));
    plain_record(&log, "a", "plain-2");
    log.roll().unwrap();
    assert_eq!(state.first_unstable_offset(), Some(open));
    // Below the open transaction nothing supersedes plain-1 yet.
    let stats = log.compact(&bounds(&state, open)).unwrap();
    assert_eq!(stats.end_offset, open);
    assert_eq!(stats.records_kept, stats.records_read, "{stats:?}");
    assert_eq!(
        key_values(&log).first(),
        Some(&("a".to_string(), "plain-1".to_string()))
    );
    // Once it commits, the latest value wins.
    end_txn(&log, &mut state, 1, ControlType::Commit).unwrap();
    log.roll().unwrap();
    assert_eq!(state.first_unstable_offset(), None);
    log.compact(&bounds(&state, i64::MAX)).unwrap();
    assert_eq!(key_values(&log), [("a".into(), "plain-2".into())]);
}

#[test]
fn load_replays_transactions_and_reindexes_aborts_once() {
    let h = Harness::new(config());
    let log = h.open();
    let mut live = new_state();
    // A snapshot in the middle of 3's transaction.
    assert_eq!(produce(&log, &mut live, txn_batch(3, 0, 2)), 0);
    let snapshot_offset = log.log_end_offset();
    log.flush().unwrap();
    producer_state::write_snapshot(
        log.dir(),
        snapshot_offset,
        &live.take_snapshot().unwrap(),
        true,
    )
    .unwrap();
    // After it: 4 begins, 3 aborts, 4 stays open.
    assert_eq!(produce(&log, &mut live, txn_batch(4, 0, 1)), 2);
    let three = end_txn(&log, &mut live, 3, ControlType::Abort).unwrap();
    assert_eq!((three.first_offset, three.last_offset), (0, 3));
    let entries = vec![aborted(3, 0, 3, 2)];
    assert_eq!(log.aborted_txns(0, i64::MAX), entries);
    let log = h.reopen_clean(log);

    let (loaded, report) = producer_state::load(&log, live.config(), START_MS).unwrap();
    assert_eq!(report.snapshot_offset, Some(snapshot_offset));
    assert_eq!(report.batches_replayed, 2);
    assert_eq!(report.aborts_replayed, 1);
    assert_eq!(report.unreadable_markers, 0);
    assert_eq!(loaded.entry(3), live.entry(3));
    assert_eq!(loaded.entry(4), live.entry(4));
    assert_eq!(loaded.entry(4).unwrap().current_txn_first_offset(), Some(2));
    assert_eq!(loaded.first_unstable_offset(), Some(2));
    // The entry the replay offered was there already.
    assert_eq!(log.aborted_txns(0, i64::MAX), entries);
    assert_eq!(fs::read(h.segment_file(0, TXN_INDEX)).unwrap().len(), 34);

    // With the index lost, the replay makes it again, once.
    let log = h.reopen_clean(log);
    fs::remove_file(h.segment_file(0, TXN_INDEX)).unwrap();
    let log = h.reopen_clean(log);
    assert_eq!(log.aborted_txns(0, i64::MAX), vec![]);
    let (mut loaded, _) = producer_state::load(&log, live.config(), START_MS).unwrap();
    assert_eq!(log.aborted_txns(0, i64::MAX), entries);
    let log = h.reopen_clean(log);
    let (again, _) = producer_state::load(&log, live.config(), START_MS).unwrap();
    assert_eq!(log.aborted_txns(0, i64::MAX), entries);
    assert_eq!(again.entry(4), loaded.entry(4));

    // 4's transaction, open across the restarts, still ends where it began.
    let four = end_txn(&log, &mut loaded, 4, ControlType::Commit).unwrap();
    assert_eq!((four.first_offset, four.last_offset), (2, 4));
    assert_eq!(loaded.first_unstable_offset(), None);
}

#[test]
fn load_from_the_log_alone_matches_the_live_state() {
    let h = Harness::new(config());
    let log = h.open();
    let mut live = new_state();
    let all = interleaved(&log, &mut live);
    produce(&log, &mut live, txn_batch(2, 1, 3));
    let log = h.reopen_clean(log);
    for base in txn_index_bases(&h) {
        fs::remove_file(h.segment_file(base, TXN_INDEX)).unwrap();
    }
    let log = h.reopen_clean(log);
    let (loaded, report) = producer_state::load(&log, live.config(), START_MS).unwrap();
    assert_eq!(report.snapshot_offset, None);
    assert_eq!(report.aborts_replayed, 3);
    for producer_id in 1..=3 {
        assert_eq!(loaded.entry(producer_id), live.entry(producer_id));
    }
    assert_eq!(loaded.first_unstable_offset(), Some(10));
    assert_eq!(log.aborted_txns(0, i64::MAX), all);
}

// ---------------------------------------------------------------------------
// Compaction of transactional logs against a model.

mod compaction_model {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// A plain record for key `k<n>`.
        Plain(u8),
        /// A transactional record of producer `.0` for key `k<.1>`,
        /// opening its transaction if none is open.
        Write(i64, u8),
        /// Ends the producer's open transaction, if any: commit or abort.
        End(i64, bool),
        Roll,
        /// A cleaner pass below the last stable offset.
        Compact,
        /// The clock moves on (past `delete.retention.ms`, 1 s, or not).
        Advance(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..4).prop_map(Op::Plain),
            4 => (1i64..=3, 0u8..4).prop_map(|(p, k)| Op::Write(p, k)),
            2 => (1i64..=3, any::<bool>()).prop_map(|(p, c)| Op::End(p, c)),
            1 => Just(Op::Roll),
            2 => Just(Op::Compact),
            1 => prop_oneof![Just(400i64), Just(1_500i64)].prop_map(Op::Advance),
        ]
    }

    /// A data record as written: its key, value and transaction (an index
    /// into the outcomes), if any.
    #[derive(Debug, Clone)]
    struct Written {
        key: String,
        value: String,
        txn: Option<usize>,
    }

    struct Model {
        written: HashMap<i64, Written>,
        /// Per transaction: None while open, else whether it committed.
        outcomes: Vec<Option<bool>>,
        /// Per transaction, once ended: its marker's offset.
        markers: HashMap<usize, i64>,
    }

    impl Model {
        /// Whether a read_committed consumer would ever see the record.
        fn visible(&self, record: &Written) -> bool {
            record.txn.is_none_or(|t| self.outcomes[t] == Some(true))
        }

        /// Each key's latest visible value among `records`.
        fn latest<'a>(
            &self,
            records: impl Iterator<Item = (i64, &'a Written)>,
        ) -> HashMap<String, (i64, String)> {
            let mut latest: HashMap<String, (i64, String)> = HashMap::new();
            for (offset, record) in records.filter(|(_, r)| self.visible(r)) {
                let entry = latest
                    .entry(record.key.clone())
                    .or_insert((offset, record.value.clone()));
                if offset >= entry.0 {
                    *entry = (offset, record.value.clone());
                }
            }
            latest
        }
    }

    /// What the log holds now: its data records by offset, and the
    /// offsets of its control batches.
    fn stored(log: &Log) -> (Vec<(i64, String, String)>, Vec<i64>) {
        let batches = split_batches(&read_all(log));
        let markers = batches
            .iter()
            .filter(|b| header(b).is_control())
            .map(|b| header(b).base_offset)
            .collect();
        let data: Vec<u8> = batches
            .into_iter()
            .filter(|b| !header(b).is_control())
            .flatten()
            .collect();
        let records = decode_all(&data)
            .into_iter()
            .map(|r| {
                (
                    r.offset,
                    String::from_utf8(r.key.unwrap()).unwrap(),
                    String::from_utf8(r.value.unwrap()).unwrap(),
                )
            })
            .collect();
        (records, markers)
    }

    /// The invariants after a pass that cleaned below `cleaned_below`:
    /// every record left was written there; each key's latest visible
    /// value is what it was; a read_committed consumer (as librdkafka
    /// reads: the aborted list and the markers) gets exactly the visible
    /// records left; a transaction with a record left keeps its marker;
    /// below the pass's end no aborted record is left, and no visible
    /// record that a later visible one supersedes.
    fn check(
        log: &Log,
        model: &Model,
        stable: i64,
        cleaned_below: i64,
    ) -> Result<(), TestCaseError> {
        let (records, marker_offsets) = stored(log);
        let mut left = Vec::new();
        for (offset, key, value) in &records {
            let written = model.written.get(offset);
            prop_assert!(
                written.is_some_and(|w| &w.key == key && &w.value == value),
                "offset {} holds {}={}, written {:?}",
                offset,
                key,
                value,
                written
            );
            left.push((*offset, written.unwrap()));
        }
        let all = model.latest(model.written.iter().map(|(o, w)| (*o, w)));
        let kept = model.latest(left.iter().copied());
        prop_assert_eq!(&kept, &all, "each key's latest visible value is kept");
        let visible_left: Vec<i64> = left
            .iter()
            .filter(|(o, w)| model.visible(w) && *o < stable)
            .map(|(o, _)| *o)
            .collect();
        let delivered: Vec<i64> = read_committed(log, stable)
            .iter()
            .map(|(o, _, _)| *o)
            .collect();
        prop_assert_eq!(
            &delivered,
            &visible_left,
            "read_committed reads the visible records"
        );
        for (offset, record) in &left {
            if let Some(marker) = record.txn.and_then(|t| model.markers.get(&t)) {
                prop_assert!(
                    marker_offsets.contains(marker),
                    "{:?} at {} is left without its marker at {}",
                    record,
                    offset,
                    marker
                );
            }
        }
        let below = model.latest(
            model
                .written
                .iter()
                .filter(|(o, _)| **o < cleaned_below)
                .map(|(o, w)| (*o, w)),
        );
        for (offset, record) in left.iter().filter(|(o, _)| *o < cleaned_below) {
            prop_assert!(
                model.visible(record),
                "aborted {:?} at {} left below {}",
                record,
                offset,
                cleaned_below
            );
            prop_assert_eq!(
                below.get(&record.key).map(|(o, _)| *o),
                Some(*offset),
                "{:?} at {} is superseded below {}",
                record,
                offset,
                cleaned_below
            );
        }
        Ok(())
    }

    fn run(ops: &[Op]) -> Result<(), TestCaseError> {
        let h = Harness::new(compacted_config());
        let log = h.open();
        let mut state = new_state();
        let mut model = Model {
            written: HashMap::new(),
            outcomes: Vec::new(),
            markers: HashMap::new(),
        };
        let mut sequences: HashMap<i64, i32> = HashMap::new();
        let mut open: HashMap<i64, usize> = HashMap::new();
        let compact = |log: &Log, state: &ProducerStateManager, model: &Model| {
            let stable = state.first_unstable_offset().unwrap_or(i64::MAX);
            let active_base = *log.segment_base_offsets().last().unwrap();
            log.compact(&bounds(state, stable)).unwrap();
            check(log, model, stable, stable.min(active_base))
        };
        for (step, op) in ops.iter().enumerate() {
            let value = format!("s{step}");
            match *op {
                Op::Plain(k) => {
                    let key = format!("k{k}");
                    let offset = plain_record(&log, &key, &value);
                    model.written.insert(
                        offset,
                        Written {
                            key,
                            value,
                            txn: None,
                        },
                    );
                }
                Op::Write(producer_id, k) => {
                    let txn = *open.entry(producer_id).or_insert_with(|| {
                        model.outcomes.push(None);
                        model.outcomes.len() - 1
                    });
                    let sequence = sequences.entry(producer_id).or_insert(0);
                    let key = format!("k{k}");
                    let bytes = txn_record(producer_id, *sequence, &key, &value);
                    *sequence += 1;
                    let offset = produce(&log, &mut state, bytes);
                    model.written.insert(
                        offset,
                        Written {
                            key,
                            value,
                            txn: Some(txn),
                        },
                    );
                }
                Op::End(producer_id, commit) => {
                    if let Some(txn) = open.remove(&producer_id) {
                        let control = if commit {
                            ControlType::Commit
                        } else {
                            ControlType::Abort
                        };
                        let marker_offset = log.log_end_offset();
                        end_txn(&log, &mut state, producer_id, control);
                        model.outcomes[txn] = Some(commit);
                        model.markers.insert(txn, marker_offset);
                    }
                }
                Op::Roll => log.roll().unwrap(),
                Op::Compact => compact(&log, &state, &model)?,
                Op::Advance(ms) => h.clock.advance_ms(ms),
            }
        }
        log.roll().unwrap();
        compact(&log, &state, &model)?;
        // A producer state rebuilt from the cleaned log alone is the live
        // one: the same transactions open, each producer at its epoch and
        // last sequences.
        let log = h.reopen_clean(log);
        let (loaded, _) = producer_state::load(&log, state.config(), START_MS).unwrap();
        assert_same_producers(&loaded, &state);
        Ok(())
    }

    proptest! {
        #![proptest_config(proptest_config(0x5eed_7a11))]

        #[test]
        fn compaction_keeps_what_read_committed_sees(ops in prop::collection::vec(op(), 1..60)) {
            run(&ops)?;
        }
    }
}
