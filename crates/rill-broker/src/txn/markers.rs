//! Transaction markers: writing them to the partitions this node leads
//! (WriteTxnMarkers, and the coordinator's own partitions), and sending
//! them from the coordinator to every partition of a transaction, retried
//! until each is written.
//!
//! A marker is appended as acks=all is: flushed here and replicated to the
//! ISR before it counts as written. A marker written to `__consumer_offsets`
//! also decides the transaction's pending offsets there
//! ([`GroupCoordinator::complete_txn`]).

use std::collections::BTreeMap;
use std::time::Duration;

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use rill_protocol::kafka_protocol::messages::{ProducerId, WriteTxnMarkersRequest};
use rill_storage::txn::{ControlType, EndTxnMarker};
use rill_types::NodeId;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::errors::append_error_code;
use crate::group::{GroupCoordinator, OFFSETS_TOPIC};
use crate::metadata::MetadataClient;
use crate::peer::PeerConnection;
use crate::replica::{AppendError, Appending, DurableError, ReplicaManager, ReplicationError};

/// How long a marker may wait to be replicated to the ISR.
const MARKER_REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);
/// WriteTxnMarkers v1 (flexible): what this coordinator sends.
const WRITE_TXN_MARKERS_VERSION: i16 = 1;
/// How long a peer may take to answer WriteTxnMarkers.
const PEER_ANSWER_TIMEOUT: Duration = Duration::from_secs(35);
/// Between rounds of markers not yet written.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// The marker of one transaction, for a set of partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMarker {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    /// The leader epoch of the coordinator's `__transaction_state`
    /// partition: a marker from a coordinator older than the last one a
    /// partition saw is refused.
    pub coordinator_epoch: i32,
    pub partitions: Vec<(String, i32)>,
}

impl TxnMarker {
    fn end_txn_marker(&self) -> EndTxnMarker {
        EndTxnMarker {
            control_type: if self.commit {
                ControlType::Commit
            } else {
                ControlType::Abort
            },
            coordinator_epoch: self.coordinator_epoch,
        }
    }
}

/// Writes `marker` to each of its partitions that this node leads, and
/// waits until each is replicated. Returns the error code per partition
/// (0 when written).
pub async fn write_local(
    replicas: &ReplicaManager,
    groups: &GroupCoordinator,
    marker: &TxnMarker,
) -> Vec<((String, i32), i16)> {
    let mut results = Vec::with_capacity(marker.partitions.len());
    let mut waits = Vec::new();
    for (topic, index) in &marker.partitions {
        let Some(partition) = replicas.get(topic, *index) else {
            results.push((
                (topic.clone(), *index),
                ResponseError::UnknownTopicOrPartition.code(),
            ));
            continue;
        };
        let (producer_id, producer_epoch) = (marker.producer_id, marker.producer_epoch);
        let end = marker.end_txn_marker();
        match partition.append_in_order(move |partition| {
            partition.append_marker(producer_id, producer_epoch, end)
        }) {
            Appending::Ready(Err(error)) => results.push((
                (topic.clone(), *index),
                marker_error(topic, *index, marker, &error),
            )),
            appending => waits.push(((topic.clone(), *index), partition, appending)),
        }
    }
    for (tp, partition, appending) in waits {
        let appended = match appending.result().await {
            Ok(appended) => appended,
            Err(error) => {
                let code = marker_error(&tp.0, tp.1, marker, &error);
                results.push((tp, code));
                continue;
            }
        };
        let code = match partition
            .wait_durable(&appended, MARKER_REPLICATION_TIMEOUT)
            .await
        {
            Ok(()) => {
                if tp.0 == OFFSETS_TOPIC {
                    groups.complete_txn(tp.1, marker.producer_id, marker.commit);
                }
                0
            }
            Err(DurableError::Flush(reason)) => {
                warn!(topic = %tp.0, partition = tp.1, %reason, "flushing a transaction marker failed");
                ResponseError::KafkaStorageError.code()
            }
            Err(DurableError::Replication(ReplicationError::NotLeader)) => {
                ResponseError::NotLeaderOrFollower.code()
            }
            Err(DurableError::Replication(ReplicationError::NotEnoughReplicasAfterAppend)) => {
                ResponseError::NotEnoughReplicasAfterAppend.code()
            }
            Err(DurableError::Replication(ReplicationError::Timeout)) => {
                ResponseError::RequestTimedOut.code()
            }
        };
        results.push((tp, code));
    }
    results
}

/// What the coordinator is told of a marker the partition refused.
fn marker_error(topic: &str, partition: i32, marker: &TxnMarker, error: &AppendError) -> i16 {
    debug!(topic, partition, producer_id = marker.producer_id, %error, "marker refused");
    match error {
        AppendError::NotLeader => ResponseError::NotLeaderOrFollower.code(),
        other => append_error_code(other),
    }
}

/// Sends `marker` to the leaders of its partitions until every one is
/// written, or is gone (its topic deleted), or `cancel` fires (this node
/// no longer coordinates the transaction; the next coordinator sends the
/// markers again from its log). Returns whether every partition was
/// written or is gone.
pub async fn send_until_written(
    node_id: NodeId,
    controller: &dyn MetadataClient,
    replicas: &ReplicaManager,
    groups: &GroupCoordinator,
    marker: &TxnMarker,
    cancel: &CancellationToken,
) -> bool {
    let mut left: Vec<(String, i32)> = marker.partitions.clone();
    loop {
        let image = controller.image();
        // The partitions still to write, by leader; a partition whose
        // topic is gone needs no marker.
        let mut by_leader: BTreeMap<NodeId, Vec<(String, i32)>> = BTreeMap::new();
        let mut leaderless = Vec::new();
        for (topic, index) in left.drain(..) {
            let Some(p) = image.topic(&topic).and_then(|t| t.partition(index)) else {
                debug!(%topic, partition = index, "marker not needed: the partition is gone");
                continue;
            };
            if p.leader < 0 {
                leaderless.push((topic, index));
            } else {
                by_leader.entry(p.leader).or_default().push((topic, index));
            }
        }
        left = leaderless;
        for (leader, partitions) in by_leader {
            let to_leader = TxnMarker {
                partitions: partitions.clone(),
                ..marker.clone()
            };
            let results = if leader == node_id {
                write_local(replicas, groups, &to_leader).await
            } else {
                match image.broker(leader) {
                    Some(node) => {
                        let addr = format!("{}:{}", node.host, node.port);
                        send_remote(&addr, node_id, &to_leader).await
                    }
                    None => partitions
                        .iter()
                        .map(|tp| (tp.clone(), ResponseError::NotLeaderOrFollower.code()))
                        .collect(),
                }
            };
            for (tp, code) in results {
                if code == 0 || code == ResponseError::UnknownTopicOrPartition.code() {
                    continue;
                }
                if code == ResponseError::InvalidProducerEpoch.code()
                    || code == ResponseError::TransactionCoordinatorFenced.code()
                {
                    // A newer epoch or coordinator has written there since:
                    // this marker is superseded, as Kafka drops it.
                    warn!(topic = %tp.0, partition = tp.1, producer_id = marker.producer_id, code, "marker superseded; not retried");
                    continue;
                }
                debug!(topic = %tp.0, partition = tp.1, code, "marker not written yet; retrying");
                left.push(tp);
            }
        }
        if left.is_empty() {
            return true;
        }
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep(RETRY_BACKOFF) => {}
        }
    }
}

/// WriteTxnMarkers to another broker. A failed call answers every
/// partition with NOT_LEADER_OR_FOLLOWER, so that it is retried.
async fn send_remote(addr: &str, node_id: NodeId, marker: &TxnMarker) -> Vec<((String, i32), i16)> {
    let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, index) in &marker.partitions {
        topics.entry(topic).or_default().push(*index);
    }
    let request =
        WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
            .with_producer_id(ProducerId(marker.producer_id))
            .with_producer_epoch(marker.producer_epoch)
            .with_transaction_result(marker.commit)
            .with_coordinator_epoch(marker.coordinator_epoch)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(topic, indexes)| {
                        WritableTxnMarkerTopic::default()
                            .with_name(crate::handlers::wire_topic(topic))
                            .with_partition_indexes(indexes)
                    })
                    .collect(),
            )]);
    let failed = |reason: String| {
        debug!(addr, %reason, "WriteTxnMarkers to a peer failed");
        marker
            .partitions
            .iter()
            .map(|tp| (tp.clone(), ResponseError::NotLeaderOrFollower.code()))
            .collect()
    };
    let mut connection =
        match PeerConnection::connect(addr, format!("rill-txn-coordinator-{node_id}")).await {
            Ok(connection) => connection,
            Err(reason) => return failed(reason),
        };
    let response = match connection
        .send(request, WRITE_TXN_MARKERS_VERSION, PEER_ANSWER_TIMEOUT)
        .await
    {
        Ok(response) => response,
        Err(reason) => return failed(reason),
    };
    let mut results = Vec::new();
    for result in response.markers {
        for topic in result.topics {
            for p in topic.partitions {
                results.push(((topic.name.0.to_string(), p.partition_index), p.error_code));
            }
        }
    }
    // A partition the answer left out is not written.
    for tp in &marker.partitions {
        if !results.iter().any(|(r, _)| r == tp) {
            results.push((tp.clone(), ResponseError::NotLeaderOrFollower.code()));
        }
    }
    results
}
