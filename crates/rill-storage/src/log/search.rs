//! Timestamp search: the first record at or after a time, and the record
//! holding the largest timestamp (ListOffsets).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use tracing::warn;

use crate::batch::{BatchHeader, TimestampType};
use crate::error::{Result, StorageError};
use crate::records;
use crate::segment::{self, BatchCursor, Segment};

use super::{lock, Log, ScanFrom, HEADER_CHUNK};

/// A record found by timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampOffset {
    pub timestamp: i64,
    pub offset: i64,
}

impl Log {
    /// The first record whose timestamp is at least `timestamp`, at or after
    /// the log start (ListOffsets by time). `None` if every record is older.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<TimestampOffset>> {
        let (mut scan, log_start_offset, mut time_entry, segment_start) = {
            let state = lock(&self.state);
            self.ensure_open(&state)?;
            let log_start_offset = state.log_start_offset;
            // Segments before the first whose largest timestamp reaches the
            // target hold nothing as new; within it, the time index says
            // where to begin.
            let Some(seg) = state
                .segments
                .values()
                .find(|s| s.max_timestamp >= timestamp && s.next_offset > log_start_offset)
            else {
                return Ok(None);
            };
            let entry = seg.time_index.last_below(timestamp);
            // The entry says the batch based at its offset first carried
            // its timestamp; that is checked when the scan gets there.
            let time_entry =
                entry.map(|e| (seg.base_offset + i64::from(e.relative_offset), e.timestamp));
            let from = time_entry.map_or(seg.base_offset, |(offset, _)| offset);
            let segment_start = seg.base_offset.max(log_start_offset);
            (
                self.plan_scan(&state, ScanFrom::Offset(from.max(log_start_offset)))?,
                log_start_offset,
                time_entry.filter(|&(offset, _)| offset >= log_start_offset),
                segment_start,
            )
        };
        'segments: while let Some(plan) = scan {
            let mut cursor =
                BatchCursor::new(&plan.file, plan.start_position, plan.size, HEADER_CHUNK)
                    .expecting_first(plan.expected_first);
            loop {
                let (position, header) = match cursor.next_located() {
                    Ok(Some(located)) => located,
                    Ok(None) | Err(segment::CursorError::Corrupt(_)) => break,
                    Err(segment::CursorError::Io(e)) => {
                        return Err(StorageError::io("read", &self.dir)(e))
                    }
                };
                if let Some((offset, entry_timestamp)) = time_entry {
                    if header.last_offset() >= offset {
                        time_entry = None;
                        if header.base_offset != offset || header.max_timestamp != entry_timestamp {
                            warn!(log = %self.name, offset, "time index entry disagrees with the log; scanning the segment from its start");
                            let state = lock(&self.state);
                            scan = self.plan_scan(&state, ScanFrom::Offset(segment_start))?;
                            continue 'segments;
                        }
                    }
                }
                if header.last_offset() < log_start_offset || header.max_timestamp < timestamp {
                    continue;
                }
                let bytes = read_batch(&plan.file, position, &header, &self.dir)?;
                let found = records_at_or_after(&bytes, &header, timestamp, log_start_offset);
                if found.is_some() {
                    return Ok(found);
                }
            }
            let state = lock(&self.state);
            scan = self.plan_scan(&state, ScanFrom::After(plan.base_offset))?;
        }
        Ok(None)
    }

    /// The earliest record carrying the largest timestamp in the log
    /// (ListOffsets MAX_TIMESTAMP). `None` for an empty log.
    pub fn max_timestamp_offset(&self) -> Result<Option<TimestampOffset>> {
        let (file, max_timestamp, batch_offset, size, position, expected_first) = {
            let state = lock(&self.state);
            self.ensure_open(&state)?;
            let mut best: Option<&Segment> = None;
            for seg in state.segments.values().filter(|s| !s.is_empty()) {
                if best.is_none_or(|b| seg.max_timestamp > b.max_timestamp) {
                    best = Some(seg);
                }
            }
            let Some(seg) = best else { return Ok(None) };
            let relative =
                u32::try_from(seg.offset_of_max_timestamp - seg.base_offset).unwrap_or(0);
            let position = seg
                .offset_index
                .floor(relative)
                .map_or(0, |e| u64::from(e.position));
            let file = seg.file(&self.files)?;
            let expected_first = seg.indexed_last_offset_at(position);
            (
                file,
                seg.max_timestamp,
                seg.offset_of_max_timestamp,
                seg.size,
                position,
                expected_first,
            )
        };
        let mut cursor =
            BatchCursor::new(&file, position, size, HEADER_CHUNK).expecting_first(expected_first);
        loop {
            match cursor.next_located() {
                Ok(Some((batch_position, header))) if header.base_offset == batch_offset => {
                    let bytes = read_batch(&file, batch_position, &header, &self.dir)?;
                    return Ok(
                        records_at_or_after(&bytes, &header, max_timestamp, i64::MIN).or(Some(
                            TimestampOffset {
                                timestamp: max_timestamp,
                                offset: batch_offset,
                            },
                        )),
                    );
                }
                Ok(Some(_)) => continue,
                Ok(None) | Err(segment::CursorError::Corrupt(_)) => return Ok(None),
                Err(segment::CursorError::Io(e)) => {
                    return Err(StorageError::io("read", &self.dir)(e))
                }
            }
        }
    }
}

fn read_batch(file: &File, position: u64, header: &BatchHeader, dir: &Path) -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; header.size()];
    file.read_exact_at(&mut bytes, position)
        .map_err(StorageError::io("read", dir))?;
    Ok(bytes)
}

/// The first record of `bytes` (one batch) at or after `timestamp` and
/// `min_offset`. A batch whose records cannot be decoded answers with its
/// first offset, so a lookup still lands near the right place.
fn records_at_or_after(
    bytes: &[u8],
    header: &BatchHeader,
    timestamp: i64,
    min_offset: i64,
) -> Option<TimestampOffset> {
    let log_append_time = header.timestamp_type() == TimestampType::LogAppendTime;
    match records::decode_records(bytes) {
        Ok(records) => records.iter().find_map(|r| {
            // Wrapping, as Kafka's Java arithmetic does: crafted deltas must
            // not panic.
            let offset = header.base_offset.wrapping_add(i64::from(r.offset_delta));
            let ts = if log_append_time {
                header.max_timestamp
            } else {
                header.base_timestamp.wrapping_add(r.timestamp_delta)
            };
            (ts >= timestamp && offset >= min_offset).then_some(TimestampOffset {
                timestamp: ts,
                offset,
            })
        }),
        Err(_) => Some(TimestampOffset {
            timestamp: header.max_timestamp,
            offset: header.base_offset.max(min_offset),
        }),
    }
}
