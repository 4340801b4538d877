//! ListGroups (key 16), v0..=5: the groups this node coordinates, filtered
//! by state (v4+) and type (v5+; every rill group is "classic").

use std::sync::Arc;

use rill_protocol::kafka_protocol::messages::list_groups_response::ListedGroup;
use rill_protocol::kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};

use super::str_bytes;
use crate::server::Broker;

const GROUP_TYPE: &str = "classic";

pub fn handle(
    broker: &Arc<Broker>,
    _version: i16,
    request: ListGroupsRequest,
) -> ListGroupsResponse {
    let groups = match broker.groups.list(&broker.replicas) {
        Ok(groups) => groups,
        Err(kind) => return ListGroupsResponse::default().with_error_code(kind.code()),
    };
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.as_str().to_ascii_lowercase())
        .collect();
    let types_match = request.types_filter.is_empty()
        || request
            .types_filter
            .iter()
            .any(|t| t.as_str().eq_ignore_ascii_case(GROUP_TYPE));
    let listed = groups
        .into_iter()
        .filter(|_| types_match)
        .filter(|g| states.is_empty() || states.contains(&g.state.name().to_ascii_lowercase()))
        .map(|g| {
            ListedGroup::default()
                .with_group_id(GroupId(str_bytes(g.group_id)))
                .with_protocol_type(str_bytes(g.protocol_type))
                .with_group_state(str_bytes(g.state.name()))
                .with_group_type(str_bytes(GROUP_TYPE))
        })
        .collect();
    ListGroupsResponse::default().with_groups(listed)
}
