//! AlterConfigs (key 33), v0–v2: replaces the whole set of configs of a
//! topic or of this broker. Configs the request does not name go back to
//! their defaults, as in Kafka (`ConfigurationControlManager
//! .legacyAlterConfigResource`). Each resource is one controller command;
//! `validate_only` checks it against the current metadata and changes
//! nothing. Which broker configs may change, and what that does, is in
//! `rill_controller::config`.

use std::sync::Arc;

use rill_protocol::kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use rill_protocol::kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};

use super::configs::{alter, AlterResource, Change};
use crate::server::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    _version: i16,
    request: AlterConfigsRequest,
) -> AlterConfigsResponse {
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
            change: Change::Replace(
                resource
                    .configs
                    .into_iter()
                    .map(|c| (c.name.to_string(), c.value.map(|v| v.to_string())))
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
    AlterConfigsResponse::default().with_responses(responses)
}
