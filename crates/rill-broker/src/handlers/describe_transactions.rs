//! DescribeTransactions (key 65), v0: the state of transactional ids this
//! node coordinates (KIP-664): the producer, its epoch, the state, the
//! timeout, when the transaction began and its partitions.

use rill_protocol::kafka_protocol::messages::describe_transactions_response::{
    TopicData, TransactionState,
};
use rill_protocol::kafka_protocol::messages::{
    DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId,
};

use super::{str_bytes, wire_topic};
use crate::server::Broker;

pub fn handle(
    broker: &Broker,
    _version: i16,
    request: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let states = request
        .transactional_ids
        .into_iter()
        .map(|id| {
            let answer = TransactionState::default()
                .with_transactional_id(id.clone())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_transaction_start_time_ms(-1)
                .with_transaction_state(str_bytes(""));
            match broker.txns.describe(id.0.as_str()) {
                Err(code) => answer.with_error_code(code),
                Ok(txn) => {
                    let mut topics: Vec<TopicData> = Vec::new();
                    for (topic, partition) in txn.partitions {
                        match topics.last_mut() {
                            Some(last) if last.topic.0.as_str() == topic => {
                                last.partitions.push(partition)
                            }
                            _ => topics.push(
                                TopicData::default()
                                    .with_topic(wire_topic(&topic))
                                    .with_partitions(vec![partition]),
                            ),
                        }
                    }
                    answer
                        .with_transaction_state(str_bytes(txn.state))
                        .with_transaction_timeout_ms(txn.timeout_ms)
                        .with_transaction_start_time_ms(txn.start_ms)
                        .with_producer_id(ProducerId(txn.producer_id))
                        .with_producer_epoch(txn.producer_epoch)
                        .with_topics(topics)
                }
            }
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}
