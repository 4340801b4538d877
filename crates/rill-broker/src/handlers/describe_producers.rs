//! DescribeProducers (key 61), v0: the producers a partition's leader
//! remembers, with their epoch, last sequence, last write and, for one in
//! a transaction, where that transaction began here (KIP-664). This is
//! what `kafka-transactions.sh find-hanging` and `rill txn abort` read to
//! find a transaction that blocks the last stable offset.

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use rill_protocol::kafka_protocol::messages::{
    DescribeProducersRequest, DescribeProducersResponse, ProducerId,
};

use crate::server::Broker;

pub fn handle(
    broker: &Broker,
    _version: i16,
    request: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let name = topic.name.0.as_str();
            let partitions = topic
                .partition_indexes
                .iter()
                .map(|index| describe(broker, name, *index))
                .collect();
            TopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}

fn describe(broker: &Broker, topic: &str, index: i32) -> PartitionResponse {
    let answer = PartitionResponse::default().with_partition_index(index);
    let partition = match super::hosted_partition(broker, topic, index) {
        Ok(partition) => partition,
        Err(error) => return answer.with_error_code(error.code),
    };
    if !partition.is_leader() {
        return answer.with_error_code(ResponseError::NotLeaderOrFollower.code());
    }
    let producers = partition
        .producer_entries()
        .into_iter()
        .map(|(producer_id, entry)| {
            ProducerState::default()
                .with_producer_id(ProducerId(producer_id))
                .with_producer_epoch(i32::from(entry.producer_epoch()))
                .with_last_sequence(entry.last_seq())
                .with_last_timestamp(entry.batches().last().map_or(-1, |b| b.timestamp))
                .with_coordinator_epoch(entry.coordinator_epoch())
                .with_current_txn_start_offset(entry.current_txn_first_offset().unwrap_or(-1))
        })
        .collect();
    answer.with_active_producers(producers)
}
