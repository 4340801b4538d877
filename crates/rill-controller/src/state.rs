//! The metadata state machine: commands, the image they change, and `apply`.
//!
//! `apply` is a pure function of the image and the command. It reads no
//! clock and draws no random numbers: a topic's id and anything else that
//! would vary between runs is chosen by whoever proposes the command and
//! travels inside it. Replaying the same commands therefore rebuilds the
//! same image on every node and after every restart.
//!
//! Every command is checked in full before anything is changed, so a
//! rejected command leaves the image as it was.

use std::collections::{BTreeMap, BTreeSet};

use rill_types::{LeaderEpoch, NodeId, PartitionIndex, TopicName};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config;

/// A topic's id, as Kafka assigns it: a random (version 4) UUID chosen when
/// the topic is created, never the nil UUID.
pub type TopicId = Uuid;

/// The most partitions one topic may have. Kafka has no hard limit, but a
/// request for more than this is a mistake or an attack, not a workload.
pub const PARTITIONS_PER_TOPIC_MAX: i32 = 100_000;

/// The longest replica list of a partition (Kafka's replication factor is
/// an `i16`; nobody needs more than a handful).
pub const REPLICATION_FACTOR_MAX: i16 = 64;

/// The producer ids a broker takes from the controller at a time, as in
/// Kafka (`ProducerIdsBlock.PRODUCER_ID_BLOCK_SIZE`).
pub const PRODUCER_ID_BLOCK_SIZE: i32 = 1000;

/// The largest block one `AllocateProducerIds` may ask for. Kafka's brokers
/// always ask for [`PRODUCER_ID_BLOCK_SIZE`]; the bound keeps a mistaken
/// caller from burning through the id space.
pub const PRODUCER_ID_BLOCK_SIZE_MAX: i32 = 1_000_000;

/// A change to the cluster metadata. These are the entries of the
/// controller's Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataCommand {
    /// A broker announces itself. Registering a node id again replaces its
    /// endpoint and bumps its broker epoch. A registered broker starts
    /// fenced: it leads nothing until it has caught up with the metadata
    /// and is unfenced (KIP-631). A registration of a new incarnation (a
    /// restarted process) first fences the old one, so leaders move away
    /// from a process that may have lost what it had not flushed.
    RegisterBroker {
        node_id: NodeId,
        /// Random per process start, chosen by the broker; tells a restart
        /// from a duplicate node id (which the active controller refuses
        /// before it proposes anything).
        #[serde(default)]
        incarnation_id: Uuid,
        /// The data dir's id (Kafka's `directory.id`, KIP-858), kept in its
        /// `meta.properties`: the same node restarted on its own data dir
        /// may replace a registration whose session has not yet expired; a
        /// second process with another data dir may not.
        #[serde(default)]
        directory_id: Uuid,
        host: String,
        port: u16,
        rack: Option<String>,
    },
    /// The cluster id, set once by the first active controller. Every
    /// node checks its data dir against it.
    SetClusterId { cluster_id: String },
    /// The active controller judged that the broker missed its session
    /// timeout: it is fenced, leaves every ISR it is not alone in, and its
    /// leaderships move to other in-sync, unfenced replicas.
    FenceBroker { node_id: NodeId, broker_epoch: i64 },
    /// A fenced broker has caught up with the metadata: it may lead again,
    /// and takes the leadership of the partitions left without a leader
    /// whose ISR holds it.
    UnfenceBroker { node_id: NodeId, broker_epoch: i64 },
    /// A broker shutting down asks that its leaderships move away before it
    /// stops (controlled shutdown); the effect is that of fencing it.
    ControlledShutdown { node_id: NodeId, broker_epoch: i64 },
    /// Kafka's ElectLeaders: for each listed partition (all partitions when
    /// `None`), move leadership to the preferred replica, or give a
    /// leaderless partition a leader even from outside its ISR.
    ElectLeaders {
        election: ElectionType,
        partitions: Option<Vec<(String, PartitionIndex)>>,
    },
    /// Creates a topic. When `assignments` is `None` the controller places
    /// the replicas itself; otherwise it lists, per partition, the replica
    /// node ids (first is the preferred leader) and must agree with
    /// `partitions` and `replication_factor`.
    CreateTopic {
        name: String,
        topic_id: TopicId,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        assignments: Option<Vec<Vec<NodeId>>>,
    },
    /// Deletes a topic with all its partitions and configs.
    DeleteTopic { topic_id: TopicId },
    /// Grows a topic to `new_total` partitions. New replicas are placed by
    /// the controller unless `assignments` lists them (one list per new
    /// partition).
    CreatePartitions {
        topic_id: TopicId,
        new_total: i32,
        assignments: Option<Vec<Vec<NodeId>>>,
    },
    /// Sets and removes config entries of a topic or a broker. A removed
    /// entry falls back to its default.
    AlterConfigs {
        resource: ConfigResource,
        set: BTreeMap<String, String>,
        delete: BTreeSet<String>,
    },
    /// Reserves the next `count` producer ids for broker `node_id`, which
    /// hands them to idempotent producers (InitProducerId). Ids are never
    /// handed out twice: the next free id is part of the image, so it
    /// survives restarts and snapshots, and every broker takes from it.
    AllocateProducerIds { node_id: NodeId, count: i32 },
    /// A partition leader's ISR change (Kafka's AlterPartition): `isr`
    /// replaces the ISR if `leader` still leads in `leader_epoch` and the
    /// partition is still at `partition_epoch`; the partition epoch is
    /// bumped. Replicas joining must be unfenced.
    AlterPartition {
        topic_id: TopicId,
        partition: PartitionIndex,
        leader: NodeId,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<NodeId>,
    },
    /// Kafka's AlterPartitionReassignments: for each partition, move it to
    /// the target replicas (`Some`), or cancel its ongoing reassignment
    /// (`None`). The target replicas join as followers; once all are in the
    /// ISR, the others are removed (and the leader moved if it is one of
    /// them). Each partition gets its own result.
    AlterPartitionReassignments {
        reassignments: Vec<(String, PartitionIndex, Option<Vec<NodeId>>)>,
    },
}

/// Which election `ElectLeaders` runs (Kafka's `ElectionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElectionType {
    /// The first replica in assignment order, if it is in the ISR and
    /// unfenced.
    Preferred,
    /// For a partition without a leader: an in-sync unfenced replica, or
    /// else any unfenced replica, which becomes the whole ISR (records only
    /// the old ISR had are lost).
    Unclean,
}

/// What `ElectLeaders` did for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElectionResult {
    Elected,
    /// ELECTION_NOT_NEEDED (84): already led as asked.
    NotNeeded,
    /// PREFERRED_LEADER_NOT_AVAILABLE (80).
    PreferredNotAvailable,
    /// ELIGIBLE_LEADERS_NOT_AVAILABLE (83).
    NoEligibleLeader,
    /// UNKNOWN_TOPIC_OR_PARTITION (3).
    UnknownPartition,
}

/// What an `AlterConfigs` changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigResource {
    Topic(String),
    Broker(NodeId),
}

/// What an applied command did, for the caller that proposed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyOutcome {
    BrokerRegistered {
        node_id: NodeId,
        broker_epoch: i64,
    },
    ClusterIdSet,
    /// A broker was fenced, unfenced or shut down; `elections` partitions
    /// changed their leader.
    BrokerStateChanged {
        node_id: NodeId,
        elections: u32,
    },
    TopicCreated {
        topic_id: TopicId,
        partitions: i32,
    },
    TopicDeleted {
        topic_id: TopicId,
        name: String,
    },
    PartitionsCreated {
        topic_id: TopicId,
        total: i32,
    },
    ConfigsAltered,
    /// Per partition asked for (or every partition), what the election did.
    LeadersElected {
        results: Vec<(String, PartitionIndex, ElectionResult)>,
    },
    /// The producer ids `first..first + count` now belong to the broker
    /// that asked.
    ProducerIdsAllocated {
        first: i64,
        count: i32,
    },
    /// The ISR changed; the partition is now at `partition_epoch`.
    PartitionAltered {
        partition_epoch: i32,
    },
    /// Per partition asked for: `None` when its reassignment began (or
    /// completed, or was cancelled), else why not.
    ReassignmentsAltered {
        results: Vec<(String, PartitionIndex, Option<MetadataError>)>,
    },
    /// A Raft entry that carries no command (a leader's blank entry or a
    /// membership change) was applied.
    Nothing,
}

/// Why a command was rejected. Each variant is named after the Kafka error
/// the broker answers with; the broker's `errors` module maps it to its code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MetadataError {
    /// TOPIC_ALREADY_EXISTS (36).
    #[error("topic '{0}' already exists")]
    TopicAlreadyExists(String),
    /// INVALID_TOPIC_EXCEPTION (17): a bad name, a name that collides with
    /// another after '.' and '_' are equated, or a bad topic id.
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    /// INVALID_PARTITIONS (37).
    #[error("invalid partitions: {0}")]
    InvalidPartitions(String),
    /// INVALID_REPLICATION_FACTOR (38).
    #[error("invalid replication factor: {0}")]
    InvalidReplicationFactor(String),
    /// INVALID_REPLICA_ASSIGNMENT (39).
    #[error("invalid replica assignment: {0}")]
    InvalidReplicaAssignment(String),
    /// UNKNOWN_TOPIC_OR_PARTITION (3): no topic has this name.
    #[error("unknown topic '{0}'")]
    UnknownTopicOrPartition(String),
    /// UNKNOWN_TOPIC_ID (100): no topic has this id.
    #[error("unknown topic id {0}")]
    UnknownTopicId(TopicId),
    /// INVALID_CONFIG (40).
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// INVALID_REQUEST (42): a command no client request could produce,
    /// such as a broker registration without a host.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// BROKER_ID_NOT_REGISTERED (102): a broker-only command from a node
    /// that has not registered.
    #[error("broker {0} is not registered")]
    BrokerIdNotRegistered(NodeId),
    /// UNKNOWN_SERVER_ERROR (-1): what Kafka answers when the producer-id
    /// space (`i64`) is used up.
    #[error("{0}")]
    UnknownServerError(String),
    /// STALE_BROKER_EPOCH (77): a fence, unfence or shutdown of a broker
    /// registration that has since been replaced.
    #[error("broker {node_id} has epoch {current}, not {given}")]
    StaleBrokerEpoch {
        node_id: NodeId,
        given: i64,
        current: i64,
    },
    /// FENCED_LEADER_EPOCH (74): an AlterPartition from a leader that no
    /// longer leads in that epoch.
    #[error("{0}")]
    FencedLeaderEpoch(String),
    /// INVALID_UPDATE_VERSION (95): an AlterPartition against a partition
    /// epoch that has moved on; the leader retries on fresh metadata.
    #[error("{0}")]
    InvalidUpdateVersion(String),
    /// INELIGIBLE_REPLICA (107): an AlterPartition adding a fenced replica
    /// to the ISR.
    #[error("{0}")]
    IneligibleReplica(String),
    /// NO_REASSIGNMENT_IN_PROGRESS (85): a cancellation with nothing to
    /// cancel.
    #[error("{0}")]
    NoReassignmentInProgress(String),
}

/// A registered broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    pub node_id: NodeId,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    /// Counts this node's registrations, starting at 1.
    pub broker_epoch: i64,
    /// The process that registered (random per start).
    #[serde(default)]
    pub incarnation_id: Uuid,
    /// The data dir it registered from.
    #[serde(default)]
    pub directory_id: Uuid,
    /// A fenced broker leads nothing and is not offered to clients.
    /// Registrations from before fencing existed read as unfenced.
    #[serde(default)]
    pub fenced: bool,
    /// The image version right after this registration was applied: the
    /// broker is caught up, and may be unfenced, once it has applied this
    /// far.
    #[serde(default)]
    pub registered_version: u64,
}

/// One partition's replicas and leadership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Replica node ids; the first is the preferred leader.
    pub replicas: Vec<NodeId>,
    /// The in-sync replicas.
    pub isr: Vec<NodeId>,
    /// The leader's node id, or `-1` when there is none.
    pub leader: NodeId,
    pub leader_epoch: LeaderEpoch,
    /// Bumped on every change to this partition's state (Kafka's
    /// `partition_epoch`).
    pub partition_epoch: i32,
    /// Eligible leader replicas (KIP-966): replicas that left the ISR while
    /// it was below `min.insync.replicas`. The high watermark cannot move
    /// while the ISR is that small, so each of them holds every committed
    /// record and may lead cleanly when no ISR member can. Empty whenever
    /// the ISR is at least `min.insync.replicas`.
    #[serde(default)]
    pub elr: Vec<NodeId>,
    /// Replicas a reassignment is adding (also in `replicas`).
    #[serde(default)]
    pub adding: Vec<NodeId>,
    /// Replicas a reassignment will remove once every target replica is in
    /// sync (still in `replicas` until then).
    #[serde(default)]
    pub removing: Vec<NodeId>,
}

impl PartitionState {
    /// The replicas before the ongoing reassignment, if one is.
    pub fn original_replicas(&self) -> Vec<NodeId> {
        self.replicas
            .iter()
            .copied()
            .filter(|r| !self.adding.contains(r))
            .collect()
    }

    /// The replicas a reassignment is moving to (the replicas, without one).
    pub fn target_replicas(&self) -> Vec<NodeId> {
        self.replicas
            .iter()
            .copied()
            .filter(|r| !self.removing.contains(r))
            .collect()
    }

    pub fn is_reassigning(&self) -> bool {
        !self.adding.is_empty() || !self.removing.is_empty()
    }
}

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicState {
    #[serde(with = "topic_name_serde")]
    pub name: TopicName,
    pub topic_id: TopicId,
    /// Indexed by partition index.
    pub partitions: Vec<PartitionState>,
    /// Config entries set on this topic; absent keys take the broker default.
    pub configs: BTreeMap<String, String>,
}

impl TopicState {
    pub fn partition(&self, index: PartitionIndex) -> Option<&PartitionState> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }
}

/// The cluster metadata as of some point in the controller's log.
///
/// Brokers keep an `Arc` of the latest image and answer Metadata requests
/// from it; a new image replaces the old one whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    /// How far into the controller's log this image is: the index of the
    /// last entry applied plus one, so 0 for an image that has seen no
    /// entry (Raft's first entry has index 0). Every entry moves it,
    /// including rejected commands and Raft's own entries, so two images
    /// of one log with the same version are equal.
    pub version: u64,
    topics: BTreeMap<TopicId, TopicState>,
    /// Topic name → id, kept in step with `topics`.
    topic_ids: BTreeMap<String, TopicId>,
    brokers: BTreeMap<NodeId, BrokerRegistration>,
    broker_configs: BTreeMap<NodeId, BTreeMap<String, String>>,
    /// The first producer id no broker has been given. Snapshots written
    /// before producer ids existed lack it; they had handed out none, so 0
    /// is right for them.
    #[serde(default)]
    next_producer_id: i64,
    /// The cluster id, once the first active controller has set it.
    #[serde(default)]
    cluster_id: Option<String>,
}

impl MetadataImage {
    pub fn topic(&self, name: &str) -> Option<&TopicState> {
        self.topic_ids.get(name).and_then(|id| self.topics.get(id))
    }

    pub fn topic_by_id(&self, topic_id: &TopicId) -> Option<&TopicState> {
        self.topics.get(topic_id)
    }

    /// All topics, in topic-id order.
    pub fn topics(&self) -> impl Iterator<Item = &TopicState> {
        self.topics.values()
    }

    /// All topic names with their ids, in name order.
    pub fn topic_names(&self) -> impl Iterator<Item = (&str, &TopicId)> {
        self.topic_ids.iter().map(|(name, id)| (name.as_str(), id))
    }

    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    pub fn broker(&self, node_id: NodeId) -> Option<&BrokerRegistration> {
        self.brokers.get(&node_id)
    }

    /// All registered brokers, in node-id order.
    pub fn brokers(&self) -> impl Iterator<Item = &BrokerRegistration> {
        self.brokers.values()
    }

    /// The registered brokers that are not fenced: those offered to
    /// clients and given new replicas.
    pub fn unfenced_brokers(&self) -> impl Iterator<Item = &BrokerRegistration> {
        self.brokers.values().filter(|b| !b.fenced)
    }

    /// The cluster id, once set.
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// Config entries set on a broker (empty if none).
    pub fn broker_configs(&self, node_id: NodeId) -> Option<&BTreeMap<String, String>> {
        self.broker_configs.get(&node_id)
    }

    /// The first producer id not yet allocated to any broker.
    pub fn next_producer_id(&self) -> i64 {
        self.next_producer_id
    }

    /// Moves the image to the log entry at `index`. Called by the Raft state
    /// machine before it applies each entry.
    pub fn advance_to(&mut self, index: u64) {
        assert!(
            index >= self.version,
            "log index {index} applied to version {}",
            self.version
        );
        self.version = index + 1;
    }

    /// Checks the image's internal cross-references. Tests call it after
    /// every command; it is cheap enough for a debug assertion too.
    pub fn assert_consistent(&self) {
        if let Err(problem) = self.check_consistent() {
            panic!("inconsistent metadata image: {problem}");
        }
    }

    /// What [`MetadataImage::assert_consistent`] checks, as an error: an
    /// image read from a file or received from a peer is input, and damage
    /// there is reported, not a panic.
    pub fn check_consistent(&self) -> Result<(), String> {
        fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
            if ok {
                Ok(())
            } else {
                Err(what())
            }
        }
        ensure(self.next_producer_id >= 0, || {
            format!("next producer id {} is negative", self.next_producer_id)
        })?;
        ensure(self.topics.len() == self.topic_ids.len(), || {
            "topic names and ids differ in number".to_string()
        })?;
        for (name, id) in &self.topic_ids {
            let Some(topic) = self.topics.get(id) else {
                return Err(format!("topic '{name}' names missing id {id}"));
            };
            ensure(topic.name.as_str() == name && &topic.topic_id == id, || {
                format!("topic '{name}' ({id}) is filed under another name or id")
            })?;
            ensure(!topic.partitions.is_empty(), || {
                format!("topic '{name}' has no partitions")
            })?;
            for (index, partition) in topic.partitions.iter().enumerate() {
                let at = || format!("topic '{name}' partition {index}");
                // Replication factors may differ between partitions after
                // a reassignment, as in Kafka.
                ensure(
                    partition
                        .adding
                        .iter()
                        .chain(&partition.removing)
                        .all(|r| partition.replicas.contains(r))
                        && partition
                            .adding
                            .iter()
                            .all(|r| !partition.removing.contains(r)),
                    || {
                        format!(
                            "{}: reassignment adding {:?} / removing {:?} not within replicas {:?}",
                            at(),
                            partition.adding,
                            partition.removing,
                            partition.replicas
                        )
                    },
                )?;
                ensure(
                    partition.isr.iter().all(|r| partition.replicas.contains(r)),
                    || format!("{}: ISR {:?} not within replicas", at(), partition.isr),
                )?;
                ensure(!partition.isr.is_empty(), || format!("{}: empty ISR", at()))?;
                ensure(
                    partition
                        .elr
                        .iter()
                        .all(|r| partition.replicas.contains(r) && !partition.isr.contains(r)),
                    || {
                        format!(
                            "{}: ELR {:?} not within the replicas outside the ISR",
                            at(),
                            partition.elr
                        )
                    },
                )?;
                ensure(
                    partition.leader == -1 || partition.isr.contains(&partition.leader),
                    || format!("{}: leader {} not in the ISR", at(), partition.leader),
                )?;
                ensure(
                    partition.leader == -1
                        || self
                            .brokers
                            .get(&partition.leader)
                            .is_some_and(|b| !b.fenced),
                    || format!("{}: leader {} is fenced or unknown", at(), partition.leader),
                )?;
            }
        }
        Ok(())
    }
}

/// Applies one command to the image: checks it against the image and, if
/// it is valid, makes the change. A rejected command changes nothing.
pub fn apply(
    image: &mut MetadataImage,
    command: &MetadataCommand,
) -> Result<ApplyOutcome, MetadataError> {
    check(image, command)?;
    Ok(mutate(image, command))
}

/// Checks a command against the image without applying it. This is what a
/// `validate_only` CreateTopics request runs.
pub fn check(image: &MetadataImage, command: &MetadataCommand) -> Result<(), MetadataError> {
    match command {
        MetadataCommand::SetClusterId { cluster_id } => {
            if cluster_id.is_empty() {
                return Err(MetadataError::InvalidRequest(
                    "empty cluster id".to_string(),
                ));
            }
            if let Some(current) = &image.cluster_id {
                return Err(MetadataError::InvalidRequest(format!(
                    "the cluster id is already {current}"
                )));
            }
            Ok(())
        }
        MetadataCommand::FenceBroker {
            node_id,
            broker_epoch,
        }
        | MetadataCommand::UnfenceBroker {
            node_id,
            broker_epoch,
        }
        | MetadataCommand::ControlledShutdown {
            node_id,
            broker_epoch,
        } => {
            let Some(broker) = image.brokers.get(node_id) else {
                return Err(MetadataError::BrokerIdNotRegistered(*node_id));
            };
            if broker.broker_epoch != *broker_epoch {
                return Err(MetadataError::StaleBrokerEpoch {
                    node_id: *node_id,
                    given: *broker_epoch,
                    current: broker.broker_epoch,
                });
            }
            Ok(())
        }
        // Partitions that do not exist get their own result, not a rejection.
        MetadataCommand::ElectLeaders { .. } => Ok(()),
        MetadataCommand::AlterPartitionReassignments { .. } => Ok(()),
        MetadataCommand::AlterPartition {
            topic_id,
            partition,
            leader,
            leader_epoch,
            partition_epoch,
            isr,
        } => {
            let topic = image
                .topics
                .get(topic_id)
                .ok_or(MetadataError::UnknownTopicId(*topic_id))?;
            let state = usize::try_from(*partition)
                .ok()
                .and_then(|p| topic.partitions.get(p))
                .ok_or_else(|| {
                    MetadataError::UnknownTopicOrPartition(format!("{}-{partition}", topic.name))
                })?;
            let at = || format!("{}-{partition}", topic.name);
            if state.leader != *leader || state.leader_epoch != *leader_epoch {
                return Err(MetadataError::FencedLeaderEpoch(format!(
                    "{}: led by {} in epoch {}, not by {leader} in epoch {leader_epoch}",
                    at(),
                    state.leader,
                    state.leader_epoch
                )));
            }
            if state.partition_epoch != *partition_epoch {
                return Err(MetadataError::InvalidUpdateVersion(format!(
                    "{}: partition epoch {}, not {partition_epoch}",
                    at(),
                    state.partition_epoch
                )));
            }
            let distinct: BTreeSet<NodeId> = isr.iter().copied().collect();
            if !isr.contains(leader)
                || distinct.len() != isr.len()
                || !isr.iter().all(|r| state.replicas.contains(r))
            {
                return Err(MetadataError::InvalidRequest(format!(
                    "{}: ISR {isr:?} must hold the leader {leader}, once each, and only replicas of {:?}",
                    at(),
                    state.replicas
                )));
            }
            let fenced: Vec<NodeId> = isr
                .iter()
                .copied()
                .filter(|r| !state.isr.contains(r))
                .filter(|r| image.brokers.get(r).is_none_or(|b| b.fenced))
                .collect();
            if !fenced.is_empty() {
                return Err(MetadataError::IneligibleReplica(format!(
                    "{}: replicas {fenced:?} are fenced and cannot join the ISR",
                    at()
                )));
            }
            Ok(())
        }
        MetadataCommand::RegisterBroker {
            node_id,
            incarnation_id: _,
            directory_id: _,
            host,
            port,
            rack: _,
        } => {
            if *node_id < 0 {
                return Err(MetadataError::InvalidRequest(format!(
                    "negative node id {node_id}"
                )));
            }
            if host.is_empty() {
                return Err(MetadataError::InvalidRequest(
                    "broker host is empty".to_string(),
                ));
            }
            if *port == 0 {
                return Err(MetadataError::InvalidRequest(
                    "broker port is 0".to_string(),
                ));
            }
            Ok(())
        }
        MetadataCommand::CreateTopic {
            name,
            topic_id,
            partitions,
            replication_factor,
            configs,
            assignments,
        } => {
            let name = TopicName::new(name.as_str())
                .map_err(|e| MetadataError::InvalidTopic(e.to_string()))?;
            if image.topic_ids.contains_key(name.as_str()) {
                return Err(MetadataError::TopicAlreadyExists(name.to_string()));
            }
            // Kafka uses '.' and '_' interchangeably in metric names, so it
            // refuses a topic whose name differs from an existing one only
            // there.
            let unified = unify_dots(name.as_str());
            if let Some(other) = image
                .topic_ids
                .keys()
                .find(|other| unify_dots(other) == unified)
            {
                return Err(MetadataError::InvalidTopic(format!(
                    "topic '{name}' collides with existing topic '{other}'"
                )));
            }
            if topic_id.is_nil() {
                return Err(MetadataError::InvalidTopic(
                    "topic id is the nil UUID".to_string(),
                ));
            }
            if image.topics.contains_key(topic_id) {
                return Err(MetadataError::InvalidTopic(format!(
                    "topic id {topic_id} is taken"
                )));
            }
            check_partition_count(*partitions)?;
            check_replication_factor(image, *replication_factor)?;
            if let Some(assignments) = assignments {
                check_assignments(image, assignments, *partitions, *replication_factor)?;
            }
            for (key, value) in configs {
                config::validate_topic_config(key, value)?;
            }
            Ok(())
        }
        MetadataCommand::DeleteTopic { topic_id } => {
            if !image.topics.contains_key(topic_id) {
                return Err(MetadataError::UnknownTopicId(*topic_id));
            }
            Ok(())
        }
        MetadataCommand::CreatePartitions {
            topic_id,
            new_total,
            assignments,
        } => {
            let Some(topic) = image.topics.get(topic_id) else {
                return Err(MetadataError::UnknownTopicId(*topic_id));
            };
            let current = partition_count(topic);
            if *new_total <= current {
                return Err(MetadataError::InvalidPartitions(format!(
                    "topic '{}' has {current} partitions; the new total {new_total} must be larger",
                    topic.name
                )));
            }
            check_partition_count(*new_total)?;
            let replication_factor = replication_factor_of(topic);
            check_replication_factor(image, replication_factor)?;
            if let Some(assignments) = assignments {
                check_assignments(image, assignments, new_total - current, replication_factor)?;
            }
            Ok(())
        }
        MetadataCommand::AlterConfigs {
            resource,
            set,
            delete,
        } => {
            match resource {
                ConfigResource::Topic(name) => {
                    if !image.topic_ids.contains_key(name.as_str()) {
                        return Err(MetadataError::UnknownTopicOrPartition(name.clone()));
                    }
                    for (key, value) in set {
                        config::validate_topic_config(key, value)?;
                    }
                    for key in delete {
                        if !config::is_topic_config(key) {
                            return Err(MetadataError::InvalidConfig(format!(
                                "unknown topic config name: {key}"
                            )));
                        }
                    }
                }
                ConfigResource::Broker(node_id) => {
                    if *node_id < 0 && *node_id != crate::broker_config::CLUSTER_DEFAULT_NODE_ID {
                        return Err(MetadataError::InvalidRequest(format!(
                            "negative node id {node_id}"
                        )));
                    }
                    for (key, value) in set {
                        config::validate_broker_config(key, value)?;
                    }
                }
            }
            if let Some(key) = set.keys().find(|key| delete.contains(*key)) {
                return Err(MetadataError::InvalidRequest(format!(
                    "config {key} is both set and deleted"
                )));
            }
            Ok(())
        }
        MetadataCommand::AllocateProducerIds { node_id, count } => {
            if !image.brokers.contains_key(node_id) {
                return Err(MetadataError::BrokerIdNotRegistered(*node_id));
            }
            if !(1..=PRODUCER_ID_BLOCK_SIZE_MAX).contains(count) {
                return Err(MetadataError::InvalidRequest(format!(
                    "producer id block size {count} is not in 1..={PRODUCER_ID_BLOCK_SIZE_MAX}"
                )));
            }
            if image
                .next_producer_id
                .checked_add(i64::from(*count))
                .is_none()
            {
                return Err(MetadataError::UnknownServerError(format!(
                    "exhausted all producer ids: the block at {} of {count} would pass i64::MAX",
                    image.next_producer_id
                )));
            }
            Ok(())
        }
    }
}

/// Makes the change of a command that `check` accepted.
fn mutate(image: &mut MetadataImage, command: &MetadataCommand) -> ApplyOutcome {
    match command {
        MetadataCommand::SetClusterId { cluster_id } => {
            image.cluster_id = Some(cluster_id.clone());
            ApplyOutcome::ClusterIdSet
        }
        MetadataCommand::FenceBroker { node_id, .. }
        | MetadataCommand::ControlledShutdown { node_id, .. } => {
            let elections = fence(image, *node_id);
            ApplyOutcome::BrokerStateChanged {
                node_id: *node_id,
                elections,
            }
        }
        MetadataCommand::ElectLeaders {
            election,
            partitions,
        } => ApplyOutcome::LeadersElected {
            results: elect_leaders(image, *election, partitions.as_deref()),
        },
        MetadataCommand::AlterPartition {
            topic_id,
            partition,
            isr,
            ..
        } => {
            let topic = image.topics.get_mut(topic_id).expect("checked");
            let min_isr = min_isr(topic);
            let state = topic
                .partitions
                .get_mut(*partition as usize)
                .expect("checked");
            let leader = state.leader;
            change_partition(state, leader, isr.clone(), min_isr);
            let unfenced: BTreeSet<NodeId> = image.unfenced_brokers().map(|b| b.node_id).collect();
            let topic = image.topics.get_mut(topic_id).expect("checked");
            let state = topic
                .partitions
                .get_mut(*partition as usize)
                .expect("checked");
            maybe_complete_reassignment(state, &unfenced, min_isr);
            ApplyOutcome::PartitionAltered {
                partition_epoch: state.partition_epoch,
            }
        }
        MetadataCommand::AlterPartitionReassignments { reassignments } => {
            ApplyOutcome::ReassignmentsAltered {
                results: reassignments
                    .iter()
                    .map(|(topic, partition, target)| {
                        let result = reassign(image, topic, *partition, target.as_deref()).err();
                        (topic.clone(), *partition, result)
                    })
                    .collect(),
            }
        }
        MetadataCommand::UnfenceBroker { node_id, .. } => {
            let elections = unfence(image, *node_id);
            ApplyOutcome::BrokerStateChanged {
                node_id: *node_id,
                elections,
            }
        }
        MetadataCommand::RegisterBroker {
            node_id,
            incarnation_id,
            directory_id,
            host,
            port,
            rack,
        } => {
            // A new registration replaces a process that may have lost
            // unflushed data: it leads nothing until it is unfenced again.
            if image.brokers.contains_key(node_id) {
                fence(image, *node_id);
            }
            let broker_epoch = image.brokers.get(node_id).map_or(1, |b| b.broker_epoch + 1);
            image.brokers.insert(
                *node_id,
                BrokerRegistration {
                    node_id: *node_id,
                    host: host.clone(),
                    port: *port,
                    rack: rack.clone(),
                    broker_epoch,
                    incarnation_id: *incarnation_id,
                    directory_id: *directory_id,
                    fenced: true,
                    registered_version: image.version,
                },
            );
            ApplyOutcome::BrokerRegistered {
                node_id: *node_id,
                broker_epoch,
            }
        }
        MetadataCommand::CreateTopic {
            name,
            topic_id,
            partitions,
            replication_factor,
            configs,
            assignments,
        } => {
            let name = TopicName::new(name.as_str()).expect("checked");
            let replicas = match assignments {
                Some(assignments) => assignments.clone(),
                None => place_replicas(image, topic_id, 0, *partitions, *replication_factor),
            };
            let topic = TopicState {
                name: name.clone(),
                topic_id: *topic_id,
                partitions: replicas.into_iter().map(new_partition).collect(),
                configs: configs.clone(),
            };
            image.topic_ids.insert(name.as_str().to_string(), *topic_id);
            image.topics.insert(*topic_id, topic);
            ApplyOutcome::TopicCreated {
                topic_id: *topic_id,
                partitions: *partitions,
            }
        }
        MetadataCommand::DeleteTopic { topic_id } => {
            let topic = image.topics.remove(topic_id).expect("checked");
            image.topic_ids.remove(topic.name.as_str());
            ApplyOutcome::TopicDeleted {
                topic_id: *topic_id,
                name: topic.name.to_string(),
            }
        }
        MetadataCommand::CreatePartitions {
            topic_id,
            new_total,
            assignments,
        } => {
            let topic = &image.topics[topic_id];
            let current = partition_count(topic);
            let replicas = match assignments {
                Some(assignments) => assignments.clone(),
                None => place_replicas(
                    image,
                    topic_id,
                    current,
                    new_total - current,
                    replication_factor_of(topic),
                ),
            };
            let topic = image.topics.get_mut(topic_id).expect("checked");
            topic
                .partitions
                .extend(replicas.into_iter().map(new_partition));
            ApplyOutcome::PartitionsCreated {
                topic_id: *topic_id,
                total: *new_total,
            }
        }
        MetadataCommand::AlterConfigs {
            resource,
            set,
            delete,
        } => {
            let configs = match resource {
                ConfigResource::Topic(name) => {
                    let topic_id = image.topic_ids[name.as_str()];
                    &mut image.topics.get_mut(&topic_id).expect("checked").configs
                }
                ConfigResource::Broker(node_id) => {
                    image.broker_configs.entry(*node_id).or_default()
                }
            };
            for key in delete {
                configs.remove(key);
            }
            configs.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
            if let ConfigResource::Broker(node_id) = resource {
                if image
                    .broker_configs
                    .get(node_id)
                    .is_some_and(BTreeMap::is_empty)
                {
                    image.broker_configs.remove(node_id);
                }
            }
            ApplyOutcome::ConfigsAltered
        }
        MetadataCommand::AllocateProducerIds { node_id: _, count } => {
            let first = image.next_producer_id;
            image.next_producer_id = first + i64::from(*count);
            ApplyOutcome::ProducerIdsAllocated {
                first,
                count: *count,
            }
        }
    }
}

/// A new partition led by its first replica, with every replica in sync:
/// an empty log is the same on all of them (Kafka's KRaft controller does
/// the same for the unfenced ones; placement picks only unfenced brokers).
fn new_partition(replicas: Vec<NodeId>) -> PartitionState {
    assert!(!replicas.is_empty());
    PartitionState {
        leader: replicas[0],
        isr: replicas.clone(),
        elr: Vec::new(),
        adding: Vec::new(),
        removing: Vec::new(),
        replicas,
        leader_epoch: 0,
        partition_epoch: 0,
    }
}

/// Whether the topic allows an out-of-sync replica to lead
/// (`unclean.leader.election.enable`), which may lose acknowledged records.
fn unclean_allowed(topic: &TopicState) -> bool {
    topic
        .configs
        .get("unclean.leader.election.enable")
        .is_some_and(|v| v == "true")
}

/// Moves a partition to `leader` (or to none, `-1`) with `isr`, bumping
/// the leader epoch when the leader changes and the partition epoch on any
/// change, and keeps the ELR (KIP-966): replicas leaving an ISR that is
/// then below `min_isr` join it, ISR members leave it, and an ISR of
/// `min_isr` or more empties it. Returns whether the leader changed.
fn change_partition(
    partition: &mut PartitionState,
    leader: NodeId,
    isr: Vec<NodeId>,
    min_isr: usize,
) -> bool {
    let leader_changed = partition.leader != leader;
    if !leader_changed && partition.isr == isr {
        return false;
    }
    if leader_changed {
        partition.leader_epoch += 1;
    }
    let min_isr = min_isr.clamp(1, partition.replicas.len().max(1));
    if isr.len() >= min_isr {
        partition.elr.clear();
    } else {
        for left in partition.isr.iter().filter(|r| !isr.contains(r)) {
            if !partition.elr.contains(left) {
                partition.elr.push(*left);
            }
        }
        partition.elr.retain(|r| !isr.contains(r));
    }
    partition.leader = leader;
    partition.isr = isr;
    partition.partition_epoch += 1;
    leader_changed
}

/// The partitions to move back to their preferred leader (Kafka's
/// auto leader rebalance): for each unfenced broker whose share of its
/// preferred partitions led by others is above `percent`, those of them it
/// could lead now (it is in their ISR).
pub fn imbalanced_partitions(image: &MetadataImage, percent: u32) -> Vec<(String, PartitionIndex)> {
    let unfenced: BTreeSet<NodeId> = image.unfenced_brokers().map(|b| b.node_id).collect();
    let mut preferred: BTreeMap<NodeId, (usize, Vec<(String, PartitionIndex)>)> = BTreeMap::new();
    for topic in image.topics.values() {
        for (index, partition) in topic.partitions.iter().enumerate() {
            let Some(&first) = partition.replicas.first() else {
                continue;
            };
            let entry = preferred.entry(first).or_default();
            entry.0 += 1;
            if partition.leader != first {
                entry
                    .1
                    .push((topic.name.to_string(), index as PartitionIndex));
            }
        }
    }
    let mut moves = Vec::new();
    for (broker, (total, not_led)) in preferred {
        if !unfenced.contains(&broker) || not_led.len() * 100 <= total * percent as usize {
            continue;
        }
        for (topic, index) in not_led {
            let in_sync = image
                .topic(&topic)
                .and_then(|t| t.partition(index))
                .is_some_and(|p| p.isr.contains(&broker));
            if in_sync {
                moves.push((topic, index));
            }
        }
    }
    moves
}

/// Starts (or, with no target, cancels) a partition's reassignment.
fn reassign(
    image: &mut MetadataImage,
    topic: &str,
    index: PartitionIndex,
    target: Option<&[NodeId]>,
) -> Result<(), MetadataError> {
    let unknown = || MetadataError::UnknownTopicOrPartition(format!("{topic}-{index}"));
    let topic_id = *image.topic_ids.get(topic).ok_or_else(unknown)?;
    if let Some(target) = target {
        let distinct: BTreeSet<NodeId> = target.iter().copied().collect();
        if target.is_empty() || distinct.len() != target.len() {
            return Err(MetadataError::InvalidReplicaAssignment(format!(
                "{topic}-{index}: replicas {target:?} must be distinct and at least one"
            )));
        }
        if let Some(missing) = target.iter().find(|r| !image.brokers.contains_key(r)) {
            return Err(MetadataError::InvalidReplicaAssignment(format!(
                "{topic}-{index}: broker {missing} is not registered"
            )));
        }
    }
    let unfenced: BTreeSet<NodeId> = image.unfenced_brokers().map(|b| b.node_id).collect();
    let state = image
        .topics
        .get_mut(&topic_id)
        .expect("ids and topics agree");
    let min_isr = min_isr(state);
    let partition = usize::try_from(index)
        .ok()
        .and_then(|i| state.partitions.get_mut(i))
        .ok_or_else(unknown)?;
    let original = partition.original_replicas();
    let Some(target) = target else {
        if !partition.is_reassigning() {
            return Err(MetadataError::NoReassignmentInProgress(format!(
                "{topic}-{index} is not being reassigned"
            )));
        }
        finish_reassignment(partition, original, &unfenced, min_isr);
        return Ok(());
    };
    if !partition.is_reassigning() && partition.replicas == target {
        return Ok(());
    }
    let adding: Vec<NodeId> = target
        .iter()
        .copied()
        .filter(|r| !original.contains(r))
        .collect();
    let mut removing: Vec<NodeId> = original
        .iter()
        .copied()
        .filter(|r| !target.contains(r))
        .collect();
    // A leader that an earlier reassignment was adding stays a replica
    // until this one completes.
    let leader = partition.leader;
    if leader >= 0 && !target.contains(&leader) && !removing.contains(&leader) {
        removing.push(leader);
    }
    let mut replicas = target.to_vec();
    replicas.extend(&removing);
    // Replicas being added by an earlier, now replaced, reassignment and
    // not in the new target leave the ISR with it.
    partition.isr.retain(|r| replicas.contains(r));
    if partition.isr.is_empty() {
        partition.isr = vec![replicas[0]];
    }
    partition.elr.retain(|r| replicas.contains(r));
    partition.replicas = replicas;
    partition.adding = adding;
    partition.removing = removing;
    partition.partition_epoch += 1;
    maybe_complete_reassignment(partition, &unfenced, min_isr);
    Ok(())
}

/// Completes a reassignment once every target replica is in the ISR.
fn maybe_complete_reassignment(
    partition: &mut PartitionState,
    unfenced: &BTreeSet<NodeId>,
    min_isr: usize,
) {
    if !partition.is_reassigning() {
        return;
    }
    let target = partition.target_replicas();
    if target.iter().all(|r| partition.isr.contains(r)) {
        finish_reassignment(partition, target, unfenced, min_isr);
    }
}

/// Makes `replicas` the partition's replicas (the target on completion,
/// the original on cancellation): the others leave the ISR and the ELR,
/// and leadership moves to an in-sync one if the leader is not among them.
fn finish_reassignment(
    partition: &mut PartitionState,
    replicas: Vec<NodeId>,
    unfenced: &BTreeSet<NodeId>,
    min_isr: usize,
) {
    let mut isr: Vec<NodeId> = partition
        .isr
        .iter()
        .copied()
        .filter(|r| replicas.contains(r))
        .collect();
    if isr.is_empty() {
        // No replica kept is in sync (a cancellation whose old replicas
        // had all left the ISR): the first keeps the place.
        isr = vec![replicas[0]];
    }
    let mut leader = partition.leader;
    if !replicas.contains(&leader) || !isr.contains(&leader) {
        leader = elect(&replicas, &isr, unfenced);
    }
    partition.replicas = replicas;
    partition.adding.clear();
    partition.removing.clear();
    partition.partition_epoch += 1;
    change_partition(partition, leader, isr, min_isr);
    partition.elr.retain(|r| partition.replicas.contains(r));
}

/// The topic's `min.insync.replicas` (1 when unset).
fn min_isr(topic: &TopicState) -> usize {
    topic
        .configs
        .get("min.insync.replicas")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Kafka's clean election, in its order: the first replica in assignment
/// order that is in the ISR and unfenced, keeping the ISR; else the first
/// unfenced eligible leader replica (KIP-966), which becomes the ISR.
fn elect_clean(
    partition: &PartitionState,
    isr: &[NodeId],
    unfenced: &BTreeSet<NodeId>,
) -> Option<(NodeId, Vec<NodeId>)> {
    match elect(&partition.replicas, isr, unfenced) {
        -1 => {
            let leader = elect(&partition.replicas, &partition.elr, unfenced);
            (leader != -1).then(|| (leader, vec![leader]))
        }
        leader => Some((leader, isr.to_vec())),
    }
}

/// Fences `node_id`: it leaves every ISR it is not alone in (a lone member
/// stays, so the partition knows which replica has its data), and each
/// partition it led gets the first replica in assignment order that is in
/// the ISR and unfenced, or no leader. Returns how many leaders changed.
fn fence(image: &mut MetadataImage, node_id: NodeId) -> u32 {
    let Some(broker) = image.brokers.get_mut(&node_id) else {
        return 0;
    };
    broker.fenced = true;
    let unfenced: BTreeSet<NodeId> = image.unfenced_brokers().map(|b| b.node_id).collect();
    let mut elections = 0;
    for topic in image.topics.values_mut() {
        let unclean = unclean_allowed(topic);
        let min_isr = min_isr(topic);
        for partition in &mut topic.partitions {
            if !partition.replicas.contains(&node_id) {
                continue;
            }
            let mut isr = partition.isr.clone();
            if isr.len() > 1 {
                isr.retain(|r| *r != node_id);
            }
            let mut leader = partition.leader;
            let mut unclean_election = false;
            if leader == node_id {
                leader = -1;
                if let Some((elected, elected_isr)) = elect_clean(partition, &isr, &unfenced) {
                    leader = elected;
                    isr = elected_isr;
                } else if unclean {
                    leader = elect_unclean(&partition.replicas, &unfenced);
                    if leader != -1 {
                        tracing::warn!(
                            topic = %topic.name,
                            leader,
                            "unclean leader election: records only the old ISR {isr:?} had may be lost"
                        );
                        isr = vec![leader];
                        unclean_election = true;
                    }
                }
            }
            elections += u32::from(change_partition(partition, leader, isr, min_isr));
            if unclean_election {
                // What the old ISR committed is void: nobody is eligible.
                partition.elr.clear();
            }
        }
    }
    elections
}

/// Unfences `node_id` and gives it the leadership of every partition left
/// without a leader whose ISR holds it (or, where the topic allows unclean
/// election, of which it is a replica). Returns how many leaders changed.
fn unfence(image: &mut MetadataImage, node_id: NodeId) -> u32 {
    let Some(broker) = image.brokers.get_mut(&node_id) else {
        return 0;
    };
    broker.fenced = false;
    let mut elections = 0;
    for topic in image.topics.values_mut() {
        let unclean = unclean_allowed(topic);
        let min_isr = min_isr(topic);
        for partition in &mut topic.partitions {
            if partition.leader != -1 || !partition.replicas.contains(&node_id) {
                continue;
            }
            let clean = partition.isr.contains(&node_id) || partition.elr.contains(&node_id);
            let isr = if partition.isr.contains(&node_id) {
                partition.isr.clone()
            } else if partition.elr.contains(&node_id) {
                // An eligible leader replica holds every committed record.
                vec![node_id]
            } else if unclean {
                tracing::warn!(
                    topic = %topic.name,
                    leader = node_id,
                    "unclean leader election: records only the old ISR {:?} had may be lost",
                    partition.isr
                );
                vec![node_id]
            } else {
                continue;
            };
            elections += u32::from(change_partition(partition, node_id, isr, min_isr));
            if !clean {
                partition.elr.clear();
            }
        }
    }
    elections
}

/// Runs an `ElectLeaders` over `partitions` (every partition when `None`).
fn elect_leaders(
    image: &mut MetadataImage,
    election: ElectionType,
    partitions: Option<&[(String, PartitionIndex)]>,
) -> Vec<(String, PartitionIndex, ElectionResult)> {
    let wanted: Vec<(String, PartitionIndex)> = match partitions {
        Some(list) => list.to_vec(),
        None => image
            .topics
            .values()
            .flat_map(|t| {
                (0..t.partitions.len()).map(|p| (t.name.to_string(), p as PartitionIndex))
            })
            .collect(),
    };
    let unfenced: BTreeSet<NodeId> = image.unfenced_brokers().map(|b| b.node_id).collect();
    wanted
        .into_iter()
        .map(|(topic, index)| {
            let Some(&topic_id) = image.topic_ids.get(&topic) else {
                return (topic, index, ElectionResult::UnknownPartition);
            };
            let state = image.topics.get_mut(&topic_id).expect("ids and topics agree");
            let min_isr = min_isr(state);
            let Some(partition) = usize::try_from(index)
                .ok()
                .and_then(|i| state.partitions.get_mut(i))
            else {
                return (topic, index, ElectionResult::UnknownPartition);
            };
            let result = match election {
                ElectionType::Preferred => {
                    let preferred = partition.replicas[0];
                    if partition.leader == preferred {
                        ElectionResult::NotNeeded
                    } else if partition.isr.contains(&preferred) && unfenced.contains(&preferred) {
                        let isr = partition.isr.clone();
                        change_partition(partition, preferred, isr, min_isr);
                        ElectionResult::Elected
                    } else {
                        ElectionResult::PreferredNotAvailable
                    }
                }
                ElectionType::Unclean => {
                    if partition.leader != -1 {
                        ElectionResult::NotNeeded
                    } else {
                        let isr = partition.isr.clone();
                        if let Some((clean, isr)) = elect_clean(partition, &isr, &unfenced) {
                            change_partition(partition, clean, isr, min_isr);
                            ElectionResult::Elected
                        } else {
                            match elect_unclean(&partition.replicas, &unfenced) {
                                -1 => ElectionResult::NoEligibleLeader,
                                leader => {
                                    tracing::warn!(
                                        %topic,
                                        partition = index,
                                        leader,
                                        "unclean leader election asked for: records only the old ISR {:?} had may be lost",
                                        partition.isr
                                    );
                                    change_partition(partition, leader, vec![leader], min_isr);
                                    partition.elr.clear();
                                    ElectionResult::Elected
                                }
                            }
                        }
                    }
                }
            };
            (topic, index, result)
        })
        .collect()
}

/// Kafka's clean election: the first replica in assignment order that is
/// in the ISR and unfenced, or `-1`.
fn elect(replicas: &[NodeId], isr: &[NodeId], unfenced: &BTreeSet<NodeId>) -> NodeId {
    replicas
        .iter()
        .copied()
        .find(|r| isr.contains(r) && unfenced.contains(r))
        .unwrap_or(-1)
}

/// Unclean election: the first unfenced replica, in sync or not.
fn elect_unclean(replicas: &[NodeId], unfenced: &BTreeSet<NodeId>) -> NodeId {
    replicas
        .iter()
        .copied()
        .find(|r| unfenced.contains(r))
        .unwrap_or(-1)
}

/// Places `count` partitions starting at `first_partition` on the
/// unfenced brokers round-robin, as Kafka's assignment does: partition `p`
/// starts at broker `(start + p) % n` of the broker list and takes the
/// brokers after it. Kafka picks `start` at random; here it comes from the
/// topic id, which is random but fixed in the command, so the placement is
/// deterministic and still spreads leaders of different topics over
/// different brokers.
///
/// When any broker has a rack, the list alternates racks (Kafka's
/// rack-alternated broker list: the first broker of each rack, then the
/// second of each, …) and a partition's followers are taken from racks it
/// has no replica in yet while there are such racks, so that losing one
/// rack loses no partition with a replication factor above the number of
/// replicas per rack.
fn place_replicas(
    image: &MetadataImage,
    topic_id: &TopicId,
    first_partition: i32,
    count: i32,
    replication_factor: i16,
) -> Vec<Vec<NodeId>> {
    // Fenced brokers get no new replicas: they may be gone for good.
    let unfenced: Vec<&BrokerRegistration> = image.unfenced_brokers().collect();
    let brokers = rack_alternated(&unfenced);
    let n = brokers.len();
    let replication_factor = usize::try_from(replication_factor).expect("checked");
    assert!(replication_factor >= 1);
    assert!(replication_factor <= n);
    let rack_aware = unfenced.iter().any(|b| b.rack.is_some());
    let start = (topic_id.as_u128() % n as u128) as usize;
    (first_partition..first_partition + count)
        .map(|p| {
            let p = usize::try_from(p).expect("partition indexes are not negative");
            let leader = (start + p) % n;
            if !rack_aware {
                return (0..replication_factor)
                    .map(|r| brokers[(leader + r) % n].0)
                    .collect();
            }
            let mut replicas = vec![brokers[leader].0];
            let mut racks = BTreeSet::from([brokers[leader].1]);
            // First pass: brokers of racks not used yet; second: any.
            for any_rack in [false, true] {
                for step in 1..n {
                    if replicas.len() == replication_factor {
                        break;
                    }
                    let (id, rack) = brokers[(leader + step) % n];
                    if replicas.contains(&id) || (!any_rack && racks.contains(&rack)) {
                        continue;
                    }
                    replicas.push(id);
                    racks.insert(rack);
                }
            }
            assert_eq!(replicas.len(), replication_factor);
            replicas
        })
        .collect()
}

/// The brokers in Kafka's rack-alternated order: racks in name order
/// (brokers without a rack as a rack of their own), taking one broker of
/// each in turn. Node-id order when no broker has a rack.
fn rack_alternated<'a>(brokers: &[&'a BrokerRegistration]) -> Vec<(NodeId, Option<&'a str>)> {
    let mut by_rack: BTreeMap<Option<&str>, Vec<NodeId>> = BTreeMap::new();
    for broker in brokers {
        by_rack
            .entry(broker.rack.as_deref())
            .or_default()
            .push(broker.node_id);
    }
    let deepest = by_rack.values().map(Vec::len).max().unwrap_or(0);
    (0..deepest)
        .flat_map(|i| {
            by_rack
                .iter()
                .filter_map(move |(rack, ids)| ids.get(i).map(|id| (*id, *rack)))
        })
        .collect()
}

fn check_partition_count(partitions: i32) -> Result<(), MetadataError> {
    if partitions < 1 {
        return Err(MetadataError::InvalidPartitions(format!(
            "number of partitions must be at least 1, got {partitions}"
        )));
    }
    if partitions > PARTITIONS_PER_TOPIC_MAX {
        return Err(MetadataError::InvalidPartitions(format!(
            "number of partitions {partitions} is over the limit of {PARTITIONS_PER_TOPIC_MAX}"
        )));
    }
    Ok(())
}

fn check_replication_factor(
    image: &MetadataImage,
    replication_factor: i16,
) -> Result<(), MetadataError> {
    if replication_factor < 1 {
        return Err(MetadataError::InvalidReplicationFactor(format!(
            "replication factor must be at least 1, got {replication_factor}"
        )));
    }
    if replication_factor > REPLICATION_FACTOR_MAX {
        return Err(MetadataError::InvalidReplicationFactor(format!(
            "replication factor {replication_factor} is over the limit of {REPLICATION_FACTOR_MAX}"
        )));
    }
    let brokers = image.unfenced_brokers().count();
    if usize::try_from(replication_factor).expect("positive") > brokers {
        return Err(MetadataError::InvalidReplicationFactor(format!(
            "replication factor {replication_factor} is larger than the {brokers} available (unfenced) brokers"
        )));
    }
    Ok(())
}

/// Checks explicit replica lists: one per partition, each as long as the
/// replication factor, without repeats, naming only registered brokers.
fn check_assignments(
    image: &MetadataImage,
    assignments: &[Vec<NodeId>],
    partitions: i32,
    replication_factor: i16,
) -> Result<(), MetadataError> {
    if usize::try_from(partitions).ok() != Some(assignments.len()) {
        return Err(MetadataError::InvalidReplicaAssignment(format!(
            "{} replica lists given for {partitions} partitions",
            assignments.len()
        )));
    }
    for (i, replicas) in assignments.iter().enumerate() {
        if usize::try_from(replication_factor).ok() != Some(replicas.len()) {
            return Err(MetadataError::InvalidReplicaAssignment(format!(
                "partition {i} has {} replicas; the replication factor is {replication_factor}",
                replicas.len()
            )));
        }
        let distinct: BTreeSet<_> = replicas.iter().collect();
        if distinct.len() != replicas.len() {
            return Err(MetadataError::InvalidReplicaAssignment(format!(
                "partition {i} lists a replica twice: {replicas:?}"
            )));
        }
        if let Some(unknown) = replicas.iter().find(|r| !image.brokers.contains_key(r)) {
            return Err(MetadataError::InvalidReplicaAssignment(format!(
                "partition {i} names broker {unknown}, which is not registered"
            )));
        }
    }
    Ok(())
}

fn partition_count(topic: &TopicState) -> i32 {
    i32::try_from(topic.partitions.len()).expect("bounded by PARTITIONS_PER_TOPIC_MAX")
}

fn replication_factor_of(topic: &TopicState) -> i16 {
    i16::try_from(topic.partitions[0].replicas.len()).expect("bounded by REPLICATION_FACTOR_MAX")
}

fn unify_dots(name: &str) -> String {
    name.replace('.', "_")
}

/// `TopicName` comes from `rill-types`, which has no serde; it is stored as
/// its string and checked again when read back.
mod topic_name_serde {
    use rill_types::TopicName;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(name: &TopicName, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(name.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<TopicName, D::Error> {
        let name = String::deserialize(deserializer)?;
        TopicName::new(name).map_err(serde::de::Error::custom)
    }
}
