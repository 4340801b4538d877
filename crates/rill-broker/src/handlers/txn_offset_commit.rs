//! TxnOffsetCommit (key 28), v0..=4: a transactional producer commits a
//! consumer group's offsets within its transaction (KIP-98); they count
//! once the transaction commits (see `crate::group`'s `txn`). Each
//! partition is checked here as OffsetCommit checks it; from v3 the
//! group checks the member and generation the producer's consumer named
//! (KIP-447), so that a zombie's commit is refused.
//!
//! The producer must have added the group to its transaction first
//! (AddOffsetsToTxn): as Kafka does since KIP-890 part 1, the group's
//! `__consumer_offsets` partition is verified with the transaction
//! coordinator before the offsets are written, and a commit outside the
//! transaction is refused with INVALID_TXN_STATE.

use std::future::Future;
use std::sync::Arc;

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use rill_protocol::kafka_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};

use crate::group::{partition_for, OffsetCommit, TxnCommitter, OFFSETS_TOPIC};
use crate::server::Broker;

pub fn handle(
    broker: &Arc<Broker>,
    version: i16,
    request: TxnOffsetCommitRequest,
) -> impl Future<Output = TxnOffsetCommitResponse> + Send + 'static {
    let (codes, commits) = super::offset_commit::check_partitions(
        broker,
        request.topics.iter().map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    (
                        p.partition_index,
                        p.committed_offset,
                        p.committed_leader_epoch,
                        p.committed_metadata.as_ref().map(|m| m.as_str()),
                    )
                })
                .collect();
            (topic.name.0.as_str(), partitions)
        }),
    );
    let committer = TxnCommitter {
        producer_id: request.producer_id.0,
        producer_epoch: request.producer_epoch,
        member_id: if version >= 3 {
            request.member_id.as_str().to_string()
        } else {
            String::new()
        },
        group_instance_id: request
            .group_instance_id
            .as_ref()
            .filter(|_| version >= 3)
            .map(|i| i.as_str().to_string()),
        generation: if version >= 3 {
            request.generation_id
        } else {
            -1
        },
    };
    let broker = Arc::clone(broker);
    async move {
        let outcome = if committer.producer_id < 0 || committer.producer_epoch < 0 {
            Err(ResponseError::InvalidProducerIdMapping.code())
        } else {
            commit(&broker, &request, committer, commits).await
        };
        answer(request, codes, outcome)
    }
}

/// Verifies that the group's partition is in the transaction, then has
/// the group write the offsets.
async fn commit(
    broker: &Arc<Broker>,
    request: &TxnOffsetCommitRequest,
    committer: TxnCommitter,
    commits: Vec<OffsetCommit>,
) -> Result<(), i16> {
    let group_id = request.group_id.as_str();
    if group_id.is_empty() {
        return Err(ResponseError::InvalidGroupId.code());
    }
    let count = broker
        .controller
        .image()
        .topic(OFFSETS_TOPIC)
        .map(|t| t.partitions.len() as i32)
        .filter(|count| *count > 0)
        .ok_or(ResponseError::CoordinatorNotAvailable.code())?;
    super::txn_verification::verify_partition(
        broker,
        request.transactional_id.as_str(),
        committer.producer_id,
        committer.producer_epoch,
        OFFSETS_TOPIC,
        partition_for(group_id, count),
    )
    .await
    .map_err(|error| error.code)?;
    broker
        .groups
        .txn_commit(&broker.replicas, group_id, committer, commits)
        .await
}

/// Each partition's own code, or else the group's.
fn answer(
    request: TxnOffsetCommitRequest,
    codes: Vec<Vec<i16>>,
    committed: Result<(), i16>,
) -> TxnOffsetCommitResponse {
    let group_code = committed.err().unwrap_or(0);
    let topics = request
        .topics
        .into_iter()
        .zip(codes)
        .map(|(topic, topic_codes)| {
            TxnOffsetCommitResponseTopic::default()
                .with_name(topic.name)
                .with_partitions(
                    topic
                        .partitions
                        .iter()
                        .zip(topic_codes)
                        .map(|(p, code)| {
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(if code == 0 { group_code } else { code })
                        })
                        .collect(),
                )
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}
