//! A cursor over the batches of a file region, read through a reusable
//! buffer.

use std::fs::File;
use std::os::unix::fs::FileExt;

use tracing::warn;

use crate::batch::{BatchHeader, HEADER_LEN};
use crate::error::{CorruptBatch, Result};

#[derive(Debug)]
pub enum CursorError {
    Corrupt(CorruptBatch),
    Io(std::io::Error),
}

/// Walks the batches of a file region `[position, end)` through a reusable
/// buffer, so that many small batches cost one read.
#[derive(Debug)]
pub struct BatchCursor<'f> {
    file: &'f File,
    pub position: u64,
    end: u64,
    chunk: usize,
    buf: Vec<u8>,
    buf_start: u64,
    /// The size of the last batch passed over. When batches are larger than
    /// a chunk, reading a chunk for each header would read every batch
    /// whole; then only the header is read.
    last_batch_len: usize,
    /// Where an index said the scan should start, the last offset of the
    /// batch it said is there. Index files are only checked this lazily (a
    /// full check would read every indexed batch at start-up), so a batch
    /// that disagrees sends the scan back to the start of the segment.
    expected_first: Option<i64>,
}

impl<'f> BatchCursor<'f> {
    pub fn new(file: &'f File, position: u64, end: u64, chunk: usize) -> Self {
        Self {
            file,
            position,
            end,
            chunk,
            buf: Vec::new(),
            buf_start: position,
            last_batch_len: 0,
            expected_first: None,
        }
    }

    /// Checks the first batch against what the index promised (see
    /// `expected_first`).
    pub fn expecting_first(mut self, last_offset: Option<i64>) -> Self {
        self.expected_first = last_offset;
        self
    }

    fn restart_from_segment_start(&mut self, reason: &str) {
        warn!(
            position = self.position,
            reason, "index entry disagrees with the log; scanning the segment from its start"
        );
        self.position = 0;
        self.buf.clear();
        self.buf_start = 0;
        self.last_batch_len = 0;
    }

    /// Makes `[self.position, self.position + len)` available in the
    /// buffer, reading at least `read_ahead` bytes when it must read.
    fn fill(&mut self, len: usize, read_ahead: usize) -> std::io::Result<&[u8]> {
        let buf_end = self.buf_start + self.buf.len() as u64;
        if self.position < self.buf_start || self.position + len as u64 > buf_end {
            let want = len.max(read_ahead) as u64;
            let take = want.min(self.end - self.position) as usize;
            self.buf.resize(take, 0);
            // The read-ahead may run past the file's end if the file was cut
            // since the scan was planned (a truncation above a reader's
            // bound); only the `len` bytes needed now must be there.
            let mut filled = 0;
            while filled < take {
                match self
                    .file
                    .read_at(&mut self.buf[filled..], self.position + filled as u64)
                {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            self.buf.truncate(filled);
            self.buf_start = self.position;
            if filled < len {
                self.end = self.position + filled as u64;
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        let from = (self.position - self.buf_start) as usize;
        Ok(&self.buf[from..from + len])
    }

    /// The next batch's header, checked for magic and that the batch fits
    /// before `end`; the cursor moves past the batch.
    pub fn next_header(&mut self) -> Result<Option<BatchHeader>, CursorError> {
        if self.position >= self.end {
            return Ok(None);
        }
        let remaining = self.end - self.position;
        if remaining < HEADER_LEN as u64 {
            return Err(CursorError::Corrupt(CorruptBatch::HeaderTruncated {
                len: remaining as usize,
            }));
        }
        let read_ahead = if self.last_batch_len > self.chunk {
            HEADER_LEN
        } else {
            self.chunk
        };
        let bytes = match self.fill(HEADER_LEN, read_ahead) {
            Ok(bytes) => bytes,
            // The file ends before the planned end: it was cut meanwhile,
            // and what was cut is not there to read.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(CursorError::Io(e)),
        };
        let parsed = BatchHeader::parse(bytes).and_then(|header| {
            if header.size() as u64 > remaining {
                return Err(CorruptBatch::LengthOverrun {
                    declared: header.size(),
                    available: remaining as usize,
                });
            }
            Ok(header)
        });
        if let Some(expected) = self.expected_first.take() {
            if parsed
                .as_ref()
                .map_or(true, |h| h.last_offset() != expected)
            {
                self.restart_from_segment_start("no batch with the indexed offset there");
                return self.next_header();
            }
        }
        let header = parsed.map_err(CursorError::Corrupt)?;
        self.last_batch_len = header.size();
        self.position += header.size() as u64;
        Ok(Some(header))
    }

    /// [`BatchCursor::next_header`], with the position of the batch.
    pub fn next_located(&mut self) -> Result<Option<(u64, BatchHeader)>, CursorError> {
        Ok(self
            .next_header()?
            .map(|header| (self.position - header.size() as u64, header)))
    }

    /// The next whole batch's bytes (not yet CRC-checked).
    pub fn next_batch(&mut self) -> Result<Option<&[u8]>, CursorError> {
        let Some(header) = self.next_header()? else {
            return Ok(None);
        };
        let start = self.position - header.size() as u64;
        self.position = start;
        self.fill(header.size(), self.chunk)
            .map_err(CursorError::Io)?;
        self.position = start + header.size() as u64;
        let from = (start - self.buf_start) as usize;
        Ok(Some(&self.buf[from..from + header.size()]))
    }
}
