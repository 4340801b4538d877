//! Log compaction (`cleanup.policy=compact`): rewrite closed segments keeping
//! only the latest record for each key.
//!
//! One pass reads every closed segment twice: first to learn each key's
//! latest offset, then to rewrite each segment without the records that a
//! later one supersedes. Offsets never change (a compacted log has gaps);
//! each batch keeps its base offset and its `lastOffsetDelta`, so producer
//! state derived from batch ends survives. Tombstones (null values) are
//! kept until `delete.retention.ms` past their batch's timestamp, so that a
//! consumer reading more slowly than that still sees the deletion. The
//! active segment is never touched, and keys in it do not yet supersede
//! older ones (as in Kafka, whose cleaner stops at the active segment).
//!
//! Control batches and transactional batches are kept as they are: cleaning
//! them needs the transaction state (aborted transactions, markers) that
//! arrives with the transactions work.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use tracing::info;

use crate::batch::{self, BatchHeader, TimestampType};
use crate::error::{CorruptBatch, Result, StorageError};
use crate::log::{ClosedSegment, Log};
use crate::records::{self, BatchBuilder};
use crate::segment::{self, BatchCursor, CursorError, CLEANED_SUFFIX, LOG_SUFFIX};

/// What one cleaning pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanerStats {
    pub segments_cleaned: usize,
    pub records_read: u64,
    pub records_kept: u64,
    pub tombstones_dropped: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

const READ_CHUNK_BYTES: usize = 1024 * 1024;

impl Log {
    /// Compacts the closed segments if the log's policy says so.
    pub fn compact(&self) -> Result<CleanerStats> {
        let config = self.config();
        let mut stats = CleanerStats::default();
        if !config.cleanup_policy.compact {
            return Ok(stats);
        }
        let segments = self.closed_segments()?;
        if segments.is_empty() {
            return Ok(stats);
        }

        // Pass 1: the latest offset of every key in the closed segments.
        let mut latest: HashMap<Vec<u8>, i64> = HashMap::new();
        for seg in &segments {
            for_each_batch(seg, |header, bytes| {
                if header.is_control() || header.is_transactional() {
                    return Ok(());
                }
                for record in records::decode_records(bytes)? {
                    if let Some(key) = record.key {
                        latest.insert(key, header.base_offset + i64::from(record.offset_delta));
                    }
                }
                Ok(())
            })?;
        }

        // Pass 2: rewrite each segment.
        let now_ms = self.clock_now_ms();
        let tombstone_horizon = now_ms.saturating_sub(config.delete_retention_ms);
        for seg in &segments {
            let (base_offset, file_id, size) = (seg.base_offset, seg.file_id, seg.size);
            let mut out = Vec::with_capacity(size as usize);
            let mut changed = false;
            for_each_batch(seg, |header, bytes| {
                if header.is_control() || header.is_transactional() {
                    out.extend_from_slice(bytes);
                    return Ok(());
                }
                let all = records::decode_records(bytes)?;
                let read = all.len();
                let keep_tombstones = header.max_timestamp >= tombstone_horizon;
                let mut kept = Vec::with_capacity(all.len());
                for record in all {
                    let offset = header.base_offset + i64::from(record.offset_delta);
                    let Some(key) = &record.key else { continue };
                    if latest.get(key) != Some(&offset) {
                        continue;
                    }
                    if record.value.is_none() && !keep_tombstones {
                        stats.tombstones_dropped += 1;
                        continue;
                    }
                    kept.push(record);
                }
                stats.records_read += read as u64;
                stats.records_kept += kept.len() as u64;
                if kept.len() == read {
                    out.extend_from_slice(bytes);
                } else if !kept.is_empty() || header.producer_id >= 0 {
                    // An emptied batch of an idempotent producer is kept as
                    // an empty batch so its sequence state survives.
                    out.extend_from_slice(&rebuild(header, kept)?);
                    changed = true;
                } else {
                    changed = true;
                }
                Ok(())
            })?;
            if !changed {
                continue;
            }
            let cleaned = self.dir().join(format!(
                "{}.{CLEANED_SUFFIX}",
                segment::file_name(base_offset, LOG_SUFFIX)
            ));
            let cleaned_file =
                File::create(&cleaned).map_err(StorageError::io("create", &cleaned))?;
            cleaned_file
                .write_all_at(&out, 0)
                .map_err(StorageError::io("write", &cleaned))?;
            cleaned_file
                .sync_all()
                .map_err(StorageError::io("fsync", &cleaned))?;
            drop(cleaned_file);
            if self.swap_cleaned(base_offset, file_id, size, &cleaned)? {
                stats.segments_cleaned += 1;
                stats.bytes_before += size;
                stats.bytes_after += out.len() as u64;
            }
        }
        if stats.segments_cleaned > 0 {
            info!(log = %self.name(), ?stats, "compacted");
        }
        Ok(stats)
    }
}

/// Re-encodes a batch with only `kept` records, keeping its base offset,
/// offset span, epoch, producer fields, codec and timestamps.
fn rebuild(
    header: &BatchHeader,
    kept: Vec<records::Record>,
) -> std::result::Result<Vec<u8>, CorruptBatch> {
    let mut builder = BatchBuilder::new();
    builder.base_offset = header.base_offset;
    builder.partition_leader_epoch = header.partition_leader_epoch;
    builder.compression = header.compression()?;
    builder.timestamp_type = header.timestamp_type();
    builder.base_timestamp = Some(header.base_timestamp);
    builder.producer_id = header.producer_id;
    builder.producer_epoch = header.producer_epoch;
    builder.base_sequence = header.base_sequence;
    builder.is_transactional = header.is_transactional();
    builder.is_control = header.is_control();
    builder.last_offset_delta = Some(header.last_offset_delta);
    for record in kept {
        builder.push_record(record);
    }
    if header.timestamp_type() == TimestampType::LogAppendTime {
        // The broker's append time is the batch's timestamp; keep it.
        builder.max_timestamp = Some(header.max_timestamp);
    }
    Ok(builder.build())
}

/// Calls `visit` with every batch of a segment file, in order. A batch that
/// fails its checks or whose records do not decode stops the pass with
/// [`StorageError::CorruptLog`], naming the file and position.
fn for_each_batch(
    seg: &ClosedSegment,
    mut visit: impl FnMut(&BatchHeader, &[u8]) -> std::result::Result<(), CorruptBatch>,
) -> Result<()> {
    let corrupt = |position, reason| StorageError::CorruptLog {
        path: seg.log_path.clone(),
        position,
        reason,
    };
    let mut cursor = BatchCursor::new(&seg.file, 0, seg.size, READ_CHUNK_BYTES);
    loop {
        let position = cursor.position;
        match cursor.next_batch() {
            Ok(Some(bytes)) => {
                let header = batch::check(bytes).map_err(|reason| corrupt(position, reason))?;
                visit(&header, bytes).map_err(|reason| corrupt(position, reason))?;
            }
            Ok(None) => return Ok(()),
            Err(CursorError::Corrupt(reason)) => return Err(corrupt(position, reason)),
            Err(CursorError::Io(e)) => return Err(StorageError::io("read", &seg.log_path)(e)),
        }
    }
}
