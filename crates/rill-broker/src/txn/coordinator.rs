//! The transaction coordinator at work: the state machine of each
//! `__transaction_state` partition this node leads ([`state::Transactions`]),
//! its records written durably before anyone is told, its partitions
//! loaded when this node becomes their leader, the markers of decided
//! transactions sent to their partitions, and the timers (open
//! transactions past their timeout are aborted; idle ids expire).
//!
//! Every change goes the same way: under the lock the state machine
//! decides and marks the id pending, and the record is appended to the
//! id's partition (acks=all, so in decision order); outside the lock the
//! append is waited on until durable; then, under the lock again, the
//! change is completed (or dropped if the write failed). The
//! **coordinator epoch** is the leader epoch of the partition: a load
//! under a new epoch replaces the state, and a write that began under an
//! older one completes nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use rill_controller::MetadataImage;
use rill_protocol::kafka_protocol::error::ResponseError;
use rill_storage::records as storage_records;
use rill_types::{Clock, NodeId};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::markers::{self, TxnMarker};
use super::records;
use super::state::{self, Init, ListFilter, Step, Transactions, Transition, TxnMetadata};
use super::{partition_for, TRANSACTION_STATE_PARTITIONS_DEFAULT, TRANSACTION_STATE_TOPIC};
use crate::replica::{
    AppendError, Appending, DurableError, LeaderAppend, Partition, ReplicationError,
};
use crate::server::Broker;

/// How long a `__transaction_state` write may take to become durable
/// before the client is told COORDINATOR_NOT_AVAILABLE (and retries).
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// Between retries of a completion record that could not be written.
const COMPLETE_RETRY_BACKOFF: Duration = Duration::from_millis(500);

/// The code a client of `api` at `version` is sent for `code`: an older
/// client gets INVALID_PRODUCER_EPOCH for PRODUCER_FENCED
/// ([`state::error_for_version`]).
pub fn code_for_version(api: state::TxnApi, version: i16, code: i16) -> i16 {
    if code == ResponseError::ProducerFenced.code() {
        state::error_for_version(api, version, ResponseError::ProducerFenced).code()
    } else {
        code
    }
}

fn init_kind(init: &Init) -> &'static str {
    match init {
        Init::Write(_) => "write",
        Init::Fence(_) => "fence",
    }
}

/// The transaction coordinator's settings, with Kafka's names and
/// defaults.
#[derive(Debug, Clone)]
pub struct TxnCoordinatorConfig {
    /// `transaction.max.timeout.ms` and the bound on transactional ids.
    pub limits: state::TxnConfig,
    /// `transactional.id.expiration.ms`: 7 days.
    pub transactional_id_expiration_ms: i64,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`: 10 s.
    pub abort_timed_out_interval: Duration,
    /// `transaction.remove.expired.transaction.cleanup.interval.ms`: 1 h.
    pub remove_expired_interval: Duration,
    /// `transaction.state.log.num.partitions`: 50.
    pub state_partitions: i32,
    /// `transaction.state.log.replication.factor`: 3 (capped at the
    /// brokers there are when the topic is made).
    pub state_replication_factor: i16,
    /// `transaction.state.log.min.isr`: 2 (capped at the replication
    /// factor).
    pub state_min_isr: i32,
    /// `transaction.state.log.segment.bytes`: 100 MiB.
    pub state_segment_bytes: i32,
}

impl Default for TxnCoordinatorConfig {
    fn default() -> Self {
        Self {
            limits: state::TxnConfig::default(),
            transactional_id_expiration_ms: 7 * 24 * 60 * 60 * 1000,
            abort_timed_out_interval: Duration::from_secs(10),
            remove_expired_interval: Duration::from_secs(60 * 60),
            state_partitions: TRANSACTION_STATE_PARTITIONS_DEFAULT,
            state_replication_factor: 3,
            state_min_isr: 2,
            state_segment_bytes: 100 * 1024 * 1024,
        }
    }
}

/// One `__transaction_state` partition this node leads.
#[derive(Debug)]
struct Owned {
    /// The partition's leader epoch when this node took it.
    coordinator_epoch: i32,
    /// `None` while the partition is being read back.
    txns: Option<Transactions>,
    /// Cancelled when this node stops leading the partition: its marker
    /// senders stop (the next coordinator sends them again).
    cancel: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    /// Partitions of `__transaction_state`; 0 while it does not exist.
    partition_count: i32,
    owned: HashMap<i32, Owned>,
}

/// A transaction as DescribeTransactions and ListTransactions show it.
#[derive(Debug, Clone)]
pub struct DescribedTxn {
    pub transactional_id: String,
    pub state: &'static str,
    pub timeout_ms: i32,
    pub start_ms: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub partitions: Vec<(String, i32)>,
}

impl DescribedTxn {
    fn of(meta: &TxnMetadata) -> Self {
        Self {
            transactional_id: meta.transactional_id.clone(),
            state: meta.state.name(),
            timeout_ms: meta.timeout_ms,
            start_ms: meta.start_ms,
            producer_id: meta.producer_id,
            producer_epoch: meta.producer_epoch,
            partitions: meta.partitions.iter().cloned().collect(),
        }
    }
}

/// What `/metrics` shows of the coordinator ([`TransactionCoordinator::counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnCounts {
    pub ongoing: usize,
    pub committed: u64,
    pub aborted: u64,
}

#[derive(Debug)]
pub struct TransactionCoordinator {
    pub config: TxnCoordinatorConfig,
    node_id: NodeId,
    clock: Arc<dyn Clock>,
    /// The broker this coordinator belongs to, for its replicas, the
    /// controller, the group coordinator and producer ids. Weak: the
    /// broker owns the coordinator.
    broker: Weak<Broker>,
    /// A `std` mutex: every section under it is short and in memory, but
    /// for the append of a record (a page-cache write), made under it so
    /// that records reach the log in the order the changes were decided.
    state: Mutex<State>,
    /// Makes `__transaction_state` once, however many FindCoordinators
    /// find it missing at the same time.
    creating: tokio::sync::Mutex<()>,
    runtime: tokio::runtime::Handle,
    /// Transactions whose completion record (CompleteCommit) this node
    /// wrote, for `/metrics`. Outside `state`: a count that only grows
    /// needs no lock.
    committed: AtomicU64,
    /// The same for CompleteAbort (ended by the producer, a timeout or a
    /// fence).
    aborted: AtomicU64,
}

impl TransactionCoordinator {
    /// Must be called within the tokio runtime that will run its loads.
    pub fn new(
        config: TxnCoordinatorConfig,
        node_id: NodeId,
        clock: Arc<dyn Clock>,
        broker: Weak<Broker>,
    ) -> Self {
        Self {
            config,
            node_id,
            clock,
            broker,
            state: Mutex::new(State::default()),
            creating: tokio::sync::Mutex::new(()),
            runtime: tokio::runtime::Handle::current(),
            committed: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
        }
    }

    pub(crate) fn creating_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.creating
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under this lock is a bug already reported; the state is
        // still the best there is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The partition of `transactional_id` if this node coordinates it
    /// and has loaded it.
    fn locate(state: &State, transactional_id: &str) -> Result<i32, ResponseError> {
        if transactional_id.is_empty() {
            return Err(ResponseError::InvalidRequest);
        }
        if state.partition_count <= 0 {
            return Err(ResponseError::NotCoordinator);
        }
        let partition = partition_for(transactional_id, state.partition_count);
        match state.owned.get(&partition) {
            None => Err(ResponseError::NotCoordinator),
            Some(Owned { txns: None, .. }) => Err(ResponseError::CoordinatorLoadInProgress),
            Some(_) => Ok(partition),
        }
    }

    /// Runs `decide` on the loaded state of `transactional_id`'s
    /// partition; returns its outcome, the partition and its epoch.
    fn with_txns<T>(
        &self,
        transactional_id: &str,
        decide: impl FnOnce(&mut Transactions, i64) -> Result<T, ResponseError>,
    ) -> Result<(T, i32, i32), i16> {
        let mut state = self.lock();
        let partition = Self::locate(&state, transactional_id).map_err(|k| k.code())?;
        let now = self.now();
        let owned = state.owned.get_mut(&partition).expect("located");
        let epoch = owned.coordinator_epoch;
        let txns = owned.txns.as_mut().expect("loaded");
        decide(txns, now)
            .map(|t| (t, partition, epoch))
            .map_err(|k| k.code())
    }

    // ------------------------------------------------------------------
    // The APIs

    /// InitProducerId with a transactional id: the producer id and epoch
    /// to use. A transaction still open is aborted first (its producer
    /// fenced), and the client is told CONCURRENT_TRANSACTIONS to retry.
    pub async fn init_producer_id(
        &self,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16), i16> {
        let broker = self.broker()?;
        // A new producer id may be needed (a new transactional id, or the
        // epochs of its id spent); drawn first, as the state machine does
        // not wait. An id drawn and not used is simply never used.
        let fresh_id = broker
            .producer_ids
            .next_id(&*broker.controller)
            .await
            .map_err(|e| crate::errors::producer_id_error_code(&e))?;
        let decided = self.with_txns(transactional_id, |txns, now| {
            txns.init_producer_id(transactional_id, timeout_ms, expected, now, || Ok(fresh_id))
        });
        debug!(transactional_id, ?expected, outcome = ?decided.as_ref().map(|(init, _, _)| init_kind(init)), "InitProducerId");
        let (init, partition, epoch) = decided?;
        match init {
            Init::Write(transition) => {
                self.write(&broker, partition, epoch, &transition).await?;
                Ok((transition.to.producer_id, transition.to.producer_epoch))
            }
            Init::Fence(transition) => {
                self.write(&broker, partition, epoch, &transition).await?;
                self.spawn_markers(&broker, partition, epoch, &transition.to);
                Err(ResponseError::ConcurrentTransactions.code())
            }
        }
    }

    /// AddPartitionsToTxn (and AddOffsetsToTxn's one partition): each
    /// partition's code, or one for all.
    pub async fn add_partitions(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<i16>, i16> {
        let broker = self.broker()?;
        let (step, partition, epoch) = self.with_txns(transactional_id, |txns, now| {
            txns.add_partitions(
                transactional_id,
                producer_id,
                producer_epoch,
                &partitions,
                now,
            )
        })?;
        if let Step::Write(transition) = step {
            self.write(&broker, partition, epoch, &transition).await?;
        }
        Ok(vec![0; partitions.len()])
    }

    /// AddPartitionsToTxn v4's verify-only form (KIP-890 part 1): whether
    /// each partition is in the ongoing transaction.
    pub fn verify_partitions(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[(String, i32)],
    ) -> Result<Vec<i16>, i16> {
        let mut state = self.lock();
        let partition = Self::locate(&state, transactional_id).map_err(|k| k.code())?;
        let txns = state
            .owned
            .get_mut(&partition)
            .and_then(|o| o.txns.as_mut())
            .expect("located");
        txns.verify_partitions(transactional_id, producer_id, producer_epoch, partitions)
            .map_err(|k| k.code())
    }

    /// EndTxn: the decision is written, then answered; the markers follow.
    pub async fn end_txn(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
    ) -> Result<(), i16> {
        let broker = self.broker()?;
        let (step, partition, epoch) = self.with_txns(transactional_id, |txns, now| {
            txns.end_txn(transactional_id, producer_id, producer_epoch, commit, now)
        })?;
        if let Step::Write(transition) = step {
            self.write(&broker, partition, epoch, &transition).await?;
            if transition.needs_markers() {
                self.spawn_markers(&broker, partition, epoch, &transition.to);
            }
        }
        Ok(())
    }

    /// DescribeTransactions of one id: NOT_COORDINATOR,
    /// COORDINATOR_LOAD_IN_PROGRESS or TRANSACTIONAL_ID_NOT_FOUND.
    pub fn describe(&self, transactional_id: &str) -> Result<DescribedTxn, i16> {
        let state = self.lock();
        let partition = Self::locate(&state, transactional_id).map_err(|k| k.code())?;
        state.owned[&partition]
            .txns
            .as_ref()
            .and_then(|txns| txns.get(transactional_id))
            .map(DescribedTxn::of)
            .ok_or(ResponseError::TransactionalIdNotFound.code())
    }

    /// ListTransactions: those of every loaded partition, filtered; and
    /// whether some partition is still loading.
    pub fn list(&self, filter: &ListFilter) -> (Vec<DescribedTxn>, bool) {
        let state = self.lock();
        let now = self.now();
        let mut loading = false;
        let mut listed = Vec::new();
        for owned in state.owned.values() {
            match &owned.txns {
                Some(txns) => {
                    listed.extend(txns.list(filter, now).into_iter().map(DescribedTxn::of))
                }
                None => loading = true,
            }
        }
        listed.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        (listed, loading)
    }

    /// For `/metrics`: the transactions open (Ongoing, or decided with
    /// their markers being written) in the partitions this node has
    /// loaded, and the commits and aborts it has completed since it
    /// started. One pass over the loaded ids under the lock.
    pub fn counts(&self) -> TxnCounts {
        let open = ListFilter {
            states: vec![
                state::TxnState::Ongoing,
                state::TxnState::PrepareCommit,
                state::TxnState::PrepareAbort,
            ],
            ..ListFilter::default()
        };
        let state = self.lock();
        let now = self.now();
        let ongoing = state
            .owned
            .values()
            .filter_map(|owned| owned.txns.as_ref())
            .map(|txns| txns.list(&open, now).len())
            .sum();
        TxnCounts {
            ongoing,
            committed: self.committed.load(Ordering::Relaxed),
            aborted: self.aborted.load(Ordering::Relaxed),
        }
    }

    // ------------------------------------------------------------------
    // Writes

    fn broker(&self) -> Result<Arc<Broker>, i16> {
        self.broker
            .upgrade()
            .ok_or(ResponseError::CoordinatorNotAvailable.code())
    }

    /// Appends `transition`'s record to `partition` (under the lock, in
    /// decision order), waits until it is durable and completes it; a
    /// failed write drops it. The error code is what the client is told:
    /// NOT_COORDINATOR when the leadership moved, COORDINATOR_NOT_AVAILABLE
    /// when the write could not be made durable in time (clients retry
    /// both), as Kafka maps its transaction-log append errors.
    async fn write(
        &self,
        broker: &Broker,
        partition: i32,
        epoch: i32,
        transition: &Transition,
    ) -> Result<(), i16> {
        let appended = {
            let _state = self.lock();
            self.append(broker, partition, transition)
        };
        // The rest runs as its own task: once appended, the change must be
        // completed or dropped even if the request that made it goes away
        // (its client disconnects). Otherwise the id would stay pending,
        // answering CONCURRENT_TRANSACTIONS for good.
        let coordinator = Arc::clone(&broker.txns);
        let transition = transition.clone();
        let finish = tokio::spawn(async move {
            let written = match appended {
                Ok((replica, appending)) => Self::durable(partition, &replica, appending).await,
                Err(code) => Err(code),
            };
            coordinator.finish_write(partition, epoch, &transition, written)
        });
        finish
            .await
            .unwrap_or(Err(ResponseError::CoordinatorNotAvailable.code()))
    }

    /// Completes a written transition, or drops one whose write failed.
    fn finish_write(
        &self,
        partition: i32,
        epoch: i32,
        transition: &Transition,
        written: Result<(), i16>,
    ) -> Result<(), i16> {
        let mut state = self.lock();
        let Some(txns) = state
            .owned
            .get_mut(&partition)
            .filter(|o| o.coordinator_epoch == epoch)
            .and_then(|o| o.txns.as_mut())
        else {
            return Err(ResponseError::NotCoordinator.code());
        };
        match written {
            Ok(()) => txns.complete(transition).map_err(|k| k.code()),
            Err(code) => {
                txns.abort_pending(transition);
                Err(code)
            }
        }
    }

    /// Appends `transition`'s record to `partition`, or queues it to be
    /// (see [`Partition::append_in_order`]); called under the lock.
    fn append(
        &self,
        broker: &Broker,
        partition: i32,
        transition: &Transition,
    ) -> Result<(Arc<Partition>, Appending<LeaderAppend>), i16> {
        let Some(replica) = broker.replicas.get(TRANSACTION_STATE_TOPIC, partition) else {
            return Err(ResponseError::NotCoordinator.code());
        };
        let mut builder = storage_records::BatchBuilder::new();
        let key = transition.key();
        builder.push(Some(&key), transition.value().as_deref(), self.now());
        let mut bytes = builder.build();
        match replica.append_in_order(move |replica| replica.append_as_leader(&mut bytes, true)) {
            Appending::Ready(Err(error)) => Err(append_error(partition, &error)),
            appending => Ok((replica, appending)),
        }
    }

    /// Waits until an append of [`TransactionCoordinator::append`] is made (if it
    /// was queued), flushed and replicated to the ISR.
    async fn durable(
        partition: i32,
        replica: &Arc<Partition>,
        appending: Appending<LeaderAppend>,
    ) -> Result<(), i16> {
        let appended = appending
            .result()
            .await
            .map_err(|error| append_error(partition, &error))?;
        match replica.wait_durable(&appended, WRITE_TIMEOUT).await {
            Ok(()) => Ok(()),
            Err(DurableError::Replication(ReplicationError::NotLeader)) => {
                Err(ResponseError::NotCoordinator.code())
            }
            Err(error) => {
                warn!(partition, %error, "a __transaction_state write did not become durable");
                Err(ResponseError::CoordinatorNotAvailable.code())
            }
        }
    }

    /// Sends the markers of a prepared transaction in the background, and
    /// then writes its completion.
    fn spawn_markers(&self, broker: &Arc<Broker>, partition: i32, epoch: i32, meta: &TxnMetadata) {
        let cancel = {
            let state = self.lock();
            match state.owned.get(&partition) {
                Some(owned) if owned.coordinator_epoch == epoch => owned.cancel.clone(),
                _ => return,
            }
        };
        let marker = TxnMarker {
            producer_id: meta.producer_id,
            producer_epoch: meta.producer_epoch,
            commit: meta.state == state::TxnState::PrepareCommit,
            coordinator_epoch: epoch,
            partitions: meta.partitions.iter().cloned().collect(),
        };
        let transactional_id = meta.transactional_id.clone();
        let broker = Arc::clone(broker);
        self.runtime.spawn(async move {
            let txns = Arc::clone(&broker.txns);
            let written = markers::send_until_written(
                broker.config.node_id,
                &*broker.controller,
                &broker.replicas,
                &broker.groups,
                &marker,
                &cancel,
            )
            .await;
            if !written {
                return;
            }
            txns.complete_markers(
                &broker,
                partition,
                epoch,
                &transactional_id,
                &marker,
                &cancel,
            )
            .await;
        });
    }

    /// The markers of a transaction are written: its completion record,
    /// retried until written or this node no longer coordinates it.
    async fn complete_markers(
        &self,
        broker: &Broker,
        partition: i32,
        epoch: i32,
        transactional_id: &str,
        marker: &TxnMarker,
        cancel: &CancellationToken,
    ) {
        loop {
            let decided = self.with_txns(transactional_id, |txns, now| {
                txns.markers_written(
                    transactional_id,
                    marker.producer_id,
                    marker.producer_epoch,
                    now,
                )
            });
            let transition = match decided {
                Ok((transition, _, e)) if e == epoch => transition,
                Ok((transition, p, _)) => {
                    // Loaded again under another epoch meanwhile: that load
                    // sends the markers itself.
                    self.with_partition(p, |txns| txns.abort_pending(&transition));
                    return;
                }
                Err(code) if code == ResponseError::ConcurrentTransactions.code() => {
                    // Another completion is being written; let it finish.
                    return;
                }
                Err(code) => {
                    debug!(transactional_id, code, "nothing to complete");
                    return;
                }
            };
            match self.write(broker, partition, epoch, &transition).await {
                Ok(()) => {
                    let completed = if marker.commit {
                        &self.committed
                    } else {
                        &self.aborted
                    };
                    completed.fetch_add(1, Ordering::Relaxed);
                    debug!(
                        transactional_id,
                        commit = marker.commit,
                        "transaction complete"
                    );
                    return;
                }
                Err(code) if code == ResponseError::NotCoordinator.code() => return,
                Err(code) => {
                    warn!(
                        transactional_id,
                        code, "writing a transaction's completion failed; retrying"
                    );
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(COMPLETE_RETRY_BACKOFF) => {}
            }
        }
    }

    fn with_partition(&self, partition: i32, f: impl FnOnce(&mut Transactions)) {
        let mut state = self.lock();
        if let Some(txns) = state
            .owned
            .get_mut(&partition)
            .and_then(|o| o.txns.as_mut())
        {
            f(txns);
        }
    }

    // ------------------------------------------------------------------
    // Following the metadata, loading

    /// Follows the metadata: loads the `__transaction_state` partitions
    /// this node now leads (or leads in a new epoch), and drops those it
    /// no longer does.
    pub fn on_image(&self, image: &MetadataImage) {
        let topic = image.topic(TRANSACTION_STATE_TOPIC);
        let count = topic.map_or(0, |t| t.partitions.len() as i32);
        let led: HashMap<i32, i32> = topic
            .map(|t| {
                t.partitions
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.leader == self.node_id)
                    .map(|(i, p)| (i as i32, p.leader_epoch))
                    .collect()
            })
            .unwrap_or_default();
        let Some(broker) = self.broker.upgrade() else {
            return;
        };
        let mut to_load = Vec::new();
        {
            let mut state = self.lock();
            state.partition_count = count;
            state.owned.retain(|partition, owned| {
                let keep = led.get(partition) == Some(&owned.coordinator_epoch);
                if !keep {
                    owned.cancel.cancel();
                    info!(
                        partition,
                        "no longer coordinating the transactions of __transaction_state partition"
                    );
                }
                keep
            });
            for (&partition, &epoch) in &led {
                if state.owned.contains_key(&partition) {
                    continue;
                }
                let Some(replica) = broker.replicas.get(TRANSACTION_STATE_TOPIC, partition) else {
                    continue;
                };
                if replica.leader_epoch() != epoch {
                    // The replica has not taken this epoch yet: the next
                    // image (or this one, applied) comes back here.
                    continue;
                }
                let empty = replica.log.log_end_offset() == 0;
                state.owned.insert(
                    partition,
                    Owned {
                        coordinator_epoch: epoch,
                        // An empty partition is loaded at once, under the
                        // lock (as the group coordinator does), so that the
                        // FindCoordinator that made the topic sends its
                        // client to a coordinator that is ready.
                        txns: empty.then(|| Transactions::new(self.config.limits.clone())),
                        cancel: CancellationToken::new(),
                    },
                );
                if !empty {
                    to_load.push((partition, epoch, replica));
                }
            }
        }
        for (partition, epoch, replica) in to_load {
            let broker = Arc::clone(&broker);
            self.runtime.spawn_blocking(move || {
                let txns = Arc::clone(&broker.txns);
                txns.load(&broker, partition, epoch, &replica);
            });
        }
    }

    /// Reads a partition back into its transactions, then resends the
    /// markers of those it finds prepared. Blocking.
    fn load(
        &self,
        broker: &Arc<Broker>,
        partition: i32,
        epoch: i32,
        replica: &crate::replica::Partition,
    ) {
        let started = std::time::Instant::now();
        let mut txns = Transactions::new(self.config.limits.clone());
        let mut records_read = 0u64;
        let read = replica.read_whole_log(|header, bytes| {
            if header.is_control() {
                return;
            }
            let decoded = match storage_records::decode_records(bytes) {
                Ok(decoded) => decoded,
                Err(error) => {
                    warn!(partition, offset = header.base_offset, %error, "unreadable batch in __transaction_state; skipped");
                    return;
                }
            };
            for record in decoded {
                records_read += 1;
                let offset = header.base_offset + i64::from(record.offset_delta);
                let Some(key) = record.key.as_deref() else {
                    continue;
                };
                let id = match records::decode_key(key) {
                    Ok(id) => id,
                    Err(error) => {
                        warn!(partition, offset, %error, "skipped");
                        continue;
                    }
                };
                let loaded = match record.value.as_deref() {
                    None => {
                        txns.load_tombstone(&id);
                        Ok(())
                    }
                    Some(value) => match records::decode_value(value) {
                        Ok(value) => txns.load(&id, &value).map_err(|e| e.to_string()),
                        Err(error) => Err(error.to_string()),
                    },
                };
                if let Err(error) = loaded {
                    warn!(partition, offset, %error, "skipped");
                }
            }
        });
        if let Err(error) = read {
            warn!(partition, %error, "reading __transaction_state failed; loading what was read");
        }
        let prepared: Vec<TxnMetadata> = txns.prepared().into_iter().cloned().collect();
        let count = txns.len();
        {
            let mut state = self.lock();
            match state.owned.get_mut(&partition) {
                Some(owned) if owned.coordinator_epoch == epoch && owned.txns.is_none() => {
                    owned.txns = Some(txns);
                }
                // Lost (or taken again) while loading.
                _ => return,
            }
        }
        info!(
            partition,
            transactional_ids = count,
            prepared = prepared.len(),
            records = records_read,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "loaded __transaction_state partition"
        );
        for meta in prepared {
            self.spawn_markers(broker, partition, epoch, &meta);
        }
    }

    // ------------------------------------------------------------------
    // Timers

    /// Aborts open transactions past their timeout every
    /// `abort_timed_out_interval`, and expires idle transactional ids
    /// every `remove_expired_interval`, until `shutdown`.
    pub async fn run(coordinator: Arc<Self>, shutdown: CancellationToken) {
        let mut abort_tick = tokio::time::interval(coordinator.config.abort_timed_out_interval);
        let mut expire_tick = tokio::time::interval(coordinator.config.remove_expired_interval);
        abort_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        expire_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = abort_tick.tick() => coordinator.abort_timed_out().await,
                _ = expire_tick.tick() => coordinator.remove_expired().await,
            }
        }
        let mut state = coordinator.lock();
        for owned in state.owned.values() {
            owned.cancel.cancel();
        }
        state.owned.clear();
    }

    /// Each of `transitions` (of `partition` under `epoch`) written one
    /// after the other; those that need markers get them.
    async fn write_all(
        &self,
        broker: &Arc<Broker>,
        partition: i32,
        epoch: i32,
        transitions: Vec<Transition>,
    ) {
        for transition in transitions {
            match self.write(broker, partition, epoch, &transition).await {
                Ok(()) if transition.needs_markers() => {
                    self.spawn_markers(broker, partition, epoch, &transition.to)
                }
                Ok(()) => {}
                Err(code) => {
                    debug!(
                        transactional_id = transition.transactional_id(),
                        code, "timer write failed; the next round tries again"
                    )
                }
            }
        }
    }

    async fn abort_timed_out(&self) {
        let Ok(broker) = self.broker() else { return };
        for (partition, epoch, transitions) in self.decide_all(|txns, now| txns.timed_out(now)) {
            for transition in &transitions {
                info!(
                    transactional_id = transition.transactional_id(),
                    producer_id = transition.to.producer_id,
                    "aborting a transaction past its timeout (its producer is fenced)"
                );
            }
            self.write_all(&broker, partition, epoch, transitions).await;
        }
    }

    async fn remove_expired(&self) {
        let Ok(broker) = self.broker() else { return };
        let expiration_ms = self.config.transactional_id_expiration_ms;
        for (partition, epoch, transitions) in
            self.decide_all(|txns, now| txns.expired(now, expiration_ms))
        {
            self.write_all(&broker, partition, epoch, transitions).await;
        }
    }

    /// `decide` on every loaded partition, with their epochs.
    fn decide_all(
        &self,
        mut decide: impl FnMut(&mut Transactions, i64) -> Vec<Transition>,
    ) -> Vec<(i32, i32, Vec<Transition>)> {
        let mut state = self.lock();
        let now = self.now();
        state
            .owned
            .iter_mut()
            .filter_map(|(partition, owned)| {
                let txns = owned.txns.as_mut()?;
                let transitions = decide(txns, now);
                (!transitions.is_empty()).then_some((
                    *partition,
                    owned.coordinator_epoch,
                    transitions,
                ))
            })
            .collect()
    }
}

/// What a client is told when an append to `__transaction_state` fails,
/// as Kafka maps its transaction-log append errors: NOT_COORDINATOR when
/// the leadership moved, COORDINATOR_NOT_AVAILABLE otherwise (clients
/// retry both).
fn append_error(partition: i32, error: &AppendError) -> i16 {
    match error {
        AppendError::NotLeader => ResponseError::NotCoordinator.code(),
        AppendError::NotEnoughReplicas { .. } => ResponseError::CoordinatorNotAvailable.code(),
        error => {
            warn!(partition, %error, "writing to __transaction_state failed");
            ResponseError::CoordinatorNotAvailable.code()
        }
    }
}
