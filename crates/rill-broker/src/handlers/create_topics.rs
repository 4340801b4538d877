//! CreateTopics (key 19): new topics through the controller, with partition
//! counts, replica assignments and configs; validate-only checks without
//! committing.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::create_topics_request::CreatableTopic;
use rill_protocol::kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use rill_protocol::kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};

use super::{create_topic, describe_configs, CreateMode, CreatedTopic, KafkaError};
use crate::server::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    _version: i16,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    // A name listed twice is an error for both entries, as in Kafka.
    let mut seen = HashSet::new();
    let duplicated: HashSet<String> = request
        .topics
        .iter()
        .map(|t| t.name.0.as_str().to_string())
        .filter(|name| !seen.insert(name.clone()))
        .collect();
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.as_str().to_string();
        let result = CreatableTopicResult::default()
            .with_name(topic.name.clone())
            .with_num_partitions(-1)
            .with_replication_factor(-1);
        // What a validate-only request lists as the new topic's configs.
        let requested_configs: BTreeMap<String, String> = topic
            .configs
            .iter()
            .filter_map(|c| Some((c.name.as_str().to_string(), c.value.as_ref()?.to_string())))
            .collect();
        let outcome = if duplicated.contains(&name) {
            Err(KafkaError::with_message(
                ResponseError::InvalidRequest,
                format!("topic '{name}' appears more than once in the request"),
            ))
        } else {
            create(
                broker,
                &name,
                topic,
                request.validate_only,
                request.timeout_ms,
            )
            .await
        };
        results.push(match outcome {
            Ok(created) => result
                .with_topic_id(created.topic_id)
                .with_num_partitions(created.partitions)
                .with_replication_factor(created.replication_factor)
                .with_configs(Some(if request.validate_only {
                    describe_configs::topic_configs_as_created(broker, &requested_configs)
                } else {
                    describe_configs::created_topic_configs(broker, &name)
                })),
            Err(error) => result
                .with_error_code(error.code)
                .with_error_message(error.message_bytes()),
        });
    }
    CreateTopicsResponse::default().with_topics(results)
}

async fn create(
    broker: &Arc<Broker>,
    name: &str,
    topic: CreatableTopic,
    validate_only: bool,
    timeout_ms: i32,
) -> Result<CreatedTopic, KafkaError> {
    let mut configs = BTreeMap::new();
    for config in topic.configs {
        let Some(value) = config.value else {
            return Err(KafkaError::with_message(
                ResponseError::InvalidConfig,
                format!("config {} has no value", config.name.as_str()),
            ));
        };
        configs.insert(config.name.as_str().to_string(), value.as_str().to_string());
    }
    let assignments = if topic.assignments.is_empty() {
        None
    } else {
        if topic.num_partitions != -1 || topic.replication_factor != -1 {
            return Err(KafkaError::with_message(
                ResponseError::InvalidRequest,
                "both replica assignments and a partition count or replication factor were given",
            ));
        }
        let mut assignments = topic.assignments;
        assignments.sort_by_key(|a| a.partition_index);
        if assignments
            .iter()
            .enumerate()
            .any(|(i, a)| a.partition_index != i as i32)
        {
            return Err(KafkaError::with_message(
                ResponseError::InvalidReplicaAssignment,
                "replica assignments must cover partitions 0..n once each",
            ));
        }
        Some(
            assignments
                .into_iter()
                .map(|a| a.broker_ids.into_iter().map(|id| id.0).collect())
                .collect::<Vec<Vec<i32>>>(),
        )
    };
    create_topic(
        broker,
        name,
        topic.num_partitions,
        topic.replication_factor,
        configs,
        assignments,
        if validate_only {
            CreateMode::ValidateOnly
        } else {
            // The request's own timeout bounds the wait for the quorum
            // (REQUEST_TIMED_OUT past it); at least a second, so a client's
            // 0 still gets an answer from a healthy quorum.
            CreateMode::Create {
                timeout: Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0).max(1000)),
            }
        },
    )
    .await
}
