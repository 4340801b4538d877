//! The group coordinator (DESIGN.md §8): consumer groups with Kafka's
//! classic protocol, and their committed offsets, kept as records in the
//! internal topic `__consumer_offsets`.
//!
//! A group belongs to partition `abs(hashCode(group id)) % partitions` of
//! that topic (Java's `String.hashCode`, as Kafka computes it, so tools
//! that work out coordinators agree); the node leading that partition is
//! the group's coordinator. This node coordinates the groups of the
//! partitions it leads: when it becomes their leader (at start-up, when
//! the topic is created) it reads them back ([`GroupCoordinator::load`])
//! and answers COORDINATOR_LOAD_IN_PROGRESS for their groups until it has.
//! Every change a client must be able to count on — a commit, the leader's
//! assignment, a deletion — is appended to the partition and fsynced
//! (acks=all) before the answer.
//!
//! - [`state`]: one group's state machine, in memory, time passed in.
//! - [`records`]: the `__consumer_offsets` key and value formats.
//! - `load`: following the metadata image, and reading a partition back
//!   into groups.
//! - `persist`: appending changes to `__consumer_offsets` and waiting
//!   until they are durable.
//!
//! **Architecture Invariant:** the coordinator's state is a function of
//! the `__consumer_offsets` records it wrote, the clock and the member-id
//! source (both given to it: [`GroupCoordinator::with_member_ids`]): a
//! restart (or, later, another node) that loads the partitions has the
//! same groups, generations, assignments and offsets.

mod load;
mod persist;
pub mod records;
pub mod state;
mod txn;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use rill_controller::TopicId;
use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::ConsumerProtocolSubscription;
use rill_protocol::kafka_protocol::protocol::Decodable;
use rill_types::{Clock, NodeId};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::replica::ReplicaManager;
use persist::{group_write_error_code, Appended, AppendedCommit, Writes};
use records::{OffsetValue, RecordKey};
use state::{Committed, Group, GroupState, JoinAnswer, JoinRequest, Joined, SyncAnswer, Synced};
use txn::PendingTxnOffset;
pub use txn::TxnCommitter;

/// The internal topic that holds groups and their offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// How often sessions and join phases are checked. Session timeouts are
/// at least a second in practice; this is well below.
const TICK: Duration = Duration::from_millis(50);
/// Where the unique part of a new member id comes from (Kafka draws a
/// random UUID). Given to the coordinator as its clock is, so that a test
/// or a simulation can make ids that are the same on every run.
pub trait MemberIdSource: Send + Sync + std::fmt::Debug {
    fn next_id(&self) -> Uuid;
}

/// Random version-4 UUIDs, as Kafka's member ids have.
#[derive(Debug, Default)]
pub struct RandomMemberIds;

impl MemberIdSource for RandomMemberIds {
    fn next_id(&self) -> Uuid {
        Uuid::new_v4()
    }
}

/// The group coordinator's settings, with Kafka's names and defaults.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of
    /// an empty group waits for more members.
    pub initial_rebalance_delay_ms: i32,
    /// `group.min.session.timeout.ms` and `group.max.session.timeout.ms`.
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    /// `group.max.size`: members (and members being given an id) per
    /// group. Kafka's default is unbounded; ours is a bound.
    pub max_size: usize,
    /// The most groups this coordinator holds (Kafka has no bound): a
    /// JoinGroup, or an OffsetCommit with generation -1, that would create
    /// one more is answered COORDINATOR_NOT_AVAILABLE, which clients
    /// retry, until groups are deleted or expire. Groups loaded from
    /// `__consumer_offsets` are not refused, only new ones.
    pub groups_max: usize,
    /// `offsets.topic.num.partitions`, used when the topic is created.
    pub offsets_topic_partitions: i32,
    /// `offsets.topic.replication.factor`; capped at the number of brokers
    /// so that a single node can create the topic.
    pub offsets_topic_replication_factor: i16,
    /// `offsets.topic.segment.bytes`.
    pub offsets_topic_segment_bytes: i32,
    /// `offsets.retention.minutes`, in milliseconds.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`.
    pub offsets_retention_check_interval: Duration,
    /// `offset.metadata.max.bytes`: a commit's metadata string.
    pub offset_metadata_max_bytes: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            initial_rebalance_delay_ms: 3_000,
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            max_size: 1_000,
            groups_max: 100_000,
            offsets_topic_partitions: 50,
            offsets_topic_replication_factor: 3,
            offsets_topic_segment_bytes: 100 * 1024 * 1024,
            offsets_retention_ms: 7 * 24 * 60 * 60 * 1000,
            offsets_retention_check_interval: Duration::from_secs(600),
            offset_metadata_max_bytes: 4096,
        }
    }
}

/// Java's `String.hashCode` over UTF-16 code units, as Kafka hashes group ids.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

/// The `__consumer_offsets` partition of a group: Kafka's
/// `Utils.abs(groupId.hashCode) % partitions`, where `abs(MIN_VALUE)` is 0.
pub fn partition_for(group_id: &str, partitions: i32) -> i32 {
    assert!(partitions > 0);
    let hash = java_string_hash(group_id);
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions
}

/// The topics in a consumer's subscription metadata, or `None` if it is
/// not one.
pub fn subscription_topics(metadata: &[u8]) -> Option<Vec<String>> {
    let mut buf = Bytes::copy_from_slice(metadata);
    if buf.len() < 2 {
        return None;
    }
    let version = i16::from_be_bytes([buf[0], buf[1]]);
    let _ = bytes::Buf::get_i16(&mut buf);
    // A newer client's subscription reads as the newest version we know;
    // every version begins with the topics.
    let version = version.clamp(0, 3);
    let subscription = ConsumerProtocolSubscription::decode(&mut buf, version).ok()?;
    Some(
        subscription
            .topics
            .into_iter()
            .map(|t| t.as_str().to_string())
            .collect(),
    )
}

/// Where a `__consumer_offsets` partition this node leads stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    Loading,
    Loaded,
}

#[derive(Debug, Default)]
struct State {
    /// The partitions of `__consumer_offsets` this node leads.
    owned: HashMap<i32, Load>,
    /// Partitions of `__consumer_offsets` in the metadata; 0 while it does
    /// not exist.
    partition_count: i32,
    groups: HashMap<String, Group>,
    /// When a group was last refused for `groups_max` with a warning in
    /// the log: at most one a minute, however often clients retry.
    groups_max_warned_ms: Option<i64>,
    /// Every topic's id in the last image: committed offsets of a topic
    /// that is gone (or was made again) are removed, as Kafka does.
    topic_ids: HashMap<String, TopicId>,
    /// Offsets committed in transactions not yet decided, by producer id
    /// (see `txn`).
    pending_txn: HashMap<i64, Vec<PendingTxnOffset>>,
}

/// A group summary for ListGroups.
#[derive(Debug, Clone)]
pub struct ListedGroup {
    pub group_id: String,
    pub protocol_type: String,
    pub state: GroupState,
}

/// A group as DescribeGroups shows it.
#[derive(Debug, Clone, Default)]
pub struct DescribedGroup {
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<DescribedMember>,
}

#[derive(Debug, Clone)]
pub struct DescribedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// One partition's committed offset, as OffsetFetch answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

/// A commit to make: one partition's offset.
#[derive(Debug, Clone)]
pub struct OffsetCommit {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

#[derive(Debug)]
pub struct GroupCoordinator {
    pub config: GroupConfig,
    node_id: NodeId,
    clock: Arc<dyn Clock>,
    member_ids: Arc<dyn MemberIdSource>,
    /// A `std` mutex: every section under it is short and in memory,
    /// except the append of a change's records to `__consumer_offsets`
    /// (a page-cache write, no fsync), which is made under it so that
    /// records reach the log in the order the changes were decided.
    ///
    /// The group APIs that write are split the same way as Produce: the
    /// decision and the append happen when the method is called, which the
    /// connection does in request order, and only the wait for the fsync
    /// (and what follows it) is in the future they return. So the requests
    /// of one connection change groups in the order they were sent, as on
    /// Kafka's one-request-at-a-time connections, while their fsyncs
    /// overlap.
    state: Mutex<State>,
    /// Makes `__consumer_offsets` once, however many FindCoordinators
    /// find it missing at the same time.
    creating: tokio::sync::Mutex<()>,
    runtime: tokio::runtime::Handle,
}

impl GroupCoordinator {
    /// Must be called within the tokio runtime that will run its loads.
    /// Member ids are random ([`RandomMemberIds`]) unless
    /// [`GroupCoordinator::with_member_ids`] says otherwise.
    pub fn new(config: GroupConfig, node_id: NodeId, clock: Arc<dyn Clock>) -> Self {
        Self {
            config,
            node_id,
            clock,
            member_ids: Arc::new(RandomMemberIds),
            state: Mutex::new(State::default()),
            creating: tokio::sync::Mutex::new(()),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// The same coordinator, drawing new member ids from `member_ids`.
    pub fn with_member_ids(mut self, member_ids: Arc<dyn MemberIdSource>) -> Self {
        self.member_ids = member_ids;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under this lock is a bug already reported; the state is
        // still the best there is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    pub(crate) fn creating_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.creating
    }

    /// Whether a new group may be created, within `groups_max`; warns
    /// (at most once a minute) when not.
    fn may_create_group(&self, state: &mut State, group_id: &str, now: i64) -> bool {
        if state.groups.len() < self.config.groups_max {
            return true;
        }
        if state
            .groups_max_warned_ms
            .is_none_or(|warned| now - warned >= 60_000)
        {
            state.groups_max_warned_ms = Some(now);
            warn!(
                group = %group_id,
                groups = state.groups.len(),
                groups_max = self.config.groups_max,
                "too many groups: new ones are refused with COORDINATOR_NOT_AVAILABLE"
            );
        }
        false
    }

    /// Checks that this node coordinates `group_id` and has loaded it.
    fn locate(&self, state: &State, group_id: &str) -> Result<i32, ResponseError> {
        if state.partition_count <= 0 {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let partition = partition_for(group_id, state.partition_count);
        match state.owned.get(&partition) {
            None => Err(ResponseError::NotCoordinator),
            Some(Load::Loading) => Err(ResponseError::CoordinatorLoadInProgress),
            Some(Load::Loaded) => Ok(partition),
        }
    }

    // ------------------------------------------------------------------
    // The group APIs

    /// JoinGroup. The group decides now (see [`GroupCoordinator::state`]),
    /// and a decision that must be written first (a static member
    /// replaced in a stable group) is appended now; the future is the
    /// wait for the join phase's end, or for that write to be durable.
    pub fn join(
        &self,
        replicas: &ReplicaManager,
        group_id: &str,
        request: JoinRequest,
    ) -> impl Future<Output = JoinAnswer> + Send + 'static {
        let member_id = request.member_id.clone();
        let (joined, appended) = self.decide_join(replicas, group_id, request);
        async move {
            let error = |code: i16| JoinAnswer {
                error: code,
                generation: -1,
                member_id,
                ..JoinAnswer::default()
            };
            match joined {
                Joined::Now(answer) => answer,
                Joined::Wait(rx) => rx
                    .await
                    .unwrap_or_else(|_| error(ResponseError::NotCoordinator.code())),
                // Kafka answers a group record too large for the log with
                // UNKNOWN_SERVER_ERROR, as for SyncGroup. The replacement
                // stays in memory (Kafka reverts it): the member's retry
                // replaces it again, and the next write of the group
                // records whichever id is current.
                Joined::Persist(answer) => {
                    match Self::durable(appended.expect("appended with the decision")).await {
                        Ok(_) => answer,
                        Err(code) => error(group_write_error_code(code)),
                    }
                }
            }
        }
    }

    /// The group's decision on a JoinGroup and, for [`Joined::Persist`],
    /// the append of the group's metadata made under the same lock.
    fn decide_join(
        &self,
        replicas: &ReplicaManager,
        group_id: &str,
        request: JoinRequest,
    ) -> (Joined, Option<Appended>) {
        let error = |kind: ResponseError| {
            let answer = JoinAnswer {
                error: kind.code(),
                generation: -1,
                member_id: request.member_id.clone(),
                ..JoinAnswer::default()
            };
            (Joined::Now(answer), None)
        };
        if group_id.is_empty() {
            return error(ResponseError::InvalidGroupId);
        }
        if request.session_timeout_ms < self.config.min_session_timeout_ms
            || request.session_timeout_ms > self.config.max_session_timeout_ms
        {
            return error(ResponseError::InvalidSessionTimeout);
        }
        let mut state = self.lock();
        let partition = match self.locate(&state, group_id) {
            Ok(partition) => partition,
            Err(kind) => return error(kind),
        };
        let now = self.now();
        if !state.groups.contains_key(group_id)
            && request.member_id.is_empty()
            && !self.may_create_group(&mut state, group_id, now)
        {
            return error(ResponseError::CoordinatorNotAvailable);
        }
        let group = match state.groups.get_mut(group_id) {
            Some(group) => group,
            None if request.member_id.is_empty() => state
                .groups
                .entry(group_id.to_string())
                .or_insert_with(|| Group::new(group_id.to_string(), &self.config, now)),
            None => return error(ResponseError::UnknownMemberId),
        };
        let joined = group.join(&self.config, request, now, self.member_ids.next_id());
        self.after_change(replicas, partition, group);
        let appended = match &joined {
            Joined::Persist(_) => {
                let writes = vec![(
                    records::encode_key(&RecordKey::Group {
                        group: group_id.to_string(),
                    }),
                    Some(records::encode_group(&group.value())),
                )];
                Some(self.append(replicas, partition, &writes))
            }
            Joined::Now(_) | Joined::Wait(_) => None,
        };
        (joined, appended)
    }

    /// SyncGroup. The group decides now and, for the leader's assignment,
    /// appends it now; the future waits until it is durable, hands it out
    /// and answers.
    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        self: &Arc<Self>,
        replicas: &ReplicaManager,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> impl Future<Output = SyncAnswer> + Send + 'static {
        let error = |kind: ResponseError| SyncAnswer {
            error: kind.code(),
            ..SyncAnswer::default()
        };
        let decided = {
            let mut state = self.lock();
            match self.locate(&state, group_id) {
                Err(kind) => Err(kind),
                Ok(partition) => match state.groups.get_mut(group_id) {
                    None => Err(ResponseError::UnknownMemberId),
                    Some(group) => {
                        let now = self.now();
                        let synced = group.sync(
                            member_id,
                            group_instance_id,
                            generation,
                            protocol_type,
                            protocol,
                            assignments,
                            now,
                        );
                        self.after_change(replicas, partition, group);
                        let appended = match &synced {
                            Synced::Persist { value, .. } => {
                                let writes = vec![(
                                    records::encode_key(&RecordKey::Group {
                                        group: group_id.to_string(),
                                    }),
                                    Some(records::encode_group(value)),
                                )];
                                Some(self.append(replicas, partition, &writes))
                            }
                            _ => None,
                        };
                        Ok((synced, appended))
                    }
                },
            }
        };
        let coordinator = Arc::clone(self);
        let group_id = group_id.to_string();
        async move {
            let (synced, appended) = match decided {
                Ok(decided) => decided,
                Err(kind) => return error(kind),
            };
            match synced {
                Synced::Now(answer) => answer,
                Synced::Wait(rx) => rx
                    .await
                    .unwrap_or_else(|_| error(ResponseError::NotCoordinator)),
                Synced::Persist {
                    generation,
                    assignments,
                    wait,
                    ..
                } => {
                    // Kafka answers a group record too large for the log
                    // with UNKNOWN_SERVER_ERROR (INVALID_COMMIT_OFFSET_SIZE
                    // is for commits).
                    let appended = appended.expect("appended above");
                    let complete = |group: &mut Group, written: Result<i64, i16>, now| {
                        let written = written.map(|_| ()).map_err(group_write_error_code);
                        group.complete_sync(generation, assignments, written, now);
                    };
                    let _ = coordinator
                        .apply_when_durable(group_id, appended, complete)
                        .await;
                    wait.await
                        .unwrap_or_else(|_| error(ResponseError::NotCoordinator))
                }
            }
        }
    }

    pub fn heartbeat(
        &self,
        replicas: &ReplicaManager,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ResponseError> {
        let mut state = self.lock();
        let partition = self.locate(&state, group_id)?;
        let Some(group) = state.groups.get_mut(group_id) else {
            return Err(ResponseError::UnknownMemberId);
        };
        let outcome = group.heartbeat(member_id, group_instance_id, generation, self.now());
        self.after_change(replicas, partition, group);
        outcome
    }

    /// LeaveGroup: each member's outcome, in request order.
    pub fn leave(
        &self,
        replicas: &ReplicaManager,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<Result<(), ResponseError>>, ResponseError> {
        let mut state = self.lock();
        let partition = self.locate(&state, group_id)?;
        let Some(group) = state.groups.get_mut(group_id) else {
            return Ok(members
                .iter()
                .map(|_| Err(ResponseError::UnknownMemberId))
                .collect());
        };
        let now = self.now();
        let outcomes = members
            .iter()
            .map(|(member_id, instance)| group.leave(member_id, instance.as_deref(), now))
            .collect();
        self.after_change(replicas, partition, group);
        Ok(outcomes)
    }

    /// OffsetCommit of partitions the handler has already checked (they
    /// exist; metadata within bounds). The commit is checked and appended
    /// now, so that of two commits of a partition the one made later has
    /// the later record, which wins ([`Group::apply_commit`]); the future
    /// waits until it is durable and then applies it. One error for all
    /// the partitions, or none.
    #[allow(clippy::too_many_arguments)]
    pub fn commit(
        self: &Arc<Self>,
        replicas: &ReplicaManager,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation: i32,
        commits: Vec<OffsetCommit>,
    ) -> impl Future<Output = Result<(), i16>> + Send + 'static {
        let appended = self.append_commit(
            replicas,
            group_id,
            member_id,
            group_instance_id,
            generation,
            commits,
        );
        let coordinator = Arc::clone(self);
        let group_id = group_id.to_string();
        async move {
            let Some((appended, values)) = appended? else {
                return Ok(());
            };
            let apply = |group: &mut Group, written: Result<i64, i16>, _now| {
                let Ok(base_offset) = written else { return };
                for (i, (topic, partition, value)) in values.into_iter().enumerate() {
                    group.apply_commit(
                        topic,
                        partition,
                        Committed {
                            value,
                            record_offset: base_offset + i as i64,
                        },
                    );
                }
            };
            coordinator
                .apply_when_durable(group_id, appended, apply)
                .await
                .map(|_| ())
        }
    }

    /// The ordered part of [`GroupCoordinator::commit`]: the checks and
    /// the append. `None` when there is nothing to commit.
    fn append_commit(
        &self,
        replicas: &ReplicaManager,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation: i32,
        commits: Vec<OffsetCommit>,
    ) -> Result<Option<AppendedCommit>, i16> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId.code());
        }
        if commits.is_empty() {
            return Ok(None);
        }
        let now = self.now();
        let mut state = self.lock();
        let partition = self.locate(&state, group_id).map_err(|k| k.code())?;
        if !state.groups.contains_key(group_id)
            && generation < 0
            && !self.may_create_group(&mut state, group_id, now)
        {
            return Err(ResponseError::CoordinatorNotAvailable.code());
        }
        let group = match state.groups.get_mut(group_id) {
            Some(group) => group,
            None if generation < 0 => state
                .groups
                .entry(group_id.to_string())
                .or_insert_with(|| Group::new(group_id.to_string(), &self.config, now)),
            None => return Err(ResponseError::IllegalGeneration.code()),
        };
        let checked = group.check_commit(member_id, group_instance_id, generation, now);
        self.after_change(replicas, partition, group);
        checked.map_err(|k| k.code())?;
        let values: Vec<(String, i32, OffsetValue)> = commits
            .into_iter()
            .map(|c| {
                (
                    c.topic,
                    c.partition,
                    OffsetValue {
                        offset: c.offset,
                        leader_epoch: c.leader_epoch,
                        metadata: c.metadata,
                        commit_timestamp: now,
                    },
                )
            })
            .collect();
        let writes = values
            .iter()
            .map(|(topic, partition, value)| {
                (
                    records::encode_key(&RecordKey::Offset {
                        group: group_id.to_string(),
                        topic: topic.clone(),
                        partition: *partition,
                    }),
                    Some(records::encode_offset(value)),
                )
            })
            .collect();
        Ok(Some((self.append(replicas, partition, &writes), values)))
    }

    /// OffsetFetch for one group: the committed offsets of `partitions`
    /// (all the group has, when `None`).
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[(String, Vec<i32>)]>,
    ) -> Result<BTreeMap<(String, i32), Option<FetchedOffset>>, ResponseError> {
        let state = self.lock();
        self.locate(&state, group_id)?;
        let group = state.groups.get(group_id);
        let fetched = |tp: &(String, i32)| {
            group
                .and_then(|g| g.offsets.get(tp))
                .map(|c| FetchedOffset {
                    offset: c.value.offset,
                    leader_epoch: c.value.leader_epoch,
                    metadata: c.value.metadata.clone(),
                })
        };
        Ok(match partitions {
            Some(partitions) => partitions
                .iter()
                .flat_map(|(topic, indexes)| indexes.iter().map(move |i| (topic.clone(), *i)))
                .map(|tp| {
                    let offset = fetched(&tp);
                    (tp, offset)
                })
                .collect(),
            None => group
                .map(|g| {
                    g.offsets
                        .keys()
                        .map(|tp| (tp.clone(), fetched(tp)))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// The partitions of a group with offsets pending in an open
    /// transaction: OffsetFetch with `require_stable` answers them
    /// UNSTABLE_OFFSET_COMMIT.
    pub fn unstable_offsets(&self, group_id: &str) -> HashSet<(String, i32)> {
        let state = self.lock();
        state
            .pending_txn
            .values()
            .flatten()
            .filter(|p| p.group == group_id)
            .map(|p| (p.topic.clone(), p.partition))
            .collect()
    }

    /// Every committed offset of the groups this node has loaded, as
    /// (group, topic, partition, offset); read-only, for the metrics'
    /// consumer lag at scrape time.
    pub fn committed_offsets(&self) -> Vec<(String, String, i32, i64)> {
        let state = self.lock();
        state
            .groups
            .values()
            .flat_map(|group| {
                group.offsets.iter().map(|((topic, partition), committed)| {
                    (
                        group.id.clone(),
                        topic.clone(),
                        *partition,
                        committed.value.offset,
                    )
                })
            })
            .collect()
    }

    pub fn describe(
        &self,
        replicas: &ReplicaManager,
        group_id: &str,
    ) -> Result<Option<DescribedGroup>, ResponseError> {
        let mut state = self.lock();
        let partition = self.locate(&state, group_id)?;
        let Some(group) = state.groups.get_mut(group_id) else {
            return Ok(None);
        };
        self.catch_up(replicas, partition, group);
        let stable = group.state == GroupState::Stable;
        Ok(Some(DescribedGroup {
            state: group.state.name().to_string(),
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            protocol: if stable {
                group.protocol.clone().unwrap_or_default()
            } else {
                String::new()
            },
            members: group
                .described_members()
                .into_iter()
                .map(|(m, metadata, assignment)| DescribedMember {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata,
                    assignment,
                })
                .collect(),
        }))
    }

    /// Every group this node coordinates; COORDINATOR_LOAD_IN_PROGRESS
    /// while a partition is still loading, as in Kafka.
    pub fn list(&self, replicas: &ReplicaManager) -> Result<Vec<ListedGroup>, ResponseError> {
        let mut state = self.lock();
        if state.owned.values().any(|l| *l == Load::Loading) {
            return Err(ResponseError::CoordinatorLoadInProgress);
        }
        let count = state.partition_count;
        if count > 0 {
            for group in state.groups.values_mut() {
                self.catch_up(replicas, partition_for(&group.id, count), group);
            }
        }
        let mut groups: Vec<ListedGroup> = state
            .groups
            .values()
            .filter(|g| g.state != GroupState::Dead)
            .map(|g| ListedGroup {
                group_id: g.id.clone(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                state: g.state,
            })
            .collect();
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        Ok(groups)
    }

    /// DeleteGroups for one group: only an empty group can go; its offsets
    /// and metadata get tombstones. Decided and appended now; the future
    /// waits until the tombstones are durable.
    pub fn delete_group(
        &self,
        replicas: &ReplicaManager,
        group_id: &str,
    ) -> impl Future<Output = Result<(), i16>> + Send + 'static {
        let appended = self.append_deletion(replicas, group_id);
        async move { Self::durable(appended).await.map(|_| ()) }
    }

    /// The ordered part of [`GroupCoordinator::delete_group`].
    fn append_deletion(&self, replicas: &ReplicaManager, group_id: &str) -> Appended {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId.code());
        }
        let mut state = self.lock();
        let partition = self.locate(&state, group_id).map_err(|k| k.code())?;
        let Some(group) = state.groups.get_mut(group_id) else {
            return Err(ResponseError::GroupIdNotFound.code());
        };
        self.catch_up(replicas, partition, group);
        match group.state {
            GroupState::Dead => return Err(ResponseError::GroupIdNotFound.code()),
            GroupState::Empty if group.is_empty() => {}
            _ => return Err(ResponseError::NonEmptyGroup.code()),
        }
        let mut writes: Writes = group
            .offsets
            .keys()
            .map(|(topic, index)| {
                (
                    records::encode_key(&RecordKey::Offset {
                        group: group_id.to_string(),
                        topic: topic.clone(),
                        partition: *index,
                    }),
                    None,
                )
            })
            .collect();
        writes.push((
            records::encode_key(&RecordKey::Group {
                group: group_id.to_string(),
            }),
            None,
        ));
        let appended = self.append(replicas, partition, &writes)?;
        group.state = GroupState::Dead;
        state.groups.remove(group_id);
        info!(group = %group_id, "group deleted");
        Ok(appended)
    }

    /// OffsetDelete: removes committed offsets the group no longer uses.
    /// Partitions of topics a member still subscribes to are refused one
    /// by one (GROUP_SUBSCRIBED_TO_TOPIC). Decided and appended now; the
    /// future waits until the tombstones are durable.
    pub fn delete_offsets(
        &self,
        replicas: &ReplicaManager,
        group_id: &str,
        partitions: &[(String, i32)],
    ) -> impl Future<Output = Result<Vec<i16>, i16>> + Send + 'static {
        let decided = self.append_offset_deletion(replicas, group_id, partitions);
        async move {
            let (appended, outcomes) = decided?;
            if let Some(appended) = appended {
                Self::durable(appended).await?;
            }
            Ok(outcomes)
        }
    }

    /// The ordered part of [`GroupCoordinator::delete_offsets`]: the
    /// append (none when no offset is removed) and each partition's code.
    fn append_offset_deletion(
        &self,
        replicas: &ReplicaManager,
        group_id: &str,
        partitions: &[(String, i32)],
    ) -> Result<(Option<Appended>, Vec<i16>), i16> {
        let mut state = self.lock();
        let partition = self.locate(&state, group_id).map_err(|k| k.code())?;
        let Some(group) = state.groups.get_mut(group_id) else {
            return Err(ResponseError::GroupIdNotFound.code());
        };
        self.catch_up(replicas, partition, group);
        let subscribed = match group.state {
            GroupState::Dead => return Err(ResponseError::GroupIdNotFound.code()),
            GroupState::Empty => HashSet::new(),
            _ => match group.subscribed_topics() {
                Some(topics) => topics,
                None => return Err(ResponseError::NonEmptyGroup.code()),
            },
        };
        let mut writes = Writes::new();
        let mut outcomes = Vec::with_capacity(partitions.len());
        for (topic, index) in partitions {
            if subscribed.contains(topic) {
                outcomes.push(ResponseError::GroupSubscribedToTopic.code());
                continue;
            }
            outcomes.push(0);
            if group.offsets.remove(&(topic.clone(), *index)).is_some() {
                writes.push((
                    records::encode_key(&RecordKey::Offset {
                        group: group_id.to_string(),
                        topic: topic.clone(),
                        partition: *index,
                    }),
                    None,
                ));
            }
        }
        let appended = if writes.is_empty() {
            None
        } else {
            Some(self.append(replicas, partition, &writes))
        };
        Ok((appended, outcomes))
    }

    // ------------------------------------------------------------------
    // Time

    /// Sessions, join phases and offset expiry, until shutdown. The
    /// coordinator's records go to `replicas`' `__consumer_offsets`
    /// partitions.
    pub async fn run(
        coordinator: Arc<Self>,
        replicas: Arc<ReplicaManager>,
        shutdown: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut expiries =
            tokio::time::interval(coordinator.config.offsets_retention_check_interval);
        expiries.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    coordinator.resign();
                    return;
                }
                _ = ticks.tick() => coordinator.tick(&replicas),
                _ = expiries.tick() => coordinator.expire_offsets(&replicas).await,
            }
        }
    }

    /// Stops coordinating (the node is shutting down): requests waiting
    /// for a rebalance are answered NOT_COORDINATOR at once, as Kafka's
    /// do when a coordinator resigns, so that their clients move on.
    fn resign(&self) {
        let mut state = self.lock();
        state.owned.clear();
        state.groups.clear();
        state.pending_txn.clear();
    }

    fn tick(&self, replicas: &ReplicaManager) {
        let mut state = self.lock();
        let now = self.now();
        let count = state.partition_count;
        if count <= 0 {
            return;
        }
        for group in state.groups.values_mut() {
            if group.needs_ticks() {
                group.tick(now);
                self.after_change(replicas, partition_for(&group.id, count), group);
            }
        }
    }

    /// Removes offsets past `offsets.retention.minutes`, and the empty
    /// groups left with none.
    pub(crate) async fn expire_offsets(&self, replicas: &ReplicaManager) {
        let mut pending = Vec::new();
        {
            let mut state = self.lock();
            let now = self.now();
            let count = state.partition_count;
            if count <= 0 {
                return;
            }
            let mut by_partition: HashMap<i32, Writes> = HashMap::new();
            let mut dead = Vec::new();
            let loaded: HashSet<i32> = state
                .owned
                .iter()
                .filter(|(_, l)| **l == Load::Loaded)
                .map(|(p, _)| *p)
                .collect();
            for group in state.groups.values_mut() {
                let partition = partition_for(&group.id, count);
                if !loaded.contains(&partition) {
                    continue;
                }
                let expired = group.expired_offsets(now, self.config.offsets_retention_ms);
                let writes = by_partition.entry(partition).or_default();
                for (topic, index) in expired {
                    group.offsets.remove(&(topic.clone(), index));
                    writes.push((
                        records::encode_key(&RecordKey::Offset {
                            group: group.id.clone(),
                            topic,
                            partition: index,
                        }),
                        None,
                    ));
                }
                if group.state == GroupState::Empty && group.is_empty() && group.offsets.is_empty()
                {
                    writes.push((
                        records::encode_key(&RecordKey::Group {
                            group: group.id.clone(),
                        }),
                        None,
                    ));
                    dead.push(group.id.clone());
                }
            }
            for id in &dead {
                state.groups.remove(id);
                debug!(group = %id, "empty group with no offsets removed");
            }
            for (partition, writes) in by_partition {
                if !writes.is_empty() {
                    info!(
                        partition,
                        records = writes.len(),
                        "expiring offsets and groups"
                    );
                    pending.push(self.append(replicas, partition, &writes));
                }
            }
        }
        for appended in pending {
            if let Err(code) = Self::durable(appended).await {
                warn!(code, "writing offset expiry tombstones failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_partitions_match_kafka() {
        // Values from Java: "".hashCode() = 0, "a".hashCode() = 97,
        // "test-group".hashCode() = 627841412.
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("test-group"), 627_841_412);
        assert_eq!(partition_for("test-group", 50), 12);
        assert_eq!(partition_for("a", 50), 47);
        // A string whose hash is i32::MIN: "polygenelubricants".
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        // Characters beyond the BMP hash as two UTF-16 units.
        assert_eq!(java_string_hash("😀"), 0xd83d * 31 + 0xde00);
    }
}
