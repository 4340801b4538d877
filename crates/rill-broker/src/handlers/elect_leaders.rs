//! ElectLeaders (key 43), v0–v2: move partitions to their preferred
//! leader, or give a leaderless partition a leader from outside its ISR
//! (unclean, v1+), through the controller. v0 has no election type and is
//! always preferred.
//!
//! Each listed partition gets its own result: ELECTION_NOT_NEEDED when it
//! is led as asked already, PREFERRED_LEADER_NOT_AVAILABLE when the
//! preferred replica is out of the ISR or fenced, ELIGIBLE_LEADERS_NOT_AVAILABLE
//! when no unfenced replica is left, UNKNOWN_TOPIC_OR_PARTITION. A request
//! for every partition (a null list) answers only for the partitions where
//! something was tried, as Kafka's controller does. Without the quorum
//! within the request's timeout: REQUEST_TIMED_OUT at the top level (v1+)
//! or for every partition (v0).

use std::collections::BTreeMap;
use std::time::Duration;

use rill_controller::{ApplyOutcome, ElectionResult, ElectionType, MetadataCommand};
use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::elect_leaders_response::{
    PartitionResult, ReplicaElectionResult,
};
use rill_protocol::kafka_protocol::messages::{
    ElectLeadersRequest, ElectLeadersResponse, TopicName,
};

use super::{str_bytes, sync_metadata};
use crate::errors::controller_error;
use crate::server::Broker;

const PREFERRED: i8 = 0;
const UNCLEAN: i8 = 1;

pub async fn handle(
    broker: &std::sync::Arc<Broker>,
    version: i16,
    request: ElectLeadersRequest,
) -> ElectLeadersResponse {
    let election = match (version, request.election_type) {
        (0, _) | (_, PREFERRED) => ElectionType::Preferred,
        (_, UNCLEAN) => ElectionType::Unclean,
        // Kafka's ElectionType has no other value.
        (_, _) => {
            return ElectLeadersResponse::default()
                .with_error_code(ResponseError::InvalidRequest.code());
        }
    };
    let every_partition = request.topic_partitions.is_none();
    let partitions = request.topic_partitions.as_ref().map(|topics| {
        topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| (t.topic.0.to_string(), *p)))
            .collect::<Vec<_>>()
    });
    let timeout = Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0).max(1000));
    let command = MetadataCommand::ElectLeaders {
        election,
        partitions: partitions.clone(),
    };
    let results = match broker.controller.submit_within(command, timeout).await {
        Ok(ApplyOutcome::LeadersElected { results }) => {
            sync_metadata(broker).await;
            results
                .into_iter()
                .filter(|(_, _, r)| !(every_partition && *r == ElectionResult::NotNeeded))
                .map(|(topic, partition, result)| {
                    let (code, message) = result_code(result);
                    (topic, partition, code, message.map(str::to_string))
                })
                .collect::<Vec<_>>()
        }
        Ok(other) => {
            tracing::error!(?other, "ElectLeaders applied as something else");
            return ElectLeadersResponse::default()
                .with_error_code(ResponseError::UnknownServerError.code());
        }
        Err(error) => {
            let (code, message) = controller_error(&error);
            if version >= 1 {
                return ElectLeadersResponse::default().with_error_code(code);
            }
            // v0 has no top-level error: every partition asked for carries it.
            partitions
                .unwrap_or_default()
                .into_iter()
                .map(|(topic, partition)| (topic, partition, code, Some(message.clone())))
                .collect()
        }
    };
    let mut by_topic: BTreeMap<String, Vec<PartitionResult>> = BTreeMap::new();
    for (topic, partition, code, message) in results {
        by_topic.entry(topic).or_default().push(
            PartitionResult::default()
                .with_partition_id(partition)
                .with_error_code(code)
                .with_error_message(message.map(str_bytes)),
        );
    }
    ElectLeadersResponse::default().with_replica_election_results(
        by_topic
            .into_iter()
            .map(|(topic, partition_result)| {
                ReplicaElectionResult::default()
                    .with_topic(TopicName(str_bytes(topic)))
                    .with_partition_result(partition_result)
            })
            .collect(),
    )
}

fn result_code(result: ElectionResult) -> (i16, Option<&'static str>) {
    match result {
        ElectionResult::Elected => (0, None),
        ElectionResult::NotNeeded => (
            ResponseError::ElectionNotNeeded.code(),
            Some("the partition is already led by the replica asked for"),
        ),
        ElectionResult::PreferredNotAvailable => (
            ResponseError::PreferredLeaderNotAvailable.code(),
            Some("the preferred replica is not in the ISR or is fenced"),
        ),
        ElectionResult::NoEligibleLeader => (
            ResponseError::EligibleLeadersNotAvailable.code(),
            Some("no unfenced replica can lead"),
        ),
        ElectionResult::UnknownPartition => (
            ResponseError::UnknownTopicOrPartition.code(),
            Some("no such topic partition"),
        ),
    }
}
