//! IncrementalAlterConfigs (key 44), v0–v1: SET, DELETE, APPEND and
//! SUBTRACT on single configs of a topic or of this broker; the configs
//! not named keep their values. APPEND and SUBTRACT work on list configs
//! only (`cleanup.policy`, the throttled-replica lists); on others they are
//! INVALID_CONFIG, as in Kafka. Each resource is one controller command;
//! `validate_only` checks it against the current metadata and changes
//! nothing.

use std::sync::Arc;

use rill_protocol::kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use rill_protocol::kafka_protocol::messages::{
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};

use super::configs::{alter, AlterResource, Change};
use crate::server::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    _version: i16,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let names: Vec<_> = request
        .resources
        .iter()
        .map(|r| (r.resource_type, r.resource_name.clone()))
        .collect();
    let resources = request
        .resources
        .into_iter()
        .map(|resource| AlterResource {
            resource_type: resource.resource_type,
            name: resource.resource_name.to_string(),
            change: Change::Incremental(
                resource
                    .configs
                    .into_iter()
                    .map(|c| {
                        (
                            c.name.to_string(),
                            c.config_operation,
                            c.value.map(|v| v.to_string()),
                        )
                    })
                    .collect(),
            ),
        })
        .collect();
    let results = alter(broker, resources, request.validate_only).await;
    let responses = names
        .into_iter()
        .zip(results)
        .map(|((resource_type, name), result)| {
            let response = AlterConfigsResourceResponse::default()
                .with_resource_type(resource_type)
                .with_resource_name(name)
                .with_error_message(None);
            match result {
                Ok(()) => response,
                Err(error) => response
                    .with_error_code(error.code)
                    .with_error_message(error.message_bytes()),
            }
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
