//! Writing to `__consumer_offsets`: appending a change's records as the
//! partition's leader, waiting until they are durable, and the error
//! codes a failed write answers with.

use std::sync::Arc;
use std::time::Duration;

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_storage::records::BatchBuilder;
use tracing::{debug, warn};

use super::records::{self, OffsetValue, RecordKey};
use super::state::Group;
use super::{GroupCoordinator, OFFSETS_TOPIC};
use crate::errors::append_error_code;
use crate::replica::{
    AppendError, Appending, DurableError, LeaderAppend, Partition, ReplicaManager, ReplicationError,
};

/// How long a coordinator's write may wait to be committed to the ISR
/// (Kafka's `offsets.commit.timeout.ms`).
const OFFSETS_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// What to write to one `__consumer_offsets` partition: keys and values
/// (None: a tombstone).
pub(super) type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Records appended to `__consumer_offsets`, or queued to be (see
/// [`Partition::append_in_order`]), or why not; not yet known to be
/// durable: [`GroupCoordinator::durable`] waits for that.
pub(super) type Appended = Result<(Arc<Partition>, Appending<LeaderAppend>), i16>;

/// An OffsetCommit's append, and its offsets (topic, partition, value) in
/// record order, to apply once it is durable.
pub(super) type AppendedCommit = (Appended, Vec<(String, i32, OffsetValue)>);

impl GroupCoordinator {
    /// Appends records to a `__consumer_offsets` partition as its leader;
    /// called under the state lock (see [`GroupCoordinator::state`]).
    pub(super) fn append(
        &self,
        replicas: &ReplicaManager,
        partition: i32,
        writes: &Writes,
    ) -> Appended {
        assert!(!writes.is_empty());
        let Some(replica) = replicas.get(OFFSETS_TOPIC, partition) else {
            return Err(ResponseError::NotCoordinator.code());
        };
        let now = self.now();
        let mut builder = BatchBuilder::new();
        for (key, value) in writes {
            builder.push(Some(key), value.as_deref(), now);
        }
        let mut bytes = builder.build();
        // Leadership and the ISR size are checked by the append, under the
        // partition's state lock, as for Produce.
        match replica.append_in_order(move |replica| replica.append_as_leader(&mut bytes, true)) {
            Appending::Ready(Err(error)) => Err(append_error(partition, &error)),
            appending => Ok((replica, appending)),
        }
    }

    /// Waits until an append is committed as acks=all is: made (if it was
    /// queued), flushed here and replicated to the ISR, within Kafka's
    /// `offsets.commit.timeout.ms`. A lost leadership is NOT_COORDINATOR; a
    /// timeout or a shrunken ISR COORDINATOR_NOT_AVAILABLE, as Kafka maps
    /// them for its coordinators.
    pub(super) async fn durable(appended: Appended) -> Result<i64, i16> {
        let (replica, appending) = appended?;
        let appended = appending
            .result()
            .await
            .map_err(|error| append_error(replica.tp.partition, &error))?;
        match replica
            .wait_durable(&appended, OFFSETS_COMMIT_TIMEOUT)
            .await
        {
            Ok(()) => Ok(appended.info.base_offset),
            Err(DurableError::Replication(ReplicationError::NotLeader)) => {
                Err(ResponseError::NotCoordinator.code())
            }
            Err(error) => {
                debug!(partition = replica.tp.partition, %error, "__consumer_offsets write not durable");
                Err(ResponseError::CoordinatorNotAvailable.code())
            }
        }
    }

    /// The end of a change that shows only once its records are durable
    /// (a commit's offsets, the leader's assignment). The caller decided
    /// the change and appended its records under the state lock (see
    /// [`GroupCoordinator::state`]); this waits until they are durable
    /// ([`GroupCoordinator::durable`]) and then, under the lock again,
    /// hands the outcome (their base offset, or the error code) to `apply`
    /// with the group, if it still exists, and the time. Returns the
    /// outcome.
    pub(super) async fn apply_when_durable(
        self: Arc<Self>,
        group_id: String,
        appended: Appended,
        apply: impl FnOnce(&mut Group, Result<i64, i16>, i64) + Send,
    ) -> Result<i64, i16> {
        let written = Self::durable(appended).await;
        let mut state = self.lock();
        let now = self.now();
        if let Some(group) = state.groups.get_mut(&group_id) {
            apply(group, written, now);
        }
        written
    }

    /// Writes a group's metadata in the background, after a change that
    /// no request waits on (the group became empty). A failure is logged;
    /// the next change writes it again.
    pub(super) fn persist_in_background(
        &self,
        replicas: &ReplicaManager,
        partition: i32,
        group: &Group,
    ) {
        let writes = vec![(
            records::encode_key(&RecordKey::Group {
                group: group.id.clone(),
            }),
            Some(records::encode_group(&group.value())),
        )];
        let appended = self.append(replicas, partition, &writes);
        let group_id = group.id.clone();
        tokio::spawn(async move {
            if let Err(code) = Self::durable(appended).await {
                warn!(group = %group_id, code, "writing group metadata failed");
            }
        });
    }

    pub(super) fn after_change(
        &self,
        replicas: &ReplicaManager,
        partition: i32,
        group: &mut Group,
    ) {
        if group.take_persist() {
            self.persist_in_background(replicas, partition, group);
        }
    }

    /// [`Group::catch_up`] before a decision that looks at the group's
    /// members, and the write that may call for.
    pub(super) fn catch_up(&self, replicas: &ReplicaManager, partition: i32, group: &mut Group) {
        group.catch_up(self.now());
        self.after_change(replicas, partition, group);
    }
}

/// What a client is told when an append to `__consumer_offsets` fails:
/// a lost leadership sends it to find the coordinator again, too few
/// in-sync replicas to retry later, a transactional producer's fenced
/// epoch (TxnOffsetCommit) is PRODUCER_FENCED; the rest as
/// [`write_error_code`] maps them.
pub(super) fn append_error(partition: i32, error: &AppendError) -> i16 {
    match error {
        AppendError::NotLeader => ResponseError::NotCoordinator.code(),
        AppendError::NotEnoughReplicas { .. } => ResponseError::CoordinatorNotAvailable.code(),
        AppendError::Producer(error) => {
            debug!(partition, %error, "transactional offset commit refused");
            ResponseError::ProducerFenced.code()
        }
        error => {
            warn!(partition, %error, "writing to __consumer_offsets failed");
            write_error_code(append_error_code(error))
        }
    }
}

/// What a client is told when a coordinator write fails (Kafka's
/// mapping in `GroupMetadataManager`): retriable trouble with the
/// partition sends it to find the coordinator again; a record too large
/// is INVALID_COMMIT_OFFSET_SIZE.
pub(super) fn write_error_code(code: i16) -> i16 {
    let is = |kind: ResponseError| code == kind.code();
    if is(ResponseError::NotLeaderOrFollower) {
        ResponseError::NotCoordinator.code()
    } else if is(ResponseError::MessageTooLarge)
        || is(ResponseError::RecordListTooLarge)
        || is(ResponseError::InvalidFetchSize)
    {
        ResponseError::InvalidCommitOffsetSize.code()
    } else if is(ResponseError::UnknownTopicOrPartition)
        || is(ResponseError::NotEnoughReplicas)
        || is(ResponseError::NotEnoughReplicasAfterAppend)
        || is(ResponseError::RequestTimedOut)
        || is(ResponseError::KafkaStorageError)
    {
        ResponseError::CoordinatorNotAvailable.code()
    } else {
        ResponseError::UnknownServerError.code()
    }
}

/// What a client is told when a write of a group's metadata (not of
/// offsets) fails: as [`write_error_code`], except that Kafka answers a
/// group record too large for the log with UNKNOWN_SERVER_ERROR, keeping
/// INVALID_COMMIT_OFFSET_SIZE for commits.
pub(super) fn group_write_error_code(code: i16) -> i16 {
    if code == ResponseError::InvalidCommitOffsetSize.code() {
        ResponseError::UnknownServerError.code()
    } else {
        code
    }
}
