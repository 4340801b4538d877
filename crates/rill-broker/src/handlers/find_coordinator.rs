//! FindCoordinator (key 10), v0..=6: which node coordinates a group.
//!
//! The coordinator of a group is the leader of its `__consumer_offsets`
//! partition (see `crate::group`). The first FindCoordinator makes that
//! topic (50 compacted partitions by default), as Kafka does. v4+ asks for
//! many keys at once and gets one answer per key; v0..=3 ask for one.
//!
//! Only group keys (type 0) are served: rill has no transaction
//! coordinator, so a transactional key (type 1) is refused with
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED, final in every client (see
//! `init_producer_id`), and a share-group key (type 2) with INVALID_REQUEST.

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
    match key_type {
        KEY_TYPE_GROUP => {}
        KEY_TYPE_TRANSACTION => {
            return Err(KafkaError::with_message(
                ResponseError::TransactionalIdAuthorizationFailed,
                "this broker has no transaction coordinator",
            ))
        }
        _ => {
            return Err(KafkaError::with_message(
                ResponseError::InvalidRequest,
                format!("unsupported coordinator key type {key_type}"),
            ))
        }
    }
    if key.is_empty() {
        return Err(KafkaError::new(ResponseError::InvalidRequest));
    }
    let partitions = offsets_topic_partitions(broker).await?;
    let index = partition_for(key, partitions);
    let image = broker.controller.image();
    let leader = image
        .topic(OFFSETS_TOPIC)
        .and_then(|t| t.partition(index))
        .map(|p| p.leader)
        .and_then(|leader| image.broker(leader))
        .filter(|node| !node.fenced);
    match leader {
        Some(node) => Ok((node.node_id, node.host.clone(), i32::from(node.port))),
        None => Err(KafkaError::new(ResponseError::CoordinatorNotAvailable)),
    }
}

/// The partition count of `__consumer_offsets`, making the topic first if
/// it does not exist. A topic someone made by hand is used as it is.
async fn offsets_topic_partitions(broker: &Arc<Broker>) -> Result<i32, KafkaError> {
    let existing = |broker: &Broker| {
        broker
            .controller
            .image()
            .topic(OFFSETS_TOPIC)
            .map(|t| t.partitions.len() as i32)
            .filter(|count| *count > 0)
    };
    if let Some(count) = existing(broker) {
        return Ok(count);
    }
    let _creating = broker.groups.creating_lock().lock().await;
    if let Some(count) = existing(broker) {
        return Ok(count);
    }
    let config = &broker.groups.config;
    let brokers = broker.controller.image().unfenced_brokers().count().max(1);
    let replication_factor = config
        .offsets_topic_replication_factor
        .min(i16::try_from(brokers).unwrap_or(i16::MAX));
    let configs = BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("compression.type".to_string(), "producer".to_string()),
        (
            "segment.bytes".to_string(),
            config.offsets_topic_segment_bytes.to_string(),
        ),
    ]);
    match create_topic(
        broker,
        OFFSETS_TOPIC,
        config.offsets_topic_partitions,
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
                partitions = created.partitions,
                replication_factor, "created __consumer_offsets"
            );
            Ok(created.partitions)
        }
        Err(error) => {
            // Someone else made it meanwhile, or the controller could not:
            // either way the client asks again.
            warn!(code = error.code, message = ?error.message, "creating __consumer_offsets failed");
            existing(broker).ok_or(KafkaError::new(ResponseError::CoordinatorNotAvailable))
        }
    }
}
