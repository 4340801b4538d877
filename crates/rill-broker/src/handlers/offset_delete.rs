//! OffsetDelete (key 47), v0: removes a group's committed offsets for
//! some partitions — not those of topics its members still subscribe to
//! (GROUP_SUBSCRIBED_TO_TOPIC), as in Kafka. The tombstones are appended
//! when `handle` is called, in the connection's request order; the future
//! returned waits until they are durable.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use rill_protocol::kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};

use crate::server::Broker;

pub fn handle(
    broker: &Arc<Broker>,
    _version: i16,
    request: OffsetDeleteRequest,
) -> impl Future<Output = OffsetDeleteResponse> + Send + 'static {
    let deleted = (!request.group_id.is_empty()).then(|| delete(broker, &request));
    async move {
        let Some((asked, unknown, deleted)) = deleted else {
            return OffsetDeleteResponse::default()
                .with_error_code(ResponseError::InvalidGroupId.code());
        };
        answer(request, asked, unknown, deleted.await)
    }
}

type Partitions = Vec<(String, i32)>;

/// The ordered part: the partitions asked for that exist (and those that
/// do not), and the group's deletion of the former, already appended.
fn delete(
    broker: &Arc<Broker>,
    request: &OffsetDeleteRequest,
) -> (
    Partitions,
    Partitions,
    impl Future<Output = Result<Vec<i16>, i16>> + Send + 'static,
) {
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
    let deleted = broker
        .groups
        .delete_offsets(&broker.replicas, request.group_id.as_str(), &asked);
    (asked, unknown, deleted)
}

fn answer(
    request: OffsetDeleteRequest,
    asked: Partitions,
    unknown: Partitions,
    deleted: Result<Vec<i16>, i16>,
) -> OffsetDeleteResponse {
    let outcomes = match deleted {
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
