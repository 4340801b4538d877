//! Partition replicas: every partition this node holds, with its log, its
//! leadership and its high watermark, kept in step with the controller's
//! metadata image (DESIGN.md §7, Kafka's ISR protocol).
//!
//! As **leader** a partition takes producers' appends, tracks how far each
//! follower has fetched ([`Partition::fetched_by_follower`]) and moves the
//! high watermark to the smallest log end offset in the ISR; acks=all
//! waits for it ([`Partition::wait_replicated`]); the ISR task proposes
//! ISR changes to the controller ([`Partition::isr_change`]). As
//! **follower** it appends what the leader's log holds, offsets and epochs
//! kept ([`Partition::append_as_follower`], driven by
//! [`crate::replication`]), and takes the leader's high watermark.
//!
//! Each partition also holds the state of its idempotent producers
//! ([`rill_storage::producer_state`]): loaded when the partition is opened
//! (a snapshot plus the log after it), checked and updated by every leader
//! append of a batch with a producer id and recorded from every follower
//! append (so that a new leader recognises a retry), rebuilt after a
//! truncation, snapshotted by housekeeping and at shutdown.
//!
//! Transactions (DESIGN.md §8): a producer's transactional batches open a
//! transaction in the producer state; a marker the transaction
//! coordinator sends ([`Partition::append_marker`], WriteTxnMarkers) ends
//! it, and an abort is entered in the log's transaction index. The **last
//! stable offset** is the first offset of the earliest transaction not
//! yet decided *and replicated* (its marker below the high watermark), or
//! the high watermark: read_committed consumers read only below it
//! ([`Partition::last_stable_offset`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use rill_controller::{MetadataImage, TopicId};
use rill_storage::batch::{self, BatchHeader};
use rill_storage::producer_state::{
    self, AppendCheck, CompletedTxn, ProducerBatch, ProducerStateConfig, ProducerStateError,
    ProducerStateManager,
};
use rill_storage::txn::{self, AbortedTxn, EndTxnMarker};
use rill_storage::{AppendInfo, Log, LogConfig, LogManager, StorageError, TimestampType};
use rill_types::{Clock, NodeId, PartitionIndex, TopicPartition};
use tokio::sync::{watch, Notify};
use tracing::{debug, error, info, warn};

use crate::disk::{
    DiskError, DiskExecutor, DiskJob, DiskPressure, DiskShard, DiskThreads, QUEUED_JOBS_MAX,
};
use crate::topic_config::{dynamic_topic_defaults, log_config};

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
    /// As leader: how far each follower has fetched, and the ISR change
    /// proposed to the controller and not yet in the image.
    followers: Mutex<Followers>,
    /// Idempotent producers' epochs and last batches. A `std` mutex held
    /// across the check of a producer's batch, its append and its
    /// recording, so that two copies of one retried batch cannot both pass
    /// the check (Kafka holds its log lock the same way). Appends without a
    /// producer id do not take it.
    producers: Mutex<ProducerStateManager>,
    /// Transactions whose marker is written but not yet below the high
    /// watermark, by first offset (value: the marker's offset). They hold
    /// the last stable offset back, as Kafka's `unreplicatedTxns`: a
    /// marker lost with a leader change must not have been read past.
    /// Locked after `producers`.
    completed_txns: Mutex<BTreeMap<i64, i64>>,
    /// Copies of the first offset of the earliest open transaction
    /// (`producers`) and of the earliest key of `completed_txns`
    /// (`i64::MAX`: none), so that a read_committed fetch finds the last
    /// stable offset without the producers lock, which appends hold.
    /// Written under their locks, `completed_first` before
    /// `first_unstable` when a marker moves a transaction from one to the
    /// other, so that a reader that sees the open one gone sees the
    /// completed one (it reads them the other way round).
    first_unstable: AtomicI64,
    completed_first: AtomicI64,
    /// Verifications of transactional producers under way (KIP-890 part
    /// 1). Locked after `producers`.
    verifications: Mutex<Verifications>,
    /// An abort could not be indexed (see `complete_txn`): no producer
    /// snapshot is written from now on, so that a restart replays it.
    abort_unindexed: AtomicBool,
    /// Bumped when the high watermark moves or the leadership changes:
    /// what acks=all waits on, for this partition alone.
    changes: watch::Sender<u64>,
    /// Fetches waiting for this partition to grow (Kafka's delayed fetch
    /// purgatory, keyed by partition): woken, and forgotten, by an append
    /// or a high-watermark move of this partition only.
    fetch_waiters: Mutex<Vec<Weak<Notify>>>,
    /// The thread that does this partition's appends, truncations and
    /// other file work, and the one that fsyncs it (see [`crate::disk`]):
    /// the async workers never wait on this partition's disk.
    io: DiskShard,
    flusher: DiskShard,
    /// Whether this node's appends have been slow lately: then client and
    /// coordinator appends go to `io` too (see
    /// [`Partition::appends_go_to_io_thread`]).
    pressure: Arc<DiskPressure>,
    /// Appends queued on `io` that have not run yet (see
    /// [`Partition::appends_go_to_io_thread`]).
    queued_appends: AtomicUsize,
    /// Every append goes to `io` ([`DiskThreads::appends_on_io_threads`]).
    appends_on_io_threads: bool,
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
    /// `min.insync.replicas`, as far as the replicas can meet it.
    fn effective_min_isr(&self) -> usize {
        usize::try_from(self.min_insync_replicas.max(1))
            .unwrap_or(1)
            .min(self.replicas.len().max(1))
    }

    /// Whether the ISR is below `min.insync.replicas`: then the high
    /// watermark stays where it is (KIP-966's strict rule, which is what
    /// lets a replica that left such an ISR lead without loss).
    fn under_min_isr(&self) -> bool {
        self.isr.len() < self.effective_min_isr()
    }

    /// Whether `node_id` may append as leader now: NOT_LEADER unless it
    /// leads; with `require_min_isr` (acks=all and the coordinators'
    /// writes), NOT_ENOUGH_REPLICAS when the ISR is smaller than
    /// `min.insync.replicas`.
    fn check_leader(&self, node_id: NodeId, require_min_isr: bool) -> Result<(), AppendError> {
        if self.leader != node_id {
            return Err(AppendError::NotLeader);
        }
        if require_min_isr && (self.isr.len() as i32) < self.min_insync_replicas {
            return Err(AppendError::NotEnoughReplicas {
                isr: self.isr.len(),
                min: self.min_insync_replicas,
            });
        }
        Ok(())
    }

    fn assert_consistent(&self) {
        debug_assert!(self.leader == -1 || self.isr.contains(&self.leader));
        debug_assert!(self.isr.iter().all(|r| self.replicas.contains(r)));
    }
}

/// The leader's view of its followers (Kafka's `Replica` states).
#[derive(Debug, Default)]
struct Followers {
    /// Every other replica's progress, since this node became leader.
    progress: HashMap<NodeId, FollowerProgress>,
    /// Where this node's leader epoch began: a follower is caught up
    /// enough to join the ISR only at or past it.
    epoch_start_offset: i64,
    /// The ISR proposed to the controller, until the image has it (or
    /// the proposal failed). The high watermark counts its members as well
    /// as the image's, so that a replica joining the ISR holds everything
    /// committed by the time it is in it (Kafka's "maximal ISR").
    pending_isr: Option<Vec<NodeId>>,
}

/// How far one follower has fetched.
#[derive(Debug, Clone, Copy)]
struct FollowerProgress {
    /// The follower's log end offset (its last fetch offset), which it
    /// holds durably: it fetches offset N only once it has fsynced below
    /// N. `-1` until it fetches in this leader epoch.
    log_end_offset: i64,
    /// The last time its fetch offset reached the leader's log end (or
    /// the leader's log end at its previous fetch): `replica.lag.time.max.ms`
    /// counts from here.
    last_caught_up_ms: i64,
    last_fetch_ms: i64,
    leader_end_at_last_fetch: i64,
}

/// A leader append that succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderAppend {
    pub info: AppendInfo,
    /// The batch was a producer's retry of one already in the log: nothing
    /// was appended, and `info` gives the original's offsets.
    pub duplicate: bool,
    /// The leader epoch the batch was appended in: acks=all waits for the
    /// high watermark in this epoch.
    pub leader_epoch: i32,
}

/// Proof that a transactional batch's partition was found in its
/// producer's ongoing transaction (KIP-890 part 1), handed out by
/// [`Partition::start_verification`] before the coordinator is asked. A
/// marker for the producer written meanwhile voids it, so that a batch
/// verified just before its transaction was aborted (timed out, say)
/// cannot open a new, hanging, transaction after the abort: Kafka's
/// verification guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerificationGuard(u64);

/// The verifications under way in a partition, by producer id: the epoch
/// verified, the guard handed out and when.
#[derive(Debug, Default)]
struct Verifications {
    next: u64,
    by_producer: HashMap<i64, (i16, VerificationGuard, Instant)>,
}

impl Verifications {
    /// Past this many entries, those older than `STALE` (a
    /// verification whose batch never came) are dropped.
    const PRUNE_AT: usize = 4096;
    const STALE: Duration = Duration::from_secs(60);

    fn start(&mut self, producer_id: i64, producer_epoch: i16) -> VerificationGuard {
        if self.by_producer.len() >= Self::PRUNE_AT {
            self.by_producer
                .retain(|_, (_, _, started)| started.elapsed() < Self::STALE);
        }
        self.next += 1;
        let guard = VerificationGuard(self.next);
        self.by_producer
            .insert(producer_id, (producer_epoch, guard, Instant::now()));
        guard
    }

    /// Takes the entry if it is `guard`, for `producer_epoch`.
    fn take(&mut self, producer_id: i64, producer_epoch: i16, guard: VerificationGuard) -> bool {
        let matches = self
            .by_producer
            .get(&producer_id)
            .is_some_and(|&(epoch, held, _)| epoch == producer_epoch && held == guard);
        if matches {
            self.by_producer.remove(&producer_id);
        }
        matches
    }

    fn cancel(&mut self, producer_id: i64, guard: VerificationGuard) {
        if self
            .by_producer
            .get(&producer_id)
            .is_some_and(|&(_, held, _)| held == guard)
        {
            self.by_producer.remove(&producer_id);
        }
    }

    /// A marker for the producer voids its verification.
    fn void(&mut self, producer_id: i64) {
        self.by_producer.remove(&producer_id);
    }
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
    /// more), checked under the state lock with the append; or, for a
    /// follower append, it no longer follows in the epoch fetched for.
    #[error("this node does not lead the partition")]
    NotLeader,
    /// NOT_ENOUGH_REPLICAS: fewer in-sync replicas than the topic's
    /// `min.insync.replicas` (checked for acks=all, before the append).
    #[error("{isr} in-sync replicas, fewer than min.insync.replicas {min}")]
    NotEnoughReplicas { isr: usize, min: i32 },
    /// KAFKA_STORAGE_ERROR: the append's disk job failed (a bug) or the
    /// broker is shutting down.
    #[error(transparent)]
    Disk(#[from] DiskError),
}

/// A leader append of a client's batches, with the flush acks=all needs
/// (see [`Partition::append_for_client`]).
pub type ClientAppended = (LeaderAppend, Option<Result<PendingFlush, DiskError>>);

/// A client's append done, or queued on the partition's I/O thread.
pub type ClientAppend = Appending<ClientAppended>;

/// An append done, or queued on the partition's I/O thread (see
/// [`Partition::append_for_client`] and [`Partition::append_in_order`]).
#[derive(Debug)]
pub enum Appending<T> {
    Ready(Result<T, AppendError>),
    Queued(DiskJob<Result<T, AppendError>>),
}

impl<T> Appending<T> {
    pub async fn result(self) -> Result<T, AppendError> {
        match self {
            Appending::Ready(result) => result,
            Appending::Queued(job) => job.await?,
        }
    }
}

/// An append queued on a partition's I/O thread and not yet run: while
/// one is, the partition's next appends queue behind it (see
/// [`Partition::appends_go_to_io_thread`]). Owned by the job, so it is
/// dropped when the job has run, or was dropped unrun.
struct QueuedAppend(Arc<Partition>);

impl QueuedAppend {
    fn new(partition: &Arc<Partition>) -> Self {
        partition.queued_appends.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(partition))
    }
}

impl Drop for QueuedAppend {
    fn drop(&mut self) {
        let before = self.0.queued_appends.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0);
    }
}

/// A flush queued on a partition's flush thread; awaiting it gives its
/// result.
#[derive(Debug)]
pub struct PendingFlush(DiskJob<Result<(), StorageError>>);

impl std::future::IntoFuture for PendingFlush {
    type Output = Result<(), FlushError>;
    type IntoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { Ok(self.0.await??) })
    }
}

/// Why a flush (fsync) did not happen.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Disk(#[from] DiskError),
}

/// Why acks=all did not get its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationError {
    /// NOT_LEADER_OR_FOLLOWER: the leadership moved before the records
    /// were committed; they may be gone.
    #[error("the leadership moved before the records were committed")]
    NotLeader,
    /// NOT_ENOUGH_REPLICAS_AFTER_APPEND: committed, but the ISR shrank
    /// below `min.insync.replicas` meanwhile.
    #[error("the ISR shrank below min.insync.replicas after the append")]
    NotEnoughReplicasAfterAppend,
    /// REQUEST_TIMED_OUT: not committed within the request's timeout.
    #[error("not replicated to the ISR within the request's timeout")]
    Timeout,
}

/// Why a coordinator's append did not become durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurableError {
    #[error("flushing failed: {0}")]
    Flush(String),
    #[error(transparent)]
    Replication(ReplicationError),
}

/// An ISR change for the controller (AlterPartition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrChange {
    pub tp: TopicPartition,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<NodeId>,
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

    fn lock_followers(&self) -> MutexGuard<'_, Followers> {
        self.followers.lock().unwrap_or_else(|p| p.into_inner())
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

    /// The offset below which records are committed: visible to consumers.
    pub fn high_watermark(&self) -> i64 {
        self.log.high_watermark()
    }

    /// Runs `work`, which may block on this partition's files (an append,
    /// a truncation, a search by time), on the partition's I/O thread,
    /// after its work queued before. Async callers use this instead of
    /// calling the blocking methods themselves.
    pub async fn on_io_thread<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Partition) -> T + Send + 'static,
    ) -> Result<T, DiskError> {
        self.submit_io(work).await?.await
    }

    /// Queues `work` on the partition's I/O thread and returns its result
    /// to come, for callers with work for several partitions at once.
    pub async fn submit_io<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Partition) -> T + Send + 'static,
    ) -> Result<DiskJob<T>, DiskError> {
        let partition = Arc::clone(self);
        self.io.submit(move || work(&partition)).await
    }

    /// Where the next append runs: on the partition's I/O thread while any
    /// append on this node was slow lately ([`DiskPressure`]), so that a
    /// disk that pushes back holds up the partitions writing to it and not
    /// the async workers; while appends queued there before have not run
    /// yet, so that appends land in the order they were started; or always
    /// if so configured ([`DiskThreads::appends_on_io_threads`]).
    /// Otherwise on the caller's thread: a page-cache append is quicker
    /// than the switch to another thread and back (bench/README.md).
    fn appends_go_to_io_thread(&self) -> bool {
        self.appends_on_io_threads
            || self.pressure.is_on()
            || self.queued_appends.load(Ordering::Acquire) > 0
    }

    /// Appends a client's batches as leader ([`Partition::append_verified`])
    /// and, with `acks_all`, queues their flush on the partition's flush
    /// thread. The append runs here, on the async worker handling the
    /// request, or on the partition's I/O thread (see
    /// [`Partition::appends_go_to_io_thread`]). A request's appends are all
    /// started before any is awaited ([`Appending::result`]).
    pub async fn append_for_client(
        self: &Arc<Self>,
        records: bytes::Bytes,
        acks_all: bool,
        verified: Option<VerificationGuard>,
    ) -> ClientAppend {
        if self.appends_go_to_io_thread() {
            let job = self
                .io
                .submit(self.queued_append(move |partition| {
                    let appended = partition.append_timed(&records, acks_all, verified)?;
                    let end = appended.info.last_offset + 1;
                    // Queued from here: no trip back to the async workers.
                    // A duplicate waits like its original: the batch that
                    // holds its data may not be flushed yet.
                    let flush = acks_all.then(|| partition.queue_flush(end));
                    Ok((appended, flush))
                }))
                .await;
            return match job {
                Ok(job) => Appending::Queued(job),
                Err(error) => Appending::Ready(Err(error.into())),
            };
        }
        let appended = match self.append_timed(&records, acks_all, verified) {
            Ok(appended) => appended,
            Err(error) => return Appending::Ready(Err(error)),
        };
        let flush = match acks_all {
            true => Some(self.submit_flush(appended.info.last_offset + 1).await),
            false => None,
        };
        Appending::Ready(Ok((appended, flush)))
    }

    /// Runs a coordinator's `append` to this partition (its own records,
    /// or a transaction marker) without ever waiting, so that a caller
    /// holding the lock that orders its decisions can call it: the log
    /// then holds the records in decision order. The append runs here, or
    /// is queued on the partition's I/O thread (see
    /// [`Partition::appends_go_to_io_thread`]), where a full queue refuses
    /// it ([`DiskError::Full`]). Either way its flush is the caller's
    /// ([`Partition::wait_durable`]).
    pub fn append_in_order(
        self: &Arc<Self>,
        append: impl FnOnce(&Partition) -> Result<LeaderAppend, AppendError> + Send + 'static,
    ) -> Appending<LeaderAppend> {
        let timed = |partition: &Partition| partition.timed(append);
        if !self.appends_go_to_io_thread() {
            return Appending::Ready(timed(self));
        }
        match self.io.try_submit(self.queued_append(timed)) {
            Ok(job) => Appending::Queued(job),
            Err(error) => Appending::Ready(Err(error.into())),
        }
    }

    /// `append` as a job for the partition's I/O thread: counted as moved
    /// there, and as queued (holding the partition's next appends behind
    /// it) until it has run or was dropped unrun.
    fn queued_append<T>(
        self: &Arc<Self>,
        append: impl FnOnce(&Partition) -> T + Send + 'static,
    ) -> impl FnOnce() -> T + Send + 'static {
        self.pressure.count_moved_append();
        let queued = QueuedAppend::new(self);
        move || append(&queued.0)
    }

    /// Runs `append`, and tells [`DiskPressure`] how long it took.
    fn timed<T>(&self, append: impl FnOnce(&Partition) -> T) -> T {
        let started = Instant::now();
        let appended = append(self);
        self.pressure.observe(started.elapsed());
        appended
    }

    /// [`Partition::append_verified`] of a copy of `records` (the log
    /// rewrites offsets and the leader epoch in place, and the request's
    /// bytes are shared with its whole frame), timed for [`DiskPressure`].
    fn append_timed(
        &self,
        records: &[u8],
        acks_all: bool,
        verified: Option<VerificationGuard>,
    ) -> Result<LeaderAppend, AppendError> {
        let mut records = records.to_vec();
        let appended =
            self.timed(|partition| partition.append_verified(&mut records, acks_all, verified));
        if !acks_all && appended.is_ok() {
            self.start_writeback_if_due();
        }
        appended
    }

    /// After an append that no flush follows soon (acks=0 and acks=1 on
    /// the leader), has the partition's flush thread start the kernel
    /// writing its unflushed bytes once there are enough of them
    /// ([`Log::take_writeback`]): written back in one burst 30 s later,
    /// they would stall every acks=all fsync on the filesystem meanwhile.
    /// A full queue skips it; the kernel writes them back in the end.
    fn start_writeback_if_due(&self) {
        match self.log.take_writeback() {
            Ok(Some(writeback)) => {
                let tp = self.tp.clone();
                let _ = self.flusher.try_submit(move || {
                    if let Err(error) = writeback.start() {
                        debug!(topic = %tp.topic, partition = tp.partition, %error, "starting writeback failed");
                    }
                });
            }
            Ok(None) => {}
            Err(error) => {
                debug!(topic = %self.tp.topic, partition = self.tp.partition, %error, "cannot open the active segment to start its writeback")
            }
        }
    }

    /// Makes the log durable below `end` (fsync, group-committed: one
    /// flush covers every append before it), on the partition's flush
    /// thread, so that the next append does not wait for it.
    pub async fn flush_until(self: &Arc<Self>, end: i64) -> Result<(), FlushError> {
        self.submit_flush(end).await?.await
    }

    /// Queues [`Partition::flush_until`] and returns its result to come,
    /// for callers flushing several partitions at once.
    pub async fn submit_flush(self: &Arc<Self>, end: i64) -> Result<PendingFlush, DiskError> {
        let log = Arc::clone(&self.log);
        let job = self.flusher.submit(move || log.flush_until(end)).await?;
        Ok(PendingFlush(job))
    }

    /// [`Partition::submit_flush`] from this partition's I/O thread, right
    /// after an append that must be made durable: the flush is queued
    /// without a trip back to the async workers, which would cost a thread
    /// switch on the acks=all path.
    pub fn queue_flush(&self, end: i64) -> Result<PendingFlush, DiskError> {
        let log = Arc::clone(&self.log);
        let job = self.flusher.submit_blocking(move || log.flush_until(end))?;
        Ok(PendingFlush(job))
    }

    /// Appends a producer's batches as leader, and moves the high
    /// watermark if the ISR is this node alone.
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
        self.append_verified(records, require_min_isr, None)
    }

    /// [`Partition::append_as_leader`] for a client's batch that passed
    /// transaction verification with `verified`: a transactional batch
    /// that opens its producer's transaction here is refused
    /// (INVALID_TXN_STATE) unless it carries a guard that no marker for
    /// its producer has voided since.
    pub fn append_verified(
        &self,
        records: &mut [u8],
        require_min_isr: bool,
        verified: Option<VerificationGuard>,
    ) -> Result<LeaderAppend, AppendError> {
        let state = self.read_state();
        state.check_leader(self.node_id, require_min_isr)?;
        let leader_epoch = state.leader_epoch;
        let appended = |info| LeaderAppend {
            info,
            duplicate: false,
            leader_epoch,
        };
        let Some((header, batch)) = producer_batch(records)? else {
            let info = self.log.append(records, leader_epoch)?;
            self.maybe_advance_high_watermark(&state);
            self.wake_fetches();
            return Ok(appended(info));
        };
        if header.is_control() {
            return Err(AppendError::InvalidRecord(
                "clients may not write control batches".to_string(),
            ));
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
                    leader_epoch,
                })
            }
            AppendCheck::Append => {
                if header.is_transactional()
                    && !txn_open(&producers, batch.producer_id, batch.producer_epoch)
                {
                    let verified = verified.is_some_and(|guard| {
                        self.lock_verifications().take(
                            batch.producer_id,
                            batch.producer_epoch,
                            guard,
                        )
                    });
                    if !verified {
                        return Err(AppendError::InvalidTxnState(
                            "the producer's transaction ended in this partition (aborted \
                             or committed) after the batch was checked with its transaction \
                             coordinator: abort the transaction and begin a new one"
                                .to_string(),
                        ));
                    }
                }
                let info = self.log.append(records, leader_epoch)?;
                // The log wrote the offsets (and, under LogAppendTime, the
                // max timestamp) into the batch.
                let appended_header =
                    BatchHeader::parse(records).expect("the log validated the batch");
                let recorded = ProducerBatch::from_header(&appended_header)
                    .expect("the batch has a producer id");
                assert_eq!(recorded.first_offset, info.base_offset);
                producers.record(&recorded, self.clock.now_ms());
                self.publish_unstable(&producers);
                drop(producers);
                self.maybe_advance_high_watermark(&state);
                self.wake_fetches();
                Ok(appended(info))
            }
        }
    }

    /// Appends batches fetched from the leader of `leader_epoch`, as they
    /// are (offsets, epochs, producer ids and sequences kept; CRCs
    /// checked), and records their producers, so that this replica could
    /// lead with every producer's last batches known. Refused with
    /// [`AppendError::NotLeader`] unless this node still follows in that
    /// epoch (a fetch answer that arrives after a leader change is stale).
    /// Nothing is fsynced here.
    pub fn append_as_follower(
        &self,
        records: &[u8],
        leader_epoch: i32,
    ) -> Result<AppendInfo, AppendError> {
        let state = self.read_state();
        if state.leader == self.node_id || state.leader_epoch != leader_epoch {
            return Err(AppendError::NotLeader);
        }
        let mut producers = self.lock_producers();
        let info = self.log.append_replicated(records)?;
        let now_ms = self.clock.now_ms();
        for bytes in batch::split(records).filter_map(Result::ok) {
            let Ok(header) = BatchHeader::parse(bytes) else {
                continue;
            };
            if header.producer_id < 0 {
                continue;
            }
            if header.is_control() {
                // The log checked the batch; a marker it cannot read was
                // written by no Kafka-compatible leader.
                match txn::parse_marker(bytes) {
                    Ok(Some(marker)) => self.marker_written(
                        &mut producers,
                        header.producer_id,
                        header.producer_epoch,
                        marker,
                        header.base_offset,
                    ),
                    Ok(None) => {}
                    Err(error) => {
                        warn!(topic = %self.tp.topic, partition = self.tp.partition, offset = header.base_offset, %error, "unreadable control batch from the leader")
                    }
                }
                continue;
            }
            if let Some(recorded) = ProducerBatch::from_header(&header) {
                producers.record(&recorded, now_ms);
            }
        }
        self.publish_unstable(&producers);
        Ok(info)
    }

    /// Appends a transaction marker as leader (WriteTxnMarkers from the
    /// transaction coordinator): ends the producer's transaction here, and
    /// enters an abort in the transaction index. Refused as Kafka's
    /// `appendEndTxnMarker` refuses it: an epoch older than the producer's
    /// (INVALID_PRODUCER_EPOCH) or a coordinator epoch older than the last
    /// marker's (TRANSACTION_COORDINATOR_FENCED). A marker for a producer
    /// with no transaction here is appended all the same (the coordinator
    /// retries markers; Kafka writes them too) and ends nothing.
    pub fn append_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        marker: EndTxnMarker,
    ) -> Result<LeaderAppend, AppendError> {
        let state = self.read_state();
        state.check_leader(self.node_id, true)?;
        let mut producers = self.lock_producers();
        producers.check_marker(producer_id, producer_epoch, marker.coordinator_epoch)?;
        let now_ms = self.clock.now_ms();
        let mut records = txn::build_marker_batch(producer_id, producer_epoch, marker, now_ms);
        let info = self.log.append(&mut records, state.leader_epoch)?;
        self.marker_written(
            &mut producers,
            producer_id,
            producer_epoch,
            marker,
            info.base_offset,
        );
        drop(producers);
        self.maybe_advance_high_watermark(&state);
        self.wake_fetches();
        Ok(LeaderAppend {
            info,
            duplicate: false,
            leader_epoch: state.leader_epoch,
        })
    }

    /// Appends a transaction coordinator's own transactional records
    /// (TxnOffsetCommit's offsets, to `__consumer_offsets`) as leader.
    /// Kafka appends them with origin COORDINATOR: the producer's epoch is
    /// checked, its sequences are not (the coordinator numbers nothing).
    pub fn append_as_coordinator(&self, records: &mut [u8]) -> Result<LeaderAppend, AppendError> {
        let state = self.read_state();
        state.check_leader(self.node_id, true)?;
        let Some((header, batch)) = producer_batch(records)? else {
            return Err(AppendError::InvalidRecord(
                "a coordinator's transactional batch needs a producer id".to_string(),
            ));
        };
        assert!(header.is_transactional() && !header.is_control());
        let mut producers = self.lock_producers();
        if let Some(entry) = producers.entry(batch.producer_id) {
            if batch.producer_epoch < entry.producer_epoch() {
                return Err(AppendError::Producer(
                    ProducerStateError::InvalidProducerEpoch {
                        producer_id: batch.producer_id,
                        producer_epoch: batch.producer_epoch,
                        current_epoch: entry.producer_epoch(),
                    },
                ));
            }
        }
        let info = self.log.append(records, state.leader_epoch)?;
        let appended = BatchHeader::parse(records).expect("the log validated the batch");
        let recorded = ProducerBatch::from_header(&appended).expect("the batch has a producer id");
        producers.record(&recorded, self.clock.now_ms());
        self.publish_unstable(&producers);
        drop(producers);
        self.maybe_advance_high_watermark(&state);
        self.wake_fetches();
        Ok(LeaderAppend {
            info,
            duplicate: false,
            leader_epoch: state.leader_epoch,
        })
    }

    /// A marker is in the log at `offset` (appended as leader or copied as
    /// follower): it ends the producer's transaction, voids a verification
    /// of the producer under way, and the transaction completes here.
    /// Called under the producers lock.
    fn marker_written(
        &self,
        producers: &mut ProducerStateManager,
        producer_id: i64,
        producer_epoch: i16,
        marker: EndTxnMarker,
        offset: i64,
    ) {
        let completed = producers.record_marker(
            producer_id,
            producer_epoch,
            marker,
            offset,
            self.clock.now_ms(),
        );
        self.lock_verifications().void(producer_id);
        self.complete_txn(producers, completed);
        self.publish_unstable(producers);
    }

    /// After a marker ended a transaction: an abort goes into the log's
    /// transaction index, and the transaction holds the last stable offset
    /// until its marker is replicated. Called under the producers lock.
    ///
    /// An abort the index cannot take (the disk failed) holds the last
    /// stable offset at the transaction's start for good: read_committed
    /// readers of the partition stop there rather than read records they
    /// would not know to skip. Producer snapshots stop too, so that the
    /// next start replays the marker from the log and indexes it then.
    fn complete_txn(&self, producers: &ProducerStateManager, completed: Option<CompletedTxn>) {
        let Some(completed) = completed else {
            return;
        };
        assert!(completed.first_offset <= completed.last_offset);
        let mut held_until = completed.last_offset;
        if completed.is_aborted {
            let indexed = self.log.add_aborted_txn(AbortedTxn {
                producer_id: completed.producer_id,
                first_offset: completed.first_offset,
                last_offset: completed.last_offset,
                last_stable_offset: producers.last_stable_offset_after(&completed),
            });
            if let Err(error) = indexed {
                error!(
                    topic = %self.tp.topic,
                    partition = self.tp.partition,
                    producer_id = completed.producer_id,
                    first_offset = completed.first_offset,
                    marker = completed.last_offset,
                    %error,
                    "cannot index an aborted transaction: read_committed reads of this \
                     partition stop at its first offset until a restart indexes it from the log"
                );
                self.abort_unindexed.store(true, Ordering::Release);
                held_until = i64::MAX;
            }
        }
        let mut completed_txns = self.lock_completed_txns();
        completed_txns.insert(completed.first_offset, held_until);
        let first = completed_txns.keys().next().copied().unwrap_or(i64::MAX);
        self.completed_first.store(first, Ordering::Release);
    }

    /// Publishes the producer state's first unstable offset for
    /// [`Partition::last_stable_offset`]; called under the producers lock
    /// after every change to it.
    fn publish_unstable(&self, producers: &ProducerStateManager) {
        let first = producers.first_unstable_offset().unwrap_or(i64::MAX);
        self.first_unstable.store(first, Ordering::Release);
    }

    fn lock_completed_txns(&self) -> MutexGuard<'_, BTreeMap<i64, i64>> {
        self.completed_txns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The last stable offset: read_committed consumers read below it. The
    /// first offset of the earliest transaction that is still open here,
    /// or decided but with its marker not yet replicated; else the high
    /// watermark.
    pub fn last_stable_offset(&self) -> i64 {
        let high_watermark = self.high_watermark();
        // `first_unstable` before `completed_first`: see the fields.
        let ongoing = self.first_unstable.load(Ordering::Acquire);
        let mut completed = self.completed_first.load(Ordering::Acquire);
        if completed < high_watermark {
            // Markers below the high watermark are replicated: their
            // transactions no longer hold anything back.
            let mut completed_txns = self.lock_completed_txns();
            completed_txns.retain(|_, marker| *marker >= high_watermark);
            completed = completed_txns.keys().next().copied().unwrap_or(i64::MAX);
            self.completed_first.store(completed, Ordering::Release);
        }
        high_watermark.min(ongoing).min(completed)
    }

    /// Reads the whole log, from its start to its end, and calls `visit`
    /// with each batch (its header and bytes): what a coordinator taking
    /// the partition over loads. To the log end, not the high watermark:
    /// as the new leader, its log is the partition's, and what lies above
    /// the high watermark is committed once the followers fetch it (Kafka's
    /// coordinators load to the log end too). A batch that does not parse
    /// ends its chunk. A read that fails ends the whole read with its
    /// error, after `visit` has seen what came before. Blocking.
    pub fn read_whole_log(
        &self,
        mut visit: impl FnMut(&BatchHeader, &[u8]),
    ) -> Result<(), StorageError> {
        const CHUNK_BYTES: u64 = 1024 * 1024;
        let end = self.log.log_end_offset();
        let mut next = self.log.log_start_offset();
        let mut buf = Vec::new();
        while next < end {
            buf.clear();
            let info = self.log.read_into(next, CHUNK_BYTES, end, &mut buf)?;
            if info.next_offset <= next {
                break;
            }
            next = info.next_offset;
            for bytes in batch::split(&buf) {
                let Ok(bytes) = bytes else { break };
                let Ok(header) = BatchHeader::parse(bytes) else {
                    break;
                };
                visit(&header, bytes);
            }
        }
        Ok(())
    }

    /// What the log cleaner may do here: clean below the last stable
    /// offset, keeping what each producer's state needs. The producers are
    /// read after the offset, so that every producer that wrote below it
    /// is among them.
    pub fn clean_bounds(&self) -> rill_storage::CleanBounds {
        let stable_offset = self.last_stable_offset();
        rill_storage::CleanBounds {
            stable_offset,
            producers: self.lock_producers().tails(),
        }
    }

    /// Whether `producer_id` at `producer_epoch` has a transaction open
    /// here: its next transactional batch needs no verification with the
    /// transaction coordinator (KIP-890 part 1).
    pub fn has_open_txn(&self, producer_id: i64, producer_epoch: i16) -> bool {
        txn_open(&self.lock_producers(), producer_id, producer_epoch)
    }

    /// Starts verifying a transactional batch of `producer_id` at
    /// `producer_epoch`: the guard its append must carry (see
    /// [`VerificationGuard`]), replacing any earlier one of the producer.
    pub fn start_verification(&self, producer_id: i64, producer_epoch: i16) -> VerificationGuard {
        self.lock_verifications().start(producer_id, producer_epoch)
    }

    /// Forgets a verification the coordinator refused.
    pub fn cancel_verification(&self, producer_id: i64, guard: VerificationGuard) {
        self.lock_verifications().cancel(producer_id, guard);
    }

    fn lock_verifications(&self) -> MutexGuard<'_, Verifications> {
        self.verifications.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The producers with a transaction open here: (producer id, epoch,
    /// first offset of the transaction), for DescribeProducers and the
    /// hanging-transaction tools.
    pub fn producer_entries(&self) -> Vec<(i64, producer_state::ProducerEntry)> {
        self.lock_producers()
            .entries()
            .map(|(id, entry)| (*id, entry.clone()))
            .collect()
    }

    /// As follower: takes the leader's high watermark, up to this log's
    /// end. Returns whether it moved.
    pub fn follow_high_watermark(&self, leader_high_watermark: i64) -> bool {
        let moved = self.log.advance_high_watermark(leader_high_watermark);
        if moved {
            // Consumers reading from this follower (KIP-392) may read on.
            self.wake_fetches();
        }
        moved
    }

    /// Waits until a leader append is committed as acks=all commits it:
    /// flushed here, then replicated to the ISR, within `timeout`. What the
    /// coordinators' own writes (groups, transactions, markers) wait for
    /// before they count.
    pub async fn wait_durable(
        self: &Arc<Self>,
        appended: &LeaderAppend,
        timeout: Duration,
    ) -> Result<(), DurableError> {
        let end = appended.info.last_offset + 1;
        let deadline = tokio::time::Instant::now() + timeout;
        if let Err(error) = self.flush_until(end).await {
            return Err(DurableError::Flush(error.to_string()));
        }
        self.wait_replicated(end, appended.leader_epoch, deadline)
            .await
            .map_err(DurableError::Replication)
    }

    /// As leader: records that follower `replica` fetched from
    /// `fetch_offset` (its log end offset), and moves the high watermark
    /// if the ISR now holds more. Returns whether the high watermark moved,
    /// or `None` when this node does not lead or `replica` is not a
    /// replica of the partition.
    pub fn fetched_by_follower(&self, replica: NodeId, fetch_offset: i64) -> Option<bool> {
        let state = self.read_state();
        if state.leader != self.node_id || !state.replicas.contains(&replica) {
            return None;
        }
        let now_ms = self.clock.now_ms();
        let leader_end = self.log.log_end_offset();
        {
            let mut followers = self.lock_followers();
            let progress = followers
                .progress
                .entry(replica)
                .or_insert(FollowerProgress {
                    log_end_offset: -1,
                    last_caught_up_ms: now_ms,
                    last_fetch_ms: now_ms,
                    leader_end_at_last_fetch: leader_end,
                });
            // Kafka's `Replica.updateFetchState`: caught up now if it asked
            // for the log end; caught up at its previous fetch if it asked
            // for what the log end was then.
            if fetch_offset >= leader_end {
                progress.last_caught_up_ms = now_ms;
            } else if fetch_offset >= progress.leader_end_at_last_fetch {
                progress.last_caught_up_ms = progress.last_caught_up_ms.max(progress.last_fetch_ms);
            }
            progress.log_end_offset = fetch_offset;
            progress.last_fetch_ms = now_ms;
            progress.leader_end_at_last_fetch = leader_end;
        }
        Some(self.maybe_advance_high_watermark(&state))
    }

    /// Moves the high watermark to the smallest log end offset among the
    /// ISR (with any proposed additions), if that is further, and only
    /// while the ISR has `min.insync.replicas` members (KIP-966). The
    /// leader's own log end counts as is: acks=all flushes the leader's
    /// log itself.
    fn maybe_advance_high_watermark(&self, state: &ReplicaState) -> bool {
        if state.leader != self.node_id || state.under_min_isr() {
            return false;
        }
        let mut committed = self.log.log_end_offset();
        {
            let followers = self.lock_followers();
            let pending = followers.pending_isr.iter().flatten();
            for replica in state.isr.iter().chain(pending) {
                if *replica == self.node_id {
                    continue;
                }
                let end = followers
                    .progress
                    .get(replica)
                    .map_or(-1, |p| p.log_end_offset);
                committed = committed.min(end);
            }
        }
        let moved = self.log.advance_high_watermark(committed);
        if moved {
            self.notify_change();
            self.wake_fetches();
        }
        moved
    }

    fn notify_change(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Makes `waiter` notified at this partition's next append or
    /// high-watermark move (once: a fetch that goes on waiting watches
    /// again). Dead registrations of fetches that ended are pruned as the
    /// list grows.
    pub fn watch_fetch(&self, waiter: &Arc<Notify>) {
        let mut waiters = self.fetch_waiters.lock().unwrap_or_else(|p| p.into_inner());
        if waiters.len() >= FETCH_WAITERS_PRUNE_AT && waiters.len().is_power_of_two() {
            waiters.retain(|w| w.strong_count() > 0);
        }
        waiters.push(Arc::downgrade(waiter));
    }

    /// Wakes the fetches watching this partition.
    fn wake_fetches(&self) {
        let waiters =
            std::mem::take(&mut *self.fetch_waiters.lock().unwrap_or_else(|p| p.into_inner()));
        for waiter in waiters.iter().filter_map(Weak::upgrade) {
            waiter.notify_one();
        }
    }

    /// acks=all: waits until everything below `end_offset`, appended in
    /// `leader_epoch`, is committed (below the high watermark), or the
    /// leadership moves, or `deadline` passes. The leader's own flush is
    /// the caller's (see `handlers::produce`).
    pub async fn wait_replicated(
        &self,
        end_offset: i64,
        leader_epoch: i32,
        deadline: tokio::time::Instant,
    ) -> Result<(), ReplicationError> {
        let mut changes = self.changes.subscribe();
        loop {
            changes.borrow_and_update();
            {
                let state = self.read_state();
                if state.leader != self.node_id || state.leader_epoch != leader_epoch {
                    return Err(ReplicationError::NotLeader);
                }
                // Kafka's `Partition.checkEnoughReplicasReachOffset`; under
                // the minimum the high watermark cannot get there at all.
                if state.under_min_isr() {
                    return Err(ReplicationError::NotEnoughReplicasAfterAppend);
                }
                if self.log.high_watermark() >= end_offset {
                    return Ok(());
                }
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Err(ReplicationError::NotLeader);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Err(ReplicationError::Timeout),
            }
        }
    }

    /// As leader: the ISR change to propose, if one is due and none is in
    /// flight. A follower leaves when it has not caught up with the log
    /// end for `lag_max`; one outside joins once it has reached the high
    /// watermark and this leader epoch's start (Kafka's
    /// `Partition.maybeShrinkIsr` and `maybeExpandIsr`). The proposal is
    /// remembered as pending until the image has a new partition epoch or
    /// [`Partition::isr_change_failed`] is called.
    pub fn isr_change(&self, lag_max: Duration) -> Option<IsrChange> {
        let state = self.read_state();
        if state.leader != self.node_id {
            return None;
        }
        let now_ms = self.clock.now_ms();
        let high_watermark = self.log.high_watermark();
        let mut followers = self.lock_followers();
        if followers.pending_isr.is_some() {
            return None;
        }
        let lag_max_ms = i64::try_from(lag_max.as_millis()).unwrap_or(i64::MAX);
        let mut isr: Vec<NodeId> = state
            .isr
            .iter()
            .copied()
            .filter(|r| {
                *r == self.node_id
                    || followers
                        .progress
                        .get(r)
                        .is_some_and(|p| now_ms.saturating_sub(p.last_caught_up_ms) <= lag_max_ms)
            })
            .collect();
        for replica in &state.replicas {
            if isr.contains(replica) {
                continue;
            }
            if let Some(progress) = followers.progress.get(replica) {
                if progress.log_end_offset >= high_watermark
                    && progress.log_end_offset >= followers.epoch_start_offset
                    && now_ms.saturating_sub(progress.last_caught_up_ms) <= lag_max_ms
                {
                    isr.push(*replica);
                }
            }
        }
        if isr.len() == state.isr.len() && isr.iter().all(|r| state.isr.contains(r)) {
            return None;
        }
        // Replicas in assignment order, as the controller keeps them.
        isr.sort_by_key(|r| state.replicas.iter().position(|x| x == r));
        followers.pending_isr = Some(isr.clone());
        Some(IsrChange {
            tp: self.tp.clone(),
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            isr,
        })
    }

    /// The proposed ISR change was refused or lost: the next check may
    /// propose again.
    pub fn isr_change_failed(&self) {
        self.lock_followers().pending_isr = None;
    }

    /// How far behind the leader's log end each follower is, as leader
    /// (for the lag metric); empty as follower.
    pub fn follower_lag(&self) -> Vec<(NodeId, i64)> {
        if !self.is_leader() {
            return Vec::new();
        }
        let end = self.log.log_end_offset();
        let followers = self.lock_followers();
        let mut lag: Vec<(NodeId, i64)> = followers
            .progress
            .iter()
            .map(|(id, p)| (*id, (end - p.log_end_offset.max(0)).max(0)))
            .collect();
        lag.sort_unstable();
        lag
    }

    /// Takes the state the image gives the partition: on becoming leader
    /// in a new epoch, records the epoch's start in the log and starts
    /// tracking the followers afresh; on any change, wakes acks=all
    /// waiters to look again.
    fn set_state(&self, wanted: ReplicaState) {
        wanted.assert_consistent();
        // Waits for appends in flight under the old state.
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if *state == wanted {
            return;
        }
        let became_leader = wanted.leader == self.node_id
            && (state.leader != self.node_id || state.leader_epoch != wanted.leader_epoch);
        {
            let mut followers = self.lock_followers();
            if became_leader {
                if let Err(error) = self.log.begin_epoch(wanted.leader_epoch) {
                    warn!(topic = %self.tp.topic, partition = self.tp.partition, %error, "cannot record the new leader epoch's start");
                }
                let now_ms = self.clock.now_ms();
                let end = self.log.log_end_offset();
                followers.progress = wanted
                    .replicas
                    .iter()
                    .filter(|r| **r != self.node_id)
                    .map(|r| {
                        (
                            *r,
                            FollowerProgress {
                                log_end_offset: -1,
                                last_caught_up_ms: now_ms,
                                last_fetch_ms: now_ms,
                                leader_end_at_last_fetch: end,
                            },
                        )
                    })
                    .collect();
                followers.epoch_start_offset = end;
                followers.pending_isr = None;
            } else if wanted.leader != self.node_id {
                followers.progress.clear();
                followers.pending_isr = None;
            } else if wanted.partition_epoch != state.partition_epoch {
                followers.pending_isr = None;
            }
        }
        *state = wanted;
        drop(state);
        // With the ISR this node alone (or its followers further on than
        // the high watermark), the high watermark moves at once.
        self.maybe_advance_high_watermark(&self.read_state());
        self.notify_change();
        // Waiting fetches look again: they may now be refused.
        self.wake_fetches();
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
        if self.abort_unindexed.load(Ordering::Acquire) {
            // The next start must replay the unindexed abort's marker.
            return Ok(());
        }
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
}

/// Whether `producer_id` at `producer_epoch` has a transaction open.
fn txn_open(producers: &ProducerStateManager, producer_id: i64, producer_epoch: i16) -> bool {
    producers.entry(producer_id).is_some_and(|e| {
        e.producer_epoch() == producer_epoch && e.current_txn_first_offset().is_some()
    })
}

/// How many fetch registrations a partition keeps before it drops those
/// of fetches that have ended.
const FETCH_WAITERS_PRUNE_AT: usize = 64;

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
    /// The version of the last image applied, for the replica fetchers to
    /// follow leadership changes once the partitions have them.
    applied_images: watch::Sender<u64>,
    /// The threads partitions do their file work and their fsyncs on; each
    /// partition is given one of each when it is opened.
    io: DiskExecutor,
    flushers: DiskExecutor,
    pressure: Arc<DiskPressure>,
    /// [`DiskThreads::appends_on_io_threads`].
    appends_on_io_threads: bool,
}

impl ReplicaManager {
    pub fn new(
        node_id: NodeId,
        logs: LogManager,
        log_defaults: LogConfig,
        producer_state: ProducerStateConfig,
        clock: Arc<dyn Clock>,
        threads: DiskThreads,
    ) -> std::io::Result<Self> {
        Ok(Self {
            node_id,
            logs,
            log_defaults,
            producer_state,
            clock,
            partitions: RwLock::new(HashMap::new()),
            applied: Mutex::new(None),
            applied_images: watch::Sender::new(0),
            io: DiskExecutor::start("rill-io", threads.io, QUEUED_JOBS_MAX)?,
            flushers: DiskExecutor::start("rill-flush", threads.flush, QUEUED_JOBS_MAX)?,
            pressure: Arc::new(DiskPressure::new()),
            appends_on_io_threads: threads.appends_on_io_threads,
        })
    }

    pub fn logs(&self) -> &LogManager {
        &self.logs
    }

    /// Whether this node's disk pushes back (see [`DiskPressure`]).
    pub fn disk_pressure(&self) -> &DiskPressure {
        &self.pressure
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

        // The map's lock is held only to look up and to swap entries, never
        // across file operations: deleting or creating a topic of many
        // partitions must not stall every produce and fetch. `applied`
        // serialises this function, so nothing else changes the map.
        let map = || self.partitions.read().unwrap_or_else(|p| p.into_inner());
        // Partitions (and logs found on disk at start-up) that the image
        // no longer has, or has under another topic id.
        let stale: Vec<TopicPartition> = {
            let partitions = map();
            self.logs
                .partitions()
                .into_iter()
                .filter(|tp| match (wanted.get(tp), partitions.get(tp)) {
                    (None, _) => true,
                    (Some(wanted), Some(partition)) => partition.topic_id != wanted.topic_id,
                    (Some(_), None) => false,
                })
                .collect()
        };
        if !stale.is_empty() {
            let mut partitions = self.partitions.write().unwrap_or_else(|p| p.into_inner());
            for tp in &stale {
                partitions.remove(tp);
            }
        }
        for tp in stale {
            match self.logs.delete(&tp) {
                Ok(_) => {
                    info!(topic = %tp.topic, partition = tp.partition, "deleted partition log")
                }
                Err(error) => {
                    warn!(topic = %tp.topic, partition = tp.partition, %error, "cannot delete partition log")
                }
            }
        }
        let mut opened: Vec<(TopicPartition, Arc<Partition>)> = Vec::new();
        for (tp, wanted) in wanted {
            let existing = map().get(&tp).cloned();
            if let Some(partition) = existing {
                partition.set_state(wanted.state);
                if *partition.log.config() != wanted.config {
                    if let Err(error) = partition.log.set_config(wanted.config) {
                        warn!(topic = %tp.topic, partition = tp.partition, %error, "cannot apply topic config");
                    }
                }
                continue;
            }
            match self.open_log(&tp, wanted.topic_id, wanted.config) {
                Ok(log) => {
                    let Some(producers) = self.load_producers(&tp, &log) else {
                        continue;
                    };
                    let partition = Partition {
                        tp: tp.clone(),
                        topic_id: wanted.topic_id,
                        log,
                        node_id: self.node_id,
                        // Led by nobody until `set_state`, which does what
                        // taking over a partition needs.
                        state: RwLock::new(ReplicaState {
                            leader: -1,
                            leader_epoch: -1,
                            partition_epoch: -1,
                            replicas: Vec::new(),
                            isr: Vec::new(),
                            min_insync_replicas: 1,
                        }),
                        followers: Mutex::new(Followers::default()),
                        first_unstable: AtomicI64::new(
                            producers.first_unstable_offset().unwrap_or(i64::MAX),
                        ),
                        producers: Mutex::new(producers),
                        completed_txns: Mutex::new(BTreeMap::new()),
                        completed_first: AtomicI64::new(i64::MAX),
                        verifications: Mutex::new(Verifications::default()),
                        abort_unindexed: AtomicBool::new(false),
                        changes: watch::Sender::new(0),
                        fetch_waiters: Mutex::new(Vec::new()),
                        io: self.io.next_shard(),
                        flusher: self.flushers.next_shard(),
                        pressure: Arc::clone(&self.pressure),
                        queued_appends: AtomicUsize::new(0),
                        appends_on_io_threads: self.appends_on_io_threads,
                        clock: Arc::clone(&self.clock),
                    };
                    partition.set_state(wanted.state);
                    opened.push((tp, Arc::new(partition)));
                }
                Err(error) => {
                    warn!(topic = %tp.topic, partition = tp.partition, %error, "cannot open partition log")
                }
            }
        }
        if !opened.is_empty() {
            let mut partitions = self.partitions.write().unwrap_or_else(|p| p.into_inner());
            partitions.extend(opened);
        }
        *applied = Some(image.version);
        self.applied_images.send_replace(image.version);
    }

    /// A receiver that changes after each image applied.
    pub fn subscribe_images(&self) -> watch::Receiver<u64> {
        self.applied_images.subscribe()
    }
}

/// The file in a partition's directory naming the topic id it belongs to
/// (Kafka's `partition.metadata`).
const PARTITION_METADATA: &str = "partition.metadata";

impl ReplicaManager {
    /// Opens (creating if needed) a partition's log for topic `topic_id`.
    /// A log on disk that belongs to another topic of the same name (one
    /// deleted while this broker was away, and created again) is deleted
    /// first: its records are not this topic's, and a replica that kept
    /// them could lead with them. Blocking.
    fn open_log(
        &self,
        tp: &TopicPartition,
        topic_id: TopicId,
        config: LogConfig,
    ) -> Result<Arc<Log>, StorageError> {
        let log = self.logs.get_or_create(tp, config.clone())?;
        let path = log.dir().join(PARTITION_METADATA);
        let recorded = std::fs::read_to_string(&path).ok().and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("topic_id: "))
                .and_then(|id| uuid::Uuid::parse_str(id.trim()).ok())
        });
        match recorded {
            Some(id) if id == topic_id => Ok(log),
            Some(other) => {
                warn!(topic = %tp.topic, partition = tp.partition, old_topic_id = %other, %topic_id, "deleting the log of an older topic of the same name");
                drop(log);
                self.logs.delete(tp)?;
                let log = self.logs.get_or_create(tp, config)?;
                write_partition_metadata(&log, topic_id)?;
                Ok(log)
            }
            // A new log, or one from before the file existed: it is this
            // topic's as far as anyone knows (the image named it).
            None => {
                write_partition_metadata(&log, topic_id)?;
                Ok(log)
            }
        }
    }

    /// Truncates a follower's log to `offset` (where it diverges from its
    /// leader's), checkpointed at once, and rebuilds its producer state
    /// from what is left. Blocking.
    pub fn truncate(&self, partition: &Partition, offset: i64) -> Result<(), StorageError> {
        self.logs.truncate_to(&partition.tp, offset)?;
        self.reload_producers(partition);
        Ok(())
    }

    /// Empties a follower's log and restarts it at `offset` (its leader's
    /// log now starts after this log's end). Blocking.
    pub fn restart_log_at(&self, partition: &Partition, offset: i64) -> Result<(), StorageError> {
        partition.log.truncate_fully_and_start_at(offset)?;
        self.logs.checkpoint()?;
        self.reload_producers(partition);
        Ok(())
    }

    /// Moves a follower's log start up to its leader's (DeleteRecords or
    /// retention on the leader). Blocking.
    pub fn follow_log_start(&self, partition: &Partition, offset: i64) -> Result<(), StorageError> {
        if offset > partition.log.log_start_offset() && offset <= partition.log.log_end_offset() {
            self.logs.delete_before(&partition.tp, offset)?;
        }
        Ok(())
    }

    fn reload_producers(&self, partition: &Partition) {
        // Producer state describes the log as it was; what was cut off
        // must not be remembered as appended. Snapshots past the new end
        // are ignored by the load.
        if let Some(producers) = self.load_producers(&partition.tp, &partition.log) {
            let mut current = partition.lock_producers();
            *current = producers;
            partition.publish_unstable(&current);
            // What was completed is in the reloaded state or truncated away.
            let mut completed_txns = partition.lock_completed_txns();
            completed_txns.clear();
            partition.completed_first.store(i64::MAX, Ordering::Release);
            drop(completed_txns);
            drop(current);
        }
    }

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

/// Not fsynced: one fsync per partition made creating 30,000 partitions
/// take minutes. A crash can leave it missing or empty; the next start then
/// writes it again for the topic the image names, which is what happened
/// before the file existed.
fn write_partition_metadata(log: &Log, topic_id: TopicId) -> Result<(), StorageError> {
    let text = format!("version: 0\ntopic_id: {topic_id}\n");
    rill_storage::write_atomically_with(&log.dir().join(PARTITION_METADATA), text.as_bytes(), false)
}

/// What the image says about one partition this node holds.
struct Wanted {
    topic_id: TopicId,
    state: ReplicaState,
    config: LogConfig,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use rill_controller::{apply, MetadataCommand, MetadataImage};
    use rill_storage::records::BatchBuilder;
    use rill_storage::LogManagerConfig;
    use rill_types::SystemClock;
    use std::sync::atomic::Ordering;

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

    /// A client's append runs where it is asked while appends are fast,
    /// and on the partition's I/O thread once one was slow; either way it
    /// gets the next offsets and its acks=all flush makes it durable.
    #[tokio::test]
    async fn client_appends_move_to_the_io_thread_under_disk_pressure() {
        let dir = tempfile::tempdir().unwrap();
        let (_replicas, partition, _image) = lone_leader(dir.path());
        let records = bytes::Bytes::from(batch());

        let inline = partition
            .append_for_client(records.clone(), true, None)
            .await;
        assert!(matches!(inline, ClientAppend::Ready(_)));
        let (appended, flush) = inline.result().await.unwrap();
        assert_eq!(appended.info.base_offset, 0);
        flush
            .expect("acks=all queues a flush")
            .unwrap()
            .await
            .unwrap();
        assert!(partition.log.recovery_point() >= 1);

        partition.pressure.observe(DiskPressure::APPEND_SLOW);
        let queued = partition.append_for_client(records, true, None).await;
        assert!(matches!(queued, ClientAppend::Queued(_)));
        assert_eq!(partition.pressure.appends_moved(), 1);
        let (appended, flush) = queued.result().await.unwrap();
        assert_eq!(appended.info.base_offset, 1);
        flush
            .expect("acks=all queues a flush")
            .unwrap()
            .await
            .unwrap();
        assert!(partition.log.recovery_point() >= 2);
    }

    /// acks=1 appends that pile up unflushed bytes have their writeback
    /// started (the chunk is claimed, so the log offers nothing more).
    #[tokio::test]
    async fn unflushed_client_appends_start_their_writeback() {
        let dir = tempfile::tempdir().unwrap();
        let (_replicas, partition, _image) = lone_leader(dir.path());
        let mut builder = BatchBuilder::new();
        builder.push(None, Some(&vec![1u8; 1_000_000]), 0);
        let records = bytes::Bytes::from(builder.build());
        for _ in 0..5 {
            let appended = partition
                .append_for_client(records.clone(), false, None)
                .await;
            appended.result().await.unwrap();
        }
        assert!(
            partition.log.take_writeback().unwrap().is_none(),
            "5 MB unflushed and no writeback claimed"
        );
        for _ in 0..5 {
            partition.log.append(&mut records.to_vec(), 0).unwrap();
        }
        // The log's own appends claim nothing: the next chunk is there.
        assert!(partition.log.take_writeback().unwrap().is_some());
    }

    /// A coordinator's appends never wait and keep the order they were
    /// made in: one queued on the I/O thread under disk pressure holds the
    /// next ones behind it even once the pressure is over, and appends run
    /// inline again only when the queue has drained.
    #[tokio::test]
    async fn appends_in_order_stay_in_order_across_the_io_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (_replicas, partition, _image) = lone_leader(dir.path());
        let append = |partition: &Partition| partition.append_as_leader(&mut batch(), true);

        // Hold the I/O thread so that what is queued there waits.
        let release = Arc::new(std::sync::Barrier::new(2));
        let held = {
            let release = Arc::clone(&release);
            partition.submit_io(move |_| release.wait()).await.unwrap()
        };
        partition.pressure.observe(DiskPressure::APPEND_SLOW);
        let first = partition.append_in_order(append);
        assert!(matches!(first, Appending::Queued(_)));
        tokio::time::sleep(DiskPressure::HOLD + Duration::from_millis(100)).await;
        assert!(!partition.pressure.is_on());
        let second = partition.append_in_order(append);
        assert!(
            matches!(second, Appending::Queued(_)),
            "an append ran inline past one still queued"
        );

        release.wait();
        held.await.unwrap();
        assert_eq!(first.result().await.unwrap().info.base_offset, 0);
        assert_eq!(second.result().await.unwrap().info.base_offset, 1);
        assert_eq!(partition.queued_appends.load(Ordering::Acquire), 0);
        let third = partition.append_in_order(append);
        assert!(matches!(third, Appending::Ready(_)));
        assert_eq!(third.result().await.unwrap().info.base_offset, 2);
    }

    /// Leadership is checked with the append, under one lock: while
    /// another thread fences and unfences this node over and over, every
    /// batch the log accepted carries an epoch in which this node led, and
    /// every refusal is NOT_LEADER.
    #[test]
    fn appends_carry_an_epoch_in_which_this_node_led() {
        let dir = tempfile::tempdir().unwrap();
        let (replicas, partition, image) = lone_leader(dir.path());
        let unfence = MetadataCommand::UnfenceBroker {
            node_id: 1,
            broker_epoch: 1,
        };
        let fence = MetadataCommand::FenceBroker {
            node_id: 1,
            broker_epoch: 1,
        };
        let fence_again = fence.clone();

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

    /// A one-node cluster (node 1, broker epoch 1) leading topic `t`'s single
    /// partition, and its image.
    fn lone_leader(dir: &std::path::Path) -> (Arc<ReplicaManager>, Arc<Partition>, MetadataImage) {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let logs = LogManager::open(dir, LogManagerConfig::default(), Arc::clone(&clock)).unwrap();
        let replicas = Arc::new(
            ReplicaManager::new(
                1,
                logs,
                LogConfig::default(),
                ProducerStateConfig::default(),
                clock,
                DiskThreads::default(),
            )
            .unwrap(),
        );
        let mut image = MetadataImage::default();
        for next in [
            MetadataCommand::RegisterBroker {
                node_id: 1,
                incarnation_id: uuid::Uuid::nil(),
                directory_id: uuid::Uuid::nil(),
                host: "h".into(),
                port: 9092,
                rack: None,
            },
            MetadataCommand::UnfenceBroker {
                node_id: 1,
                broker_epoch: 1,
            },
            MetadataCommand::CreateTopic {
                name: "t".into(),
                topic_id: uuid::Uuid::from_u128(1),
                partitions: 1,
                replication_factor: 1,
                configs: BTreeMap::new(),
                assignments: None,
            },
        ] {
            command(&mut image, next);
        }
        replicas.apply_image(&image);
        let partition = replicas.get("t", 0).unwrap();
        (replicas, partition, image)
    }

    fn txn_batch(producer_id: i64, sequence: i32) -> Vec<u8> {
        let mut builder = BatchBuilder::new();
        builder.producer_id = producer_id;
        builder.producer_epoch = 0;
        builder.base_sequence = sequence;
        builder.is_transactional = true;
        // Now, as markers are stamped: no time-based roll between them.
        builder.push(None, Some(b"v"), SystemClock.now_ms());
        builder.build()
    }

    /// KIP-890's verification guard: a transactional batch opens its
    /// producer's transaction only with a guard no marker has voided; once
    /// open, the transaction's next batches need none.
    #[test]
    fn a_marker_voids_a_verification_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let (_replicas, partition, _) = lone_leader(dir.path());
        let abort = EndTxnMarker {
            control_type: txn::ControlType::Abort,
            coordinator_epoch: 0,
        };
        let refused = |result: Result<LeaderAppend, AppendError>| {
            assert!(
                matches!(result, Err(AppendError::InvalidTxnState(_))),
                "{result:?}"
            );
        };
        // Never verified.
        refused(partition.append_as_leader(&mut txn_batch(7, 0), false));
        // Verified, then aborted (timed out) before the batch came: the
        // batch must not open a new transaction.
        let guard = partition.start_verification(7, 0);
        partition.append_marker(7, 0, abort).unwrap();
        refused(partition.append_verified(&mut txn_batch(7, 0), false, Some(guard)));
        assert!(!partition.has_open_txn(7, 0));
        // A later verification replaces an earlier one.
        let old = partition.start_verification(7, 0);
        let guard = partition.start_verification(7, 0);
        refused(partition.append_verified(&mut txn_batch(7, 0), false, Some(old)));
        partition
            .append_verified(&mut txn_batch(7, 0), false, Some(guard))
            .unwrap();
        assert!(partition.has_open_txn(7, 0));
        // The guard is spent; the open transaction needs none.
        partition
            .append_as_leader(&mut txn_batch(7, 1), false)
            .unwrap();
        partition.append_marker(7, 0, abort).unwrap();
        refused(partition.append_verified(&mut txn_batch(7, 2), false, Some(guard)));
        // A refused verification leaves nothing behind.
        let guard = partition.start_verification(7, 0);
        partition.cancel_verification(7, guard);
        refused(partition.append_verified(&mut txn_batch(7, 2), false, Some(guard)));
    }

    /// An abort the transaction index cannot take (here: its file's path
    /// is a directory) holds the last stable offset at the transaction's
    /// start, and stops producer snapshots, so that a restart replays it.
    #[test]
    fn an_abort_that_cannot_be_indexed_holds_the_last_stable_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (_replicas, partition, _) = lone_leader(dir.path());
        let guard = partition.start_verification(7, 0);
        let first = partition
            .append_verified(&mut txn_batch(7, 0), false, Some(guard))
            .unwrap()
            .info
            .base_offset;
        assert_eq!(first, 0);
        std::fs::create_dir(partition.log.dir().join(format!("{:020}.txnindex", 0))).unwrap();
        let abort = EndTxnMarker {
            control_type: txn::ControlType::Abort,
            coordinator_epoch: 0,
        };
        partition.append_marker(7, 0, abort).unwrap();
        partition.append_as_leader(&mut batch(), false).unwrap();
        assert!(!partition.has_open_txn(7, 0));
        assert_eq!(partition.log.segment_base_offsets(), [0]);
        assert_eq!(partition.high_watermark(), 3);
        assert_eq!(partition.last_stable_offset(), first);
        partition.snapshot_producers(true).unwrap();
        let snapshots = std::fs::read_dir(partition.log.dir())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".snapshot")
            })
            .count();
        assert_eq!(
            snapshots, 0,
            "no producer snapshot past the unindexed abort"
        );
    }

    /// The leader's side of the ISR protocol, step by step with a manual
    /// clock: the high watermark is the smallest log end in the ISR (an
    /// in-sync follower that has not fetched holds it back), a follower
    /// that does not catch up for `replica.lag.time.max.ms` is proposed for
    /// removal, one that caught up is proposed back, one proposal at a
    /// time; a new leader epoch starts where the log ends.
    #[test]
    fn the_high_watermark_follows_the_isr_and_laggards_are_proposed_out() {
        let dir = tempfile::tempdir().unwrap();
        let manual = Arc::new(rill_types::ManualClock::new(1_000));
        let clock: Arc<dyn Clock> = manual.clone();
        let logs =
            LogManager::open(dir.path(), LogManagerConfig::default(), Arc::clone(&clock)).unwrap();
        let replicas = ReplicaManager::new(
            1,
            logs,
            LogConfig::default(),
            ProducerStateConfig::default(),
            clock,
            DiskThreads::default(),
        )
        .unwrap();
        let mut image = MetadataImage::default();
        for node_id in 1..=3 {
            command(
                &mut image,
                MetadataCommand::RegisterBroker {
                    node_id,
                    incarnation_id: uuid::Uuid::nil(),
                    directory_id: uuid::Uuid::from_u128(node_id as u128),
                    host: "h".into(),
                    port: 9092,
                    rack: None,
                },
            );
            let broker_epoch = image.broker(node_id).unwrap().broker_epoch;
            command(
                &mut image,
                MetadataCommand::UnfenceBroker {
                    node_id,
                    broker_epoch,
                },
            );
        }
        command(
            &mut image,
            MetadataCommand::CreateTopic {
                name: "t".into(),
                topic_id: uuid::Uuid::from_u128(7),
                partitions: 1,
                replication_factor: 3,
                configs: BTreeMap::from([("min.insync.replicas".to_string(), "2".to_string())]),
                assignments: Some(vec![vec![1, 2, 3]]),
            },
        );
        replicas.apply_image(&image);
        let partition = replicas.get("t", 0).unwrap();
        assert!(partition.is_leader());
        assert_eq!(
            partition.log.leader_epochs()[0].start_offset,
            0,
            "the epoch begins at once"
        );

        for _ in 0..4 {
            partition.append_as_leader(&mut batch(), true).unwrap();
        }
        assert_eq!(partition.high_watermark(), 0, "no follower has fetched");
        assert_eq!(partition.fetched_by_follower(2, 4), Some(false));
        assert_eq!(partition.high_watermark(), 0, "follower 3 holds it back");
        assert_eq!(partition.fetched_by_follower(3, 2), Some(true));
        assert_eq!(partition.high_watermark(), 2);
        assert_eq!(partition.fetched_by_follower(4, 0), None, "not a replica");

        // Follower 3 stays behind past the lag limit; 2 keeps up.
        let lag_max = Duration::from_millis(500);
        assert_eq!(partition.isr_change(lag_max), None);
        manual.advance_ms(400);
        assert_eq!(partition.fetched_by_follower(2, 4), Some(false));
        manual.advance_ms(200);
        let change = partition.isr_change(lag_max).expect("3 proposed out");
        assert_eq!(change.isr, vec![1, 2]);
        assert_eq!(
            partition.isr_change(lag_max),
            None,
            "one proposal at a time"
        );
        command(
            &mut image,
            MetadataCommand::AlterPartition {
                topic_id: partition.topic_id,
                partition: 0,
                leader: 1,
                leader_epoch: change.leader_epoch,
                partition_epoch: change.partition_epoch,
                isr: change.isr,
            },
        );
        replicas.apply_image(&image);
        assert_eq!(partition.state().isr, vec![1, 2]);
        assert_eq!(
            partition.high_watermark(),
            4,
            "the ISR without 3 has it all"
        );

        // 3 catches up: proposed back in.
        assert_eq!(partition.fetched_by_follower(3, 4), Some(false));
        let change = partition.isr_change(lag_max).expect("3 proposed back");
        assert_eq!(change.isr, vec![1, 2, 3]);
        partition.isr_change_failed();
        assert!(
            partition.isr_change(lag_max).is_some(),
            "proposed again after a refusal"
        );

        // A stale proposal is refused by the controller.
        let stale = MetadataCommand::AlterPartition {
            topic_id: partition.topic_id,
            partition: 0,
            leader: 1,
            leader_epoch: change.leader_epoch,
            partition_epoch: change.partition_epoch - 1,
            isr: vec![1, 2, 3],
        };
        let version = image.version;
        image.advance_to(version);
        assert!(matches!(
            apply(&mut image, &stale),
            Err(rill_controller::MetadataError::InvalidUpdateVersion(_))
        ));
    }
    /// A broker that returns after its topic was deleted and created again
    /// under the same name does not take its old log for the new topic's:
    /// `partition.metadata` names the topic id the log belongs to.
    #[test]
    fn an_old_topics_log_is_not_the_new_topics() {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let open = |image: &MetadataImage| {
            let logs =
                LogManager::open(dir.path(), LogManagerConfig::default(), Arc::clone(&clock))
                    .unwrap();
            let replicas = ReplicaManager::new(
                1,
                logs,
                LogConfig::default(),
                ProducerStateConfig::default(),
                Arc::clone(&clock),
                DiskThreads::default(),
            )
            .unwrap();
            replicas.apply_image(image);
            replicas
        };
        let image_with = |topic_id: u128| {
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
            command(
                &mut image,
                MetadataCommand::UnfenceBroker {
                    node_id: 1,
                    broker_epoch: 1,
                },
            );
            command(
                &mut image,
                MetadataCommand::CreateTopic {
                    name: "t".into(),
                    topic_id: uuid::Uuid::from_u128(topic_id),
                    partitions: 1,
                    replication_factor: 1,
                    configs: BTreeMap::new(),
                    assignments: None,
                },
            );
            image
        };
        {
            let replicas = open(&image_with(1));
            let partition = replicas.get("t", 0).unwrap();
            partition.append_as_leader(&mut batch(), false).unwrap();
            assert_eq!(partition.log.log_end_offset(), 1);
            replicas.logs().shutdown().unwrap();
        }
        {
            // Same topic id: the log is kept.
            let replicas = open(&image_with(1));
            assert_eq!(replicas.get("t", 0).unwrap().log.log_end_offset(), 1);
            replicas.logs().shutdown().unwrap();
        }
        // Another topic id under the same name: a fresh log.
        let replicas = open(&image_with(2));
        let partition = replicas.get("t", 0).unwrap();
        assert_eq!(partition.log.log_end_offset(), 0);
        assert_eq!(partition.high_watermark(), 0);
    }
}
