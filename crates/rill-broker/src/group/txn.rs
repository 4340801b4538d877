//! Transactional offset commits (TxnOffsetCommit; KIP-98, KIP-447): a
//! transactional producer commits a consumer group's offsets as part of
//! its transaction, so that they count only if the transaction commits.
//!
//! The offsets are appended to the group's `__consumer_offsets` partition
//! as a transactional batch of the producer (Kafka's coordinator append:
//! the producer's epoch is checked, sequences are not) and kept *pending*,
//! by producer id, until the transaction coordinator's marker reaches that
//! partition ([`GroupCoordinator::complete_txn`]): a commit makes them the
//! group's committed offsets, unless a later commit of the same partition
//! was applied first; an abort drops them. A load of the partition does
//! the same with the batches and markers it reads, so the pending offsets
//! of transactions still open survive a change of coordinator.
//!
//! OffsetFetch with `require_stable` (KIP-447) answers
//! UNSTABLE_OFFSET_COMMIT for a partition with pending offsets, so a new
//! consumer does not start from an offset a transaction may still move.

use std::future::Future;
use std::sync::Arc;

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_storage::records::BatchBuilder;

use super::persist::append_error;
use super::records::{self, OffsetValue, RecordKey};
use super::state::{Committed, Group};
use super::{GroupCoordinator, OffsetCommit, OFFSETS_TOPIC};
use crate::replica::{Appending, ReplicaManager};

/// One offset of an open transaction.
#[derive(Debug, Clone)]
pub(super) struct PendingTxnOffset {
    /// The `__consumer_offsets` partition it was written to (its marker
    /// arrives there).
    pub offsets_partition: i32,
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub committed: Committed,
}

/// Who commits: TxnOffsetCommit's producer and group member fields.
#[derive(Debug, Clone)]
pub struct TxnCommitter {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    /// -1 from a client that does not know its generation (before v3).
    pub generation: i32,
}

impl GroupCoordinator {
    /// TxnOffsetCommit: checks the member (KIP-447), appends the offsets
    /// as the producer's transactional batch now (in request order, as
    /// [`GroupCoordinator::commit`]), and returns the wait until they are
    /// durable, after which they are pending in the transaction. One error
    /// for all partitions, or none.
    pub fn txn_commit(
        self: &Arc<Self>,
        replicas: &ReplicaManager,
        group_id: &str,
        committer: TxnCommitter,
        commits: Vec<OffsetCommit>,
    ) -> impl Future<Output = Result<(), i16>> + Send + 'static {
        let appended = self.append_txn_commit(replicas, group_id, &committer, commits);
        let coordinator = Arc::clone(self);
        async move {
            let Some((partition, appended, values)) = appended? else {
                return Ok(());
            };
            let base_offset = Self::durable(appended).await?;
            let mut state = coordinator.lock();
            let pending = state.pending_txn.entry(committer.producer_id).or_default();
            for (i, (group, topic, index, value)) in values.into_iter().enumerate() {
                pending.push(PendingTxnOffset {
                    offsets_partition: partition,
                    group,
                    topic,
                    partition: index,
                    committed: Committed {
                        value,
                        record_offset: base_offset + i as i64,
                    },
                });
            }
            Ok(())
        }
    }

    #[allow(clippy::type_complexity)]
    fn append_txn_commit(
        &self,
        replicas: &ReplicaManager,
        group_id: &str,
        committer: &TxnCommitter,
        commits: Vec<OffsetCommit>,
    ) -> Result<
        Option<(
            i32,
            super::persist::Appended,
            Vec<(String, String, i32, OffsetValue)>,
        )>,
        i16,
    > {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId.code());
        }
        if commits.is_empty() {
            return Ok(None);
        }
        let now = self.now();
        let mut state = self.lock();
        let partition = self.locate(&state, group_id).map_err(|k| k.code())?;
        if !state.groups.contains_key(group_id) {
            if !self.may_create_group(&mut state, group_id, now) {
                return Err(ResponseError::CoordinatorNotAvailable.code());
            }
            state.groups.insert(
                group_id.to_string(),
                Group::new(group_id.to_string(), &self.config, now),
            );
        }
        let group = state.groups.get_mut(group_id).expect("made above");
        group
            .check_txn_commit(
                &committer.member_id,
                committer.group_instance_id.as_deref(),
                committer.generation,
            )
            .map_err(|k| k.code())?;
        let values: Vec<(String, String, i32, OffsetValue)> = commits
            .into_iter()
            .map(|c| {
                (
                    group_id.to_string(),
                    c.topic,
                    c.partition,
                    OffsetValue {
                        offset: c.offset,
                        leader_epoch: c.leader_epoch,
                        metadata: c.metadata,
                        commit_timestamp: now,
                    },
                )
            })
            .collect();
        let Some(replica) = replicas.get(OFFSETS_TOPIC, partition) else {
            return Err(ResponseError::NotCoordinator.code());
        };
        let mut builder = BatchBuilder::new();
        builder.producer_id = committer.producer_id;
        builder.producer_epoch = committer.producer_epoch;
        builder.base_sequence = 0;
        builder.is_transactional = true;
        for (group, topic, index, value) in &values {
            let key = records::encode_key(&RecordKey::Offset {
                group: group.clone(),
                topic: topic.clone(),
                partition: *index,
            });
            builder.push(Some(&key), Some(&records::encode_offset(value)), now);
        }
        let mut bytes = builder.build();
        let appended = match replica
            .append_in_order(move |replica| replica.append_as_coordinator(&mut bytes))
        {
            Appending::Ready(Err(error)) => Err(append_error(partition, &error)),
            appending => Ok((replica, appending)),
        };
        Ok(Some((partition, appended, values)))
    }

    /// A transaction marker was written to `__consumer_offsets` partition
    /// `offsets_partition`: the producer's pending offsets there are
    /// committed (`commit`) or dropped.
    pub fn complete_txn(&self, offsets_partition: i32, producer_id: i64, commit: bool) {
        let mut state = self.lock();
        let Some(pending) = state.pending_txn.remove(&producer_id) else {
            return;
        };
        let (done, open): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|p| p.offsets_partition == offsets_partition);
        if !open.is_empty() {
            state.pending_txn.insert(producer_id, open);
        }
        if !commit {
            return;
        }
        for offset in done {
            if let Some(group) = state.groups.get_mut(&offset.group) {
                group.apply_commit(offset.topic, offset.partition, offset.committed);
            }
        }
    }
}

/// The pending offsets of transactions, rebuilt while a partition loads:
/// transactional batches' offsets by producer, until their marker.
#[derive(Debug, Default)]
pub(super) struct LoadedTxns {
    pub pending: std::collections::HashMap<i64, Vec<PendingTxnOffset>>,
}

impl LoadedTxns {
    /// An offset record of a transactional batch of `producer_id`.
    pub fn offset(&mut self, producer_id: i64, offset: PendingTxnOffset) {
        self.pending.entry(producer_id).or_default().push(offset);
    }

    /// A marker of `producer_id`: its offsets, for a commit.
    pub fn marker(&mut self, producer_id: i64, commit: bool) -> Vec<PendingTxnOffset> {
        let done = self.pending.remove(&producer_id).unwrap_or_default();
        if commit {
            done
        } else {
            Vec::new()
        }
    }
}
