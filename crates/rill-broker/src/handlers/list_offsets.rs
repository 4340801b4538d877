//! ListOffsets (key 2): the earliest offset, the latest (the high
//! watermark, or the last stable offset for isolation read_committed, v2+),
//! the first offset at or after a timestamp, or the offset of
//! the record with the largest timestamp; and the tiered-storage answers of
//! a broker whose segments are all local (earliest local = earliest, latest
//! tiered = none).

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use rill_protocol::kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use rill_storage::Log;

use super::{check_leader_epoch, KafkaError};
use crate::errors::storage_error_code;
use crate::replica::Partition;
use crate::server::Broker;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
/// KIP-405: the first offset still on local disk: every offset, here.
const EARLIEST_LOCAL: i64 = -4;
/// KIP-1005: the last offset copied to tiered storage: none, here.
const LATEST_TIERED: i64 = -5;

/// ListOffsets' `isolation_level` for read_committed.
const READ_COMMITTED: i8 = 1;

pub async fn handle(
    broker: &Broker,
    version: i16,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let read_committed = version >= 2 && request.isolation_level == READ_COMMITTED;
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.as_str().to_string();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let response = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1)
                .with_leader_epoch(-1);
            let found = lookup(
                broker,
                &name,
                p.partition_index,
                p.current_leader_epoch,
                p.timestamp,
                read_committed,
            )
            .await;
            partitions.push(match found {
                Ok((timestamp, offset, leader_epoch)) => response
                    .with_timestamp(timestamp)
                    .with_offset(offset)
                    // The field exists from v4; below it must keep its
                    // default or the response cannot be encoded.
                    .with_leader_epoch(if version >= 4 { leader_epoch } else { -1 }),
                Err(error) => response.with_error_code(error.code),
            });
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// Returns (timestamp, offset, leader epoch of that offset).
async fn lookup(
    broker: &Broker,
    topic: &str,
    index: i32,
    current_leader_epoch: i32,
    timestamp: i64,
    read_committed: bool,
) -> Result<(i64, i64, i32), KafkaError> {
    let Some(partition) = broker.replicas.get(topic, index) else {
        return Err(KafkaError::new(ResponseError::UnknownTopicOrPartition));
    };
    if partition.leader() != broker.config.node_id {
        return Err(KafkaError::new(ResponseError::NotLeaderOrFollower));
    }
    check_leader_epoch(current_leader_epoch, partition.leader_epoch())?;
    let log = &partition.log;
    let storage = |error: rill_storage::StorageError| KafkaError {
        code: storage_error_code(&error),
        message: Some(error.to_string()),
    };
    // What this reader may see: records at or past it are not offered.
    let visible_end = if read_committed {
        partition.last_stable_offset()
    } else {
        partition.high_watermark()
    };
    match timestamp {
        LATEST => {
            let offset = visible_end;
            Ok((-1, offset, epoch_at(&partition, offset)))
        }
        EARLIEST | EARLIEST_LOCAL => {
            let offset = log.log_start_offset();
            Ok((-1, offset, epoch_at(&partition, offset)))
        }
        // As Kafka answers when remote storage is off.
        LATEST_TIERED => Ok((-1, -1, -1)),
        MAX_TIMESTAMP | 0.. => {
            // Searching the segments and their time indexes reads files:
            // the partition's I/O thread does it.
            let found = partition
                .on_io_thread(move |partition| {
                    if timestamp == MAX_TIMESTAMP {
                        partition.log.max_timestamp_offset()
                    } else {
                        partition.log.offset_for_timestamp(timestamp)
                    }
                })
                .await
                .map_err(|error| KafkaError {
                    code: ResponseError::KafkaStorageError.code(),
                    message: Some(error.to_string()),
                })?
                .map_err(storage)?;
            match found {
                Some(found) if found.offset < visible_end => Ok((
                    found.timestamp,
                    found.offset,
                    epoch_at(&partition, found.offset),
                )),
                // No record at or after the timestamp (or none at all, for
                // the largest timestamp): Kafka answers offset -1.
                _ => Ok((-1, -1, -1)),
            }
        }
        // Anything else below zero.
        _ => Err(KafkaError::new(ResponseError::InvalidRequest)),
    }
}

/// The leader epoch of the batch holding `offset` (or of the next batch to
/// be written, for the log end): the last epoch starting at or before it.
fn epoch_at(partition: &Partition, offset: i64) -> i32 {
    epoch_of(&partition.log, offset).unwrap_or(partition.leader_epoch())
}

fn epoch_of(log: &Log, offset: i64) -> Option<i32> {
    log.leader_epochs()
        .iter()
        .rev()
        .find(|entry| entry.start_offset <= offset)
        .map(|entry| entry.epoch)
}
