//! Metadata (key 3): brokers, the controller, and topics with their
//! partitions, leaders, replicas and ISR, from this node's metadata image.
//! An unknown topic is created when the request and
//! `auto.create.topics.enable` allow it.

use std::collections::BTreeMap;
use std::sync::Arc;

use rill_controller::{MetadataImage, PartitionState, TopicState};
use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use rill_protocol::kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse};
use rill_types::TopicName;

use super::describe_cluster::CLUSTER_OPERATIONS_ALL;
use super::{create_topic, str_bytes, wire_topic, KafkaError};
use crate::server::Broker;

/// Kafka's internal topics.
pub(super) const INTERNAL_TOPICS: [&str; 2] = ["__consumer_offsets", "__transaction_state"];

/// Kafka's "authorized operations were not asked for" value.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

/// Every operation on a topic (Kafka's `AclEntry.supportedOperations(TOPIC)`:
/// READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, DESCRIBE_CONFIGS,
/// ALTER_CONFIGS) as a bit field of `AclOperation` codes (KIP-430). rill has
/// no authoriser yet, so all are allowed.
pub(super) const TOPIC_OPERATIONS_ALL: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);

pub async fn handle(
    broker: &Arc<Broker>,
    version: i16,
    request: MetadataRequest,
) -> MetadataResponse {
    // v0 has no null array: an empty list means every topic. From v1 null
    // means every topic and empty means none.
    let requested = match request.topics {
        Some(topics) if version == 0 && topics.is_empty() => None,
        other => other,
    };
    let allow_auto_create = (version < 4 || request.allow_auto_topic_creation)
        && broker.config.auto_create_topics_enable;

    let mut topics: Vec<MetadataResponseTopic> = match requested {
        None => {
            let image = broker.controller.image();
            image
                .topics()
                .map(|topic| describe(&image, topic))
                .collect()
        }
        Some(requested) => {
            let mut topics = Vec::with_capacity(requested.len());
            for entry in requested {
                let topic = match entry.name {
                    Some(name) => by_name(broker, name.0.as_str(), allow_auto_create).await,
                    None => by_id(&broker.controller.image(), entry.topic_id),
                };
                topics.push(topic);
            }
            topics
        }
    };

    // KIP-430, as Kafka's `handleTopicMetadataRequest`: every topic asked
    // for by name (known or not) gets its operations; an unknown topic id
    // keeps "not asked for". Metadata answers for the cluster only in
    // v8..=10; from v11 DescribeCluster does.
    if version >= 8 && request.include_topic_authorized_operations {
        for topic in topics.iter_mut().filter(|t| t.name.is_some()) {
            topic.topic_authorized_operations = TOPIC_OPERATIONS_ALL;
        }
    }
    let cluster_operations =
        if (8..=10).contains(&version) && request.include_cluster_authorized_operations {
            CLUSTER_OPERATIONS_ALL
        } else {
            AUTHORIZED_OPERATIONS_OMITTED
        };

    let image = broker.controller.image();
    // Fenced brokers are not offered to clients (KIP-631).
    let brokers = image
        .unfenced_brokers()
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.node_id))
                .with_host(str_bytes(b.host.clone()))
                .with_port(i32::from(b.port))
                .with_rack(b.rack.clone().map(str_bytes))
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(str_bytes(broker.cluster_id.clone())))
        .with_controller_id(BrokerId(broker.controller_id_for_clients()))
        .with_topics(topics)
        .with_cluster_authorized_operations(cluster_operations)
}

async fn by_name(
    broker: &Arc<Broker>,
    name: &str,
    allow_auto_create: bool,
) -> MetadataResponseTopic {
    let image = broker.controller.image();
    if let Some(topic) = image.topic(name) {
        return describe(&image, topic);
    }
    if TopicName::new(name).is_err() {
        return error_topic(name, KafkaError::new(ResponseError::InvalidTopicException));
    }
    // Internal topics are made by their coordinators with their own
    // settings (50 compacted partitions for `__consumer_offsets`), never as
    // an ordinary auto-created topic.
    if !allow_auto_create || INTERNAL_TOPICS.contains(&name) {
        return error_topic(
            name,
            KafkaError::new(ResponseError::UnknownTopicOrPartition),
        );
    }
    match create_topic(
        broker,
        name,
        -1,
        -1,
        BTreeMap::new(),
        None,
        super::CreateMode::Create {
            timeout: super::AUTO_CREATE_TIMEOUT,
        },
    )
    .await
    {
        Ok(_) => {}
        // Another request created it first: fine.
        Err(error) if error.code == ResponseError::TopicAlreadyExists.code() => {}
        Err(error) => return error_topic(name, error),
    }
    let image = broker.controller.image();
    match image.topic(name) {
        Some(topic) => describe(&image, topic),
        // Deleted again in between.
        None => error_topic(
            name,
            KafkaError::new(ResponseError::UnknownTopicOrPartition),
        ),
    }
}

fn by_id(image: &MetadataImage, topic_id: uuid::Uuid) -> MetadataResponseTopic {
    match image.topic_by_id(&topic_id) {
        Some(topic) => describe(image, topic),
        // No name (null), as in Kafka.
        None => MetadataResponseTopic::default()
            .with_name(None)
            .with_error_code(ResponseError::UnknownTopicId.code())
            .with_topic_id(topic_id)
            .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED),
    }
}

fn error_topic(name: &str, error: KafkaError) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(error.code)
        .with_name(Some(wire_topic(name)))
        .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED)
}

fn describe(image: &MetadataImage, topic: &TopicState) -> MetadataResponseTopic {
    let partitions = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(index, p)| {
            MetadataResponsePartition::default()
                .with_error_code(partition_error(p))
                .with_partition_index(index as i32)
                .with_leader_id(BrokerId(p.leader))
                .with_leader_epoch(p.leader_epoch)
                .with_replica_nodes(broker_ids(&p.replicas))
                .with_isr_nodes(broker_ids(&p.isr))
                .with_offline_replicas(offline_replicas(image, p))
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(wire_topic(topic.name.as_str())))
        .with_topic_id(topic.topic_id)
        .with_is_internal(INTERNAL_TOPICS.contains(&topic.name.as_str()))
        .with_partitions(partitions)
        .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED)
}

pub(super) fn broker_ids(ids: &[i32]) -> Vec<BrokerId> {
    ids.iter().copied().map(BrokerId).collect()
}

/// A partition's replicas on brokers that are fenced or gone.
pub(super) fn offline_replicas(image: &MetadataImage, p: &PartitionState) -> Vec<BrokerId> {
    let offline: Vec<i32> = p
        .replicas
        .iter()
        .copied()
        .filter(|id| image.broker(*id).is_none_or(|b| b.fenced))
        .collect();
    broker_ids(&offline)
}

/// LEADER_NOT_AVAILABLE for a partition without a leader, else none.
pub(super) fn partition_error(p: &PartitionState) -> i16 {
    if p.leader < 0 {
        ResponseError::LeaderNotAvailable.code()
    } else {
        0
    }
}
