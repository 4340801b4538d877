//! DescribeTopicPartitions (key 75, KIP-966): Metadata's topic part, paged
//! and with each partition's eligible leader replicas. Topics in name
//! order (every topic when the request names none), at most
//! `response_partition_limit` partitions per answer (and never more than
//! [`PARTITION_LIMIT_MAX`], Kafka's `max.request.partition.size.limit`);
//! `next_cursor` says where the next page starts.

use rill_controller::{MetadataImage, TopicState};
use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use rill_protocol::kafka_protocol::messages::{
    BrokerId, DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse,
};

use super::metadata::{
    broker_ids, offline_replicas, partition_error, INTERNAL_TOPICS, TOPIC_OPERATIONS_ALL,
};
use super::wire_topic;
use crate::server::Broker;

/// Kafka's `max.request.partition.size.limit` default.
pub const PARTITION_LIMIT_MAX: i32 = 2000;

pub fn handle(
    broker: &Broker,
    _version: i16,
    request: DescribeTopicPartitionsRequest,
) -> DescribeTopicPartitionsResponse {
    let image = broker.controller.image();
    let mut names: Vec<String> = if request.topics.is_empty() {
        image
            .topic_names()
            .map(|(name, _)| name.to_string())
            .collect()
    } else {
        request
            .topics
            .iter()
            .map(|t| t.name.0.as_str().to_string())
            .collect()
    };
    names.sort_unstable();
    names.dedup();
    let cursor = request
        .cursor
        .as_ref()
        .map(|c| (c.topic_name.0.as_str().to_string(), c.partition_index));
    if let Some((topic, partition)) = &cursor {
        // Kafka refuses a cursor outside what was asked for.
        let outside = !request.topics.is_empty() && !names.contains(topic);
        if outside || *partition < 0 {
            let topics = names
                .iter()
                .map(|name| unknown(name, ResponseError::InvalidRequest))
                .collect();
            return DescribeTopicPartitionsResponse::default().with_topics(topics);
        }
    }
    let mut remaining = if request.response_partition_limit > 0 {
        request.response_partition_limit.min(PARTITION_LIMIT_MAX)
    } else {
        PARTITION_LIMIT_MAX
    };
    let (first_topic, first_partition) = cursor.unwrap_or_default();
    let mut names = names
        .into_iter()
        .filter(|name| *name >= first_topic)
        .peekable();
    let mut topics = Vec::new();
    let mut next_cursor = None;
    while let Some(name) = names.next() {
        let Some(topic) = image.topic(&name) else {
            topics.push(unknown(&name, ResponseError::UnknownTopicOrPartition));
            continue;
        };
        let start = if name == first_topic {
            usize::try_from(first_partition).unwrap_or(0)
        } else {
            0
        };
        let count = topic.partitions.len().saturating_sub(start);
        let room = usize::try_from(remaining).unwrap_or(0);
        let end = start + count.min(room);
        topics.push(describe(&image, topic, start..end));
        remaining -= i32::try_from(end - start).unwrap_or(remaining);
        if end < topic.partitions.len() {
            next_cursor = Some(cursor_at(&name, end));
            break;
        }
        if remaining == 0 {
            next_cursor = names.peek().map(|next| cursor_at(next, 0));
            break;
        }
    }
    DescribeTopicPartitionsResponse::default()
        .with_topics(topics)
        .with_next_cursor(next_cursor)
}

fn cursor_at(topic: &str, partition: usize) -> Cursor {
    Cursor::default()
        .with_topic_name(wire_topic(topic))
        .with_partition_index(i32::try_from(partition).unwrap_or(i32::MAX))
}

fn unknown(name: &str, error: ResponseError) -> DescribeTopicPartitionsResponseTopic {
    DescribeTopicPartitionsResponseTopic::default()
        .with_error_code(error.code())
        .with_name(Some(wire_topic(name)))
        .with_topic_authorized_operations(TOPIC_OPERATIONS_ALL)
}

fn describe(
    image: &MetadataImage,
    topic: &TopicState,
    range: std::ops::Range<usize>,
) -> DescribeTopicPartitionsResponseTopic {
    let partitions = topic.partitions[range.clone()]
        .iter()
        .zip(range)
        .map(|(p, index)| {
            DescribeTopicPartitionsResponsePartition::default()
                .with_error_code(partition_error(p))
                .with_partition_index(i32::try_from(index).unwrap_or(i32::MAX))
                .with_leader_id(BrokerId(p.leader))
                .with_leader_epoch(p.leader_epoch)
                .with_replica_nodes(broker_ids(&p.replicas))
                .with_isr_nodes(broker_ids(&p.isr))
                .with_eligible_leader_replicas(Some(broker_ids(&p.elr)))
                // rill keeps no last known ELR (KIP-966's record of the ELR
                // when it emptied): reported as none.
                .with_last_known_elr(Some(Vec::new()))
                .with_offline_replicas(offline_replicas(image, p))
        })
        .collect();
    DescribeTopicPartitionsResponseTopic::default()
        .with_name(Some(wire_topic(topic.name.as_str())))
        .with_topic_id(topic.topic_id)
        .with_is_internal(INTERNAL_TOPICS.contains(&topic.name.as_str()))
        .with_partitions(partitions)
        .with_topic_authorized_operations(TOPIC_OPERATIONS_ALL)
}
