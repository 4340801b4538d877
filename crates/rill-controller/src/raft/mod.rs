//! The metadata state machine run by openraft, with this node as the only
//! voter, and [`Controller`], the handle the broker holds.
//!
//! # Layout
//! - `log_store`: the durable Raft log (one file per entry), the vote and
//!   the purge and commit points.
//! - `state_machine`: applies entries to the image, publishes it, writes
//!   and loads snapshots.
//! - `network`: a network with no peers (single voter).
//! - `files`: atomic replacement of small files.
//!
//! A data directory holds:
//! ```text
//! log/<index:020>.json   one Raft entry per file
//! vote.json              the last vote (fsynced)
//! purged.json            the last purged log id (fsynced)
//! committed.json         the commit point (a hint, not fsynced)
//! snapshot.json          the last snapshot: its meta and the image (fsynced)
//! ```
//!
//! **Architecture Invariant:** the controller's state is a deterministic
//! function of its log: the image is the last snapshot plus the entries
//! after it, applied by [`crate::state::apply`].

mod files;
mod log_store;
mod network;
mod state_machine;

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::{Config, Raft, ServerState, SnapshotPolicy};
use tokio::sync::watch;

pub use log_store::LogStore;
pub use network::NoPeers;
pub use state_machine::StateMachine;

use crate::state::{ApplyOutcome, MetadataCommand, MetadataError, MetadataImage};

/// The node id type inside openraft. rill's node ids are `i32` as in
/// Kafka; only non-negative ones are valid and they map one to one.
pub type RaftNodeId = u64;

openraft::declare_raft_types!(
    /// openraft's types for the controller quorum.
    pub TypeConfig:
        D = MetadataCommand,
        R = Result<ApplyOutcome, MetadataError>,
        NodeId = RaftNodeId,
        Node = openraft::BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

/// Why the controller could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The command was committed and applied, and the state machine
    /// rejected it; the image is unchanged.
    #[error(transparent)]
    Rejected(#[from] MetadataError),
    #[error("controller data dir {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("node id {0} is not valid for a controller; it must be at least 0")]
    InvalidNodeId(rill_types::NodeId),
    /// The data dir belongs to a quorum whose voters do not include this
    /// node (it was created with another node id).
    #[error("node {node_id} is not a voter of the controller quorum in this data dir (voters: {voters:?})")]
    NotAVoter {
        node_id: rill_types::NodeId,
        voters: Vec<u64>,
    },
    /// openraft failed or has stopped (for example after a storage error).
    #[error("raft: {0}")]
    Raft(String),
    /// The controller's file system has too little space left to take a
    /// log entry (see [`FREE_BYTES_MIN`]); nothing was proposed.
    #[error("controller data dir {path}: only {free_bytes} bytes free; refusing metadata changes until space is freed")]
    NoSpace { path: PathBuf, free_bytes: u64 },
}

/// How much free space the controller's file system must have before a
/// command is proposed. openraft treats a failed log write as fatal: its
/// core stops, and every later proposal fails until the process restarts.
/// A full disk (the partition logs share it) is therefore refused before
/// the write, as an ordinary error, and metadata changes work again as soon
/// as space is freed. An entry is a small JSON file; 1 MiB leaves room for
/// the entries and snapshot openraft may write on its own. (openraft also
/// writes at start-up — a vote, a blank entry — which this check cannot
/// cover; a controller that cannot write them fails to start with the
/// error.)
pub const FREE_BYTES_MIN: u64 = 1 << 20;

/// Free bytes on the file system holding `dir`, as an unprivileged writer
/// sees them.
fn free_bytes(dir: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

impl ControllerError {
    fn raft(e: impl std::fmt::Display) -> Self {
        ControllerError::Raft(e.to_string())
    }
}

/// Tuning of the controller; the defaults suit a broker.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// A snapshot is written after this many log entries since the last.
    pub snapshot_logs_since_last: u64,
    /// How many entries before a snapshot's point stay in the log (useful to
    /// followers that are a little behind, once there are followers).
    pub snapshot_logs_to_keep: u64,
    /// How long `open` waits for the node to elect itself and catch up.
    pub open_timeout: Duration,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            snapshot_logs_since_last: 1000,
            snapshot_logs_to_keep: 100,
            open_timeout: Duration::from_secs(30),
        }
    }
}

/// The controller of a single-node cluster: proposes commands to the Raft
/// group and publishes the committed metadata image.
///
/// Call [`Controller::shutdown`] before dropping it; openraft's tasks run
/// until then.
#[derive(Clone)]
pub struct Controller {
    node_id: rill_types::NodeId,
    dir: PathBuf,
    raft: Raft<TypeConfig>,
    image_rx: watch::Receiver<Arc<MetadataImage>>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("node_id", &self.node_id)
            .field("version", &self.image_rx.borrow().version)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// Opens the controller whose data is in `dir` (creating it if needed)
    /// with default options. See [`Controller::open_with`].
    pub async fn open(
        dir: impl AsRef<Path>,
        node_id: rill_types::NodeId,
    ) -> Result<Controller, ControllerError> {
        Self::open_with(dir, node_id, ControllerOptions::default()).await
    }

    /// Opens the controller whose data is in `dir`. On first start it
    /// initialises a cluster with this node as its only voter. It returns
    /// once this node leads and has applied every committed entry, so the
    /// image is as current as the log.
    pub async fn open_with(
        dir: impl AsRef<Path>,
        node_id: rill_types::NodeId,
        options: ControllerOptions,
    ) -> Result<Controller, ControllerError> {
        let dir = dir.as_ref();
        let raft_id =
            RaftNodeId::try_from(node_id).map_err(|_| ControllerError::InvalidNodeId(node_id))?;
        let io_error = |source| ControllerError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_error)?;
        let log_store = LogStore::open(dir).map_err(io_error)?;
        let state_machine = StateMachine::open(dir).map_err(io_error)?;
        let image_rx = state_machine.subscribe();

        let config = Config {
            cluster_name: "rill".to_string(),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(options.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: options.snapshot_logs_to_keep,
            ..Config::default()
        };
        let config = Arc::new(config.validate().map_err(ControllerError::raft)?);
        let raft = Raft::new(raft_id, config, NoPeers, log_store, state_machine)
            .await
            .map_err(ControllerError::raft)?;

        if raft.is_initialized().await.map_err(ControllerError::raft)? {
            let voters: Vec<RaftNodeId> = raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .collect();
            if !voters.contains(&raft_id) {
                raft.shutdown().await.map_err(ControllerError::raft)?;
                return Err(ControllerError::NotAVoter { node_id, voters });
            }
        } else {
            tracing::info!(node_id, dir = %dir.display(), "initialising a new single-voter controller quorum");
            raft.initialize(BTreeSet::from([raft_id]))
                .await
                .map_err(ControllerError::raft)?;
        }
        raft.wait(Some(options.open_timeout))
            .state(ServerState::Leader, "the only voter elects itself")
            .await
            .map_err(ControllerError::raft)?;
        // A new leader commits a blank entry of its term; once that is
        // applied, so is everything before it.
        raft.ensure_linearizable()
            .await
            .map_err(ControllerError::raft)?;
        let controller = Controller {
            node_id,
            dir: dir.to_path_buf(),
            raft,
            image_rx,
        };
        tracing::info!(
            node_id,
            version = controller.image().version,
            "controller ready"
        );
        Ok(controller)
    }

    pub fn node_id(&self) -> rill_types::NodeId {
        self.node_id
    }

    /// Proposes a command and waits until it is committed and applied.
    /// When this returns `Ok`, [`Controller::image`] shows the change.
    /// Refused without proposing anything when the disk is (nearly) full;
    /// see [`FREE_BYTES_MIN`].
    pub async fn submit(&self, command: MetadataCommand) -> Result<ApplyOutcome, ControllerError> {
        let free_bytes = free_bytes(&self.dir).map_err(|source| ControllerError::Io {
            path: self.dir.clone(),
            source,
        })?;
        if free_bytes < FREE_BYTES_MIN {
            return Err(ControllerError::NoSpace {
                path: self.dir.clone(),
                free_bytes,
            });
        }
        let response = self
            .raft
            .client_write(command)
            .await
            .map_err(ControllerError::raft)?;
        Ok(response.data?)
    }

    /// The latest committed image.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.image_rx.borrow().clone()
    }

    /// A receiver of every committed image, for brokers that follow the
    /// controller: `changed().await` wakes on each new one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.image_rx.clone()
    }

    /// Writes a snapshot of everything applied so far and waits until it is
    /// on disk (openraft then purges the log before it).
    pub async fn snapshot(&self) -> Result<(), ControllerError> {
        let applied = self.raft.metrics().borrow().last_applied;
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(ControllerError::raft)?;
        self.raft
            .wait(Some(Duration::from_secs(30)))
            .metrics(|m| m.snapshot >= applied, "snapshot written")
            .await
            .map_err(ControllerError::raft)?;
        Ok(())
    }

    /// Stops openraft's tasks. Everything acknowledged is already durable.
    pub async fn shutdown(&self) -> Result<(), ControllerError> {
        self.raft.shutdown().await.map_err(ControllerError::raft)?;
        tracing::info!(node_id = self.node_id, "controller stopped");
        Ok(())
    }
}
