//! LeaveGroup (key 13), v0..=5: members leave a group at once rather than
//! at the end of their sessions. v0..=2 name one member; v3+ a batch,
//! static members by instance id, each with its own error.

use std::sync::Arc;

use rill_protocol::kafka_protocol::messages::leave_group_response::MemberResponse;
use rill_protocol::kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use crate::server::Broker;

pub fn handle(
    broker: &Arc<Broker>,
    version: i16,
    request: LeaveGroupRequest,
) -> LeaveGroupResponse {
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.as_str().to_string(),
                    m.group_instance_id.as_ref().map(|i| i.as_str().to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.as_str().to_string(), None)]
    };
    let outcomes = match broker
        .groups
        .leave(&broker.replicas, request.group_id.as_str(), &members)
    {
        Ok(outcomes) => outcomes,
        Err(kind) => return LeaveGroupResponse::default().with_error_code(kind.code()),
    };
    let code = |outcome: &Result<(), _>| match outcome {
        Ok(()) => 0,
        Err(kind) => rill_protocol::kafka_protocol::error::ResponseError::code(kind),
    };
    if version < 3 {
        return LeaveGroupResponse::default().with_error_code(code(&outcomes[0]));
    }
    LeaveGroupResponse::default().with_members(
        members
            .into_iter()
            .zip(&outcomes)
            .map(|((member_id, instance), outcome)| {
                MemberResponse::default()
                    .with_member_id(super::str_bytes(member_id))
                    .with_group_instance_id(instance.map(super::str_bytes))
                    .with_error_code(code(outcome))
            })
            .collect(),
    )
}
