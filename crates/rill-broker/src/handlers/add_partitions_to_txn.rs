//! AddPartitionsToTxn (key 24), v0..=4: a transactional producer adds the
//! partitions it is about to write to its transaction, before its first
//! write to each (KIP-98); the coordinator records them durably, so that
//! it knows where to send the markers. v0..=3 name one transaction; v4
//! (KIP-890 part 1) names many and is what a partition leader sends to
//! verify, with `verify_only`, that a transactional write belongs to an
//! ongoing transaction.
//!
//! A partition that does not exist answers UNKNOWN_TOPIC_OR_PARTITION and
//! the others OPERATION_NOT_ATTEMPTED, and nothing is added, as in Kafka.

use std::sync::Arc;

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use rill_protocol::kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use rill_protocol::kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse,
};

use super::wire_topic;
use crate::server::Broker;
use crate::txn::coordinator::code_for_version;
use crate::txn::state::TxnApi;

pub async fn handle(
    broker: &Arc<Broker>,
    version: i16,
    request: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    if version <= 3 {
        let results = add(
            broker,
            request.v3_and_below_transactional_id.0.as_str(),
            request.v3_and_below_producer_id.0,
            request.v3_and_below_producer_epoch,
            &request.v3_and_below_topics,
            false,
            version,
        )
        .await;
        return AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results);
    }
    let mut by_transaction = Vec::with_capacity(request.transactions.len());
    for txn in &request.transactions {
        let results = add(
            broker,
            txn.transactional_id.0.as_str(),
            txn.producer_id.0,
            txn.producer_epoch,
            &txn.topics,
            txn.verify_only,
            version,
        )
        .await;
        by_transaction.push(
            AddPartitionsToTxnResult::default()
                .with_transactional_id(txn.transactional_id.clone())
                .with_topic_results(results),
        );
    }
    AddPartitionsToTxnResponse::default().with_results_by_transaction(by_transaction)
}

async fn add(
    broker: &Arc<Broker>,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    topics: &[AddPartitionsToTxnTopic],
    verify_only: bool,
    version: i16,
) -> Vec<AddPartitionsToTxnTopicResult> {
    let image = broker.controller.image();
    let partitions: Vec<(String, i32)> = topics
        .iter()
        .flat_map(|t| {
            let name = t.name.0.to_string();
            t.partitions.iter().map(move |p| (name.clone(), *p))
        })
        .collect();
    let unknown: Vec<bool> = partitions
        .iter()
        .map(|(topic, index)| {
            image
                .topic(topic)
                .and_then(|t| t.partition(*index))
                .is_none()
        })
        .collect();
    let codes: Vec<i16> = if unknown.iter().any(|u| *u) {
        unknown
            .iter()
            .map(|u| {
                if *u {
                    ResponseError::UnknownTopicOrPartition.code()
                } else {
                    ResponseError::OperationNotAttempted.code()
                }
            })
            .collect()
    } else {
        let outcome = if verify_only {
            broker.txns.verify_partitions(
                transactional_id,
                producer_id,
                producer_epoch,
                &partitions,
            )
        } else {
            broker
                .txns
                .add_partitions(
                    transactional_id,
                    producer_id,
                    producer_epoch,
                    partitions.clone(),
                )
                .await
        };
        match outcome {
            Ok(codes) => codes,
            Err(code) => {
                vec![code_for_version(TxnApi::AddPartitionsToTxn, version, code); partitions.len()]
            }
        }
    };
    let mut codes = codes.into_iter();
    topics
        .iter()
        .map(|t| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(wire_topic(t.name.0.as_str()))
                .with_results_by_partition(
                    t.partitions
                        .iter()
                        .map(|p| {
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(*p)
                                .with_partition_error_code(codes.next().unwrap_or(0))
                        })
                        .collect(),
                )
        })
        .collect()
}
