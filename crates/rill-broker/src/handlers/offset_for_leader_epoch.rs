//! OffsetForLeaderEpoch (key 23), v2–v4: for each partition, the end of
//! the largest leader epoch not above the one asked for (Kafka's
//! `endOffsetFor`; the log's leader-epoch cache answers). A follower uses
//! it after a leader change to find where its log diverges; a consumer
//! (KIP-320) to detect truncation. The leader answers, whoever asks:
//! Kafka's `ReplicaManager.lastOffsetForLeaderEpoch` always requires the
//! leader, and `replica_id` (v3+) changes only authorisation, which rill
//! does not have yet.
//!
//! v0 and v1 are not offered: kafka-protocol 0.18 has dropped them, as
//! Kafka 4 has.

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use rill_protocol::kafka_protocol::messages::{
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
};

use super::{check_leader_epoch, hosted_partition, KafkaError};
use crate::server::Broker;

pub fn handle(
    broker: &Broker,
    _version: i16,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let response = EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_leader_epoch(-1)
                        .with_end_offset(-1);
                    match end_offset(
                        broker,
                        topic.topic.as_str(),
                        p.partition,
                        p.current_leader_epoch,
                        p.leader_epoch,
                    ) {
                        Ok((epoch, end_offset)) => response
                            .with_leader_epoch(epoch)
                            .with_end_offset(end_offset),
                        Err(error) => response.with_error_code(error.code),
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

/// Returns (epoch, end offset); both -1 when the log knows no epoch at or
/// below the one asked for.
fn end_offset(
    broker: &Broker,
    topic: &str,
    index: i32,
    current_leader_epoch: i32,
    leader_epoch: i32,
) -> Result<(i32, i64), KafkaError> {
    let partition = hosted_partition(broker, topic, index)?;
    // Kafka checks the client's epoch before leadership (`Partition.getLocalLog`).
    check_leader_epoch(current_leader_epoch, partition.leader_epoch())?;
    if partition.leader() != broker.config.node_id {
        return Err(KafkaError::new(ResponseError::NotLeaderOrFollower));
    }
    let found = partition.log.end_offset_for_epoch(leader_epoch);
    Ok((found.epoch, found.end_offset))
}
