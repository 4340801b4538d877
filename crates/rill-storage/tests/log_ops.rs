//! Behaviour of one partition log through its public API, each test asserting
//! exact values: append, validation, read, timestamps, rolling, truncation,
//! deletion, retention, compaction, the leader-epoch cache, flushing, closing
//! and replication.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use rill_storage::batch::{self, BatchHeader};
use rill_storage::records::BatchBuilder;
use rill_storage::{
    CleanBounds, CleanupPolicy, CorruptBatch, EpochEndOffset, EpochEntry, InvalidRecord, Log,
    LogConfig, LogOpenOptions, StorageError, TimestampOffset, TimestampType,
    DEDUPE_BUFFER_BYTES_DEFAULT,
};

/// A log with a segment size large enough that nothing rolls.
fn one_segment_config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024 * 1024,
        index_interval_bytes: 100,
        retention_ms: -1,
        retention_bytes: -1,
        ..LogConfig::default()
    }
}

fn harness(config: LogConfig) -> (Harness, Log) {
    let h = Harness::new(config);
    let log = h.open();
    (h, log)
}

/// Appends `batches` as one request in `epoch`, returning the rewritten bytes.
fn append(log: &Log, batches: &[Vec<u8>], epoch: i32) -> Vec<u8> {
    let mut bytes = request(batches);
    log.append(&mut bytes, epoch).expect("append");
    bytes
}

/// What a rejected append must leave as it was.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    log_end_offset: i64,
    size_bytes: u64,
    contents: Vec<u8>,
    segments: Vec<i64>,
}

fn snapshot(log: &Log) -> Snapshot {
    Snapshot {
        log_end_offset: log.log_end_offset(),
        size_bytes: log.size_bytes(),
        contents: read_all(log),
        segments: log.segment_base_offsets(),
    }
}

fn expect_corrupt(
    result: rill_storage::Result<impl std::fmt::Debug>,
    index: usize,
) -> CorruptBatch {
    match result {
        Err(StorageError::Corrupt {
            batch_index,
            reason,
        }) => {
            assert_eq!(batch_index, index, "batch index of {reason:?}");
            reason
        }
        other => panic!("expected a Corrupt error, got {other:?}"),
    }
}

fn expect_out_of_range(
    result: rill_storage::Result<impl std::fmt::Debug>,
    expected: (i64, i64, i64),
) {
    match result {
        Err(StorageError::OffsetOutOfRange {
            offset,
            log_start_offset,
            log_end_offset,
        }) => assert_eq!((offset, log_start_offset, log_end_offset), expected),
        other => panic!("expected OffsetOutOfRange{expected:?}, got {other:?}"),
    }
}

fn expect_closed(result: rill_storage::Result<impl std::fmt::Debug>, what: &str) {
    match result {
        Err(StorageError::Closed(_)) => {}
        other => panic!("{what} on a closed log: expected Closed, got {other:?}"),
    }
}

fn base_offsets(bytes: &[u8]) -> Vec<i64> {
    split_batches(bytes)
        .iter()
        .map(|b| header(b).base_offset)
        .collect()
}

fn offsets(bytes: &[u8]) -> Vec<i64> {
    decode_all(bytes).iter().map(|r| r.offset).collect()
}

// ---------------------------------------------------------------------------
// Append.

#[test]
fn append_assigns_consecutive_offsets_within_and_across_requests() {
    let (_h, log) = harness(one_segment_config());
    assert_eq!(log.log_end_offset(), 0);
    let mut first = request(&[
        simple_batch(2, 10),
        simple_batch(3, 11),
        simple_batch(1, 12),
    ]);
    let info = log.append(&mut first, 0).unwrap();
    assert_eq!(info.base_offset, 0);
    assert_eq!(info.last_offset, 5);
    assert_eq!(info.log_append_time, -1);
    assert_eq!(info.log_start_offset, 0);
    assert_eq!(info.batch_count, 3);
    assert_eq!(log.log_end_offset(), 6);

    let mut second = request(&[simple_batch(2, 13)]);
    let info = log.append(&mut second, 0).unwrap();
    assert_eq!(
        (info.base_offset, info.last_offset, info.batch_count),
        (6, 7, 1)
    );
    assert_eq!(log.log_end_offset(), 8);
    assert_eq!(log.size_bytes(), (first.len() + second.len()) as u64);

    let bytes = read_all(&log);
    assert_eq!(base_offsets(&bytes), vec![0, 2, 5, 6]);
    assert_eq!(offsets(&bytes), (0..8).collect::<Vec<_>>());
    // The caller's buffers hold what was written.
    assert_eq!(bytes, [first, second].concat());
}

#[test]
fn append_info_reports_log_start_offset() {
    let (_h, log) = harness(one_segment_config());
    append(&log, &[simple_batch(4, 10)], 0);
    assert_eq!(log.delete_before(3).unwrap(), 3);
    let info = log.append(&mut simple_batch(1, 11), 0).unwrap();
    assert_eq!(
        (info.base_offset, info.last_offset, info.log_start_offset),
        (4, 4, 3)
    );
}

#[test]
fn append_rewrites_base_offset_and_leader_epoch_only() {
    let (_h, log) = harness(one_segment_config());
    append(&log, &[simple_batch(3, 10)], 0);
    let mut builder = BatchBuilder::new();
    builder.base_offset = 999;
    builder.partition_leader_epoch = 77;
    builder
        .push(Some(b"k"), Some(b"v"), 20)
        .push(Some(b"k2"), None, 21);
    let original = builder.build();
    let mut bytes = original.clone();
    let info = log.append(&mut bytes, 5).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (3, 4));

    let (_, stored) = read_all_from(&log, 3);
    assert_eq!(stored, bytes, "the log stores the rewritten request");
    let h = batch::check(&stored).expect("CRC still valid after the rewrite");
    assert_eq!(h.base_offset, 3);
    assert_eq!(h.partition_leader_epoch, 5);
    // Nothing but those two fields changed.
    assert_eq!(
        stored[batch::BATCH_LENGTH_AT..batch::PARTITION_LEADER_EPOCH_AT],
        original[8..12]
    );
    assert_eq!(stored[batch::MAGIC_AT..], original[batch::MAGIC_AT..]);
    assert_eq!(h.timestamp_type(), TimestampType::CreateTime);
    assert_eq!(h.max_timestamp, 21);
}

#[test]
fn log_append_time_stamps_max_timestamp_and_keeps_crc_valid() {
    let config = LogConfig {
        timestamp_type: TimestampType::LogAppendTime,
        ..one_segment_config()
    };
    let (h, log) = harness(config);
    h.clock.set_ms(START_MS + 1234);
    let mut bytes = request(&[simple_batch(2, 10), simple_batch(1, 99)]);
    let info = log.append(&mut bytes, 0).unwrap();
    assert_eq!(info.log_append_time, START_MS + 1234);
    let stored = read_all(&log);
    for b in split_batches(&stored) {
        let header = batch::check(&b).expect("CRC recomputed after stamping");
        assert_eq!(header.timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!(header.max_timestamp, START_MS + 1234);
    }
    let records = decode_all(&stored);
    assert!(records.iter().all(|r| r.timestamp == START_MS + 1234));
    assert_eq!(
        log.offset_for_timestamp(START_MS + 1234).unwrap(),
        Some(TimestampOffset {
            timestamp: START_MS + 1234,
            offset: 0
        })
    );
    assert_eq!(log.offset_for_timestamp(START_MS + 1235).unwrap(), None);
    assert_eq!(
        log.max_timestamp_offset().unwrap(),
        Some(TimestampOffset {
            timestamp: START_MS + 1234,
            offset: 0
        })
    );
}

// ---------------------------------------------------------------------------
// Validation: each failure names the check, and leaves the log as it was.

/// A log holding one good batch, and a good batch to corrupt.
fn validation_setup(config: LogConfig) -> (Harness, Log, Vec<u8>, Snapshot) {
    let (h, log) = harness(config);
    append(&log, &[simple_batch(2, 10)], 0);
    let before = snapshot(&log);
    (h, log, simple_batch(3, 20), before)
}

#[test]
fn rejects_bad_magic() {
    let (_h, log, mut bad, before) = validation_setup(one_segment_config());
    bad[batch::MAGIC_AT] = 1;
    assert_eq!(
        expect_corrupt(log.append(&mut bad, 0), 0),
        CorruptBatch::BadMagic(1)
    );
    assert_eq!(snapshot(&log), before);
}

#[test]
fn rejects_crc_mismatch() {
    let (_h, log, mut bad, before) = validation_setup(one_segment_config());
    let stored = u32::from_be_bytes(bad[batch::CRC_AT..batch::CRC_AT + 4].try_into().unwrap());
    let last = bad.len() - 2;
    bad[last] ^= 0x40;
    let computed = batch::compute_crc(&bad);
    assert_eq!(
        expect_corrupt(log.append(&mut bad, 0), 0),
        CorruptBatch::CrcMismatch { stored, computed }
    );
    assert_eq!(snapshot(&log), before);
}

#[test]
fn rejects_declared_length_beyond_the_buffer() {
    let (_h, log, mut bad, before) = validation_setup(one_segment_config());
    let len = bad.len();
    let declared = (len - batch::LOG_OVERHEAD + 10) as i32;
    bad[batch::BATCH_LENGTH_AT..batch::BATCH_LENGTH_AT + 4]
        .copy_from_slice(&declared.to_be_bytes());
    assert_eq!(
        expect_corrupt(log.append(&mut bad, 0), 0),
        CorruptBatch::LengthOverrun {
            declared: len + 10,
            available: len
        }
    );
    assert_eq!(snapshot(&log), before);
}

#[test]
fn rejects_declared_length_below_a_header() {
    let (_h, log, mut bad, before) = validation_setup(one_segment_config());
    bad[batch::BATCH_LENGTH_AT..batch::BATCH_LENGTH_AT + 4].copy_from_slice(&48i32.to_be_bytes());
    assert_eq!(
        expect_corrupt(log.append(&mut bad, 0), 0),
        CorruptBatch::LengthTooSmall { declared: 48 }
    );
    let mut negative = simple_batch(1, 1);
    negative[batch::BATCH_LENGTH_AT..batch::BATCH_LENGTH_AT + 4]
        .copy_from_slice(&(-5i32).to_be_bytes());
    assert_eq!(
        expect_corrupt(log.append(&mut negative, 0), 0),
        CorruptBatch::LengthTooSmall { declared: -5 }
    );
    assert_eq!(snapshot(&log), before);
}

#[test]
fn rejects_record_count_not_matching_last_offset_delta() {
    let (_h, log, mut bad, before) = validation_setup(one_segment_config());
    // Three records, lastOffsetDelta 2; claim four records.
    bad[batch::RECORD_COUNT_AT..batch::RECORD_COUNT_AT + 4].copy_from_slice(&4i32.to_be_bytes());
    reseal_crc(&mut bad);
    assert_eq!(
        expect_corrupt(log.append(&mut bad, 0), 0),
        CorruptBatch::RecordCountMismatch {
            count: 4,
            last_offset_delta: 2
        }
    );
    assert_eq!(snapshot(&log), before);
}

#[test]
fn rejects_unknown_compression_codec() {
    let (_h, log, mut bad, before) = validation_setup(one_segment_config());
    bad[batch::ATTRIBUTES_AT + 1] |= 0x07;
    reseal_crc(&mut bad);
    assert_eq!(
        expect_corrupt(log.append(&mut bad, 0), 0),
        CorruptBatch::UnknownCompression(7)
    );
    assert_eq!(snapshot(&log), before);
}

#[test]
fn rejects_batch_over_max_message_bytes() {
    let probe = simple_batch(3, 20);
    let config = LogConfig {
        max_message_bytes: probe.len() as u64 - 1,
        ..one_segment_config()
    };
    let (_h, log) = harness(config);
    append(&log, &[simple_batch(1, 10)], 0);
    let before = snapshot(&log);
    let mut bad = probe.clone();
    match log.append(&mut bad, 0) {
        Err(StorageError::BatchTooLarge { size, max }) => {
            assert_eq!((size, max), (probe.len(), probe.len() - 1));
        }
        other => panic!("expected BatchTooLarge, got {other:?}"),
    }
    assert_eq!(snapshot(&log), before);
    // Exactly max.message.bytes is allowed.
    log.set_config(LogConfig {
        max_message_bytes: probe.len() as u64,
        ..one_segment_config()
    })
    .unwrap();
    log.append(&mut probe.clone(), 0).unwrap();
}

#[test]
fn rejects_keyless_records_on_a_compacted_log() {
    let config = LogConfig {
        cleanup_policy: CleanupPolicy::COMPACT,
        ..one_segment_config()
    };
    let (_h, log, _, before) = validation_setup(config);
    let keyless = batch_of(&[(Some(b"k"), Some(b"v"), 1), (None, Some(b"v"), 2)]);
    let mut req = request(&[simple_batch(1, 1), keyless]);
    match log.append(&mut req, 0) {
        Err(StorageError::Invalid {
            batch_index,
            reason,
        }) => {
            assert_eq!(batch_index, 1);
            assert_eq!(
                reason,
                InvalidRecord::MissingKeyOnCompactedTopic {
                    record_indexes: vec![1]
                }
            );
        }
        other => panic!("expected Invalid MissingKeyOnCompactedTopic, got {other:?}"),
    }
    assert_eq!(snapshot(&log), before);
    // A tombstone has a key and is fine; an empty key is a key.
    let mut ok = batch_of(&[(Some(b"k"), None, 3), (Some(b""), Some(b"v"), 4)]);
    log.append(&mut ok, 0).unwrap();
}

#[test]
fn rejects_an_empty_request() {
    let (_h, log, _, before) = validation_setup(one_segment_config());
    assert!(matches!(
        log.append(&mut [], 0),
        Err(StorageError::EmptyAppend)
    ));
    assert!(matches!(
        log.append_replicated(&[]),
        Err(StorageError::EmptyAppend)
    ));
    assert_eq!(snapshot(&log), before);
}

#[test]
fn rejects_trailing_garbage_after_a_good_batch() {
    let (_h, log, good, before) = validation_setup(one_segment_config());
    let mut req = [good.clone(), vec![1, 2, 3]].concat();
    assert_eq!(
        expect_corrupt(log.append(&mut req, 0), 1),
        CorruptBatch::HeaderTruncated { len: 3 }
    );
    // A whole header's worth of garbage is caught too.
    let mut req = [good, vec![0u8; 70]].concat();
    assert_eq!(
        expect_corrupt(log.append(&mut req, 0), 1),
        CorruptBatch::LengthTooSmall { declared: 0 }
    );
    assert_eq!(snapshot(&log), before);
}

#[test]
fn a_bad_batch_after_good_ones_rejects_the_whole_request() {
    let (_h, log, mut bad, before) = validation_setup(one_segment_config());
    let n = bad.len();
    bad[n - 1] ^= 1;
    let mut req = request(&[simple_batch(1, 1), simple_batch(2, 2), bad]);
    let reason = expect_corrupt(log.append(&mut req, 0), 2);
    assert!(
        matches!(reason, CorruptBatch::CrcMismatch { .. }),
        "{reason:?}"
    );
    assert_eq!(snapshot(&log), before);
    // The log still appends afterwards, at the same offset.
    let info = log.append(&mut simple_batch(1, 3), 0).unwrap();
    assert_eq!(info.base_offset, before.log_end_offset);
}

/// A batch with no records and lastOffsetDelta -1 satisfies
/// `recordCount == lastOffsetDelta + 1` but spans no offset. Kafka rejects it
/// (LogValidator: "Batch has an invalid offset range" / count must be > 0).
#[test]
fn rejects_a_produced_batch_without_records() {
    let (h, log, _, before) = validation_setup(one_segment_config());
    let mut builder = BatchBuilder::new();
    builder.base_timestamp = Some(5);
    builder.last_offset_delta = Some(-1);
    let mut empty = builder.build();
    assert_eq!(header(&empty).record_count, 0);
    let result = log.append(&mut empty, 0);
    assert!(result.is_err(), "an empty batch was accepted: {result:?}");
    assert_eq!(snapshot(&log), before);
    drop(h);
}

/// The header's recordCount must be the number of records really in the
/// batch; otherwise the log assigns offsets no record has. Kafka decodes the
/// records of every produced batch and rejects such a batch.
#[test]
fn rejects_a_record_count_that_the_records_do_not_match() {
    let (_h, log, _, before) = validation_setup(one_segment_config());
    let mut bad = simple_batch(1, 20);
    bad[batch::LAST_OFFSET_DELTA_AT..batch::LAST_OFFSET_DELTA_AT + 4]
        .copy_from_slice(&4i32.to_be_bytes());
    bad[batch::RECORD_COUNT_AT..batch::RECORD_COUNT_AT + 4].copy_from_slice(&5i32.to_be_bytes());
    reseal_crc(&mut bad);
    let result = log.append(&mut bad, 0);
    assert!(
        matches!(result, Err(StorageError::Corrupt { batch_index: 0, .. })),
        "a batch declaring 5 records but holding 1 was not rejected: {result:?}"
    );
    assert_eq!(snapshot(&log), before);
}

/// Two produced batches that each claim nearly 2^31 offsets: the request
/// spans more offsets than one segment can index. It must be refused with an
/// error, not panic or write offsets the segment cannot hold.
#[test]
fn a_request_spanning_more_offsets_than_a_segment_holds_is_an_error() {
    let config = LogConfig {
        index_interval_bytes: 0,
        ..one_segment_config()
    };
    let (_h, log) = harness(config);
    let mut huge = simple_batch(1, 20);
    let delta = i32::MAX - 1;
    huge[batch::LAST_OFFSET_DELTA_AT..batch::LAST_OFFSET_DELTA_AT + 4]
        .copy_from_slice(&delta.to_be_bytes());
    huge[batch::RECORD_COUNT_AT..batch::RECORD_COUNT_AT + 4]
        .copy_from_slice(&(delta + 1).to_be_bytes());
    reseal_crc(&mut huge);
    let mut req = request(&[huge.clone(), huge]);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| log.append(&mut req, 0)));
    match result {
        Err(_) => panic!("append panicked on a request spanning 2^32 offsets"),
        Ok(result) => assert!(result.is_err(), "accepted: {result:?}"),
    }
}

// ---------------------------------------------------------------------------
// Read.

/// A log of batches [0-2], [3-4], [5], [6-9] in one segment.
fn read_setup() -> (Harness, Log, Vec<Vec<u8>>) {
    let (h, log) = harness(one_segment_config());
    let batches = vec![
        simple_batch(3, 10),
        simple_batch(2, 11),
        simple_batch(1, 12),
        simple_batch(4, 13),
    ];
    let bytes = append(&log, &batches, 0);
    let stored = split_batches(&bytes);
    (h, log, stored)
}

fn read_bytes(
    log: &Log,
    start: i64,
    max_bytes: u64,
    upper_bound: i64,
) -> (rill_storage::ReadInfo, Vec<u8>) {
    let mut out = Vec::new();
    let info = log
        .read_into(start, max_bytes, upper_bound, &mut out)
        .unwrap();
    assert_eq!(info.bytes, out.len() as u64);
    (info, out)
}

#[test]
fn read_returns_whole_batches_within_max_bytes() {
    let (_h, log, b) = read_setup();
    let two = (b[0].len() + b[1].len()) as u64;
    let (info, out) = read_bytes(&log, 0, two, i64::MAX);
    assert_eq!(out, [b[0].clone(), b[1].clone()].concat());
    assert_eq!(info.next_offset, 5);
    assert_eq!((info.log_start_offset, info.log_end_offset), (0, 10));
    let (info, out) = read_bytes(&log, 0, two - 1, i64::MAX);
    assert_eq!(out, b[0]);
    assert_eq!(info.next_offset, 3);
    let (info, out) = read_bytes(&log, 0, u64::MAX, i64::MAX);
    assert_eq!(out, b.concat());
    assert_eq!(info.next_offset, 10);
    assert_eq!(
        info.regions.len(),
        1,
        "contiguous batches of one file form one region"
    );
}

#[test]
fn read_returns_the_first_batch_even_if_larger_than_max_bytes() {
    let (_h, log, b) = read_setup();
    let (info, out) = read_bytes(&log, 0, 1, i64::MAX);
    assert_eq!(out, b[0]);
    assert_eq!(info.next_offset, 3);
    let (_, out) = read_bytes(&log, 0, 0, i64::MAX);
    assert_eq!(out, b[0]);
}

#[test]
fn read_from_inside_a_batch_returns_that_batch() {
    let (_h, log, b) = read_setup();
    for (start, first) in [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (8, 3), (9, 3)] {
        let (info, out) = read_bytes(&log, start, 1, i64::MAX);
        assert_eq!(out, b[first], "read from {start}");
        assert_eq!(info.next_offset, header(&b[first]).next_offset());
    }
}

#[test]
fn read_stops_before_batches_reaching_the_upper_bound() {
    let (_h, log, b) = read_setup();
    let cases: [(i64, i64, &[usize]); 8] = [
        (0, 10, &[0, 1, 2, 3]),
        (0, 9, &[0, 1, 2]),
        (0, 6, &[0, 1, 2]),
        (0, 5, &[0, 1]),
        (0, 4, &[0]),
        (0, 2, &[]),
        (3, 3, &[]),
        (4, 5, &[1]),
    ];
    for (start, upper_bound, expected) in cases {
        let (info, out) = read_bytes(&log, start, u64::MAX, upper_bound);
        let want: Vec<u8> = expected.iter().flat_map(|&i| b[i].clone()).collect();
        assert_eq!(out, want, "read({start}, upper_bound {upper_bound})");
        let next = expected
            .last()
            .map_or(start, |&i| header(&b[i]).next_offset());
        assert_eq!(info.next_offset, next);
    }
}

#[test]
fn read_at_log_end_is_empty_and_outside_the_log_is_out_of_range() {
    let (_h, log, _) = read_setup();
    let (info, out) = read_bytes(&log, 10, u64::MAX, i64::MAX);
    assert!(out.is_empty());
    assert!(info.regions.is_empty());
    assert_eq!(
        (info.next_offset, info.log_start_offset, info.log_end_offset),
        (10, 0, 10)
    );
    expect_out_of_range(log.read(11, 100, i64::MAX), (11, 0, 10));
    expect_out_of_range(log.read(-1, 100, i64::MAX), (-1, 0, 10));
    log.delete_before(4).unwrap();
    expect_out_of_range(log.read(3, 100, i64::MAX), (3, 4, 10));
    let mut out = Vec::new();
    expect_out_of_range(log.read_into(0, 100, i64::MAX, &mut out), (0, 4, 10));
    assert!(out.is_empty());
}

#[test]
fn read_spans_segments_and_regions_are_readable_from_their_files() {
    let (_h, log) = harness(LogConfig {
        segment_bytes: 200,
        ..small_config()
    });
    let mut appended = Vec::new();
    for i in 0..12 {
        appended.push(append(&log, &[simple_batch(1 + i % 3, 100 + i as i64)], 0));
    }
    assert!(
        log.segment_count() >= 4,
        "segments: {:?}",
        log.segment_base_offsets()
    );
    let all = appended.concat();
    let info = log.read(0, u64::MAX, i64::MAX).unwrap();
    assert_eq!(info.next_offset, log.log_end_offset());
    assert_eq!(info.bytes, all.len() as u64);
    assert!(info.regions.len() >= log.segment_count());
    assert_eq!(
        region_bytes(&info),
        all,
        "region bytes read with read_exact_at"
    );
    let (_, copied) = read_all_from(&log, 0);
    assert_eq!(copied, all);
    // From inside every batch, with a small max_bytes, across segment ends.
    let stored = split_batches(&all);
    for (i, b) in stored.iter().enumerate() {
        let h = header(b);
        for start in h.base_offset..=h.last_offset() {
            let limit = (b.len() + stored.get(i + 1).map_or(0, Vec::len)) as u64;
            let info = log.read(start, limit, i64::MAX).unwrap();
            let want: Vec<u8> = stored[i..(i + 2).min(stored.len())].concat();
            assert_eq!(region_bytes(&info), want, "read from {start}");
        }
    }
}

#[test]
fn batch_headers_lists_every_batch() {
    let (_h, log, b) = read_setup();
    let headers = log.batch_headers(0, i64::MAX).unwrap();
    let want: Vec<BatchHeader> = b.iter().map(|b| header(b)).collect();
    assert_eq!(headers, want);
    assert_eq!(log.batch_headers(4, 6).unwrap(), want[1..3].to_vec());
}

// ---------------------------------------------------------------------------
// Timestamps.

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    let (_h, log) = harness(LogConfig {
        segment_bytes: 150,
        ..small_config()
    });
    // Offsets 0..=2 with timestamps 100, 300, 200; 3 at 150; 4..=5 at 400, 50.
    append(
        &log,
        &[batch_of(&[
            (Some(b"a"), Some(b"1"), 100),
            (Some(b"b"), Some(b"2"), 300),
            (Some(b"c"), Some(b"3"), 200),
        ])],
        0,
    );
    append(&log, &[batch_of(&[(Some(b"d"), Some(b"4"), 150)])], 0);
    append(
        &log,
        &[batch_of(&[
            (Some(b"e"), Some(b"5"), 400),
            (Some(b"f"), Some(b"6"), 50),
        ])],
        0,
    );
    let at = |timestamp, offset| Some(TimestampOffset { timestamp, offset });
    assert_eq!(log.offset_for_timestamp(0).unwrap(), at(100, 0));
    assert_eq!(log.offset_for_timestamp(100).unwrap(), at(100, 0));
    assert_eq!(log.offset_for_timestamp(101).unwrap(), at(300, 1));
    assert_eq!(log.offset_for_timestamp(300).unwrap(), at(300, 1));
    assert_eq!(log.offset_for_timestamp(301).unwrap(), at(400, 4));
    assert_eq!(log.offset_for_timestamp(400).unwrap(), at(400, 4));
    assert_eq!(log.offset_for_timestamp(401).unwrap(), None);
    assert_eq!(
        log.max_timestamp_offset().unwrap(),
        at(400, 4),
        "max timestamp offset"
    );
    // The log start hides older records.
    log.delete_before(2).unwrap();
    assert_eq!(log.offset_for_timestamp(0).unwrap(), at(200, 2));
    assert_eq!(log.offset_for_timestamp(101).unwrap(), at(200, 2));
    assert_eq!(log.offset_for_timestamp(201).unwrap(), at(400, 4));
    log.delete_before(5).unwrap();
    assert_eq!(log.offset_for_timestamp(0).unwrap(), at(50, 5));
    assert_eq!(log.offset_for_timestamp(51).unwrap(), None);
}

/// The only record at or after the target in the first candidate segment is
/// below the log start; the answer is in a later segment.
#[test]
fn offset_for_timestamp_looks_past_a_segment_whose_match_is_below_log_start() {
    let (_h, log) = harness(one_segment_config());
    append(
        &log,
        &[batch_of(&[
            (Some(b"a"), Some(b"1"), 1000),
            (Some(b"b"), Some(b"2"), 1001),
        ])],
        0,
    );
    append(&log, &[batch_of(&[(Some(b"c"), Some(b"3"), 10)])], 0);
    log.roll().unwrap();
    append(&log, &[batch_of(&[(Some(b"d"), Some(b"4"), 500)])], 0);
    log.delete_before(2).unwrap();
    assert_eq!(
        log.offset_for_timestamp(500).unwrap(),
        Some(TimestampOffset {
            timestamp: 500,
            offset: 3
        })
    );
}

#[test]
fn timestamp_lookups_on_an_empty_log() {
    let (_h, log) = harness(one_segment_config());
    assert_eq!(log.offset_for_timestamp(0).unwrap(), None);
    assert_eq!(log.max_timestamp_offset().unwrap(), None);
}

#[test]
fn max_timestamp_offset_is_the_earliest_record_with_the_largest_timestamp() {
    let (h, log) = harness(LogConfig {
        segment_bytes: 200,
        ..small_config()
    });
    append(
        &log,
        &[batch_of(&[
            (Some(b"a"), Some(b"1"), 5),
            (Some(b"b"), Some(b"2"), 7),
        ])],
        0,
    );
    append(
        &log,
        &[batch_of(&[
            (Some(b"c"), Some(b"3"), 9),
            (Some(b"d"), Some(b"4"), 3),
        ])],
        0,
    );
    append(&log, &[batch_of(&[(Some(b"e"), Some(b"5"), 9)])], 0);
    append(&log, &[batch_of(&[(Some(b"f"), Some(b"6"), 1)])], 0);
    let expected = Some(TimestampOffset {
        timestamp: 9,
        offset: 2,
    });
    assert_eq!(log.max_timestamp_offset().unwrap(), expected);
    // The same after a clean reopen (indexes loaded, not rebuilt).
    let log = h.reopen_clean(log);
    assert_eq!(log.max_timestamp_offset().unwrap(), expected);
}

// ---------------------------------------------------------------------------
// Segments: rolling and index files.

#[test]
fn segments_roll_at_segment_bytes() {
    let one = simple_batch(1, 10).len() as u64;
    let (_h, log) = harness(LogConfig {
        segment_bytes: 3 * one,
        ..small_config()
    });
    for i in 0..7 {
        append(&log, &[simple_batch(1, 10 + i)], 0);
    }
    assert_eq!(log.segment_base_offsets(), vec![0, 3, 6]);
    // A request larger than a segment goes whole into a new one.
    append(
        &log,
        &[
            simple_batch(1, 20),
            simple_batch(1, 21),
            simple_batch(1, 22),
            simple_batch(1, 23),
        ],
        0,
    );
    assert_eq!(log.segment_base_offsets(), vec![0, 3, 6, 7]);
    assert_eq!(log.log_end_offset(), 11);
    append(&log, &[simple_batch(1, 24)], 0);
    assert_eq!(log.segment_base_offsets(), vec![0, 3, 6, 7, 11]);
}

/// `segment.ms` follows Kafka's rule: a segment is old when the incoming
/// batch's timestamp is `segment.ms` past the segment's first batch's, both
/// in the producer's time; the broker's clock counts only for batches
/// without timestamps.
#[test]
fn segments_roll_at_segment_ms() {
    let (h, log) = harness(LogConfig {
        segment_ms: 1000,
        ..one_segment_config()
    });
    append(&log, &[simple_batch(1, START_MS)], 0);
    append(&log, &[simple_batch(1, START_MS + 999)], 0);
    assert_eq!(log.segment_base_offsets(), vec![0]);
    append(&log, &[simple_batch(1, START_MS + 1000)], 0);
    assert_eq!(log.segment_base_offsets(), vec![0, 2]);
    // The clock alone does not age a segment whose batches carry time.
    h.clock.advance_ms(5000);
    append(&log, &[simple_batch(1, START_MS + 1001)], 0);
    assert_eq!(log.segment_base_offsets(), vec![0, 2]);
    // An empty active segment never rolls by time.
    log.roll().unwrap();
    assert_eq!(log.segment_base_offsets(), vec![0, 2, 4]);
    log.roll().unwrap();
    assert_eq!(
        log.segment_base_offsets(),
        vec![0, 2, 4],
        "rolling an empty segment is a no-op"
    );
    // Batches without timestamps (-1) age by the clock since the first append.
    append(&log, &[simple_batch(1, -1)], 0);
    h.clock.advance_ms(999);
    append(&log, &[simple_batch(1, -1)], 0);
    assert_eq!(log.segment_base_offsets(), vec![0, 2, 4]);
    h.clock.advance_ms(1);
    append(&log, &[simple_batch(1, -1)], 0);
    assert_eq!(log.segment_base_offsets(), vec![0, 2, 4, 6]);
}

/// `segment.ms` counts from the first batch of the active segment
/// (LogConfig's doc: "roll the active segment once its first batch is this
/// old"); Kafka takes that age from the first batch itself, so a restart does
/// not reset it. Otherwise a quiet partition whose broker restarts more often
/// than `segment.ms` never rolls, and retention never deletes anything.
#[test]
fn segment_ms_age_survives_a_restart() {
    let h = Harness::new(LogConfig {
        segment_ms: 1000,
        ..one_segment_config()
    });
    let log = h.open();
    append(&log, &[simple_batch(1, START_MS)], 0);
    let log = h.reopen_clean(log);
    h.clock.advance_ms(5000);
    append(&log, &[simple_batch(1, START_MS + 5000)], 0);
    assert_eq!(
        log.segment_base_offsets(),
        vec![0, 1],
        "a segment whose first batch is 5 s old with segment.ms=1000 did not roll after a reopen"
    );
}

#[test]
fn closed_segments_have_kafka_format_index_files_after_flush() {
    let config = LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 0,
        ..small_config()
    };
    let (h, log) = harness(config);
    let mut stored = Vec::new();
    for i in 0..5 {
        stored.push(append(
            &log,
            &[simple_batch(1 + i % 2, 1000 + 10 * i as i64)],
            0,
        ));
    }
    log.roll().unwrap();
    append(&log, &[simple_batch(1, 2000)], 0);
    log.flush().unwrap();
    let index = std::fs::read(h.segment_file(0, "index")).expect(".index of the closed segment");
    let time_index =
        std::fs::read(h.segment_file(0, "timeindex")).expect(".timeindex of the closed segment");
    // index.interval.bytes 0: an entry for every batch after the first.
    assert_eq!(index.len(), 4 * 8);
    assert_eq!(time_index.len(), 4 * 12);
    let mut position = stored[0].len() as u32;
    for ((relative_offset, file_position), b) in
        decode_offset_index(&index).into_iter().zip(&stored[1..])
    {
        let hd = header(b);
        assert_eq!(file_position, position);
        assert_eq!(i64::from(relative_offset), hd.last_offset());
        position += b.len() as u32;
    }
    let times = decode_time_index(&time_index);
    for (entry, b) in times.iter().zip(&stored[1..]) {
        let hd = header(b);
        assert_eq!(entry.0, hd.max_timestamp);
        assert!(
            (hd.base_offset..=hd.last_offset()).contains(&i64::from(entry.1)),
            "time index entry {entry:?} points into batch {}..={}",
            hd.base_offset,
            hd.last_offset()
        );
    }
    // Kafka names them with 20 digits; the active segment's exist after close.
    let names = file_names(&h.log_dir());
    assert!(
        names.contains(&"00000000000000000000.log".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"00000000000000000007.log".to_string()),
        "{names:?}"
    );
}

// ---------------------------------------------------------------------------
// Truncation.

#[test]
fn truncate_to_inside_a_segment() {
    let (_h, log) = harness(one_segment_config());
    let stored = split_batches(&append(
        &log,
        &[
            simple_batch(2, 10),
            simple_batch(2, 11),
            simple_batch(2, 12),
        ],
        0,
    ));
    log.flush().unwrap();
    assert_eq!(log.recovery_point(), 6);
    log.truncate_to(4).unwrap();
    assert_eq!(log.log_end_offset(), 4);
    assert_eq!(log.recovery_point(), 4);
    assert_eq!(read_all(&log), stored[..2].concat());
    // Inside a batch: the whole batch goes.
    log.truncate_to(3).unwrap();
    assert_eq!(log.log_end_offset(), 2);
    assert_eq!(read_all(&log), stored[0]);
    // At or past the end: nothing happens.
    log.truncate_to(2).unwrap();
    log.truncate_to(100).unwrap();
    assert_eq!(log.log_end_offset(), 2);
    let info = log.append(&mut simple_batch(1, 13), 0).unwrap();
    assert_eq!(info.base_offset, 2);
    assert_eq!(offsets(&read_all(&log)), vec![0, 1, 2]);
    assert_eq!(log.size_bytes(), read_all(&log).len() as u64);
}

#[test]
fn truncate_to_at_a_segment_boundary() {
    let (h, log) = harness(small_config().clone_with_min_segment());
    for i in 0..4 {
        append(&log, &[simple_batch(3, 10 + i)], 0);
    }
    assert_eq!(log.segment_base_offsets(), vec![0, 3, 6, 9]);
    let all = split_batches(&read_all(&log));
    log.truncate_to(6).unwrap();
    assert_eq!(log.log_end_offset(), 6);
    assert_eq!(read_all(&log), all[..2].concat());
    assert!(!h.segment_file(9, "log").exists(), "segment 9 deleted");
    log.truncate_to(3).unwrap();
    assert_eq!(log.log_end_offset(), 3);
    assert_eq!(read_all(&log), all[0]);
    assert!(!h.segment_file(6, "log").exists(), "segment 6 deleted");
    assert_eq!(*log.segment_base_offsets().first().unwrap(), 0);
    let info = log.append(&mut simple_batch(2, 20), 0).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (3, 4));
    assert_eq!(offsets(&read_all(&log)), vec![0, 1, 2, 3, 4]);
}

trait MinSegment {
    fn clone_with_min_segment(self) -> Self;
}

impl MinSegment for LogConfig {
    /// Every batch gets a segment of its own.
    fn clone_with_min_segment(self) -> Self {
        LogConfig {
            segment_bytes: LogConfig::SEGMENT_BYTES_MIN,
            ..self
        }
    }
}

#[test]
fn truncate_to_below_log_start_empties_the_log_and_restarts_it() {
    let (h, log) = harness(small_config().clone_with_min_segment());
    for i in 0..3 {
        append(&log, &[simple_batch(3, 10 + i)], i as i32);
    }
    log.delete_before(4).unwrap();
    log.truncate_to(2).unwrap();
    assert_eq!(log.log_start_offset(), 2);
    assert_eq!(log.log_end_offset(), 2);
    assert_eq!(log.segment_base_offsets(), vec![2]);
    assert!(log.leader_epochs().is_empty());
    assert!(read_all(&log).is_empty());
    assert_eq!(
        file_names(&h.log_dir())
            .iter()
            .filter(|n| n.ends_with(".log"))
            .count(),
        1
    );
    let info = log.append(&mut simple_batch(1, 20), 7).unwrap();
    assert_eq!(info.base_offset, 2);
    assert_eq!(
        log.leader_epochs(),
        vec![EpochEntry {
            epoch: 7,
            start_offset: 2
        }]
    );
    // truncate_fully_and_start_at does the same at any offset.
    log.truncate_fully_and_start_at(50).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (50, 50));
    assert_eq!(
        log.append(&mut simple_batch(1, 21), 8).unwrap().base_offset,
        50
    );
}

/// Truncating inside the batch that holds the log start must not leave the
/// log end below the log start (Kafka keeps logStart <= LEO: its
/// truncateTo sets the LEO to the target offset).
#[test]
fn truncate_to_inside_the_batch_holding_log_start_keeps_start_below_end() {
    let (_h, log) = harness(one_segment_config());
    append(&log, &[simple_batch(5, 10)], 0);
    log.delete_before(2).unwrap();
    log.truncate_to(3).unwrap();
    let (start, end) = (log.log_start_offset(), log.log_end_offset());
    assert!(start <= end, "log start {start} is above log end {end}");
    let info = log.append(&mut simple_batch(1, 11), 0).unwrap();
    assert!(
        info.base_offset >= start,
        "an append was given offset {} below the log start {start}",
        info.base_offset
    );
    let (_, bytes) = read_all_from(&log, log.log_start_offset());
    assert_eq!(decode_all(&bytes).last().unwrap().offset, info.base_offset);
}

#[test]
fn truncate_to_truncates_the_epoch_cache() {
    let (h, log) = harness(one_segment_config());
    append(&log, &[simple_batch(4, 10)], 1);
    append(&log, &[simple_batch(4, 11)], 3);
    append(&log, &[simple_batch(4, 12)], 5);
    log.flush().unwrap();
    let e = |epoch, start_offset| EpochEntry {
        epoch,
        start_offset,
    };
    assert_eq!(log.leader_epochs(), vec![e(1, 0), e(3, 4), e(5, 8)]);
    log.truncate_to(8).unwrap();
    assert_eq!(log.leader_epochs(), vec![e(1, 0), e(3, 4)]);
    assert_eq!(
        std::fs::read_to_string(h.log_dir().join("leader-epoch-checkpoint")).unwrap(),
        "0\n2\n1 0\n3 4\n"
    );
    log.truncate_to(5).unwrap();
    assert_eq!(log.log_end_offset(), 4);
    assert_eq!(log.leader_epochs(), vec![e(1, 0)]);
    assert_eq!(
        std::fs::read_to_string(h.log_dir().join("leader-epoch-checkpoint")).unwrap(),
        "0\n1\n1 0\n"
    );
    assert_eq!(log.end_offset_for_epoch(3), EpochEndOffset::UNDEFINED);
    assert_eq!(
        log.end_offset_for_epoch(1),
        EpochEndOffset {
            epoch: 1,
            end_offset: 4
        }
    );
}

// ---------------------------------------------------------------------------
// Deletion and retention.

#[test]
fn delete_before_moves_log_start_and_deletes_whole_segments() {
    let (h, log) = harness(small_config().clone_with_min_segment());
    for i in 0..4 {
        append(&log, &[simple_batch(3, 10 + i)], 0);
    }
    let all = split_batches(&read_all(&log));
    assert_eq!(log.segment_base_offsets(), vec![0, 3, 6, 9]);
    assert_eq!(log.delete_before(4).unwrap(), 4);
    assert_eq!(log.log_start_offset(), 4);
    assert_eq!(log.segment_base_offsets(), vec![3, 6, 9]);
    assert!(!h.segment_file(0, "log").exists());
    assert_eq!(
        read_all(&log),
        all[1..].concat(),
        "the batch holding the log start is kept whole"
    );
    expect_out_of_range(log.read(3, 100, i64::MAX), (3, 4, 12));
    // Backwards is a no-op; beyond the end or negative is out of range.
    assert_eq!(log.delete_before(1).unwrap(), 4);
    expect_out_of_range(log.delete_before(13), (13, 4, 12));
    expect_out_of_range(log.delete_before(-1), (-1, 4, 12));
    assert_eq!(log.log_start_offset(), 4);
    // Exactly at a segment base deletes everything before it.
    assert_eq!(log.delete_before(9).unwrap(), 9);
    assert_eq!(log.segment_base_offsets(), vec![9]);
    assert_eq!(read_all(&log), all[3]);
    // Up to the log end empties the log but keeps the active segment.
    assert_eq!(log.delete_before(12).unwrap(), 12);
    assert_eq!(log.log_start_offset(), 12);
    assert!(read_all(&log).is_empty());
    assert_eq!(
        log.append(&mut simple_batch(1, 20), 0).unwrap().base_offset,
        12
    );
    assert_eq!(log.log_start_offset(), 12);
}

#[test]
fn retention_ms_deletes_old_closed_segments_never_the_active_one() {
    let config = LogConfig {
        retention_ms: 1000,
        ..small_config().clone_with_min_segment()
    };
    let (h, log) = harness(config);
    // Segments [0] ts 100, [1] ts 400, [2] ts 600, [3] ts 900, [4] active ts 1200.
    for ts in [100, 400, 600, 900, 1200] {
        append(&log, &[simple_batch(1, ts)], 0);
    }
    assert_eq!(log.segment_base_offsets(), vec![0, 1, 2, 3, 4]);
    h.clock.set_ms(1500);
    assert_eq!(log.apply_retention().unwrap(), 2);
    assert_eq!(log.segment_base_offsets(), vec![2, 3, 4]);
    assert_eq!(log.log_start_offset(), 2);
    h.clock.set_ms(1600);
    assert_eq!(
        log.apply_retention().unwrap(),
        0,
        "600 is exactly retention.ms old"
    );
    h.clock.set_ms(1_000_000);
    assert_eq!(log.apply_retention().unwrap(), 2);
    assert_eq!(log.segment_base_offsets(), vec![4]);
    assert_eq!(log.log_start_offset(), 4);
    assert_eq!(offsets(&read_all(&log)), vec![4]);
    assert_eq!(log.apply_retention().unwrap(), 0);
}

#[test]
fn retention_bytes_deletes_oldest_segments_above_the_limit() {
    let one = simple_batch(1, 10).len() as i64;
    let config = LogConfig {
        retention_bytes: 2 * one + 1,
        ..small_config().clone_with_min_segment()
    };
    let (_h, log) = harness(config);
    for i in 0..5 {
        append(&log, &[simple_batch(1, START_MS + i)], 0);
    }
    assert_eq!(log.size_bytes(), 5 * one as u64);
    assert_eq!(log.apply_retention().unwrap(), 2);
    assert_eq!(log.segment_base_offsets(), vec![2, 3, 4]);
    assert_eq!(log.log_start_offset(), 2);
    log.set_config(LogConfig {
        retention_bytes: 0,
        ..log.config().as_ref().clone()
    })
    .unwrap();
    assert_eq!(log.apply_retention().unwrap(), 2);
    assert_eq!(
        log.segment_base_offsets(),
        vec![4],
        "the active segment stays"
    );
    assert_eq!(log.size_bytes(), one as u64);
}

#[test]
fn retention_does_nothing_under_compact_only_policy() {
    let config = LogConfig {
        retention_ms: 1,
        retention_bytes: 0,
        cleanup_policy: CleanupPolicy::COMPACT,
        ..small_config().clone_with_min_segment()
    };
    let (h, log) = harness(config);
    for i in 0..3 {
        append(&log, &[simple_batch(1, 10 + i)], 0);
    }
    h.clock.set_ms(i64::MAX / 2);
    assert_eq!(log.apply_retention().unwrap(), 0);
    assert_eq!(log.segment_base_offsets(), vec![0, 1, 2]);
}

// ---------------------------------------------------------------------------
// Compaction.

fn compact_config() -> LogConfig {
    LogConfig {
        cleanup_policy: CleanupPolicy::COMPACT,
        delete_retention_ms: 1000,
        segment_bytes: 300,
        ..small_config()
    }
}

/// (offset, key, value) of every record from the log start.
fn kv(log: &Log) -> Vec<(i64, String, Option<String>)> {
    decode_all(&read_all(log))
        .into_iter()
        .map(|r| {
            (
                r.offset,
                String::from_utf8(r.key.unwrap()).unwrap(),
                r.value.map(|v| String::from_utf8(v).unwrap()),
            )
        })
        .collect()
}

fn put(log: &Log, key: &str, value: Option<&str>, ts: i64) {
    append(
        log,
        &[batch_of(&[(
            Some(key.as_bytes()),
            value.map(str::as_bytes),
            ts,
        )])],
        0,
    );
}

#[test]
fn compaction_keeps_the_latest_value_per_key_with_offsets_unchanged() {
    let (h, log) = harness(compact_config());
    let ts = START_MS;
    // Offsets: 0 a=1, 1 b=1, 2 a=2, 3 c=1, 4 b=2, 5 a=3, [roll], 6 a=4, 7 d=1.
    for (k, v) in [
        ("a", "1"),
        ("b", "1"),
        ("a", "2"),
        ("c", "1"),
        ("b", "2"),
        ("a", "3"),
    ] {
        put(&log, k, Some(v), ts);
    }
    log.roll().unwrap();
    let active_base = *log.segment_base_offsets().last().unwrap();
    assert_eq!(active_base, 6);
    put(&log, "a", Some("4"), ts);
    put(&log, "d", Some("1"), ts);
    let (_, active_before) = read_all_from(&log, 6);
    let stats = log.compact(&CleanBounds::everything()).unwrap();
    assert!(stats.segments_cleaned >= 1, "{stats:?}");
    let s = |x: &str| x.to_string();
    assert_eq!(
        kv(&log),
        vec![
            (3, s("c"), Some(s("1"))),
            (4, s("b"), Some(s("2"))),
            (5, s("a"), Some(s("3"))),
            (6, s("a"), Some(s("4"))),
            (7, s("d"), Some(s("1"))),
        ],
        "the active segment's keys do not supersede closed segments' ones"
    );
    let (_, active_after) = read_all_from(&log, 6);
    assert_eq!(
        active_after, active_before,
        "the active segment is untouched"
    );
    assert_eq!(log.log_end_offset(), 8);
    for b in split_batches(&read_all(&log)) {
        batch::check(&b).unwrap();
    }
    // A second pass finds nothing to do.
    assert_eq!(
        log.compact(&CleanBounds::everything())
            .unwrap()
            .segments_cleaned,
        0
    );
    // Survives a clean reopen, and a crash reopen that rescans everything.
    let expected = kv(&log);
    let bytes = read_all(&log);
    let log = h.reopen_clean(log);
    assert_eq!(kv(&log), expected);
    assert_eq!(read_all(&log), bytes);
    drop(log);
    let log = h.open();
    assert_eq!(read_all(&log), bytes);
    assert_eq!(log.log_end_offset(), 8);
    // Reads from inside the gaps compaction left return the next batch.
    let (info, out) = read_bytes(&log, 1, 1, i64::MAX);
    assert_eq!(decode_all(&out)[0].offset, 3);
    assert!(info.next_offset > 3);
}

#[test]
fn compaction_drops_tombstones_only_after_delete_retention_ms() {
    let (h, log) = harness(compact_config());
    let t = START_MS;
    put(&log, "a", Some("1"), t);
    put(&log, "b", Some("1"), t);
    put(&log, "a", None, t + 10);
    log.roll().unwrap();
    put(&log, "z", Some("1"), t + 20);
    let s = |x: &str| x.to_string();
    // The tombstone's batch is delete.retention.ms old at t + 1010.
    h.clock.set_ms(t + 1010);
    log.compact(&CleanBounds::everything()).unwrap();
    assert_eq!(
        kv(&log),
        vec![
            (1, s("b"), Some(s("1"))),
            (2, s("a"), None),
            (3, s("z"), Some(s("1")))
        ]
    );
    h.clock.set_ms(t + 1011);
    let stats = log.compact(&CleanBounds::everything()).unwrap();
    assert_eq!(stats.tombstones_dropped, 1, "{stats:?}");
    assert_eq!(
        kv(&log),
        vec![(1, s("b"), Some(s("1"))), (3, s("z"), Some(s("1")))]
    );
    assert_eq!(log.log_end_offset(), 4);
    let log = h.reopen_clean(log);
    assert_eq!(
        kv(&log),
        vec![(1, s("b"), Some(s("1"))), (3, s("z"), Some(s("1")))]
    );
    assert_eq!(
        log.append(&mut simple_batch(1, t), 0).unwrap().base_offset,
        4
    );
}

#[test]
fn the_cleaner_cleans_only_as_far_as_its_key_map_reaches() {
    let (_h, log) = harness(LogConfig {
        segment_bytes: 1024 * 1024,
        ..compact_config()
    });
    // Offsets 0..4: keys k0..k3 once; 4..8: each again; then a roll.
    for round in 0..2 {
        for k in 0..4 {
            put(&log, &format!("k{k}"), Some(&round.to_string()), START_MS);
        }
    }
    log.roll().unwrap();
    // Room for two keys: the map covers offsets 0..2, so only k0 and k1's
    // first values can go, and nothing of k2, k3.
    let two_keys = 2 * (2 + 48);
    let stats = log.clean(two_keys, &CleanBounds::everything()).unwrap();
    assert!(stats.key_map_full, "{stats:?}");
    assert_eq!(stats.end_offset, 2);
    assert_eq!(
        kv(&log).iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4, 5, 6, 7],
        "the map saw only the first values: nothing superseded yet"
    );
    // The next passes go on from offset 2 and finish the tail.
    let stats = log.clean(two_keys, &CleanBounds::everything()).unwrap();
    assert_eq!(stats.end_offset, 4);
    let stats = log.clean(two_keys, &CleanBounds::everything()).unwrap();
    assert_eq!(stats.end_offset, 6);
    assert_eq!(
        kv(&log).iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![2, 3, 4, 5, 6, 7],
        "k0 and k1's second values cover their first"
    );
    let stats = log.clean(two_keys, &CleanBounds::everything()).unwrap();
    assert_eq!(stats.end_offset, 8);
    assert!(!stats.key_map_full);
    assert_eq!(
        kv(&log).iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![4, 5, 6, 7]
    );
    assert_eq!(log.dirtiness(i64::MAX).unwrap().cleanable_bytes, 0);
    // A map with room for all keys cleans the tail in one pass.
    for k in 0..4 {
        put(&log, &format!("k{k}"), Some("2"), START_MS);
    }
    log.roll().unwrap();
    let stats = log
        .clean(DEDUPE_BUFFER_BYTES_DEFAULT, &CleanBounds::everything())
        .unwrap();
    assert_eq!(stats.end_offset, 12);
    assert_eq!(
        kv(&log).iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![8, 9, 10, 11]
    );
}

#[test]
fn the_cleaner_leaves_records_younger_than_min_compaction_lag() {
    let (h, log) = harness(LogConfig {
        min_compaction_lag_ms: 1000,
        ..compact_config()
    });
    put(&log, "a", Some("1"), START_MS);
    log.roll().unwrap();
    put(&log, "a", Some("2"), START_MS + 500);
    log.roll().unwrap();
    put(&log, "a", Some("3"), START_MS + 900);
    log.roll().unwrap();
    h.clock.set_ms(START_MS + 1000);
    // Only the first segment is old enough; alone it supersedes nothing.
    let dirtiness = log.dirtiness(i64::MAX).unwrap();
    assert_eq!(dirtiness.first_uncleanable_offset, 1);
    log.clean(DEDUPE_BUFFER_BYTES_DEFAULT, &CleanBounds::everything())
        .unwrap();
    assert_eq!(kv(&log).len(), 3);
    // Once the second is old enough, it covers the first; the third is not.
    h.clock.set_ms(START_MS + 1600);
    log.clean(DEDUPE_BUFFER_BYTES_DEFAULT, &CleanBounds::everything())
        .unwrap();
    assert_eq!(kv(&log).iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2]);
}

#[test]
fn compaction_does_nothing_under_delete_policy_or_without_closed_segments() {
    let (_h, log) = harness(compact_config());
    put(&log, "a", Some("1"), 1);
    put(&log, "a", Some("2"), 2);
    assert_eq!(
        log.compact(&CleanBounds::everything())
            .unwrap()
            .segments_cleaned,
        0,
        "only the active segment"
    );
    assert_eq!(offsets(&read_all(&log)), vec![0, 1]);
    let (_h, log) = harness(small_config());
    put(&log, "a", Some("1"), 1);
    put(&log, "a", Some("2"), 2);
    log.roll().unwrap();
    assert_eq!(
        log.compact(&CleanBounds::everything())
            .unwrap()
            .segments_cleaned,
        0
    );
    assert_eq!(offsets(&read_all(&log)), vec![0, 1]);
}

#[test]
fn compaction_keeps_records_of_multi_record_batches_in_place() {
    let (_h, log) = harness(compact_config());
    append(
        &log,
        &[batch_of(&[
            (Some(b"x"), Some(b"1"), 1),
            (Some(b"y"), Some(b"1"), 2),
            (Some(b"x"), Some(b"2"), 3),
        ])],
        4,
    );
    append(&log, &[batch_of(&[(Some(b"y"), Some(b"2"), 4)])], 4);
    log.roll().unwrap();
    put(&log, "q", Some("1"), 5);
    log.compact(&CleanBounds::everything()).unwrap();
    let bytes = read_all(&log);
    let batches = split_batches(&bytes);
    let first = header(&batches[0]);
    assert_eq!(
        (first.base_offset, first.last_offset(), first.record_count),
        (0, 2, 1)
    );
    assert_eq!(first.partition_leader_epoch, 4);
    assert_eq!(first.max_timestamp, 3);
    let s = |x: &str| x.to_string();
    assert_eq!(
        kv(&log),
        vec![
            (2, s("x"), Some(s("2"))),
            (3, s("y"), Some(s("2"))),
            (4, s("q"), Some(s("1")))
        ]
    );
    assert_eq!(
        log.offset_for_timestamp(1).unwrap(),
        Some(TimestampOffset {
            timestamp: 3,
            offset: 2
        })
    );
}

// ---------------------------------------------------------------------------
// Leader epochs.

#[test]
fn leader_epochs_are_recorded_answered_and_persisted() {
    let (h, log) = harness(small_config());
    append(&log, &[simple_batch(2, 1)], 0);
    append(&log, &[simple_batch(1, 2)], 0);
    append(&log, &[simple_batch(1, 3)], 2);
    append(&log, &[simple_batch(2, 4)], 5);
    append(&log, &[simple_batch(1, 5)], 3); // older than the latest: ignored
    let e = |epoch, start_offset| EpochEntry {
        epoch,
        start_offset,
    };
    let expected = vec![e(0, 0), e(2, 3), e(5, 4)];
    assert_eq!(log.leader_epochs(), expected);
    assert_eq!(log.latest_epoch(), Some(5));
    let eo = |epoch, end_offset| EpochEndOffset { epoch, end_offset };
    assert_eq!(log.end_offset_for_epoch(0), eo(0, 3));
    assert_eq!(log.end_offset_for_epoch(1), eo(0, 3));
    assert_eq!(log.end_offset_for_epoch(2), eo(2, 4));
    assert_eq!(log.end_offset_for_epoch(4), eo(2, 4));
    assert_eq!(log.end_offset_for_epoch(5), eo(5, 7));
    assert_eq!(log.end_offset_for_epoch(6), EpochEndOffset::UNDEFINED);
    assert_eq!(log.end_offset_for_epoch(-1), EpochEndOffset::UNDEFINED);
    // The stored batches carry the epochs.
    let epochs: Vec<i32> = split_batches(&read_all(&log))
        .iter()
        .map(|b| header(b).partition_leader_epoch)
        .collect();
    assert_eq!(epochs, vec![0, 0, 2, 5, 3]);
    log.flush().unwrap();
    let checkpoint = h.log_dir().join("leader-epoch-checkpoint");
    assert_eq!(
        std::fs::read_to_string(&checkpoint).unwrap(),
        "0\n3\n0 0\n2 3\n5 4\n"
    );
    let log = h.reopen_clean(log);
    assert_eq!(log.leader_epochs(), expected);
    assert_eq!(log.end_offset_for_epoch(2), eo(2, 4));
    drop(log);
    let log = h.open();
    assert_eq!(log.leader_epochs(), expected, "after a crash reopen");
    // Moving the log start moves the first epoch's start.
    log.delete_before(1).unwrap();
    assert_eq!(log.leader_epochs(), vec![e(0, 1), e(2, 3), e(5, 4)]);
    log.delete_before(4).unwrap();
    assert_eq!(log.leader_epochs(), vec![e(5, 4)]);
}

// ---------------------------------------------------------------------------
// Flushing.

#[test]
fn flush_until_advances_the_recovery_point() {
    let (_h, log) = harness(small_config());
    for i in 0..5 {
        append(&log, &[simple_batch(2, i)], 0);
    }
    assert_eq!(log.recovery_point(), 0);
    log.flush_until(3).unwrap();
    let rp = log.recovery_point();
    assert!((3..=10).contains(&rp), "recovery point {rp}");
    log.flush_until(10).unwrap();
    assert_eq!(log.recovery_point(), 10);
    append(&log, &[simple_batch(1, 9)], 0);
    assert_eq!(log.recovery_point(), 10);
    log.flush_until(i64::MAX).unwrap();
    assert_eq!(log.recovery_point(), 11);
    log.flush().unwrap();
    assert_eq!(log.recovery_point(), 11);
}

#[test]
fn concurrent_appends_with_flush_share_fsyncs_and_all_succeed() {
    let h = Harness::new(small_config());
    let log = Arc::new(h.open());
    const THREADS: usize = 8;
    const PER_THREAD: usize = 25;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..PER_THREAD {
                    let value = format!("t{t}-{i}");
                    let mut b = batch_of(&[(Some(b"k"), Some(value.as_bytes()), i as i64)]);
                    let info = log.append(&mut b, 0).expect("append");
                    log.flush_until(info.last_offset + 1).expect("flush_until");
                    assert!(log.recovery_point() > info.last_offset);
                    mine.push((info.base_offset, value));
                }
                mine
            })
        })
        .collect();
    let mut appended = Vec::new();
    for handle in handles {
        appended.extend(handle.join().expect("thread"));
    }
    let total = (THREADS * PER_THREAD) as i64;
    assert_eq!(log.log_end_offset(), total);
    assert_eq!(log.recovery_point(), total);
    appended.sort();
    let records = decode_all(&read_all(&log));
    assert_eq!(records.len(), appended.len());
    for (record, (offset, value)) in records.iter().zip(&appended) {
        assert_eq!(record.offset, *offset);
        assert_eq!(record.value.as_deref(), Some(value.as_bytes()));
    }
}

// ---------------------------------------------------------------------------
// Closing and reopening.

#[test]
fn a_closed_log_refuses_every_operation() {
    let config = LogConfig {
        cleanup_policy: CleanupPolicy {
            delete: true,
            compact: true,
        },
        ..small_config()
    };
    let (_h, log) = harness(config);
    append(&log, &[simple_batch(3, 1)], 0);
    log.roll().unwrap();
    append(&log, &[simple_batch(3, 2)], 0);
    let bytes = read_all(&log);
    log.close().unwrap();
    log.close().unwrap();
    expect_closed(log.append(&mut simple_batch(1, 3), 0), "append");
    expect_closed(
        log.append_replicated(&split_batches(&bytes)[1]),
        "append_replicated",
    );
    expect_closed(log.read(0, 100, i64::MAX), "read");
    expect_closed(
        log.read_into(0, 100, i64::MAX, &mut Vec::new()),
        "read_into",
    );
    expect_closed(log.batch_headers(0, i64::MAX), "batch_headers");
    expect_closed(log.offset_for_timestamp(0), "offset_for_timestamp");
    expect_closed(log.max_timestamp_offset(), "max_timestamp_offset");
    expect_closed(log.truncate_to(1), "truncate_to");
    expect_closed(
        log.truncate_fully_and_start_at(1),
        "truncate_fully_and_start_at",
    );
    expect_closed(log.delete_before(1), "delete_before");
    expect_closed(log.apply_retention(), "apply_retention");
    expect_closed(log.compact(&CleanBounds::everything()), "compact");
    expect_closed(log.roll(), "roll");
    // Offsets are still answered.
    assert_eq!(log.log_end_offset(), 6);
}

#[test]
fn reopen_after_close_gives_identical_contents() {
    let (h, log) = harness(LogConfig {
        segment_bytes: 300,
        ..small_config()
    });
    for i in 0..20 {
        append(
            &log,
            &[simple_batch(1 + i % 4, 1000 + i as i64)],
            (i / 5) as i32,
        );
    }
    log.delete_before(3).unwrap();
    let bytes = read_all(&log);
    let (bases, start, end) = (
        log.segment_base_offsets(),
        log.log_start_offset(),
        log.log_end_offset(),
    );
    let (epochs, by_time, max_ts) = (
        log.leader_epochs(),
        log.offset_for_timestamp(1010).unwrap(),
        log.max_timestamp_offset().unwrap(),
    );
    let options = LogOpenOptions {
        recovery_point: end,
        log_start_offset: start,
        clean_shutdown: true,
    };
    log.close().unwrap();
    drop(log);
    let log = h.open_with(options);
    assert_eq!(read_all(&log), bytes);
    assert_eq!(log.segment_base_offsets(), bases);
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (start, end));
    assert_eq!(log.recovery_point(), end);
    assert_eq!(log.leader_epochs(), epochs);
    assert_eq!(log.offset_for_timestamp(1010).unwrap(), by_time);
    assert_eq!(log.max_timestamp_offset().unwrap(), max_ts);
    // Reads from every offset agree with a fresh full read.
    let stored = split_batches(&bytes);
    for b in &stored {
        let hd = header(b);
        let (_, out) = read_bytes(&log, hd.base_offset.max(start), 1, i64::MAX);
        assert_eq!(&out, b);
    }
    assert_eq!(
        log.append(&mut simple_batch(1, 5), 9).unwrap().base_offset,
        end
    );
}

// ---------------------------------------------------------------------------
// Replication.

#[test]
fn append_replicated_keeps_leader_offsets_and_epochs() {
    let leader_h = Harness::new(small_config());
    let leader = leader_h.open();
    append(&leader, &[simple_batch(2, 1), simple_batch(1, 2)], 3);
    append(&leader, &[simple_batch(3, 3)], 4);
    let bytes = read_all(&leader);

    let (_h, follower) = harness(small_config());
    let info = follower.append_replicated(&bytes).unwrap();
    assert_eq!(
        (info.base_offset, info.last_offset, info.batch_count),
        (0, 5, 3)
    );
    assert_eq!(info.log_append_time, -1);
    assert_eq!(read_all(&follower), bytes, "byte for byte the leader's");
    assert_eq!(follower.log_end_offset(), 6);
    assert_eq!(follower.leader_epochs(), leader.leader_epochs());

    // The same batches again are below the log end.
    match follower.append_replicated(&bytes) {
        Err(StorageError::Invalid {
            batch_index,
            reason,
        }) => {
            assert_eq!(batch_index, 0);
            assert_eq!(
                reason,
                InvalidRecord::OffsetBelowLogEnd {
                    base_offset: 0,
                    log_end_offset: 6
                }
            );
        }
        other => panic!("expected OffsetBelowLogEnd, got {other:?}"),
    }
    // Only the tail that is new: batch 2 is [3-5], already there.
    let last = split_batches(&bytes).pop().unwrap();
    assert!(follower.append_replicated(&last).is_err());
    assert_eq!(read_all(&follower), bytes);

    // A follower may truncate and catch up again.
    follower.truncate_to(3).unwrap();
    follower.append_replicated(&last).unwrap();
    assert_eq!(read_all(&follower), bytes);

    // A corrupt batch from the leader is refused.
    let mut bad = last.clone();
    bad[batch::BASE_OFFSET_AT + 7] = 6; // base offset 6: after the log end
    let n = bad.len();
    bad[n - 1] ^= 0xff;
    let reason = expect_corrupt(follower.append_replicated(&bad), 0);
    assert!(
        matches!(reason, CorruptBatch::CrcMismatch { .. }),
        "{reason:?}"
    );
    assert_eq!(follower.log_end_offset(), 6);
}

/// A follower's batches come from the network; offsets near i64::MAX must be
/// refused, not overflow.
#[test]
fn append_replicated_refuses_offsets_that_overflow() {
    let (_h, follower) = harness(small_config());
    let mut b = simple_batch(3, 1);
    b[batch::BASE_OFFSET_AT..batch::BASE_OFFSET_AT + 8]
        .copy_from_slice(&(i64::MAX - 1).to_be_bytes());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        follower.append_replicated(&b)
    }));
    match result {
        Err(_) => panic!("append_replicated panicked on base offset i64::MAX - 1 with 3 records"),
        Ok(result) => assert!(result.is_err(), "accepted: {result:?}"),
    }
}

#[test]
fn compaction_keeps_log_append_time_and_crc() {
    let config = LogConfig {
        timestamp_type: TimestampType::LogAppendTime,
        ..compact_config()
    };
    let (h, log) = harness(config);
    h.clock.set_ms(START_MS + 5);
    append(
        &log,
        &[batch_of(&[
            (Some(b"a"), Some(b"1"), 1),
            (Some(b"b"), Some(b"1"), 2),
            (Some(b"a"), Some(b"2"), 3),
        ])],
        0,
    );
    h.clock.set_ms(START_MS + 6);
    put(&log, "b", Some("2"), 4);
    log.roll().unwrap();
    put(&log, "c", Some("1"), 5);
    log.compact(&CleanBounds::everything()).unwrap();
    let bytes = read_all(&log);
    let batches = split_batches(&bytes);
    let first = batch::check(&batches[0]).unwrap();
    assert_eq!(first.timestamp_type(), TimestampType::LogAppendTime);
    assert_eq!(
        first.max_timestamp,
        START_MS + 5,
        "the append time survives the rewrite"
    );
    assert_eq!(
        (first.base_offset, first.last_offset(), first.record_count),
        (0, 2, 1)
    );
    let records = decode_all(&bytes);
    assert_eq!(records[0].offset, 2);
    assert_eq!(records[0].timestamp, START_MS + 5);
}

#[test]
fn compaction_rewrites_compressed_batches_with_their_codec() {
    use rill_storage::Compression;
    for codec in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let (_h, log) = harness(compact_config());
        let mut builder = BatchBuilder::new();
        builder.compression = codec;
        for (k, v) in [("a", "1"), ("b", "1"), ("a", "2"), ("c", "1")] {
            builder.push(Some(k.as_bytes()), Some(v.repeat(40).as_bytes()), START_MS);
        }
        append(&log, &[builder.build()], 0);
        put(&log, "c", Some("2"), START_MS);
        log.roll().unwrap();
        put(&log, "z", Some("1"), START_MS);
        log.compact(&CleanBounds::everything()).unwrap();
        let bytes = read_all(&log);
        let batches = split_batches(&bytes);
        let first = header(&batches[0]);
        assert_eq!(first.compression().unwrap(), codec);
        assert_eq!(
            (first.base_offset, first.last_offset(), first.record_count),
            (0, 3, 2)
        );
        let s = |x: &str| x.to_string();
        assert_eq!(
            kv(&log),
            vec![
                (1, s("b"), Some("1".repeat(40))),
                (2, s("a"), Some("2".repeat(40))),
                (4, s("c"), Some(s("2"))),
                (5, s("z"), Some(s("1"))),
            ],
            "{codec:?}"
        );
    }
}

/// The cleaner's bounds when `producer_id` is active, its last data batch
/// ending at `last_data_offset`.
fn with_producer(producer_id: i64, last_data_offset: i64) -> CleanBounds {
    CleanBounds {
        producers: [(
            producer_id,
            rill_storage::ProducerTail {
                last_data_offset: Some(last_data_offset),
            },
        )]
        .into(),
        ..CleanBounds::everything()
    }
}

/// An active idempotent producer's last batch, its records all superseded,
/// stays as an empty batch, so its producer state (sequence numbers)
/// survives; once the producer is gone (expired), it goes too.
#[test]
fn compaction_keeps_an_emptied_last_batch_of_an_active_producer() {
    let (h, log) = harness(compact_config());
    let mut builder = BatchBuilder::new();
    builder.producer_id = 42;
    builder.producer_epoch = 1;
    builder.base_sequence = 0;
    builder
        .push(Some(b"a"), Some(b"1"), START_MS)
        .push(Some(b"b"), Some(b"1"), START_MS);
    append(&log, &[builder.build()], 0);
    put(&log, "a", Some("2"), START_MS);
    put(&log, "b", Some("2"), START_MS);
    log.roll().unwrap();
    put(&log, "z", Some("1"), START_MS);
    log.compact(&with_producer(42, 1)).unwrap();
    let headers = log.batch_headers(0, i64::MAX).unwrap();
    let first = headers[0];
    assert_eq!(
        (first.base_offset, first.last_offset(), first.record_count),
        (0, 1, 0)
    );
    assert_eq!(
        (first.producer_id, first.producer_epoch, first.base_sequence),
        (42, 1, 0)
    );
    let s = |x: &str| x.to_string();
    assert_eq!(
        kv(&log),
        vec![
            (2, s("a"), Some(s("2"))),
            (3, s("b"), Some(s("2"))),
            (4, s("z"), Some(s("1")))
        ]
    );
    // It survives a crash reopen's full scan and a follower's copy.
    let bytes = read_all(&log);
    drop(log);
    let log = h.open();
    assert_eq!(read_all(&log), bytes);
    let (_f, follower) = harness(compact_config());
    follower.append_replicated(&bytes).unwrap();
    assert_eq!(read_all(&follower), bytes);
    assert_eq!(follower.log_end_offset(), 5);
    // With the producer gone, nothing of it is kept.
    let stats = log.compact(&CleanBounds::everything()).unwrap();
    assert_eq!(stats.batches_removed, 1, "{stats:?}");
    let headers = log.batch_headers(0, i64::MAX).unwrap();
    assert!(headers.iter().all(|h| h.producer_id != 42), "{headers:?}");
}

#[test]
fn compaction_empties_a_superseded_committed_batch_and_keeps_its_marker() {
    let (_h, log) = harness(compact_config());
    let mut txn = BatchBuilder::new();
    txn.producer_id = 7;
    txn.producer_epoch = 0;
    txn.base_sequence = 0;
    txn.is_transactional = true;
    txn.push(Some(b"a"), Some(b"1"), START_MS);
    let txn = txn.build();
    let mut marker = BatchBuilder::new();
    marker.producer_id = 7;
    marker.producer_epoch = 0;
    marker.is_transactional = true;
    marker.is_control = true;
    // A COMMIT marker: key version 0 type 1, value version 0 coordinator epoch 0.
    marker.push(Some(&[0, 0, 0, 1]), Some(&[0, 0, 0, 0, 0, 0]), START_MS);
    let marker = marker.build();
    append(&log, &[txn.clone(), marker.clone()], 0);
    put(&log, "a", Some("2"), START_MS);
    log.roll().unwrap();
    put(&log, "z", Some("1"), START_MS);
    log.compact(&with_producer(7, 0)).unwrap();
    let stored = split_batches(&read_all(&log));
    assert_eq!(stored.len(), 4);
    assert_eq!(header(&stored[0]).base_offset, 0);
    // The committed "a" = 1 is superseded by "a" = 2: its batch, the
    // producer's last, stays, empty, with its producer fields, for the
    // producer state; and so its marker stays as it was.
    let emptied = header(&stored[0]);
    assert!(emptied.is_transactional());
    assert_eq!(emptied.record_count, 0);
    assert_eq!(
        (
            emptied.producer_id,
            emptied.base_sequence,
            emptied.last_offset_delta
        ),
        (7, 0, 0)
    );
    assert!(header(&stored[1]).is_control());
    assert_eq!(stored[1][batch::MAGIC_AT..], marker[batch::MAGIC_AT..]);
}

// ---------------------------------------------------------------------------
// Concurrency.

/// Consumers read below the high watermark while the log appends and a
/// follower-style truncation cuts above it: every read returns whole, valid
/// batches and never an error.
#[test]
fn reads_below_the_high_watermark_are_stable_under_appends_and_truncation() {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    let h = Harness::new(small_config());
    let log = Arc::new(h.open());
    for i in 0..30 {
        log.append(&mut simple_batch(3, i), 0).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let high_watermark = Arc::new(AtomicI64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|seed| {
            let (log, stop, high_watermark) = (
                Arc::clone(&log),
                Arc::clone(&stop),
                Arc::clone(&high_watermark),
            );
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed + 1);
                let mut reads = 0;
                while !stop.load(Ordering::SeqCst) || reads < 100 {
                    let hw = high_watermark.load(Ordering::SeqCst);
                    let start = log.log_start_offset();
                    let offset = start + rng.below((hw - start).max(0) as u64 + 1) as i64;
                    let mut out = Vec::new();
                    let info = log
                        .read_into(offset, 1 + rng.below(2000), hw, &mut out)
                        .expect("read");
                    for b in split_batches(&out) {
                        let hd = header(&b);
                        assert!(hd.last_offset() < hw && hd.last_offset() >= offset);
                    }
                    assert!(info.next_offset <= hw.max(offset));
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let mut rng = Rng::new(99);
    for i in 0..1500 {
        let end = log.log_end_offset();
        let mut hw = high_watermark.load(Ordering::SeqCst);
        // The log end is a batch boundary, as a high watermark always is;
        // truncating at or above it never cuts a batch below it.
        if rng.below(10) == 0 {
            hw = end;
            high_watermark.store(hw, Ordering::SeqCst);
        }
        if rng.below(4) == 0 && end - 1 > hw {
            log.truncate_to((end - 1 - rng.below(15) as i64).max(hw))
                .unwrap();
        } else {
            log.append(&mut simple_batch(1 + rng.below(3) as usize, i), 0)
                .unwrap();
        }
        if i % 100 == 0 {
            log.flush().unwrap();
        }
    }
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        assert!(reader.join().expect("reader") >= 100);
    }
}

// ---------------------------------------------------------------------------
// The log manager.

mod manager {
    use super::*;
    use rill_storage::{LogManager, LogManagerConfig};
    use rill_types::{Clock, ManualClock, TopicName, TopicPartition};

    fn tp(partition: i32) -> TopicPartition {
        TopicPartition::new(TopicName::new("events").unwrap(), partition)
    }

    fn open(dir: &std::path::Path) -> LogManager {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(START_MS));
        LogManager::open(
            dir,
            LogManagerConfig {
                default_log_config: small_config(),
                ..LogManagerConfig::default()
            },
            clock,
        )
        .unwrap()
    }

    fn checkpoint_lines(dir: &std::path::Path, name: &str) -> Vec<String> {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let mut lines: Vec<String> = text.lines().skip(2).map(str::to_string).collect();
        lines.sort();
        lines
    }

    /// A segment damaged on disk after it was written stops the cleaner for
    /// that log with an error that names the file and the position; the log
    /// is then left alone (Kafka's uncleanable partitions), so that the
    /// other logs are still cleaned rather than starved behind it.
    #[test]
    fn the_cleaner_reports_a_corrupt_segment_and_cleans_the_other_logs() {
        let dir = tempfile::tempdir().unwrap();
        let manager = open(dir.path());
        let config = LogConfig {
            segment_bytes: 200,
            cleanup_policy: rill_storage::CleanupPolicy::COMPACT,
            ..small_config()
        };
        // Four healthy logs beside the damaged one: whatever order the
        // manager visits them in, stopping at the damaged one would leave
        // some of them uncleaned.
        let damaged = tp(0);
        let healthy: Vec<TopicPartition> = (1..5).map(tp).collect();
        for tp in std::iter::once(&damaged).chain(&healthy) {
            let log = manager.get_or_create(tp, config.clone()).unwrap();
            for i in 0..6 {
                // Every batch rewrites the same key, so compaction has work.
                log.append(&mut batch_of(&[(Some(b"k"), Some(b"v"), START_MS + i)]), 0)
                    .unwrap();
            }
            assert!(log.segment_count() > 2);
        }
        let first_segment = dir
            .path()
            .join(damaged.dir_name())
            .join("00000000000000000000.log");
        let mut bytes = std::fs::read(&first_segment).unwrap();
        // A byte of the first batch's records, which its CRC covers.
        bytes[63] ^= 0xff;
        std::fs::write(&first_segment, bytes).unwrap();

        let mut errors = Vec::new();
        for _ in 0..10 {
            let round = manager.clean_dirtiest(
                rill_storage::DEDUPE_BUFFER_BYTES_DEFAULT,
                |_, _| i64::MAX,
                |_, _| CleanBounds::everything(),
            );
            match round.cleaned {
                None => break,
                Some((tp, Err(error))) => errors.push((tp, error)),
                Some((_, Ok(_))) => {}
            }
        }
        assert_eq!(errors.len(), 1, "{errors:?}");
        let (failed, error) = errors.remove(0);
        assert_eq!(failed, damaged);
        assert_eq!(
            manager
                .clean_dirtiest(1 << 20, |_, _| i64::MAX, |_, _| CleanBounds::everything())
                .uncleanable_partitions,
            1
        );
        match &error {
            StorageError::CorruptLog { path, position, .. } => {
                assert_eq!(path, &first_segment);
                assert_eq!(*position, 0);
            }
            other => panic!("expected CorruptLog, got {other:?}"),
        }
        assert!(
            error.to_string().contains("00000000000000000000.log"),
            "{error}"
        );
        for tp in &healthy {
            let kept = decode_all(&read_all(&manager.get(tp).unwrap()));
            assert!(kept.len() < 6, "{tp} was not compacted: {kept:?}");
        }
    }

    #[test]
    fn creates_checkpoints_and_restarts_cleanly() {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let manager = open(dir.path());
        assert!(manager.is_empty());
        for p in 0..3 {
            let log = manager.get_or_create(&tp(p), small_config()).unwrap();
            for i in 0..=p {
                log.append(&mut simple_batch(2, i as i64), 0).unwrap();
            }
        }
        assert_eq!(manager.len(), 3);
        assert!(dir.path().join("events-2").is_dir());
        assert_eq!(manager.delete_before(&tp(2), 3).unwrap(), Some(3));
        assert_eq!(manager.delete_before(&tp(9), 3).unwrap(), None);
        assert_eq!(
            checkpoint_lines(dir.path(), "log-start-offset-checkpoint"),
            vec!["events 0 0", "events 1 0", "events 2 3"]
        );
        manager.get(&tp(1)).unwrap().flush().unwrap();
        manager.checkpoint().unwrap();
        assert_eq!(
            checkpoint_lines(dir.path(), "recovery-point-offset-checkpoint"),
            vec!["events 0 0", "events 1 4", "events 2 0"]
        );
        manager.truncate_to(&tp(1), 2).unwrap();
        assert_eq!(
            checkpoint_lines(dir.path(), "recovery-point-offset-checkpoint"),
            vec!["events 0 0", "events 1 2", "events 2 0"],
            "a truncation lowers the checkpointed recovery point at once"
        );
        manager.shutdown().unwrap();
        assert!(dir.path().join(".kafka_cleanshutdown").exists());
        drop(manager);

        let manager = open(dir.path());
        assert!(
            !dir.path().join(".kafka_cleanshutdown").exists(),
            "the marker goes at start-up"
        );
        let ends: Vec<(i64, i64)> = (0..3)
            .map(|p| {
                let log = manager.get(&tp(p)).unwrap();
                (log.log_start_offset(), log.log_end_offset())
            })
            .collect();
        assert_eq!(ends, vec![(0, 2), (0, 2), (3, 6)]);
        assert_eq!(
            checkpoint_lines(dir.path(), "recovery-point-offset-checkpoint"),
            vec!["events 0 2", "events 1 2", "events 2 6"]
        );
    }

    #[test]
    fn deletes_logs_and_finishes_interrupted_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let manager = open(dir.path());
        let log = manager.get_or_create(&tp(0), small_config()).unwrap();
        log.append(&mut simple_batch(1, 1), 0).unwrap();
        manager.get_or_create(&tp(1), small_config()).unwrap();
        assert!(manager.delete(&tp(0)).unwrap());
        assert!(!manager.delete(&tp(0)).unwrap());
        assert!(manager.get(&tp(0)).is_none());
        assert!(!dir.path().join("events-0").exists());
        expect_closed(log.read(0, 100, i64::MAX), "read after delete");
        assert_eq!(
            checkpoint_lines(dir.path(), "log-start-offset-checkpoint"),
            vec!["events 1 0"]
        );
        manager.shutdown().unwrap();
        drop(manager);
        // A deletion interrupted after the rename, and a stray directory.
        std::fs::create_dir_all(dir.path().join("events-1.1234-delete")).unwrap();
        std::fs::write(
            dir.path()
                .join("events-1.1234-delete/00000000000000000000.log"),
            b"x",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("not a partition")).unwrap();
        let manager = open(dir.path());
        assert_eq!(manager.partitions(), vec![tp(1)]);
        assert!(!dir.path().join("events-1.1234-delete").exists());
    }

    #[test]
    fn a_second_manager_cannot_open_the_same_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path());
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(START_MS));
        let second = LogManager::open(dir.path(), LogManagerConfig::default(), clock);
        assert!(matches!(second, Err(StorageError::Io { .. })), "{second:?}");
    }

    #[test]
    fn get_or_create_gives_an_existing_log_its_new_config() {
        let dir = tempfile::tempdir().unwrap();
        let manager = open(dir.path());
        let log = manager.get_or_create(&tp(0), small_config()).unwrap();
        let compacted = LogConfig {
            cleanup_policy: CleanupPolicy::COMPACT,
            ..small_config()
        };
        let again = manager.get_or_create(&tp(0), compacted.clone()).unwrap();
        assert!(Arc::ptr_eq(&log, &again));
        assert_eq!(*log.config(), compacted);
        let invalid = LogConfig {
            segment_bytes: 0,
            ..small_config()
        };
        assert!(matches!(
            manager.get_or_create(&tp(0), invalid.clone()),
            Err(StorageError::InvalidConfig(_))
        ));
        assert!(matches!(
            manager.get_or_create(&tp(1), invalid),
            Err(StorageError::InvalidConfig(_))
        ));
        assert!(manager.get(&tp(1)).is_none());
    }

    #[test]
    fn run_cleanup_applies_retention_and_the_cleaner_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(START_MS));
        let manager = LogManager::open(
            dir.path(),
            LogManagerConfig::default(),
            Arc::clone(&clock) as Arc<dyn Clock>,
        )
        .unwrap();
        let delete = manager
            .get_or_create(
                &tp(0),
                LogConfig {
                    retention_ms: 1000,
                    ..small_config().clone_with_min_segment()
                },
            )
            .unwrap();
        let compact = manager.get_or_create(&tp(1), compact_config()).unwrap();
        for i in 0..3 {
            delete
                .append(&mut simple_batch(1, START_MS + i), 0)
                .unwrap();
        }
        put(&compact, "a", Some("1"), START_MS);
        put(&compact, "a", Some("2"), START_MS);
        compact.roll().unwrap();
        clock.set_ms(START_MS + 5000);
        manager.run_cleanup().unwrap();
        assert_eq!(delete.segment_base_offsets(), vec![2]);
        assert_eq!(delete.log_start_offset(), 2);
        assert_eq!(
            offsets(&read_all(&compact)),
            vec![0, 1],
            "retention does not compact"
        );
        assert_eq!(
            checkpoint_lines(dir.path(), "log-start-offset-checkpoint"),
            vec!["events 0 2", "events 1 0"]
        );
        let round = manager.clean_dirtiest(
            DEDUPE_BUFFER_BYTES_DEFAULT,
            |_, _| i64::MAX,
            |_, _| CleanBounds::everything(),
        );
        assert_eq!(round.max_dirty_ratio, 1.0);
        let (cleaned, stats) = round.cleaned.unwrap();
        assert_eq!(cleaned, tp(1));
        assert_eq!(stats.unwrap().segments_cleaned, 1);
        assert_eq!(offsets(&read_all(&compact)), vec![1]);
        let round = manager.clean_dirtiest(
            DEDUPE_BUFFER_BYTES_DEFAULT,
            |_, _| i64::MAX,
            |_, _| CleanBounds::everything(),
        );
        assert_eq!(round.max_dirty_ratio, 0.0);
        assert!(round.cleaned.is_none(), "nothing dirty is left");
    }

    #[test]
    fn the_cleaner_takes_the_dirtiest_log_above_its_ratio_or_past_max_lag() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(START_MS));
        let manager = LogManager::open(
            dir.path(),
            LogManagerConfig::default(),
            Arc::clone(&clock) as Arc<dyn Clock>,
        )
        .unwrap();
        let config = |ratio: f64, max_lag_ms: i64| LogConfig {
            min_cleanable_dirty_ratio: ratio,
            max_compaction_lag_ms: max_lag_ms,
            ..compact_config()
        };
        // Cleaned once, then one closed dirty segment of four: ratio 1/4.
        let quarter = manager
            .get_or_create(&tp(0), config(0.5, i64::MAX))
            .unwrap();
        for key in ["a", "b", "c"] {
            put(&quarter, key, Some("1"), START_MS);
            quarter.roll().unwrap();
        }
        quarter
            .clean(DEDUPE_BUFFER_BYTES_DEFAULT, &CleanBounds::everything())
            .unwrap();
        put(&quarter, "a", Some("2"), START_MS);
        quarter.roll().unwrap();
        // Never cleaned: ratio 1, but its minimum is 1 (strictly above, as
        // in Kafka, so never by ratio).
        let whole = manager
            .get_or_create(&tp(1), config(1.0, i64::MAX))
            .unwrap();
        put(&whole, "a", Some("1"), START_MS);
        whole.roll().unwrap();
        let dirtiness = quarter.dirtiness(i64::MAX).unwrap();
        assert_eq!(dirtiness.dirty_ratio(), 0.25);
        assert!(!dirtiness.needs_cleaning());
        assert!(!whole.dirtiness(i64::MAX).unwrap().needs_cleaning());
        let round = manager.clean_dirtiest(
            DEDUPE_BUFFER_BYTES_DEFAULT,
            |_, _| i64::MAX,
            |_, _| CleanBounds::everything(),
        );
        assert_eq!(round.max_dirty_ratio, 1.0);
        assert!(round.cleaned.is_none());

        // A lower minimum makes the quarter-dirty log cleanable.
        quarter.set_config(config(0.2, i64::MAX)).unwrap();
        let (cleaned, _) = manager
            .clean_dirtiest(
                DEDUPE_BUFFER_BYTES_DEFAULT,
                |_, _| i64::MAX,
                |_, _| CleanBounds::everything(),
            )
            .cleaned
            .unwrap();
        assert_eq!(cleaned, tp(0));
        assert_eq!(quarter.dirtiness(i64::MAX).unwrap().dirty_ratio(), 0.0);

        // max.compaction.lag.ms passed: cleaned whatever the ratio says.
        whole.set_config(config(1.0, 1000)).unwrap();
        assert!(!whole.dirtiness(i64::MAX).unwrap().compaction_due);
        clock.set_ms(START_MS + 1001);
        assert!(whole.dirtiness(i64::MAX).unwrap().compaction_due);
        let (cleaned, _) = manager
            .clean_dirtiest(
                DEDUPE_BUFFER_BYTES_DEFAULT,
                |_, _| i64::MAX,
                |_, _| CleanBounds::everything(),
            )
            .cleaned
            .unwrap();
        assert_eq!(cleaned, tp(1));
    }
}
