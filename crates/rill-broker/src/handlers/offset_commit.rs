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
    let image = broker.controller.image();
    let metadata_max = broker.groups.config.offset_metadata_max_bytes;
    // Every partition's code, in request order; 0 for those the group
    // decides together.
    let mut codes: Vec<Vec<i16>> = Vec::with_capacity(request.topics.len());
    let mut commits = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.as_str();
        let known = image.topic(name);
        let mut topic_codes = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let metadata = p
                .committed_metadata
                .as_ref()
                .map(|m| m.as_str().to_string())
                .unwrap_or_default();
            let code = if known.and_then(|t| t.partition(p.partition_index)).is_none() {
                ResponseError::UnknownTopicOrPartition.code()
            } else if metadata.len() > metadata_max {
                ResponseError::OffsetMetadataTooLarge.code()
            } else {
                commits.push(OffsetCommit {
                    topic: name.to_string(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata,
                });
                0
            };
            topic_codes.push(code);
        }
        codes.push(topic_codes);
    }
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
