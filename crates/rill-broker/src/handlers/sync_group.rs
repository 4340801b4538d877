//! SyncGroup (key 14), v0..=5: after a join phase, the leader sends every
//! member's assignment and every member gets its own. The answer waits
//! until the leader's assignment is durable in `__consumer_offsets`. The
//! group takes the request (and appends the leader's assignment) when
//! `handle` is called, in the connection's request order; the future
//! returned is the wait.

use std::future::Future;
use std::sync::Arc;

use rill_protocol::kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};

use super::str_bytes;
use crate::server::Broker;

pub fn handle(
    broker: &Arc<Broker>,
    _version: i16,
    request: SyncGroupRequest,
) -> impl Future<Output = SyncGroupResponse> + Send + 'static {
    let assignments = request
        .assignments
        .iter()
        .map(|a| (a.member_id.as_str().to_string(), a.assignment.clone()))
        .collect();
    let synced = broker.groups.sync(
        &broker.replicas,
        request.group_id.as_str(),
        request.member_id.as_str(),
        request.group_instance_id.as_ref().map(|i| i.as_str()),
        request.generation_id,
        request.protocol_type.as_ref().map(|t| t.as_str()),
        request.protocol_name.as_ref().map(|p| p.as_str()),
        assignments,
    );
    async move {
        let answer = synced.await;
        SyncGroupResponse::default()
            .with_error_code(answer.error)
            .with_protocol_type(answer.protocol_type.map(str_bytes))
            .with_protocol_name(answer.protocol.map(str_bytes))
            .with_assignment(answer.assignment)
    }
}
