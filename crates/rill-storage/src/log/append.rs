//! Appending: produced batches (validated, offsets assigned) and
//! replicated ones (kept as the leader wrote them), and rolling to a new
//! segment.

use std::sync::Arc;

use crate::batch::{self, BatchHeader, TimestampType};
use crate::config::LogConfig;
use crate::error::{InvalidRecord, Result, StorageError};
use crate::records;
use crate::segment::Segment;

use super::{lock, Log, LogState};

/// The outcome of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The time stamped on the batches under LogAppendTime, else -1.
    pub log_append_time: i64,
    pub log_start_offset: i64,
    pub batch_count: usize,
}

/// The batches of one append, as the roll decision sees them.
#[derive(Debug)]
struct Incoming {
    bytes: u64,
    base_offset: i64,
    last_offset: i64,
    max_timestamp: i64,
}

impl Log {
    /// Checks every batch of a produce request's records: structure, CRC,
    /// record count, size, and keys on compacted logs. Returns their headers.
    fn validate_produced(records: &[u8], config: &LogConfig) -> Result<Vec<BatchHeader>> {
        let mut headers = Vec::new();
        for (batch_index, batch) in batch::split(records).enumerate() {
            let corrupt = |reason| StorageError::Corrupt {
                batch_index,
                reason,
            };
            let batch = batch.map_err(corrupt)?;
            if batch.len() as u64 > config.max_message_bytes {
                return Err(StorageError::BatchTooLarge {
                    size: batch.len(),
                    max: config.max_message_bytes as usize,
                });
            }
            let header = batch::check(batch).map_err(corrupt)?;
            batch::check_record_count(&header).map_err(corrupt)?;
            // Uncompressed records are walked (not decoded) to check that
            // the count is true; compressed ones would need decompressing,
            // which the produce path avoids unless the log is compacted.
            if header.compression() == Ok(crate::batch::Compression::None) {
                records::check_uncompressed_count(batch).map_err(corrupt)?;
            }
            if config.cleanup_policy.compact && !header.is_control() {
                let record_indexes = records::keyless_records(batch).map_err(corrupt)?;
                if !record_indexes.is_empty() {
                    return Err(StorageError::Invalid {
                        batch_index,
                        reason: InvalidRecord::MissingKeyOnCompactedTopic { record_indexes },
                    });
                }
            }
            headers.push(header);
        }
        if headers.is_empty() {
            return Err(StorageError::EmptyAppend);
        }
        Ok(headers)
    }

    /// Appends the record batches of a produce request as the partition's
    /// leader in `leader_epoch`: validates every batch, then assigns offsets
    /// (rewriting each `baseOffset`), stamps the epoch and, under
    /// LogAppendTime, the time. `records` is rewritten in place and written
    /// to the page cache; nothing is fsynced (see [`Log::flush_until`]).
    /// A rejected request leaves the log unchanged.
    pub fn append(&self, records: &mut [u8], leader_epoch: i32) -> Result<AppendInfo> {
        let config = self.config();
        let mut headers = Self::validate_produced(records, &config)?;
        let now_ms = self.clock.now_ms();
        let log_append_time = config.timestamp_type == TimestampType::LogAppendTime;
        // Everything that does not depend on the offsets happens before the lock.
        let mut position = 0;
        for header in &mut headers {
            let bytes = &mut records[position..position + header.size()];
            batch::set_partition_leader_epoch(bytes, leader_epoch);
            if log_append_time {
                batch::set_log_append_time(bytes, now_ms);
            }
            *header = BatchHeader::parse(bytes).expect("a validated header stays parseable");
            position += header.size();
        }

        let mut state = lock(&self.state);
        self.ensure_open(&state)?;
        let base_offset = state.log_end_offset();
        let mut next_offset = base_offset;
        let mut position = 0;
        for header in &mut headers {
            batch::set_base_offset(&mut records[position..], next_offset);
            header.base_offset = next_offset;
            next_offset = header.next_offset();
            position += header.size();
        }
        let last_offset = next_offset - 1;
        self.write_batches(
            &mut state,
            records,
            &headers,
            (base_offset, last_offset),
            now_ms,
        )?;
        state.epochs.assign(leader_epoch, base_offset);
        Ok(AppendInfo {
            base_offset,
            last_offset,
            log_append_time: if log_append_time { now_ms } else { -1 },
            log_start_offset: state.log_start_offset,
            batch_count: headers.len(),
        })
    }

    /// Appends batches fetched from the leader, as a follower: offsets and
    /// epochs are the leader's and are kept; the batches must start at or
    /// after this log's end.
    pub fn append_replicated(&self, records: &[u8]) -> Result<AppendInfo> {
        let mut headers = Vec::new();
        for (batch_index, batch) in batch::split(records).enumerate() {
            let corrupt = |reason| StorageError::Corrupt {
                batch_index,
                reason,
            };
            let header = batch::check(batch.map_err(corrupt)?).map_err(corrupt)?;
            if !header.offsets_are_sane() {
                return Err(StorageError::Invalid {
                    batch_index,
                    reason: InvalidRecord::BadOffsets {
                        base_offset: header.base_offset,
                        last_offset: header.last_offset(),
                    },
                });
            }
            headers.push(header);
        }
        let (Some(first), Some(last)) = (headers.first(), headers.last()) else {
            return Err(StorageError::EmptyAppend);
        };
        let (base_offset, last_offset) = (first.base_offset, last.last_offset());
        let now_ms = self.clock.now_ms();
        let mut state = lock(&self.state);
        self.ensure_open(&state)?;
        let mut expected = state.log_end_offset();
        for (batch_index, header) in headers.iter().enumerate() {
            if header.base_offset < expected {
                return Err(StorageError::Invalid {
                    batch_index,
                    reason: InvalidRecord::OffsetBelowLogEnd {
                        base_offset: header.base_offset,
                        log_end_offset: expected,
                    },
                });
            }
            expected = header.next_offset();
        }
        self.write_batches(
            &mut state,
            records,
            &headers,
            (base_offset, last_offset),
            now_ms,
        )?;
        for header in &headers {
            state
                .epochs
                .assign(header.partition_leader_epoch, header.base_offset);
        }
        Ok(AppendInfo {
            base_offset,
            last_offset,
            log_append_time: -1,
            log_start_offset: state.log_start_offset,
            batch_count: headers.len(),
        })
    }

    /// Writes whole batches (offsets final) at the end of the log, rolling
    /// first if the active segment cannot take them. Shared by leader and
    /// follower appends; the caller holds the state lock.
    fn write_batches(
        &self,
        state: &mut LogState,
        records: &[u8],
        headers: &[BatchHeader],
        (base_offset, last_offset): (i64, i64),
        now_ms: i64,
    ) -> Result<()> {
        if last_offset - base_offset > i64::from(i32::MAX) {
            // Offsets within a segment are 32-bit; no request may need more.
            return Err(StorageError::Invalid {
                batch_index: 0,
                reason: InvalidRecord::OffsetSpanTooLarge(last_offset - base_offset + 1),
            });
        }
        let incoming = Incoming {
            bytes: records.len() as u64,
            base_offset,
            last_offset,
            max_timestamp: headers.iter().map(|h| h.max_timestamp).max().unwrap_or(-1),
        };
        self.roll_if_needed(state, &incoming, now_ms)?;
        let index_interval_bytes = state.config.index_interval_bytes;
        let active = state.active_mut();
        let file = active.file(&self.files)?;
        active.append(&file, records, headers, index_interval_bytes, now_ms)
    }

    /// Rolls to a new segment at `base_offset` if the incoming bytes would
    /// overflow the active one by size, age, index capacity or offset range.
    fn roll_if_needed(&self, state: &mut LogState, incoming: &Incoming, now_ms: i64) -> Result<()> {
        let config = Arc::clone(&state.config);
        let active = state.active();
        // Kafka's rule: a segment is old when the incoming batches' largest
        // timestamp is `segment.ms` past the segment's first batch's (both
        // in the producers' time), or, for batches without timestamps, when
        // the clock is that far past the first append.
        let waited_ms = match active.rolling_timestamp_ms {
            Some(first) => incoming.max_timestamp.saturating_sub(first),
            None => active
                .first_append_ms
                .map_or(0, |t| now_ms.saturating_sub(t)),
        };
        let must_roll = !active.can_hold_offset(incoming.last_offset);
        let should_roll = !active.is_empty()
            && (active.size + incoming.bytes > config.segment_bytes
                || waited_ms >= config.segment_ms
                || active.indexes_full(&config));
        if must_roll || should_roll {
            self.roll_at(state, incoming.base_offset)?;
        }
        Ok(())
    }

    fn roll_at(&self, state: &mut LogState, base_offset: i64) -> Result<()> {
        let active = state.active();
        assert!(
            base_offset >= active.next_offset,
            "a new segment starts after the last"
        );
        if active.is_empty() {
            // An empty active segment is replaced rather than followed.
            let base = active.base_offset;
            if base == base_offset {
                return Ok(());
            }
            if let Some(old) = state.segments.remove(&base) {
                old.delete_files(&self.files)?;
            }
        }
        let segment = Segment::create(&self.dir, base_offset, &self.files)?;
        state.segments.insert(base_offset, segment);
        state.dir_dirty = true;
        Ok(())
    }

    /// Closes the active segment and starts a new one at the log end, if the
    /// active segment holds anything.
    pub fn roll(&self) -> Result<()> {
        let mut state = lock(&self.state);
        self.ensure_open(&state)?;
        if !state.active().is_empty() {
            let log_end_offset = state.log_end_offset();
            self.roll_at(&mut state, log_end_offset)?;
        }
        Ok(())
    }
}
