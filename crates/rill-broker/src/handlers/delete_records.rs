//! DeleteRecords (key 21), v0–v2: moves each partition's log start offset
//! up to the requested offset (-1: the high watermark) and deletes the
//! segments wholly below it. The new start offset is checkpointed before
//! the answer, so it survives a crash; the answer's `low_watermark` is the
//! new log start offset.
//!
//! As Kafka (`Partition.deleteRecordsOnLeader`): the leader answers
//! (NOT_LEADER_OR_FOLLOWER otherwise); a topic whose `cleanup.policy` lacks
//! `delete` is POLICY_VIOLATION; an offset below zero or above the high
//! watermark is OFFSET_OUT_OF_RANGE; an offset below the current start
//! changes nothing. Unlike Kafka's (`DelayedDeleteRecords`), the answer
//! does not wait for the followers to move their log start too: they take
//! the leader's from their next fetch answer, and the answer's
//! `low_watermark` is the leader's.

use std::sync::Arc;

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use rill_protocol::kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use tracing::{error, info};

use super::{hosted_partition, KafkaError};
use crate::errors::storage_error_code;
use crate::server::Broker;

/// The offset that means "the high watermark".
const HIGH_WATERMARK: i64 = -1;

pub async fn handle(
    broker: &Arc<Broker>,
    _version: i16,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    // Deleting segments and checkpointing are blocking file work.
    let worker = Arc::clone(broker);
    let fallback = request.clone();
    match tokio::task::spawn_blocking(move || delete(&worker, request)).await {
        Ok(response) => response,
        Err(join_error) => {
            error!(%join_error, "DeleteRecords failed");
            every_partition(fallback, |_| {
                Err(KafkaError::new(ResponseError::UnknownServerError))
            })
        }
    }
}

fn delete(broker: &Broker, request: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let mut moved = false;
    let mut response = every_partition(request, |(topic, index, offset)| {
        let start = delete_before(broker, topic, index, offset)?;
        moved = true;
        Ok(start)
    });
    if moved {
        // One checkpoint for the whole request, before the answer: a
        // crash after it cannot bring the deleted records back.
        if let Err(storage_error) = broker.replicas.logs().checkpoint() {
            error!(%storage_error, "cannot checkpoint log start offsets after DeleteRecords");
            let code = storage_error_code(&storage_error);
            for topic in &mut response.topics {
                for partition in &mut topic.partitions {
                    if partition.error_code == 0 {
                        partition.error_code = code;
                        partition.low_watermark = -1;
                    }
                }
            }
        }
    }
    response
}

/// Moves one partition's log start; returns the new start.
fn delete_before(broker: &Broker, topic: &str, index: i32, offset: i64) -> Result<i64, KafkaError> {
    let partition = hosted_partition(broker, topic, index)?;
    if partition.leader() != broker.config.node_id {
        return Err(KafkaError::new(ResponseError::NotLeaderOrFollower));
    }
    if !partition.log.config().cleanup_policy.delete {
        return Err(KafkaError::with_message(
            ResponseError::PolicyViolation,
            format!("records of partition {topic}-{index} cannot be deleted: cleanup.policy does not include delete"),
        ));
    }
    let high_watermark = partition.high_watermark();
    let target = if offset == HIGH_WATERMARK {
        high_watermark
    } else {
        offset
    };
    if target < 0 || target > high_watermark {
        return Err(KafkaError::new(ResponseError::OffsetOutOfRange));
    }
    let start = partition
        .log
        .delete_before(target)
        .map_err(|e| KafkaError {
            code: storage_error_code(&e),
            message: Some(e.to_string()),
        })?;
    info!(
        topic,
        partition = index,
        offset = target,
        log_start_offset = start,
        "deleted records"
    );
    Ok(start)
}

/// A response with one result per requested partition: `result` gives
/// the new low watermark or the error.
fn every_partition(
    request: DeleteRecordsRequest,
    mut result: impl FnMut((&str, i32, i64)) -> Result<i64, KafkaError>,
) -> DeleteRecordsResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let response = DeleteRecordsPartitionResult::default()
                        .with_partition_index(p.partition_index);
                    match result((topic.name.as_str(), p.partition_index, p.offset)) {
                        Ok(low_watermark) => response.with_low_watermark(low_watermark),
                        Err(error) => response.with_low_watermark(-1).with_error_code(error.code),
                    }
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}
