//! InitProducerId (key 22), v0..=4: a producer id and epoch for an
//! idempotent producer. Without a transactional id this is what Kafka's
//! `TransactionCoordinator.handleInitProducerId` does: always a new
//! producer id from the broker's block, with epoch 0.
//!
//! A producer that sends its current id and epoch (v3+, KIP-360, after an
//! error that left its sequences unknown) gets a new id too: Kafka bumps
//! the epoch of an existing id only for transactional ids, whose owner the
//! transaction coordinator can check. An idempotent producer's id is known
//! to no one but the partitions it wrote to, so the broker could not tell
//! the owner from a client that names someone else's id to fence it; and
//! the Java client bumps an idempotent producer's epoch by itself anyway.
//!
//! With a transactional id, the transaction coordinator answers (Kafka's
//! same method, `crate::txn`): the id's producer id with its epoch bumped,
//! which fences the previous producer of that id and aborts its open
//! transaction (the client is told CONCURRENT_TRANSACTIONS and asks again
//! once the abort is done).

use std::sync::Arc;

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};
use tracing::{debug, warn};

use crate::errors::producer_id_error_code;
use crate::server::Broker;
use crate::txn::coordinator::code_for_version;
use crate::txn::state::TxnApi;

/// Kafka's "no producer id" and "no epoch" on the wire.
const NO_PRODUCER_ID: i64 = -1;
const NO_PRODUCER_EPOCH: i16 = -1;

pub async fn handle(
    broker: &Arc<Broker>,
    version: i16,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let error = |kind: ResponseError| {
        InitProducerIdResponse::default()
            .with_error_code(kind.code())
            .with_producer_id(NO_PRODUCER_ID.into())
            .with_producer_epoch(NO_PRODUCER_EPOCH)
    };
    if let Some(transactional_id) = &request.transactional_id {
        if transactional_id.is_empty() {
            // Kafka's coordinator refuses an empty transactional id as a
            // malformed request, like the Java client does.
            return error(ResponseError::InvalidRequest);
        }
        let producer_id: i64 = request.producer_id.into();
        let expected =
            (producer_id != NO_PRODUCER_ID).then_some((producer_id, request.producer_epoch));
        return match broker
            .txns
            .init_producer_id(
                transactional_id.0.as_str(),
                request.transaction_timeout_ms,
                expected,
            )
            .await
        {
            Ok((producer_id, producer_epoch)) => InitProducerIdResponse::default()
                .with_producer_id(producer_id.into())
                .with_producer_epoch(producer_epoch),
            Err(code) => InitProducerIdResponse::default()
                .with_error_code(code_for_version(TxnApi::InitProducerId, version, code))
                .with_producer_id(NO_PRODUCER_ID.into())
                .with_producer_epoch(NO_PRODUCER_EPOCH),
        };
    }
    // v3+ may carry the producer's current id and epoch: both or neither
    // (Kafka's KafkaApis answers INVALID_REQUEST to one without the other).
    let producer_id: i64 = request.producer_id.into();
    if (producer_id == NO_PRODUCER_ID) != (request.producer_epoch == NO_PRODUCER_EPOCH) {
        return error(ResponseError::InvalidRequest);
    }
    match broker.producer_ids.next_id(&*broker.controller).await {
        Ok(id) => {
            debug!(
                producer_id = id,
                previous_producer_id = producer_id,
                "new idempotent producer"
            );
            InitProducerIdResponse::default()
                .with_producer_id(id.into())
                .with_producer_epoch(0)
        }
        Err(controller_error) => {
            warn!(error = %controller_error, "cannot allocate a producer id");
            InitProducerIdResponse::default()
                .with_error_code(producer_id_error_code(&controller_error))
                .with_producer_id(NO_PRODUCER_ID.into())
                .with_producer_epoch(NO_PRODUCER_EPOCH)
        }
    }
}
