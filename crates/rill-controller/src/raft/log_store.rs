//! The durable Raft log: one file per entry in `<dir>/log/`, named by its
//! index (`00000000000000000042.json`), plus `vote.json`, `purged.json` and
//! `committed.json` in `<dir>`.
//!
//! One file per entry is not fast, but it is simple to get right: an entry
//! is written to a temporary file, fsynced and renamed into place, so a
//! file either holds a whole entry or does not exist; truncation and
//! purging are file removals. The controller's log is small (a few
//! commands a second at most, and snapshots let it be purged), so the cost
//! of an fsync per entry does not matter. All entries are also kept in
//! memory, bounded by the snapshot policy.
//!
//! Crash safety. `append` fsyncs each entry file and then the directory
//! once before it reports the entries flushed. Truncation removes newest
//! first and purging records the purge point before removing oldest
//! first, so a crash in either leaves a contiguous log. At open, entries
//! at or below the purge point are removed, and anything after the first
//! gap or unreadable file is removed: such entries were never reported
//! flushed (the directory sync comes before that), so dropping them is
//! what Raft expects.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::files::{self, Durability};
use super::{RaftNodeId, TypeConfig};

const LOG_DIR: &str = "log";
const VOTE_FILE: &str = "vote.json";
const PURGED_FILE: &str = "purged.json";
const COMMITTED_FILE: &str = "committed.json";

/// The log store, shared by openraft's writer and its log readers.
///
/// openraft calls the writing methods one at a time (they take `&mut
/// self`), so the files need no lock; they are written on tokio's blocking
/// pool so an fsync does not hold up a runtime worker. The mutex guards only
/// the in-memory copy, which readers use, and is never held across I/O.
#[derive(Debug, Clone)]
pub struct LogStore {
    paths: Arc<Paths>,
    cache: Arc<Mutex<Cache>>,
}

#[derive(Debug)]
struct Paths {
    dir: PathBuf,
    log_dir: PathBuf,
}

#[derive(Debug)]
struct Cache {
    /// Every entry on disk, by index.
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<RaftNodeId>>,
    vote: Option<Vote<RaftNodeId>>,
    committed: Option<LogId<RaftNodeId>>,
}

type StorageResult<T> = Result<T, StorageError<RaftNodeId>>;

fn entry_file_name(index: u64) -> String {
    format!("{index:020}.json")
}

fn parse_entry_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".json")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn to_json<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(io::Error::other)
}

fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    serde_json::from_slice(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn read_json<T: DeserializeOwned>(dir: &Path, name: &str) -> io::Result<Option<T>> {
    files::read_optional(dir, name)?
        .map(|bytes| from_json(&bytes))
        .transpose()
}

impl LogStore {
    /// Opens the log in `dir`, creating it if needed, and cuts whatever a
    /// crash left half-done (see the module doc).
    pub fn open(dir: &Path) -> io::Result<Self> {
        let log_dir = dir.join(LOG_DIR);
        fs::create_dir_all(&log_dir)?;
        let vote = read_json(dir, VOTE_FILE)?;
        let last_purged: Option<LogId<RaftNodeId>> = read_json(dir, PURGED_FILE)?;
        // The commit point is a hint written without fsync; if it is
        // unreadable, Raft recomputes it.
        let committed = read_json(dir, COMMITTED_FILE).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring unreadable {COMMITTED_FILE}");
            None
        });

        let mut indexes = Vec::new();
        for dirent in fs::read_dir(&log_dir)? {
            let name = dirent?.file_name();
            let name = name.to_string_lossy();
            match parse_entry_file_name(&name) {
                Some(index) => indexes.push(index),
                None => {
                    // A temporary file of an append that did not finish.
                    tracing::info!(file = %name, "removing stray file from the controller log");
                    fs::remove_file(log_dir.join(&*name))?;
                }
            }
        }
        indexes.sort_unstable();

        let first_kept = last_purged
            .as_ref()
            .map_or(0, |id: &LogId<RaftNodeId>| id.index + 1);
        let mut entries = BTreeMap::new();
        let mut cut = false;
        for index in indexes {
            let path = log_dir.join(entry_file_name(index));
            if index < first_kept {
                fs::remove_file(&path)?;
                continue;
            }
            let expected = entries
                .keys()
                .next_back()
                .map_or(first_kept, |last| last + 1);
            let entry = if cut || index != expected {
                None
            } else {
                fs::read(&path)
                    .ok()
                    .and_then(|bytes| from_json::<Entry<TypeConfig>>(&bytes).ok())
            };
            match entry {
                Some(entry) if entry.log_id.index == index => {
                    entries.insert(index, entry);
                }
                _ => {
                    tracing::warn!(
                        index,
                        "cutting the controller log at a missing or damaged entry"
                    );
                    cut = true;
                    fs::remove_file(&path)?;
                }
            }
        }
        if cut {
            files::sync_dir(&log_dir)?;
        }
        tracing::info!(
            entries = entries.len(),
            last_purged = ?last_purged.as_ref().map(|id: &LogId<RaftNodeId>| id.index),
            "opened the controller log"
        );
        Ok(Self {
            paths: Arc::new(Paths {
                dir: dir.to_path_buf(),
                log_dir,
            }),
            cache: Arc::new(Mutex::new(Cache {
                entries,
                last_purged,
                vote,
                committed,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().expect("log store lock poisoned")
    }
}

/// Runs file I/O on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)?
}

fn write_error(e: io::Error) -> StorageError<RaftNodeId> {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    async fn append_entries(&self, entries: Vec<Entry<TypeConfig>>) -> io::Result<()> {
        // Raft appends right after the last entry (having truncated a
        // conflicting tail first); an entry at an existing index replaces
        // it.
        let encoded: Vec<(String, Vec<u8>)> = entries
            .iter()
            .map(|entry| Ok((entry_file_name(entry.log_id.index), to_json(entry)?)))
            .collect::<io::Result<_>>()?;
        let paths = self.paths.clone();
        blocking(move || {
            for (name, bytes) in &encoded {
                files::write_file(&paths.log_dir, name, bytes, Durability::Sync)?;
            }
            files::sync_dir(&paths.log_dir)
        })
        .await?;
        let mut cache = self.lock();
        for entry in entries {
            cache.entries.insert(entry.log_id.index, entry);
        }
        Ok(())
    }

    async fn truncate_since(&self, since: u64) -> io::Result<()> {
        let doomed: Vec<u64> = {
            let mut cache = self.lock();
            let doomed = cache.entries.range(since..).map(|(i, _)| *i).collect();
            cache.entries.split_off(&since);
            doomed
        };
        let paths = self.paths.clone();
        blocking(move || {
            // Newest first, so that a crash half-way leaves a contiguous log.
            for index in doomed.into_iter().rev() {
                fs::remove_file(paths.log_dir.join(entry_file_name(index)))?;
            }
            files::sync_dir(&paths.log_dir)
        })
        .await
    }

    async fn purge_upto(&self, upto: LogId<RaftNodeId>) -> io::Result<()> {
        assert!(self
            .lock()
            .last_purged
            .as_ref()
            .is_none_or(|p| p.index <= upto.index));
        // The purge point is durable before any entry goes, so that open
        // never mistakes a half-done purge for a gap.
        let bytes = to_json(&upto)?;
        let paths = self.paths.clone();
        blocking(move || files::write_atomic(&paths.dir, PURGED_FILE, &bytes, Durability::Sync))
            .await?;
        let doomed: Vec<u64> = {
            let mut cache = self.lock();
            cache.last_purged = Some(upto);
            let kept = cache.entries.split_off(&(upto.index + 1));
            std::mem::replace(&mut cache.entries, kept)
                .into_keys()
                .collect()
        };
        let paths = self.paths.clone();
        blocking(move || {
            for index in doomed {
                fs::remove_file(paths.log_dir.join(entry_file_name(index)))?;
            }
            files::sync_dir(&paths.log_dir)
        })
        .await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        Ok(self
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let inner = self.lock();
        let last_purged_log_id = inner.last_purged;
        let last_log_id = inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftNodeId>) -> StorageResult<()> {
        let bytes = to_json(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        let paths = self.paths.clone();
        blocking(move || files::write_atomic(&paths.dir, VOTE_FILE, &bytes, Durability::Sync))
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<RaftNodeId>>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<RaftNodeId>>) -> StorageResult<()> {
        // A hint for a faster restart (entries up to it are applied before
        // the node is elected); losing it in a crash is harmless, so it is
        // not fsynced and can be written in place.
        let bytes = to_json(&committed).map_err(write_error)?;
        files::write_atomic(&self.paths.dir, COMMITTED_FILE, &bytes, Durability::NoSync)
            .map_err(write_error)?;
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<RaftNodeId>>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let result = self.append_entries(entries).await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let error = write_error(io::Error::new(e.kind(), e.to_string()));
                callback.log_io_completed(Err(e));
                Err(error)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<RaftNodeId>) -> StorageResult<()> {
        tracing::debug!(index = log_id.index, "truncating the controller log");
        self.truncate_since(log_id.index).await.map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId<RaftNodeId>) -> StorageResult<()> {
        tracing::debug!(index = log_id.index, "purging the controller log");
        self.purge_upto(log_id).await.map_err(write_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_file_names_round_trip() {
        assert_eq!(entry_file_name(42), "00000000000000000042.json");
        assert_eq!(parse_entry_file_name(&entry_file_name(42)), Some(42));
        assert_eq!(
            parse_entry_file_name(&entry_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_entry_file_name("00000000000000000042.json.tmp"), None);
        assert_eq!(parse_entry_file_name("42.json"), None);
    }
}
