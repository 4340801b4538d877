//! One segment of a partition log: a `.log` file of record batches starting
//! at `base_offset`, and its two indexes.
//!
//! A segment does not own a file descriptor; it names its file by a
//! [`FileId`] and callers pass in the open `File` from the [`FileCache`].
//! Every method that touches the disk takes that file.
//!
//! # Layout
//! - `mod.rs`: the `Segment` (append, recovery, lookups, truncation, index
//!   files).
//! - `scan`: the start-up scan over a mapped file, with its `unsafe` and
//!   the parallel CRC check.
//! - `cursor`: the `BatchCursor` that reads batches through a buffer.

mod cursor;
mod scan;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::batch::{self, BatchHeader};
use crate::config::LogConfig;
use crate::error::{Result, StorageError};
use crate::files::{FileCache, FileId};
use crate::index::{OffsetIndex, TimeIndex};
use crate::txn::{self, AbortedTxn};

pub use cursor::{BatchCursor, CursorError};
use scan::{map_segment, CheckedBatches, MappedBatches};

pub const LOG_SUFFIX: &str = "log";
pub const INDEX_SUFFIX: &str = "index";
pub const TIME_INDEX_SUFFIX: &str = "timeindex";
/// The aborted transactions whose markers the segment holds.
pub const TXN_INDEX_SUFFIX: &str = "txnindex";
/// A compacted segment being written; removed if found at start-up.
pub const CLEANED_SUFFIX: &str = "cleaned";

/// Reads of headers alone need far less.
const HEADER_CHUNK_BYTES: usize = 64 * 1024;

/// `<20-digit base offset>.<suffix>`, as Kafka names segment files.
pub fn file_name(base_offset: i64, suffix: &str) -> String {
    format!("{base_offset:020}.{suffix}")
}

/// Parses a segment file name made by [`file_name`].
pub fn parse_file_name(name: &str) -> Option<(i64, &str)> {
    let (stem, suffix) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, suffix))
}

/// A batch's place in a segment, found by scanning headers.
#[derive(Debug, Clone, Copy)]
pub struct BatchLocation {
    pub position: u64,
    pub header: BatchHeader,
}

#[derive(Debug)]
pub struct Segment {
    pub base_offset: i64,
    pub file_id: FileId,
    pub log_path: PathBuf,
    /// Bytes of whole batches in the file. The file may be longer after a
    /// failed write; appends overwrite from here.
    pub size: u64,
    /// How much of the file is known to be on disk.
    pub synced_size: u64,
    /// The offset after this segment's last batch, or `base_offset` if empty.
    pub next_offset: i64,
    pub offset_index: OffsetIndex,
    pub time_index: TimeIndex,
    /// Whether the index files on disk match the in-memory indexes.
    pub indexes_persisted: bool,
    /// Whether index files may exist on disk (empty indexes are not written).
    index_files_on_disk: bool,
    bytes_since_index_entry: u64,
    /// The largest batch max-timestamp in the segment, -1 if none.
    pub max_timestamp: i64,
    /// The base offset of the first batch that carried `max_timestamp`.
    pub offset_of_max_timestamp: i64,
    /// What `segment.ms` counts from, as in Kafka: the first batch's
    /// timestamp, compared with the timestamps of incoming batches. It lives
    /// in the batches themselves, so it survives a restart.
    pub rolling_timestamp_ms: Option<i64>,
    /// When this process first appended to the segment: what `segment.ms`
    /// counts from, against the clock, when batches carry no timestamps.
    pub first_append_ms: Option<i64>,
    /// The aborted transactions whose markers this segment holds, ordered
    /// by marker offset: the `.txnindex` file's entries, kept in memory so
    /// that a read_committed fetch reads no file for them. Aborts are rare;
    /// the file is appended to and fsynced as each is added.
    pub aborted_txns: Vec<AbortedTxn>,
}

impl Segment {
    fn new(dir: &Path, base_offset: i64, files: &FileCache) -> Self {
        let log_path = dir.join(file_name(base_offset, LOG_SUFFIX));
        Self::empty(base_offset, files.next_id(), log_path)
    }

    /// The state of a segment with no batches.
    fn empty(base_offset: i64, file_id: FileId, log_path: PathBuf) -> Self {
        Self {
            base_offset,
            file_id,
            log_path,
            size: 0,
            synced_size: 0,
            next_offset: base_offset,
            offset_index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            indexes_persisted: false,
            index_files_on_disk: true,
            bytes_since_index_entry: 0,
            max_timestamp: -1,
            offset_of_max_timestamp: base_offset,
            rolling_timestamp_ms: None,
            first_append_ms: None,
            aborted_txns: Vec::new(),
        }
    }

    /// Creates an empty segment file, replacing any leftover of that name.
    pub fn create(dir: &Path, base_offset: i64, files: &FileCache) -> Result<Self> {
        let mut segment = Self::new(dir, base_offset, files);
        for path in [
            segment.index_path(),
            segment.time_index_path(),
            segment.txn_index_path(),
        ] {
            remove_if_exists(&path)?;
        }
        segment.index_files_on_disk = false;
        File::create(&segment.log_path).map_err(StorageError::io("create", &segment.log_path))?;
        Ok(segment)
    }

    /// A segment whose file exists; call [`Segment::load_trusted`] or
    /// [`Segment::recover`] before using it.
    pub fn existing(dir: &Path, base_offset: i64, files: &FileCache) -> Self {
        Self::new(dir, base_offset, files)
    }

    pub fn index_path(&self) -> PathBuf {
        self.log_path.with_extension(INDEX_SUFFIX)
    }

    pub fn time_index_path(&self) -> PathBuf {
        self.log_path.with_extension(TIME_INDEX_SUFFIX)
    }

    pub fn txn_index_path(&self) -> PathBuf {
        self.log_path.with_extension(TXN_INDEX_SUFFIX)
    }

    /// Reads the `.txnindex` of a recovered segment, keeping the entries
    /// whose markers the segment still holds: a crash may have cut a marker
    /// off after its entry was made durable. Anything dropped is dropped
    /// from the file too. Returns how many entries were dropped.
    pub fn load_txn_index(&mut self) -> Result<usize> {
        let Some(bytes) = read_optional(&self.txn_index_path())? else {
            self.aborted_txns.clear();
            return Ok(0);
        };
        let (mut entries, damaged) = txn::decode_txn_index(&bytes);
        let decoded = entries.len();
        entries.retain(|t| t.last_offset >= self.base_offset && t.last_offset < self.next_offset);
        entries.sort_by_key(|t| t.last_offset);
        let dropped = decoded - entries.len();
        if damaged {
            warn!(path = %self.txn_index_path().display(), "transaction index holds damaged entries; dropping them");
        }
        self.aborted_txns = entries;
        if damaged || dropped > 0 {
            self.rewrite_txn_index()?;
        }
        Ok(dropped)
    }

    /// Drops the aborted transactions whose markers are at or past
    /// `offset` (the segment was cut there), on disk too.
    pub fn truncate_txn_index(&mut self, offset: i64) -> Result<()> {
        let before = self.aborted_txns.len();
        self.aborted_txns.retain(|t| t.last_offset < offset);
        if self.aborted_txns.len() != before {
            self.rewrite_txn_index()?;
        }
        Ok(())
    }

    /// Replaces the `.txnindex` file with the entries in memory, durably
    /// (removing it if there are none). Written to a temporary file and
    /// renamed, so a crash leaves the old entries or the new.
    pub fn rewrite_txn_index(&self) -> Result<()> {
        let path = self.txn_index_path();
        if self.aborted_txns.is_empty() {
            remove_if_exists(&path)?;
        } else {
            // `<base>.txnindex.tmp`: its own name (a `.tmp` per base offset
            // could be another file's), and one `Log::open` removes.
            let tmp = self
                .log_path
                .with_extension(format!("{TXN_INDEX_SUFFIX}.tmp"));
            let bytes = txn::encode_txn_index(&self.aborted_txns);
            fs::write(&tmp, &bytes).map_err(StorageError::io("write", &tmp))?;
            File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(StorageError::io("fsync", &tmp))?;
            fs::rename(&tmp, &path).map_err(StorageError::io("rename", &tmp))?;
        }
        if let Some(dir) = path.parent() {
            crate::checkpoint::sync_dir(dir)?;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    pub fn file(&self, files: &FileCache) -> Result<std::sync::Arc<File>> {
        files.get(self.file_id, &self.log_path)
    }

    fn relative(&self, offset: i64) -> u32 {
        let relative = offset - self.base_offset;
        assert!(
            (0..=i64::from(i32::MAX)).contains(&relative),
            "offset outside segment"
        );
        relative as u32
    }

    /// Whether `offset` can be stored relative to this segment's base.
    pub fn can_hold_offset(&self, offset: i64) -> bool {
        (0..=i64::from(i32::MAX)).contains(&(offset - self.base_offset))
    }

    pub fn indexes_full(&self, config: &LogConfig) -> bool {
        self.offset_index.len() >= config.offset_index_entries_max()
            || self.time_index.len() >= config.time_index_entries_max()
    }

    /// Accounts for a batch written at `position`: statistics, and an index
    /// entry when `index.interval.bytes` have passed since the last one.
    fn track_batch(&mut self, position: u64, header: &BatchHeader, index_interval_bytes: u64) {
        assert!(
            header.base_offset >= self.next_offset,
            "batches must ascend"
        );
        if position == 0 && header.max_timestamp >= 0 {
            self.rolling_timestamp_ms = Some(header.max_timestamp);
        }
        if header.max_timestamp > self.max_timestamp {
            self.max_timestamp = header.max_timestamp;
            self.offset_of_max_timestamp = header.base_offset;
        }
        if self.bytes_since_index_entry > index_interval_bytes {
            self.offset_index
                .push(self.relative(header.last_offset()), position as u32);
            self.time_index.maybe_push(
                self.max_timestamp,
                self.relative(self.offset_of_max_timestamp),
            );
            self.bytes_since_index_entry = 0;
            self.indexes_persisted = false;
        }
        self.bytes_since_index_entry += header.size() as u64;
        self.next_offset = header.next_offset();
    }

    /// Writes `bytes` (whole batches, offsets assigned) at the end of the
    /// segment and indexes them. `headers` are the batches' headers as written.
    pub fn append(
        &mut self,
        file: &File,
        bytes: &[u8],
        headers: &[BatchHeader],
        index_interval_bytes: u64,
        now_ms: i64,
    ) -> Result<()> {
        if let Err(error) = file.write_all_at(bytes, self.size) {
            // Part of the bytes may be in the file (a full disk takes what
            // fits). Cut them off, best effort: the next append overwrites
            // them anyway and recovery cuts them, but a tail of half a
            // batch should not sit in the file for readers of the raw
            // segment, nor hold disk space that a full disk needs.
            let _ = file.set_len(self.size);
            return Err(StorageError::io("write", &self.log_path)(error));
        }
        let mut position = self.size;
        for header in headers {
            self.track_batch(position, header, index_interval_bytes);
            position += header.size() as u64;
        }
        assert_eq!(
            position,
            self.size + bytes.len() as u64,
            "headers must cover the bytes"
        );
        self.size = position;
        self.first_append_ms.get_or_insert(now_ms);
        Ok(())
    }

    /// Scans every batch from the start, checking each one's CRC and that
    /// offsets ascend, and rebuilds the indexes. The file is cut at the first
    /// batch that fails; the returned reason says why. `on_batch` sees each
    /// good batch (the log rebuilds its leader-epoch cache from them).
    pub fn recover(
        &mut self,
        file: &File,
        config: &LogConfig,
        mut on_batch: impl FnMut(&BatchHeader),
    ) -> Result<Option<(u64, String)>> {
        let file_len = file_len(file, &self.log_path)?;
        let base_offset = self.base_offset;
        *self = Self::new_like(self);
        let mut cut = None;
        let map = map_segment(file, file_len, &self.log_path)?;
        for item in CheckedBatches::new(&map) {
            let (position, header) = match item {
                Ok(checked) => checked,
                Err((position, reason)) => {
                    cut = Some((position, reason.to_string()));
                    break;
                }
            };
            if let Err(reason) = self.check_ascends(&header) {
                cut = Some((position, reason));
                break;
            }
            if position > u64::from(u32::MAX) {
                // Index positions are 32-bit; no segment this log wrote is this long.
                cut = Some((position, "segment longer than 4 GiB".into()));
                break;
            }
            self.track_batch(position, &header, config.index_interval_bytes);
            on_batch(&header);
            self.size = position + header.size() as u64;
        }
        // The mapping must go before the file is cut under it.
        drop(map);
        debug_assert!(self.base_offset == base_offset);
        if self.size < file_len {
            file.set_len(self.size)
                .map_err(StorageError::io("truncate", &self.log_path))?;
            if cut.is_none() {
                cut = Some((self.size, "trailing bytes after the last batch".into()));
            }
        }
        self.indexes_persisted = false;
        Ok(cut)
    }

    fn new_like(other: &Self) -> Self {
        Self::empty(other.base_offset, other.file_id, other.log_path.clone())
    }

    fn check_ascends(&self, header: &BatchHeader) -> std::result::Result<(), String> {
        if header.base_offset < self.next_offset {
            return Err(format!(
                "batch base offset {} is below the expected {}",
                header.base_offset, self.next_offset
            ));
        }
        if !header.offsets_are_sane() || !self.can_hold_offset(header.last_offset()) {
            return Err(format!(
                "batch offsets {}..={} do not fit a segment based at {}",
                header.base_offset,
                header.last_offset(),
                self.base_offset
            ));
        }
        Ok(())
    }

    /// Loads a segment known to be durable (before the recovery point, or
    /// after a clean shutdown) from its index files, and checks the batches
    /// after the last index entry, which also yields the segment's end.
    /// Returns `false` if anything is inconsistent, in which case the caller
    /// must [`Segment::recover`] it instead.
    pub fn load_trusted(&mut self, file: &File, config: &LogConfig) -> Result<bool> {
        let file_len = file_len(file, &self.log_path)?;
        // A missing index is an empty one (see `persist_indexes`); one that
        // does not decode consistently is not to be trusted.
        let offset_index = match read_optional(&self.index_path())? {
            None => Some(OffsetIndex::default()),
            Some(bytes) => OffsetIndex::decode(&bytes, file_len),
        };
        let time_index = match read_optional(&self.time_index_path())? {
            None => Some(TimeIndex::default()),
            Some(bytes) => TimeIndex::decode(&bytes),
        };
        let (Some(offset_index), Some(time_index)) = (offset_index, time_index) else {
            return Ok(false);
        };
        *self = Self::new_like(self);
        let loaded_lens = (offset_index.len(), time_index.len());
        self.offset_index = offset_index;
        self.time_index = time_index;
        if let Some(last) = self.time_index.last() {
            self.max_timestamp = last.timestamp;
            self.offset_of_max_timestamp = self.base_offset + i64::from(last.relative_offset);
        }
        let start = self
            .offset_index
            .last()
            .map_or(0, |e| u64::from(e.position));
        let map = map_segment(file, file_len, &self.log_path)?;
        if let Some(last) = self.time_index.last() {
            // The segment's largest timestamp steers lookups by time to it;
            // check that the batch the entry names really carries it.
            let offset = self.base_offset + i64::from(last.relative_offset);
            let from = self
                .offset_index
                .floor(last.relative_offset)
                .map_or(0, |e| e.position);
            let named = MappedBatches::new(&map, u64::from(from))
                .map_while(|item| item.ok())
                .filter_map(|(_, bytes)| BatchHeader::parse(bytes).ok())
                .find(|h| h.last_offset() >= offset);
            if named.is_none_or(|h| h.base_offset != offset || h.max_timestamp != last.timestamp) {
                return Ok(false);
            }
        }
        if let Some(Ok((_, bytes))) = MappedBatches::new(&map, 0).next() {
            let first_timestamp = BatchHeader::parse(bytes).map(|h| h.max_timestamp);
            self.rolling_timestamp_ms = first_timestamp.ok().filter(|&t| t >= 0);
        }
        let mut first = true;
        for item in MappedBatches::new(&map, start) {
            let Ok((position, bytes)) = item else {
                return Ok(false);
            };
            let Ok(header) = batch::check(bytes) else {
                return Ok(false);
            };
            if first && start > 0 {
                // This batch is the one the last index entry names: it is
                // indexed already, so only its offsets and size are taken.
                let entry = self.offset_index.last().map(|e| e.relative_offset);
                if entry != Some(self.relative_offset_checked(header.last_offset())) {
                    return Ok(false);
                }
                self.next_offset = header.next_offset();
                self.bytes_since_index_entry = header.size() as u64;
                if header.max_timestamp > self.max_timestamp {
                    self.max_timestamp = header.max_timestamp;
                    self.offset_of_max_timestamp = header.base_offset;
                }
            } else {
                if self.check_ascends(&header).is_err() {
                    return Ok(false);
                }
                self.track_batch(position, &header, config.index_interval_bytes);
            }
            first = false;
        }
        if start > 0 && first {
            // The last index entry points at the end of the file.
            return Ok(false);
        }
        self.size = file_len;
        self.synced_size = file_len;
        // Entries added while checking the tail mean the files were short.
        self.indexes_persisted = loaded_lens == (self.offset_index.len(), self.time_index.len());
        Ok(true)
    }

    fn relative_offset_checked(&self, offset: i64) -> u32 {
        u32::try_from(offset - self.base_offset).unwrap_or(u32::MAX)
    }

    /// The last offset of the batch the offset index places at `position`,
    /// if an entry does (to check the entry against the log as it is used).
    pub fn indexed_last_offset_at(&self, position: u64) -> Option<i64> {
        let entry = self.offset_index.at_position(position)?;
        Some(self.base_offset + i64::from(entry.relative_offset))
    }

    /// Finds the first batch whose last offset is at least `offset`.
    pub fn find(&self, file: &File, offset: i64) -> Result<Option<BatchLocation>> {
        let start = if offset <= self.base_offset {
            0
        } else {
            let relative = u32::try_from(offset - self.base_offset).unwrap_or(u32::MAX);
            self.offset_index
                .floor(relative)
                .map_or(0, |e| u64::from(e.position))
        };
        let mut cursor = BatchCursor::new(file, start, self.size, HEADER_CHUNK_BYTES)
            .expecting_first(self.indexed_last_offset_at(start));
        loop {
            match cursor.next_located() {
                Ok(Some((position, header))) if header.last_offset() >= offset => {
                    return Ok(Some(BatchLocation { position, header }))
                }
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(None),
                Err(CursorError::Corrupt(reason)) => {
                    let position = cursor.position;
                    warn!(path = %self.log_path.display(), position, %reason, "unreadable batch header while reading");
                    return Ok(None);
                }
                Err(CursorError::Io(e)) => return Err(StorageError::io("read", &self.log_path)(e)),
            }
        }
    }

    /// The batches from `position` on, whole, in order, until `visit` says stop.
    pub fn scan_headers(
        &self,
        file: &File,
        position: u64,
        end: u64,
        mut visit: impl FnMut(BatchLocation) -> bool,
    ) -> Result<()> {
        let mut cursor = BatchCursor::new(file, position, end.min(self.size), HEADER_CHUNK_BYTES);
        loop {
            match cursor.next_located() {
                Ok(Some((position, header))) => {
                    if !visit(BatchLocation { position, header }) {
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                Err(CursorError::Corrupt(reason)) => {
                    let position = cursor.position;
                    warn!(path = %self.log_path.display(), position, %reason, "unreadable batch header while reading");
                    return Ok(());
                }
                Err(CursorError::Io(e)) => return Err(StorageError::io("read", &self.log_path)(e)),
            }
        }
    }

    /// Removes every batch whose last offset is at least `offset`. Returns
    /// the base offset of the first batch removed, if any was.
    pub fn truncate_to(&mut self, file: &File, offset: i64) -> Result<Option<i64>> {
        let Some(location) = self.find(file, offset)? else {
            return Ok(None);
        };
        file.set_len(location.position)
            .map_err(StorageError::io("truncate", &self.log_path))?;
        file.sync_all()
            .map_err(StorageError::io("fsync", &self.log_path))?;
        self.offset_index
            .truncate_to_position(location.position as u32);
        let cut = location.header.base_offset;
        if cut > self.base_offset {
            self.time_index.truncate_to_offset(self.relative(cut));
        } else {
            self.time_index = TimeIndex::default();
        }
        self.size = location.position;
        self.synced_size = self.synced_size.min(self.size);
        self.indexes_persisted = false;
        self.rescan_tail(file, offset)?;
        Ok(Some(cut))
    }

    /// Recomputes the end offset and timestamps from the last index entries
    /// and the batches after them (after a truncation).
    fn rescan_tail(&mut self, file: &File, offset_bound: i64) -> Result<()> {
        self.max_timestamp = self.time_index.last().map_or(-1, |e| e.timestamp);
        self.offset_of_max_timestamp = self.time_index.last().map_or(self.base_offset, |e| {
            self.base_offset + i64::from(e.relative_offset)
        });
        self.next_offset = self.base_offset;
        self.bytes_since_index_entry = 0;
        let start = self
            .offset_index
            .last()
            .map_or(0, |e| u64::from(e.position));
        let _unused_start = self
            .offset_index
            .last()
            .map_or(0, |e| u64::from(e.position));
        let mut headers = Vec::new();
        self.scan_headers(file, start, self.size, |location| {
            headers.push(location);
            true
        })?;
        for (i, location) in headers.iter().enumerate() {
            let header = &location.header;
            assert!(
                header.last_offset() < offset_bound,
                "truncation left a batch past its bound"
            );
            if i == 0 && start > 0 {
                self.bytes_since_index_entry = header.size() as u64;
                self.next_offset = header.next_offset();
                if header.max_timestamp > self.max_timestamp {
                    self.max_timestamp = header.max_timestamp;
                    self.offset_of_max_timestamp = header.base_offset;
                }
            } else {
                // Offsets may skip (compaction), so `track_batch` only needs them to ascend.
                self.track_batch(location.position, header, u64::MAX);
            }
        }
        Ok(())
    }

    /// Writes both index files whole, fsynced if `sync` (see
    /// [`PendingIndexes`]).
    pub fn persist_indexes(&mut self, sync: bool) -> Result<()> {
        if let Some(pending) = self.pending_indexes() {
            pending.write(sync)?;
            self.mark_indexes_written(&pending);
        }
        Ok(())
    }

    /// The indexes as they should be on disk, if they are not yet: encoded
    /// under the log's lock, written outside it.
    pub fn pending_indexes(&self) -> Option<PendingIndexes> {
        if self.indexes_persisted {
            return None;
        }
        Some(PendingIndexes {
            file_id: self.file_id,
            files: [
                (self.index_path(), self.offset_index.encode()),
                (self.time_index_path(), self.time_index.encode()),
            ],
            may_exist: self.index_files_on_disk,
        })
    }

    /// Records that `pending` (taken from this segment) is on disk.
    pub fn mark_indexes_written(&mut self, pending: &PendingIndexes) {
        if pending.file_id == self.file_id {
            self.indexes_persisted = true;
            self.index_files_on_disk = pending.files.iter().any(|(_, bytes)| !bytes.is_empty());
        }
    }

    /// Removes the segment's files.
    pub fn delete_files(&self, files: &FileCache) -> Result<()> {
        files.evict(self.file_id);
        // The log file goes last: a crash part-way leaves a segment that
        // open recovers, never index files without their log.
        for path in [
            self.index_path(),
            self.time_index_path(),
            self.txn_index_path(),
            self.log_path.clone(),
        ] {
            remove_if_exists(&path)?;
        }
        Ok(())
    }
}

/// A segment's two index files, encoded. Empty indexes are not written at
/// all (an existing file is removed): a missing index file reads as empty,
/// and the batch check after the last entry then covers the whole segment.
/// This keeps shutdown of many idle partitions cheap.
#[derive(Debug)]
pub struct PendingIndexes {
    file_id: FileId,
    files: [(PathBuf, Vec<u8>); 2],
    /// Whether index files may exist from before (to be removed if empty).
    may_exist: bool,
}

impl PendingIndexes {
    pub fn write(&self, sync: bool) -> Result<()> {
        for (path, bytes) in &self.files {
            if bytes.is_empty() {
                if self.may_exist {
                    remove_if_exists(path)?;
                }
                continue;
            }
            let file = File::create(path).map_err(StorageError::io("create", path))?;
            file.write_all_at(bytes, 0)
                .map_err(StorageError::io("write", path))?;
            if sync {
                file.sync_all().map_err(StorageError::io("fsync", path))?;
            }
        }
        Ok(())
    }
}

/// Writes one entry to the `.txnindex` at `path` after its first
/// `entries_before` entries (what the segment holds in memory) and fsyncs
/// it (and the directory, if the file is new), so that the entry is durable
/// on return. Writing at the known position, and cutting the file after
/// the entry, overwrites whatever a failed earlier write left behind.
pub fn append_txn_index_entry(path: &Path, entries_before: usize, txn: &AbortedTxn) -> Result<()> {
    let created = !path.exists();
    let mut bytes = Vec::with_capacity(txn::TXN_INDEX_ENTRY_LEN);
    txn.encode(&mut bytes);
    let position = (entries_before * txn::TXN_INDEX_ENTRY_LEN) as u64;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(StorageError::io("open", path))?;
    file.write_all_at(&bytes, position)
        .map_err(StorageError::io("write", path))?;
    file.set_len(position + bytes.len() as u64)
        .map_err(StorageError::io("truncate", path))?;
    file.sync_data().map_err(StorageError::io("fsync", path))?;
    if let (true, Some(dir)) = (created, path.parent()) {
        crate::checkpoint::sync_dir(dir)?;
    }
    Ok(())
}

/// Where the cleaner writes a segment's new `.txnindex` before the swap.
pub fn cleaned_txn_index_path(segment: &Segment) -> PathBuf {
    segment
        .log_path
        .with_extension(format!("{TXN_INDEX_SUFFIX}.{CLEANED_SUFFIX}"))
}

/// Puts the cleaner's new `.txnindex` of `segment` in place: renamed over
/// the old one, or, when it holds no entry, both removed.
pub fn finish_cleaned_txn_index(segment: &Segment) -> Result<()> {
    let cleaned = cleaned_txn_index_path(segment);
    let path = segment.txn_index_path();
    let empty = fs::metadata(&cleaned)
        .map_err(StorageError::io("stat", &cleaned))?
        .len()
        == 0;
    if empty {
        remove_if_exists(&path)?;
        remove_if_exists(&cleaned)?;
    } else {
        fs::rename(&cleaned, &path).map_err(StorageError::io("rename", &cleaned))?;
    }
    if let Some(dir) = path.parent() {
        crate::checkpoint::sync_dir(dir)?;
    }
    Ok(())
}

/// Writes `bytes` to a new file at `path` and fsyncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(StorageError::io("write", path))?;
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(StorageError::io("fsync", path))
}

pub fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("remove", path)(e)),
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io("read", path)(e)),
    }
}

fn file_len(file: &File, path: &Path) -> Result<u64> {
    file.metadata()
        .map(|m| m.len())
        .map_err(StorageError::io("stat", path))
}
