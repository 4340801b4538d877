//! DescribeQuorum (key 55), v0–v2 (KIP-595, KIP-853): the controller
//! quorum of `__cluster_metadata` partition 0 — its leader and term, the
//! committed end of the metadata log (the high watermark), and how far
//! each voter and observer has replicated it.
//!
//! A broker answers for the quorum as Kafka's brokers do, by asking the
//! active controller: only the leader knows every member's position. The
//! quorum's term stands for the leader epoch, and a log position is the
//! number of entries up to it. Without an active controller within
//! [`QUORUM_TIMEOUT`] the answer is a top-level REQUEST_TIMED_OUT; a topic
//! or partition other than the metadata log's is a top-level
//! UNKNOWN_TOPIC_OR_PARTITION, as Kafka answers.

use std::time::Duration;

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::describe_quorum_response::{
    Listener, Node, PartitionData, ReplicaState, TopicData,
};
use rill_protocol::kafka_protocol::messages::{
    BrokerId, DescribeQuorumRequest, DescribeQuorumResponse, TopicName,
};

use super::str_bytes;
use crate::errors::controller_error;
use crate::server::Broker;

/// The name of the metadata log, as Kafka calls it.
pub const METADATA_TOPIC: &str = "__cluster_metadata";
/// How long the answer may wait for the active controller.
const QUORUM_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn handle(
    broker: &Broker,
    version: i16,
    request: DescribeQuorumRequest,
) -> DescribeQuorumResponse {
    let asks_for_the_metadata_log = request.topics.len() == 1
        && request.topics[0].topic_name.as_str() == METADATA_TOPIC
        && request.topics[0].partitions.len() == 1
        && request.topics[0].partitions[0].partition_index == 0;
    if !asks_for_the_metadata_log {
        return DescribeQuorumResponse::default()
            .with_error_code(ResponseError::UnknownTopicOrPartition.code());
    }
    let state = match broker.controller.describe_quorum(QUORUM_TIMEOUT).await {
        Ok(state) => state,
        Err(error) => {
            let (code, message) = controller_error(&error);
            return DescribeQuorumResponse::default()
                .with_error_code(code)
                .with_error_message((version >= 2).then(|| str_bytes(message)));
        }
    };
    let replica = |(id, log_end): &(i32, Option<u64>)| {
        ReplicaState::default()
            .with_replica_id(BrokerId(*id))
            .with_log_end_offset(log_end.map_or(-1, |o| o as i64))
            .with_last_fetch_timestamp(-1)
            .with_last_caught_up_timestamp(-1)
    };
    let partition = PartitionData::default()
        .with_partition_index(0)
        .with_leader_id(BrokerId(state.leader.unwrap_or(-1)))
        .with_leader_epoch(i32::try_from(state.term).unwrap_or(i32::MAX))
        .with_high_watermark(state.high_watermark as i64)
        .with_current_voters(state.voters.iter().map(replica).collect())
        .with_observers(state.observers.iter().map(replica).collect());
    let nodes = if version >= 2 {
        state
            .endpoints
            .iter()
            .filter_map(|(id, addr)| {
                let (host, port) = addr.rsplit_once(':')?;
                Some(Node::default().with_node_id(BrokerId(*id)).with_listeners(
                    vec![Listener::default()
                            .with_name(str_bytes("CONTROLLER".to_string()))
                            .with_host(str_bytes(host.to_string()))
                            .with_port(port.parse().ok()?)],
                ))
            })
            .collect()
    } else {
        Vec::new()
    };
    DescribeQuorumResponse::default()
        .with_topics(vec![TopicData::default()
            .with_topic_name(TopicName(str_bytes(METADATA_TOPIC.to_string())))
            .with_partitions(vec![partition])])
        .with_nodes(nodes)
}
