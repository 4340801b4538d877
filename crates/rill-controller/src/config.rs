//! Which topic and broker configs exist, what values they take and what
//! they default to.
//!
//! Kafka rejects a CreateTopics or AlterConfigs request that names a topic
//! config it does not know, or gives one a value of the wrong type or out of
//! range, with INVALID_CONFIG. The table below is Kafka's topic config list
//! (as of 3.x) with the type, lower bound, default and broker-level synonym
//! of each (Kafka's `LogConfig` and `ServerTopicConfigSynonyms`).
//!
//! The broker synonyms of topic configs (`log.retention.ms`, …) may be
//! changed at run time (AlterConfigs on a broker resource): they change the
//! defaults of every topic that does not set the config itself, as Kafka's
//! dynamic `log.*` configs do. The rest of Kafka's dynamic broker configs
//! are in `broker_config`.

use crate::state::MetadataError;

/// The kind of value a config takes, with its bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// A 64-bit integer, at least the bound.
    Long(i64),
    /// A 32-bit integer, at least the bound.
    Int(i32),
    /// A 32-bit integer in `[low, high]`.
    IntIn(i32, i32),
    /// A floating-point number in `[low, high]`.
    Double(f64, f64),
    Bool,
    /// One of the listed words.
    OneOf(&'static [&'static str]),
    /// A comma-separated, non-empty list of the listed words.
    ListOf(&'static [&'static str]),
    /// A comma-separated list of anything (Kafka validates these elsewhere).
    AnyList,
    /// Any string (Kafka validates these elsewhere, or not at all).
    Any,
}

/// The type Kafka gives a config's value (`ConfigDef.Type`), as
/// DescribeConfigs reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean,
    String,
    Int,
    Long,
    Double,
    /// Comma-separated; the only type IncrementalAlterConfigs may APPEND to
    /// or SUBTRACT from.
    List,
}

impl Kind {
    pub(crate) fn config_type(self) -> ConfigType {
        match self {
            Kind::Long(_) => ConfigType::Long,
            Kind::Int(_) | Kind::IntIn(..) => ConfigType::Int,
            Kind::Double(..) => ConfigType::Double,
            Kind::Bool => ConfigType::Boolean,
            Kind::OneOf(_) | Kind::Any => ConfigType::String,
            Kind::ListOf(_) | Kind::AnyList => ConfigType::List,
        }
    }
}

/// One topic config: its name, the values it takes, Kafka's default, and
/// the broker config that sets the default for every topic.
#[derive(Debug, Clone, Copy)]
struct TopicConfigEntry {
    name: &'static str,
    kind: Kind,
    default: &'static str,
    broker_synonym: Option<&'static str>,
}

const fn entry(
    name: &'static str,
    kind: Kind,
    default: &'static str,
    broker_synonym: Option<&'static str>,
) -> TopicConfigEntry {
    TopicConfigEntry {
        name,
        kind,
        default,
        broker_synonym,
    }
}

const LONG_MAX: &str = "9223372036854775807";

/// Every topic config Kafka accepts, sorted by name.
const TOPIC_CONFIGS: &[TopicConfigEntry] = &[
    entry(
        "cleanup.policy",
        Kind::ListOf(&["compact", "delete"]),
        "delete",
        Some("log.cleanup.policy"),
    ),
    entry(
        "compression.type",
        Kind::OneOf(&["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]),
        "producer",
        Some("compression.type"),
    ),
    entry(
        "delete.retention.ms",
        Kind::Long(0),
        "86400000",
        Some("log.cleaner.delete.retention.ms"),
    ),
    entry(
        "file.delete.delay.ms",
        Kind::Long(0),
        "60000",
        Some("log.segment.delete.delay.ms"),
    ),
    entry(
        "flush.messages",
        Kind::Long(1),
        LONG_MAX,
        Some("log.flush.interval.messages"),
    ),
    entry(
        "flush.ms",
        Kind::Long(0),
        LONG_MAX,
        Some("log.flush.interval.ms"),
    ),
    entry(
        "follower.replication.throttled.replicas",
        Kind::AnyList,
        "",
        None,
    ),
    entry(
        "index.interval.bytes",
        Kind::Int(0),
        "4096",
        Some("log.index.interval.bytes"),
    ),
    entry(
        "leader.replication.throttled.replicas",
        Kind::AnyList,
        "",
        None,
    ),
    entry(
        "local.retention.bytes",
        Kind::Long(-2),
        "-2",
        Some("log.local.retention.bytes"),
    ),
    entry(
        "local.retention.ms",
        Kind::Long(-2),
        "-2",
        Some("log.local.retention.ms"),
    ),
    entry(
        "max.compaction.lag.ms",
        Kind::Long(1),
        LONG_MAX,
        Some("log.cleaner.max.compaction.lag.ms"),
    ),
    entry(
        "max.message.bytes",
        Kind::Int(0),
        "1048588",
        Some("message.max.bytes"),
    ),
    entry(
        "message.downconversion.enable",
        Kind::Bool,
        "true",
        Some("log.message.downconversion.enable"),
    ),
    entry(
        "message.format.version",
        Kind::Any,
        "3.0-IV1",
        Some("log.message.format.version"),
    ),
    entry(
        "message.timestamp.after.max.ms",
        Kind::Long(0),
        LONG_MAX,
        Some("log.message.timestamp.after.max.ms"),
    ),
    entry(
        "message.timestamp.before.max.ms",
        Kind::Long(0),
        LONG_MAX,
        Some("log.message.timestamp.before.max.ms"),
    ),
    entry(
        "message.timestamp.difference.max.ms",
        Kind::Long(0),
        LONG_MAX,
        Some("log.message.timestamp.difference.max.ms"),
    ),
    entry(
        "message.timestamp.type",
        Kind::OneOf(&["CreateTime", "LogAppendTime"]),
        "CreateTime",
        Some("log.message.timestamp.type"),
    ),
    entry(
        "min.cleanable.dirty.ratio",
        Kind::Double(0.0, 1.0),
        "0.5",
        Some("log.cleaner.min.cleanable.ratio"),
    ),
    entry(
        "min.compaction.lag.ms",
        Kind::Long(0),
        "0",
        Some("log.cleaner.min.compaction.lag.ms"),
    ),
    entry(
        "min.insync.replicas",
        Kind::Int(1),
        "1",
        Some("min.insync.replicas"),
    ),
    entry("preallocate", Kind::Bool, "false", Some("log.preallocate")),
    entry("remote.storage.enable", Kind::Bool, "false", None),
    entry(
        "retention.bytes",
        Kind::Long(i64::MIN),
        "-1",
        Some("log.retention.bytes"),
    ),
    entry(
        "retention.ms",
        Kind::Long(-1),
        "604800000",
        Some("log.retention.ms"),
    ),
    entry(
        "segment.bytes",
        Kind::Int(14),
        "1073741824",
        Some("log.segment.bytes"),
    ),
    // Kafka's bound is 4, but rill's log needs room for one time-index
    // entry (12 bytes) and would otherwise drop the topic's configs.
    entry(
        "segment.index.bytes",
        Kind::Int(12),
        "10485760",
        Some("log.index.size.max.bytes"),
    ),
    entry(
        "segment.jitter.ms",
        Kind::Long(0),
        "0",
        Some("log.roll.jitter.ms"),
    ),
    entry(
        "segment.ms",
        Kind::Long(1),
        "604800000",
        Some("log.roll.ms"),
    ),
    entry(
        "unclean.leader.election.enable",
        Kind::Bool,
        "false",
        Some("unclean.leader.election.enable"),
    ),
];

/// What DescribeConfigs needs to know about one topic config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicConfigDef {
    pub name: &'static str,
    pub config_type: ConfigType,
    /// Kafka's default value, as a string.
    pub default: &'static str,
    /// The broker config that sets this config's default for every topic
    /// (`log.retention.ms` for `retention.ms`), if there is one.
    pub broker_synonym: Option<&'static str>,
}

impl From<&TopicConfigEntry> for TopicConfigDef {
    fn from(entry: &TopicConfigEntry) -> Self {
        TopicConfigDef {
            name: entry.name,
            config_type: entry.kind.config_type(),
            default: entry.default,
            broker_synonym: entry.broker_synonym,
        }
    }
}

fn find_topic_config(name: &str) -> Option<&'static TopicConfigEntry> {
    TOPIC_CONFIGS
        .binary_search_by(|entry| entry.name.cmp(name))
        .ok()
        .map(|i| &TOPIC_CONFIGS[i])
}

/// The names of every topic config Kafka knows, sorted.
pub fn topic_config_names() -> impl Iterator<Item = &'static str> {
    TOPIC_CONFIGS.iter().map(|entry| entry.name)
}

/// Every topic config Kafka knows, sorted by name.
pub fn topic_configs() -> impl Iterator<Item = TopicConfigDef> {
    TOPIC_CONFIGS.iter().map(TopicConfigDef::from)
}

/// The topic config called `name`, if Kafka has one.
pub fn topic_config(name: &str) -> Option<TopicConfigDef> {
    find_topic_config(name).map(TopicConfigDef::from)
}

/// Whether `name` is a topic config Kafka knows.
pub fn is_topic_config(name: &str) -> bool {
    find_topic_config(name).is_some()
}

/// Every broker config that sets a topic config's default (Kafka's
/// `ServerTopicConfigSynonyms`: `log.retention.ms` for `retention.ms`),
/// each with that topic config. All of them may be changed at run time
/// (Kafka's `DynamicLogConfig`); the broker applies those its log honours.
pub fn dynamic_broker_configs() -> impl Iterator<Item = (&'static str, &'static str)> {
    TOPIC_CONFIGS.iter().filter_map(|entry| {
        entry
            .broker_synonym
            .map(|broker_name| (broker_name, entry.name))
    })
}

/// The topic config whose default the dynamic broker config `name` sets.
pub fn dynamic_broker_config_topic_synonym(name: &str) -> Option<&'static str> {
    dynamic_broker_configs()
        .find(|(broker_name, _)| *broker_name == name)
        .map(|(_, topic_name)| topic_name)
}

/// Checks one topic config entry: the name must be known and the value of
/// the right type and in range.
pub fn validate_topic_config(name: &str, value: &str) -> Result<(), MetadataError> {
    let Some(entry) = find_topic_config(name) else {
        return Err(MetadataError::InvalidConfig(format!(
            "unknown topic config name: {name}"
        )));
    };
    validate_value(name, entry.kind, value)
}

pub(crate) fn validate_value(name: &str, kind: Kind, value: &str) -> Result<(), MetadataError> {
    let invalid = |why: &str| {
        Err(MetadataError::InvalidConfig(format!(
            "invalid value {value:?} for configuration {name}: {why}"
        )))
    };
    let value_trimmed = value.trim();
    match kind {
        Kind::Long(low) => match value_trimmed.parse::<i64>() {
            Ok(v) if v >= low => Ok(()),
            Ok(_) => invalid(&format!("value must be at least {low}")),
            Err(_) => invalid("expected a 64-bit integer"),
        },
        Kind::Int(low) => match value_trimmed.parse::<i32>() {
            Ok(v) if v >= low => Ok(()),
            Ok(_) => invalid(&format!("value must be at least {low}")),
            Err(_) => invalid("expected a 32-bit integer"),
        },
        Kind::IntIn(low, high) => match value_trimmed.parse::<i32>() {
            Ok(v) if (low..=high).contains(&v) => Ok(()),
            Ok(_) => invalid(&format!("value must be between {low} and {high}")),
            Err(_) => invalid("expected a 32-bit integer"),
        },
        Kind::Double(low, high) => match value_trimmed.parse::<f64>() {
            Ok(v) if (low..=high).contains(&v) => Ok(()),
            Ok(_) => invalid(&format!("value must be between {low} and {high}")),
            Err(_) => invalid("expected a number"),
        },
        Kind::Bool => {
            if value_trimmed.eq_ignore_ascii_case("true")
                || value_trimmed.eq_ignore_ascii_case("false")
            {
                Ok(())
            } else {
                invalid("expected true or false")
            }
        }
        Kind::OneOf(words) => {
            if words.contains(&value_trimmed) {
                Ok(())
            } else {
                invalid(&format!("expected one of {words:?}"))
            }
        }
        Kind::ListOf(words) => {
            let mut items = value_trimmed.split(',').map(str::trim).peekable();
            if items.peek().is_none_or(|first| first.is_empty()) {
                return invalid("expected a non-empty list");
            }
            if items.all(|item| words.contains(&item)) {
                Ok(())
            } else {
                invalid(&format!("expected a list of {words:?}"))
            }
        }
        Kind::AnyList | Kind::Any => Ok(()),
    }
}

/// Checks one broker config entry set at run time: it must be one of
/// Kafka's dynamic broker configs (`crate::broker_config`), or a broker
/// synonym of a topic config, with a value of its type. Other broker
/// configs (`num.partitions`, `log.dirs`, …) are read at start-up only.
/// Whether the name may be set at the level asked for (one broker or the
/// cluster-wide default) is the broker's check, made before it proposes.
pub fn validate_broker_config(name: &str, value: &str) -> Result<(), MetadataError> {
    if let Some(topic_name) = dynamic_broker_config_topic_synonym(name) {
        let entry = find_topic_config(topic_name).expect("listed in TOPIC_CONFIGS");
        return validate_value(name, entry.kind, value);
    }
    crate::broker_config::validate(name, value).map_err(MetadataError::InvalidConfig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_for_binary_search() {
        assert!(TOPIC_CONFIGS.windows(2).all(|w| w[0].name < w[1].name));
    }

    #[test]
    fn defaults_are_valid_values() {
        for entry in TOPIC_CONFIGS {
            if matches!(entry.kind, Kind::AnyList | Kind::Any) {
                continue;
            }
            assert_eq!(
                validate_topic_config(entry.name, entry.default),
                Ok(()),
                "{}",
                entry.name
            );
        }
    }

    #[test]
    fn dynamic_broker_configs_are_validated_as_their_topic_synonyms() {
        assert_eq!(
            dynamic_broker_configs().count(),
            TOPIC_CONFIGS
                .iter()
                .filter(|entry| entry.broker_synonym.is_some())
                .count()
        );
        assert_eq!(validate_broker_config("log.retention.ms", "100"), Ok(()));
        assert_eq!(
            dynamic_broker_config_topic_synonym("log.roll.ms"),
            Some("segment.ms")
        );
        for (name, value) in [
            ("log.retention.ms", "-2"),
            ("log.cleanup.policy", "forever"),
            ("num.partitions", "3"),
            ("retention.ms", "100"),
            ("", "1"),
        ] {
            assert!(
                matches!(
                    validate_broker_config(name, value),
                    Err(MetadataError::InvalidConfig(_))
                ),
                "{name}={value}"
            );
        }
    }

    #[test]
    fn accepts_good_values() {
        for (name, value) in [
            ("retention.ms", "-1"),
            ("retention.ms", "604800000"),
            ("retention.bytes", "-1"),
            ("segment.bytes", "1048576"),
            ("segment.ms", "1"),
            ("cleanup.policy", "compact,delete"),
            ("cleanup.policy", "delete"),
            ("max.message.bytes", "1048588"),
            ("message.timestamp.type", "LogAppendTime"),
            ("min.insync.replicas", "1"),
            ("delete.retention.ms", "0"),
            ("min.cleanable.dirty.ratio", "0.5"),
            ("preallocate", "TRUE"),
        ] {
            assert_eq!(validate_topic_config(name, value), Ok(()), "{name}={value}");
        }
    }

    #[test]
    fn rejects_bad_values_and_unknown_names() {
        for (name, value) in [
            ("retention.ms", "-2"),
            ("retention.ms", "soon"),
            ("segment.bytes", "13"),
            ("segment.bytes", "99999999999"),
            ("segment.ms", "0"),
            ("segment.index.bytes", "11"),
            ("cleanup.policy", ""),
            ("cleanup.policy", "delete,forever"),
            ("message.timestamp.type", "createtime"),
            ("min.insync.replicas", "0"),
            ("min.cleanable.dirty.ratio", "1.5"),
            ("preallocate", "yes"),
            ("no.such.config", "1"),
        ] {
            assert!(
                matches!(
                    validate_topic_config(name, value),
                    Err(MetadataError::InvalidConfig(_))
                ),
                "{name}={value}"
            );
        }
        assert!(is_topic_config("retention.ms"));
        assert!(!is_topic_config("log.retention.ms"));
    }
}
