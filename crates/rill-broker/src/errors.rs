//! Where storage and controller errors become Kafka error codes. This is the
//! only place that mapping lives (DESIGN.md §3: storage knows nothing of
//! Kafka codes).

use kafka_protocol::error::ResponseError;
use rill_controller::ControllerError;
use rill_storage::StorageError;

use rill_protocol::kafka_protocol;

/// The Kafka error code for a storage error.
pub fn storage_error_code(error: &StorageError) -> i16 {
    let kind = match error {
        StorageError::Corrupt { .. } => ResponseError::CorruptMessage,
        StorageError::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
        StorageError::Invalid { .. } => ResponseError::InvalidRecord,
        StorageError::EmptyAppend => ResponseError::InvalidRecord,
        StorageError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        // The log went away under the request: its partition was deleted.
        StorageError::Closed(_) => ResponseError::NotLeaderOrFollower,
        StorageError::InvalidConfig(_) => ResponseError::InvalidConfig,
        StorageError::CorruptLog { .. } | StorageError::Io { .. } => {
            ResponseError::KafkaStorageError
        }
    };
    kind.code()
}

/// The Kafka error code and message for a failed controller proposal.
pub fn controller_error(error: &ControllerError) -> (i16, String) {
    match error {
        ControllerError::Rejected(rejection) => (rejection.kafka_code(), rejection.to_string()),
        other => (ResponseError::UnknownServerError.code(), other.to_string()),
    }
}
