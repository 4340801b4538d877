//! Newtypes shared by every rill crate, and the [`Clock`] through which time
//! enters all logic.
//!
//! # Layout
//! - [`TopicName`], [`PartitionIndex`], [`TopicPartition`]: what a partition is called.
//! - [`Offset`], [`LeaderEpoch`], [`NodeId`], [`ProducerId`]: the numbers Kafka
//!   puts on the wire, kept apart by type where they meet in signatures.
//! - [`Clock`], [`SystemClock`], [`ManualClock`]: wall-clock milliseconds, so that
//!   tests can drive time by hand.
//!
//! **Architecture Invariant:** this crate depends on nothing of rill's and does no I/O.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A record offset within one partition, as Kafka numbers them (`i64`, `-1`
/// where the protocol means "none").
pub type Offset = i64;

/// A partition leader's epoch; `-1` means unknown, as on the wire.
pub type LeaderEpoch = i32;

/// A broker or controller node id.
pub type NodeId = i32;

/// An idempotent or transactional producer's id; `-1` means none.
pub type ProducerId = i64;

/// A partition's index within its topic.
pub type PartitionIndex = i32;

/// Why a string is not a valid topic name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicNameError {
    #[error("topic name is empty")]
    Empty,
    #[error("topic name is {0} characters long; the limit is 249")]
    TooLong(usize),
    #[error("topic name cannot be '.' or '..'")]
    Dots,
    #[error("topic name contains {0:?}; only ASCII letters, digits, '.', '_' and '-' are allowed")]
    BadChar(char),
}

/// A topic name that follows Kafka's rules: 1 to 249 characters of
/// `[a-zA-Z0-9._-]`, and neither `.` nor `..`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(String);

impl TopicName {
    /// The longest topic name Kafka accepts.
    pub const LEN_MAX: usize = 249;

    pub fn new(name: impl Into<String>) -> Result<Self, TopicNameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(TopicNameError::Empty);
        }
        if name.len() > Self::LEN_MAX {
            return Err(TopicNameError::TooLong(name.len()));
        }
        if name == "." || name == ".." {
            return Err(TopicNameError::Dots);
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(TopicNameError::BadChar(c));
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// One partition of one topic.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: TopicName,
    pub partition: PartitionIndex,
}

impl TopicPartition {
    pub fn new(topic: TopicName, partition: PartitionIndex) -> Self {
        Self { topic, partition }
    }

    /// The name of the partition's directory in a data dir: `<topic>-<partition>`.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }

    /// Parses a directory name made by [`TopicPartition::dir_name`]. The
    /// partition is what follows the last `-`, since topic names may contain `-`.
    pub fn from_dir_name(name: &str) -> Option<Self> {
        let (topic, partition) = name.rsplit_once('-')?;
        let partition: PartitionIndex = partition.parse().ok()?;
        if partition < 0 || partition.to_string() != name[topic.len() + 1..] {
            return None;
        }
        Some(Self::new(TopicName::new(topic).ok()?, partition))
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

impl fmt::Debug for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Wall-clock time in milliseconds since the Unix epoch. Logic asks a `Clock`
/// rather than `SystemTime::now()` so that tests can move time by hand.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now_ms(&self) -> i64;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        // A clock before 1970 is an environment that cannot continue sensibly;
        // zero keeps the arithmetic defined rather than panicking.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        Self {
            now_ms: AtomicI64::new(now_ms),
        }
    }

    pub fn set_ms(&self, now_ms: i64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance_ms(&self, delta_ms: i64) {
        self.now_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(TopicName::new("orders.v1_x-2").is_ok());
        assert_eq!(TopicName::new(""), Err(TopicNameError::Empty));
        assert_eq!(TopicName::new("."), Err(TopicNameError::Dots));
        assert_eq!(TopicName::new(".."), Err(TopicNameError::Dots));
        assert_eq!(TopicName::new("a b"), Err(TopicNameError::BadChar(' ')));
        assert_eq!(TopicName::new("é"), Err(TopicNameError::BadChar('é')));
        assert!(TopicName::new("a".repeat(249)).is_ok());
        assert_eq!(
            TopicName::new("a".repeat(250)),
            Err(TopicNameError::TooLong(250))
        );
    }

    #[test]
    fn dir_names_round_trip() {
        let tp = TopicPartition::new(TopicName::new("my-topic-7").unwrap(), 12);
        assert_eq!(tp.dir_name(), "my-topic-7-12");
        assert_eq!(TopicPartition::from_dir_name("my-topic-7-12"), Some(tp));
        assert_eq!(TopicPartition::from_dir_name("nodash"), None);
        assert_eq!(TopicPartition::from_dir_name("t-"), None);
        assert_eq!(TopicPartition::from_dir_name("t-x"), None);
        assert_eq!(TopicPartition::from_dir_name("t-+1"), None);
        assert_eq!(TopicPartition::from_dir_name("t-01"), None);
        assert_eq!(TopicPartition::from_dir_name("a b-1"), None);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance_ms(500);
        assert_eq!(clock.now_ms(), 1_500);
        clock.set_ms(7);
        assert_eq!(clock.now_ms(), 7);
    }
}
