//! Producer ids for InitProducerId, handed out from blocks the controller
//! allocates (Kafka's `RPCProducerIdManager`).
//!
//! The controller keeps the next free id in its metadata image, so a block
//! is never given twice: not after a restart of this node (the rest of its
//! last block is simply never used, as in Kafka), and not to two brokers.

use rill_controller::state::PRODUCER_ID_BLOCK_SIZE;
use rill_controller::{ApplyOutcome, ControllerError, MetadataCommand};
use rill_types::NodeId;
use tokio::sync::Mutex;
use tracing::info;

use crate::metadata::MetadataClient;

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
    pub async fn next_id(&self, controller: &dyn MetadataClient) -> Result<i64, ControllerError> {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use rill_controller::raft::rpc::{BrokerHeartbeat, BrokerRegistrationRequest, HeartbeatAnswer};
    use rill_controller::raft::QuorumState;
    use rill_controller::MetadataImage;
    use tokio::sync::watch;

    use super::*;
    use crate::metadata::Answer;

    /// An active controller that only allocates producer ids, counting
    /// the blocks it hands out.
    #[derive(Debug)]
    struct Allocator {
        next: AtomicI64,
        blocks: AtomicUsize,
        images: watch::Sender<Arc<MetadataImage>>,
    }

    impl Allocator {
        fn new(first: i64) -> Self {
            Self {
                next: AtomicI64::new(first),
                blocks: AtomicUsize::new(0),
                images: watch::Sender::new(Arc::new(MetadataImage::default())),
            }
        }

        fn not_here<T>() -> Answer<'static, T> {
            Box::pin(async { Err(ControllerError::Raft("not in this test".into())) })
        }
    }

    impl MetadataClient for Allocator {
        fn image(&self) -> Arc<MetadataImage> {
            self.images.borrow().clone()
        }

        fn subscribe(&self) -> watch::Receiver<Arc<MetadataImage>> {
            self.images.subscribe()
        }

        fn is_active(&self) -> bool {
            true
        }

        fn submit(&self, command: MetadataCommand) -> Answer<'_, ApplyOutcome> {
            self.submit_within(command, Duration::from_secs(5))
        }

        fn submit_within(
            &self,
            command: MetadataCommand,
            _timeout: Duration,
        ) -> Answer<'_, ApplyOutcome> {
            Box::pin(async move {
                let MetadataCommand::AllocateProducerIds { count, .. } = command else {
                    return Err(ControllerError::Raft(format!("unexpected {command:?}")));
                };
                // A slow controller: callers that arrive meanwhile must
                // wait for this block, not ask for their own.
                tokio::time::sleep(Duration::from_millis(20)).await;
                self.blocks.fetch_add(1, Ordering::SeqCst);
                let first = self.next.fetch_add(i64::from(count), Ordering::SeqCst);
                Ok(ApplyOutcome::ProducerIdsAllocated { first, count })
            })
        }

        fn register_broker(&self, _: BrokerRegistrationRequest) -> Answer<'_, i64> {
            Self::not_here()
        }

        fn heartbeat(&self, _: BrokerHeartbeat, _: Duration) -> Answer<'_, HeartbeatAnswer> {
            Self::not_here()
        }

        fn describe_quorum(&self, _: Duration) -> Answer<'_, QuorumState> {
            Self::not_here()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ids_are_unique_and_one_block_is_taken_at_a_time() {
        let controller = Arc::new(Allocator::new(5_000));
        let manager = Arc::new(ProducerIdManager::new(1));
        let per_task = 625;
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (controller, manager) = (Arc::clone(&controller), Arc::clone(&manager));
                tokio::spawn(async move {
                    let mut ids = Vec::new();
                    for _ in 0..per_task {
                        ids.push(manager.next_id(&*controller).await.expect("an id"));
                    }
                    ids
                })
            })
            .collect();
        let mut all = BTreeSet::new();
        for task in tasks {
            for id in task.await.expect("task") {
                assert!(all.insert(id), "producer id {id} handed out twice");
            }
        }
        // 2,500 ids: exactly the first 2,500 of three blocks of 1,000.
        assert_eq!(all.len(), 2_500);
        assert_eq!(all.first(), Some(&5_000));
        assert_eq!(all.last(), Some(&7_499));
        assert_eq!(controller.blocks.load(Ordering::SeqCst), 3);
    }
}
