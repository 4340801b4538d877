//! The transactions of one `__transaction_state` partition as a state
//! machine (Kafka's `TransactionMetadata` and the decisions of its
//! `TransactionCoordinator`, for `transaction.version` 0 and 1):
//!
//! ```text
//!  (new) ─InitProducerId─► Empty ─AddPartitions─► Ongoing ─EndTxn(commit)─► PrepareCommit
//!                                                 │ ▲   │                         │ markers
//!                                                 └─┘   │                         ▼
//!                                        AddPartitions  │                   CompleteCommit
//!                                                       │ EndTxn(abort); or a timeout
//!                                                       │ or InitProducerId fencing the
//!                                                       │ producer: epoch + 1, through
//!                                                       ▼ PrepareEpochFence
//!                                                 PrepareAbort ─markers─► CompleteAbort
//! ```
//!
//! From CompleteCommit and CompleteAbort, InitProducerId goes to Empty
//! and AddPartitions to Ongoing (the next transaction); Empty,
//! CompleteCommit and CompleteAbort go to Dead (a tombstone) when the id
//! expires.
//!
//! Everything here is in memory and synchronous: time comes in as `now`
//! (milliseconds from the coordinator's clock) and a new producer id from
//! a function the caller passes, so the same calls give the same
//! transactions. An operation either answers at once (`Err` with a Kafka
//! error, or an answer that needs no write) or returns a [`Transition`]:
//! the transaction's metadata as it will be. The caller appends
//! [`Transition::key`] and [`Transition::value`] to the partition, and once
//! the record is durable calls [`Transactions::complete`] (or, if the
//! write failed, [`Transactions::abort_pending`]); only then is the client
//! answered. While a transition is pending, every other operation on that
//! id answers CONCURRENT_TRANSACTIONS (Kafka's `pendingState`), which
//! clients retry.
//!
//! **Invariants**, asserted where a transition is made: every transition
//! is in Kafka's table ([`TxnState::valid_previous`]); a transaction in
//! memory is never Dead or PrepareEpochFence (both exist only as the
//! target of a transition); only Ongoing, PrepareCommit and PrepareAbort
//! hold partitions; for one producer id the epoch never goes down; an epoch
//! handed to a client is at most `i16::MAX - 1`, so fencing it can always
//! bump it once more.

use std::collections::{BTreeMap, BTreeSet};

use rill_protocol::kafka_protocol::error::ResponseError;
use tracing::warn;

use super::records::{self, TopicPartitions, TxnValue, NO_PRODUCER_ID};

/// Kafka's `RecordBatch.NO_PRODUCER_EPOCH`: no epoch yet (a transactional
/// id that has never been written), or no last epoch.
pub const NO_PRODUCER_EPOCH: i16 = -1;

/// `transaction.max.timeout.ms`' default: 15 minutes.
pub const TRANSACTION_MAX_TIMEOUT_MS_DEFAULT: i32 = 900_000;
/// `transactional.id.expiration.ms`' default: 7 days.
pub const TRANSACTIONAL_ID_EXPIRATION_MS_DEFAULT: i64 = 7 * 24 * 60 * 60 * 1000;

/// The states of a transactional id, with Kafka's ids (stored in
/// `__transaction_state`) and names (DescribeTransactions and
/// ListTransactions send them as strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TxnState {
    /// No transaction: after InitProducerId.
    Empty,
    /// A transaction with partitions added, not yet ended.
    Ongoing,
    /// EndTxn(commit) is durable; markers are being written.
    PrepareCommit,
    /// EndTxn(abort), a timeout or a fence is durable; markers are being
    /// written.
    PrepareAbort,
    /// Every partition has its commit marker.
    CompleteCommit,
    /// Every partition has its abort marker.
    CompleteAbort,
    /// The id expired: only ever the target of a transition, whose record
    /// is a tombstone.
    Dead,
    /// The epoch is being bumped to fence a producer: only ever a step of
    /// a transition from Ongoing to PrepareAbort, never written.
    PrepareEpochFence,
}

impl TxnState {
    pub const ALL: [TxnState; 8] = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
        TxnState::Dead,
        TxnState::PrepareEpochFence,
    ];

    /// The id stored in a record's `TransactionStatus`.
    pub fn id(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
            TxnState::PrepareEpochFence => 7,
        }
    }

    pub fn from_id(id: i8) -> Option<TxnState> {
        TxnState::ALL.into_iter().find(|state| state.id() == id)
    }

    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    /// The state a ListTransactions state filter names; case-sensitive,
    /// as Kafka's `TransactionState.fromName`.
    pub fn parse(name: &str) -> Option<TxnState> {
        TxnState::ALL.into_iter().find(|state| state.name() == name)
    }

    /// Kafka's `validPreviousStates`: the states this one may follow.
    pub fn valid_previous(self) -> &'static [TxnState] {
        use TxnState::*;
        match self {
            Empty => &[Empty, CompleteCommit, CompleteAbort],
            Ongoing => &[Ongoing, Empty, CompleteCommit, CompleteAbort],
            PrepareCommit => &[Ongoing],
            PrepareAbort => &[Ongoing, PrepareEpochFence],
            CompleteCommit => &[PrepareCommit],
            CompleteAbort => &[PrepareAbort],
            Dead => &[Empty, CompleteAbort, CompleteCommit],
            PrepareEpochFence => &[Ongoing],
        }
    }

    pub fn may_follow(self, previous: TxnState) -> bool {
        self.valid_previous().contains(&previous)
    }

    /// Whether an id in this state may expire (Kafka's
    /// `isExpirationAllowed`): no transaction is open.
    pub fn is_expiration_allowed(self) -> bool {
        matches!(
            self,
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
        )
    }

    /// Whether a transaction in this state has partitions: it is open, or
    /// its markers are being written.
    pub fn holds_partitions(self) -> bool {
        matches!(
            self,
            TxnState::Ongoing | TxnState::PrepareCommit | TxnState::PrepareAbort
        )
    }
}

/// Whether an epoch is the last a client may be given (Kafka's
/// `isEpochExhausted`): `i16::MAX` is kept so that the coordinator can
/// always fence the producer holding `i16::MAX - 1`.
pub fn is_epoch_exhausted(epoch: i16) -> bool {
    epoch >= i16::MAX - 1
}

/// One transactional id: its producer, and its transaction if one is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMetadata {
    pub transactional_id: String,
    pub producer_id: i64,
    /// The producer id before the last InitProducerId (Kafka's
    /// `lastProducerId`): a producer retrying an InitProducerId whose
    /// answer moved it to a new producer id still holds this one
    /// (KIP-360). Not stored in version 0 records: -1 after a load, as in
    /// Kafka.
    pub last_producer_id: i64,
    /// -1 only while the id's first record is being written.
    pub producer_epoch: i16,
    /// The epoch before the last InitProducerId that a producer asked for
    /// by its epoch (KIP-360), so that its retry gets the same answer;
    /// -1 when none. Not stored: -1 after a load, as in Kafka.
    pub last_producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// The transaction's partitions, ordered (so records and answers come
    /// out the same every time); empty unless the state
    /// [holds partitions](TxnState::holds_partitions).
    pub partitions: BTreeSet<(String, i32)>,
    /// When the transaction's first partition was added; -1 when none.
    pub start_ms: i64,
    /// When the metadata last changed; expiry counts from here.
    pub last_update_ms: i64,
    /// The transition being written, if any.
    pub pending: Option<Box<Transition>>,
}

impl TxnMetadata {
    /// The metadata as its record stores it (value version 0).
    pub fn record(&self) -> TxnValue {
        let transaction_partitions = if self.state == TxnState::Empty {
            // Kafka writes a null array for Empty.
            None
        } else {
            let mut topics: Vec<TopicPartitions> = Vec::new();
            for (topic, partition) in &self.partitions {
                match topics.last_mut() {
                    Some(last) if last.topic == *topic => last.partition_ids.push(*partition),
                    _ => topics.push(TopicPartitions {
                        topic: topic.clone(),
                        partition_ids: vec![*partition],
                    }),
                }
            }
            Some(topics)
        };
        TxnValue {
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            transaction_timeout_ms: self.timeout_ms,
            transaction_status: self.state.id(),
            transaction_partitions,
            last_update_timestamp_ms: self.last_update_ms,
            start_timestamp_ms: self.start_ms,
            previous_producer_id: NO_PRODUCER_ID,
            next_producer_id: NO_PRODUCER_ID,
            client_transaction_version: 0,
        }
    }

    /// The metadata without its pending transition: what a transition
    /// starts from.
    fn settled(&self) -> TxnMetadata {
        TxnMetadata {
            pending: None,
            ..self.clone()
        }
    }

    fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether the id has never been written: its first record is pending.
    fn is_unwritten(&self) -> bool {
        self.producer_epoch == NO_PRODUCER_EPOCH
    }
}

/// A change to write: the metadata as it will be once its record is
/// durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: TxnState,
    /// Without a pending transition of its own.
    pub to: TxnMetadata,
}

impl Transition {
    pub fn transactional_id(&self) -> &str {
        &self.to.transactional_id
    }

    /// The record's key.
    pub fn key(&self) -> Vec<u8> {
        records::encode_key(&self.to.transactional_id)
    }

    /// The record's value; `None` (a tombstone) for Dead.
    pub fn value(&self) -> Option<Vec<u8>> {
        (self.to.state != TxnState::Dead)
            .then(|| records::encode_value(&self.to.record(), records::VALUE_VERSION))
    }

    /// Whether the caller must write markers once this is durable: the
    /// transaction is now PrepareCommit or PrepareAbort, and
    /// [`Transactions::markers_written`] follows the markers.
    pub fn needs_markers(&self) -> bool {
        matches!(
            self.to.state,
            TxnState::PrepareCommit | TxnState::PrepareAbort
        )
    }
}

/// How an InitProducerId goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    /// Write this; once durable, answer its producer id and epoch
    /// (`to.producer_id`, `to.producer_epoch`).
    Write(Transition),
    /// The id has a transaction open: write this abort (the epoch bumped,
    /// which fences the producer that opened it); once durable, answer
    /// CONCURRENT_TRANSACTIONS, write the abort markers and call
    /// [`Transactions::markers_written`]. The client retries, and gets its
    /// new epoch once the abort is complete. A failed write is answered
    /// with the write's error.
    Fence(Transition),
}

/// How an AddPartitionsToTxn or EndTxn goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to write: answer NONE now (the partitions are already in
    /// the transaction; the transaction already ended this way).
    Done,
    /// Write this; once durable, answer NONE. After an EndTxn, then write
    /// the markers to `to.partitions` and call
    /// [`Transactions::markers_written`].
    Write(Transition),
}

/// The APIs whose PRODUCER_FENCED an older client does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnApi {
    InitProducerId,
    AddPartitionsToTxn,
    AddOffsetsToTxn,
    EndTxn,
}

impl TxnApi {
    /// The first version whose clients know PRODUCER_FENCED (KIP-588).
    fn producer_fenced_version_min(self) -> i16 {
        match self {
            TxnApi::InitProducerId => 4,
            TxnApi::AddPartitionsToTxn | TxnApi::AddOffsetsToTxn | TxnApi::EndTxn => 2,
        }
    }
}

/// The error to send a client of `api` at `version`: PRODUCER_FENCED
/// becomes INVALID_PRODUCER_EPOCH for the versions before KIP-588, which
/// handle it the same way (as Kafka's `KafkaApis` does).
pub fn error_for_version(api: TxnApi, version: i16, error: ResponseError) -> ResponseError {
    if error == ResponseError::ProducerFenced && version < api.producer_fenced_version_min() {
        ResponseError::InvalidProducerEpoch
    } else {
        error
    }
}

/// Why a `__transaction_state` record was not loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unloadable __transaction_state record: {0}")]
pub struct Unloadable(pub &'static str);

/// The transaction coordinator's settings, with Kafka's names and defaults.
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// `transaction.max.timeout.ms`: the longest timeout a producer may
    /// ask for.
    pub transaction_max_timeout_ms: i32,
    /// The most transactional ids one `__transaction_state` partition
    /// holds (Kafka has no bound). An InitProducerId for one more is
    /// answered COORDINATOR_NOT_AVAILABLE, which producers retry (finding
    /// the coordinator again) until `max.block.ms`, so it fails only if
    /// no id expires in that time. Ids loaded from the partition are not
    /// refused, only new ones.
    pub transactional_ids_max: usize,
}

impl Default for TxnConfig {
    fn default() -> Self {
        Self {
            transaction_max_timeout_ms: TRANSACTION_MAX_TIMEOUT_MS_DEFAULT,
            transactional_ids_max: 100_000,
        }
    }
}

/// ListTransactions' filters; an empty list filters nothing.
#[derive(Debug, Clone)]
pub struct ListFilter {
    pub states: Vec<TxnState>,
    pub producer_ids: Vec<i64>,
    /// Only transactions running longer than this (KIP-994); -1 for all.
    pub duration_ms: i64,
}

impl Default for ListFilter {
    fn default() -> Self {
        Self {
            states: Vec::new(),
            producer_ids: Vec::new(),
            duration_ms: -1,
        }
    }
}

/// The transactional ids of one `__transaction_state` partition.
#[derive(Debug)]
pub struct Transactions {
    config: TxnConfig,
    /// Ordered, so that timeouts, expiries and listings come out in the
    /// same order on every run.
    transactions: BTreeMap<String, TxnMetadata>,
    /// When a new id was last refused for `transactional_ids_max` with a
    /// warning: at most one a minute.
    ids_max_warned_ms: Option<i64>,
}

impl Transactions {
    pub fn new(config: TxnConfig) -> Self {
        Self {
            config,
            transactions: BTreeMap::new(),
            ids_max_warned_ms: None,
        }
    }

    pub fn config(&self) -> &TxnConfig {
        &self.config
    }

    /// The ids held, unwritten ones (their first record pending) included.
    pub fn len(&self) -> usize {
        self.transactions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.transactions.is_empty()
    }

    /// The id's metadata, for DescribeTransactions.
    pub fn get(&self, transactional_id: &str) -> Option<&TxnMetadata> {
        self.transactions.get(transactional_id)
    }

    /// ListTransactions: the ids that pass `filter`, ordered by id.
    pub fn list(&self, filter: &ListFilter, now: i64) -> Vec<&TxnMetadata> {
        self.transactions
            .values()
            .filter(|m| filter.states.is_empty() || filter.states.contains(&m.state))
            .filter(|m| {
                filter.producer_ids.is_empty() || filter.producer_ids.contains(&m.producer_id)
            })
            // As Kafka: a transaction that never started (start -1) counts
            // as running since the epoch.
            .filter(|m| {
                filter.duration_ms < 0 || now.saturating_sub(m.start_ms) > filter.duration_ms
            })
            .collect()
    }

    // ------------------------------------------------------------------
    // The APIs

    /// InitProducerId with a transactional id (Kafka's
    /// `handleInitProducerId`). `expected` is the producer id and epoch
    /// the producer holds, when it asks to keep them (KIP-360);
    /// `new_producer_id` is called at most once, when a new producer id is
    /// needed (a new id, or the epochs of the current one are spent), and
    /// its error is the answer.
    ///
    /// Errors: INVALID_REQUEST (empty id, or one too long for a record),
    /// INVALID_TRANSACTION_TIMEOUT (`timeout_ms` not in
    /// 1..=`transaction.max.timeout.ms`), COORDINATOR_NOT_AVAILABLE (a new
    /// id past `transactional_ids_max`), CONCURRENT_TRANSACTIONS (a write
    /// pending, or markers being written), PRODUCER_FENCED (`expected` is
    /// not the current producer, nor a retry of the last call).
    pub fn init_producer_id(
        &mut self,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        now: i64,
        new_producer_id: impl FnOnce() -> Result<i64, ResponseError>,
    ) -> Result<Init, ResponseError> {
        check_id(transactional_id)?;
        if timeout_ms <= 0 || timeout_ms > self.config.transaction_max_timeout_ms {
            return Err(ResponseError::InvalidTransactionTimeout);
        }
        let mut new_producer_id = Some(new_producer_id);
        let mut draw = || (new_producer_id.take().expect("one producer id per call"))();
        if !self.transactions.contains_key(transactional_id) {
            if self.transactions.len() >= self.config.transactional_ids_max {
                if self
                    .ids_max_warned_ms
                    .is_none_or(|warned| now - warned >= 60_000)
                {
                    self.ids_max_warned_ms = Some(now);
                    warn!(
                        transactional_id,
                        ids = self.transactions.len(),
                        ids_max = self.config.transactional_ids_max,
                        "too many transactional ids in this __transaction_state partition: \
                         new ones are refused with COORDINATOR_NOT_AVAILABLE \
                         (--transactional-id-max-count)"
                    );
                }
                return Err(ResponseError::CoordinatorNotAvailable);
            }
            let producer_id = draw()?;
            assert!(producer_id >= 0);
            // Held, unwritten, while its first record is pending (as
            // Kafka puts it in its cache first), so that a second
            // InitProducerId for it waits; dropped if that write fails.
            self.transactions.insert(
                transactional_id.to_string(),
                TxnMetadata {
                    transactional_id: transactional_id.to_string(),
                    producer_id,
                    last_producer_id: NO_PRODUCER_ID,
                    producer_epoch: NO_PRODUCER_EPOCH,
                    last_producer_epoch: NO_PRODUCER_EPOCH,
                    timeout_ms,
                    state: TxnState::Empty,
                    partitions: BTreeSet::new(),
                    start_ms: -1,
                    last_update_ms: now,
                    pending: None,
                },
            );
        }
        let meta = &self.transactions[transactional_id];
        if meta.is_pending() {
            return Err(ResponseError::ConcurrentTransactions);
        }
        if let Some((producer_id, epoch)) = expected {
            // Kafka's `isValidProducerId`: the id was just made (no epoch
            // yet); or the producer holds the current producer id (its
            // epoch is checked below); or it holds the previous one with
            // a spent epoch, and is retrying the call that moved it to a
            // new producer id.
            let valid = meta.producer_epoch == NO_PRODUCER_EPOCH
                || producer_id == meta.producer_id
                || (producer_id == meta.last_producer_id && is_epoch_exhausted(epoch));
            if !valid {
                return Err(ResponseError::ProducerFenced);
            }
        }
        match meta.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                Err(ResponseError::ConcurrentTransactions)
            }
            TxnState::Ongoing => {
                // The epoch this fence makes is never given to a client:
                // the producer retries and gets the next one (or a new
                // producer id, should this one spend the epochs).
                let transition = self.prepare_fence(transactional_id, now);
                Ok(Init::Fence(transition))
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                let mut to = meta.settled();
                to.state = TxnState::Empty;
                to.timeout_ms = timeout_ms;
                to.partitions.clear();
                to.start_ms = -1;
                to.last_update_ms = now;
                to.last_producer_id = meta.producer_id;
                let exhausted = is_epoch_exhausted(meta.producer_epoch);
                let current = meta.producer_epoch;
                let last = meta.last_producer_epoch;
                match expected.map(|(_, epoch)| epoch) {
                    // A producer starting afresh: the next epoch, or a new
                    // producer id when the epochs are spent.
                    None if exhausted => {
                        to.producer_id = draw()?;
                        to.producer_epoch = 0;
                        to.last_producer_epoch = NO_PRODUCER_EPOCH;
                    }
                    None => {
                        to.producer_epoch = current + 1;
                        to.last_producer_epoch = NO_PRODUCER_EPOCH;
                    }
                    // The current producer recovering from an error (or
                    // the id has no epoch yet): the same, remembering the
                    // epoch it had so that a retry gets the same answer.
                    Some(epoch) if current == NO_PRODUCER_EPOCH || epoch == current => {
                        if exhausted {
                            to.producer_id = draw()?;
                            to.producer_epoch = 0;
                        } else {
                            to.producer_epoch = current + 1;
                        }
                        to.last_producer_epoch = current;
                    }
                    // A retry of a call that succeeded: the same answer.
                    // (Kafka reaches this only when the epoch is not
                    // spent, and fails with an internal error otherwise;
                    // the answer is the same either way.)
                    Some(epoch) if epoch != NO_PRODUCER_EPOCH && epoch == last => {}
                    Some(_) => return Err(ResponseError::ProducerFenced),
                }
                // What a client is given leaves one epoch to fence it with.
                assert!(to.producer_epoch < i16::MAX);
                Ok(Init::Write(self.prepare(to, false)))
            }
            TxnState::Dead | TxnState::PrepareEpochFence => unreachable!("never held"),
        }
    }

    /// AddPartitionsToTxn (and AddOffsetsToTxn, with the group's
    /// `__consumer_offsets` partition), as Kafka's
    /// `handleAddPartitionsToTransaction`.
    ///
    /// Errors: INVALID_REQUEST (empty id, a topic too long for a record),
    /// INVALID_PRODUCER_ID_MAPPING (unknown id, another producer id),
    /// PRODUCER_FENCED (another epoch, or `i16::MAX`; see
    /// [`error_for_version`]), CONCURRENT_TRANSACTIONS (a write pending, or
    /// the last transaction's markers being written).
    pub fn add_partitions(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[(String, i32)],
        now: i64,
    ) -> Result<Step, ResponseError> {
        check_id(transactional_id)?;
        if partitions
            .iter()
            .any(|(topic, _)| topic.len() > i16::MAX as usize)
        {
            return Err(ResponseError::InvalidRequest);
        }
        let meta = self.producer(transactional_id, producer_id, producer_epoch)?;
        if producer_epoch == i16::MAX {
            // Only a fence makes this epoch, and no client is given it: a
            // transaction opened with it could not be fenced in turn
            // (Kafka lets it open, and then fails every fence of it).
            return Err(ResponseError::ProducerFenced);
        }
        if meta.is_pending() {
            return Err(ResponseError::ConcurrentTransactions);
        }
        match meta.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                Err(ResponseError::ConcurrentTransactions)
            }
            TxnState::Ongoing if partitions.iter().all(|tp| meta.partitions.contains(tp)) => {
                Ok(Step::Done)
            }
            TxnState::Empty
            | TxnState::Ongoing
            | TxnState::CompleteCommit
            | TxnState::CompleteAbort => {
                let mut to = meta.settled();
                if meta.state != TxnState::Ongoing {
                    to.start_ms = now;
                }
                to.state = TxnState::Ongoing;
                to.partitions.extend(partitions.iter().cloned());
                to.last_update_ms = now;
                Ok(Step::Write(self.prepare(to, false)))
            }
            TxnState::Dead | TxnState::PrepareEpochFence => unreachable!("never held"),
        }
    }

    /// AddPartitionsToTxn's verify-only form (KIP-890 part 1: a partition
    /// leader asking before it appends a transactional batch): for each of
    /// `partitions`, in order, 0 (NONE) when it is in the transaction, and
    /// INVALID_TXN_STATE when not. Never writes, and does not wait for a
    /// pending write: partitions join when their write is durable and
    /// leave when the markers are.
    ///
    /// Errors, for every partition: INVALID_REQUEST (empty id),
    /// INVALID_PRODUCER_ID_MAPPING, PRODUCER_FENCED,
    /// CONCURRENT_TRANSACTIONS (markers being written).
    pub fn verify_partitions(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[(String, i32)],
    ) -> Result<Vec<i16>, ResponseError> {
        check_id(transactional_id)?;
        let meta = self.producer(transactional_id, producer_id, producer_epoch)?;
        if matches!(meta.state, TxnState::PrepareCommit | TxnState::PrepareAbort) {
            return Err(ResponseError::ConcurrentTransactions);
        }
        Ok(partitions
            .iter()
            .map(|tp| {
                if meta.partitions.contains(tp) {
                    0
                } else {
                    ResponseError::InvalidTxnState.code()
                }
            })
            .collect())
    }

    /// EndTxn from a client (Kafka's `endTransaction` for
    /// `transaction.version` 0 and 1), retries included: a commit of a
    /// committed transaction is NONE, of one being committed
    /// CONCURRENT_TRANSACTIONS.
    ///
    /// Errors: INVALID_REQUEST (empty id), INVALID_PRODUCER_ID_MAPPING
    /// (unknown id, another producer id), PRODUCER_FENCED (another epoch;
    /// see [`error_for_version`]), CONCURRENT_TRANSACTIONS (a write
    /// pending; the same end's markers being written), INVALID_TXN_STATE
    /// (no transaction open; the other end already chosen).
    pub fn end_txn(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        now: i64,
    ) -> Result<Step, ResponseError> {
        check_id(transactional_id)?;
        let meta = self.producer(transactional_id, producer_id, producer_epoch)?;
        if meta.is_pending() {
            return Err(ResponseError::ConcurrentTransactions);
        }
        match (meta.state, commit) {
            (TxnState::Ongoing, _) => {
                let mut to = meta.settled();
                to.state = if commit {
                    TxnState::PrepareCommit
                } else {
                    TxnState::PrepareAbort
                };
                to.last_update_ms = now;
                Ok(Step::Write(self.prepare(to, false)))
            }
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => Ok(Step::Done),
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                Err(ResponseError::ConcurrentTransactions)
            }
            (
                TxnState::Empty
                | TxnState::CompleteCommit
                | TxnState::CompleteAbort
                | TxnState::PrepareCommit
                | TxnState::PrepareAbort,
                _,
            ) => Err(ResponseError::InvalidTxnState),
            (TxnState::Dead | TxnState::PrepareEpochFence, _) => unreachable!("never held"),
        }
    }

    /// Every partition of a prepared transaction has its marker: the
    /// transition to CompleteCommit or CompleteAbort (partitions cleared)
    /// to write. `producer_id` and `producer_epoch` are those the markers
    /// carried.
    ///
    /// Errors mean there is nothing to complete (the partition was loaded
    /// again since, or this was already called): INVALID_PRODUCER_ID_MAPPING,
    /// PRODUCER_FENCED, CONCURRENT_TRANSACTIONS (the completion is being
    /// written), INVALID_TXN_STATE (not prepared).
    pub fn markers_written(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        now: i64,
    ) -> Result<Transition, ResponseError> {
        let meta = self.producer(transactional_id, producer_id, producer_epoch)?;
        if meta.is_pending() {
            return Err(ResponseError::ConcurrentTransactions);
        }
        let state = match meta.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            TxnState::PrepareAbort => TxnState::CompleteAbort,
            _ => return Err(ResponseError::InvalidTxnState),
        };
        let mut to = meta.settled();
        to.state = state;
        to.partitions.clear();
        to.last_update_ms = now;
        Ok(self.prepare(to, false))
    }

    // ------------------------------------------------------------------
    // Writes

    /// The record of `transition` is durable: the metadata becomes what it
    /// says (a Dead id is removed). `Err(NOT_COORDINATOR)` when it is no
    /// longer the id's pending transition (the partition was loaded again
    /// since), as Kafka answers a write whose coordinator epoch is stale.
    pub fn complete(&mut self, transition: &Transition) -> Result<(), ResponseError> {
        let id = transition.transactional_id();
        let Some(meta) = self.transactions.get_mut(id) else {
            return Err(ResponseError::NotCoordinator);
        };
        if meta.pending.as_deref() != Some(transition) {
            return Err(ResponseError::NotCoordinator);
        }
        if transition.to.state == TxnState::Dead {
            self.transactions.remove(id);
        } else {
            *meta = transition.to.clone();
        }
        Ok(())
    }

    /// The record of `transition` could not be written: the metadata stays
    /// as it was, and an id never written is dropped. Nothing happens if
    /// it is no longer the id's pending transition.
    ///
    /// Kafka keeps a failed fence's bumped epoch in memory and does not
    /// bump it again (`hasFailedEpochFence`); here the next fence makes
    /// the same epoch again, which comes to the same.
    pub fn abort_pending(&mut self, transition: &Transition) {
        let id = transition.transactional_id();
        let Some(meta) = self.transactions.get_mut(id) else {
            return;
        };
        if meta.pending.as_deref() != Some(transition) {
            return;
        }
        meta.pending = None;
        if meta.is_unwritten() {
            self.transactions.remove(id);
        }
    }

    // ------------------------------------------------------------------
    // Time

    /// Open transactions past their timeout (Kafka's
    /// `abortTimedOutTransactions`), each with its abort to write: the
    /// epoch bumped, which fences the producer. Once an abort is durable,
    /// write its markers and call [`Transactions::markers_written`].
    pub fn timed_out(&mut self, now: i64) -> Vec<Transition> {
        let ids: Vec<String> = self
            .transactions
            .values()
            .filter(|m| !m.is_pending() && m.state == TxnState::Ongoing)
            .filter(|m| m.start_ms.saturating_add(i64::from(m.timeout_ms)) < now)
            .map(|m| m.transactional_id.clone())
            .collect();
        ids.iter().map(|id| self.prepare_fence(id, now)).collect()
    }

    /// Ids with no transaction open, unchanged for `expiration_ms`
    /// (`transactional.id.expiration.ms`), each with its tombstone to
    /// write: a transition to Dead, whose completion removes the id.
    pub fn expired(&mut self, now: i64, expiration_ms: i64) -> Vec<Transition> {
        let cutoff = now.saturating_sub(expiration_ms);
        let ids: Vec<String> = self
            .transactions
            .values()
            .filter(|m| !m.is_pending() && m.state.is_expiration_allowed())
            .filter(|m| m.last_update_ms <= cutoff)
            .map(|m| m.transactional_id.clone())
            .collect();
        ids.iter()
            .map(|id| {
                let mut to = self.transactions[id].settled();
                to.state = TxnState::Dead;
                to.partitions.clear();
                self.prepare(to, false)
            })
            .collect()
    }

    // ------------------------------------------------------------------
    // Loading

    /// A record read back from the partition, in log order: the last for
    /// an id wins. Loaded ids are not refused for `transactional_ids_max`.
    /// A record no transition of this module writes (a Dead or
    /// PrepareEpochFence state, an unknown state, no producer id or epoch)
    /// is refused, and the id keeps what it had.
    pub fn load(&mut self, transactional_id: &str, value: &TxnValue) -> Result<(), Unloadable> {
        let state = TxnState::from_id(value.transaction_status)
            .ok_or(Unloadable("unknown transaction state"))?;
        if matches!(state, TxnState::Dead | TxnState::PrepareEpochFence) {
            return Err(Unloadable("a state that is never written"));
        }
        if value.producer_id < 0 || value.producer_epoch < 0 {
            return Err(Unloadable("no producer id or epoch"));
        }
        if state == TxnState::Ongoing && value.producer_epoch == i16::MAX {
            return Err(Unloadable(
                "an open transaction whose epoch cannot be fenced",
            ));
        }
        if transactional_id.is_empty() || transactional_id.len() > i16::MAX as usize {
            return Err(Unloadable("transactional id empty or too long"));
        }
        // As Kafka's `readTxnRecordValue`: partitions only where the state
        // holds them.
        let partitions = if state.holds_partitions() {
            value
                .transaction_partitions
                .iter()
                .flatten()
                .flat_map(|t| t.partition_ids.iter().map(|p| (t.topic.clone(), *p)))
                .collect()
        } else {
            BTreeSet::new()
        };
        let meta = TxnMetadata {
            transactional_id: transactional_id.to_string(),
            producer_id: value.producer_id,
            last_producer_id: value.previous_producer_id,
            producer_epoch: value.producer_epoch,
            last_producer_epoch: NO_PRODUCER_EPOCH,
            timeout_ms: value.transaction_timeout_ms,
            state,
            partitions,
            start_ms: value.start_timestamp_ms,
            last_update_ms: value.last_update_timestamp_ms,
            pending: None,
        };
        let replaced = self.transactions.insert(transactional_id.to_string(), meta);
        // Loading comes before the partition answers anyone.
        assert!(replaced.is_none_or(|m| !m.is_pending()));
        Ok(())
    }

    /// A tombstone read back: the id expired.
    pub fn load_tombstone(&mut self, transactional_id: &str) {
        let removed = self.transactions.remove(transactional_id);
        assert!(removed.is_none_or(|m| !m.is_pending()));
    }

    /// The transactions being committed or aborted, whose markers the
    /// caller must (again) write, after a load; then
    /// [`Transactions::markers_written`].
    pub fn prepared(&self) -> Vec<&TxnMetadata> {
        self.transactions
            .values()
            .filter(|m| matches!(m.state, TxnState::PrepareCommit | TxnState::PrepareAbort))
            .collect()
    }

    // ------------------------------------------------------------------
    // Transitions

    /// The id's metadata if `producer_id` and `producer_epoch` are its
    /// producer's.
    fn producer(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
    ) -> Result<&TxnMetadata, ResponseError> {
        let meta = self
            .transactions
            .get(transactional_id)
            .ok_or(ResponseError::InvalidProducerIdMapping)?;
        if meta.producer_id != producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if meta.producer_epoch != producer_epoch {
            return Err(ResponseError::ProducerFenced);
        }
        Ok(meta)
    }

    /// Kafka's `prepareFenceProducerEpoch` followed by the abort its
    /// `endTransaction` writes: Ongoing → (PrepareEpochFence) →
    /// PrepareAbort, the epoch bumped and the last epoch forgotten.
    fn prepare_fence(&mut self, transactional_id: &str, now: i64) -> Transition {
        let meta = &self.transactions[transactional_id];
        assert_eq!(meta.state, TxnState::Ongoing);
        // Clients are never given i16::MAX (see `is_epoch_exhausted`).
        assert!(meta.producer_epoch < i16::MAX);
        let mut to = meta.settled();
        to.producer_epoch = meta.producer_epoch + 1;
        to.last_producer_epoch = NO_PRODUCER_EPOCH;
        to.state = TxnState::PrepareAbort;
        to.last_update_ms = now;
        self.prepare(to, true)
    }

    /// Checks `to` against the id's metadata (Kafka's `prepareTransitionTo`
    /// and the checks of its `completeTransitionTo`) and makes it the
    /// pending transition. Every transition is made here. A failed check
    /// is a bug in this module, not a client's doing.
    fn prepare(&mut self, to: TxnMetadata, through_fence: bool) -> Transition {
        let meta = self
            .transactions
            .get_mut(&to.transactional_id)
            .expect("a transition of a held id");
        let from = meta.state;
        assert!(meta.pending.is_none(), "a transition is already pending");
        assert!(to.pending.is_none());
        if through_fence {
            assert!(TxnState::PrepareEpochFence.may_follow(from));
            assert!(to.state.may_follow(TxnState::PrepareEpochFence));
        } else {
            assert!(to.state.may_follow(from), "{from:?} → {:?}", to.state);
        }
        assert!(!matches!(
            from,
            TxnState::Dead | TxnState::PrepareEpochFence
        ));
        assert!(to.producer_id >= 0);
        assert!(to.producer_epoch >= 0);
        assert!(to.state.holds_partitions() || to.partitions.is_empty());
        let same_producer =
            to.producer_id == meta.producer_id && to.producer_epoch == meta.producer_epoch;
        match to.state {
            TxnState::Empty => {
                let bumped = to.producer_id == meta.producer_id
                    && i32::from(to.producer_epoch) == i32::from(meta.producer_epoch) + 1;
                let new_producer = to.producer_id != meta.producer_id && to.producer_epoch == 0;
                assert!(same_producer || bumped || new_producer);
                assert_eq!(to.start_ms, -1);
            }
            TxnState::Ongoing => {
                assert!(same_producer);
                assert!(meta.partitions.is_subset(&to.partitions));
                assert_eq!(to.timeout_ms, meta.timeout_ms);
            }
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                assert_eq!(to.producer_id, meta.producer_id);
                if through_fence {
                    assert_eq!(to.producer_epoch, meta.producer_epoch + 1);
                } else {
                    assert_eq!(to.producer_epoch, meta.producer_epoch);
                }
                assert_eq!(to.partitions, meta.partitions);
                assert_eq!(to.timeout_ms, meta.timeout_ms);
                assert_eq!(to.start_ms, meta.start_ms);
            }
            TxnState::CompleteCommit | TxnState::CompleteAbort => {
                assert!(same_producer);
                assert_eq!(to.timeout_ms, meta.timeout_ms);
                assert_ne!(to.start_ms, -1);
            }
            TxnState::Dead => {
                assert!(same_producer);
                assert!(from.is_expiration_allowed());
            }
            TxnState::PrepareEpochFence => unreachable!("never a target of its own"),
        }
        let transition = Transition { from, to };
        meta.pending = Some(Box::new(transition.clone()));
        transition
    }
}

/// A transactional id must be there, and fit a record's key.
fn check_id(transactional_id: &str) -> Result<(), ResponseError> {
    if transactional_id.is_empty() || transactional_id.len() > i16::MAX as usize {
        return Err(ResponseError::InvalidRequest);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ResponseError as E;

    const NOW: i64 = 1_000_000;
    const TIMEOUT: i32 = 10_000;

    fn config() -> TxnConfig {
        TxnConfig {
            transaction_max_timeout_ms: 60_000,
            transactional_ids_max: 10,
        }
    }

    fn pid(id: i64) -> impl FnOnce() -> Result<i64, ResponseError> {
        move || Ok(id)
    }

    fn no_pid() -> Result<i64, ResponseError> {
        panic!("no new producer id expected")
    }

    fn tp(topic: &str, partition: i32) -> (String, i32) {
        (topic.to_string(), partition)
    }

    fn written(txns: &mut Transactions, transition: Transition) -> Transition {
        txns.complete(&transition).unwrap();
        transition
    }

    /// InitProducerId, written: the producer id and epoch answered.
    fn init(
        txns: &mut Transactions,
        id: &str,
        expected: Option<(i64, i16)>,
        new_pid: i64,
    ) -> (i64, i16) {
        match txns.init_producer_id(id, TIMEOUT, expected, NOW, pid(new_pid)) {
            Ok(Init::Write(t)) => {
                let t = written(txns, t);
                (t.to.producer_id, t.to.producer_epoch)
            }
            other => panic!("{other:?}"),
        }
    }

    fn add(txns: &mut Transactions, id: &str, (p, e): (i64, i16), parts: &[(String, i32)]) {
        match txns.add_partitions(id, p, e, parts, NOW).unwrap() {
            Step::Write(t) => {
                written(txns, t);
            }
            Step::Done => {}
        }
    }

    /// EndTxn, written, its markers written and the completion written.
    fn end(txns: &mut Transactions, id: &str, (p, e): (i64, i16), commit: bool) {
        let Step::Write(t) = txns.end_txn(id, p, e, commit, NOW).unwrap() else {
            panic!("nothing to write");
        };
        assert!(written(txns, t).needs_markers());
        let done = txns.markers_written(id, p, e, NOW).unwrap();
        written(txns, done);
    }

    fn state(txns: &Transactions, id: &str) -> TxnState {
        txns.get(id).unwrap().state
    }

    fn loaded(state: TxnState, producer_id: i64, epoch: i16) -> TxnValue {
        let partitions = state.holds_partitions().then(|| {
            vec![TopicPartitions {
                topic: "t".into(),
                partition_ids: vec![0, 1],
            }]
        });
        TxnValue {
            producer_id,
            producer_epoch: epoch,
            transaction_timeout_ms: TIMEOUT,
            transaction_status: state.id(),
            transaction_partitions: partitions,
            last_update_timestamp_ms: NOW - 10,
            start_timestamp_ms: if state == TxnState::Empty {
                -1
            } else {
                NOW - 20
            },
            previous_producer_id: NO_PRODUCER_ID,
            next_producer_id: NO_PRODUCER_ID,
            client_transaction_version: 0,
        }
    }

    #[test]
    fn states_match_kafka() {
        use TxnState::*;
        let names = [
            "Empty",
            "Ongoing",
            "PrepareCommit",
            "PrepareAbort",
            "CompleteCommit",
            "CompleteAbort",
            "Dead",
            "PrepareEpochFence",
        ];
        for (i, state) in TxnState::ALL.into_iter().enumerate() {
            assert_eq!(state.id(), i as i8);
            assert_eq!(TxnState::from_id(i as i8), Some(state));
            assert_eq!(state.name(), names[i]);
            assert_eq!(TxnState::parse(names[i]), Some(state));
        }
        assert_eq!(TxnState::from_id(8), None);
        assert_eq!(TxnState::from_id(-1), None);
        assert_eq!(TxnState::parse("ongoing"), None);
        // Kafka's `validPreviousStates`, transcribed.
        let table: [(TxnState, &[TxnState]); 8] = [
            (Empty, &[Empty, CompleteCommit, CompleteAbort]),
            (Ongoing, &[Ongoing, Empty, CompleteCommit, CompleteAbort]),
            (PrepareCommit, &[Ongoing]),
            (PrepareAbort, &[Ongoing, PrepareEpochFence]),
            (CompleteCommit, &[PrepareCommit]),
            (CompleteAbort, &[PrepareAbort]),
            (Dead, &[Empty, CompleteAbort, CompleteCommit]),
            (PrepareEpochFence, &[Ongoing]),
        ];
        for (state, previous) in table {
            for from in TxnState::ALL {
                assert_eq!(
                    state.may_follow(from),
                    previous.contains(&from),
                    "{from:?} → {state:?}"
                );
            }
        }
        let expirable: Vec<TxnState> = TxnState::ALL
            .into_iter()
            .filter(|s| s.is_expiration_allowed())
            .collect();
        assert_eq!(expirable, [Empty, CompleteCommit, CompleteAbort]);
    }

    #[test]
    fn a_new_id_gets_epoch_0_and_each_init_bumps_it() {
        let mut txns = Transactions::new(config());
        assert_eq!(init(&mut txns, "a", None, 100), (100, 0));
        let meta = txns.get("a").unwrap();
        assert_eq!(meta.state, TxnState::Empty);
        assert_eq!(meta.last_producer_id, 100);
        assert_eq!(meta.last_producer_epoch, NO_PRODUCER_EPOCH);
        assert_eq!(meta.timeout_ms, TIMEOUT);
        assert_eq!(meta.start_ms, -1);
        let (p, e) = match txns.init_producer_id("a", 20_000, None, NOW + 1, no_pid) {
            Ok(Init::Write(t)) => {
                assert_eq!(t.from, TxnState::Empty);
                let t = written(&mut txns, t);
                (t.to.producer_id, t.to.producer_epoch)
            }
            other => panic!("{other:?}"),
        };
        assert_eq!((p, e), (100, 1));
        assert_eq!(txns.get("a").unwrap().timeout_ms, 20_000);
        assert_eq!(txns.get("a").unwrap().last_update_ms, NOW + 1);
        // After a transaction too.
        add(&mut txns, "a", (p, e), &[tp("t", 0)]);
        end(&mut txns, "a", (p, e), true);
        assert_eq!(init(&mut txns, "a", None, 999), (100, 2));
    }

    #[test]
    fn init_refuses_bad_requests() {
        let mut txns = Transactions::new(config());
        let init = |txns: &mut Transactions, id: &str, timeout: i32| {
            txns.init_producer_id(id, timeout, None, NOW, pid(1))
                .map(|_| ())
        };
        assert_eq!(init(&mut txns, "", TIMEOUT), Err(E::InvalidRequest));
        let long = "x".repeat(i16::MAX as usize + 1);
        assert_eq!(init(&mut txns, &long, TIMEOUT), Err(E::InvalidRequest));
        for timeout in [0, -1, 60_001, i32::MAX] {
            assert_eq!(
                init(&mut txns, "a", timeout),
                Err(E::InvalidTransactionTimeout)
            );
        }
        assert!(txns.is_empty());
        assert_eq!(init(&mut txns, "a", 60_000), Ok(()));
        // The producer-id source's error is the answer, and nothing is held.
        let failed = txns.init_producer_id("b", TIMEOUT, None, NOW, || {
            Err(E::CoordinatorLoadInProgress)
        });
        assert_eq!(failed, Err(E::CoordinatorLoadInProgress));
        assert!(txns.get("b").is_none());
    }

    #[test]
    fn new_ids_past_the_bound_are_refused() {
        let mut txns = Transactions::new(TxnConfig {
            transactional_ids_max: 2,
            ..config()
        });
        init(&mut txns, "a", None, 1);
        init(&mut txns, "b", None, 2);
        assert_eq!(
            txns.init_producer_id("c", TIMEOUT, None, NOW, pid(3)),
            Err(E::CoordinatorNotAvailable)
        );
        // Known ids go on; loaded ones are not refused.
        assert_eq!(init(&mut txns, "a", None, 9), (1, 1));
        txns.load("d", &loaded(TxnState::Empty, 4, 0)).unwrap();
        assert_eq!(txns.len(), 3);
        // Once ids expire, new ones are taken again.
        for t in txns.expired(NOW + 1, 1) {
            txns.complete(&t).unwrap();
        }
        assert!(txns.is_empty());
        assert_eq!(init(&mut txns, "c", None, 3), (3, 0));
    }

    #[test]
    fn a_pending_write_holds_off_the_others() {
        let mut txns = Transactions::new(config());
        let (p, e) = init(&mut txns, "a", None, 1);
        let Step::Write(adding) = txns.add_partitions("a", p, e, &[tp("t", 0)], NOW).unwrap()
        else {
            panic!()
        };
        assert_eq!(adding.to.state, TxnState::Ongoing);
        assert_eq!(state(&txns, "a"), TxnState::Empty);
        assert_eq!(
            txns.add_partitions("a", p, e, &[tp("t", 1)], NOW),
            Err(E::ConcurrentTransactions)
        );
        assert_eq!(
            txns.end_txn("a", p, e, true, NOW),
            Err(E::ConcurrentTransactions)
        );
        assert_eq!(
            txns.init_producer_id("a", TIMEOUT, None, NOW, no_pid),
            Err(E::ConcurrentTransactions)
        );
        assert!(txns.expired(i64::MAX, 0).is_empty());
        // Not yet in the transaction: a verify says so.
        assert_eq!(
            txns.verify_partitions("a", p, e, &[tp("t", 0)]),
            Ok(vec![E::InvalidTxnState.code()])
        );
        // The write failed: as before, and the client's retry goes on.
        txns.abort_pending(&adding);
        assert_eq!(txns.get("a").unwrap().pending, None);
        assert_eq!(state(&txns, "a"), TxnState::Empty);
        let Step::Write(again) = txns
            .add_partitions("a", p, e, &[tp("t", 0)], NOW + 1)
            .unwrap()
        else {
            panic!()
        };
        // A stale transition neither completes nor aborts the new one.
        assert_eq!(txns.complete(&adding), Err(E::NotCoordinator));
        txns.abort_pending(&adding);
        assert!(txns.get("a").unwrap().pending.is_some());
        written(&mut txns, again);
        assert_eq!(state(&txns, "a"), TxnState::Ongoing);
        assert_eq!(txns.get("a").unwrap().start_ms, NOW + 1);
        assert_eq!(
            txns.verify_partitions("a", p, e, &[tp("t", 0), tp("t", 1)]),
            Ok(vec![0, E::InvalidTxnState.code()])
        );
        // Completing twice is refused the second time.
        let pending = txns.end_txn("a", p, e, false, NOW).unwrap();
        let Step::Write(t) = pending else { panic!() };
        txns.complete(&t).unwrap();
        assert_eq!(txns.complete(&t), Err(E::NotCoordinator));
    }

    #[test]
    fn a_failed_first_write_forgets_the_id() {
        let mut txns = Transactions::new(config());
        let Ok(Init::Write(first)) = txns.init_producer_id("a", TIMEOUT, None, NOW, pid(7)) else {
            panic!()
        };
        assert_eq!(
            first
                .value()
                .map(|v| records::decode_value(&v).unwrap().producer_id),
            Some(7)
        );
        assert_eq!(txns.get("a").unwrap().producer_epoch, NO_PRODUCER_EPOCH);
        // A request for the id meanwhile waits.
        assert_eq!(
            txns.init_producer_id("a", TIMEOUT, None, NOW, pid(8)),
            Err(E::ConcurrentTransactions)
        );
        txns.abort_pending(&first);
        assert!(txns.get("a").is_none());
        assert_eq!(init(&mut txns, "a", None, 8), (8, 0));
    }

    #[test]
    fn kip_360_expected_producer_and_retries() {
        let mut txns = Transactions::new(config());
        let (p, e) = init(&mut txns, "a", None, 1);
        // The current producer recovering: the next epoch, the old one kept.
        assert_eq!(init(&mut txns, "a", Some((p, e)), 9), (p, e + 1));
        assert_eq!(txns.get("a").unwrap().last_producer_epoch, e);
        // Its retry (the answer was lost) gets the same answer, no bump.
        assert_eq!(init(&mut txns, "a", Some((p, e)), 9), (p, e + 1));
        // An epoch that is neither: fenced.
        let fenced = txns.init_producer_id("a", TIMEOUT, Some((p, e + 5)), NOW, no_pid);
        assert_eq!(fenced, Err(E::ProducerFenced));
        // Another producer id: fenced.
        let fenced = txns.init_producer_id("a", TIMEOUT, Some((p + 1, e)), NOW, no_pid);
        assert_eq!(fenced, Err(E::ProducerFenced));
        // A producer starting afresh forgets the last epoch: the old
        // producer's retry is now fenced.
        assert_eq!(init(&mut txns, "a", None, 9), (p, e + 2));
        assert_eq!(
            txns.get("a").unwrap().last_producer_epoch,
            NO_PRODUCER_EPOCH
        );
        let fenced = txns.init_producer_id("a", TIMEOUT, Some((p, e)), NOW, no_pid);
        assert_eq!(fenced, Err(E::ProducerFenced));
        // A new id with an expected producer (recovering from
        // UNKNOWN_PRODUCER_ID after the id expired): a fresh producer.
        assert_eq!(init(&mut txns, "b", Some((55, 3)), 2), (2, 0));
    }

    #[test]
    fn spent_epochs_move_to_a_new_producer_id() {
        let mut txns = Transactions::new(config());
        txns.load("a", &loaded(TxnState::CompleteCommit, 5, i16::MAX - 2))
            .unwrap();
        // The last epoch a client may have.
        assert_eq!(init(&mut txns, "a", None, 99), (5, i16::MAX - 1));
        // Then a new producer id at epoch 0.
        assert_eq!(init(&mut txns, "a", None, 6), (6, 0));
        let meta = txns.get("a").unwrap();
        assert_eq!(meta.last_producer_id, 5);
        assert_eq!(meta.last_producer_epoch, NO_PRODUCER_EPOCH);

        // With KIP-360: the old epoch is remembered, and the retry of the
        // old producer (old id, spent epoch) gets the same answer.
        txns.load("b", &loaded(TxnState::Empty, 10, i16::MAX - 1))
            .unwrap();
        assert_eq!(init(&mut txns, "b", Some((10, i16::MAX - 1)), 11), (11, 0));
        let meta = txns.get("b").unwrap();
        assert_eq!(
            (meta.last_producer_id, meta.last_producer_epoch),
            (10, i16::MAX - 1)
        );
        assert_eq!(init(&mut txns, "b", Some((10, i16::MAX - 1)), 99), (11, 0));
        // Once the new producer moves on, the old one is fenced.
        assert_eq!(init(&mut txns, "b", Some((11, 0)), 99), (11, 1));
        let fenced = txns.init_producer_id("b", TIMEOUT, Some((10, i16::MAX - 1)), NOW, no_pid);
        assert_eq!(fenced, Err(E::ProducerFenced));

        // A fence at the last epoch takes i16::MAX, which no client gets:
        // the next InitProducerId moves to a new producer id.
        txns.load("c", &loaded(TxnState::Ongoing, 20, i16::MAX - 1))
            .unwrap();
        let Ok(Init::Fence(fence)) = txns.init_producer_id("c", TIMEOUT, None, NOW, no_pid) else {
            panic!()
        };
        assert_eq!(fence.to.producer_epoch, i16::MAX);
        written(&mut txns, fence);
        finish(&mut txns, "c");
        // Nor can a transaction be opened with it.
        assert_eq!(
            txns.add_partitions("c", 20, i16::MAX, &[tp("t", 0)], NOW),
            Err(E::ProducerFenced)
        );
        assert_eq!(init(&mut txns, "c", None, 21), (21, 0));
        // An Ongoing record at i16::MAX could not be fenced: refused.
        assert!(txns
            .load("d", &loaded(TxnState::Ongoing, 30, i16::MAX))
            .is_err());
    }

    /// The markers of a prepared transaction are written, and so is its
    /// completion.
    fn finish(txns: &mut Transactions, id: &str) {
        let meta = txns.get(id).unwrap();
        let (p, e) = (meta.producer_id, meta.producer_epoch);
        let done = txns.markers_written(id, p, e, NOW).unwrap();
        written(txns, done);
    }

    #[test]
    fn init_fences_an_open_transaction() {
        let mut txns = Transactions::new(config());
        let (p, e) = init(&mut txns, "a", None, 1);
        add(&mut txns, "a", (p, e), &[tp("t", 0), tp("u", 3)]);
        let Ok(Init::Fence(fence)) = txns.init_producer_id("a", TIMEOUT, None, NOW + 5, no_pid)
        else {
            panic!()
        };
        assert_eq!(fence.from, TxnState::Ongoing);
        assert_eq!(fence.to.state, TxnState::PrepareAbort);
        assert_eq!(fence.to.producer_epoch, e + 1);
        assert_eq!(fence.to.last_producer_epoch, NO_PRODUCER_EPOCH);
        assert_eq!(fence.to.partitions, [tp("t", 0), tp("u", 3)].into());
        assert_eq!(fence.to.last_update_ms, NOW + 5);
        assert!(fence.needs_markers());
        written(&mut txns, fence);
        // The fenced producer is told so.
        assert_eq!(
            txns.add_partitions("a", p, e, &[tp("t", 1)], NOW),
            Err(E::ProducerFenced)
        );
        assert_eq!(txns.end_txn("a", p, e, true, NOW), Err(E::ProducerFenced));
        // The new one waits for the abort's markers.
        assert_eq!(
            txns.init_producer_id("a", TIMEOUT, None, NOW, no_pid),
            Err(E::ConcurrentTransactions)
        );
        let done = txns.markers_written("a", p, e + 1, NOW).unwrap();
        assert_eq!(done.to.state, TxnState::CompleteAbort);
        assert!(done.to.partitions.is_empty());
        written(&mut txns, done);
        assert_eq!(init(&mut txns, "a", None, 9), (p, e + 2));
        // A fence whose write fails leaves the transaction as it was; the
        // next fence makes the same epoch.
        add(&mut txns, "a", (p, e + 2), &[tp("t", 0)]);
        let Ok(Init::Fence(failed)) = txns.init_producer_id("a", TIMEOUT, None, NOW, no_pid) else {
            panic!()
        };
        txns.abort_pending(&failed);
        assert_eq!(state(&txns, "a"), TxnState::Ongoing);
        assert_eq!(txns.get("a").unwrap().producer_epoch, e + 2);
        let Ok(Init::Fence(again)) = txns.init_producer_id("a", TIMEOUT, None, NOW, no_pid) else {
            panic!()
        };
        assert_eq!(again, failed);
    }

    #[test]
    fn add_partitions_rules() {
        let mut txns = Transactions::new(config());
        let (p, e) = init(&mut txns, "a", None, 1);
        let add = |txns: &mut Transactions, id: &str, p: i64, e: i16| {
            txns.add_partitions(id, p, e, &[tp("t", 0)], NOW)
        };
        assert_eq!(add(&mut txns, "", p, e), Err(E::InvalidRequest));
        assert_eq!(add(&mut txns, "zz", p, e), Err(E::InvalidProducerIdMapping));
        assert_eq!(
            add(&mut txns, "a", p + 1, e),
            Err(E::InvalidProducerIdMapping)
        );
        assert_eq!(add(&mut txns, "a", p, e + 1), Err(E::ProducerFenced));
        assert_eq!(add(&mut txns, "a", p, e - 1), Err(E::ProducerFenced));
        let long = "t".repeat(i16::MAX as usize + 1);
        assert_eq!(
            txns.add_partitions("a", p, e, &[(long, 0)], NOW),
            Err(E::InvalidRequest)
        );
        // From Empty: Ongoing, started now.
        let Ok(Step::Write(t)) = add(&mut txns, "a", p, e) else {
            panic!()
        };
        assert_eq!(
            (t.from, t.to.state, t.to.start_ms),
            (TxnState::Empty, TxnState::Ongoing, NOW)
        );
        written(&mut txns, t);
        // Already there: NONE without a write.
        assert_eq!(add(&mut txns, "a", p, e), Ok(Step::Done));
        assert_eq!(txns.add_partitions("a", p, e, &[], NOW), Ok(Step::Done));
        // More: the union, the start kept.
        let Ok(Step::Write(t)) = txns.add_partitions("a", p, e, &[tp("t", 0), tp("t", 2)], NOW + 7)
        else {
            panic!()
        };
        assert_eq!(t.to.partitions, [tp("t", 0), tp("t", 2)].into());
        assert_eq!((t.to.start_ms, t.to.last_update_ms), (NOW, NOW + 7));
        written(&mut txns, t);
        // While the end is prepared: wait.
        let Ok(Step::Write(t)) = txns.end_txn("a", p, e, true, NOW) else {
            panic!()
        };
        written(&mut txns, t);
        assert_eq!(add(&mut txns, "a", p, e), Err(E::ConcurrentTransactions));
        finish(&mut txns, "a");
        // After a complete transaction: a new one, started now.
        let Ok(Step::Write(t)) = txns.add_partitions("a", p, e, &[tp("u", 1)], NOW + 9) else {
            panic!()
        };
        assert_eq!(t.from, TxnState::CompleteCommit);
        assert_eq!(t.to.start_ms, NOW + 9);
        assert_eq!(t.to.partitions, [tp("u", 1)].into());
    }

    #[test]
    fn producer_fenced_for_old_versions() {
        use TxnApi::*;
        let cases = [
            (InitProducerId, 3, E::InvalidProducerEpoch),
            (InitProducerId, 4, E::ProducerFenced),
            (AddPartitionsToTxn, 1, E::InvalidProducerEpoch),
            (AddPartitionsToTxn, 2, E::ProducerFenced),
            (AddOffsetsToTxn, 1, E::InvalidProducerEpoch),
            (AddOffsetsToTxn, 2, E::ProducerFenced),
            (EndTxn, 1, E::InvalidProducerEpoch),
            (EndTxn, 2, E::ProducerFenced),
        ];
        for (api, version, expected) in cases {
            assert_eq!(error_for_version(api, version, E::ProducerFenced), expected);
        }
        assert_eq!(
            error_for_version(EndTxn, 0, E::ConcurrentTransactions),
            E::ConcurrentTransactions
        );
    }

    #[test]
    fn verify_rules() {
        let mut txns = Transactions::new(config());
        let (p, e) = init(&mut txns, "a", None, 1);
        let parts = [tp("t", 0), tp("t", 1)];
        assert_eq!(
            txns.verify_partitions("", p, e, &parts),
            Err(E::InvalidRequest)
        );
        assert_eq!(
            txns.verify_partitions("zz", p, e, &parts),
            Err(E::InvalidProducerIdMapping)
        );
        assert_eq!(
            txns.verify_partitions("a", p + 1, e, &parts),
            Err(E::InvalidProducerIdMapping)
        );
        assert_eq!(
            txns.verify_partitions("a", p, e + 1, &parts),
            Err(E::ProducerFenced)
        );
        let not = E::InvalidTxnState.code();
        assert_eq!(
            txns.verify_partitions("a", p, e, &parts),
            Ok(vec![not, not])
        );
        add(&mut txns, "a", (p, e), &[tp("t", 1)]);
        assert_eq!(txns.verify_partitions("a", p, e, &parts), Ok(vec![not, 0]));
        let Ok(Step::Write(t)) = txns.end_txn("a", p, e, false, NOW) else {
            panic!()
        };
        // Pending is not waited for; prepared is.
        assert_eq!(txns.verify_partitions("a", p, e, &parts), Ok(vec![not, 0]));
        written(&mut txns, t);
        assert_eq!(
            txns.verify_partitions("a", p, e, &parts),
            Err(E::ConcurrentTransactions)
        );
    }

    #[test]
    fn end_txn_rules() {
        use TxnState::*;
        let mut txns = Transactions::new(config());
        let (p, e) = init(&mut txns, "a", None, 1);
        assert_eq!(txns.end_txn("", p, e, true, NOW), Err(E::InvalidRequest));
        assert_eq!(
            txns.end_txn("zz", p, e, true, NOW),
            Err(E::InvalidProducerIdMapping)
        );
        assert_eq!(
            txns.end_txn("a", p + 1, e, true, NOW),
            Err(E::InvalidProducerIdMapping)
        );
        assert_eq!(
            txns.end_txn("a", p, e + 1, true, NOW),
            Err(E::ProducerFenced)
        );
        // No transaction.
        assert_eq!(txns.end_txn("a", p, e, true, NOW), Err(E::InvalidTxnState));
        assert_eq!(txns.end_txn("a", p, e, false, NOW), Err(E::InvalidTxnState));
        for commit in [true, false] {
            add(&mut txns, "a", (p, e), &[tp("t", 0)]);
            let Ok(Step::Write(t)) = txns.end_txn("a", p, e, commit, NOW + 3) else {
                panic!()
            };
            let (prepare, complete) = if commit {
                (PrepareCommit, CompleteCommit)
            } else {
                (PrepareAbort, CompleteAbort)
            };
            assert_eq!((t.from, t.to.state), (Ongoing, prepare));
            assert_eq!(t.to.partitions, [tp("t", 0)].into());
            assert_eq!(t.to.last_update_ms, NOW + 3);
            written(&mut txns, t);
            // Prepared: the same end waits, the other is refused.
            assert_eq!(
                txns.end_txn("a", p, e, commit, NOW),
                Err(E::ConcurrentTransactions)
            );
            assert_eq!(
                txns.end_txn("a", p, e, !commit, NOW),
                Err(E::InvalidTxnState)
            );
            let done = txns.markers_written("a", p, e, NOW).unwrap();
            assert_eq!((done.from, done.to.state), (prepare, complete));
            written(&mut txns, done);
            // Complete: the same end is a retry, the other is refused.
            assert_eq!(txns.end_txn("a", p, e, commit, NOW), Ok(Step::Done));
            assert_eq!(
                txns.end_txn("a", p, e, !commit, NOW),
                Err(E::InvalidTxnState)
            );
            assert!(txns.get("a").unwrap().partitions.is_empty());
        }
    }

    #[test]
    fn markers_written_rules() {
        let mut txns = Transactions::new(config());
        let (p, e) = init(&mut txns, "a", None, 1);
        assert_eq!(
            txns.markers_written("zz", p, e, NOW).map(|_| ()),
            Err(E::InvalidProducerIdMapping)
        );
        assert_eq!(
            txns.markers_written("a", p, e, NOW).map(|_| ()),
            Err(E::InvalidTxnState)
        );
        add(&mut txns, "a", (p, e), &[tp("t", 0)]);
        assert_eq!(
            txns.markers_written("a", p, e, NOW).map(|_| ()),
            Err(E::InvalidTxnState)
        );
        let Ok(Step::Write(t)) = txns.end_txn("a", p, e, true, NOW) else {
            panic!()
        };
        written(&mut txns, t);
        assert_eq!(
            txns.markers_written("a", p, e + 1, NOW).map(|_| ()),
            Err(E::ProducerFenced)
        );
        let done = txns.markers_written("a", p, e, NOW).unwrap();
        assert_eq!(
            txns.markers_written("a", p, e, NOW).map(|_| ()),
            Err(E::ConcurrentTransactions)
        );
        written(&mut txns, done);
        assert_eq!(
            txns.markers_written("a", p, e, NOW).map(|_| ()),
            Err(E::InvalidTxnState)
        );
    }

    #[test]
    fn timed_out_transactions_are_fenced_and_aborted() {
        let mut txns = Transactions::new(config());
        let (p, e) = init(&mut txns, "a", None, 1);
        let (q, f) = init(&mut txns, "b", None, 2);
        init(&mut txns, "c", None, 3);
        add(&mut txns, "a", (p, e), &[tp("t", 0)]);
        add(&mut txns, "b", (q, f), &[tp("t", 1)]);
        let deadline = NOW + i64::from(TIMEOUT);
        // Past the timeout, not at it.
        assert!(txns.timed_out(deadline).is_empty());
        // A pending write is left alone.
        let Ok(Step::Write(pending)) = txns.add_partitions("b", q, f, &[tp("t", 9)], NOW) else {
            panic!()
        };
        let aborts = txns.timed_out(deadline + 1);
        assert_eq!(aborts.len(), 1);
        let abort = &aborts[0];
        assert_eq!(abort.transactional_id(), "a");
        assert_eq!(
            (abort.from, abort.to.state),
            (TxnState::Ongoing, TxnState::PrepareAbort)
        );
        assert_eq!(abort.to.producer_epoch, e + 1);
        // Its own abort is pending now: asked again, nothing new.
        assert!(txns.timed_out(deadline + 1).is_empty());
        txns.complete(abort).unwrap();
        txns.abort_pending(&pending);
        assert_eq!(txns.timed_out(deadline + 1).len(), 1);
        // The timed-out producer is fenced.
        assert_eq!(
            txns.add_partitions("a", p, e, &[tp("t", 0)], NOW),
            Err(E::ProducerFenced)
        );
        finish(&mut txns, "a");
        assert_eq!(state(&txns, "a"), TxnState::CompleteAbort);
    }

    #[test]
    fn idle_ids_expire() {
        use TxnState::*;
        let mut txns = Transactions::new(config());
        for (id, state) in [
            ("e", Empty),
            ("o", Ongoing),
            ("pc", PrepareCommit),
            ("pa", PrepareAbort),
            ("cc", CompleteCommit),
            ("ca", CompleteAbort),
        ] {
            txns.load(id, &loaded(state, 1, 0)).unwrap();
        }
        let last_update = NOW - 10;
        assert!(txns.expired(last_update + 99, 100).is_empty());
        let dead = txns.expired(last_update + 100, 100);
        let ids: Vec<&str> = dead.iter().map(|t| t.transactional_id()).collect();
        assert_eq!(ids, ["ca", "cc", "e"]);
        for t in &dead {
            assert_eq!(t.to.state, Dead);
            assert_eq!(t.value(), None);
            assert_eq!(t.key(), records::encode_key(t.transactional_id()));
        }
        // While the tombstone is written, the id waits.
        assert_eq!(
            txns.init_producer_id("e", TIMEOUT, None, NOW, no_pid),
            Err(E::ConcurrentTransactions)
        );
        txns.complete(&dead[0]).unwrap();
        txns.complete(&dead[2]).unwrap();
        txns.abort_pending(&dead[1]);
        assert!(txns.get("ca").is_none());
        assert!(txns.get("e").is_none());
        assert_eq!(state(&txns, "cc"), CompleteCommit);
        assert_eq!(txns.len(), 4);
    }

    #[test]
    fn load_keeps_the_last_record_and_finds_prepared_transactions() {
        use TxnState::*;
        let mut txns = Transactions::new(config());
        txns.load("a", &loaded(Empty, 1, 0)).unwrap();
        txns.load("a", &loaded(Ongoing, 1, 0)).unwrap();
        txns.load("a", &loaded(PrepareCommit, 1, 0)).unwrap();
        txns.load("b", &loaded(PrepareAbort, 2, 4)).unwrap();
        txns.load("c", &loaded(Ongoing, 3, 0)).unwrap();
        txns.load_tombstone("c");
        txns.load_tombstone("never-there");
        let prepared: Vec<(&str, TxnState)> = txns
            .prepared()
            .iter()
            .map(|m| (m.transactional_id.as_str(), m.state))
            .collect();
        assert_eq!(prepared, [("a", PrepareCommit), ("b", PrepareAbort)]);
        let a = txns.get("a").unwrap();
        assert_eq!(a.partitions, [tp("t", 0), tp("t", 1)].into());
        assert_eq!(
            (a.start_ms, a.last_update_ms, a.timeout_ms),
            (NOW - 20, NOW - 10, TIMEOUT)
        );
        assert_eq!(a.last_producer_epoch, NO_PRODUCER_EPOCH);
        finish(&mut txns, "b");
        assert_eq!(state(&txns, "b"), CompleteAbort);
        assert!(txns.get("c").is_none());

        // Refused records leave what was there.
        for bad in [
            TxnValue {
                transaction_status: Dead.id(),
                ..loaded(Empty, 1, 0)
            },
            TxnValue {
                transaction_status: PrepareEpochFence.id(),
                ..loaded(Empty, 1, 0)
            },
            TxnValue {
                transaction_status: 9,
                ..loaded(Empty, 1, 0)
            },
            loaded(Empty, -1, 0),
            loaded(Empty, 1, -1),
        ] {
            assert!(txns.load("a", &bad).is_err());
        }
        assert!(txns.load("", &loaded(Empty, 1, 0)).is_err());
        assert_eq!(state(&txns, "a"), PrepareCommit);

        // Partitions only where the state holds them; a v1 record's
        // previous producer id is the last producer id.
        let mut empty = loaded(Empty, 1, 0);
        empty.transaction_partitions = loaded(Ongoing, 1, 0).transaction_partitions;
        empty.previous_producer_id = 77;
        txns.load("d", &empty).unwrap();
        assert!(txns.get("d").unwrap().partitions.is_empty());
        assert_eq!(txns.get("d").unwrap().last_producer_id, 77);
    }

    #[test]
    fn written_records_load_back_to_the_same_transactions() {
        let mut txns = Transactions::new(config());
        let mut log: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut write = |txns: &mut Transactions, t: Transition| {
            log.push((t.key(), t.value()));
            txns.complete(&t).unwrap();
        };
        let Ok(Init::Write(t)) = txns.init_producer_id("a", TIMEOUT, None, NOW, pid(1)) else {
            panic!()
        };
        write(&mut txns, t);
        let Ok(Init::Write(t)) = txns.init_producer_id("b", TIMEOUT, None, NOW, pid(2)) else {
            panic!()
        };
        write(&mut txns, t);
        let Ok(Step::Write(t)) =
            txns.add_partitions("a", 1, 0, &[tp("x", 2), tp("t", 0), tp("x", 1)], NOW + 1)
        else {
            panic!()
        };
        write(&mut txns, t);
        let Ok(Step::Write(t)) = txns.add_partitions("b", 2, 0, &[tp("t", 0)], NOW + 1) else {
            panic!()
        };
        write(&mut txns, t);
        let Ok(Step::Write(t)) = txns.end_txn("b", 2, 0, true, NOW + 2) else {
            panic!()
        };
        write(&mut txns, t);

        let mut reloaded = Transactions::new(config());
        for (key, value) in &log {
            let id = records::decode_key(key).unwrap();
            match value {
                Some(value) => reloaded
                    .load(&id, &records::decode_value(value).unwrap())
                    .unwrap(),
                None => reloaded.load_tombstone(&id),
            }
        }
        for id in ["a", "b"] {
            let (before, after) = (txns.get(id).unwrap(), reloaded.get(id).unwrap());
            // Version 0 records keep no last producer id or epoch.
            let forget = |m: &TxnMetadata| TxnMetadata {
                last_producer_id: NO_PRODUCER_ID,
                last_producer_epoch: NO_PRODUCER_EPOCH,
                ..m.clone()
            };
            assert_eq!(forget(before), forget(after));
        }
        assert_eq!(reloaded.prepared().len(), 1);
    }

    #[test]
    fn list_filters() {
        use TxnState::*;
        let mut txns = Transactions::new(config());
        txns.load("a", &loaded(Empty, 1, 0)).unwrap();
        txns.load("b", &loaded(Ongoing, 2, 0)).unwrap();
        txns.load("c", &loaded(CompleteAbort, 3, 0)).unwrap();
        let ids = |filter: ListFilter, now: i64| -> Vec<String> {
            txns.list(&filter, now)
                .iter()
                .map(|m| m.transactional_id.clone())
                .collect()
        };
        assert_eq!(ids(ListFilter::default(), NOW), ["a", "b", "c"]);
        let states = ListFilter {
            states: vec![Ongoing, CompleteAbort],
            ..ListFilter::default()
        };
        assert_eq!(ids(states, NOW), ["b", "c"]);
        let producers = ListFilter {
            producer_ids: vec![1, 3, 9],
            ..ListFilter::default()
        };
        assert_eq!(ids(producers, NOW), ["a", "c"]);
        // Running longer than 20 ms: started at NOW - 20, so not at NOW;
        // Empty (start -1) always, as in Kafka.
        let long = |duration_ms| ListFilter {
            duration_ms,
            ..ListFilter::default()
        };
        assert_eq!(ids(long(20), NOW), ["a"]);
        assert_eq!(ids(long(20), NOW + 1), ["a", "b", "c"]);
    }

    /// A small deterministic generator (xorshift64*), so that a failing
    /// sequence replays from its seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// Random operations, writes completed or failed at random, time
    /// moving on: the invariants hold after every step, and the records
    /// written always load back to the transactions in memory.
    #[test]
    fn random_operations_keep_the_invariants() {
        let ids = ["a", "b", "c", "d"];
        // Every state a write can reach, over all seeds: the sequences go
        // everywhere, not round one corner.
        let mut reached: BTreeSet<TxnState> = BTreeSet::new();
        let mut rotations = 0;
        for seed in 1..=200u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut txns = Transactions::new(TxnConfig {
                transaction_max_timeout_ms: 1_000,
                transactional_ids_max: 3,
            });
            let mut next_pid = 1_000i64;
            let mut now = 0i64;
            let mut pending: Vec<Transition> = Vec::new();
            let mut log: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
            // The highest epoch seen for each producer id.
            let mut epochs: BTreeMap<i64, i16> = BTreeMap::new();
            // Start some ids near the end of their epochs.
            if rng.chance(50) {
                let t = loaded(TxnState::CompleteCommit, 1, i16::MAX - 3);
                log.push((records::encode_key("a"), Some(records::encode_value(&t, 0))));
                txns.load("a", &t).unwrap();
            }
            for step in 0..300 {
                now += rng.below(400) as i64;
                let id = ids[rng.below(ids.len() as u64) as usize];
                // Mostly the producer's own id and epoch; sometimes a stale
                // or wrong one.
                let (mut p, mut e) = txns
                    .get(id)
                    .map(|m| (m.producer_id, m.producer_epoch))
                    .unwrap_or((-1, -1));
                if rng.chance(10) {
                    e = e.saturating_sub(rng.below(2) as i16);
                }
                if rng.chance(5) {
                    p += 1;
                }
                let parts: Vec<(String, i32)> = (0..rng.below(3))
                    .map(|_| tp(["t", "u"][rng.below(2) as usize], rng.below(3) as i32))
                    .collect();
                let mut new_pid = || {
                    next_pid += 1;
                    Ok(next_pid)
                };
                match rng.below(10) {
                    0 | 1 => {
                        let expected = rng.chance(30).then_some((p, e));
                        let timeout = [0, 500, 1_000, 2_000][rng.below(4) as usize];
                        match txns.init_producer_id(id, timeout, expected, now, &mut new_pid) {
                            Ok(Init::Write(t) | Init::Fence(t)) => pending.push(t),
                            Err(_) => {}
                        }
                    }
                    2 | 3 => {
                        if let Ok(Step::Write(t)) = txns.add_partitions(id, p, e, &parts, now) {
                            pending.push(t);
                        }
                    }
                    4 => {
                        if let Ok(Step::Write(t)) = txns.end_txn(id, p, e, rng.chance(50), now) {
                            pending.push(t);
                        }
                    }
                    5 => {
                        if let Ok(t) = txns.markers_written(id, p, e, now) {
                            pending.push(t);
                        }
                    }
                    6 => {
                        let _ = txns.verify_partitions(id, p, e, &parts);
                    }
                    7 => pending.extend(txns.timed_out(now)),
                    8 => pending.extend(txns.expired(now, 2_000)),
                    _ => {}
                }
                // Settle some pending writes, in any order.
                while !pending.is_empty() && rng.chance(60) {
                    let t = pending.swap_remove(rng.below(pending.len() as u64) as usize);
                    if rng.chance(85) {
                        reached.insert(t.to.state);
                        // A new producer id for an id that had one.
                        if t.to.state == TxnState::Empty
                            && t.to.producer_epoch == 0
                            && t.to.last_producer_id != NO_PRODUCER_ID
                            && t.to.last_producer_id != t.to.producer_id
                        {
                            rotations += 1;
                        }
                        txns.complete(&t).unwrap();
                        log.push((t.key(), t.value()));
                    } else {
                        txns.abort_pending(&t);
                    }
                }
                check(&txns, &mut epochs, seed, step);
                if rng.chance(10) && pending.is_empty() {
                    let mut reloaded = Transactions::new(txns.config().clone());
                    for (key, value) in &log {
                        let id = records::decode_key(key).unwrap();
                        match value {
                            Some(v) => reloaded
                                .load(&id, &records::decode_value(v).unwrap())
                                .unwrap(),
                            None => reloaded.load_tombstone(&id),
                        }
                    }
                    let durable = |t: &Transactions| -> Vec<TxnValue> {
                        t.list(&ListFilter::default(), now)
                            .iter()
                            .map(|m| m.record())
                            .collect()
                    };
                    assert_eq!(
                        durable(&txns),
                        durable(&reloaded),
                        "seed {seed} step {step}"
                    );
                }
            }
        }
        let writable: BTreeSet<TxnState> = TxnState::ALL
            .into_iter()
            .filter(|s| *s != TxnState::PrepareEpochFence)
            .collect();
        assert_eq!(reached, writable);
        assert!(rotations > 0, "no producer id was spent");
    }

    fn check(txns: &Transactions, epochs: &mut BTreeMap<i64, i16>, seed: u64, step: usize) {
        let at = format!("seed {seed} step {step}");
        assert!(txns.len() <= txns.config().transactional_ids_max, "{at}");
        for meta in txns.list(&ListFilter::default(), 0) {
            assert!(
                !matches!(meta.state, TxnState::Dead | TxnState::PrepareEpochFence),
                "{at}"
            );
            assert!(
                meta.state.holds_partitions() || meta.partitions.is_empty(),
                "{at}"
            );
            if let Some(t) = &meta.pending {
                assert!(
                    t.to.state.may_follow(meta.state)
                        || t.to.state.may_follow(TxnState::PrepareEpochFence),
                    "{at}"
                );
            }
            if meta.producer_epoch != NO_PRODUCER_EPOCH {
                let seen = epochs
                    .entry(meta.producer_id)
                    .or_insert(meta.producer_epoch);
                assert!(meta.producer_epoch >= *seen, "{at}: epoch went down");
                *seen = meta.producer_epoch;
            }
        }
    }
}
