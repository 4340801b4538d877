//! The start-up scan of a whole segment: the file mapped read-only (the
//! crate's one `unsafe`), its batches walked, and their CRCs checked on
//! several threads a window at a time.

use std::fs::File;
use std::path::Path;

use crate::batch::{self, BatchHeader};
use crate::error::{CorruptBatch, Result, StorageError};

/// A read-only mapping of a whole segment file, for the scans at start-up.
/// Mapping avoids copying every byte out of the page cache, which is most of
/// the cost of recovery: the scan then costs little more than the CRC.
#[derive(Debug)]
pub struct SegmentMap(Option<memmap2::Mmap>);

impl std::ops::Deref for SegmentMap {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }
}

/// Maps `file` (of `len` bytes) read-only.
#[allow(unsafe_code)]
pub(super) fn map_segment(file: &File, len: u64, path: &Path) -> Result<SegmentMap> {
    if len == 0 {
        // mmap cannot map nothing.
        return Ok(SegmentMap(None));
    }
    let len = usize::try_from(len).map_err(|_| StorageError::Io {
        op: "map",
        path: path.to_path_buf(),
        source: std::io::Error::other("segment larger than the address space"),
    })?;
    // SAFETY: `Mmap::map` is unsafe because the mapped file could change
    // underneath the slice; in particular a truncation by someone else makes
    // reads past the new end fault (SIGBUS). Segment files are written only
    // by this process, and a mapping lives only for one scan at start-up or
    // of a cleaned file no one else has, during which nothing in this
    // process writes or truncates that file; `recover` drops the mapping
    // before it cuts the file. The data directory's `.lock` keeps other rill
    // processes out.
    let map = unsafe { memmap2::MmapOptions::new().len(len).map(file) }
        .map_err(StorageError::io("map", path))?;
    // No `madvise(SEQUENTIAL)` and no `MAP_POPULATE`: on the machine of
    // bench/README.md both made the scan slower, not faster.
    Ok(SegmentMap(Some(map)))
}

/// The batches of a mapped segment from `position`, each checked only for
/// a parseable header and a length that fits; the caller checks the CRC.
/// Stops after the first error, which carries its position.
#[derive(Debug)]
pub struct MappedBatches<'m> {
    bytes: &'m [u8],
    position: usize,
    failed: bool,
}

impl<'m> MappedBatches<'m> {
    pub fn new(bytes: &'m [u8], position: u64) -> Self {
        let position = usize::try_from(position)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        Self {
            bytes,
            position,
            failed: false,
        }
    }
}

impl<'m> Iterator for MappedBatches<'m> {
    type Item = std::result::Result<(u64, &'m [u8]), (u64, CorruptBatch)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.position >= self.bytes.len() {
            return None;
        }
        let position = self.position as u64;
        let rest = &self.bytes[self.position..];
        let item = match BatchHeader::parse(rest) {
            Ok(header) if header.size() <= rest.len() => {
                self.position += header.size();
                Ok((position, &rest[..header.size()]))
            }
            Ok(header) => Err((
                position,
                CorruptBatch::LengthOverrun {
                    declared: header.size(),
                    available: rest.len(),
                },
            )),
            Err(reason) => Err((position, reason)),
        };
        self.failed = item.is_err();
        Some(item)
    }
}

/// The batches of a mapped segment, each fully checked (`batch::check`,
/// CRC included), in order, stopping after the first that fails.
///
/// The CRC is most of the cost of recovery, so the work is pipelined a
/// window at a time: while other threads check the CRCs of one window, this
/// thread walks the headers of the next (taking the page faults of the
/// mapping). Results are handed out in order, and the first failure ends
/// the iteration, as a sequential check would.
#[derive(Debug)]
pub struct CheckedBatches<'m> {
    walker: MappedBatches<'m>,
    /// The next window, already walked while the previous one was checked.
    walked: Option<Window<'m>>,
    ready: std::collections::VecDeque<CheckedBatch>,
    done: bool,
    threads: usize,
}

type CheckedBatch = std::result::Result<(u64, BatchHeader), (u64, CorruptBatch)>;

/// Batches whose headers were walked, not yet checked.
#[derive(Debug, Default)]
struct Window<'m> {
    batches: Vec<(u64, &'m [u8])>,
    bytes: usize,
    /// A header that could not be walked, ending the segment's good part.
    structural: Option<(u64, CorruptBatch)>,
}

/// Bytes of batches per window.
const CHECK_WINDOW_BYTES: usize = 16 * 1024 * 1024;
/// Below this much, a window is checked on the calling thread alone.
const CHECK_PARALLEL_BYTES_MIN: usize = 2 * 1024 * 1024;

fn walk_window<'m>(walker: &mut MappedBatches<'m>) -> Window<'m> {
    let mut window = Window::default();
    while window.bytes < CHECK_WINDOW_BYTES {
        match walker.next() {
            Some(Ok((position, bytes))) => {
                window.bytes += bytes.len();
                window.batches.push((position, bytes));
            }
            Some(Err(failure)) => {
                window.structural = Some(failure);
                break;
            }
            None => break,
        }
    }
    window
}

fn check_batches(batches: &[(u64, &[u8])]) -> Vec<CheckedBatch> {
    batches
        .iter()
        .map(|&(position, bytes)| {
            batch::check(bytes)
                .map(|h| (position, h))
                .map_err(|e| (position, e))
        })
        .collect()
}

impl<'m> CheckedBatches<'m> {
    pub fn new(bytes: &'m [u8]) -> Self {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8);
        Self {
            walker: MappedBatches::new(bytes, 0),
            walked: None,
            ready: std::collections::VecDeque::new(),
            done: false,
            threads,
        }
    }

    fn fill(&mut self) {
        let current = match self.walked.take() {
            Some(window) => window,
            None => walk_window(&mut self.walker),
        };
        let more = current.structural.is_none() && current.bytes >= CHECK_WINDOW_BYTES;
        if self.threads > 1 && current.bytes >= CHECK_PARALLEL_BYTES_MIN {
            let checkers = if more { self.threads - 1 } else { self.threads }.max(1);
            let per_checker = current.batches.len().div_ceil(checkers).max(1);
            let walker = &mut self.walker;
            let (checked, next) = std::thread::scope(|scope| {
                let handles: Vec<_> = current
                    .batches
                    .chunks(per_checker)
                    .map(|part| scope.spawn(move || check_batches(part)))
                    .collect();
                let next = more.then(|| walk_window(walker));
                let checked: Vec<Vec<CheckedBatch>> = handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    })
                    .collect();
                (checked, next)
            });
            self.ready.extend(checked.into_iter().flatten());
            self.walked = next;
        } else {
            self.ready.extend(check_batches(&current.batches));
        }
        if let Some(failure) = current.structural {
            self.ready.push_back(Err(failure));
        }
        if self.ready.is_empty() {
            self.done = true;
        }
    }
}

impl Iterator for CheckedBatches<'_> {
    type Item = CheckedBatch;

    fn next(&mut self) -> Option<CheckedBatch> {
        if self.done {
            return None;
        }
        if self.ready.is_empty() {
            self.fill();
        }
        let item = self.ready.pop_front()?;
        if item.is_err() {
            self.done = true;
        }
        Some(item)
    }
}
