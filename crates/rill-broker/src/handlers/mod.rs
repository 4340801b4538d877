//! One module per Kafka API, each with the same shape: a `handle` function
//! that takes the broker, the request version and the decoded request body,
//! and returns the response body (Produce, Fetch and the group APIs that
//! write to `__consumer_offsets` or wait for a rebalance return what they
//! still have to wait for, having done in `handle` itself everything that
//! must happen in request order; see `connection`).
//!
//! `configs` is not an API: it holds what DescribeConfigs, AlterConfigs,
//! IncrementalAlterConfigs and CreateTopics share about config resources.
//!
//! Handlers never fail as a whole: every error a client can cause becomes
//! the Kafka error code in the response, per topic or partition where the
//! response has room for one.

pub mod add_offsets_to_txn;
pub mod add_partitions_to_txn;
pub mod alter_configs;
pub mod alter_partition_reassignments;
pub mod api_versions;
pub mod configs;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_log_dirs;
pub mod describe_producers;
pub mod describe_quorum;
pub mod describe_topic_partitions;
pub mod describe_transactions;
pub mod elect_leaders;
pub mod end_txn;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod list_transactions;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod sync_group;
pub mod txn_offset_commit;
pub mod txn_verification;
pub mod write_txn_markers;

use std::collections::BTreeMap;
use std::sync::Arc;

use rill_controller::{MetadataCommand, TopicId};
use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::TopicName as WireTopicName;
use rill_protocol::kafka_protocol::protocol::StrBytes;
use rill_types::NodeId;

use crate::errors::controller_error;
use crate::replica::Partition;
use crate::server::Broker;

/// A Kafka error: its code and, where the response has room, a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaError {
    pub code: i16,
    pub message: Option<String>,
}

impl KafkaError {
    pub fn new(kind: ResponseError) -> Self {
        Self {
            code: kind.code(),
            message: None,
        }
    }

    pub fn with_message(kind: ResponseError, message: impl Into<String>) -> Self {
        Self {
            code: kind.code(),
            message: Some(message.into()),
        }
    }

    pub fn message_bytes(&self) -> Option<StrBytes> {
        self.message.clone().map(StrBytes::from_string)
    }
}

pub fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

pub fn wire_topic(name: &str) -> WireTopicName {
    WireTopicName(str_bytes(name))
}

/// A topic [`create_topic`] made (or, validate-only, would make).
#[derive(Debug, Clone, Copy)]
pub struct CreatedTopic {
    pub topic_id: TopicId,
    pub partitions: i32,
    pub replication_factor: i16,
}

/// What [`create_topic`] does with a valid topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateMode {
    /// Check it only (CreateTopics' `validate_only`).
    ValidateOnly,
    /// Create it, waiting at most this long for the quorum
    /// (REQUEST_TIMED_OUT past it).
    Create { timeout: std::time::Duration },
}

/// Asks the controller to create a topic and waits until this node's
/// replicas exist. Without `assignments`, `partitions` and
/// `replication_factor` of -1 take the broker's defaults; with them, both
/// come from the assignments.
pub async fn create_topic(
    broker: &Arc<Broker>,
    name: &str,
    partitions: i32,
    replication_factor: i16,
    configs: BTreeMap<String, String>,
    assignments: Option<Vec<Vec<NodeId>>>,
    mode: CreateMode,
) -> Result<CreatedTopic, KafkaError> {
    let (partitions, replication_factor) = match &assignments {
        Some(assignments) => (
            assignments.len() as i32,
            assignments
                .first()
                .map_or(0, |replicas| replicas.len() as i16),
        ),
        None => (
            if partitions == -1 {
                broker.config.num_partitions
            } else {
                partitions
            },
            if replication_factor == -1 {
                broker.config.default_replication_factor
            } else {
                replication_factor
            },
        ),
    };
    let created = CreatedTopic {
        topic_id: new_topic_id(),
        partitions,
        replication_factor,
    };
    let command = MetadataCommand::CreateTopic {
        name: name.to_string(),
        topic_id: created.topic_id,
        partitions,
        replication_factor,
        configs,
        assignments,
    };
    let timeout = match mode {
        CreateMode::Create { timeout } => timeout,
        CreateMode::ValidateOnly => {
            return rill_controller::check(&broker.controller.image(), &command)
                .map(|()| created)
                .map_err(|rejection| KafkaError {
                    code: crate::errors::metadata_error_code(&rejection),
                    message: Some(rejection.to_string()),
                });
        }
    };
    broker
        .controller
        .submit_within(command, timeout)
        .await
        .map_err(|error| {
            let (code, message) = controller_error(&error);
            KafkaError {
                code,
                message: Some(message),
            }
        })?;
    sync_metadata(broker).await;
    Ok(created)
}

/// How long a topic created on a client's behalf (auto-creation,
/// `__consumer_offsets`) may wait for the quorum: less than clients'
/// request timeouts, so they get an answer rather than time out.
pub const AUTO_CREATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Applies the controller's latest image to the replicas before answering,
/// so the client's next request finds what this one changed.
pub async fn sync_metadata(broker: &Arc<Broker>) {
    let broker = Arc::clone(broker);
    if let Err(error) = tokio::task::spawn_blocking(move || broker.sync_metadata()).await {
        tracing::error!(%error, "applying metadata failed");
    }
}

/// A new topic id. Kafka never hands out the all-zero id (it means "no id"
/// on the wire), nor one whose base64 form starts with '-'.
fn new_topic_id() -> TopicId {
    loop {
        let id = uuid::Uuid::new_v4();
        if !id.is_nil() && id.as_bytes()[0] >> 2 != 62 {
            return id;
        }
    }
}

/// Checks a client's `current_leader_epoch` against the partition's, as
/// Kafka does for Fetch, ListOffsets and OffsetForLeaderEpoch: -1 means the
/// client does not know it.
pub fn check_leader_epoch(requested: i32, current: i32) -> Result<(), KafkaError> {
    if requested < 0 || requested == current {
        Ok(())
    } else if requested < current {
        Err(KafkaError::new(ResponseError::FencedLeaderEpoch))
    } else {
        Err(KafkaError::new(ResponseError::UnknownLeaderEpoch))
    }
}

/// KIP-951's hint for a request refused because this broker does not lead
/// the partition (NOT_LEADER_OR_FOLLOWER, FENCED_LEADER_EPOCH): the leader
/// and leader epoch the image names, if that leader is offered to clients,
/// so the client can go there before its next metadata answer (Produce
/// v10+, Fetch v16+).
pub fn current_leader(
    image: &rill_controller::MetadataImage,
    topic: &str,
    index: i32,
) -> Option<(NodeId, i32)> {
    let state = image.topic(topic)?.partition(index)?;
    image
        .broker(state.leader)
        .is_some_and(|b| !b.fenced)
        .then_some((state.leader, state.leader_epoch))
}

/// Whether `code` is one that [`current_leader`] hints for.
pub fn is_leadership_error(code: i16) -> bool {
    code == ResponseError::NotLeaderOrFollower.code()
        || code == ResponseError::FencedLeaderEpoch.code()
}

/// This node's replica of a partition, for a request that needs its log:
/// UNKNOWN_TOPIC_OR_PARTITION when the cluster has no such partition,
/// NOT_LEADER_OR_FOLLOWER when it has one but this node holds no replica
/// (as Kafka's `ReplicaManager` distinguishes them).
pub fn hosted_partition(
    broker: &Broker,
    topic: &str,
    index: i32,
) -> Result<Arc<Partition>, KafkaError> {
    if let Some(partition) = broker.replicas.get(topic, index) {
        return Ok(partition);
    }
    let exists = broker
        .controller
        .image()
        .topic(topic)
        .is_some_and(|t| t.partition(index).is_some());
    Err(KafkaError::new(if exists {
        ResponseError::NotLeaderOrFollower
    } else {
        ResponseError::UnknownTopicOrPartition
    }))
}
