//! Reading: planning a scan under the lock, then finding whole batches in
//! segment files without it, for fetches (`sendfile` regions) and for
//! callers that need batch headers or bytes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use tracing::warn;

use crate::batch::BatchHeader;
use crate::error::{Result, StorageError};
use crate::segment::{self, BatchCursor};

use super::{lock, Log, LogState, ScanFrom, SegmentScan, HEADER_CHUNK};

/// A byte range of a segment file holding whole batches, ready for `sendfile`.
#[derive(Debug, Clone)]
pub struct FileRegion {
    pub file: Arc<File>,
    pub position: u64,
    pub len: u64,
}

/// The outcome of a read.
#[derive(Debug, Clone, Default)]
pub struct ReadInfo {
    pub regions: Vec<FileRegion>,
    /// Total bytes in `regions`.
    pub bytes: u64,
    /// The offset after the last batch returned (the start offset if none).
    pub next_offset: i64,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
}

impl Log {
    /// The next segment to scan and from which byte, chosen under the lock
    /// so that the scan itself can run without it.
    pub(super) fn plan_scan(
        &self,
        state: &LogState,
        from: ScanFrom,
    ) -> Result<Option<SegmentScan>> {
        let (seg, start_position) = match from {
            ScanFrom::Offset(offset) => {
                let Some(seg) = state.segment_for(offset) else {
                    return Ok(None);
                };
                let relative = u32::try_from(offset - seg.base_offset).unwrap_or(u32::MAX);
                let position = if offset > seg.base_offset {
                    seg.offset_index
                        .floor(relative)
                        .map_or(0, |e| u64::from(e.position))
                } else {
                    0
                };
                (seg, position)
            }
            ScanFrom::After(base) => match state.segments.range(base + 1..).next() {
                Some((_, seg)) => (seg, 0),
                None => return Ok(None),
            },
        };
        Ok(Some(SegmentScan {
            base_offset: seg.base_offset,
            file: seg.file(&self.files)?,
            start_position,
            size: seg.size,
            expected_first: seg.indexed_last_offset_at(start_position),
        }))
    }

    /// Reads whole batches from `start_offset` (the batch containing it
    /// first) up to `max_bytes`, excluding any batch whose last offset is at
    /// or beyond `upper_bound` (the high watermark for consumers, the log end
    /// for followers). The first batch is returned even if it alone exceeds
    /// `max_bytes`, so that a reader always makes progress.
    pub fn read(&self, start_offset: i64, max_bytes: u64, upper_bound: i64) -> Result<ReadInfo> {
        let mut info = ReadInfo {
            next_offset: start_offset,
            ..ReadInfo::default()
        };
        let mut scan = {
            let state = lock(&self.state);
            self.ensure_open(&state)?;
            info.log_start_offset = state.log_start_offset;
            info.log_end_offset = state.log_end_offset();
            if start_offset < state.log_start_offset || start_offset > info.log_end_offset {
                return Err(Self::out_of_range(&state, start_offset));
            }
            if start_offset == info.log_end_offset || start_offset >= upper_bound {
                return Ok(info);
            }
            self.plan_scan(&state, ScanFrom::Offset(start_offset))?
        };
        // One segment at a time: scan it without the lock, then plan the next.
        while let Some(plan) = scan {
            if plan.base_offset >= upper_bound {
                break;
            }
            let mut cursor =
                BatchCursor::new(&plan.file, plan.start_position, plan.size, HEADER_CHUNK)
                    .expecting_first(plan.expected_first);
            loop {
                let (position, header) = match cursor.next_located() {
                    Ok(Some(located)) => located,
                    Ok(None) => break,
                    Err(segment::CursorError::Corrupt(reason)) => {
                        let position = cursor.position;
                        warn!(log = %self.name, position, %reason, "unreadable batch while reading; the read stops here");
                        return Ok(info);
                    }
                    Err(segment::CursorError::Io(e)) => {
                        return Err(StorageError::io("read", &self.dir)(e));
                    }
                };
                if header.last_offset() < start_offset {
                    continue;
                }
                let len = header.size() as u64;
                if header.last_offset() >= upper_bound
                    || (info.bytes > 0 && info.bytes + len > max_bytes)
                {
                    return Ok(info);
                }
                match info.regions.last_mut() {
                    Some(last)
                        if Arc::ptr_eq(&last.file, &plan.file)
                            && last.position + last.len == position =>
                    {
                        last.len += len;
                    }
                    _ => info.regions.push(FileRegion {
                        file: Arc::clone(&plan.file),
                        position,
                        len,
                    }),
                }
                info.bytes += len;
                info.next_offset = header.next_offset();
            }
            let state = lock(&self.state);
            scan = self.plan_scan(&state, ScanFrom::After(plan.base_offset))?;
        }
        Ok(info)
    }

    /// [`Log::read`], with the batches copied into `out` (appended).
    pub fn read_into(
        &self,
        start_offset: i64,
        max_bytes: u64,
        upper_bound: i64,
        out: &mut Vec<u8>,
    ) -> Result<ReadInfo> {
        let info = self.read(start_offset, max_bytes, upper_bound)?;
        out.reserve(info.bytes as usize);
        for region in &info.regions {
            let from = out.len();
            out.resize(from + region.len as usize, 0);
            region
                .file
                .read_exact_at(&mut out[from..], region.position)
                .map_err(StorageError::io("read", &self.dir))?;
        }
        Ok(info)
    }

    /// The headers of the batches from `start_offset` below `upper_bound`,
    /// for rebuilding producer state (idempotence, transactions) from the log.
    pub fn batch_headers(&self, start_offset: i64, upper_bound: i64) -> Result<Vec<BatchHeader>> {
        let batches = self.scan_batches(start_offset, upper_bound, |_| false)?;
        Ok(batches.into_iter().map(|b| b.header).collect())
    }

    /// The batches from `start_offset` below `upper_bound` as a replay of
    /// producer state needs them: the header of each, and the bytes of
    /// control batches only, whose meaning (COMMIT or ABORT) is in their
    /// record. Markers are one small record each, so the bytes held are
    /// bounded by the headers'.
    pub fn batches_for_replay(
        &self,
        start_offset: i64,
        upper_bound: i64,
    ) -> Result<Vec<ReplayBatch>> {
        self.scan_batches(start_offset, upper_bound, BatchHeader::is_control)
    }

    fn scan_batches(
        &self,
        start_offset: i64,
        upper_bound: i64,
        wants_bytes: impl Fn(&BatchHeader) -> bool,
    ) -> Result<Vec<ReplayBatch>> {
        let mut batches = Vec::new();
        let mut offset = start_offset;
        loop {
            let info = self.read(offset, 1024 * 1024, upper_bound)?;
            if info.regions.is_empty() {
                return Ok(batches);
            }
            for region in &info.regions {
                let end = region.position + region.len;
                let mut cursor = BatchCursor::new(&region.file, region.position, end, HEADER_CHUNK);
                loop {
                    match cursor.next_located() {
                        Ok(Some((position, header))) => {
                            let control = if wants_bytes(&header) {
                                let mut bytes = vec![0; header.size()];
                                region
                                    .file
                                    .read_exact_at(&mut bytes, position)
                                    .map_err(StorageError::io("read", &self.dir))?;
                                Some(bytes)
                            } else {
                                None
                            };
                            batches.push(ReplayBatch { header, control });
                        }
                        // `read` walked these very batches; a region that no
                        // longer parses was cut meanwhile (truncation).
                        Ok(None) | Err(segment::CursorError::Corrupt(_)) => break,
                        Err(segment::CursorError::Io(e)) => {
                            return Err(StorageError::io("read", &self.dir)(e))
                        }
                    }
                }
            }
            offset = info.next_offset;
        }
    }
}

/// One batch of [`Log::batches_for_replay`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayBatch {
    pub header: BatchHeader,
    /// The whole batch, for control batches; `None` for data batches.
    pub control: Option<Vec<u8>>,
}
