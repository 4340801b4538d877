//! Partition replicas: every partition this node holds, with its log, its
//! leader epoch and its high watermark, kept in step with the controller's
//! metadata image.
//!
//! On a single node with replication factor 1 the high watermark is the log
//! end offset: the only in-sync replica is the leader itself. The fields are
//! kept apart anyway so that replication adds followers without changing how
//! handlers read a partition.
//!
//! Each partition also holds the state of its idempotent producers
//! ([`rill_storage::producer_state`]): loaded when the partition is opened
//! (a snapshot plus the log after it), checked and updated by every append
//! of a batch with a producer id, snapshotted by housekeeping and at
//! shutdown.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use rill_controller::{MetadataImage, TopicId};
use rill_storage::batch::{self, BatchHeader};
use rill_storage::producer_state::{
    self, AppendCheck, ProducerBatch, ProducerStateConfig, ProducerStateError, ProducerStateManager,
};
use rill_storage::{
    AppendInfo, CleanupPolicy, Log, LogConfig, LogManager, StorageError, TimestampType,
};
use rill_types::{Clock, NodeId, PartitionIndex, TopicPartition};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// One partition this node holds a replica of.
#[derive(Debug)]
pub struct Partition {
    pub tp: TopicPartition,
    pub topic_id: TopicId,
    pub log: Arc<Log>,
    /// This node's id: the partition is led here when `state.leader` is it.
    node_id: NodeId,
    /// Leadership and the replica set, as the last metadata image had
    /// them. One lock, so that they change together: an append holds it
    /// (read) from its leadership check to the end of the append, so a
    /// leadership change (write, in [`ReplicaManager::apply_image`]) never
    /// falls between the check and the append, and the batch carries the
    /// epoch it was checked under (Kafka's `leaderIsrUpdateLock`).
    state: RwLock<ReplicaState>,
    /// The offset below which records are committed. A separate atomic
    /// because every fetch reads it; it only moves forward while a leader
    /// appends (with one in-sync replica, to the log end), and is set again
    /// from the log after truncation.
    high_watermark: AtomicI64,
    /// Idempotent producers' epochs and last batches. A `std` mutex held
    /// across the check of a producer's batch, its append and its
    /// recording, so that two copies of one retried batch cannot both pass
    /// the check (Kafka holds its log lock the same way). Appends without a
    /// producer id do not take it.
    producers: Mutex<ProducerStateManager>,
    clock: Arc<dyn Clock>,
}

/// What the metadata says of a partition: who leads it, in which epochs,
/// which replicas it has and which are in sync.
///
/// Invariant (from the controller's image): `leader` is `-1` or a member
/// of `isr`, and `isr` is within `replicas`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaState {
    pub leader: NodeId,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub replicas: Vec<NodeId>,
    pub isr: Vec<NodeId>,
    /// The topic's `min.insync.replicas`.
    pub min_insync_replicas: i32,
}

impl ReplicaState {
    fn assert_consistent(&self) {
        debug_assert!(self.leader == -1 || self.isr.contains(&self.leader));
        debug_assert!(self.isr.iter().all(|r| self.replicas.contains(r)));
    }
}

/// A leader append that succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderAppend {
    pub info: AppendInfo,
    /// The batch was a producer's retry of one already in the log: nothing
    /// was appended, and `info` gives the original's offsets.
    pub duplicate: bool,
}

/// Why a leader append was refused.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Producer(#[from] ProducerStateError),
    /// INVALID_RECORD: a batch the producer rules do not allow, such as an
    /// idempotent batch sharing a request with others.
    #[error("{0}")]
    InvalidRecord(String),
    /// INVALID_TXN_STATE: a transactional batch, with no transaction
    /// coordinator to have begun its transaction.
    #[error("{0}")]
    InvalidTxnState(String),
    /// NOT_LEADER_OR_FOLLOWER: this node does not lead the partition (any
    /// more), checked under the state lock with the append.
    #[error("this node does not lead the partition")]
    NotLeader,
    /// NOT_ENOUGH_REPLICAS: fewer in-sync replicas than the topic's
    /// `min.insync.replicas` (checked for acks=all, before the append).
    #[error("{isr} in-sync replicas, fewer than min.insync.replicas {min}")]
    NotEnoughReplicas { isr: usize, min: i32 },
}

impl Partition {
    /// A copy of the partition's leadership and replica set.
    pub fn state(&self) -> ReplicaState {
        self.read_state().clone()
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, ReplicaState> {
        // A panic under this lock is a bug already reported; the state is
        // whole (it is replaced in one assignment).
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn leader(&self) -> NodeId {
        self.read_state().leader
    }

    /// Whether this node leads the partition now.
    pub fn is_leader(&self) -> bool {
        self.leader() == self.node_id
    }

    pub fn leader_epoch(&self) -> i32 {
        self.read_state().leader_epoch
    }

    pub fn isr_size(&self) -> i32 {
        self.read_state().isr.len() as i32
    }

    pub fn min_insync_replicas(&self) -> i32 {
        self.read_state().min_insync_replicas
    }

    /// The offset below which records are committed: visible to consumers.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// Appends a producer's batches as leader and, with every replica in
    /// sync (this node alone), moves the high watermark to the new log end.
    ///
    /// A batch with a producer id goes through the idempotence rules first
    /// (see [`rill_storage::producer_state`]): a retry of one of the
    /// producer's last five batches is answered with the original's offsets
    /// and not appended; a gap or a fenced epoch is refused.
    ///
    /// Refused with [`AppendError::NotLeader`] unless this node leads the
    /// partition, checked under the state lock held to the append's end;
    /// with `require_min_isr` (acks=all), [`AppendError::NotEnoughReplicas`]
    /// when the ISR is smaller than `min.insync.replicas`.
    pub fn append_as_leader(
        &self,
        records: &mut [u8],
        require_min_isr: bool,
    ) -> Result<LeaderAppend, AppendError> {
        let state = self.read_state();
        if state.leader != self.node_id {
            return Err(AppendError::NotLeader);
        }
        if require_min_isr && (state.isr.len() as i32) < state.min_insync_replicas {
            return Err(AppendError::NotEnoughReplicas {
                isr: state.isr.len(),
                min: state.min_insync_replicas,
            });
        }
        let leader_epoch = state.leader_epoch;
        let Some((header, batch)) = producer_batch(records)? else {
            let info = self.log.append(records, leader_epoch)?;
            self.advance_high_watermark(&info);
            return Ok(LeaderAppend {
                info,
                duplicate: false,
            });
        };
        if header.is_control() {
            return Err(AppendError::InvalidRecord(
                "clients may not write control batches".to_string(),
            ));
        }
        if header.is_transactional() {
            return Err(AppendError::InvalidTxnState(format!(
                "transactional batch of producer {} is not part of an ongoing transaction (this broker has no transactions)",
                batch.producer_id
            )));
        }
        let mut producers = self.lock_producers();
        match producers.check(&batch)? {
            AppendCheck::Duplicate(original) => {
                drop(producers);
                // Kafka checks the batch itself (CRC, record count) before
                // it looks for a duplicate; a damaged retry is an error.
                let corrupt = |reason| StorageError::Corrupt {
                    batch_index: 0,
                    reason,
                };
                let header = batch::check(records).map_err(corrupt)?;
                batch::check_record_count(&header).map_err(corrupt)?;
                debug!(
                    topic = %self.tp.topic,
                    partition = self.tp.partition,
                    producer_id = batch.producer_id,
                    producer_epoch = batch.producer_epoch,
                    sequence = batch.first_seq,
                    offset = original.first_offset,
                    "duplicate batch; answering with the original's offsets"
                );
                let log_append_time =
                    if self.log.config().timestamp_type == TimestampType::LogAppendTime {
                        original.timestamp
                    } else {
                        -1
                    };
                Ok(LeaderAppend {
                    info: AppendInfo {
                        base_offset: original.first_offset,
                        last_offset: original.last_offset,
                        log_append_time,
                        log_start_offset: self.log.log_start_offset(),
                        batch_count: 1,
                    },
                    duplicate: true,
                })
            }
            AppendCheck::Append => {
                let info = self.log.append(records, leader_epoch)?;
                // The log wrote the offsets (and, under LogAppendTime, the
                // max timestamp) into the batch.
                let appended = BatchHeader::parse(records).expect("the log validated the batch");
                let appended =
                    ProducerBatch::from_header(&appended).expect("the batch has a producer id");
                assert_eq!(appended.first_offset, info.base_offset);
                producers.record(&appended, self.clock.now_ms());
                drop(producers);
                self.advance_high_watermark(&info);
                Ok(LeaderAppend {
                    info,
                    duplicate: false,
                })
            }
        }
    }

    fn advance_high_watermark(&self, info: &AppendInfo) {
        self.high_watermark
            .fetch_max(info.last_offset + 1, Ordering::AcqRel);
    }

    fn lock_producers(&self) -> MutexGuard<'_, ProducerStateManager> {
        // A panic under this lock is a bug already reported; the state is
        // still the best there is.
        self.producers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many producers this partition remembers.
    pub fn producer_count(&self) -> usize {
        self.lock_producers().len()
    }

    /// Forgets producers idle past `producer.id.expiration.ms`, and reports
    /// those forgotten to stay within the per-partition bound.
    pub fn expire_producers(&self) {
        let now_ms = self.clock.now_ms();
        let (expired, evicted) = {
            let mut producers = self.lock_producers();
            (producers.expire(now_ms), producers.take_evicted())
        };
        if expired > 0 {
            debug!(topic = %self.tp.topic, partition = self.tp.partition, expired, "expired idle producers");
        }
        if evicted > 0 {
            let producers_max = self.lock_producers().config().producers_max;
            warn!(
                topic = %self.tp.topic,
                partition = self.tp.partition,
                evicted,
                producers_max,
                "forgot active producers to stay within the per-partition bound; their retries may be appended twice"
            );
        }
    }

    /// Writes a snapshot of the producer state if it changed since the last
    /// one. With `sync`, the log is flushed up to the snapshot's offset and
    /// the snapshot fsynced first, so that it never describes batches a
    /// crash could take back; without, the caller syncs the file system
    /// before it relies on the snapshot (shutdown). Blocking.
    pub fn snapshot_producers(&self, sync: bool) -> Result<(), StorageError> {
        let (offset, bytes) = {
            let mut producers = self.lock_producers();
            // Under the lock no producer's append is half done: every batch
            // with a producer id below the log end is in the state.
            let offset = self.log.log_end_offset();
            match producers.take_snapshot() {
                Some(bytes) => (offset, bytes),
                None => return Ok(()),
            }
        };
        let written = (|| {
            if sync {
                self.log.flush_until(offset)?;
            }
            producer_state::write_snapshot(self.log.dir(), offset, &bytes, sync)
        })();
        if written.is_err() {
            self.lock_producers().mark_dirty();
        }
        written
    }

    /// Re-reads the high watermark from the log after an operation that can
    /// move the log end or start (DeleteRecords, truncation).
    pub fn refresh_high_watermark(&self) {
        self.high_watermark
            .store(self.log.log_end_offset(), Ordering::Release);
    }
}

/// The producer fields of a request's batches, if they carry a producer id.
/// Kafka takes exactly one batch per partition in a produce request (its
/// `LogValidator` refuses more), so an idempotent batch must come alone:
/// several batches of one producer in one request could not all be retried
/// as one. Requests without producer ids may carry several, as before.
fn producer_batch(records: &[u8]) -> Result<Option<(BatchHeader, ProducerBatch)>, AppendError> {
    // A header that does not parse is left to the log's validation.
    let Ok(first) = BatchHeader::parse(records) else {
        return Ok(None);
    };
    if first.size() == records.len() {
        return Ok(ProducerBatch::from_header(&first).map(|batch| (first, batch)));
    }
    let any_producer = batch::split(records)
        .filter_map(Result::ok)
        .filter_map(|bytes| BatchHeader::parse(bytes).ok())
        .any(|header| header.producer_id >= 0);
    if any_producer {
        return Err(AppendError::InvalidRecord(
            "a batch with a producer id must be the only batch of its partition in a produce request"
                .to_string(),
        ));
    }
    Ok(None)
}

/// All replicas on this node, by topic and partition.
#[derive(Debug)]
pub struct ReplicaManager {
    node_id: NodeId,
    logs: LogManager,
    log_defaults: LogConfig,
    producer_state: ProducerStateConfig,
    clock: Arc<dyn Clock>,
    partitions: RwLock<HashMap<TopicPartition, Arc<Partition>>>,
    /// Serialises [`ReplicaManager::apply_image`]; holds the version of the
    /// last image applied.
    applied: Mutex<Option<u64>>,
    /// Bumped after every append, so that waiting fetches re-check.
    appended: watch::Sender<u64>,
}

impl ReplicaManager {
    pub fn new(
        node_id: NodeId,
        logs: LogManager,
        log_defaults: LogConfig,
        producer_state: ProducerStateConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            node_id,
            logs,
            log_defaults,
            producer_state,
            clock,
            partitions: RwLock::new(HashMap::new()),
            applied: Mutex::new(None),
            appended: watch::Sender::new(0),
        }
    }

    pub fn logs(&self) -> &LogManager {
        &self.logs
    }

    pub fn log_defaults(&self) -> &LogConfig {
        &self.log_defaults
    }

    /// The replica of `topic`'s partition `partition`, if this node has one.
    pub fn get(&self, topic: &str, partition: PartitionIndex) -> Option<Arc<Partition>> {
        let partitions = self.partitions.read().unwrap_or_else(|p| p.into_inner());
        // Lookups by `&str` would need a borrowed key type; topic names are
        // short, so building the key is cheaper than it looks.
        let tp = TopicPartition::new(rill_types::TopicName::new(topic).ok()?, partition);
        partitions.get(&tp).cloned()
    }

    /// Every partition, as of now; the map's lock is not held while they
    /// are used.
    pub fn all(&self) -> Vec<Arc<Partition>> {
        let partitions = self.partitions.read().unwrap_or_else(|p| p.into_inner());
        partitions.values().cloned().collect()
    }

    /// Expires idle producers in every partition.
    pub fn expire_producers(&self) {
        for partition in self.all() {
            partition.expire_producers();
        }
    }

    /// Snapshots the producer state of every partition where it changed
    /// (see [`Partition::snapshot_producers`]). Blocking. A partition that
    /// fails is logged and skipped; its next snapshot tries again.
    pub fn snapshot_producers(&self, sync: bool) {
        for partition in self.all() {
            if let Err(error) = partition.snapshot_producers(sync) {
                warn!(topic = %partition.tp.topic, partition = partition.tp.partition, %error, "cannot write the producer snapshot");
            }
        }
    }

    /// The version of the last image applied, for heartbeats: the
    /// controller unfences a broker once it has caught up.
    pub fn applied_version(&self) -> u64 {
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(0)
    }

    /// Tells fetches waiting for data that some partition grew.
    pub fn notify_appended(&self) {
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes after each append, for long-polling fetches.
    pub fn subscribe_appends(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Brings the replicas in line with `image`: opens (creating if needed)
    /// the log of every partition assigned to this node, applies topic
    /// configs and leader epochs, and deletes the logs of partitions the
    /// image no longer has (a deleted topic, or a topic deleted and created
    /// again under the same name). Blocking: creates and removes files.
    pub fn apply_image(&self, image: &MetadataImage) {
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        if applied.is_some_and(|version| image.version <= version) {
            return;
        }
        // Dynamic broker configs (AlterConfigs on this broker) are the
        // defaults of every topic that does not set the config itself.
        let dynamic = dynamic_topic_defaults(Some(
            &crate::handlers::configs::dynamic_broker_configs_in_force(image, self.node_id),
        ));
        let defaults = log_config(&self.log_defaults, &dynamic);
        let mut wanted: HashMap<TopicPartition, Wanted> = HashMap::new();
        for topic in image.topics() {
            let config = log_config(&defaults, &topic.configs);
            let min_insync_replicas = topic
                .configs
                .get("min.insync.replicas")
                .or_else(|| dynamic.get("min.insync.replicas"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            for (index, state) in topic.partitions.iter().enumerate() {
                if !state.replicas.contains(&self.node_id) {
                    continue;
                }
                let tp = TopicPartition::new(topic.name.clone(), index as PartitionIndex);
                wanted.insert(
                    tp,
                    Wanted {
                        topic_id: topic.topic_id,
                        state: ReplicaState {
                            leader: state.leader,
                            leader_epoch: state.leader_epoch,
                            partition_epoch: state.partition_epoch,
                            replicas: state.replicas.clone(),
                            isr: state.isr.clone(),
                            min_insync_replicas,
                        },
                        config: config.clone(),
                    },
                );
            }
        }

        let mut partitions = self.partitions.write().unwrap_or_else(|p| p.into_inner());
        // Partitions (and logs found on disk at start-up) that the image
        // no longer has, or has under another topic id.
        let stale: Vec<TopicPartition> = self
            .logs
            .partitions()
            .into_iter()
            .filter(|tp| match (wanted.get(tp), partitions.get(tp)) {
                (None, _) => true,
                (Some(wanted), Some(partition)) => partition.topic_id != wanted.topic_id,
                (Some(_), None) => false,
            })
            .collect();
        for tp in stale {
            partitions.remove(&tp);
            match self.logs.delete(&tp) {
                Ok(_) => {
                    info!(topic = %tp.topic, partition = tp.partition, "deleted partition log")
                }
                Err(error) => {
                    warn!(topic = %tp.topic, partition = tp.partition, %error, "cannot delete partition log")
                }
            }
        }
        for (tp, wanted) in wanted {
            if let Some(partition) = partitions.get(&tp) {
                wanted.state.assert_consistent();
                // Waits for appends in flight under the old state.
                *partition.state.write().unwrap_or_else(|p| p.into_inner()) = wanted.state;
                if *partition.log.config() != wanted.config {
                    if let Err(error) = partition.log.set_config(wanted.config) {
                        warn!(topic = %tp.topic, partition = tp.partition, %error, "cannot apply topic config");
                    }
                }
                continue;
            }
            match self.logs.get_or_create(&tp, wanted.config) {
                Ok(log) => {
                    let Some(producers) = self.load_producers(&tp, &log) else {
                        continue;
                    };
                    let high_watermark = log.log_end_offset();
                    partitions.insert(
                        tp.clone(),
                        Arc::new(Partition {
                            tp,
                            topic_id: wanted.topic_id,
                            log,
                            node_id: self.node_id,
                            state: RwLock::new(wanted.state),
                            high_watermark: AtomicI64::new(high_watermark),
                            producers: Mutex::new(producers),
                            clock: Arc::clone(&self.clock),
                        }),
                    );
                }
                Err(error) => {
                    warn!(topic = %tp.topic, partition = tp.partition, %error, "cannot open partition log")
                }
            }
        }
        *applied = Some(image.version);
    }
}

impl ReplicaManager {
    /// Builds a partition's producer state from its snapshot and log. This
    /// reads the log after the snapshot (all of it without one), so it runs
    /// only where a partition is opened: at start-up before the node is
    /// ready, or for a new, empty partition. A log that cannot be read is
    /// not served, as a log that cannot be opened is not: without its
    /// producer state, retries would be appended twice.
    fn load_producers(&self, tp: &TopicPartition, log: &Log) -> Option<ProducerStateManager> {
        let started = Instant::now();
        match producer_state::load(log, self.producer_state, self.clock.now_ms()) {
            Ok((producers, report)) => {
                if report.batches_replayed > 0 || report.snapshot_offset.is_some() {
                    info!(
                        topic = %tp.topic,
                        partition = tp.partition,
                        producers = producers.len(),
                        snapshot_offset = ?report.snapshot_offset,
                        replay_start_offset = report.replay_start_offset,
                        replay_end_offset = report.replay_end_offset,
                        batches_replayed = report.batches_replayed,
                        expired = report.expired,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "loaded producer state"
                    );
                }
                Some(producers)
            }
            Err(error) => {
                warn!(topic = %tp.topic, partition = tp.partition, %error, "cannot load the producer state; not serving this partition");
                None
            }
        }
    }
}

/// What the image says about one partition this node holds.
struct Wanted {
    topic_id: TopicId,
    state: ReplicaState,
    config: LogConfig,
}

/// A topic's log settings: its own configs over the broker's defaults.
/// Values were validated by the controller; one that still does not parse
/// keeps the default.
pub fn log_config(defaults: &LogConfig, configs: &BTreeMap<String, String>) -> LogConfig {
    let mut config = defaults.clone();
    for (name, value) in configs {
        let long = || value.parse::<i64>().ok();
        match name.as_str() {
            "segment.bytes" => set(
                &mut config.segment_bytes,
                long().and_then(|v| u64::try_from(v).ok()),
            ),
            "segment.ms" => set(&mut config.segment_ms, long()),
            "segment.index.bytes" => set(
                &mut config.segment_index_bytes,
                long().and_then(|v| u64::try_from(v).ok()),
            ),
            "index.interval.bytes" => set(
                &mut config.index_interval_bytes,
                long().and_then(|v| u64::try_from(v).ok()),
            ),
            "max.message.bytes" => set(
                &mut config.max_message_bytes,
                long().and_then(|v| u64::try_from(v).ok()),
            ),
            "message.timestamp.type" => set(
                &mut config.timestamp_type,
                match value.as_str() {
                    "CreateTime" => Some(TimestampType::CreateTime),
                    "LogAppendTime" => Some(TimestampType::LogAppendTime),
                    _ => None,
                },
            ),
            "retention.ms" => set(&mut config.retention_ms, long()),
            "retention.bytes" => set(&mut config.retention_bytes, long()),
            "cleanup.policy" => set(&mut config.cleanup_policy, CleanupPolicy::parse(value).ok()),
            "delete.retention.ms" => set(&mut config.delete_retention_ms, long()),
            "min.cleanable.dirty.ratio" => set(
                &mut config.min_cleanable_dirty_ratio,
                value.parse::<f64>().ok(),
            ),
            "min.compaction.lag.ms" => set(&mut config.min_compaction_lag_ms, long()),
            "max.compaction.lag.ms" => set(&mut config.max_compaction_lag_ms, long()),
            _ => {}
        }
    }
    if config.validate().is_err() {
        warn!(
            ?configs,
            "topic configs do not make a valid log config; using the defaults"
        );
        return defaults.clone();
    }
    config
}

/// The value `config` gives the topic config `name`, formatted as Kafka
/// formats it, for the topic configs the log honours; `None` for the others.
pub fn log_config_value(config: &LogConfig, name: &str) -> Option<String> {
    let value = match name {
        "segment.bytes" => config.segment_bytes.to_string(),
        "segment.ms" => config.segment_ms.to_string(),
        "segment.index.bytes" => config.segment_index_bytes.to_string(),
        "index.interval.bytes" => config.index_interval_bytes.to_string(),
        "max.message.bytes" => config.max_message_bytes.to_string(),
        "message.timestamp.type" => match config.timestamp_type {
            TimestampType::CreateTime => "CreateTime".to_string(),
            TimestampType::LogAppendTime => "LogAppendTime".to_string(),
        },
        "retention.ms" => config.retention_ms.to_string(),
        "retention.bytes" => config.retention_bytes.to_string(),
        "cleanup.policy" => config.cleanup_policy.to_string(),
        "delete.retention.ms" => config.delete_retention_ms.to_string(),
        "min.cleanable.dirty.ratio" => config.min_cleanable_dirty_ratio.to_string(),
        "min.compaction.lag.ms" => config.min_compaction_lag_ms.to_string(),
        "max.compaction.lag.ms" => config.max_compaction_lag_ms.to_string(),
        _ => return None,
    };
    Some(value)
}

/// The dynamic broker configs of this node (`log.retention.ms`, …), renamed
/// to the topic configs whose defaults they set (`retention.ms`, …).
/// Entries that are not dynamic broker configs are ignored: the controller
/// accepts only those.
pub fn dynamic_topic_defaults(
    broker_configs: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    broker_configs
        .into_iter()
        .flatten()
        .filter_map(|(name, value)| {
            rill_controller::config::dynamic_broker_config_topic_synonym(name)
                .map(|topic_name| (topic_name.to_string(), value.clone()))
        })
        .collect()
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_controller::{apply, MetadataCommand, MetadataImage};
    use rill_storage::records::BatchBuilder;
    use rill_storage::LogManagerConfig;
    use rill_types::SystemClock;

    fn command(image: &mut MetadataImage, command: MetadataCommand) {
        let version = image.version;
        image.advance_to(version);
        apply(image, &command).expect("the command applies");
    }

    fn batch() -> Vec<u8> {
        let mut builder = BatchBuilder::new();
        builder.push(None, Some(b"v"), 0);
        builder.build()
    }

    /// Leadership is checked with the append, under one lock: while
    /// another thread fences and unfences this node over and over, every
    /// batch the log accepted carries an epoch in which this node led, and
    /// every refusal is NOT_LEADER.
    #[test]
    fn appends_carry_an_epoch_in_which_this_node_led() {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let logs =
            LogManager::open(dir.path(), LogManagerConfig::default(), Arc::clone(&clock)).unwrap();
        let replicas = Arc::new(ReplicaManager::new(
            1,
            logs,
            LogConfig::default(),
            ProducerStateConfig::default(),
            clock,
        ));
        let mut image = MetadataImage::default();
        command(
            &mut image,
            MetadataCommand::RegisterBroker {
                node_id: 1,
                incarnation_id: uuid::Uuid::nil(),
                directory_id: uuid::Uuid::nil(),
                host: "h".into(),
                port: 9092,
                rack: None,
            },
        );
        let unfence = MetadataCommand::UnfenceBroker {
            node_id: 1,
            broker_epoch: 1,
        };
        let fence = MetadataCommand::FenceBroker {
            node_id: 1,
            broker_epoch: 1,
        };
        let fence_again = fence.clone();
        command(&mut image, unfence.clone());
        command(
            &mut image,
            MetadataCommand::CreateTopic {
                name: "t".into(),
                topic_id: uuid::Uuid::from_u128(1),
                partitions: 1,
                replication_factor: 1,
                configs: BTreeMap::new(),
                assignments: None,
            },
        );
        replicas.apply_image(&image);
        let partition = replicas.get("t", 0).unwrap();

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flipper = {
            let replicas = Arc::clone(&replicas);
            let stop = Arc::clone(&stop);
            let mut image = image.clone();
            std::thread::spawn(move || {
                let mut led_epochs = vec![0];
                for round in 0..200 {
                    let next = if round % 2 == 0 { &fence } else { &unfence };
                    command(&mut image, next.clone());
                    let state = &image.topic("t").unwrap().partitions[0];
                    if state.leader == 1 {
                        led_epochs.push(state.leader_epoch);
                    }
                    replicas.apply_image(&image);
                    // Let the appender run in every state.
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                stop.store(true, Ordering::SeqCst);
                (led_epochs, image)
            })
        };
        let (mut appended, mut refused) = (0, 0);
        while !stop.load(Ordering::SeqCst) {
            match partition.append_as_leader(&mut batch(), false) {
                Ok(_) => appended += 1,
                Err(AppendError::NotLeader) => refused += 1,
                Err(other) => panic!("unexpected refusal: {other}"),
            }
        }
        let (led_epochs, mut image) = flipper.join().unwrap();
        // How the two threads interleaved is up to the scheduler; that
        // appends got through is not.
        assert!(appended > 0, "{appended} appended, {refused} refused");
        for entry in partition.log.leader_epochs() {
            assert!(
                led_epochs.contains(&entry.epoch),
                "a batch of epoch {} in the log; this node led in {led_epochs:?}",
                entry.epoch
            );
        }
        // Fenced, the partition refuses appends.
        command(&mut image, fence_again);
        replicas.apply_image(&image);
        assert!(matches!(
            partition.append_as_leader(&mut batch(), false),
            Err(AppendError::NotLeader)
        ));
    }
}
