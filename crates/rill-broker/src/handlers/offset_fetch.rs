//! OffsetFetch (key 9), v1..=9: a group's committed offsets, for the
//! partitions asked (or all it has, when the topics are null, v2+). v8+
//! asks for many groups at once. A partition without a commit answers
//! offset -1 and no error, as in Kafka.

use std::sync::Arc;

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use rill_protocol::kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse};

use super::{str_bytes, wire_topic};
use crate::group::FetchedOffset;
use crate::server::Broker;

/// Each topic's partitions with their committed offsets, sorted.
type TopicOffsets = Vec<(String, Vec<(i32, Option<FetchedOffset>)>)>;

/// One group's answer, whichever the version's shape.
struct GroupOffsets {
    error: i16,
    topics: TopicOffsets,
}

fn fetch(broker: &Broker, group_id: &str, topics: Option<Vec<(String, Vec<i32>)>>) -> GroupOffsets {
    if group_id.is_empty() {
        return GroupOffsets {
            error: ResponseError::InvalidGroupId.code(),
            topics: Vec::new(),
        };
    }
    match broker.groups.fetch_offsets(group_id, topics.as_deref()) {
        Ok(offsets) => {
            let mut grouped = TopicOffsets::new();
            for ((topic, partition), offset) in offsets {
                match grouped.last_mut() {
                    Some((name, partitions)) if *name == topic => {
                        partitions.push((partition, offset))
                    }
                    _ => grouped.push((topic, vec![(partition, offset)])),
                }
            }
            GroupOffsets {
                error: 0,
                topics: grouped,
            }
        }
        Err(kind) => GroupOffsets {
            error: kind.code(),
            // The partitions asked for, each with the group's error (v1
            // has nowhere else to put it).
            topics: topics
                .unwrap_or_default()
                .into_iter()
                .map(|(t, ps)| (t, ps.into_iter().map(|p| (p, None)).collect()))
                .collect(),
        },
    }
}

fn offset_fields(offset: &Option<FetchedOffset>) -> (i64, i32, String) {
    match offset {
        Some(o) => (o.offset, o.leader_epoch, o.metadata.clone()),
        None => (-1, -1, String::new()),
    }
}

pub fn handle(
    broker: &Arc<Broker>,
    version: i16,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    if version >= 8 {
        let groups = request
            .groups
            .into_iter()
            .map(|g| {
                let asked = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name.0.as_str().to_string(), t.partition_indexes))
                        .collect()
                });
                let answer = fetch(broker, g.group_id.as_str(), asked);
                let error = answer.error;
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id)
                    .with_error_code(error)
                    .with_topics(
                        answer
                            .topics
                            .into_iter()
                            .filter(|_| error == 0)
                            .map(|(topic, partitions)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(wire_topic(&topic))
                                    .with_partitions(
                                        partitions
                                            .iter()
                                            .map(|(index, offset)| {
                                                let (o, epoch, metadata) = offset_fields(offset);
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(*index)
                                                    .with_committed_offset(o)
                                                    .with_committed_leader_epoch(epoch)
                                                    .with_metadata(Some(str_bytes(metadata)))
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    )
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let asked = request.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.as_str().to_string(), t.partition_indexes))
            .collect()
    });
    let answer = fetch(broker, request.group_id.as_str(), asked);
    let error = answer.error;
    // v1 has no group-level error: each partition carries it. v2+ carry it
    // once, and the partitions only with no error.
    let partition_error = if version < 2 { error } else { 0 };
    let topics = answer
        .topics
        .into_iter()
        .filter(|_| version < 2 || error == 0)
        .map(|(topic, partitions)| {
            OffsetFetchResponseTopic::default()
                .with_name(wire_topic(&topic))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|(index, offset)| {
                            let (o, epoch, metadata) = offset_fields(offset);
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(*index)
                                .with_committed_offset(o)
                                .with_committed_leader_epoch(epoch)
                                .with_metadata(Some(str_bytes(metadata)))
                                .with_error_code(partition_error)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default()
        .with_topics(topics)
        .with_error_code(error)
}
