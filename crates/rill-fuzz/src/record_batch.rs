//! Target `record_batch`: the validation the produce path runs on client
//! record batches, and the validating append into a real log.

use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};

use rill_storage::batch::{self, BatchHeader};
use rill_storage::compression;
use rill_storage::records::{self, BatchBuilder, Header, Record};
use rill_storage::{
    CleanupPolicy, Compression, FileCache, Log, LogConfig, LogOpenOptions, TimestampType,
};
use rill_types::{Clock, ManualClock};

const NOW_MS: i64 = 1_700_000_000_000;
const LEADER_EPOCH: i32 = 7;

/// The first byte holds flags, the rest are the records of a produce
/// request; or, when the first byte is 0xff, the rest describes batches
/// that rill's own encoder builds ([`Produce`]), valid in format but with
/// any header fields, offsets, timestamps and codecs. Flags:
/// - bit 0: the CRC of every batch is recomputed first, so that the fuzzer
///   reaches what lies behind the CRC check;
/// - bit 1: the log is compacted (every record must have a key, which
///   decodes, and so decompresses, every batch);
/// - bit 2: the log uses LogAppendTime (the broker rewrites the batch);
/// - bit 3: the log already holds a batch;
/// - bits 4..7: the codec the raw bytes are also decompressed with.
pub fn record_batch(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    if flags == 0xff {
        if let Ok(produce) = Produce::arbitrary_take_rest(Unstructured::new(rest)) {
            let records = produce.build();
            check_batches(&records);
            append(
                &records,
                produce.compact,
                produce.log_append_time,
                produce.non_empty,
            );
        }
        return;
    }
    let mut records = rest.to_vec();
    if flags & 1 != 0 {
        fix_crcs(&mut records);
    }
    check_batches(&records);
    let codec = match (flags >> 4) % 5 {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        _ => Compression::Zstd,
    };
    let limit = 1 << 20;
    if let Ok(raw) = compression::decompress(codec, rest, limit) {
        assert!(raw.len() <= limit, "{codec:?} decompressed past its limit");
    }
    append(&records, flags & 2 != 0, flags & 4 != 0, flags & 8 != 0);
}

#[derive(Debug, Arbitrary)]
struct ArbitraryRecord {
    attributes: i8,
    timestamp_delta: i64,
    /// `None`: one past the largest so far.
    offset_delta: Option<i32>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

#[derive(Debug, Arbitrary)]
struct ArbitraryBatch {
    codec: u8,
    base_offset: i64,
    partition_leader_epoch: i32,
    log_append_time: bool,
    base_timestamp: Option<i64>,
    max_timestamp: Option<i64>,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    is_transactional: bool,
    is_control: bool,
    last_offset_delta: Option<i32>,
    records: Vec<ArbitraryRecord>,
}

/// A produce request's records, as batches built by [`BatchBuilder`].
#[derive(Debug, Arbitrary)]
struct Produce {
    compact: bool,
    log_append_time: bool,
    non_empty: bool,
    batches: Vec<ArbitraryBatch>,
}

impl Produce {
    fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for spec in self.batches.iter().take(4) {
            let mut builder = BatchBuilder {
                base_offset: spec.base_offset,
                partition_leader_epoch: spec.partition_leader_epoch,
                compression: match spec.codec % 5 {
                    0 => Compression::None,
                    1 => Compression::Gzip,
                    2 => Compression::Snappy,
                    3 => Compression::Lz4,
                    _ => Compression::Zstd,
                },
                timestamp_type: if spec.log_append_time {
                    TimestampType::LogAppendTime
                } else {
                    TimestampType::CreateTime
                },
                base_timestamp: spec.base_timestamp,
                max_timestamp: spec.max_timestamp,
                producer_id: spec.producer_id,
                producer_epoch: spec.producer_epoch,
                base_sequence: spec.base_sequence,
                is_transactional: spec.is_transactional,
                is_control: spec.is_control,
                last_offset_delta: spec.last_offset_delta,
                ..BatchBuilder::new()
            };
            for record in spec.records.iter().take(32) {
                let offset_delta = record.offset_delta.unwrap_or_else(|| {
                    builder
                        .records
                        .iter()
                        .map(|r| r.offset_delta.saturating_add(1))
                        .max()
                        .unwrap_or(0)
                });
                builder.push_record(Record {
                    attributes: record.attributes,
                    timestamp_delta: record.timestamp_delta,
                    offset_delta,
                    key: record.key.clone(),
                    value: record.value.clone(),
                    headers: record
                        .headers
                        .iter()
                        .map(|(key, value)| Header {
                            key: key.clone(),
                            value: value.clone(),
                        })
                        .collect(),
                });
            }
            out.extend_from_slice(&builder.build());
        }
        out
    }
}

/// Rewrites the CRC of each batch whose header and length are whole.
pub fn fix_crcs(records: &mut [u8]) {
    let mut at = 0;
    while let Ok(header) = BatchHeader::parse(&records[at..]) {
        let Some(end) = at
            .checked_add(header.size())
            .filter(|&e| e <= records.len())
        else {
            return;
        };
        let crc = batch::compute_crc(&records[at..end]);
        records[at + batch::CRC_AT..at + batch::CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        at = end;
    }
}

/// The pure checks, batch by batch; records that decode re-encode (with
/// rill's own encoder, the one compaction uses) to a batch that decodes to
/// the same records.
fn check_batches(records: &[u8]) {
    for batch in batch::split(records) {
        let Ok(batch) = batch else {
            break;
        };
        let checked = batch::check(batch);
        let _ = records::check_uncompressed_count(batch);
        let _ = records::all_records_have_keys(batch);
        let _ = records::first_record_at_or_after(batch, NOW_MS);
        let Ok(header) = checked else {
            continue;
        };
        let _ = batch::check_record_count(&header);
        let Ok(decoded) = records::decode_records(batch) else {
            continue;
        };
        let Ok(codec) = header.compression() else {
            continue;
        };
        let producer = header.producer_fields();
        let rebuilt = BatchBuilder {
            base_offset: header.base_offset,
            partition_leader_epoch: header.partition_leader_epoch,
            compression: codec,
            timestamp_type: header.timestamp_type(),
            base_timestamp: Some(header.base_timestamp),
            max_timestamp: Some(header.max_timestamp),
            producer_id: producer.producer_id,
            producer_epoch: producer.producer_epoch,
            base_sequence: producer.base_sequence,
            is_transactional: producer.is_transactional,
            is_control: producer.is_control,
            delete_horizon: header.has_delete_horizon(),
            last_offset_delta: Some(header.last_offset_delta),
            records: decoded.clone(),
        }
        .build();
        let rebuilt_header = batch::check(&rebuilt).expect("a built batch checks");
        assert_eq!(rebuilt_header.record_count as usize, decoded.len());
        assert_eq!(
            records::decode_records(&rebuilt).expect("a built batch decodes"),
            decoded,
            "records changed by re-encoding"
        );
    }
}

/// A real log in a temporary directory: the append either fails and
/// changes nothing, or assigns offsets from the log end, reads back byte
/// for byte as rewritten, and survives a full recovery.
fn append(records: &[u8], compact: bool, log_append_time: bool, non_empty: bool) {
    let dir = crate::temp_dir();
    let log_dir = dir.path().join("topic-0");
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(NOW_MS));
    let files = FileCache::new(8);
    let config = LogConfig {
        cleanup_policy: if compact {
            CleanupPolicy::COMPACT
        } else {
            CleanupPolicy::DELETE
        },
        timestamp_type: if log_append_time {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        },
        // Small segments, so that appends roll now and then.
        segment_bytes: 4096,
        index_interval_bytes: 64,
        ..LogConfig::default()
    };
    let open = || {
        Log::open(
            &log_dir,
            config.clone(),
            Arc::clone(&clock),
            Arc::clone(&files),
            LogOpenOptions::default(),
        )
        .expect("open the log")
    };
    let log = open();
    if non_empty {
        let mut first = BatchBuilder::new();
        first.push(Some(b"k"), Some(b"first"), NOW_MS);
        log.append(&mut first.build(), LEADER_EPOCH)
            .expect("append a valid batch");
    }
    let before = read_all(&log);
    let end_before = log.log_end_offset();

    let mut appended = records.to_vec();
    match log.append(&mut appended, LEADER_EPOCH) {
        Err(_) => {
            assert_eq!(
                log.log_end_offset(),
                end_before,
                "a rejected append moved the log end"
            );
            assert_eq!(read_all(&log), before, "a rejected append changed the log");
        }
        Ok(info) => {
            assert_eq!(info.base_offset, end_before);
            assert_eq!(log.log_end_offset(), info.last_offset + 1);
            let mut read = Vec::new();
            log.read_into(info.base_offset, u64::MAX, i64::MAX, &mut read)
                .expect("read the appended batches");
            assert!(
                read == appended,
                "the appended batches read back differently"
            );
            for batch in batch::split(&read) {
                let header = batch::check(batch.expect("whole batches")).expect("valid batches");
                assert_eq!(header.partition_leader_epoch, LEADER_EPOCH);
            }
            let after = read_all(&log);
            log.close().expect("close the log");
            drop(log);
            // Recovery must keep every batch the append accepted: the
            // producer was told they were written.
            let reopened = open();
            assert_eq!(
                reopened.log_end_offset(),
                info.last_offset + 1,
                "recovery lost appended batches"
            );
            assert!(read_all(&reopened) == after, "recovery changed the log");
        }
    }
}

/// Every byte of the log from its start.
pub(crate) fn read_all(log: &Log) -> Vec<u8> {
    let mut out = Vec::new();
    log.read_into(log.log_start_offset(), u64::MAX, i64::MAX, &mut out)
        .expect("read the log");
    out
}
