//! WriteTxnMarkers (key 27), v1 (v0 is gone from Kafka 4): a transaction coordinator asks this
//! broker to end a transaction in the partitions it leads, by appending
//! a commit or abort marker to each (see `crate::txn::markers`). Each
//! partition answers once its marker is replicated, or with why not.
//!
//! Kafka lets only brokers send it (CLUSTER_ACTION); rill has no ACLs, so
//! any client may, as on a Kafka cluster without an authorizer.

use std::sync::Arc;

use rill_protocol::kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use rill_protocol::kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};

use super::wire_topic;
use crate::server::Broker;
use crate::txn::markers::{self, TxnMarker};

pub async fn handle(
    broker: &Arc<Broker>,
    _version: i16,
    request: WriteTxnMarkersRequest,
) -> WriteTxnMarkersResponse {
    let mut results = Vec::with_capacity(request.markers.len());
    for wanted in request.markers {
        let marker = TxnMarker {
            producer_id: wanted.producer_id.0,
            producer_epoch: wanted.producer_epoch,
            commit: wanted.transaction_result,
            coordinator_epoch: wanted.coordinator_epoch,
            partitions: wanted
                .topics
                .iter()
                .flat_map(|t| {
                    let name = t.name.0.to_string();
                    t.partition_indexes.iter().map(move |i| (name.clone(), *i))
                })
                .collect(),
        };
        let written = markers::write_local(&broker.replicas, &broker.groups, &marker).await;
        let topics = wanted
            .topics
            .iter()
            .map(|t| {
                let name = t.name.0.as_str();
                WritableTxnMarkerTopicResult::default()
                    .with_name(wire_topic(name))
                    .with_partitions(
                        t.partition_indexes
                            .iter()
                            .map(|index| {
                                let code = written
                                    .iter()
                                    .find(|((topic, i), _)| topic == name && i == index)
                                    .map_or(0, |(_, code)| *code);
                                WritableTxnMarkerPartitionResult::default()
                                    .with_partition_index(*index)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect();
        results.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(wanted.producer_id)
                .with_topics(topics),
        );
    }
    WriteTxnMarkersResponse::default().with_markers(results)
}
