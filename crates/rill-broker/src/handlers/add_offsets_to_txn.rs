//! AddOffsetsToTxn (key 25), v0..=4: a transactional producer will commit
//! a consumer group's offsets in its transaction (TxnOffsetCommit); the
//! coordinator adds the group's `__consumer_offsets` partition to the
//! transaction, so that its marker decides those offsets too.

use std::sync::Arc;

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse};

use crate::group::{partition_for, OFFSETS_TOPIC};
use crate::server::Broker;
use crate::txn::coordinator::code_for_version;
use crate::txn::state::TxnApi;

pub async fn handle(
    broker: &Arc<Broker>,
    version: i16,
    request: AddOffsetsToTxnRequest,
) -> AddOffsetsToTxnResponse {
    let group_id = request.group_id.0.as_str();
    let code = if group_id.is_empty() {
        ResponseError::InvalidGroupId.code()
    } else {
        // The partition count the group coordinator uses: the topic's, or
        // the one it will be made with.
        let count = broker
            .controller
            .image()
            .topic(OFFSETS_TOPIC)
            .map(|t| t.partitions.len() as i32)
            .filter(|count| *count > 0)
            .unwrap_or(broker.groups.config.offsets_topic_partitions);
        let partition = (OFFSETS_TOPIC.to_string(), partition_for(group_id, count));
        match broker
            .txns
            .add_partitions(
                request.transactional_id.0.as_str(),
                request.producer_id.0,
                request.producer_epoch,
                vec![partition],
            )
            .await
        {
            Ok(codes) => codes.first().copied().unwrap_or(0),
            Err(code) => code,
        }
    };
    AddOffsetsToTxnResponse::default().with_error_code(code_for_version(
        TxnApi::AddOffsetsToTxn,
        version,
        code,
    ))
}
