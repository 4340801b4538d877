//! DescribeConfigs (key 32), and the config listing CreateTopics v5+
//! returns for a new topic.

use rill_protocol::kafka_protocol::messages::create_topics_response::CreatableTopicConfigs;

use super::str_bytes;
use crate::server::Broker;

/// Kafka's `ConfigSource.TOPIC_CONFIG`.
const SOURCE_TOPIC_CONFIG: i8 = 1;

/// The configs set on a just-created topic, as CreateTopics v5+ lists them.
pub fn created_topic_configs(broker: &Broker, name: &str) -> Vec<CreatableTopicConfigs> {
    let image = broker.controller.image();
    let Some(topic) = image.topic(name) else {
        return Vec::new();
    };
    topic
        .configs
        .iter()
        .map(|(name, value)| {
            CreatableTopicConfigs::default()
                .with_name(str_bytes(name.clone()))
                .with_value(Some(str_bytes(value.clone())))
                .with_config_source(SOURCE_TOPIC_CONFIG)
        })
        .collect()
}
