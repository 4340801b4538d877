//! The metadata state machine as openraft sees it: applies committed
//! entries to the [`MetadataImage`], publishes each new image on a
//! `tokio::sync::watch` channel, and writes snapshots to
//! `<dir>/snapshot.json` atomically.
//!
//! The image lives only in memory; at open it is the last snapshot, and
//! openraft re-applies the log entries after it (up to the commit point it
//! recorded, or up to the new leader's first entry after an election).

use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::files::{self, Durability};
use super::{RaftNodeId, TypeConfig};
use crate::state::{self, ApplyOutcome, MetadataError, MetadataImage};

const SNAPSHOT_FILE: &str = "snapshot.json";

type StorageResult<T> = Result<T, StorageError<RaftNodeId>>;

/// What `snapshot.json` holds.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<RaftNodeId, BasicNode>,
    image: MetadataImage,
}

/// The state machine handle given to openraft. Clones share one state, so
/// that snapshot builders can read it.
#[derive(Debug, Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    /// A `std` mutex: it is never held across an `.await`, and the work
    /// under it is applying commands in memory.
    state: Mutex<SmState>,
    image_tx: watch::Sender<Arc<MetadataImage>>,
}

#[derive(Debug)]
struct SmState {
    image: Arc<MetadataImage>,
    last_applied: Option<LogId<RaftNodeId>>,
    last_membership: StoredMembership<RaftNodeId, BasicNode>,
    /// The last snapshot built or installed, serialized.
    snapshot: Option<(SnapshotMeta<RaftNodeId, BasicNode>, Vec<u8>)>,
}

impl StateMachine {
    /// Loads the last snapshot from `dir`, if there is one.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let mut state = SmState {
            image: Arc::new(MetadataImage::default()),
            last_applied: None,
            last_membership: StoredMembership::default(),
            snapshot: None,
        };
        if let Some(bytes) = files::read_optional(dir, SNAPSHOT_FILE)? {
            // The file is replaced atomically, so damage here is not a
            // crash's doing; the log before the snapshot may be purged, so
            // there is nothing to rebuild from. Refuse to start.
            let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", dir.join(SNAPSHOT_FILE).display()),
                )
            })?;
            file.image.check_consistent().map_err(|problem| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {problem}", dir.join(SNAPSHOT_FILE).display()),
                )
            })?;
            tracing::info!(
                snapshot_id = %file.meta.snapshot_id,
                version = file.image.version,
                "loaded the controller snapshot"
            );
            let data = serde_json::to_vec(&file.image).map_err(io::Error::other)?;
            state.last_applied = file.meta.last_log_id;
            state.last_membership = file.meta.last_membership.clone();
            state.image = Arc::new(file.image);
            state.snapshot = Some((file.meta, data));
        }
        let (image_tx, _) = watch::channel(state.image.clone());
        Ok(Self {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                state: Mutex::new(state),
                image_tx,
            }),
        })
    }

    /// A receiver that sees every image the state machine publishes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.shared.image_tx.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, SmState> {
        self.shared
            .state
            .lock()
            .expect("state machine lock poisoned")
    }

    /// Writes `snapshot.json`, the fsyncs on tokio's blocking pool.
    async fn write_snapshot_file(
        &self,
        meta: &SnapshotMeta<RaftNodeId, BasicNode>,
        image: &MetadataImage,
    ) -> io::Result<()> {
        let file = SnapshotFileRef { meta, image };
        let bytes = serde_json::to_vec(&file).map_err(io::Error::other)?;
        let dir = self.shared.dir.clone();
        tokio::task::spawn_blocking(move || {
            files::write_atomic(&dir, SNAPSHOT_FILE, &bytes, Durability::Sync)
        })
        .await
        .map_err(io::Error::other)?
    }
}

fn snapshot_write_error(
    meta: &SnapshotMeta<RaftNodeId, BasicNode>,
    e: io::Error,
) -> StorageError<RaftNodeId> {
    StorageIOError::write_snapshot(Some(meta.signature()), &e).into()
}

/// `SnapshotFile` by reference, for writing without a copy.
#[derive(Serialize)]
struct SnapshotFileRef<'a> {
    meta: &'a SnapshotMeta<RaftNodeId, BasicNode>,
    image: &'a MetadataImage,
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        // Take what the snapshot needs and let go of the lock before the
        // serialization and the fsync.
        let (image, last_applied, last_membership) = {
            let state = self.lock();
            (
                state.image.clone(),
                state.last_applied,
                state.last_membership.clone(),
            )
        };
        let snapshot_id = match &last_applied {
            Some(id) => format!("{}-{}", id.leader_id, id.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership,
            snapshot_id,
        };
        self.write_snapshot_file(&meta, &image)
            .await
            .map_err(|e| snapshot_write_error(&meta, e))?;
        let data = serde_json::to_vec(&*image)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        tracing::info!(snapshot_id = %meta.snapshot_id, bytes = data.len(), "wrote a controller snapshot");
        self.lock().snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(
        Option<LogId<RaftNodeId>>,
        StoredMembership<RaftNodeId, BasicNode>,
    )> {
        let state = self.lock();
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> StorageResult<Vec<Result<ApplyOutcome, MetadataError>>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.lock();
        let state = &mut *state;
        // Copies the image only if a subscriber still holds the current one.
        let image = Arc::make_mut(&mut state.image);
        let mut outcomes = Vec::new();
        for entry in entries {
            image.advance_to(entry.log_id.index);
            let outcome = match &entry.payload {
                EntryPayload::Blank => Ok(ApplyOutcome::Nothing),
                EntryPayload::Normal(command) => {
                    let outcome = state::apply(image, command);
                    match &outcome {
                        Ok(done) => tracing::debug!(index = entry.log_id.index, ?done, "applied"),
                        Err(e) => {
                            tracing::debug!(index = entry.log_id.index, error = %e, "rejected")
                        }
                    }
                    outcome
                }
                EntryPayload::Membership(membership) => {
                    state.last_membership =
                        StoredMembership::new(Some(entry.log_id), membership.clone());
                    Ok(ApplyOutcome::Nothing)
                }
            };
            state.last_applied = Some(entry.log_id);
            outcomes.push(outcome);
        }
        self.shared.image_tx.send_replace(state.image.clone());
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<RaftNodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let image: MetadataImage = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        // A snapshot from a peer is input: an inconsistent one is refused
        // (openraft reports the storage error), never a panic.
        image.check_consistent().map_err(|problem| {
            StorageIOError::read_snapshot(Some(meta.signature()), &io::Error::other(problem))
        })?;
        self.write_snapshot_file(meta, &image)
            .await
            .map_err(|e| snapshot_write_error(meta, e))?;
        tracing::info!(snapshot_id = %meta.snapshot_id, "installed a controller snapshot");
        let image = Arc::new(image);
        let mut state = self.lock();
        state.image = image.clone();
        state.last_applied = meta.last_log_id;
        state.last_membership = meta.last_membership.clone();
        state.snapshot = Some((meta.clone(), data));
        self.shared.image_tx.send_replace(image);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.lock().snapshot.clone().map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
