//! Topic configs → the partition log's settings: a topic's config map over
//! the broker's defaults (its start-up settings, then its dynamic configs)
//! becomes a storage [`LogConfig`], and back, for DescribeConfigs. The
//! replica manager applies these to every log it opens; the config
//! handlers (`handlers/configs.rs`) show the same values.

use std::collections::BTreeMap;

use rill_storage::{CleanupPolicy, LogConfig, TimestampType};
use tracing::warn;

/// A topic's log settings: its own configs over the broker's defaults.
/// Values were validated by the controller; one that still does not parse
/// keeps the default.
pub fn log_config(defaults: &LogConfig, configs: &BTreeMap<String, String>) -> LogConfig {
    let mut config = defaults.clone();
    for (name, value) in configs {
        let long = || value.parse::<i64>().ok();
        match name.as_str() {
            "segment.bytes" => set(
                &mut config.segment_bytes,
                long().and_then(|v| u64::try_from(v).ok()),
            ),
            "segment.ms" => set(&mut config.segment_ms, long()),
            "segment.index.bytes" => set(
                &mut config.segment_index_bytes,
                long().and_then(|v| u64::try_from(v).ok()),
            ),
            "index.interval.bytes" => set(
                &mut config.index_interval_bytes,
                long().and_then(|v| u64::try_from(v).ok()),
            ),
            "max.message.bytes" => set(
                &mut config.max_message_bytes,
                long().and_then(|v| u64::try_from(v).ok()),
            ),
            "message.timestamp.type" => set(
                &mut config.timestamp_type,
                match value.as_str() {
                    "CreateTime" => Some(TimestampType::CreateTime),
                    "LogAppendTime" => Some(TimestampType::LogAppendTime),
                    _ => None,
                },
            ),
            "retention.ms" => set(&mut config.retention_ms, long()),
            "retention.bytes" => set(&mut config.retention_bytes, long()),
            "cleanup.policy" => set(&mut config.cleanup_policy, CleanupPolicy::parse(value).ok()),
            "delete.retention.ms" => set(&mut config.delete_retention_ms, long()),
            "min.cleanable.dirty.ratio" => set(
                &mut config.min_cleanable_dirty_ratio,
                value.parse::<f64>().ok(),
            ),
            "min.compaction.lag.ms" => set(&mut config.min_compaction_lag_ms, long()),
            "max.compaction.lag.ms" => set(&mut config.max_compaction_lag_ms, long()),
            _ => {}
        }
    }
    if config.validate().is_err() {
        warn!(
            ?configs,
            "topic configs do not make a valid log config; using the defaults"
        );
        return defaults.clone();
    }
    config
}

/// The value `config` gives the topic config `name`, formatted as Kafka
/// formats it, for the topic configs the log honours; `None` for the others.
pub fn log_config_value(config: &LogConfig, name: &str) -> Option<String> {
    let value = match name {
        "segment.bytes" => config.segment_bytes.to_string(),
        "segment.ms" => config.segment_ms.to_string(),
        "segment.index.bytes" => config.segment_index_bytes.to_string(),
        "index.interval.bytes" => config.index_interval_bytes.to_string(),
        "max.message.bytes" => config.max_message_bytes.to_string(),
        "message.timestamp.type" => match config.timestamp_type {
            TimestampType::CreateTime => "CreateTime".to_string(),
            TimestampType::LogAppendTime => "LogAppendTime".to_string(),
        },
        "retention.ms" => config.retention_ms.to_string(),
        "retention.bytes" => config.retention_bytes.to_string(),
        "cleanup.policy" => config.cleanup_policy.to_string(),
        "delete.retention.ms" => config.delete_retention_ms.to_string(),
        "min.cleanable.dirty.ratio" => config.min_cleanable_dirty_ratio.to_string(),
        "min.compaction.lag.ms" => config.min_compaction_lag_ms.to_string(),
        "max.compaction.lag.ms" => config.max_compaction_lag_ms.to_string(),
        _ => return None,
    };
    Some(value)
}

/// The dynamic broker configs of this node (`log.retention.ms`, …), renamed
/// to the topic configs whose defaults they set (`retention.ms`, …).
/// Entries that are not dynamic broker configs are ignored: the controller
/// accepts only those.
pub fn dynamic_topic_defaults(
    broker_configs: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    broker_configs
        .into_iter()
        .flatten()
        .filter_map(|(name, value)| {
            rill_controller::config::dynamic_broker_config_topic_synonym(name)
                .map(|topic_name| (topic_name.to_string(), value.clone()))
        })
        .collect()
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}
