//! Heartbeat (key 12), v0..=4: a group member is alive, and learns whether
//! the group is rebalancing.

use std::sync::Arc;

use rill_protocol::kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use crate::server::Broker;

pub fn handle(broker: &Arc<Broker>, _version: i16, request: HeartbeatRequest) -> HeartbeatResponse {
    let outcome = broker.groups.heartbeat(
        &broker.replicas,
        request.group_id.as_str(),
        request.member_id.as_str(),
        request.group_instance_id.as_ref().map(|i| i.as_str()),
        request.generation_id,
    );
    HeartbeatResponse::default().with_error_code(match outcome {
        Ok(()) => 0,
        Err(kind) => kind.code(),
    })
}
