//! ListTransactions (key 66), v0..=1: the transactional ids this node
//! coordinates (KIP-664), filtered by state and producer id, and from v1
//! by how long their transaction has run (KIP-994). A state filter no
//! state has is echoed back in `unknown_state_filters`.

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::list_transactions_response::TransactionState;
use rill_protocol::kafka_protocol::messages::{
    ListTransactionsRequest, ListTransactionsResponse, ProducerId, TransactionalId,
};

use super::str_bytes;
use crate::server::Broker;
use crate::txn::state::{ListFilter, TxnState};

pub fn handle(
    broker: &Broker,
    version: i16,
    request: ListTransactionsRequest,
) -> ListTransactionsResponse {
    let mut unknown = Vec::new();
    let mut states = Vec::new();
    for name in &request.state_filters {
        match TxnState::parse(name.as_str()) {
            Some(state) => states.push(state),
            None => unknown.push(name.clone()),
        }
    }
    let filter = ListFilter {
        states,
        producer_ids: request.producer_id_filters.iter().map(|p| p.0).collect(),
        duration_ms: if version >= 1 {
            request.duration_filter
        } else {
            -1
        },
    };
    let (listed, loading) = broker.txns.list(&filter);
    let listed = listed
        .into_iter()
        .map(|txn| {
            TransactionState::default()
                .with_transactional_id(TransactionalId(str_bytes(txn.transactional_id)))
                .with_producer_id(ProducerId(txn.producer_id))
                .with_transaction_state(str_bytes(txn.state))
        })
        .collect();
    ListTransactionsResponse::default()
        .with_error_code(if loading {
            ResponseError::CoordinatorLoadInProgress.code()
        } else {
            0
        })
        .with_unknown_state_filters(unknown)
        .with_transaction_states(listed)
}
