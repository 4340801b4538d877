//! KIP-890 part 1: before a transactional batch opens a transaction in a
//! partition, its leader asks the producer's transaction coordinator
//! whether the partition is in the producer's ongoing transaction
//! (AddPartitionsToTxn v4, `verify_only`; answered locally when this node
//! is the coordinator). A batch that is not is refused with
//! INVALID_TXN_STATE, as Kafka refuses it for clients of transaction
//! version 0/1.
//!
//! A coordinator that cannot be reached (or is loading, or moving) makes
//! the batch answer NOT_ENOUGH_REPLICAS, which producers retry, as
//! Kafka's `AddPartitionsToTxnManager` maps those errors.
//!
//! The window between the verification and the append is guarded as in
//! Kafka: the partition hands out a [`VerificationGuard`] before the
//! coordinator is asked, a marker for the producer written meanwhile voids
//! it, and the append of a batch that opens a transaction requires it. A
//! transaction aborted (timed out, say) in exactly that window cannot
//! open again in this partition.

use std::time::Duration;

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use rill_protocol::kafka_protocol::messages::{
    AddPartitionsToTxnRequest, ProducerId, TransactionalId,
};
use rill_storage::batch::BatchHeader;
use tracing::debug;

use super::{str_bytes, wire_topic, KafkaError};
use crate::peer::PeerConnection;
use crate::replica::VerificationGuard;
use crate::server::Broker;
use crate::txn::{partition_for, TRANSACTION_STATE_TOPIC};

/// AddPartitionsToTxn v4: the batched, verify-only form.
const VERIFY_VERSION: i16 = 4;
/// How long the coordinator may take to answer.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// Verifies `records` for `topic`/`index` if they need it: a transactional
/// batch of a producer with no transaction open in the partition. Returns
/// the guard the append must carry, if it was verified.
pub async fn verify(
    broker: &Broker,
    transactional_id: Option<&str>,
    topic: &str,
    index: i32,
    records: Option<&[u8]>,
) -> Result<Option<VerificationGuard>, KafkaError> {
    let Some(header) = records.and_then(|r| BatchHeader::parse(r).ok()) else {
        return Ok(None);
    };
    if !header.is_transactional() || header.is_control() || header.producer_id < 0 {
        return Ok(None);
    }
    let Some(partition) = broker.replicas.get(topic, index) else {
        // The append answers for a partition that is not here.
        return Ok(None);
    };
    if partition.has_open_txn(header.producer_id, header.producer_epoch) {
        return Ok(None);
    }
    let Some(transactional_id) = transactional_id.filter(|id| !id.is_empty()) else {
        return Err(KafkaError::with_message(
            ResponseError::InvalidTxnState,
            "a transactional batch in a produce request without a transactional id",
        ));
    };
    let guard = partition.start_verification(header.producer_id, header.producer_epoch);
    let verified = verify_partition(
        broker,
        transactional_id,
        header.producer_id,
        header.producer_epoch,
        topic,
        index,
    )
    .await;
    match verified {
        Ok(()) => Ok(Some(guard)),
        Err(error) => {
            partition.cancel_verification(header.producer_id, guard);
            Err(error)
        }
    }
}

/// Asks the coordinator whether `topic`/`index` is in the ongoing
/// transaction of `transactional_id` at `producer_id`/`producer_epoch`
/// (also TxnOffsetCommit's check of the group's `__consumer_offsets`
/// partition), and maps its answer to the error a client gets.
pub async fn verify_partition(
    broker: &Broker,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    topic: &str,
    index: i32,
) -> Result<(), KafkaError> {
    let code = ask_coordinator(
        broker,
        transactional_id,
        producer_id,
        producer_epoch,
        topic,
        index,
    )
    .await;
    let refused = |kind: ResponseError, message: &str| {
        debug!(
            transactional_id,
            topic,
            partition = index,
            producer_id,
            code,
            "transactional batch not verified"
        );
        Err(KafkaError::with_message(kind, message))
    };
    match code {
        0 => Ok(()),
        c if c == ResponseError::InvalidTxnState.code() => refused(
            ResponseError::InvalidTxnState,
            "the partition is not in the producer's ongoing transaction",
        ),
        c if c == ResponseError::ProducerFenced.code()
            || c == ResponseError::InvalidProducerEpoch.code() =>
        {
            refused(
                ResponseError::InvalidProducerEpoch,
                "the producer's epoch is not its transactional id's",
            )
        }
        c if c == ResponseError::InvalidProducerIdMapping.code() => refused(
            ResponseError::InvalidProducerIdMapping,
            "the producer id is not its transactional id's",
        ),
        _ => refused(
            ResponseError::NotEnoughReplicas,
            "the transaction coordinator could not verify the transaction; retry",
        ),
    }
}

/// The coordinator's code for one partition.
async fn ask_coordinator(
    broker: &Broker,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    topic: &str,
    index: i32,
) -> i16 {
    let image = broker.controller.image();
    let Some(state_topic) = image
        .topic(TRANSACTION_STATE_TOPIC)
        .filter(|t| !t.partitions.is_empty())
    else {
        // No transaction exists anywhere.
        return ResponseError::InvalidTxnState.code();
    };
    let state_partition = partition_for(transactional_id, state_topic.partitions.len() as i32);
    let leader = state_topic
        .partition(state_partition)
        .map_or(-1, |p| p.leader);
    let partitions = [(topic.to_string(), index)];
    if leader == broker.config.node_id {
        return match broker.txns.verify_partitions(
            transactional_id,
            producer_id,
            producer_epoch,
            &partitions,
        ) {
            Ok(codes) => codes.first().copied().unwrap_or(0),
            Err(code) => code,
        };
    }
    let Some(node) = image.broker(leader) else {
        return ResponseError::CoordinatorNotAvailable.code();
    };
    let addr = format!("{}:{}", node.host, node.port);
    let request = AddPartitionsToTxnRequest::default().with_transactions(vec![
        AddPartitionsToTxnTransaction::default()
            .with_transactional_id(TransactionalId(str_bytes(transactional_id)))
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(producer_epoch)
            .with_verify_only(true)
            .with_topics(vec![AddPartitionsToTxnTopic::default()
                .with_name(wire_topic(topic))
                .with_partitions(vec![index])]),
    ]);
    let client_id = format!("rill-txn-verifier-{}", broker.config.node_id);
    let answer = match PeerConnection::connect(&addr, client_id).await {
        Ok(mut connection) => {
            connection
                .send(request, VERIFY_VERSION, VERIFY_TIMEOUT)
                .await
        }
        Err(reason) => Err(reason),
    };
    match answer {
        Ok(response) if response.error_code != 0 => response.error_code,
        Ok(response) => response
            .results_by_transaction
            .iter()
            .flat_map(|t| &t.topic_results)
            .flat_map(|t| &t.results_by_partition)
            .find(|p| p.partition_index == index)
            .map_or(ResponseError::CoordinatorNotAvailable.code(), |p| {
                p.partition_error_code
            }),
        Err(reason) => {
            debug!(%addr, %reason, "verifying a transaction with its coordinator failed");
            ResponseError::CoordinatorNotAvailable.code()
        }
    }
}
