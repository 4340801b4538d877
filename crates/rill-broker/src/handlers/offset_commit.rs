//! OffsetCommit (key 8), v2..=9: a group's consumers record how far they
//! have read. Each partition is checked here (it must exist; its metadata
//! string is bounded by `offset.metadata.max.bytes`); the group checks the
//! committer (member, generation) and writes the commits durably before
//! the answer (see `crate::group`). The commit is appended when `handle`
//! is called, in the connection's request order, so that a client's
//! pipelined commits take effect in the order it sent them; the future
//! returned is the wait for the fsync.
//!
//! v2..=4 carry a retention time; Kafka has ignored it since 2.1
//! (KIP-211), and so does rill. v9 names the KIP-848 member epoch; a
//! classic group reads it as the generation, as Kafka does.

use std::future::Future;
use std::sync::Arc;

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use rill_protocol::kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

use crate::group::OffsetCommit;
use crate::server::Broker;

pub fn handle(
    broker: &Arc<Broker>,
    _version: i16,
    request: OffsetCommitRequest,
) -> impl Future<Output = OffsetCommitResponse> + Send + 'static {
    let (codes, commits) = check_partitions(
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
    let committed = broker.groups.commit(
        &broker.replicas,
        request.group_id.as_str(),
        request.member_id.as_str(),
        request.group_instance_id.as_ref().map(|i| i.as_str()),
        request.generation_id_or_member_epoch,
        commits,
    );
    async move { answer(request, codes, committed.await) }
}

/// One topic's partitions as a commit asks for them: (partition, offset,
/// leader epoch, metadata).
pub(super) type AskedTopic<'a> = (&'a str, Vec<(i32, i64, i32, Option<&'a str>)>);

/// The checks of each partition a commit names (OffsetCommit's and
/// TxnOffsetCommit's alike): it must exist, and its metadata fit
/// `offset.metadata.max.bytes`. Returns every partition's code by topic in
/// request order (0 for those the group then decides together) and the
/// commits of those that passed.
pub(super) fn check_partitions<'a>(
    broker: &Broker,
    topics: impl Iterator<Item = AskedTopic<'a>>,
) -> (Vec<Vec<i16>>, Vec<OffsetCommit>) {
    let image = broker.controller.image();
    let metadata_max = broker.groups.config.offset_metadata_max_bytes;
    let mut codes = Vec::new();
    let mut commits = Vec::new();
    for (name, partitions) in topics {
        let known = image.topic(name);
        let mut topic_codes = Vec::with_capacity(partitions.len());
        for (partition, offset, leader_epoch, metadata) in partitions {
            let metadata = metadata.unwrap_or_default().to_string();
            let code = if known.and_then(|t| t.partition(partition)).is_none() {
                ResponseError::UnknownTopicOrPartition.code()
            } else if metadata.len() > metadata_max {
                ResponseError::OffsetMetadataTooLarge.code()
            } else {
                commits.push(OffsetCommit {
                    topic: name.to_string(),
                    partition,
                    offset,
                    leader_epoch,
                    metadata,
                });
                0
            };
            topic_codes.push(code);
        }
        codes.push(topic_codes);
    }
    (codes, commits)
}

/// The response: each partition's own code, or else the group's.
fn answer(
    request: OffsetCommitRequest,
    codes: Vec<Vec<i16>>,
    committed: Result<(), i16>,
) -> OffsetCommitResponse {
    let group_code = match committed {
        Ok(()) => 0,
        Err(code) => code,
    };
    let topics = request
        .topics
        .into_iter()
        .zip(codes)
        .map(|(topic, topic_codes)| {
            OffsetCommitResponseTopic::default()
                .with_name(topic.name)
                .with_partitions(
                    topic
                        .partitions
                        .iter()
                        .zip(topic_codes)
                        .map(|(p, code)| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(if code == 0 { group_code } else { code })
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}
