//! JoinGroup (key 11), v0..=9: a member joins a group, or rejoins for a
//! rebalance; the answer waits until the rebalance's join phase is over
//! (see `crate::group::state`). From v4 a new member first gets
//! MEMBER_ID_REQUIRED with its id and joins again with it (KIP-394).
//! The group takes the join when `handle` is called, in the connection's
//! request order; the future returned is the wait for the answer.

use std::future::Future;
use std::sync::Arc;

use rill_protocol::kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use rill_protocol::kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};

use super::str_bytes;
use crate::group::state::{JoinAnswer, JoinRequest};
use crate::server::Broker;

/// Who sent a request: the client id of its header and its address, as
/// Kafka shows them in DescribeGroups.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub client_id: String,
    pub client_host: String,
}

pub fn handle(
    broker: &Arc<Broker>,
    version: i16,
    request: JoinGroupRequest,
    client: ClientIdentity,
) -> impl Future<Output = JoinGroupResponse> + Send + 'static {
    let join = JoinRequest {
        member_id: request.member_id.as_str().to_string(),
        group_instance_id: request
            .group_instance_id
            .as_ref()
            .map(|i| i.as_str().to_string()),
        client_id: client.client_id,
        client_host: client.client_host,
        session_timeout_ms: request.session_timeout_ms,
        // v0 has no rebalance timeout; Kafka uses the session timeout.
        rebalance_timeout_ms: if version == 0 {
            request.session_timeout_ms
        } else {
            request.rebalance_timeout_ms
        },
        protocol_type: request.protocol_type.as_str().to_string(),
        protocols: request
            .protocols
            .iter()
            .map(|p| (p.name.as_str().to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let joined = broker
        .groups
        .join(&broker.replicas, request.group_id.as_str(), join);
    async move { answer(joined.await) }
}

fn answer(answer: JoinAnswer) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(answer.error)
        .with_generation_id(answer.generation)
        .with_protocol_type(answer.protocol_type.map(str_bytes))
        // Before v7 the protocol name is not nullable: "" when none.
        .with_protocol_name(Some(str_bytes(answer.protocol.unwrap_or_default())))
        .with_leader(str_bytes(answer.leader))
        .with_member_id(str_bytes(answer.member_id))
        .with_members(
            answer
                .members
                .into_iter()
                .map(|m| {
                    JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(m.member_id))
                        .with_group_instance_id(m.group_instance_id.map(str_bytes))
                        .with_metadata(m.metadata)
                })
                .collect(),
        )
}
