//! DeleteGroups (key 42), v0..=2: removes empty groups and their offsets
//! (tombstones in `__consumer_offsets`). A group with members gets
//! NON_EMPTY_GROUP; an unknown one GROUP_ID_NOT_FOUND. Every group is
//! decided and its tombstones appended when `handle` is called, in the
//! connection's request order; the future returned waits until they are
//! durable.

use std::future::Future;
use std::sync::Arc;

use rill_protocol::kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use rill_protocol::kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use crate::server::Broker;

pub fn handle(
    broker: &Arc<Broker>,
    _version: i16,
    request: DeleteGroupsRequest,
) -> impl Future<Output = DeleteGroupsResponse> + Send + 'static {
    let deletions: Vec<_> = request
        .groups_names
        .into_iter()
        .map(|group_id| {
            let deleted = broker
                .groups
                .delete_group(&broker.replicas, group_id.as_str());
            (group_id, deleted)
        })
        .collect();
    async move {
        let mut results = Vec::with_capacity(deletions.len());
        for (group_id, deleted) in deletions {
            let code = match deleted.await {
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
}
