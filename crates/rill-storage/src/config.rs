//! Per-log configuration: the topic-level settings Kafka applies to a partition log.

use crate::batch::TimestampType;
use crate::error::{Result, StorageError};

/// What happens to old data (`cleanup.policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CleanupPolicy {
    /// Whole segments are deleted by `retention.ms` and `retention.bytes`.
    pub delete: bool,
    /// Closed segments are compacted to the latest record per key.
    pub compact: bool,
}

impl CleanupPolicy {
    pub const DELETE: Self = Self {
        delete: true,
        compact: false,
    };
    pub const COMPACT: Self = Self {
        delete: false,
        compact: true,
    };

    /// Parses Kafka's comma-separated list: `delete`, `compact`, or both.
    pub fn parse(value: &str) -> Result<Self> {
        let mut policy = Self::default();
        for part in value.split(',').map(str::trim) {
            match part {
                "delete" => policy.delete = true,
                "compact" => policy.compact = true,
                other => {
                    return Err(StorageError::InvalidConfig(format!(
                        "cleanup.policy {other:?} is not one of delete, compact"
                    )))
                }
            }
        }
        if !policy.delete && !policy.compact {
            return Err(StorageError::InvalidConfig(
                "cleanup.policy is empty".into(),
            ));
        }
        Ok(policy)
    }
}

impl std::fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.delete, self.compact) {
            (true, true) => f.write_str("compact,delete"),
            (false, true) => f.write_str("compact"),
            _ => f.write_str("delete"),
        }
    }
}

/// The settings of one partition log. Defaults are Kafka's.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`: roll the active segment before it would exceed this.
    pub segment_bytes: u64,
    /// `segment.ms`: roll the active segment once its first batch is this old.
    pub segment_ms: i64,
    /// `segment.index.bytes`: the most bytes an offset or time index may hold
    /// before the segment rolls.
    pub segment_index_bytes: u64,
    /// `index.interval.bytes`: log bytes between two index entries.
    pub index_interval_bytes: u64,
    /// `max.message.bytes`: the largest batch the log accepts.
    pub max_message_bytes: u64,
    /// `message.timestamp.type`.
    pub timestamp_type: TimestampType,
    /// `retention.ms`; negative means unlimited.
    pub retention_ms: i64,
    /// `retention.bytes`; negative means unlimited.
    pub retention_bytes: i64,
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// `delete.retention.ms`: how long compaction keeps tombstones.
    pub delete_retention_ms: i64,
    /// `min.cleanable.dirty.ratio`: the share of a compacted log's bytes
    /// not yet cleaned above which the cleaner takes it.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: a record stays uncompacted at least this long.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: a log whose oldest uncleaned record is older
    /// than this is cleaned whatever its dirty ratio (KIP-354).
    pub max_compaction_lag_ms: i64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * 24 * 60 * 60 * 1000,
            segment_index_bytes: 10 * 1024 * 1024,
            index_interval_bytes: 4096,
            max_message_bytes: 1024 * 1024 + 12,
            timestamp_type: TimestampType::CreateTime,
            retention_ms: 7 * 24 * 60 * 60 * 1000,
            retention_bytes: -1,
            cleanup_policy: CleanupPolicy::DELETE,
            delete_retention_ms: 24 * 60 * 60 * 1000,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
        }
    }
}

impl LogConfig {
    /// The smallest `segment.bytes` Kafka allows (the size of one batch header).
    pub const SEGMENT_BYTES_MIN: u64 = 14;
    /// Positions in `.index` are `u32`, and Kafka caps segments at `i32::MAX`.
    pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;

    /// Rejects settings the log cannot honour.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(StorageError::InvalidConfig(what));
        if !(Self::SEGMENT_BYTES_MIN..=Self::SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return bad(format!(
                "segment.bytes {} is outside [{}, {}]",
                self.segment_bytes,
                Self::SEGMENT_BYTES_MIN,
                Self::SEGMENT_BYTES_MAX
            ));
        }
        if self.segment_ms < 1 {
            return bad(format!("segment.ms {} must be at least 1", self.segment_ms));
        }
        if self.segment_index_bytes < 12 || self.segment_index_bytes > i32::MAX as u64 {
            return bad(format!(
                "segment.index.bytes {} is outside [12, {}]",
                self.segment_index_bytes,
                i32::MAX
            ));
        }
        if self.max_message_bytes > i32::MAX as u64 {
            return bad(format!(
                "max.message.bytes {} is above {}",
                self.max_message_bytes,
                i32::MAX
            ));
        }
        if self.delete_retention_ms < 0 {
            return bad(format!(
                "delete.retention.ms {} is negative",
                self.delete_retention_ms
            ));
        }
        if !(0.0..=1.0).contains(&self.min_cleanable_dirty_ratio) {
            return bad(format!(
                "min.cleanable.dirty.ratio {} is outside [0, 1]",
                self.min_cleanable_dirty_ratio
            ));
        }
        if self.min_compaction_lag_ms < 0 {
            return bad(format!(
                "min.compaction.lag.ms {} is negative",
                self.min_compaction_lag_ms
            ));
        }
        if self.max_compaction_lag_ms < 1 {
            return bad(format!(
                "max.compaction.lag.ms {} must be at least 1",
                self.max_compaction_lag_ms
            ));
        }
        Ok(())
    }

    /// How many entries an offset index may hold (8 bytes each).
    pub(crate) fn offset_index_entries_max(&self) -> usize {
        (self.segment_index_bytes / 8) as usize
    }

    /// How many entries a time index may hold (12 bytes each).
    pub(crate) fn time_index_entries_max(&self) -> usize {
        (self.segment_index_bytes / 12) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_policy_parses_kafka_values() {
        assert_eq!(
            CleanupPolicy::parse("delete").unwrap(),
            CleanupPolicy::DELETE
        );
        assert_eq!(
            CleanupPolicy::parse("compact").unwrap(),
            CleanupPolicy::COMPACT
        );
        let both = CleanupPolicy::parse("compact, delete").unwrap();
        assert!(both.compact && both.delete);
        assert_eq!(both.to_string(), "compact,delete");
        assert!(CleanupPolicy::parse("shred").is_err());
        assert!(CleanupPolicy::parse("").is_err());
    }

    #[test]
    fn validate_rejects_out_of_range_values() {
        assert!(LogConfig::default().validate().is_ok());
        let cases = [
            LogConfig {
                segment_bytes: 1,
                ..LogConfig::default()
            },
            LogConfig {
                segment_bytes: 1 << 32,
                ..LogConfig::default()
            },
            LogConfig {
                segment_ms: 0,
                ..LogConfig::default()
            },
            LogConfig {
                segment_index_bytes: 4,
                ..LogConfig::default()
            },
            LogConfig {
                max_message_bytes: 1 << 40,
                ..LogConfig::default()
            },
            LogConfig {
                delete_retention_ms: -1,
                ..LogConfig::default()
            },
            LogConfig {
                min_cleanable_dirty_ratio: 1.5,
                ..LogConfig::default()
            },
            LogConfig {
                min_compaction_lag_ms: -1,
                ..LogConfig::default()
            },
            LogConfig {
                max_compaction_lag_ms: 0,
                ..LogConfig::default()
            },
        ];
        for config in cases {
            assert!(config.validate().is_err(), "{config:?} should be rejected");
        }
    }
}
