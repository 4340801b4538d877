//! Where storage and controller errors become Kafka error codes. This is the
//! only place that mapping lives (DESIGN.md §3: storage knows nothing of
//! Kafka codes).

use kafka_protocol::error::ResponseError;
use rill_controller::{ControllerError, MetadataError};
use rill_storage::producer_state::ProducerStateError;
use rill_storage::StorageError;

use crate::replica::{AppendError, FlushError, ReplicationError};

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

/// The Kafka error code for a failed flush.
pub fn flush_error_code(error: &FlushError) -> i16 {
    match error {
        FlushError::Storage(error) => storage_error_code(error),
        FlushError::Disk(_) => ResponseError::KafkaStorageError.code(),
    }
}

/// The Kafka error code for a refused leader append.
pub fn append_error_code(error: &AppendError) -> i16 {
    match error {
        AppendError::Storage(error) => storage_error_code(error),
        AppendError::Producer(error) => producer_state_error_code(error),
        AppendError::InvalidRecord(_) => ResponseError::InvalidRecord.code(),
        AppendError::InvalidTxnState(_) => ResponseError::InvalidTxnState.code(),
        AppendError::NotLeader => ResponseError::NotLeaderOrFollower.code(),
        AppendError::NotEnoughReplicas { .. } => ResponseError::NotEnoughReplicas.code(),
        AppendError::Disk(_) => ResponseError::KafkaStorageError.code(),
    }
}

/// The Kafka error code for a batch the idempotence rules refused. Kafka
/// answers INVALID_PRODUCER_EPOCH, not PRODUCER_FENCED, to a produce from
/// a fenced epoch since 2.7 (KIP-588): clients treat it as abortable.
/// An acks=all wait that ended without the records committed.
pub fn replication_error_code(error: ReplicationError) -> i16 {
    match error {
        ReplicationError::NotLeader => ResponseError::NotLeaderOrFollower.code(),
        ReplicationError::NotEnoughReplicasAfterAppend => {
            ResponseError::NotEnoughReplicasAfterAppend.code()
        }
        ReplicationError::Timeout => ResponseError::RequestTimedOut.code(),
    }
}

pub fn producer_state_error_code(error: &ProducerStateError) -> i16 {
    let kind = match error {
        ProducerStateError::InvalidSequence { .. } => ResponseError::InvalidRecord,
        ProducerStateError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        ProducerStateError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        ProducerStateError::InvalidTxnState { .. } => ResponseError::InvalidTxnState,
        ProducerStateError::TransactionCoordinatorFenced { .. } => {
            ResponseError::TransactionCoordinatorFenced
        }
    };
    kind.code()
}

/// The Kafka error code for a command the controller refused. Each
/// `MetadataError` variant is named after the Kafka error it stands for.
pub fn metadata_error_code(error: &MetadataError) -> i16 {
    let kind = match error {
        MetadataError::TopicAlreadyExists(_) => ResponseError::TopicAlreadyExists,
        MetadataError::InvalidTopic(_) => ResponseError::InvalidTopicException,
        MetadataError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        MetadataError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
        MetadataError::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
        MetadataError::UnknownTopicOrPartition(_) => ResponseError::UnknownTopicOrPartition,
        MetadataError::UnknownTopicId(_) => ResponseError::UnknownTopicId,
        MetadataError::InvalidConfig(_) => ResponseError::InvalidConfig,
        MetadataError::InvalidRequest(_) => ResponseError::InvalidRequest,
        MetadataError::BrokerIdNotRegistered(_) => ResponseError::BrokerIdNotRegistered,
        MetadataError::UnknownServerError(_) => ResponseError::UnknownServerError,
        MetadataError::StaleBrokerEpoch { .. } => ResponseError::StaleBrokerEpoch,
        MetadataError::FencedLeaderEpoch(_) => ResponseError::FencedLeaderEpoch,
        MetadataError::InvalidUpdateVersion(_) => ResponseError::InvalidUpdateVersion,
        MetadataError::IneligibleReplica(_) => ResponseError::IneligibleReplica,
        MetadataError::NoReassignmentInProgress(_) => ResponseError::NoReassignmentInProgress,
    };
    kind.code()
}

/// The Kafka error code and message for a command the controller refused
/// (or, for a validate-only request, would refuse).
pub fn metadata_error(error: &MetadataError) -> (i16, String) {
    (metadata_error_code(error), error.to_string())
}

/// The Kafka error code for an InitProducerId whose block of ids could not
/// be had from the controller. Kafka answers COORDINATOR_LOAD_IN_PROGRESS
/// while a broker waits for its next block, which clients retry; only an
/// exhausted id space is final.
pub fn producer_id_error_code(error: &ControllerError) -> i16 {
    match error {
        ControllerError::Rejected(rejection @ MetadataError::UnknownServerError(_)) => {
            metadata_error_code(rejection)
        }
        _ => ResponseError::CoordinatorLoadInProgress.code(),
    }
}

/// The Kafka error code and message for a failed controller proposal.
pub fn controller_error(error: &ControllerError) -> (i16, String) {
    match error {
        ControllerError::Rejected(rejection) => metadata_error(rejection),
        // A full disk, as a failed partition-log write is answered.
        no_space @ ControllerError::NoSpace { .. } => (
            ResponseError::KafkaStorageError.code(),
            no_space.to_string(),
        ),
        // The quorum did not answer in time (no majority, or an election
        // that did not end): Kafka's answer to a controller request that
        // timed out.
        timeout @ ControllerError::Timeout(_) => {
            (ResponseError::RequestTimedOut.code(), timeout.to_string())
        }
        other => (ResponseError::UnknownServerError.code(), other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes are Kafka's (`Errors.java`), spelled out once more so that
    /// a variant mapped to the wrong `ResponseError` shows.
    #[test]
    fn metadata_errors_map_to_kafkas_codes() {
        let text = String::new;
        for (error, code) in [
            (MetadataError::TopicAlreadyExists(text()), 36),
            (MetadataError::InvalidTopic(text()), 17),
            (MetadataError::InvalidPartitions(text()), 37),
            (MetadataError::InvalidReplicationFactor(text()), 38),
            (MetadataError::InvalidReplicaAssignment(text()), 39),
            (MetadataError::UnknownTopicOrPartition(text()), 3),
            (MetadataError::UnknownTopicId(uuid::Uuid::nil()), 100),
            (MetadataError::InvalidConfig(text()), 40),
            (MetadataError::InvalidRequest(text()), 42),
            (MetadataError::BrokerIdNotRegistered(1), 102),
            (MetadataError::UnknownServerError(text()), -1),
            (
                MetadataError::StaleBrokerEpoch {
                    node_id: 1,
                    given: 1,
                    current: 2,
                },
                77,
            ),
            (MetadataError::FencedLeaderEpoch(text()), 74),
            (MetadataError::InvalidUpdateVersion(text()), 95),
            (MetadataError::IneligibleReplica(text()), 107),
            (MetadataError::NoReassignmentInProgress(text()), 85),
        ] {
            assert_eq!(metadata_error_code(&error), code, "{error:?}");
        }
    }
}
