//! The logs of one data directory: opening them all at start-up, creating
//! and deleting them, and the per-directory checkpoints that make restarts
//! fast and truncations crash-safe.
//!
//! Files in the data directory, as in Kafka:
//! - `<topic>-<partition>/`: one log each.
//! - `recovery-point-offset-checkpoint`: per log, the offset below which
//!   everything was flushed. A restart after a crash scans only from the
//!   segment holding it.
//! - `log-start-offset-checkpoint`: per log, its start offset (moved by
//!   DeleteRecords inside a segment, which the segment files cannot show).
//! - `.kafka_cleanshutdown`: written last by a clean shutdown, removed at
//!   start-up; when present no log is scanned.
//! - `.lock`: held while a process uses the directory.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rill_types::{Clock, TopicPartition};
use tracing::{info, warn};

use crate::checkpoint;
use crate::cleaner::CleanBounds;
use crate::cleaner::CleanerStats;
use crate::config::LogConfig;
use crate::error::{Result, StorageError};
use crate::files::FileCache;
use crate::log::{FlushObserver, Log, LogOpenOptions};

pub const RECOVERY_POINT_CHECKPOINT: &str = "recovery-point-offset-checkpoint";
pub const LOG_START_OFFSET_CHECKPOINT: &str = "log-start-offset-checkpoint";
/// Each log's high watermark, as Kafka's `replication-offset-checkpoint`.
pub const HIGH_WATERMARK_CHECKPOINT: &str = "replication-offset-checkpoint";
pub const CLEAN_SHUTDOWN_MARKER: &str = ".kafka_cleanshutdown";
const LOCK_FILE: &str = ".lock";
/// Suffix of a partition directory whose deletion was started.
pub(crate) const DELETE_SUFFIX: &str = "-delete";

/// Settings for a [`LogManager`].
#[derive(Debug, Clone)]
pub struct LogManagerConfig {
    /// The most segment files open at once across all logs.
    pub open_files_max: usize,
    /// The configuration of logs found at start-up, until the broker sets
    /// each one's own.
    pub default_log_config: LogConfig,
    /// Told the duration of every flush of every log (for metrics).
    pub flush_observer: Option<Arc<dyn FlushObserver>>,
}

impl Default for LogManagerConfig {
    fn default() -> Self {
        Self {
            open_files_max: FileCache::CAPACITY_DEFAULT,
            default_log_config: LogConfig::default(),
            flush_observer: None,
        }
    }
}

#[derive(Debug)]
pub struct LogManager {
    data_dir: PathBuf,
    clock: Arc<dyn Clock>,
    files: Arc<FileCache>,
    flush_observer: Option<Arc<dyn FlushObserver>>,
    logs: RwLock<HashMap<TopicPartition, Arc<Log>>>,
    /// Logs whose cleaning failed (a corrupt batch); the cleaner leaves them
    /// alone until they are deleted or the process restarts, as Kafka's
    /// does with its uncleanable partitions.
    uncleanable: Mutex<HashSet<TopicPartition>>,
    /// Serialises checkpoint writes, which rewrite whole files.
    checkpointing: Mutex<()>,
    /// Serialises creating and deleting logs, whose file work is done
    /// without `logs` locked (so lookups never wait for it), so that one
    /// log is never opened twice, nor opened while its files are removed.
    creating: Mutex<()>,
    _lock: File,
}

/// What one round of the log cleaner found and did.
#[derive(Debug, Default)]
pub struct CleanerRound {
    /// The highest dirty ratio among the compacted logs.
    pub max_dirty_ratio: f64,
    /// The log cleaned, and how its pass went.
    pub cleaned: Option<(TopicPartition, Result<CleanerStats>)>,
    /// Logs the cleaner leaves alone because a pass over them failed.
    pub uncleanable_partitions: usize,
}

type OffsetsByPartition = HashMap<TopicPartition, i64>;

fn read_offsets_checkpoint(path: &Path) -> OffsetsByPartition {
    let Ok(bytes) = fs::read(path) else {
        return HashMap::new();
    };
    match checkpoint::decode(&bytes, |fields| match fields {
        [topic, partition, offset] => Some((
            TopicPartition::new(
                rill_types::TopicName::new(*topic).ok()?,
                partition.parse().ok()?,
            ),
            offset.parse::<i64>().ok()?,
        )),
        _ => None,
    }) {
        Ok(entries) => entries.into_iter().collect(),
        Err(reason) => {
            warn!(path = %path.display(), %reason, "checkpoint is unreadable; ignoring it");
            HashMap::new()
        }
    }
}

impl LogManager {
    /// Opens every log in `data_dir` (creating the directory if needed).
    pub fn open(data_dir: &Path, config: LogManagerConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        config.default_log_config.validate()?;
        fs::create_dir_all(data_dir).map_err(StorageError::io("create directory", data_dir))?;
        let lock_path = data_dir.join(LOCK_FILE);
        let lock = File::create(&lock_path).map_err(StorageError::io("create", &lock_path))?;
        lock.try_lock().map_err(|e| StorageError::Io {
            op: "lock (is another process using this data directory?)",
            path: lock_path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;

        let marker = data_dir.join(CLEAN_SHUTDOWN_MARKER);
        let clean_shutdown = marker.exists();
        let recovery_points = read_offsets_checkpoint(&data_dir.join(RECOVERY_POINT_CHECKPOINT));
        let log_starts = read_offsets_checkpoint(&data_dir.join(LOG_START_OFFSET_CHECKPOINT));
        let high_watermarks = read_offsets_checkpoint(&data_dir.join(HIGH_WATERMARK_CHECKPOINT));
        let files = FileCache::new(config.open_files_max);
        let mut logs = HashMap::new();
        for entry in fs::read_dir(data_dir).map_err(StorageError::io("list", data_dir))? {
            let entry = entry.map_err(StorageError::io("list", data_dir))?;
            if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(DELETE_SUFFIX) {
                info!(dir = %name, "finishing an interrupted partition deletion");
                fs::remove_dir_all(entry.path())
                    .map_err(StorageError::io("remove", entry.path()))?;
                continue;
            }
            let Some(tp) = TopicPartition::from_dir_name(&name) else {
                // Hidden directories belong to others sharing the data dir
                // (the broker keeps its controller's log in one).
                if !name.starts_with('.') {
                    warn!(dir = %name, "ignoring a directory that is not named <topic>-<partition>");
                }
                continue;
            };
            let options = LogOpenOptions {
                recovery_point: recovery_points.get(&tp).copied().unwrap_or(0),
                log_start_offset: log_starts.get(&tp).copied().unwrap_or(0),
                // A clean marker vouches only for logs it has a recovery point for.
                clean_shutdown: clean_shutdown && recovery_points.contains_key(&tp),
            };
            let log = Log::open(
                &entry.path(),
                config.default_log_config.clone(),
                Arc::clone(&clock),
                Arc::clone(&files),
                options,
            )?
            .with_flush_observer(config.flush_observer.clone());
            if let Some(&high_watermark) = high_watermarks.get(&tp) {
                log.restore_high_watermark(high_watermark);
            }
            logs.insert(tp, Arc::new(log));
        }
        info!(data_dir = %data_dir.display(), logs = logs.len(), clean_shutdown, "opened logs");
        let manager = Self {
            data_dir: data_dir.to_path_buf(),
            clock,
            files,
            flush_observer: config.flush_observer,
            logs: RwLock::new(logs),
            uncleanable: Mutex::new(HashSet::new()),
            checkpointing: Mutex::new(()),
            creating: Mutex::new(()),
            _lock: lock,
        };
        // From here on a crash is not clean; the checkpoints must say where
        // recovery has to start before the marker goes. If they cannot be
        // written (a full disk), the ones on disk still hold: they name
        // only offsets that were durable when they were written, which the
        // last stop's `syncfs` or the recovery points' fsyncs made so, and
        // opening cut nothing below them (damage below a recovery point is
        // not a crash's). Refusing to start would help nobody.
        if let Err(error) = manager.checkpoint() {
            warn!(%error, "cannot write the checkpoints at start-up; keeping the previous ones");
        }
        if clean_shutdown {
            fs::remove_file(&marker).map_err(StorageError::io("remove", &marker))?;
            checkpoint::sync_dir(data_dir)?;
        }
        Ok(manager)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn files(&self) -> &Arc<FileCache> {
        &self.files
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<Arc<Log>> {
        self.logs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tp)
            .cloned()
    }

    pub fn partitions(&self) -> Vec<TopicPartition> {
        self.logs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.logs.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The log of `tp`, created with `config` if it does not exist; an
    /// existing log gets `config`.
    pub fn get_or_create(&self, tp: &TopicPartition, config: LogConfig) -> Result<Arc<Log>> {
        let _creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(log) = self.get(tp) {
            log.set_config(config)?;
            return Ok(log);
        }
        // Opening reads (and may recover) the log's files: `logs` is not
        // locked meanwhile.
        let log = Arc::new(
            Log::open(
                &self.data_dir.join(tp.dir_name()),
                config,
                Arc::clone(&self.clock),
                Arc::clone(&self.files),
                LogOpenOptions::default(),
            )?
            .with_flush_observer(self.flush_observer.clone()),
        );
        self.logs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tp.clone(), Arc::clone(&log));
        Ok(log)
    }

    /// Deletes `tp`'s log and its files (see [`Log::delete`]).
    pub fn delete(&self, tp: &TopicPartition) -> Result<bool> {
        let _creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        let removed = self
            .logs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tp);
        let Some(log) = removed else { return Ok(false) };
        self.uncleanable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tp);
        log.delete()?;
        self.checkpoint()?;
        Ok(true)
    }

    /// Truncates `tp`'s log and checkpoints at once, so that a crash cannot
    /// leave a recovery point above the truncation.
    pub fn truncate_to(&self, tp: &TopicPartition, offset: i64) -> Result<()> {
        if let Some(log) = self.get(tp) {
            log.truncate_to(offset)?;
            self.checkpoint()?;
        }
        Ok(())
    }

    /// DeleteRecords on `tp`, with the new log start checkpointed before
    /// returning. Returns the new log start offset.
    pub fn delete_before(&self, tp: &TopicPartition, offset: i64) -> Result<Option<i64>> {
        let Some(log) = self.get(tp) else {
            return Ok(None);
        };
        let start = log.delete_before(offset)?;
        self.checkpoint()?;
        Ok(Some(start))
    }

    /// Runs retention over every log once (compaction is the log
    /// cleaner's: [`LogManager::clean_dirtiest`]). A log that fails (a full
    /// disk) is logged and skipped so that the others are still cleaned;
    /// the first failure is returned after the pass.
    pub fn run_cleanup(&self) -> Result<()> {
        let mut first_failure = None;
        for (tp, log) in self.snapshot() {
            let result = log.apply_retention();
            if let Err(error) = result {
                warn!(topic = %tp.topic, partition = tp.partition, %error, "cleanup of this log failed; skipping it this pass");
                first_failure.get_or_insert(error);
            }
        }
        self.checkpoint()?;
        first_failure.map_or(Ok(()), Err)
    }

    /// One round of the log cleaner: judges every compacted log and cleans
    /// the dirtiest that needs it (see [`crate::Dirtiness::needs_cleaning`]) with a
    /// key map of at most `dedupe_buffer_bytes`. A log whose pass fails (a
    /// corrupt batch the cleaner cannot read, a full disk) is reported in
    /// the round and not taken again (see `uncleanable`). `stable_offset`
    /// gives each log's last stable offset (the partition's, which its
    /// replica knows), asked of every compacted log to judge it; `bounds`
    /// the whole [`CleanBounds`], asked of the log taken only: nothing at
    /// or past its last stable offset is cleaned, so that no open
    /// transaction and nothing above the high watermark is, and each
    /// active producer keeps what its state needs.
    pub fn clean_dirtiest(
        &self,
        dedupe_buffer_bytes: u64,
        stable_offset: impl Fn(&TopicPartition, &Log) -> i64,
        bounds: impl Fn(&TopicPartition, &Log) -> CleanBounds,
    ) -> CleanerRound {
        let uncleanable = self
            .uncleanable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut round = CleanerRound {
            uncleanable_partitions: uncleanable.len(),
            ..CleanerRound::default()
        };
        let mut dirtiest: Option<(TopicPartition, Arc<Log>, f64)> = None;
        for (tp, log) in self.snapshot() {
            if uncleanable.contains(&tp) {
                continue;
            }
            let Some(dirtiness) = log.dirtiness(stable_offset(&tp, &log)) else {
                continue;
            };
            let ratio = dirtiness.dirty_ratio();
            round.max_dirty_ratio = round.max_dirty_ratio.max(ratio);
            if !dirtiness.needs_cleaning() {
                continue;
            }
            // Logs due by max.compaction.lag.ms count as fully dirty, so
            // that a clean but overdue log is not starved by dirtier ones.
            let rank = if dirtiness.compaction_due { 2.0 } else { ratio };
            if dirtiest.as_ref().is_none_or(|(_, _, best)| rank > *best) {
                dirtiest = Some((tp, log, rank));
            }
        }
        if let Some((tp, log, _)) = dirtiest {
            // Asked again, with the producers read after the last stable
            // offset, so that every producer that wrote below it is there.
            let result = log.clean(dedupe_buffer_bytes, &bounds(&tp, &log));
            if let Err(error) = &result {
                warn!(topic = %tp.topic, partition = tp.partition, %error, "cleaning this log failed; the cleaner leaves it alone from now on");
                self.uncleanable
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(tp.clone());
                round.uncleanable_partitions += 1;
            }
            round.cleaned = Some((tp, result));
        }
        round
    }

    /// Every log, as of now; the map's lock is not held while they are used.
    fn snapshot(&self) -> Vec<(TopicPartition, Arc<Log>)> {
        let logs = self.logs.read().unwrap_or_else(|p| p.into_inner());
        logs.iter()
            .map(|(tp, log)| (tp.clone(), Arc::clone(log)))
            .collect()
    }

    /// Writes the offset checkpoints: recovery points, log starts, high
    /// watermarks.
    pub fn checkpoint(&self) -> Result<()> {
        let _serial = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        let logs = self.snapshot();
        let lines = |value: &dyn Fn(&Log) -> i64| {
            checkpoint::encode(
                logs.iter()
                    .map(|(tp, log)| format!("{} {} {}", tp.topic, tp.partition, value(log))),
            )
        };
        checkpoint::write_atomically(
            &self.data_dir.join(RECOVERY_POINT_CHECKPOINT),
            &lines(&|log| log.recovery_point()),
        )?;
        checkpoint::write_atomically(
            &self.data_dir.join(LOG_START_OFFSET_CHECKPOINT),
            &lines(&|log| log.log_start_offset()),
        )?;
        checkpoint::write_atomically(
            &self.data_dir.join(HIGH_WATERMARK_CHECKPOINT),
            &lines(&|log| log.high_watermark()),
        )
    }

    /// Closes every log, makes all of it durable with one `syncfs` of the
    /// data directory's file system, checkpoints, and writes the clean
    /// shutdown marker, so the next start scans nothing.
    pub fn shutdown(&self) -> Result<()> {
        let logs: Vec<Arc<Log>> = self.snapshot().into_iter().map(|(_, log)| log).collect();
        for log in &logs {
            log.close_unsynced()?;
        }
        let dir = File::open(&self.data_dir).map_err(StorageError::io("open", &self.data_dir))?;
        rustix::fs::syncfs(&dir).map_err(|e| StorageError::Io {
            op: "syncfs",
            path: self.data_dir.clone(),
            source: e.into(),
        })?;
        for log in &logs {
            log.mark_durable();
        }
        self.checkpoint()?;
        if let Some(log) = logs.iter().find(|log| log.fsync_failed()) {
            // Not a clean shutdown: the next start must scan that log's
            // tail rather than trust it.
            return Err(StorageError::Io {
                op: "fsync",
                path: log.dir().to_path_buf(),
                source: std::io::Error::other(
                    "an fsync of this log failed earlier; leaving the shutdown unclean",
                ),
            });
        }
        let marker = self.data_dir.join(CLEAN_SHUTDOWN_MARKER);
        File::create(&marker)
            .and_then(|f| f.sync_all())
            .map_err(StorageError::io("create", &marker))?;
        checkpoint::sync_dir(&self.data_dir)
    }
}
