//! The storage layer's errors. The broker maps them to Kafka error codes; this
//! crate knows nothing of those codes.

use std::io;
use std::path::PathBuf;

/// Why a record batch failed validation. Each variant names the check that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorruptBatch {
    #[error("batch is {len} bytes, shorter than the 61-byte v2 header")]
    HeaderTruncated { len: usize },
    #[error("batch declares length {declared}, below the 49-byte minimum")]
    LengthTooSmall { declared: i32 },
    #[error("batch declares {declared} bytes but only {available} follow")]
    LengthOverrun { declared: usize, available: usize },
    #[error("batch has magic {0}; only magic 2 is supported")]
    BadMagic(i8),
    #[error("batch CRC32C is {stored:#010x} but its bytes sum to {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("batch uses unknown compression codec {0}")]
    UnknownCompression(i16),
    #[error("batch declares {count} records but its lastOffsetDelta is {last_offset_delta}")]
    RecordCountMismatch { count: i32, last_offset_delta: i32 },
    #[error("batch records are malformed: {0}")]
    MalformedRecords(String),
}

/// A batch that is well formed but not allowed in this log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRecord {
    /// `record_indexes`: the records without a key, by their position in
    /// the batch (from 0), so that the broker can name each (KIP-467).
    /// Bounded by the batch's size, which `max.message.bytes` bounds.
    #[error("compacted topics require every record to have a key; records {record_indexes:?} of the batch have none")]
    MissingKeyOnCompactedTopic { record_indexes: Vec<usize> },
    #[error("batch has base offset {base_offset} but the log end offset is {log_end_offset}")]
    OffsetBelowLogEnd {
        base_offset: i64,
        log_end_offset: i64,
    },
    #[error("batch offsets {base_offset}..={last_offset} are not valid offsets")]
    BadOffsets { base_offset: i64, last_offset: i64 },
    #[error("request spans {0} offsets; one append may span at most 2^31")]
    OffsetSpanTooLarge(i64),
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The bytes of a batch are damaged (CORRUPT_MESSAGE upstream).
    #[error("corrupt record batch at index {batch_index} of the request: {reason}")]
    Corrupt {
        batch_index: usize,
        reason: CorruptBatch,
    },
    /// A batch exceeds `max.message.bytes` (MESSAGE_TOO_LARGE upstream).
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    BatchTooLarge { size: usize, max: usize },
    /// A batch is well formed but breaks a rule of this log (INVALID_RECORD upstream).
    #[error("invalid record batch at index {batch_index} of the request: {reason}")]
    Invalid {
        batch_index: usize,
        reason: InvalidRecord,
    },
    /// A batch already in the log failed its checks when read back (found
    /// by the cleaner; recovery cuts such damage at start-up instead).
    #[error("corrupt record batch in {} at byte {position}: {reason}", path.display())]
    CorruptLog {
        path: PathBuf,
        position: u64,
        reason: CorruptBatch,
    },
    /// A read or lookup named an offset outside `[log start, log end]`
    /// (OFFSET_OUT_OF_RANGE upstream).
    #[error("offset {offset} is outside the log's range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start_offset: i64,
        log_end_offset: i64,
    },
    /// An append carried no batches.
    #[error("append carried no record batches")]
    EmptyAppend,
    /// The log was closed or deleted while the call was in progress.
    #[error("log {0} is closed")]
    Closed(String),
    /// A configuration value is out of range.
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
    /// The operating system refused a file operation (KAFKA_STORAGE_ERROR upstream).
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| StorageError::Io { op, path, source }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
