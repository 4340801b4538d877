//! The leader-epoch cache: for each leader epoch, the first offset written in
//! it. A follower asks a new leader "where does my last epoch end?"
//! (OffsetForLeaderEpoch) and truncates to the answer, so no replica keeps
//! records the leader does not have.
//!
//! Persisted as `leader-epoch-checkpoint` in the partition directory, in
//! Kafka's checkpoint format. The file is rewritten when the cache is
//! truncated, and otherwise with the log's next flush: recovery rebuilds
//! entries for the unflushed tail from the batches' own epochs.

use std::path::{Path, PathBuf};

use tracing::warn;

use crate::checkpoint;
use crate::error::Result;

pub const FILE_NAME: &str = "leader-epoch-checkpoint";

/// One epoch and the first offset its leader wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: i64,
}

impl std::fmt::Display for EpochEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.epoch, self.start_offset)
    }
}

/// The answer to OffsetForLeaderEpoch, as Kafka gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEndOffset {
    /// The largest epoch not above the one asked for, or -1 if none is known.
    pub epoch: i32,
    /// The offset after that epoch's last record, or -1 if unknown.
    pub end_offset: i64,
}

impl EpochEndOffset {
    pub const UNDEFINED: Self = Self {
        epoch: -1,
        end_offset: -1,
    };
}

#[derive(Debug)]
pub struct LeaderEpochCache {
    path: PathBuf,
    /// Strictly increasing in both epoch and start offset.
    entries: Vec<EpochEntry>,
    dirty: bool,
    /// The checkpoint was missing or unusable: the log must rebuild the
    /// cache from its batches.
    needs_rebuild: bool,
}

impl LeaderEpochCache {
    /// Loads the checkpoint in `dir`. A missing or unreadable file gives an
    /// empty cache (logged) that [`LeaderEpochCache::needs_rebuild`], for
    /// the log to refill from its batches.
    pub fn load(dir: &Path) -> Self {
        let path = dir.join(FILE_NAME);
        let loaded = match std::fs::read(&path) {
            Ok(bytes) => match checkpoint::decode(&bytes, |fields| match fields {
                [epoch, offset] => Some(EpochEntry {
                    epoch: epoch.parse().ok()?,
                    start_offset: offset.parse().ok()?,
                }),
                _ => None,
            }) {
                Ok(entries) if is_strictly_increasing(&entries) => Some(entries),
                Ok(_) => {
                    warn!(path = %path.display(), "leader-epoch checkpoint is not increasing; rebuilding it");
                    None
                }
                Err(reason) => {
                    warn!(path = %path.display(), %reason, "leader-epoch checkpoint is unreadable; rebuilding it");
                    None
                }
            },
            Err(_) => None,
        };
        let needs_rebuild = loaded.is_none();
        Self {
            path,
            entries: loaded.unwrap_or_default(),
            dirty: needs_rebuild,
            needs_rebuild,
        }
    }

    /// Whether the checkpoint could not be used, so that the log must feed
    /// every batch's epoch to [`LeaderEpochCache::assign`].
    pub fn needs_rebuild(&self) -> bool {
        self.needs_rebuild
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.epoch)
    }

    /// Records that `epoch` began at `start_offset`, if it is newer than the
    /// latest known epoch, or the latest epoch itself starting earlier than
    /// recorded (Kafka's `LeaderEpochFileCache.isUpdateNeeded`: a rebuild
    /// from the batches after a crash can find the latest epoch's first
    /// batch below a checkpointed start). Older epochs are ignored.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) {
        if epoch < 0 {
            return;
        }
        if let Some(last) = self.entries.last() {
            if epoch < last.epoch || (epoch == last.epoch && start_offset >= last.start_offset) {
                return;
            }
            // An epoch starting before the previous one's start means the
            // previous one wrote nothing that survived; replace it.
            while self
                .entries
                .last()
                .is_some_and(|e| e.start_offset >= start_offset)
            {
                self.entries.pop();
            }
        }
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        self.dirty = true;
    }

    /// Removes every epoch that starts at or after `end_offset` (the log was
    /// truncated to it).
    pub fn truncate_from_end(&mut self, end_offset: i64) {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < end_offset);
        self.dirty |= self.entries.len() != before;
    }

    /// The log now starts at `start_offset`: epochs wholly before it go, and
    /// the one it falls in now starts there.
    pub fn truncate_from_start(&mut self, start_offset: i64) {
        let keep_from = self
            .entries
            .iter()
            .rposition(|e| e.start_offset <= start_offset);
        if let Some(index) = keep_from {
            if index > 0 || self.entries[index].start_offset != start_offset {
                self.entries.drain(..index);
                self.entries[0].start_offset = start_offset;
                self.dirty = true;
            }
        }
    }

    /// Kafka's `endOffsetFor`: the end of the largest epoch not above
    /// `requested`, given the log end offset.
    pub fn end_offset_for_epoch(&self, requested: i32, log_end_offset: i64) -> EpochEndOffset {
        if requested < 0 {
            return EpochEndOffset::UNDEFINED;
        }
        if self.latest_epoch() == Some(requested) {
            return EpochEndOffset {
                epoch: requested,
                end_offset: log_end_offset,
            };
        }
        // The first epoch above the one asked for starts where it ended.
        let Some(higher) = self.entries.iter().position(|e| e.epoch > requested) else {
            return EpochEndOffset::UNDEFINED;
        };
        let end_offset = self.entries[higher].start_offset;
        match higher.checked_sub(1) {
            Some(floor) => EpochEndOffset {
                epoch: self.entries[floor].epoch,
                end_offset,
            },
            None => EpochEndOffset {
                epoch: requested,
                end_offset,
            },
        }
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Writes the checkpoint if anything changed since the last write.
    pub fn persist(&mut self) -> Result<()> {
        self.persist_with(true)
    }

    /// Writes the checkpoint if it changed, fsynced only if `sync` (see
    /// `checkpoint::write_atomically_with`).
    pub fn persist_with(&mut self, sync: bool) -> Result<()> {
        if self.dirty {
            let contents = checkpoint::encode(&self.entries);
            checkpoint::write_atomically_with(&self.path, &contents, sync)?;
            self.dirty = false;
        }
        Ok(())
    }
}

fn is_strictly_increasing(entries: &[EpochEntry]) -> bool {
    entries
        .windows(2)
        .all(|w| w[0].epoch < w[1].epoch && w[0].start_offset < w[1].start_offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> LeaderEpochCache {
        let mut cache = LeaderEpochCache {
            path: PathBuf::from("/nonexistent"),
            entries: Vec::new(),
            dirty: false,
            needs_rebuild: false,
        };
        for &(epoch, offset) in entries {
            cache.assign(epoch, offset);
        }
        cache
    }

    fn pairs(cache: &LeaderEpochCache) -> Vec<(i32, i64)> {
        cache
            .entries
            .iter()
            .map(|e| (e.epoch, e.start_offset))
            .collect()
    }

    #[test]
    fn assign_keeps_only_newer_epochs() {
        let mut c = cache(&[(1, 0), (1, 5), (0, 7), (3, 10)]);
        assert_eq!(pairs(&c), vec![(1, 0), (3, 10)]);
        c.assign(4, 10);
        assert_eq!(pairs(&c), vec![(1, 0), (4, 10)]);
        c.assign(-1, 20);
        assert_eq!(pairs(&c), vec![(1, 0), (4, 10)]);
    }

    #[test]
    fn the_latest_epoch_moves_to_an_earlier_start() {
        let mut c = cache(&[(2, 0), (3, 10)]);
        c.assign(3, 12);
        assert_eq!(pairs(&c), vec![(2, 0), (3, 10)]);
        c.assign(3, 5);
        assert_eq!(pairs(&c), vec![(2, 0), (3, 5)]);
        // Starting at or before an older epoch's start replaces that too.
        c.assign(3, 0);
        assert_eq!(pairs(&c), vec![(3, 0)]);
        c.assign(2, 0);
        assert_eq!(pairs(&c), vec![(3, 0)]);
    }

    #[test]
    fn end_offset_for_epoch_matches_kafka() {
        let c = cache(&[(1, 0), (3, 10), (5, 20)]);
        let leo = 30;
        let eo = |epoch, end_offset| EpochEndOffset { epoch, end_offset };
        assert_eq!(c.end_offset_for_epoch(5, leo), eo(5, 30));
        assert_eq!(c.end_offset_for_epoch(3, leo), eo(3, 20));
        // An epoch between known ones ends where the next known one starts.
        assert_eq!(c.end_offset_for_epoch(4, leo), eo(3, 20));
        assert_eq!(c.end_offset_for_epoch(1, leo), eo(1, 10));
        // Below every known epoch: the first epoch's start.
        assert_eq!(c.end_offset_for_epoch(0, leo), eo(0, 0));
        // Above every known epoch, or undefined.
        assert_eq!(c.end_offset_for_epoch(6, leo), EpochEndOffset::UNDEFINED);
        assert_eq!(c.end_offset_for_epoch(-1, leo), EpochEndOffset::UNDEFINED);
        assert_eq!(
            cache(&[]).end_offset_for_epoch(0, 0),
            EpochEndOffset::UNDEFINED
        );
    }

    #[test]
    fn truncation_from_both_ends() {
        let mut c = cache(&[(1, 0), (3, 10), (5, 20)]);
        c.truncate_from_end(20);
        assert_eq!(pairs(&c), vec![(1, 0), (3, 10)]);
        c.truncate_from_start(12);
        assert_eq!(pairs(&c), vec![(3, 12)]);
        c.truncate_from_start(5);
        assert_eq!(pairs(&c), vec![(3, 12)]);
        c.truncate_from_end(0);
        assert!(c.entries.is_empty());
    }

    #[test]
    fn persists_and_reloads_and_survives_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = LeaderEpochCache::load(dir.path());
        assert!(c.entries.is_empty());
        c.assign(2, 0);
        c.assign(7, 40);
        c.persist().unwrap();
        assert_eq!(
            pairs(&LeaderEpochCache::load(dir.path())),
            vec![(2, 0), (7, 40)]
        );
        std::fs::write(dir.path().join(FILE_NAME), b"0\n2\n7 40\n2 0\n").unwrap();
        assert!(LeaderEpochCache::load(dir.path()).entries.is_empty());
        std::fs::write(dir.path().join(FILE_NAME), b"\x00\x01garbage").unwrap();
        assert!(LeaderEpochCache::load(dir.path()).entries.is_empty());
    }
}
