//! Target `group_coordinator`: the classic group state machine under
//! arbitrary sequences of requests and time, and `__consumer_offsets`
//! records decoded from arbitrary bytes.

use std::collections::HashMap;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use rill_broker::group::records::{self, GroupValue, OffsetValue, RecordKey};
use rill_broker::group::state::{
    Committed, Group, GroupState, JoinAnswer, JoinRequest, Joined, SyncAnswer, Synced,
};
use rill_broker::group::GroupConfig;
use tokio::sync::oneshot::{self, error::TryRecvError};
use uuid::Uuid;

const PROTOCOLS: [&str; 3] = ["range", "roundrobin", "sticky"];
const TOPICS: [&str; 2] = ["a", "b"];

#[derive(Debug, Arbitrary)]
enum Generation {
    Current,
    Previous,
    /// A client managing its own partitions.
    None,
    Any(i32),
}

#[derive(Debug, Arbitrary)]
enum Op {
    Join {
        /// Which known member id; past them, the empty id of a new member.
        member: u8,
        instance: Option<u8>,
        /// Seconds over `group.min.session.timeout.ms`.
        session_s: u8,
        /// Tenths of a second.
        rebalance_ds: u8,
        other_protocol_type: bool,
        protocols: Vec<u8>,
        require_known_member_id: bool,
    },
    Sync {
        member: u8,
        instance: Option<u8>,
        generation: Generation,
        protocol: Option<u8>,
        assignments: Vec<(u8, u8)>,
    },
    /// The write of a leader's assignment finishes (oldest first).
    Written {
        ok: bool,
    },
    Heartbeat {
        member: u8,
        instance: Option<u8>,
        generation: Generation,
    },
    Leave {
        member: u8,
        instance: Option<u8>,
    },
    Commit {
        member: u8,
        instance: Option<u8>,
        generation: Generation,
        topic: bool,
        partition: u8,
        offset: i64,
    },
    /// Time passes (in tenths of a second) and the coordinator ticks.
    Advance {
        ds: u16,
    },
    /// The coordinator restarts: the group comes back from its record.
    Restore,
    /// Stored records, from arbitrary bytes.
    Records {
        key: Vec<u8>,
        value: Vec<u8>,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    initial_delay: bool,
    max_size: u8,
    ops: Vec<Op>,
}

/// What the driver (the coordinator's part) keeps between steps.
struct Driver {
    config: GroupConfig,
    group: Group,
    now: i64,
    /// Member ids seen in answers, old ones included.
    known: Vec<String>,
    joins: Vec<oneshot::Receiver<JoinAnswer>>,
    syncs: Vec<oneshot::Receiver<SyncAnswer>>,
    /// Leaders' assignments being written: generation and assignments.
    writes: Vec<(i32, HashMap<String, Bytes>)>,
    /// The highest `__consumer_offsets` offset of each committed partition.
    commits: HashMap<(String, i32), i64>,
    next_record_offset: i64,
    next_client: u32,
    generation: i32,
    /// The group's last record written to `__consumer_offsets`, which a
    /// restarted coordinator loads.
    stored: Option<GroupValue>,
    /// The records of leaders' assignments being written, with `writes`.
    persisting: Vec<GroupValue>,
    /// Member ids given so far: the next one's unique part is this plus
    /// one, as the coordinator's member-id source would draw it.
    ids_drawn: u128,
}

/// Runs the operations against one group, as the coordinator would (it
/// checks session timeouts before the group sees a join, and writes the
/// leader's assignment before completing the sync), checking after each
/// step:
/// - at most `group.max.size` members;
/// - a leader, when there is one, is a member; a group completing a
///   rebalance or stable has members and a leader, an empty one none;
/// - the generation never goes back;
/// - a stable group has a protocol every member supports, and every
///   member's protocol type is the group's;
/// - nobody waits for a JoinGroup answer unless the group is preparing a
///   rebalance, nor for a SyncGroup answer unless it is completing one;
///   a successful answer is for a generation the group has reached;
/// - the latest commit of each partition (by record offset) is the one
///   kept;
/// - the group's record encodes and decodes to itself.
///
/// Stored records decoded from arbitrary bytes either fail to decode or
/// encode (at the current version) to bytes that decode the same.
pub fn group_coordinator(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let config = GroupConfig {
        initial_rebalance_delay_ms: if input.initial_delay { 3_000 } else { 0 },
        max_size: usize::from(input.max_size % 5) + 1,
        ..GroupConfig::default()
    };
    let now = 1_700_000_000_000;
    let mut driver = Driver {
        group: Group::new("group".into(), &config, now),
        config,
        now,
        known: Vec::new(),
        joins: Vec::new(),
        syncs: Vec::new(),
        writes: Vec::new(),
        commits: HashMap::new(),
        next_record_offset: 0,
        next_client: 0,
        generation: 0,
        stored: None,
        persisting: Vec::new(),
        ids_drawn: 0,
    };
    for op in input.ops.into_iter().take(64) {
        driver.step(op);
        driver.check();
    }
}

impl Driver {
    fn member(&self, choice: u8) -> String {
        self.known
            .get(usize::from(choice))
            .cloned()
            .unwrap_or_default()
    }

    fn generation(&self, generation: Generation) -> i32 {
        match generation {
            Generation::Current => self.group.generation,
            Generation::Previous => self.group.generation - 1,
            Generation::None => -1,
            Generation::Any(g) => g,
        }
    }

    fn learn(&mut self, member_id: &str) {
        if !member_id.is_empty() && !self.known.iter().any(|k| k == member_id) {
            self.known.push(member_id.to_string());
        }
    }

    fn step(&mut self, op: Op) {
        let now = self.now;
        match op {
            Op::Join {
                member,
                instance,
                session_s,
                rebalance_ds,
                other_protocol_type,
                protocols,
                require_known_member_id,
            } => {
                // Distinct client ids keep member ids (client id, then the
                // UUID drawn) in the same order from run to run.
                self.next_client += 1;
                let request = JoinRequest {
                    member_id: self.member(member),
                    group_instance_id: instance.map(|i| format!("i{}", i % 4)),
                    client_id: format!("c{:05}", self.next_client),
                    client_host: "/127.0.0.1".into(),
                    session_timeout_ms: self.config.min_session_timeout_ms
                        + 1_000 * i32::from(session_s),
                    rebalance_timeout_ms: 100 * i32::from(rebalance_ds),
                    protocol_type: if other_protocol_type {
                        "connect".into()
                    } else {
                        "consumer".into()
                    },
                    protocols: protocols
                        .iter()
                        .take(4)
                        .map(|p| {
                            let name = PROTOCOLS[usize::from(*p) % PROTOCOLS.len()];
                            (name.to_string(), Bytes::from(format!("{name}-{p}")))
                        })
                        .collect(),
                    require_known_member_id,
                };
                self.ids_drawn += 1;
                let new_id = Uuid::from_u128(self.ids_drawn);
                match self.group.join(&self.config, request, now, new_id) {
                    Joined::Now(answer) => self.joined(answer),
                    Joined::Wait(rx) => self.joins.push(rx),
                    // The coordinator writes the group before it answers.
                    Joined::Persist(answer) => {
                        self.stored = Some(self.group.value());
                        self.joined(answer);
                    }
                }
            }
            Op::Sync {
                member,
                instance,
                generation,
                protocol,
                assignments,
            } => {
                let member_id = self.member(member);
                let instance = instance.map(|i| format!("i{}", i % 4));
                let generation = self.generation(generation);
                let protocol = protocol.map(|p| PROTOCOLS[usize::from(p) % PROTOCOLS.len()]);
                let protocol_type = self.group.protocol_type.clone();
                let assignments = assignments
                    .iter()
                    .take(8)
                    .map(|(m, a)| (self.member(*m), Bytes::from(vec![*a])))
                    .collect();
                match self.group.sync(
                    &member_id,
                    instance.as_deref(),
                    generation,
                    protocol_type.as_deref(),
                    protocol,
                    assignments,
                    now,
                ) {
                    Synced::Now(answer) => self.synced(&answer),
                    Synced::Wait(rx) => self.syncs.push(rx),
                    Synced::Persist {
                        value,
                        generation,
                        assignments,
                        wait,
                    } => {
                        assert_eq!(generation, self.group.generation);
                        assert_eq!(value.members.len(), self.group.members.len());
                        assert_eq!(assignments.len(), self.group.members.len());
                        self.syncs.push(wait);
                        self.writes.push((generation, assignments));
                        self.persisting.push(value);
                    }
                }
            }
            Op::Written { ok } => {
                if !self.writes.is_empty() {
                    let (generation, assignments) = self.writes.remove(0);
                    let value = self.persisting.remove(0);
                    if ok {
                        self.stored = Some(value);
                    }
                    let written = if ok { Ok(()) } else { Err(-1) };
                    self.group
                        .complete_sync(generation, assignments, written, now);
                }
            }
            Op::Heartbeat {
                member,
                instance,
                generation,
            } => {
                let generation = self.generation(generation);
                let _ = self.group.heartbeat(
                    &self.member(member),
                    instance.map(|i| format!("i{}", i % 4)).as_deref(),
                    generation,
                    now,
                );
            }
            Op::Leave { member, instance } => {
                let _ = self.group.leave(
                    &self.member(member),
                    instance.map(|i| format!("i{}", i % 4)).as_deref(),
                    now,
                );
            }
            Op::Commit {
                member,
                instance,
                generation,
                topic,
                partition,
                offset,
            } => {
                let generation = self.generation(generation);
                let allowed = self.group.check_commit(
                    &self.member(member),
                    instance.map(|i| format!("i{}", i % 4)).as_deref(),
                    generation,
                    now,
                );
                if allowed.is_ok() {
                    // Writes finish out of order: sometimes the record is
                    // applied as if an earlier one finished later.
                    let record_offset = self.next_record_offset - i64::from(partition % 3);
                    self.next_record_offset += 1;
                    let tp = (
                        TOPICS[usize::from(topic)].to_string(),
                        i32::from(partition % 4),
                    );
                    let best = self.commits.entry(tp.clone()).or_insert(record_offset);
                    *best = (*best).max(record_offset);
                    self.group.apply_commit(
                        tp.0,
                        tp.1,
                        Committed {
                            value: OffsetValue {
                                offset,
                                leader_epoch: -1,
                                metadata: String::new(),
                                commit_timestamp: now,
                            },
                            record_offset,
                        },
                    );
                }
            }
            Op::Advance { ds } => {
                self.now += 100 * i64::from(ds);
                self.group.tick(self.now);
                let _ = self
                    .group
                    .expired_offsets(self.now, self.config.offsets_retention_ms);
            }
            Op::Restore => {
                let offsets = std::mem::take(&mut self.group.offsets);
                self.group = match self.stored.clone() {
                    Some(value) => Group::restore("group".into(), value, &self.config, now),
                    None => Group::new("group".into(), &self.config, now),
                };
                // The restarted group starts from its stored generation.
                self.generation = self.group.generation;
                self.group.offsets = offsets;
                // The connections went with the old process.
                self.joins.clear();
                self.syncs.clear();
                self.writes.clear();
                self.persisting.clear();
            }
            Op::Records { key, value } => decode_records(&key, &value),
        }
        if self.group.take_persist() {
            self.stored = Some(self.group.value());
        }
        let _ = self.group.subscribed_topics();
        let _ = self.group.described_members();
        let _ = self.group.needs_ticks();
    }

    fn joined(&mut self, answer: JoinAnswer) {
        self.learn(&answer.member_id);
        if answer.error == 0 {
            assert!(
                answer.generation <= self.group.generation,
                "answered for a generation the group has not reached"
            );
            for member in &answer.members {
                self.learn(&member.member_id);
            }
        }
    }

    fn synced(&mut self, answer: &SyncAnswer) {
        if answer.error == 0 {
            assert_eq!(answer.protocol_type, self.group.protocol_type);
        }
    }

    fn check(&mut self) {
        let group = &self.group;
        assert!(
            group.members.len() <= self.config.max_size,
            "{} members over group.max.size {}",
            group.members.len(),
            self.config.max_size
        );
        if let Some(leader) = &group.leader {
            assert!(
                group.members.contains_key(leader),
                "leader {leader} is not a member"
            );
        }
        match group.state {
            GroupState::Empty => assert!(group.members.is_empty(), "an empty group has members"),
            GroupState::CompletingRebalance | GroupState::Stable => {
                assert!(
                    !group.members.is_empty(),
                    "{:?} without members",
                    group.state
                );
                assert!(group.leader.is_some(), "{:?} without a leader", group.state);
            }
            GroupState::PreparingRebalance | GroupState::Dead => {}
        }
        assert!(
            group.generation >= self.generation,
            "generation went back from {} to {}",
            self.generation,
            group.generation
        );
        self.generation = group.generation;
        if group.state == GroupState::Stable {
            let protocol = group
                .protocol
                .as_deref()
                .expect("a stable group has a protocol");
            for member in group.members.values() {
                assert!(
                    member.protocols.iter().any(|(p, _)| p == protocol),
                    "member {} does not support {protocol}",
                    member.member_id
                );
            }
        }
        for member in group.members.values() {
            assert_eq!(
                Some(&member.protocol_type),
                group.protocol_type.as_ref(),
                "a member's protocol type is not the group's"
            );
        }
        for (tp, best) in &self.commits {
            let kept = group
                .offsets
                .get(tp)
                .expect("a committed partition is kept");
            assert_eq!(kept.record_offset, *best, "an older commit won for {tp:?}");
        }
        let value = group.value();
        assert_eq!(
            records::decode_group(&records::encode_group(&value)).as_ref(),
            Ok(&value),
            "the group's record does not round-trip"
        );

        let state = group.state;
        let mut answers = Vec::new();
        self.joins.retain_mut(|rx| match rx.try_recv() {
            Ok(answer) => {
                answers.push(answer);
                false
            }
            Err(TryRecvError::Empty) => {
                assert_eq!(
                    state,
                    GroupState::PreparingRebalance,
                    "a JoinGroup waits in {state:?}"
                );
                true
            }
            Err(TryRecvError::Closed) => false,
        });
        for answer in answers {
            self.joined(answer);
        }
        let mut answers = Vec::new();
        self.syncs.retain_mut(|rx| match rx.try_recv() {
            Ok(answer) => {
                answers.push(answer);
                false
            }
            Err(TryRecvError::Empty) => {
                assert_eq!(
                    state,
                    GroupState::CompletingRebalance,
                    "a SyncGroup waits in {state:?}"
                );
                true
            }
            Err(TryRecvError::Closed) => false,
        });
        for answer in &answers {
            self.synced(answer);
        }
    }
}

/// Keys and values of `__consumer_offsets` from arbitrary bytes: decoding
/// never panics, and what decodes re-encodes to the same value.
fn decode_records(key: &[u8], value: &[u8]) {
    if let Ok(decoded) = records::decode_key(key) {
        assert_eq!(
            records::decode_key(&records::encode_key(&decoded)),
            Ok(decoded.clone())
        );
        match decoded {
            RecordKey::Offset { .. } => {
                if let Ok(offset) = records::decode_offset(value) {
                    assert_eq!(
                        records::decode_offset(&records::encode_offset(&offset)),
                        Ok(offset)
                    );
                }
            }
            RecordKey::Group { .. } => {
                if let Ok(group) = records::decode_group(value) {
                    assert_eq!(
                        records::decode_group(&records::encode_group(&group)),
                        Ok(group)
                    );
                }
            }
        }
    }
    let _ = records::decode_offset(value);
    let _ = records::decode_group(value);
}
