//! DeleteGroups (key 42), v0..=2: removes empty groups and their offsets
//! (tombstones in `__consumer_offsets`). A group with members gets
//! NON_EMPTY_GROUP; an unknown one GROUP_ID_NOT_FOUND.

use std::sync::Arc;

use rill_protocol::kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use rill_protocol::kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use crate::server::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    _version: i16,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for group_id in request.groups_names {
        let code = match broker.groups.delete_group(broker, group_id.as_str()).await {
            Ok(()) => 0,
            Err(code) => code,
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group_id)
                .with_error_code(code),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}
