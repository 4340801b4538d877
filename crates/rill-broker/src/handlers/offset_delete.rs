//! OffsetDelete (key 47), v0: removes a group's committed offsets for
//! some partitions — not those of topics its members still subscribe to
//! (GROUP_SUBSCRIBED_TO_TOPIC), as in Kafka.

use std::collections::HashMap;
use std::sync::Arc;

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use rill_protocol::kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};

use crate::server::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    _version: i16,
    request: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    if request.group_id.is_empty() {
        return OffsetDeleteResponse::default()
            .with_error_code(ResponseError::InvalidGroupId.code());
    }
    let image = broker.controller.image();
    let mut asked = Vec::new();
    let mut unknown = Vec::new();
    for topic in &request.topics {
        for p in &topic.partitions {
            let tp = (topic.name.0.as_str().to_string(), p.partition_index);
            let exists = image.topic(&tp.0).and_then(|t| t.partition(tp.1)).is_some();
            if exists {
                asked.push(tp);
            } else {
                unknown.push(tp);
            }
        }
    }
    let outcomes = match broker
        .groups
        .delete_offsets(broker, request.group_id.as_str(), &asked)
        .await
    {
        Ok(outcomes) => outcomes,
        Err(code) => return OffsetDeleteResponse::default().with_error_code(code),
    };
    let mut codes: HashMap<(String, i32), i16> = asked.into_iter().zip(outcomes).collect();
    for tp in unknown {
        codes.insert(tp, ResponseError::UnknownTopicOrPartition.code());
    }
    let code_of = |tp: &(String, i32)| codes.get(tp).copied().unwrap_or(0);
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let name = topic.name.0.as_str().to_string();
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code_of(&(name.clone(), p.partition_index)))
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}
