//! AlterPartitionReassignments (key 45), v0–v1, and ListPartitionReassignments
//! (key 46), v0: move partitions to other replicas through the controller,
//! and list the moves under way.
//!
//! A partition's new replicas join as followers and fetch its log; once all
//! of them are in the ISR the controller removes the replicas that are not
//! wanted (moving leadership off a removed leader) and their brokers delete
//! their copies. A null replica list cancels the partition's reassignment,
//! putting its original replicas back. Each partition gets its own result:
//! UNKNOWN_TOPIC_OR_PARTITION, INVALID_REPLICA_ASSIGNMENT (duplicates, an
//! empty list, an unregistered broker), NO_REASSIGNMENT_IN_PROGRESS (a
//! cancellation of nothing), and — v1 with `allow_replication_factor_change`
//! false (KIP-860) — INVALID_REPLICATION_FACTOR for a list of another
//! length than the partition's replicas. Without the quorum within the
//! request's timeout: REQUEST_TIMED_OUT at the top level.

use std::collections::BTreeMap;
use std::time::Duration;

use rill_controller::{ApplyOutcome, ControllerError, MetadataCommand};
use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use rill_protocol::kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use rill_protocol::kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};

use super::{str_bytes, sync_metadata};
use crate::errors::controller_error;
use crate::server::Broker;

/// One partition's answer: its error code and message.
type Answer = (i16, Option<String>);

pub async fn handle(
    broker: &std::sync::Arc<Broker>,
    version: i16,
    request: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let allow_rf_change = version < 1 || request.allow_replication_factor_change;
    let image = broker.controller.image();
    let mut answers: BTreeMap<(String, i32), Answer> = BTreeMap::new();
    let mut asked = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        for partition in &topic.partitions {
            let target: Option<Vec<i32>> = partition
                .replicas
                .as_ref()
                .map(|r| r.iter().map(|b| b.0).collect());
            let current = image
                .topic(&name)
                .and_then(|t| t.partition(partition.partition_index));
            if let (false, Some(target), Some(current)) = (allow_rf_change, &target, current) {
                let replication_factor = current.original_replicas().len();
                if target.len() != replication_factor {
                    answers.insert(
                        (name.clone(), partition.partition_index),
                        (
                            ResponseError::InvalidReplicationFactor.code(),
                            Some(format!(
                                "the partition has {replication_factor} replicas, not {}, and the replication factor may not change",
                                target.len()
                            )),
                        ),
                    );
                    continue;
                }
            }
            asked.push((name.clone(), partition.partition_index, target));
        }
    }
    if !asked.is_empty() {
        let timeout =
            Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0).max(1000));
        let command = MetadataCommand::AlterPartitionReassignments {
            reassignments: asked,
        };
        match broker.controller.submit_within(command, timeout).await {
            Ok(ApplyOutcome::ReassignmentsAltered { results }) => {
                sync_metadata(broker).await;
                for (topic, partition, rejection) in results {
                    let answer = match rejection {
                        None => (0, None),
                        Some(rejection) => {
                            let (code, message) =
                                controller_error(&ControllerError::Rejected(rejection));
                            (code, Some(message))
                        }
                    };
                    answers.insert((topic, partition), answer);
                }
            }
            Ok(other) => {
                tracing::error!(
                    ?other,
                    "AlterPartitionReassignments applied as something else"
                );
                return AlterPartitionReassignmentsResponse::default()
                    .with_error_code(ResponseError::UnknownServerError.code());
            }
            Err(error) => {
                let (code, message) = controller_error(&error);
                return AlterPartitionReassignmentsResponse::default()
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(message)));
            }
        }
    }
    let mut by_topic: BTreeMap<String, Vec<ReassignablePartitionResponse>> = BTreeMap::new();
    for ((topic, partition), (code, message)) in answers {
        by_topic.entry(topic).or_default().push(
            ReassignablePartitionResponse::default()
                .with_partition_index(partition)
                .with_error_code(code)
                .with_error_message(message.map(str_bytes)),
        );
    }
    AlterPartitionReassignmentsResponse::default()
        .with_allow_replication_factor_change(request.allow_replication_factor_change)
        .with_responses(
            by_topic
                .into_iter()
                .map(|(name, partitions)| {
                    ReassignableTopicResponse::default()
                        .with_name(TopicName(str_bytes(name)))
                        .with_partitions(partitions)
                })
                .collect(),
        )
}

/// ListPartitionReassignments: the partitions asked for (every partition
/// when the list is null) that are being reassigned, with their replicas
/// and those being added and removed. Partitions not being reassigned, or
/// unknown, are left out, as Kafka does.
pub fn list(
    broker: &Broker,
    _version: i16,
    request: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let image = broker.controller.image();
    let asked: Option<BTreeMap<String, Vec<i32>>> = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let ids = |v: &[i32]| v.iter().copied().map(BrokerId).collect::<Vec<_>>();
    let mut topics = Vec::new();
    for topic in image.topics() {
        let name = topic.name.to_string();
        let wanted = match &asked {
            Some(asked) => match asked.get(&name) {
                Some(partitions) => Some(partitions),
                None => continue,
            },
            None => None,
        };
        let partitions: Vec<OngoingPartitionReassignment> = topic
            .partitions
            .iter()
            .enumerate()
            .filter(|(i, p)| p.is_reassigning() && wanted.is_none_or(|w| w.contains(&(*i as i32))))
            .map(|(i, p)| {
                OngoingPartitionReassignment::default()
                    .with_partition_index(i as i32)
                    .with_replicas(ids(&p.replicas))
                    .with_adding_replicas(ids(&p.adding))
                    .with_removing_replicas(ids(&p.removing))
            })
            .collect();
        if !partitions.is_empty() {
            topics.push(
                OngoingTopicReassignment::default()
                    .with_name(TopicName(str_bytes(name)))
                    .with_partitions(partitions),
            );
        }
    }
    ListPartitionReassignmentsResponse::default().with_topics(topics)
}
