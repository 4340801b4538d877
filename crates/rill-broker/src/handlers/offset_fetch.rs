//! OffsetFetch (key 9), v1..=9: a group's committed offsets, for the
//! partitions asked (or all it has, when the topics are null, v2+). v8+
//! asks for many groups at once. A partition without a commit answers
//! offset -1 and no error, as in Kafka. With `require_stable` (v7+,
//! KIP-447) a partition whose offset a transaction may still change
//! answers UNSTABLE_OFFSET_COMMIT, which the client retries.

use std::collections::HashSet;
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
    /// Partitions with offsets pending in a transaction, when the request
    /// requires stable offsets.
    unstable: HashSet<(String, i32)>,
}

impl GroupOffsets {
    fn partition_error(&self, topic: &str, partition: i32) -> i16 {
        if self.unstable.contains(&(topic.to_string(), partition)) {
            ResponseError::UnstableOffsetCommit.code()
        } else {
            0
        }
    }
}

fn fetch(
    broker: &Broker,
    group_id: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> GroupOffsets {
    if group_id.is_empty() {
        return GroupOffsets {
            error: ResponseError::InvalidGroupId.code(),
            topics: Vec::new(),
            unstable: HashSet::new(),
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
                unstable: if require_stable {
                    broker.groups.unstable_offsets(group_id)
                } else {
                    HashSet::new()
                },
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
            unstable: HashSet::new(),
        },
    }
}

fn offset_fields(offset: &Option<FetchedOffset>, error: i16) -> (i64, i32, String) {
    match offset {
        Some(o) if error == 0 => (o.offset, o.leader_epoch, o.metadata.clone()),
        _ => (-1, -1, String::new()),
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
                let answer = fetch(broker, g.group_id.as_str(), asked, request.require_stable);
                let error = answer.error;
                let partition_error = |topic: &str, index| answer.partition_error(topic, index);
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id)
                    .with_error_code(error)
                    .with_topics(
                        answer
                            .topics
                            .iter()
                            .filter(|_| error == 0)
                            .map(|(topic, partitions)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(wire_topic(topic))
                                    .with_partitions(
                                        partitions
                                            .iter()
                                            .map(|(index, offset)| {
                                                let code = partition_error(topic, *index);
                                                let (o, epoch, metadata) =
                                                    offset_fields(offset, code);
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(*index)
                                                    .with_committed_offset(o)
                                                    .with_committed_leader_epoch(epoch)
                                                    .with_metadata(Some(str_bytes(metadata)))
                                                    .with_error_code(code)
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
    let require_stable = version >= 7 && request.require_stable;
    let answer = fetch(broker, request.group_id.as_str(), asked, require_stable);
    let error = answer.error;
    // v1 has no group-level error: each partition carries it. v2+ carry it
    // once, and the partitions only with no error.
    let partition_error = if version < 2 { error } else { 0 };
    let topics = answer
        .topics
        .iter()
        .filter(|_| version < 2 || error == 0)
        .map(|(topic, partitions)| {
            OffsetFetchResponseTopic::default()
                .with_name(wire_topic(topic))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|(index, offset)| {
                            let code = match partition_error {
                                0 => answer.partition_error(topic, *index),
                                code => code,
                            };
                            let (o, epoch, metadata) = offset_fields(offset, code);
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(*index)
                                .with_committed_offset(o)
                                .with_committed_leader_epoch(epoch)
                                .with_metadata(Some(str_bytes(metadata)))
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default()
        .with_topics(topics)
        .with_error_code(error)
}
