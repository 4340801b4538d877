//! CreatePartitions (key 37), v0–v3: grows topics to a new partition
//! count through the controller, with the new replicas placed by the
//! controller or as the request lists them; `validate_only` checks without
//! committing. The new partitions' logs exist before the answer.
//!
//! Errors as in Kafka's controller (`ReplicationControlManager
//! .createPartitions`, `ControllerApis.createPartitions`): a name listed
//! twice is INVALID_REQUEST ("Duplicate topic name.", one result per name);
//! an unknown topic UNKNOWN_TOPIC_OR_PARTITION; a count that is not an
//! increase INVALID_PARTITIONS; assignments that do not match the new
//! partitions INVALID_REPLICA_ASSIGNMENT. Messages are in Kafka's words,
//! which tools such as `kafka-topics.sh` print as they are.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rill_controller::MetadataCommand;
use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use rill_protocol::kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use rill_protocol::kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use super::{sync_metadata, KafkaError};
use crate::errors::controller_error;
use crate::server::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    _version: i16,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut mentions: HashMap<String, usize> = HashMap::new();
    for topic in &request.topics {
        *mentions.entry(topic.name.to_string()).or_default() += 1;
    }
    let mut answered_duplicates = HashSet::new();
    let mut results = Vec::with_capacity(request.topics.len());
    let mut committed = false;
    for topic in request.topics {
        let name = topic.name.to_string();
        let outcome = if mentions[&name] > 1 {
            if !answered_duplicates.insert(name.clone()) {
                continue;
            }
            Err(KafkaError::with_message(
                ResponseError::InvalidRequest,
                "Duplicate topic name.",
            ))
        } else {
            let outcome = grow(broker, &name, &topic, request.validate_only).await;
            committed |= outcome.is_ok() && !request.validate_only;
            outcome
        };
        let result = CreatePartitionsTopicResult::default()
            .with_name(topic.name)
            .with_error_message(None);
        results.push(match outcome {
            Ok(()) => result,
            Err(error) => result
                .with_error_code(error.code)
                .with_error_message(error.message_bytes()),
        });
    }
    if committed {
        sync_metadata(broker).await;
    }
    CreatePartitionsResponse::default().with_results(results)
}

async fn grow(
    broker: &Arc<Broker>,
    name: &str,
    topic: &CreatePartitionsTopic,
    validate_only: bool,
) -> Result<(), KafkaError> {
    let image = broker.controller.image();
    let Some(state) = image.topic(name) else {
        return Err(KafkaError::new(ResponseError::UnknownTopicOrPartition));
    };
    let current = i32::try_from(state.partitions.len()).expect("bounded by the controller");
    let count = topic.count;
    if count < current {
        return Err(KafkaError::with_message(
            ResponseError::InvalidPartitions,
            format!("The topic {name} currently has {current} partition(s); {count} would not be an increase."),
        ));
    }
    if count == current {
        return Err(KafkaError::with_message(
            ResponseError::InvalidPartitions,
            format!("Topic already has {current} partition(s)."),
        ));
    }
    let assignments = match &topic.assignments {
        None => None,
        Some(assignments) => {
            let added = i64::from(count) - i64::from(current);
            if i64::try_from(assignments.len()).ok() != Some(added) {
                return Err(KafkaError::with_message(
                    ResponseError::InvalidReplicaAssignment,
                    format!(
                        "Attempted to add {added} additional partition(s), but only {} assignment(s) were specified.",
                        assignments.len()
                    ),
                ));
            }
            Some(
                assignments
                    .iter()
                    .map(|a| a.broker_ids.iter().map(|id| id.0).collect())
                    .collect(),
            )
        }
    };
    let command = MetadataCommand::CreatePartitions {
        topic_id: state.topic_id,
        new_total: count,
        assignments,
    };
    if validate_only {
        return rill_controller::check(&image, &command).map_err(|rejection| KafkaError {
            code: crate::errors::metadata_error_code(&rejection),
            message: Some(rejection.to_string()),
        });
    }
    broker
        .controller
        .submit(command)
        .await
        .map(|_| ())
        .map_err(|error| {
            let (code, message) = controller_error(&error);
            KafkaError {
                code,
                message: Some(message),
            }
        })
}
