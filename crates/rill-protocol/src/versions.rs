//! The supported-version table: which APIs rill answers, at which versions.
//!
//! rill advertises exactly what works. An API appears here only once its
//! handler exists, and adding one is one line in [`SUPPORTED_APIS`].
//!
//! The table is also the gate in front of the body decoders:
//! [`crate::parse_request`] decodes a body only for an API and version listed
//! here. Any API can be added as far as decoding is concerned: every
//! kafka-protocol decoder checks declared lengths against the bytes left (see
//! the crate doc's "Hostile lengths" section).

use std::ops::RangeInclusive;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

/// One API rill implements, with the inclusive range of versions it handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupportedApi {
    pub key: ApiKey,
    pub min: i16,
    pub max: i16,
}

impl SupportedApi {
    /// A table row: `api_key` handled at versions `min..=max`.
    pub const fn new(key: ApiKey, min: i16, max: i16) -> Self {
        assert!(min <= max);
        Self { key, min, max }
    }
}

/// Every API rill answers, in API-key order. The broker adds a row when it
/// implements an API; nothing else needs to change.
pub const SUPPORTED_APIS: &[SupportedApi] = &[
    // v3 is the first version that carries record batches of magic 2, the
    // only format rill stores (Kafka 4 also starts at v3).
    // v10 adds KIP-951's leader hints; v11 may answer TRANSACTION_ABORTABLE
    // (never, without transactions). v12 means transaction version 2
    // (KIP-890), v13 names topics by id: not served.
    SupportedApi::new(ApiKey::Produce, 3, 11),
    // v4 is the first with the isolation level and last stable offset; v13
    // names topics by id, v15 moves the follower's id into a replica
    // state, v16 adds KIP-951's leader hints, v17 a follower's directory
    // id (unused). v18 (KIP-1166's high watermark for KRaft followers) is
    // not served.
    SupportedApi::new(ApiKey::Fetch, 4, 17),
    // v0 has the pre-0.10.1 "offsets before" form.
    // v8 and v9 add the tiered-storage timestamps -4 and -5, v10 a
    // timeout; rill keeps every segment local.
    SupportedApi::new(ApiKey::ListOffsets, 1, 10),
    // v13 adds a top-level error code.
    SupportedApi::new(ApiKey::Metadata, 0, 13),
    // v0 and v1 are gone from kafka-protocol 0.18 (and from Kafka 4).
    SupportedApi::new(ApiKey::OffsetCommit, 2, 9),
    // v0 is gone from kafka-protocol 0.18; v10 addresses topics by id.
    SupportedApi::new(ApiKey::OffsetFetch, 1, 9),
    // Group keys only; v6 adds share-group keys, which are refused.
    SupportedApi::new(ApiKey::FindCoordinator, 0, 6),
    SupportedApi::new(ApiKey::JoinGroup, 0, 9),
    SupportedApi::new(ApiKey::Heartbeat, 0, 4),
    SupportedApi::new(ApiKey::LeaveGroup, 0, 5),
    SupportedApi::new(ApiKey::SyncGroup, 0, 5),
    SupportedApi::new(ApiKey::DescribeGroups, 0, 6),
    SupportedApi::new(ApiKey::ListGroups, 0, 5),
    // v4 is left out until the broker has been tested against a client that sends it.
    SupportedApi::new(ApiKey::ApiVersions, 0, 3),
    SupportedApi::new(ApiKey::CreateTopics, 2, 7),
    SupportedApi::new(ApiKey::DeleteTopics, 1, 6),
    SupportedApi::new(ApiKey::DeleteRecords, 0, 2),
    // Idempotent and transactional producers. v5 belongs to transaction
    // version 2 (KIP-890 part 2), which is not served.
    SupportedApi::new(ApiKey::InitProducerId, 0, 4),
    // v0 and v1 are gone from kafka-protocol 0.18 (and from Kafka 4).
    SupportedApi::new(ApiKey::OffsetForLeaderEpoch, 2, 4),
    // Transactions (KIP-98, KIP-447), transaction version 0/1. v4 of
    // AddPartitionsToTxn is the batched, verify-only form brokers send
    // (KIP-890 part 1). AddPartitionsToTxn v5, EndTxn v5 and
    // TxnOffsetCommit v5 belong to transaction version 2 (KIP-890 part 2)
    // and are not served.
    SupportedApi::new(ApiKey::AddPartitionsToTxn, 0, 4),
    SupportedApi::new(ApiKey::AddOffsetsToTxn, 0, 4),
    SupportedApi::new(ApiKey::EndTxn, 0, 4),
    SupportedApi::new(ApiKey::WriteTxnMarkers, 1, 1),
    SupportedApi::new(ApiKey::TxnOffsetCommit, 0, 4),
    // v0 is gone from kafka-protocol 0.18 (and from Kafka 4).
    SupportedApi::new(ApiKey::DescribeConfigs, 1, 4),
    SupportedApi::new(ApiKey::AlterConfigs, 0, 2),
    // v0 is gone from Kafka 4; v4 adds the file system's sizes.
    SupportedApi::new(ApiKey::DescribeLogDirs, 1, 4),
    SupportedApi::new(ApiKey::CreatePartitions, 0, 3),
    SupportedApi::new(ApiKey::DeleteGroups, 0, 2),
    // v1 adds the election type (unclean) and a top-level error.
    SupportedApi::new(ApiKey::ElectLeaders, 0, 2),
    SupportedApi::new(ApiKey::IncrementalAlterConfigs, 0, 1),
    // v1 adds `allow_replication_factor_change` (KIP-860).
    SupportedApi::new(ApiKey::AlterPartitionReassignments, 0, 1),
    SupportedApi::new(ApiKey::ListPartitionReassignments, 0, 0),
    SupportedApi::new(ApiKey::OffsetDelete, 0, 0),
    // KIP-595's view of the controller quorum; v2 adds the nodes' endpoints.
    SupportedApi::new(ApiKey::DescribeQuorum, 0, 2),
    SupportedApi::new(ApiKey::DescribeCluster, 0, 2),
    // The producers a partition remembers, and the coordinators'
    // transactions (KIP-664's hanging-transaction tools).
    SupportedApi::new(ApiKey::DescribeProducers, 0, 0),
    SupportedApi::new(ApiKey::DescribeTransactions, 0, 0),
    // v1 adds the duration filter (KIP-994).
    SupportedApi::new(ApiKey::ListTransactions, 0, 1),
    // KIP-966's paged topic metadata, with eligible leader replicas.
    SupportedApi::new(ApiKey::DescribeTopicPartitions, 0, 0),
];

/// The versions of `api_key` rill handles, or `None` if it does not handle the
/// API at all.
pub fn supported(api_key: ApiKey) -> Option<RangeInclusive<i16>> {
    SUPPORTED_APIS
        .iter()
        .find(|api| api.key == api_key)
        .map(|api| api.min..=api.max)
}

/// The ApiVersions response body listing every row of [`SUPPORTED_APIS`], with
/// no error. `throttle_time_ms` is 0; the caller sets it if it throttles.
pub fn api_versions_response() -> ApiVersionsResponse {
    let api_keys = SUPPORTED_APIS.iter().map(api_version).collect();
    ApiVersionsResponse::default()
        .with_error_code(0)
        .with_api_keys(api_keys)
}

/// The body Kafka sends when a client asks for an ApiVersions version newer
/// than the broker knows: error UNSUPPORTED_VERSION (35) and, since Kafka 2.4
/// (KIP-511), one entry giving the ApiVersions versions the broker does
/// support, so the client can retry with the highest of them. It must be
/// encoded as version 0 (see [`crate::encode_response`] and
/// [`crate::RequestError::UnsupportedVersion`]).
pub fn api_versions_unsupported_response() -> ApiVersionsResponse {
    let api_keys = SUPPORTED_APIS
        .iter()
        .filter(|api| api.key == ApiKey::ApiVersions)
        .map(api_version)
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(api_keys)
}

fn api_version(api: &SupportedApi) -> ApiVersion {
    ApiVersion::default()
        .with_api_key(api.key as i16)
        .with_min_version(api.min)
        .with_max_version(api.max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::Message;

    #[test]
    fn table_is_well_formed() {
        for (i, api) in SUPPORTED_APIS.iter().enumerate() {
            assert!(api.min <= api.max, "{api:?}");
            // Every advertised version must be one kafka-protocol can decode.
            let valid = api.key.valid_versions();
            assert!(valid.min <= api.min, "{api:?} below {valid}");
            assert!(api.max <= valid.max, "{api:?} above {valid}");
            if let Some(previous) = i.checked_sub(1).map(|p| SUPPORTED_APIS[p]) {
                assert!(
                    (previous.key as i16) < (api.key as i16),
                    "table not sorted by key"
                );
            }
        }
    }

    #[test]
    fn api_versions_is_always_supported() {
        // Clients cannot talk to a broker that does not answer ApiVersions v0.
        let range = supported(ApiKey::ApiVersions).unwrap();
        assert!(range.contains(&0));
        assert!(*range.end() <= kafka_protocol::messages::ApiVersionsRequest::VERSIONS.max);
    }

    #[test]
    fn unlisted_api_is_unsupported() {
        assert_eq!(supported(ApiKey::DescribeAcls), None);
    }

    #[test]
    fn response_lists_the_table() {
        let response = api_versions_response();
        assert_eq!(response.error_code, 0);
        assert_eq!(response.api_keys.len(), SUPPORTED_APIS.len());
        for (entry, api) in response.api_keys.iter().zip(SUPPORTED_APIS) {
            assert_eq!(entry.api_key, api.key as i16);
            assert_eq!((entry.min_version, entry.max_version), (api.min, api.max));
        }
    }

    #[test]
    fn unsupported_response_lists_only_api_versions() {
        let response = api_versions_unsupported_response();
        assert_eq!(response.error_code, 35);
        assert_eq!(response.api_keys.len(), 1);
        assert_eq!(response.api_keys[0].api_key, ApiKey::ApiVersions as i16);
    }
}
