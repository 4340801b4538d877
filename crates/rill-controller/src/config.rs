//! Validation of topic and broker configuration entries.
//!
//! Kafka rejects a CreateTopics or AlterConfigs request that names a topic
//! config it does not know, or gives one a value of the wrong type or out of
//! range, with INVALID_CONFIG. The table below is Kafka's topic config list
//! (as of 3.x) with the type and lower bound of each value.

use crate::state::MetadataError;

/// The kind of value a config takes, with its bounds.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A 64-bit integer, at least the bound.
    Long(i64),
    /// A 32-bit integer, at least the bound.
    Int(i32),
    /// A floating-point number in `[low, high]`.
    Double(f64, f64),
    Bool,
    /// One of the listed words.
    OneOf(&'static [&'static str]),
    /// A comma-separated, non-empty list of the listed words.
    ListOf(&'static [&'static str]),
    /// Any string (Kafka validates these elsewhere, or not at all).
    Any,
}

/// Every topic config Kafka accepts, sorted by name.
const TOPIC_CONFIGS: &[(&str, Kind)] = &[
    ("cleanup.policy", Kind::ListOf(&["compact", "delete"])),
    (
        "compression.type",
        Kind::OneOf(&["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]),
    ),
    ("delete.retention.ms", Kind::Long(0)),
    ("file.delete.delay.ms", Kind::Long(0)),
    ("flush.messages", Kind::Long(1)),
    ("flush.ms", Kind::Long(0)),
    ("follower.replication.throttled.replicas", Kind::Any),
    ("index.interval.bytes", Kind::Int(0)),
    ("leader.replication.throttled.replicas", Kind::Any),
    ("local.retention.bytes", Kind::Long(-2)),
    ("local.retention.ms", Kind::Long(-2)),
    ("max.compaction.lag.ms", Kind::Long(1)),
    ("max.message.bytes", Kind::Int(0)),
    ("message.downconversion.enable", Kind::Bool),
    ("message.format.version", Kind::Any),
    ("message.timestamp.after.max.ms", Kind::Long(0)),
    ("message.timestamp.before.max.ms", Kind::Long(0)),
    ("message.timestamp.difference.max.ms", Kind::Long(0)),
    (
        "message.timestamp.type",
        Kind::OneOf(&["CreateTime", "LogAppendTime"]),
    ),
    ("min.cleanable.dirty.ratio", Kind::Double(0.0, 1.0)),
    ("min.compaction.lag.ms", Kind::Long(0)),
    ("min.insync.replicas", Kind::Int(1)),
    ("preallocate", Kind::Bool),
    ("remote.storage.enable", Kind::Bool),
    ("retention.bytes", Kind::Long(i64::MIN)),
    ("retention.ms", Kind::Long(-1)),
    ("segment.bytes", Kind::Int(14)),
    ("segment.index.bytes", Kind::Int(4)),
    ("segment.jitter.ms", Kind::Long(0)),
    ("segment.ms", Kind::Long(1)),
    ("unclean.leader.election.enable", Kind::Bool),
];

/// The names of every topic config Kafka knows, sorted.
pub fn topic_config_names() -> impl Iterator<Item = &'static str> {
    TOPIC_CONFIGS.iter().map(|(name, _)| *name)
}

/// Whether `name` is a topic config Kafka knows.
pub fn is_topic_config(name: &str) -> bool {
    TOPIC_CONFIGS
        .binary_search_by(|(n, _)| n.cmp(&name))
        .is_ok()
}

/// Checks one topic config entry: the name must be known and the value of
/// the right type and in range.
pub fn validate_topic_config(name: &str, value: &str) -> Result<(), MetadataError> {
    let Ok(i) = TOPIC_CONFIGS.binary_search_by(|(n, _)| n.cmp(&name)) else {
        return Err(MetadataError::InvalidConfig(format!(
            "unknown topic config name: {name}"
        )));
    };
    let invalid = |why: &str| {
        Err(MetadataError::InvalidConfig(format!(
            "invalid value {value:?} for configuration {name}: {why}"
        )))
    };
    let value_trimmed = value.trim();
    match TOPIC_CONFIGS[i].1 {
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
        Kind::Any => Ok(()),
    }
}

/// Checks one broker config entry. Broker configs are passed through to the
/// broker, which knows which of them it can change at run time; here only
/// the shape is checked.
pub fn validate_broker_config(name: &str, _value: &str) -> Result<(), MetadataError> {
    if name.is_empty() {
        return Err(MetadataError::InvalidConfig(
            "empty broker config name".to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_for_binary_search() {
        assert!(TOPIC_CONFIGS.windows(2).all(|w| w[0].0 < w[1].0));
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
