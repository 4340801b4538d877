//! DescribeConfigs (key 32), v1–v4: every config of a topic or of this
//! broker, with its value, where the value comes from, and (v1+, when
//! asked) its synonyms; and the config listing CreateTopics v5+ returns
//! for a new topic.
//!
//! As Kafka (`ConfigHelper.describeConfigs`): a topic resource lists every
//! topic config Kafka has; an unknown topic is UNKNOWN_TOPIC_OR_PARTITION,
//! an invalid name INVALID_TOPIC_EXCEPTION. A broker resource must name
//! this node, or be empty: the cluster-wide dynamic defaults, of which
//! Kafka lists only those set. Other resource types are INVALID_REQUEST.
//! Passwords (`ssl.keystore.password`, …) are listed without a value and
//! marked sensitive, as Kafka lists them.
//! Documentation (v3+) is null: Kafka allows it, and rill has no text that
//! would not be a copy of Kafka's.

use std::collections::BTreeMap;

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::create_topics_response::CreatableTopicConfigs;
use rill_protocol::kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use rill_protocol::kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use rill_protocol::kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use rill_types::TopicName;

use super::configs::{
    broker_entries, check_broker_name, cluster_default_entries, config_type_id, topic_entries,
    unsupported_resource_type, ConfigEntry, RESOURCE_BROKER, RESOURCE_TOPIC,
};
use super::{str_bytes, KafkaError};
use crate::server::Broker;

pub fn handle(
    broker: &Broker,
    _version: i16,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let include_synonyms = request.include_synonyms;
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone())
                .with_error_message(None);
            match describe(broker, &resource) {
                Ok(entries) => {
                    let wanted = |entry: &ConfigEntry| match &resource.configuration_keys {
                        None => true,
                        Some(keys) => keys.iter().any(|key| key.as_str() == entry.name),
                    };
                    result.with_configs(
                        entries
                            .into_iter()
                            .filter(wanted)
                            .map(|entry| wire_entry(entry, include_synonyms))
                            .collect(),
                    )
                }
                Err(error) => result
                    .with_error_code(error.code)
                    .with_error_message(error.message_bytes()),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn describe(
    broker: &Broker,
    resource: &DescribeConfigsResource,
) -> Result<Vec<ConfigEntry>, KafkaError> {
    let name = resource.resource_name.as_str();
    let image = broker.controller.image();
    match resource.resource_type {
        RESOURCE_TOPIC => {
            // Kafka's `Topic.validate`: the empty name is invalid too.
            TopicName::new(name).map_err(|error| {
                KafkaError::with_message(ResponseError::InvalidTopicException, error.to_string())
            })?;
            match image.topic(name) {
                Some(topic) => Ok(topic_entries(broker, &image, &topic.configs)),
                None => Err(KafkaError::new(ResponseError::UnknownTopicOrPartition)),
            }
        }
        RESOURCE_BROKER if name.is_empty() => Ok(cluster_default_entries(&image)),
        RESOURCE_BROKER => {
            check_broker_name(broker, name)?;
            Ok(broker_entries(broker, &image))
        }
        other => Err(unsupported_resource_type(other)),
    }
}

fn wire_entry(entry: ConfigEntry, include_synonyms: bool) -> DescribeConfigsResourceResult {
    let sensitive = entry.sensitive;
    let value = |value: Option<String>| value.filter(|_| !sensitive).map(str_bytes);
    let synonyms = if include_synonyms {
        entry
            .synonyms
            .into_iter()
            .map(|synonym| {
                DescribeConfigsSynonym::default()
                    .with_name(str_bytes(synonym.name))
                    .with_value(value(synonym.value))
                    .with_source(synonym.source)
            })
            .collect()
    } else {
        Vec::new()
    };
    DescribeConfigsResourceResult::default()
        .with_name(str_bytes(entry.name))
        .with_value(value(entry.value))
        .with_read_only(entry.read_only)
        .with_config_source(entry.source)
        .with_is_sensitive(sensitive)
        .with_synonyms(synonyms)
        .with_config_type(config_type_id(entry.config_type))
        .with_documentation(None)
}

/// Every config of a just-created topic with its value and source, as
/// CreateTopics v5+ lists them (Kafka fills the list from the same code as
/// DescribeConfigs). Empty if the topic is gone again.
pub fn created_topic_configs(broker: &Broker, name: &str) -> Vec<CreatableTopicConfigs> {
    let image = broker.controller.image();
    match image.topic(name) {
        Some(topic) => topic_configs_as_created(broker, &topic.configs),
        None => Vec::new(),
    }
}

/// The configs a topic created with `configs` would have: what a
/// validate-only CreateTopics v5+ lists.
pub fn topic_configs_as_created(
    broker: &Broker,
    configs: &BTreeMap<String, String>,
) -> Vec<CreatableTopicConfigs> {
    let image = broker.controller.image();
    topic_entries(broker, &image, configs)
        .into_iter()
        .map(|entry| {
            CreatableTopicConfigs::default()
                .with_name(str_bytes(entry.name))
                .with_value(entry.value.map(str_bytes))
                .with_read_only(entry.read_only)
                .with_config_source(entry.source)
                .with_is_sensitive(false)
        })
        .collect()
}
