//! One consumer group and Kafka's classic group protocol as a state
//! machine: Empty → PreparingRebalance → CompletingRebalance → Stable, and
//! Dead (Kafka's `GroupMetadata` and the group parts of its
//! `GroupCoordinator`).
//!
//! Everything here is in memory and synchronous: time comes in as `now`
//! (milliseconds from the coordinator's [`rill_types::Clock`]), the unique
//! part of a new member id as a `Uuid` the coordinator draws from its
//! member-id source (so the same calls give the same ids), and a
//! request that must wait — a JoinGroup until the rebalance completes, a
//! SyncGroup until the leader's assignment is durable — gets a channel its
//! answer will come through. Writing to `__consumer_offsets` is the
//! coordinator's job (`super`): the group only says what to write
//! ([`Group::value`], [`Group::take_persist`], [`Joined::Persist`]) and is
//! told the outcome ([`Group::complete_sync`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use rill_protocol::kafka_protocol::error::ResponseError;
use tokio::sync::oneshot;
use tracing::{debug, info};
use uuid::Uuid;

use super::records::{GroupValue, MemberValue, OffsetValue};
use super::GroupConfig;

/// The states of a classic group, with Kafka's names (DescribeGroups and
/// ListGroups send them as strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }

    /// The state a ListGroups state filter names (case-insensitive, as Kafka).
    pub fn parse(name: &str) -> Option<GroupState> {
        [
            GroupState::Empty,
            GroupState::PreparingRebalance,
            GroupState::CompletingRebalance,
            GroupState::Stable,
            GroupState::Dead,
        ]
        .into_iter()
        .find(|state| state.name().eq_ignore_ascii_case(name))
    }
}

/// The answer to a JoinGroup.
#[derive(Debug, Clone, Default)]
pub struct JoinAnswer {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Every member's metadata for the chosen protocol; for the leader only.
    pub members: Vec<JoinedMember>,
}

#[derive(Debug, Clone)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

/// The answer to a SyncGroup.
#[derive(Debug, Clone, Default)]
pub struct SyncAnswer {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

impl JoinAnswer {
    fn error(kind: ResponseError, member_id: &str) -> Self {
        Self {
            error: kind.code(),
            generation: -1,
            member_id: member_id.to_string(),
            ..Self::default()
        }
    }
}

impl SyncAnswer {
    fn error(kind: ResponseError) -> Self {
        Self {
            error: kind.code(),
            ..Self::default()
        }
    }
}

/// What a JoinGroup asks, decoded from any version.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// v4+: a new member must first be given an id and join again with it
    /// (KIP-394).
    pub require_known_member_id: bool,
}

/// How a JoinGroup goes on.
#[derive(Debug)]
pub enum Joined {
    Now(JoinAnswer),
    Wait(oneshot::Receiver<JoinAnswer>),
    /// The answer, to be given once the group's metadata ([`Group::value`])
    /// is durable: a static member was replaced in a stable group, which
    /// answers without a rebalance, and the member must not be told its
    /// new id before a restart would remember it (Kafka's
    /// `updateStaticMemberThenRebalanceOrCompleteJoin` stores the group
    /// first too).
    Persist(JoinAnswer),
}

/// How a SyncGroup goes on.
#[derive(Debug)]
pub enum Synced {
    Now(SyncAnswer),
    Wait(oneshot::Receiver<SyncAnswer>),
    /// The leader's assignment: write `value`, then call
    /// [`Group::complete_sync`]; every member's answer (the leader's too)
    /// comes through its channel.
    Persist {
        value: GroupValue,
        generation: i32,
        assignments: HashMap<String, Bytes>,
        wait: oneshot::Receiver<SyncAnswer>,
    },
}

#[derive(Debug)]
pub struct Member {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    awaiting_join: Option<oneshot::Sender<JoinAnswer>>,
    awaiting_sync: Option<oneshot::Sender<SyncAnswer>>,
    /// When the member is gone unless it heartbeats (or joins, syncs or
    /// commits) before.
    session_deadline: i64,
}

impl Member {
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }

    fn same_protocols(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }

    fn is_awaiting(&self) -> bool {
        self.awaiting_join.is_some() || self.awaiting_sync.is_some()
    }
}

/// A committed offset and where its record is in `__consumer_offsets`:
/// writes finish in any order, and the later record must win.
#[derive(Debug, Clone)]
pub struct Committed {
    pub value: OffsetValue,
    pub record_offset: i64,
}

/// The join phase's timer: when the rebalance completes even if not every
/// member has rejoined.
#[derive(Debug, Clone, Copy)]
struct JoinTimer {
    deadline: i64,
    /// The first rebalance of an empty group waits
    /// `group.initial.rebalance.delay.ms` for more members, again and
    /// again while new ones come, up to the rebalance timeout.
    initial: Option<InitialDelay>,
}

#[derive(Debug, Clone, Copy)]
struct InitialDelay {
    delay_ms: i64,
    remaining_ms: i64,
    new_member_added: bool,
}

#[derive(Debug)]
pub struct Group {
    pub id: String,
    pub state: GroupState,
    /// When the group entered its state (Kafka's `currentStateTimestamp`);
    /// an empty group's offsets expire counting from it.
    pub state_since_ms: i64,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub generation: i32,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Static members: `group.instance.id` → member id.
    instances: HashMap<String, String>,
    /// Members given an id by a first JoinGroup (KIP-394), until they join
    /// with it or their session timeout passes.
    pending: HashMap<String, i64>,
    join_timer: Option<JoinTimer>,
    pub offsets: HashMap<(String, i32), Committed>,
    /// The group's metadata changed in a way that must be written though
    /// no request waits on it (it became empty).
    persist: bool,
    /// `group.initial.rebalance.delay.ms`.
    initial_delay_ms: i64,
}

impl Group {
    pub fn new(id: String, config: &GroupConfig, now: i64) -> Self {
        Self {
            initial_delay_ms: i64::from(config.initial_rebalance_delay_ms),
            id,
            state: GroupState::Empty,
            state_since_ms: now,
            protocol_type: None,
            protocol: None,
            generation: 0,
            leader: None,
            members: BTreeMap::new(),
            instances: HashMap::new(),
            pending: HashMap::new(),
            join_timer: None,
            offsets: HashMap::new(),
            persist: false,
        }
    }

    /// A group as `__consumer_offsets` last recorded it. Its members are
    /// kept (a restart is not a rebalance) and each gets a full session
    /// timeout to be heard from again.
    pub fn restore(id: String, value: GroupValue, config: &GroupConfig, now: i64) -> Self {
        let mut group = Group::new(id, config, now);
        group.protocol_type = Some(value.protocol_type).filter(|t| !t.is_empty());
        group.generation = value.generation;
        group.protocol = value.protocol;
        group.leader = value.leader;
        if value.current_state_timestamp >= 0 {
            group.state_since_ms = value.current_state_timestamp;
        }
        for m in value.members {
            if let Some(instance) = &m.group_instance_id {
                group
                    .instances
                    .insert(instance.clone(), m.member_id.clone());
            }
            let protocols = match &group.protocol {
                Some(protocol) => vec![(protocol.clone(), m.subscription)],
                None => Vec::new(),
            };
            group.members.insert(
                m.member_id.clone(),
                Member {
                    member_id: m.member_id,
                    group_instance_id: m.group_instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    protocol_type: group.protocol_type.clone().unwrap_or_default(),
                    protocols,
                    assignment: m.assignment,
                    awaiting_join: None,
                    awaiting_sync: None,
                    session_deadline: now + i64::from(m.session_timeout_ms),
                },
            );
        }
        group.state = if group.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        if group
            .leader
            .as_ref()
            .is_some_and(|l| !group.members.contains_key(l))
        {
            group.leader = group.members.keys().next().cloned();
        }
        group
    }

    /// The group's metadata record.
    pub fn value(&self) -> GroupValue {
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            current_state_timestamp: self.state_since_ms,
            members: self
                .members
                .values()
                .map(|m| MemberValue {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: self
                        .protocol
                        .as_deref()
                        .map(|p| m.metadata(p))
                        .unwrap_or_default(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// Whether the metadata must be written now; clears the flag.
    pub fn take_persist(&mut self) -> bool {
        std::mem::take(&mut self.persist)
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty()
    }

    fn transition(&mut self, state: GroupState, now: i64) {
        debug!(group = %self.id, from = self.state.name(), to = state.name(), "group state");
        self.state = state;
        self.state_since_ms = now;
    }

    /// The longest rebalance timeout of the members: how long a rebalance
    /// waits for them all to rejoin.
    fn rebalance_timeout_ms(&self) -> i64 {
        self.members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    /// The protocols every member supports, in no particular order.
    fn common_protocols(&self) -> HashSet<&str> {
        let mut members = self.members.values();
        let Some(first) = members.next() else {
            return HashSet::new();
        };
        let mut common: HashSet<&str> = first.protocols.iter().map(|(n, _)| n.as_str()).collect();
        for member in members {
            let names: HashSet<&str> = member.protocols.iter().map(|(n, _)| n.as_str()).collect();
            common.retain(|name| names.contains(name));
        }
        common
    }

    /// Whether a member with this protocol type and these protocols could
    /// join: same type, and one protocol in common with everyone.
    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        let common = self.common_protocols();
        protocols
            .iter()
            .any(|(name, _)| common.contains(name.as_str()))
    }

    /// Kafka's `selectProtocol`: each member votes for the first protocol
    /// of its own list that every member supports; the most votes win
    /// (ties to the one the leader prefers).
    fn select_protocol(&self) -> Option<String> {
        let common = self.common_protocols();
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for member in self.members.values() {
            if let Some((name, _)) = member
                .protocols
                .iter()
                .find(|(n, _)| common.contains(n.as_str()))
            {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        let best = votes.values().copied().max()?;
        let preference = self
            .leader
            .as_ref()
            .and_then(|l| self.members.get(l))
            .or_else(|| self.members.values().next())?;
        preference
            .protocols
            .iter()
            .map(|(n, _)| n.as_str())
            .find(|n| votes.get(n) == Some(&best))
            .or_else(|| votes.iter().find(|(_, v)| **v == best).map(|(n, _)| *n))
            .map(str::to_string)
    }

    // ------------------------------------------------------------------
    // JoinGroup

    /// A JoinGroup. `new_id` is the unique part of the member id to give
    /// if this join makes a new one (`<client id>-<new_id>`, or
    /// `<group.instance.id>-<new_id>` for a static member, as Kafka).
    pub fn join(
        &mut self,
        config: &GroupConfig,
        request: JoinRequest,
        now: i64,
        new_id: Uuid,
    ) -> Joined {
        self.catch_up(now);
        if self.state == GroupState::Dead {
            return Joined::Now(JoinAnswer::error(
                ResponseError::CoordinatorNotAvailable,
                &request.member_id,
            ));
        }
        if !self.supports(&request.protocol_type, &request.protocols) {
            return Joined::Now(JoinAnswer::error(
                ResponseError::InconsistentGroupProtocol,
                &request.member_id,
            ));
        }
        if request.member_id.is_empty() {
            self.join_new_member(config, request, now, new_id)
        } else {
            self.join_known_member(request, now)
        }
    }

    fn join_new_member(
        &mut self,
        config: &GroupConfig,
        request: JoinRequest,
        now: i64,
        new_id: Uuid,
    ) -> Joined {
        if let Some(instance) = request.group_instance_id.clone() {
            if let Some(old_id) = self.instances.get(&instance).cloned() {
                return self.replace_static_member(request, &old_id, now, new_id);
            }
        }
        if self.members.len() + self.pending.len() >= config.max_size {
            return Joined::Now(JoinAnswer::error(ResponseError::GroupMaxSizeReached, ""));
        }
        let prefix = request
            .group_instance_id
            .as_deref()
            .unwrap_or(&request.client_id);
        let member_id = format!("{prefix}-{new_id}");
        if request.group_instance_id.is_none() && request.require_known_member_id {
            self.pending.insert(
                member_id.clone(),
                now + i64::from(request.session_timeout_ms),
            );
            return Joined::Now(JoinAnswer::error(
                ResponseError::MemberIdRequired,
                &member_id,
            ));
        }
        self.add_member_and_rebalance(request, member_id, now)
    }

    fn join_known_member(&mut self, request: JoinRequest, now: i64) -> Joined {
        let member_id = request.member_id.clone();
        if self.pending.remove(&member_id).is_some() {
            return self.add_member_and_rebalance(request, member_id, now);
        }
        if let Some(error) = self.check_static(&member_id, request.group_instance_id.as_deref()) {
            return Joined::Now(JoinAnswer::error(error, &member_id));
        }
        let Some(member) = self.members.get_mut(&member_id) else {
            return Joined::Now(JoinAnswer::error(
                ResponseError::UnknownMemberId,
                &member_id,
            ));
        };
        member.session_deadline = now + i64::from(request.session_timeout_ms);
        let unchanged = member.same_protocols(&request.protocols);
        match self.state {
            GroupState::PreparingRebalance => self.update_member_and_rebalance(request, now),
            GroupState::CompletingRebalance if unchanged => {
                // A retry of a join whose answer was lost: the same answer.
                Joined::Now(self.join_answer(&member_id))
            }
            GroupState::Stable if unchanged && self.leader.as_ref() != Some(&member_id) => {
                // A follower rejoining with nothing new does not disturb
                // the group.
                Joined::Now(self.join_answer(&member_id))
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.update_member_and_rebalance(request, now)
            }
            GroupState::Empty | GroupState::Dead => Joined::Now(JoinAnswer::error(
                ResponseError::UnknownMemberId,
                &member_id,
            )),
        }
    }

    /// FENCED_INSTANCE_ID when `instance` belongs to another member id;
    /// UNKNOWN_MEMBER_ID when it belongs to none while the member id is
    /// unknown too.
    fn check_static(&self, member_id: &str, instance: Option<&str>) -> Option<ResponseError> {
        let instance = instance?;
        match self.instances.get(instance) {
            Some(owner) if owner != member_id => Some(ResponseError::FencedInstanceId),
            Some(_) => None,
            None if !self.members.contains_key(member_id) => Some(ResponseError::UnknownMemberId),
            None => None,
        }
    }

    /// The current generation as a member sees it (the leader gets the
    /// members' metadata).
    fn join_answer(&self, member_id: &str) -> JoinAnswer {
        let is_leader = self.leader.as_deref() == Some(member_id);
        let protocol = self.protocol.clone().unwrap_or_default();
        JoinAnswer {
            error: 0,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if is_leader {
                self.members
                    .values()
                    .map(|m| JoinedMember {
                        member_id: m.member_id.clone(),
                        group_instance_id: m.group_instance_id.clone(),
                        metadata: m.metadata(&protocol),
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        request: JoinRequest,
        member_id: String,
        now: i64,
    ) -> Joined {
        let (tx, rx) = oneshot::channel();
        if self.members.is_empty() {
            self.protocol_type = Some(request.protocol_type.clone());
        }
        if let Some(instance) = &request.group_instance_id {
            self.instances.insert(instance.clone(), member_id.clone());
        }
        self.members.insert(
            member_id.clone(),
            Member {
                member_id: member_id.clone(),
                group_instance_id: request.group_instance_id,
                client_id: request.client_id,
                client_host: request.client_host,
                session_timeout_ms: request.session_timeout_ms,
                rebalance_timeout_ms: request.rebalance_timeout_ms,
                protocol_type: request.protocol_type,
                protocols: request.protocols,
                assignment: Bytes::new(),
                awaiting_join: Some(tx),
                awaiting_sync: None,
                session_deadline: now + i64::from(request.session_timeout_ms),
            },
        );
        if self.leader.is_none() {
            self.leader = Some(member_id.clone());
        }
        if let Some(JoinTimer {
            initial: Some(initial),
            ..
        }) = &mut self.join_timer
        {
            initial.new_member_added = true;
        }
        info!(group = %self.id, member_id, members = self.members.len(), "member joined");
        self.maybe_prepare_rebalance(now);
        Joined::Wait(rx)
    }

    fn update_member_and_rebalance(&mut self, request: JoinRequest, now: i64) -> Joined {
        let (tx, rx) = oneshot::channel();
        let Some(member) = self.members.get_mut(&request.member_id) else {
            return Joined::Now(JoinAnswer::error(
                ResponseError::UnknownMemberId,
                &request.member_id,
            ));
        };
        member.protocols = request.protocols;
        member.session_timeout_ms = request.session_timeout_ms;
        member.rebalance_timeout_ms = request.rebalance_timeout_ms;
        member.client_id = request.client_id;
        member.client_host = request.client_host;
        if let Some(old) = member.awaiting_join.replace(tx) {
            // A second join from the same member while the first waits:
            // the first is over (its client gave up on it).
            let _ = old.send(JoinAnswer::error(
                ResponseError::RebalanceInProgress,
                &request.member_id,
            ));
        }
        self.maybe_prepare_rebalance(now);
        Joined::Wait(rx)
    }

    /// A static member came back with a new member id (its client
    /// restarted): the new id takes the old one's place, and whoever still
    /// uses the old id is fenced. A stable group keeps its assignment and
    /// does not rebalance (KIP-345): its answer waits until the group's
    /// metadata with the new id is durable ([`Joined::Persist`]).
    fn replace_static_member(
        &mut self,
        request: JoinRequest,
        old_id: &str,
        now: i64,
        new_id: Uuid,
    ) -> Joined {
        let Some(mut member) = self.members.remove(old_id) else {
            return Joined::Now(JoinAnswer::error(ResponseError::UnknownMemberId, ""));
        };
        let prefix = request.group_instance_id.as_deref().unwrap_or_default();
        let new_id = format!("{prefix}-{new_id}");
        if let Some(old) = member.awaiting_join.take() {
            let _ = old.send(JoinAnswer::error(ResponseError::FencedInstanceId, old_id));
        }
        if let Some(old) = member.awaiting_sync.take() {
            let _ = old.send(SyncAnswer::error(ResponseError::FencedInstanceId));
        }
        let old_leader = self.leader.clone();
        if old_leader.as_deref() == Some(old_id) {
            self.leader = Some(new_id.clone());
        }
        member.member_id = new_id.clone();
        member.session_deadline = now + i64::from(request.session_timeout_ms);
        member.session_timeout_ms = request.session_timeout_ms;
        member.rebalance_timeout_ms = request.rebalance_timeout_ms;
        member.client_id = request.client_id;
        member.client_host = request.client_host;
        member.protocols = request.protocols;
        if let Some(instance) = &request.group_instance_id {
            self.instances.insert(instance.clone(), new_id.clone());
        }
        self.members.insert(new_id.clone(), member);
        info!(group = %self.id, old_member_id = old_id, member_id = new_id, "static member rejoined with a new id");
        // A stable group stays as it is unless the returning member's
        // protocols would change the group's choice (Kafka's rule).
        if self.state == GroupState::Stable && self.select_protocol() == self.protocol {
            // The old leader id, so that a returning leader does not
            // compute an assignment a stable group would not send out.
            let mut answer = self.join_answer(&new_id);
            answer.leader = old_leader.unwrap_or_default();
            answer.members.clear();
            return Joined::Persist(answer);
        }
        let (tx, rx) = oneshot::channel();
        self.members
            .get_mut(&new_id)
            .expect("inserted above")
            .awaiting_join = Some(tx);
        self.maybe_prepare_rebalance(now);
        Joined::Wait(rx)
    }

    fn maybe_prepare_rebalance(&mut self, now: i64) {
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty => {
                self.prepare_rebalance(now)
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Dead => {}
        }
    }

    fn prepare_rebalance(&mut self, now: i64) {
        if self.state == GroupState::CompletingRebalance {
            self.reset_assignments(ResponseError::RebalanceInProgress);
        }
        let rebalance_timeout = self.rebalance_timeout_ms();
        let delay = self.initial_delay_ms;
        self.join_timer = Some(if self.state == GroupState::Empty && delay > 0 {
            JoinTimer {
                deadline: now + delay.min(rebalance_timeout.max(1)),
                initial: Some(InitialDelay {
                    delay_ms: delay,
                    remaining_ms: (rebalance_timeout - delay).max(0),
                    new_member_added: false,
                }),
            }
        } else {
            JoinTimer {
                deadline: now + rebalance_timeout,
                initial: None,
            }
        });
        self.transition(GroupState::PreparingRebalance, now);
        info!(group = %self.id, generation = self.generation, members = self.members.len(), "preparing to rebalance");
        self.try_complete_join(now);
    }

    fn reset_assignments(&mut self, error: ResponseError) {
        for member in self.members.values_mut() {
            member.assignment = Bytes::new();
            if let Some(tx) = member.awaiting_sync.take() {
                let _ = tx.send(SyncAnswer::error(error));
            }
        }
    }

    /// Completes the join phase once every member has rejoined (not during
    /// the initial delay, which always runs its course).
    fn try_complete_join(&mut self, now: i64) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let initial = self.join_timer.is_some_and(|t| t.initial.is_some());
        let all_joined =
            self.pending.is_empty() && self.members.values().all(|m| m.awaiting_join.is_some());
        if !initial && all_joined {
            self.complete_join(now);
        }
    }

    /// Kafka's `onCompleteJoin`: members that did not rejoin are dropped
    /// (static ones stay until their session ends), the next generation
    /// starts, and everyone waiting gets its answer.
    fn complete_join(&mut self, now: i64) {
        let not_rejoined: Vec<String> = self
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none() && m.group_instance_id.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for member_id in not_rejoined {
            info!(group = %self.id, member_id, "member did not rejoin in time; removed");
            self.remove(&member_id);
        }
        if !self.members.is_empty() && self.members.values().all(|m| m.awaiting_join.is_none()) {
            // Only static members that have not rejoined: wait for them
            // (or for their sessions to end) another rebalance timeout.
            self.join_timer = Some(JoinTimer {
                deadline: now + self.rebalance_timeout_ms(),
                initial: None,
            });
            return;
        }
        if self
            .leader
            .as_ref()
            .and_then(|l| self.members.get(l))
            .is_none_or(|l| l.awaiting_join.is_none())
        {
            self.leader = self
                .members
                .values()
                .find(|m| m.awaiting_join.is_some())
                .map(|m| m.member_id.clone());
        }
        self.join_timer = None;
        self.generation += 1;
        if self.members.is_empty() {
            // The protocol type stays: an empty consumer group is still
            // listed as one.
            self.protocol = None;
            self.leader = None;
            self.transition(GroupState::Empty, now);
            self.persist = true;
            info!(group = %self.id, generation = self.generation, "group is empty");
            return;
        }
        self.protocol = self.select_protocol();
        self.transition(GroupState::CompletingRebalance, now);
        info!(
            group = %self.id,
            generation = self.generation,
            protocol = ?self.protocol,
            leader = ?self.leader,
            members = self.members.len(),
            "rebalance: join phase complete"
        );
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for member_id in ids {
            let answer = self.join_answer(&member_id);
            let member = self.members.get_mut(&member_id).expect("listed above");
            member.session_deadline = now + i64::from(member.session_timeout_ms);
            if let Some(tx) = member.awaiting_join.take() {
                let _ = tx.send(answer);
            }
        }
    }

    /// Removes a member; whatever it was waiting for is answered
    /// UNKNOWN_MEMBER_ID. The caller moves the group on.
    fn remove(&mut self, member_id: &str) {
        let Some(mut member) = self.members.remove(member_id) else {
            return;
        };
        if let Some(instance) = &member.group_instance_id {
            if self.instances.get(instance).map(String::as_str) == Some(member_id) {
                self.instances.remove(instance);
            }
        }
        if let Some(tx) = member.awaiting_join.take() {
            let _ = tx.send(JoinAnswer::error(ResponseError::UnknownMemberId, member_id));
        }
        if let Some(tx) = member.awaiting_sync.take() {
            let _ = tx.send(SyncAnswer::error(ResponseError::UnknownMemberId));
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = self
                .members
                .values()
                .find(|m| m.awaiting_join.is_some())
                .or_else(|| self.members.values().next())
                .map(|m| m.member_id.clone());
        }
    }

    fn remove_and_update(&mut self, member_id: &str, now: i64) {
        self.remove(member_id);
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => self.prepare_rebalance(now),
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    // ------------------------------------------------------------------
    // SyncGroup, Heartbeat, LeaveGroup

    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol: Option<&str>,
        assignments: Vec<(String, Bytes)>,
        now: i64,
    ) -> Synced {
        self.catch_up(now);
        let error = |kind| Synced::Now(SyncAnswer::error(kind));
        if self.state == GroupState::Dead {
            return error(ResponseError::CoordinatorNotAvailable);
        }
        if let Some(kind) = self.check_static(member_id, group_instance_id) {
            return error(kind);
        }
        if !self.members.contains_key(member_id) {
            return error(ResponseError::UnknownMemberId);
        }
        if generation != self.generation {
            return error(ResponseError::IllegalGeneration);
        }
        if protocol_type.is_some_and(|t| Some(t) != self.protocol_type.as_deref())
            || protocol.is_some_and(|p| Some(p) != self.protocol.as_deref())
        {
            return error(ResponseError::InconsistentGroupProtocol);
        }
        let is_leader = self.leader.as_deref() == Some(member_id);
        let member = self.members.get_mut(member_id).expect("checked above");
        member.session_deadline = now + i64::from(member.session_timeout_ms);
        match self.state {
            GroupState::Empty => error(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => error(ResponseError::RebalanceInProgress),
            GroupState::Stable => Synced::Now(SyncAnswer {
                error: 0,
                protocol_type: self.protocol_type.clone(),
                protocol: self.protocol.clone(),
                assignment: member.assignment.clone(),
            }),
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(old) = member.awaiting_sync.replace(tx) {
                    let _ = old.send(SyncAnswer::error(ResponseError::RebalanceInProgress));
                }
                if !is_leader {
                    return Synced::Wait(rx);
                }
                // Members the leader left out get an empty assignment;
                // names of non-members are ignored, as in Kafka.
                let mut assignments: HashMap<String, Bytes> = assignments
                    .into_iter()
                    .filter(|(id, _)| self.members.contains_key(id))
                    .collect();
                for id in self.members.keys() {
                    assignments.entry(id.clone()).or_default();
                }
                let mut value = self.value();
                for m in &mut value.members {
                    m.assignment = assignments[&m.member_id].clone();
                }
                Synced::Persist {
                    value,
                    generation: self.generation,
                    assignments,
                    wait: rx,
                }
            }
            GroupState::Dead => unreachable!("checked above"),
        }
    }

    /// The leader's assignment of `generation` was written (or not): hand
    /// it out and become stable, or start over.
    pub fn complete_sync(
        &mut self,
        generation: i32,
        assignments: HashMap<String, Bytes>,
        written: Result<(), i16>,
        now: i64,
    ) {
        if self.state != GroupState::CompletingRebalance || self.generation != generation {
            // The group moved on while the write was in flight; whoever
            // waited has been answered by that move.
            return;
        }
        match written {
            Ok(()) => {
                for (member_id, member) in &mut self.members {
                    member.assignment = assignments.get(member_id).cloned().unwrap_or_default();
                    if let Some(tx) = member.awaiting_sync.take() {
                        let _ = tx.send(SyncAnswer {
                            error: 0,
                            protocol_type: self.protocol_type.clone(),
                            protocol: self.protocol.clone(),
                            assignment: member.assignment.clone(),
                        });
                    }
                }
                self.transition(GroupState::Stable, now);
                info!(group = %self.id, generation, "group is stable");
            }
            Err(code) => {
                for member in self.members.values_mut() {
                    member.assignment = Bytes::new();
                    if let Some(tx) = member.awaiting_sync.take() {
                        let _ = tx.send(SyncAnswer {
                            error: code,
                            ..SyncAnswer::default()
                        });
                    }
                }
                self.prepare_rebalance(now);
            }
        }
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation: i32,
        now: i64,
    ) -> Result<(), ResponseError> {
        self.catch_up(now);
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if let Some(kind) = self.check_static(member_id, group_instance_id) {
            return Err(kind);
        }
        let Some(member) = self.members.get_mut(member_id) else {
            return Err(ResponseError::UnknownMemberId);
        };
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => Err(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => {
                member.session_deadline = now + i64::from(member.session_timeout_ms);
                Err(ResponseError::RebalanceInProgress)
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                member.session_deadline = now + i64::from(member.session_timeout_ms);
                Ok(())
            }
        }
    }

    /// One member of a LeaveGroup. A static member may leave by instance
    /// id alone (v3+ with an unknown member id).
    pub fn leave(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        now: i64,
    ) -> Result<(), ResponseError> {
        self.catch_up(now);
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let target = match group_instance_id {
            Some(instance) => match self.instances.get(instance) {
                Some(owner) if !member_id.is_empty() && owner != member_id => {
                    return Err(ResponseError::FencedInstanceId)
                }
                Some(owner) => owner.clone(),
                None => return Err(ResponseError::UnknownMemberId),
            },
            None => {
                if self.pending.remove(member_id).is_some() {
                    self.try_complete_join(now);
                    return Ok(());
                }
                if !self.members.contains_key(member_id) {
                    return Err(ResponseError::UnknownMemberId);
                }
                member_id.to_string()
            }
        };
        info!(group = %self.id, member_id = target, "member left");
        self.remove_and_update(&target, now);
        Ok(())
    }

    // ------------------------------------------------------------------
    // Offsets

    /// Kafka's checks before an OffsetCommit of a group member (or of a
    /// client that manages its own partitions: generation -1 on a group
    /// without members). Counts as a heartbeat.
    pub fn check_commit(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation: i32,
        now: i64,
    ) -> Result<(), ResponseError> {
        self.catch_up(now);
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if let Some(kind) = self.check_static(member_id, group_instance_id) {
            return Err(kind);
        }
        if generation < 0 && self.state == GroupState::Empty {
            return Ok(());
        }
        if self.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        let Some(member) = self.members.get_mut(member_id) else {
            return Err(ResponseError::UnknownMemberId);
        };
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        member.session_deadline = now + i64::from(member.session_timeout_ms);
        Ok(())
    }

    /// Kafka's checks of a TxnOffsetCommit's member (KIP-447): a member
    /// id it names must be in the group, a generation it names must be
    /// the group's, and a static member must own its instance id. A
    /// producer that names neither (before v3) is not checked.
    pub fn check_txn_commit(
        &self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if let Some(kind) = self.check_static(member_id, group_instance_id) {
            return Err(kind);
        }
        if !member_id.is_empty() && !self.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if generation >= 0 && generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(())
    }

    /// Records a durable commit unless a later record for the partition
    /// was applied first.
    pub fn apply_commit(&mut self, topic: String, partition: i32, committed: Committed) {
        match self.offsets.get(&(topic.clone(), partition)) {
            Some(existing) if existing.record_offset > committed.record_offset => {}
            _ => {
                self.offsets.insert((topic, partition), committed);
            }
        }
    }

    /// The topics the members of a consumer group subscribe to, from their
    /// subscriptions (Kafka's `ConsumerProtocolSubscription`).
    pub fn subscribed_topics(&self) -> Option<HashSet<String>> {
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let protocol = self.protocol.as_deref()?;
        let mut topics = HashSet::new();
        for member in self.members.values() {
            topics.extend(super::subscription_topics(&member.metadata(protocol))?);
        }
        Some(topics)
    }

    /// Offsets past `offsets.retention.minutes` (KIP-211): all of them
    /// once a consumer group has been empty that long; for a group that
    /// never used the group protocol, each offset that long after its
    /// commit.
    pub fn expired_offsets(&self, now: i64, retention_ms: i64) -> Vec<(String, i32)> {
        if self.state != GroupState::Empty {
            return Vec::new();
        }
        let group_expired = now.saturating_sub(self.state_since_ms) >= retention_ms;
        self.offsets
            .iter()
            .filter(|(_, c)| {
                if self.protocol_type.is_some() || self.generation > 0 {
                    group_expired
                } else {
                    now.saturating_sub(c.value.commit_timestamp) >= retention_ms
                }
            })
            .map(|(tp, _)| tp.clone())
            .collect()
    }

    // ------------------------------------------------------------------
    // Time

    /// Ends sessions that ran out and join phases that waited long
    /// enough.
    pub fn tick(&mut self, now: i64) {
        let expired_pending: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for member_id in expired_pending {
            debug!(group = %self.id, member_id, "pending member never joined; forgotten");
            self.pending.remove(&member_id);
            self.try_complete_join(now);
        }
        // A member waiting for a join or sync answer has a request in
        // flight and is not judged by its heartbeats.
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.is_awaiting() && m.session_deadline <= now)
            .map(|m| m.member_id.clone())
            .collect();
        for member_id in expired {
            info!(group = %self.id, member_id, "session timed out; member removed");
            self.remove_and_update(&member_id, now);
        }
        if let Some(timer) = self.join_timer {
            if self.state == GroupState::PreparingRebalance && timer.deadline <= now {
                match timer.initial {
                    Some(mut initial) if initial.new_member_added && initial.remaining_ms > 0 => {
                        let extension = initial.delay_ms.min(initial.remaining_ms);
                        initial.remaining_ms -= extension;
                        initial.new_member_added = false;
                        self.join_timer = Some(JoinTimer {
                            deadline: now + extension,
                            initial: Some(initial),
                        });
                    }
                    _ => self.complete_join(now),
                }
            }
        }
    }

    /// Kafka's timers fire at their deadlines, while the coordinator's
    /// tick comes up to one tick later. So every decision that depends on
    /// who is in the group (each request above; DeleteGroups,
    /// DescribeGroups and ListGroups in the coordinator) first ends what
    /// has run out by `now`, and sees the group as Kafka's timers would
    /// have left it. (It may set the persist flag, like a tick.)
    pub fn catch_up(&mut self, now: i64) {
        if self.needs_ticks() {
            self.tick(now);
        }
    }

    /// Whether the group has anything [`Group::tick`] could act on.
    pub fn needs_ticks(&self) -> bool {
        !self.members.is_empty() || !self.pending.is_empty() || self.join_timer.is_some()
    }

    // ------------------------------------------------------------------
    // Describe

    /// Members as DescribeGroups shows them: metadata and assignment only
    /// while the group is stable, as in Kafka.
    pub fn described_members(&self) -> Vec<(&Member, Bytes, Bytes)> {
        let stable = self.state == GroupState::Stable;
        let protocol = self.protocol.clone().unwrap_or_default();
        self.members
            .values()
            .map(|m| {
                if stable {
                    (m, m.metadata(&protocol), m.assignment.clone())
                } else {
                    (m, Bytes::new(), Bytes::new())
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: i32 = 10_000;
    const REBALANCE: i32 = 30_000;

    fn config(initial_delay_ms: i32) -> GroupConfig {
        GroupConfig {
            initial_rebalance_delay_ms: initial_delay_ms,
            max_size: 3,
            ..GroupConfig::default()
        }
    }

    fn request(member_id: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            member_id: member_id.to_string(),
            group_instance_id: None,
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: SESSION,
            rebalance_timeout_ms: REBALANCE,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(format!("{p}-meta"))))
                .collect(),
            require_known_member_id: true,
        }
    }

    thread_local! {
        static IDS_DRAWN: std::cell::Cell<u128> = const { std::cell::Cell::new(0) };
    }

    /// The tests' member-id source: 1, 2, 3, … on each test's thread, so
    /// that ids are the same on every run.
    fn next_id() -> Uuid {
        IDS_DRAWN.with(|drawn| {
            drawn.set(drawn.get() + 1);
            Uuid::from_u128(drawn.get())
        })
    }

    /// Starts [`next_id`] again from 1 (a test that checks ids calls it
    /// first: the harness may run several tests on one thread).
    fn reset_ids() {
        IDS_DRAWN.with(|drawn| drawn.set(0));
    }

    fn now(joined: Joined) -> JoinAnswer {
        match joined {
            Joined::Now(answer) => answer,
            other => panic!("expected an answer at once, got {other:?}"),
        }
    }

    fn waiting(joined: Joined) -> oneshot::Receiver<JoinAnswer> {
        match joined {
            Joined::Wait(rx) => rx,
            other => panic!("expected to wait, got {other:?}"),
        }
    }

    fn persisted(joined: Joined) -> JoinAnswer {
        match joined {
            Joined::Persist(answer) => answer,
            other => panic!("expected an answer once the group is written, got {other:?}"),
        }
    }

    /// KIP-394: the first join gets an id, the second joins with it.
    fn join_new(
        group: &mut Group,
        config: &GroupConfig,
        protocols: &[&str],
        at: i64,
    ) -> (String, oneshot::Receiver<JoinAnswer>) {
        let first = now(group.join(config, request("", protocols), at, next_id()));
        assert_eq!(first.error, ResponseError::MemberIdRequired.code());
        assert!(first.member_id.starts_with("client-"));
        let rx = waiting(group.join(config, request(&first.member_id, protocols), at, next_id()));
        (first.member_id, rx)
    }

    fn answered<T: std::fmt::Debug>(rx: &mut oneshot::Receiver<T>) -> T {
        rx.try_recv().expect("answered")
    }

    /// Two members through a whole rebalance: join, leader's sync, stable.
    fn stable_pair(group: &mut Group, config: &GroupConfig) -> (String, String) {
        let (a, mut rx_a) = join_new(group, config, &["range", "roundrobin"], 0);
        let (b, mut rx_b) = join_new(group, config, &["roundrobin", "range"], 0);
        assert!(
            rx_a.try_recv().is_err(),
            "the initial delay runs its course"
        );
        group.tick(100);
        assert!(
            rx_a.try_recv().is_err(),
            "b came during the delay: it runs again"
        );
        group.tick(200);
        let answer_a = answered(&mut rx_a);
        let answer_b = answered(&mut rx_b);
        assert_eq!(answer_a.generation, 1);
        assert_eq!(answer_a.leader, a);
        assert_eq!(
            answer_a.members.len(),
            2,
            "the leader gets everyone's metadata"
        );
        assert!(answer_b.members.is_empty());
        // One vote each; the leader's preference breaks the tie.
        assert_eq!(answer_a.protocol.as_deref(), Some("range"));
        assert_eq!(group.state, GroupState::CompletingRebalance);

        let Synced::Wait(mut sync_b) = group.sync(&b, None, 1, None, None, vec![], 210) else {
            panic!("a follower waits for the leader");
        };
        let assignments = vec![(a.clone(), Bytes::from("A")), (b.clone(), Bytes::from("B"))];
        let Synced::Persist {
            value,
            generation,
            assignments,
            wait: mut sync_a,
        } = group.sync(
            &a,
            None,
            1,
            Some("consumer"),
            Some("range"),
            assignments,
            120,
        )
        else {
            panic!("the leader's sync is written first");
        };
        assert_eq!(value.members.len(), 2);
        assert!(
            sync_b.try_recv().is_err(),
            "nothing until the write is durable"
        );
        group.complete_sync(generation, assignments, Ok(()), 230);
        assert_eq!(answered(&mut sync_a).assignment, Bytes::from("A"));
        assert_eq!(answered(&mut sync_b).assignment, Bytes::from("B"));
        assert_eq!(group.state, GroupState::Stable);
        (a, b)
    }

    #[test]
    fn a_group_forms_and_rebalances_when_a_member_leaves() {
        let config = config(100);
        let mut group = Group::new("g".into(), &config, 0);
        let (a, b) = stable_pair(&mut group, &config);
        assert_eq!(group.heartbeat(&b, None, 1, 200), Ok(()));
        assert_eq!(
            group.heartbeat(&b, None, 0, 200),
            Err(ResponseError::IllegalGeneration)
        );
        assert_eq!(
            group.heartbeat("nobody", None, 1, 200),
            Err(ResponseError::UnknownMemberId)
        );

        assert_eq!(group.leave(&b, None, 300), Ok(()));
        assert_eq!(group.state, GroupState::PreparingRebalance);
        assert_eq!(
            group.heartbeat(&a, None, 1, 310),
            Err(ResponseError::RebalanceInProgress)
        );
        assert_eq!(
            group.check_commit(&a, None, 1, 310),
            Ok(()),
            "commits still count"
        );
        let mut rx = waiting(group.join(
            &config,
            request(&a, &["range", "roundrobin"]),
            320,
            next_id(),
        ));
        let answer = answered(&mut rx);
        assert_eq!(answer.generation, 2);
        assert_eq!(answer.members.len(), 1);
        assert_eq!(group.leave(&a, None, 400), Ok(()));
        // The last member leaving a completing group empties it.
        group.tick(400);
        assert_eq!(group.state, GroupState::Empty);
        assert_eq!(group.generation, 3);
        assert!(group.take_persist(), "an emptied group is written");
        assert_eq!(group.value().members.len(), 0);
    }

    #[test]
    fn sessions_end_and_members_that_do_not_rejoin_are_dropped() {
        let config = config(100);
        let mut group = Group::new("g".into(), &config, 0);
        let (a, b) = stable_pair(&mut group, &config);
        // b keeps heartbeating, a does not.
        for t in (1_000..=10_000).step_by(1_000) {
            assert_eq!(group.heartbeat(&b, None, 1, t), Ok(()));
            group.tick(t);
        }
        group.tick(10_200);
        assert!(!group.members.contains_key(&a), "a's session ended");
        assert_eq!(group.state, GroupState::PreparingRebalance);
        assert_eq!(group.leader.as_deref(), Some(b.as_str()));
        let mut rx = waiting(group.join(
            &config,
            request(&b, &["roundrobin", "range"]),
            10_300,
            next_id(),
        ));
        let answer = answered(&mut rx);
        assert_eq!((answer.generation, answer.leader.as_str()), (2, b.as_str()));
        assert_eq!(answer.protocol.as_deref(), Some("roundrobin"));
    }

    /// Kafka's timers fire at their deadlines, while the coordinator
    /// ticks only every 50 ms: a request that comes after a deadline and
    /// before the next tick must find the deadline passed.
    #[test]
    fn requests_after_a_deadline_find_it_passed_without_a_tick() {
        let config = config(100);
        let mut group = Group::new("g".into(), &config, 0);
        let (a, b) = stable_pair(&mut group, &config);
        // a was last heard from at its sync (120), b at its own (210).
        let a_deadline = 120 + i64::from(SESSION);
        assert_eq!(group.heartbeat(&b, None, 1, a_deadline - 1), Ok(()));
        assert_eq!(
            group.heartbeat(&a, None, 1, a_deadline),
            Err(ResponseError::UnknownMemberId),
            "a's session ended at its deadline"
        );
        assert_eq!(group.state, GroupState::PreparingRebalance);
        // b is told to rejoin but never does; its heartbeats keep its
        // session alive until the join phase ends.
        let join_deadline = a_deadline + i64::from(REBALANCE);
        for t in (a_deadline..join_deadline).step_by(5_000) {
            assert_eq!(
                group.heartbeat(&b, None, 1, t),
                Err(ResponseError::RebalanceInProgress)
            );
        }
        assert_eq!(
            group.check_commit(&b, None, 1, join_deadline),
            Err(ResponseError::UnknownMemberId),
            "the join phase ended at its deadline, without b"
        );
        assert_eq!(group.state, GroupState::Empty);
        assert!(group.is_empty());
        assert!(group.take_persist(), "the emptied group is written");
    }

    #[test]
    fn rebalance_timeout_drops_members_that_never_rejoin() {
        let config = config(0);
        let mut group = Group::new("g".into(), &config, 0);
        let (a, mut rx_a) = join_new(&mut group, &config, &["range"], 0);
        assert_eq!(
            answered(&mut rx_a).generation,
            1,
            "no delay: one member completes at once"
        );
        let Synced::Persist {
            generation,
            assignments,
            ..
        } = group.sync(&a, None, 1, None, None, vec![], 10)
        else {
            panic!()
        };
        group.complete_sync(generation, assignments, Ok(()), 10);
        let (_b, mut rx_b) = join_new(&mut group, &config, &["range"], 20);
        assert_eq!(group.state, GroupState::PreparingRebalance);
        // a keeps heartbeating (told to rejoin) but never does.
        for t in (1_000..=30_000).step_by(1_000) {
            assert_eq!(
                group.heartbeat(&a, None, 1, t),
                Err(ResponseError::RebalanceInProgress)
            );
            group.tick(t);
            assert!(rx_b.try_recv().is_err());
        }
        group.tick(20 + i64::from(REBALANCE));
        let answer = answered(&mut rx_b);
        assert_eq!(answer.generation, 2);
        assert_eq!(answer.members.len(), 1, "a was dropped");
        assert!(!group.members.contains_key(&a));
    }

    #[test]
    fn initial_delay_extends_while_members_keep_coming() {
        let config = config(1_000);
        let mut group = Group::new("g".into(), &config, 0);
        let (_a, mut rx_a) = join_new(&mut group, &config, &["range"], 0);
        group.tick(900);
        let (_b, _rx_b) = join_new(&mut group, &config, &["range"], 900);
        group.tick(1_000);
        assert!(rx_a.try_recv().is_err(), "a new member extends the delay");
        group.tick(2_000);
        assert_eq!(answered(&mut rx_a).members.len(), 2);
    }

    #[test]
    fn a_known_member_rejoining_a_stable_group_changes_nothing_unless_it_leads() {
        let config = config(100);
        let mut group = Group::new("g".into(), &config, 0);
        let (a, b) = stable_pair(&mut group, &config);
        let answer = now(group.join(
            &config,
            request(&b, &["roundrobin", "range"]),
            500,
            next_id(),
        ));
        assert_eq!((answer.error, answer.generation), (0, 1));
        assert_eq!(group.state, GroupState::Stable);
        // A follower with new protocols, or the leader, starts a rebalance.
        let _rx = waiting(group.join(
            &config,
            request(&a, &["range", "roundrobin"]),
            600,
            next_id(),
        ));
        assert_eq!(group.state, GroupState::PreparingRebalance);
        assert_eq!(
            group
                .sync(&b, None, 1, None, None, vec![], 610)
                .answer_error(),
            Some(ResponseError::RebalanceInProgress.code())
        );
    }

    #[test]
    fn joins_that_cannot_be_accepted() {
        let config = config(0);
        let mut group = Group::new("g".into(), &config, 0);
        let (_a, _rx) = join_new(&mut group, &config, &["range"], 0);
        let mut other_type = request("", &["range"]);
        other_type.protocol_type = "connect".into();
        assert_eq!(
            now(group.join(&config, other_type, 1, next_id())).error,
            ResponseError::InconsistentGroupProtocol.code()
        );
        assert_eq!(
            now(group.join(&config, request("", &["sticky"]), 1, next_id())).error,
            ResponseError::InconsistentGroupProtocol.code(),
            "no protocol in common"
        );
        assert_eq!(
            now(group.join(&config, request("made-up", &["range"]), 1, next_id())).error,
            ResponseError::UnknownMemberId.code()
        );
        // max_size 3: one member and two pending fill the group.
        now(group.join(&config, request("", &["range"]), 1, next_id()));
        now(group.join(&config, request("", &["range"]), 1, next_id()));
        assert_eq!(
            now(group.join(&config, request("", &["range"]), 1, next_id())).error,
            ResponseError::GroupMaxSizeReached.code()
        );
        // Pending members that never come back are forgotten.
        group.tick(1 + i64::from(SESSION));
        assert_eq!(
            now(group.join(&config, request("", &["range"]), 20_000, next_id())).error,
            ResponseError::MemberIdRequired.code()
        );
    }

    #[test]
    fn a_static_member_returning_to_a_stable_group_keeps_its_assignment() {
        reset_ids();
        let config = config(0);
        let mut group = Group::new("g".into(), &config, 0);
        let mut static_request = request("", &["range"]);
        static_request.group_instance_id = Some("instance-1".into());
        let mut rx = waiting(group.join(&config, static_request.clone(), 0, next_id()));
        let first = answered(&mut rx);
        let old_id = first.member_id.clone();
        assert_eq!(
            old_id,
            format!("instance-1-{}", Uuid::from_u128(1)),
            "static members need no second join; ids come from the source given"
        );
        let Synced::Persist {
            generation,
            assignments,
            ..
        } = group.sync(
            &old_id,
            Some("instance-1"),
            1,
            None,
            None,
            vec![(old_id.clone(), Bytes::from("P"))],
            1,
        )
        else {
            panic!()
        };
        group.complete_sync(generation, assignments, Ok(()), 1);

        // The process restarts: same instance id, no member id.
        let answer = persisted(group.join(&config, static_request, 500, next_id()));
        assert_eq!(answer.error, 0);
        assert_eq!(answer.generation, 1, "no rebalance");
        assert_eq!(
            answer.member_id,
            format!("instance-1-{}", Uuid::from_u128(2))
        );
        assert_eq!(
            answer.leader, old_id,
            "the old leader id, so no assignment is computed"
        );
        // Written by the coordinator before it answers, not afterwards.
        assert!(!group.take_persist());
        assert_eq!(group.value().members.len(), 1);
        assert_eq!(group.value().members[0].member_id, answer.member_id);
        assert_eq!(group.state, GroupState::Stable);
        let Synced::Now(sync) = group.sync(
            &answer.member_id,
            Some("instance-1"),
            1,
            None,
            None,
            vec![],
            510,
        ) else {
            panic!()
        };
        assert_eq!(sync.assignment, Bytes::from("P"));
        // Whoever still uses the old id is fenced.
        assert_eq!(
            group.heartbeat(&old_id, Some("instance-1"), 1, 520),
            Err(ResponseError::FencedInstanceId)
        );
        assert_eq!(
            group.check_commit(&old_id, Some("instance-1"), 1, 520),
            Err(ResponseError::FencedInstanceId)
        );
        // It leaves by instance id.
        assert_eq!(group.leave("", Some("instance-1"), 600), Ok(()));
        assert!(group.members.is_empty());
    }

    #[test]
    fn commit_checks_follow_kafka() {
        let config = config(100);
        let mut group = Group::new("g".into(), &config, 0);
        assert_eq!(
            group.check_commit("", None, -1, 0),
            Ok(()),
            "a group without members takes simple commits"
        );
        let (a, _b) = stable_pair(&mut group, &config);
        assert_eq!(
            group.check_commit("", None, -1, 200),
            Err(ResponseError::UnknownMemberId)
        );
        assert_eq!(
            group.check_commit(&a, None, 7, 200),
            Err(ResponseError::IllegalGeneration)
        );
        assert_eq!(group.check_commit(&a, None, 1, 200), Ok(()));
        // Commits are applied by record offset, whatever order they finish in.
        let committed = |offset, record_offset| Committed {
            value: OffsetValue {
                offset,
                leader_epoch: -1,
                metadata: String::new(),
                commit_timestamp: 0,
            },
            record_offset,
        };
        group.apply_commit("t".into(), 0, committed(20, 8));
        group.apply_commit("t".into(), 0, committed(10, 7));
        assert_eq!(group.offsets[&("t".to_string(), 0)].value.offset, 20);
    }

    #[test]
    fn offsets_expire_only_for_groups_empty_long_enough() {
        let config = config(0);
        let mut group = Group::new("g".into(), &config, 0);
        let committed = Committed {
            value: OffsetValue {
                offset: 1,
                leader_epoch: -1,
                metadata: String::new(),
                commit_timestamp: 0,
            },
            record_offset: 0,
        };
        group.apply_commit("t".into(), 0, committed);
        assert!(group.expired_offsets(999, 1_000).is_empty());
        assert_eq!(group.expired_offsets(1_000, 1_000).len(), 1);
        let (_a, _rx) = join_new(&mut group, &config, &["range"], 1_000);
        assert!(
            group.expired_offsets(10_000, 1_000).is_empty(),
            "a group with members keeps them"
        );
    }

    #[test]
    fn restored_groups_come_back_stable_with_fresh_sessions() {
        let config = config(100);
        let mut group = Group::new("g".into(), &config, 0);
        let (a, b) = stable_pair(&mut group, &config);
        let value = group.value();
        let mut restored = Group::restore("g".into(), value, &config, 50_000);
        assert_eq!(restored.state, GroupState::Stable);
        assert_eq!(restored.generation, 1);
        assert_eq!(restored.heartbeat(&a, None, 1, 50_001), Ok(()));
        let Synced::Now(sync) = restored.sync(&b, None, 1, None, None, vec![], 50_002) else {
            panic!()
        };
        assert_eq!(sync.assignment, Bytes::from("B"));
        assert_eq!(restored.protocol.as_deref(), Some("range"));
    }

    impl Synced {
        fn answer_error(self) -> Option<i16> {
            match self {
                Synced::Now(answer) => Some(answer.error),
                _ => None,
            }
        }
    }
}
