//! A bounded cache of open segment files, shared by every log in a process.
//!
//! A broker may hold tens of thousands of partitions, each with several
//! segments, but the process may only open so many files. Segments therefore
//! do not own file descriptors: they ask this cache, which keeps at most
//! `capacity` files open and closes the least recently used. A caller that
//! still holds an `Arc<File>` (a fetch being sent with `sendfile`) keeps that
//! descriptor alive until it drops it, so the bound is `capacity` plus the
//! reads in flight.

use std::fs::{File, OpenOptions};
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::error::{Result, StorageError};

/// Identifies one segment file for the life of the process. A rewritten
/// segment (compaction) gets a new id, so a stale descriptor is never reused.
pub type FileId = u64;

#[derive(Debug)]
pub struct FileCache {
    // A `std::sync::Mutex`: the critical sections are a hash lookup and an
    // insert, never I/O; files are opened outside it.
    open: Mutex<LruCache<FileId, Arc<File>>>,
    next_id: AtomicU64,
}

impl FileCache {
    /// The default bound on open segment files, well under the usual soft
    /// limit of 1024 descriptors so that sockets have room too.
    pub const CAPACITY_DEFAULT: usize = 512;

    pub fn new(capacity: usize) -> Arc<Self> {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Arc::new(Self {
            open: Mutex::new(LruCache::new(capacity)),
            next_id: AtomicU64::new(1),
        })
    }

    pub fn next_id(&self) -> FileId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The open file for `id`, opening `path` for reading and writing if the
    /// cache does not hold it.
    pub fn get(&self, id: FileId, path: &Path) -> Result<Arc<File>> {
        if let Some(file) = self.lock().get(&id) {
            return Ok(Arc::clone(file));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map(Arc::new)
            .map_err(StorageError::io("open segment", path))?;
        // Another thread may have opened it meanwhile; either descriptor is
        // as good, and the loser is simply closed.
        self.lock().put(id, Arc::clone(&file));
        Ok(file)
    }

    /// Forgets `id`'s descriptor (its file was deleted or replaced).
    pub fn evict(&self, id: FileId) {
        self.lock().pop(&id);
    }

    /// How many descriptors the cache holds now.
    pub fn open_count(&self) -> usize {
        self.lock().len()
    }

    pub fn capacity(&self) -> usize {
        self.lock().cap().get()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<FileId, Arc<File>>> {
        // A panic while holding this lock cannot leave the LRU inconsistent
        // in a way that matters (it only caches), so poisoning is ignored.
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_capacity_files_open() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(3);
        let ids: Vec<_> = (0..10)
            .map(|i| {
                let path = dir.path().join(format!("{i}.log"));
                File::create(&path).unwrap();
                let id = cache.next_id();
                cache.get(id, &path).unwrap();
                (id, path)
            })
            .collect();
        assert_eq!(cache.open_count(), 3);
        // An evicted file is reopened on demand.
        let (id, path) = &ids[0];
        cache.get(*id, path).unwrap();
        assert_eq!(cache.open_count(), 3);
        cache.evict(*id);
        assert_eq!(cache.open_count(), 2);
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let cache = FileCache::new(2);
        let err = cache
            .get(1, Path::new("/nonexistent/rill/x.log"))
            .unwrap_err();
        assert!(matches!(err, StorageError::Io { .. }), "{err}");
    }
}
