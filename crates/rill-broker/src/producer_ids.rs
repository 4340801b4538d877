//! Producer ids for InitProducerId, handed out from blocks the controller
//! allocates (Kafka's `RPCProducerIdManager`).
//!
//! The controller keeps the next free id in its metadata image, so a block
//! is never given twice: not after a restart of this node (the rest of its
//! last block is simply never used, as in Kafka), and not to two brokers.

use rill_controller::state::PRODUCER_ID_BLOCK_SIZE;
use rill_controller::{ApplyOutcome, Controller, ControllerError, MetadataCommand};
use rill_types::NodeId;
use tokio::sync::Mutex;
use tracing::info;

/// The ids of the current block not yet handed out: `next..end`.
#[derive(Debug, Default)]
struct Block {
    next: i64,
    end: i64,
}

/// Hands out producer ids, one at a time, from this node's current block.
#[derive(Debug)]
pub struct ProducerIdManager {
    node_id: NodeId,
    /// A tokio mutex because taking a new block waits for the controller;
    /// requests that arrive meanwhile wait for that block rather than each
    /// asking for one.
    block: Mutex<Block>,
}

impl ProducerIdManager {
    pub fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            block: Mutex::new(Block::default()),
        }
    }

    /// The next unused producer id, taking a new block from the controller
    /// when the current one is used up.
    pub async fn next_id(&self, controller: &Controller) -> Result<i64, ControllerError> {
        let mut block = self.block.lock().await;
        if block.next >= block.end {
            let command = MetadataCommand::AllocateProducerIds {
                node_id: self.node_id,
                count: PRODUCER_ID_BLOCK_SIZE,
            };
            match controller.submit(command).await? {
                ApplyOutcome::ProducerIdsAllocated { first, count } => {
                    assert!(first >= 0);
                    assert!(count > 0);
                    info!(
                        node_id = self.node_id,
                        first, count, "took a block of producer ids"
                    );
                    *block = Block {
                        next: first,
                        end: first + i64::from(count),
                    };
                }
                other => {
                    return Err(ControllerError::Raft(format!(
                        "AllocateProducerIds applied as {other:?}"
                    )))
                }
            }
        }
        let id = block.next;
        block.next += 1;
        assert!(block.next <= block.end);
        Ok(id)
    }
}
