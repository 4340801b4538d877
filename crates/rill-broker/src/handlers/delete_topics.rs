//! DeleteTopics (key 20): by name (v0–v5) or by name or id (v6+). The
//! topic leaves the metadata through the controller, and its partition logs
//! are removed from disk before the answer.

use std::sync::Arc;

use rill_controller::MetadataCommand;
use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use rill_protocol::kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};

use super::{str_bytes, sync_metadata, wire_topic, KafkaError};
use crate::errors::controller_error;
use crate::server::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    version: i16,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let targets: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
        request
            .topics
            .into_iter()
            .map(|t| (t.name.map(|n| n.0.as_str().to_string()), t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|n| (Some(n.0.as_str().to_string()), uuid::Uuid::nil()))
            .collect()
    };
    let mut responses = Vec::with_capacity(targets.len());
    let mut any_deleted = false;
    for (name, topic_id) in targets {
        let image = broker.controller.image();
        let found = match &name {
            Some(name) => image.topic(name),
            None => image.topic_by_id(&topic_id),
        }
        .map(|t| (t.name.as_str().to_string(), t.topic_id));
        let result = match (found, &name) {
            (Some((found_name, found_id)), _) => {
                match broker
                    .controller
                    .submit(MetadataCommand::DeleteTopic { topic_id: found_id })
                    .await
                {
                    Ok(_) => {
                        any_deleted = true;
                        Ok((found_name, found_id))
                    }
                    Err(error) => {
                        let (code, message) = controller_error(&error);
                        Err(KafkaError {
                            code,
                            message: Some(message),
                        })
                    }
                }
            }
            (None, Some(_)) => Err(KafkaError::new(ResponseError::UnknownTopicOrPartition)),
            (None, None) => Err(KafkaError::new(ResponseError::UnknownTopicId)),
        };
        responses.push(match result {
            Ok((name, id)) => DeletableTopicResult::default()
                .with_name(Some(wire_topic(&name)))
                .with_topic_id(id),
            Err(error) => DeletableTopicResult::default()
                .with_name(
                    name.map(str_bytes)
                        .map(rill_protocol::kafka_protocol::messages::TopicName),
                )
                .with_topic_id(topic_id)
                .with_error_code(error.code)
                .with_error_message(error.message_bytes()),
        });
    }
    if any_deleted {
        sync_metadata(broker).await;
    }
    DeleteTopicsResponse::default().with_responses(responses)
}
