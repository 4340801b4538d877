//! FindCoordinator (key 10), v0..=6: which node coordinates a group or a
//! transactional id.
//!
//! The coordinator of a group is the leader of its `__consumer_offsets`
//! partition (see `crate::group`), that of a transactional id (key type 1)
//! the leader of its `__transaction_state` partition (see `crate::txn`).
//! The first FindCoordinator of each kind makes its topic (50 compacted
//! partitions by default), as Kafka does. v4+ asks for many keys at once
//! and gets one answer per key; v0..=3 ask for one. A share-group key
//! (type 2) is refused with INVALID_REQUEST.

use std::collections::BTreeMap;
use std::sync::Arc;

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::find_coordinator_response::Coordinator;
use rill_protocol::kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, FindCoordinatorResponse,
};
use tracing::{info, warn};

use super::{create_topic, str_bytes, KafkaError};
use crate::group::{partition_for, OFFSETS_TOPIC};
use crate::server::Broker;
use crate::txn::TRANSACTION_STATE_TOPIC;

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

pub async fn handle(
    broker: &Arc<Broker>,
    version: i16,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let keys: Vec<String> = if version >= 4 {
        request
            .coordinator_keys
            .iter()
            .map(|k| k.as_str().to_string())
            .collect()
    } else {
        vec![request.key.as_str().to_string()]
    };
    let mut coordinators = Vec::with_capacity(keys.len());
    for key in keys {
        let found = find(broker, request.key_type, &key).await;
        let coordinator = match found {
            Ok((node_id, host, port)) => Coordinator::default()
                .with_key(str_bytes(key))
                .with_node_id(BrokerId(node_id))
                .with_host(str_bytes(host))
                .with_port(port),
            Err(error) => Coordinator::default()
                .with_key(str_bytes(key))
                .with_node_id(BrokerId(-1))
                .with_host(str_bytes(""))
                .with_port(-1)
                .with_error_code(error.code)
                .with_error_message(error.message_bytes()),
        };
        coordinators.push(coordinator);
    }
    if version >= 4 {
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let one = coordinators.pop().expect("one key before v4");
    FindCoordinatorResponse::default()
        .with_error_code(one.error_code)
        .with_error_message(one.error_message)
        .with_node_id(one.node_id)
        .with_host(one.host)
        .with_port(one.port)
}

async fn find(
    broker: &Arc<Broker>,
    key_type: i8,
    key: &str,
) -> Result<(i32, String, i32), KafkaError> {
    let topic = match key_type {
        KEY_TYPE_GROUP => OFFSETS_TOPIC,
        KEY_TYPE_TRANSACTION => TRANSACTION_STATE_TOPIC,
        _ => {
            return Err(KafkaError::with_message(
                ResponseError::InvalidRequest,
                format!("unsupported coordinator key type {key_type}"),
            ))
        }
    };
    if key.is_empty() {
        return Err(KafkaError::new(ResponseError::InvalidRequest));
    }
    let partitions = if key_type == KEY_TYPE_GROUP {
        offsets_topic_partitions(broker).await?
    } else {
        transaction_state_partitions(broker).await?
    };
    let index = partition_for(key, partitions);
    let image = broker.controller.image();
    let leader = image
        .topic(topic)
        .and_then(|t| t.partition(index))
        .map(|p| p.leader)
        .and_then(|leader| image.broker(leader))
        .filter(|node| !node.fenced);
    match leader {
        Some(node) => Ok((node.node_id, node.host.clone(), i32::from(node.port))),
        None => Err(KafkaError::new(ResponseError::CoordinatorNotAvailable)),
    }
}

/// A coordinator's internal topic, as it is made on first use.
struct InternalTopic {
    partitions: i32,
    /// Capped at the unfenced brokers there are, so that a single node
    /// can make it.
    replication_factor: i16,
    /// Beyond `cleanup.policy=compact` and `compression.type=producer`.
    configs: Vec<(&'static str, String)>,
}

/// The partition count of `name`, a coordinator's internal topic, making
/// it first as `wanted` says (once, under `creating`, however many lookups
/// find it missing) if it does not exist. A topic someone made by hand is
/// used as it is.
async fn internal_topic_partitions(
    broker: &Arc<Broker>,
    name: &'static str,
    creating: &tokio::sync::Mutex<()>,
    wanted: impl FnOnce() -> InternalTopic,
) -> Result<i32, KafkaError> {
    let existing = |broker: &Broker| {
        broker
            .controller
            .image()
            .topic(name)
            .map(|t| t.partitions.len() as i32)
            .filter(|count| *count > 0)
    };
    if let Some(count) = existing(broker) {
        return Ok(count);
    }
    let _creating = creating.lock().await;
    if let Some(count) = existing(broker) {
        return Ok(count);
    }
    let topic = wanted();
    let brokers = broker.controller.image().unfenced_brokers().count().max(1);
    let replication_factor = topic
        .replication_factor
        .min(i16::try_from(brokers).unwrap_or(i16::MAX));
    let mut configs = BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("compression.type".to_string(), "producer".to_string()),
    ]);
    configs.extend(topic.configs.into_iter().map(|(k, v)| (k.to_string(), v)));
    match create_topic(
        broker,
        name,
        topic.partitions,
        replication_factor,
        configs,
        None,
        super::CreateMode::Create {
            timeout: super::AUTO_CREATE_TIMEOUT,
        },
    )
    .await
    {
        Ok(created) => {
            info!(
                topic = name,
                partitions = created.partitions,
                replication_factor,
                "created a coordinator's internal topic"
            );
            Ok(created.partitions)
        }
        Err(error) => {
            // Someone else made it meanwhile, or the controller could not:
            // either way the client asks again.
            warn!(topic = name, code = error.code, message = ?error.message, "creating a coordinator's internal topic failed");
            existing(broker).ok_or(KafkaError::new(ResponseError::CoordinatorNotAvailable))
        }
    }
}

/// The partition count of `__consumer_offsets`, making it first if needed.
async fn offsets_topic_partitions(broker: &Arc<Broker>) -> Result<i32, KafkaError> {
    let config = &broker.groups.config;
    let wanted = || InternalTopic {
        partitions: config.offsets_topic_partitions,
        replication_factor: config.offsets_topic_replication_factor,
        configs: vec![(
            "segment.bytes",
            config.offsets_topic_segment_bytes.to_string(),
        )],
    };
    internal_topic_partitions(broker, OFFSETS_TOPIC, broker.groups.creating_lock(), wanted).await
}

/// The partition count of `__transaction_state`, making it first if
/// needed, with Kafka's `transaction.state.log.*` settings
/// (`min.insync.replicas` capped at the replication factor the topic
/// gets, so that a single node can write it).
async fn transaction_state_partitions(broker: &Arc<Broker>) -> Result<i32, KafkaError> {
    let config = &broker.txns.config;
    let brokers = broker.controller.image().unfenced_brokers().count().max(1);
    let replication_factor = config
        .state_replication_factor
        .min(i16::try_from(brokers).unwrap_or(i16::MAX));
    let wanted = || InternalTopic {
        partitions: config.state_partitions,
        replication_factor,
        configs: vec![
            ("segment.bytes", config.state_segment_bytes.to_string()),
            (
                "min.insync.replicas",
                config
                    .state_min_isr
                    .min(i32::from(replication_factor))
                    .to_string(),
            ),
        ],
    };
    internal_topic_partitions(
        broker,
        TRANSACTION_STATE_TOPIC,
        broker.txns.creating_lock(),
        wanted,
    )
    .await
}
