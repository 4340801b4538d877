//! EndTxn (key 26), v0..=4: a transactional producer commits or aborts its
//! transaction. The coordinator records the decision durably
//! (PrepareCommit/PrepareAbort), answers, and then writes the markers to
//! every partition of the transaction (see `crate::txn`).

use std::sync::Arc;

use rill_protocol::kafka_protocol::messages::{EndTxnRequest, EndTxnResponse};

use crate::server::Broker;
use crate::txn::coordinator::code_for_version;
use crate::txn::state::TxnApi;

pub async fn handle(broker: &Arc<Broker>, version: i16, request: EndTxnRequest) -> EndTxnResponse {
    let code = match broker
        .txns
        .end_txn(
            request.transactional_id.0.as_str(),
            request.producer_id.0,
            request.producer_epoch,
            request.committed,
        )
        .await
    {
        Ok(()) => 0,
        Err(code) => code_for_version(TxnApi::EndTxn, version, code),
    };
    // The producer id and epoch fields are v5's (transaction version 2):
    // not set, as the versions served have none.
    EndTxnResponse::default().with_error_code(code)
}
