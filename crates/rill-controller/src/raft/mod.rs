//! The metadata state machine run by openraft over the controller quorum,
//! and [`Controller`], the handle every node holds.
//!
//! A node is a voter of the quorum (the `controller` role) or an observer
//! that follows the metadata log as an openraft learner (a broker-only
//! node). A single node with no quorum configured is the only voter of its
//! own quorum, as before.
//!
//! # Layout
//! - `log_store`: the durable Raft log (one file per entry), the vote and
//!   the purge and commit points.
//! - `state_machine`: applies entries to the image, publishes it, writes
//!   and loads snapshots.
//! - `rpc`: the controller port's frames and messages.
//! - `network`: openraft's network over TCP (the client side).
//! - `server`: the controller port (the serving side): Raft RPCs to
//!   openraft, broker requests to the active controller.
//! - `active`: what only the active controller does: judge broker
//!   liveness from heartbeats, fence the silent, unfence the caught up,
//!   refuse a duplicate node id, set the cluster id.
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

mod active;
mod files;
mod log_store;
mod network;
pub mod rpc;
mod server;
mod state_machine;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use rill_types::{Clock, NodeId, SystemClock};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use log_store::LogStore;
pub use network::TcpNetwork;
pub use state_machine::StateMachine;

use self::network::TcpPeer;
use self::rpc::{
    BrokerHeartbeat, BrokerRegistrationRequest, ControllerRequest, ControllerResponse,
    HeartbeatAnswer, Request, Response,
};
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
    /// The data dir's controller log belongs to a quorum of other voters
    /// (another cluster's, or a single node's).
    #[error("the controller log in this data dir belongs to a quorum of voters {found:?}, not the configured {configured:?}; use a fresh data dir")]
    QuorumMismatch {
        configured: Vec<u64>,
        found: Vec<u64>,
    },
    /// openraft failed or has stopped (for example after a storage error).
    #[error("raft: {0}")]
    Raft(String),
    /// The controller's file system has too little space left to take a
    /// log entry (see [`FREE_BYTES_MIN`]); nothing was proposed.
    #[error("controller data dir {path}: only {free_bytes} bytes free; refusing metadata changes until space is freed")]
    NoSpace { path: PathBuf, free_bytes: u64 },
    /// No active controller answered within the time allowed (the quorum
    /// has lost its majority, or an election is under way). A proposal may
    /// still be committed later.
    #[error("no active controller answered within {0:?}: a majority of the controller quorum's voters must be running and reachable on their controller ports (see `rill cluster describe`)")]
    Timeout(Duration),
    /// Another live process has registered this node id.
    #[error("node id already registered by a live broker: {0}")]
    DuplicateBrokerRegistration(String),
    /// This node's data dir belongs to another cluster.
    #[error("{0}")]
    InconsistentClusterId(String),
    /// The active controller could not do it (its disk is full, its Raft
    /// stopped, …).
    #[error("active controller: {0}")]
    Remote(String),
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

/// How the quorum is made up, from the node's `--controller-quorum`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumConfig {
    /// The voters: node id → controller address (`host:port`).
    pub voters: BTreeMap<NodeId, String>,
    /// This node's own controller address, as peers reach it.
    pub self_addr: String,
}

impl QuorumConfig {
    /// Parses Kafka's `controller.quorum.voters` form:
    /// `1@host:9093,2@host:9093,3@host:9093`.
    pub fn parse_voters(text: &str) -> Result<BTreeMap<NodeId, String>, String> {
        let mut voters = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, addr) = part
                .split_once('@')
                .ok_or_else(|| format!("'{part}' is not NODE_ID@HOST:PORT"))?;
            let id: NodeId = id
                .trim()
                .parse()
                .map_err(|_| format!("'{id}' in '{part}' is not a node id"))?;
            if id < 0 {
                return Err(format!("node id {id} in '{part}' is negative"));
            }
            let (host, port) = addr
                .rsplit_once(':')
                .ok_or_else(|| format!("'{addr}' in '{part}' has no port"))?;
            if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(format!("'{addr}' in '{part}' is not HOST:PORT"));
            }
            if voters.insert(id, addr.to_string()).is_some() {
                return Err(format!("node id {id} is listed twice"));
            }
        }
        if voters.is_empty() {
            return Err("the quorum lists no voters".to_string());
        }
        Ok(voters)
    }
}

/// Tuning of the controller; the defaults suit a broker.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// A snapshot is written after this many log entries since the last.
    pub snapshot_logs_since_last: u64,
    /// How many entries before a snapshot's point stay in the log: a
    /// follower at most this far behind catches up from the log instead of
    /// being sent a snapshot. Generous on purpose (entries are small): a
    /// voter back from a partition should not need a snapshot, and
    /// openraft 0.9's leader can stop on a fatal error when it decides to
    /// send one just as that follower's stream ends (see
    /// [`Controller::failed`]).
    pub snapshot_logs_to_keep: u64,
    /// How long `open` waits for the quorum to have a leader (and, on a
    /// single voter, for this node to elect itself and catch up).
    pub open_timeout: Duration,
    /// `None`: a single-node cluster, this node its only voter.
    pub quorum: Option<QuorumConfig>,
    /// This node's controller address as peers would reach it, recorded
    /// in a single voter's membership (DescribeQuorum names it).
    pub advertised_addr: Option<String>,
    /// The cluster id this node proposes if the quorum has none yet (its
    /// data dir's, or a new one). `None` proposes none.
    pub cluster_id: Option<String>,
    /// The cluster id this node's data dir already belongs to, if any: an
    /// observer of another cluster is refused before it joins.
    pub data_dir_cluster_id: Option<String>,
    /// The data dir's id (see `MetadataCommand::RegisterBroker`).
    pub directory_id: uuid::Uuid,
    /// Kafka's `broker.session.timeout.ms`: the active controller fences a
    /// broker it has not heard from for this long. `None` fences nobody
    /// (a controller used without brokers, as in tests of the log).
    pub broker_session_timeout: Option<Duration>,
    /// How long a request to the active controller may wait for one to
    /// answer, when the caller gives no timeout of its own.
    pub request_timeout: Duration,
    /// Kafka's `auto.leader.rebalance.enable` with
    /// `leader.imbalance.check.interval.seconds`: how often the active
    /// controller moves partitions back to their preferred leaders where a
    /// broker leads too few of its preferred partitions. `None`: never.
    pub leader_imbalance_check_interval: Option<Duration>,
    /// Time for broker liveness (the active controller's judgement only;
    /// the state machine never reads a clock).
    pub clock: Arc<dyn Clock>,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            snapshot_logs_since_last: 1000,
            snapshot_logs_to_keep: 10_000,
            open_timeout: Duration::from_secs(30),
            quorum: None,
            advertised_addr: None,
            cluster_id: None,
            data_dir_cluster_id: None,
            directory_id: uuid::Uuid::nil(),
            broker_session_timeout: None,
            request_timeout: Duration::from_secs(30),
            leader_imbalance_check_interval: None,
            clock: Arc::new(SystemClock),
        }
    }
}

/// The quorum as one node sees it, for DescribeQuorum and
/// `rill cluster describe`. Log positions are Kafka-style offsets: the
/// number of entries up to and including the last one (openraft's entry
/// `i` ends at offset `i + 1`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuorumState {
    pub leader: Option<NodeId>,
    pub term: u64,
    /// The end of the committed log (Kafka's high watermark).
    pub high_watermark: u64,
    /// Voters with the end of the log the leader knows each has (only the
    /// leader knows; elsewhere `None`, but for this node itself).
    pub voters: Vec<(NodeId, Option<u64>)>,
    /// Observers (learners) likewise.
    pub observers: Vec<(NodeId, Option<u64>)>,
    /// Every member's controller address (`host:port`).
    pub endpoints: Vec<(NodeId, String)>,
}

/// A node's handle on the controller quorum: proposes commands (through
/// the active controller, wherever it is), publishes the committed
/// metadata image, and serves the controller port.
///
/// Call [`Controller::shutdown`] before dropping it; openraft's tasks run
/// until then.
#[derive(Clone)]
pub struct Controller {
    node_id: NodeId,
    dir: PathBuf,
    raft: Raft<TypeConfig>,
    image_rx: watch::Receiver<Arc<MetadataImage>>,
    shared: Arc<Shared>,
}

/// What the clones of a [`Controller`] share.
struct Shared {
    options: ControllerOptions,
    /// The active controller's view of broker liveness (see `active`).
    liveness: Mutex<active::Liveness>,
    /// Idle connections to peers for forwarded requests, one per peer
    /// (a caller takes it out while it uses it). A `std` mutex: held only
    /// to take or put back.
    peers: Mutex<HashMap<RaftNodeId, TcpPeer>>,
    shutdown: CancellationToken,
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
    /// Opens the single-voter controller whose data is in `dir` with
    /// default options and no listener. See [`Controller::open_with`].
    pub async fn open(
        dir: impl AsRef<Path>,
        node_id: NodeId,
    ) -> Result<Controller, ControllerError> {
        Self::open_with(dir, node_id, ControllerOptions::default(), None).await
    }

    /// Opens the controller whose data is in `dir` and, given a listener,
    /// serves the controller port on it.
    ///
    /// On first start a voter initialises the quorum with the configured
    /// voters (every voter does the same, which openraft allows; the first
    /// election decides), and an observer asks the active controller to
    /// add it as a learner. Returns once the quorum has a leader; on a
    /// single voter, once this node leads and has applied every committed
    /// entry, so the image is as current as the log.
    pub async fn open_with(
        dir: impl AsRef<Path>,
        node_id: NodeId,
        options: ControllerOptions,
        listener: Option<TcpListener>,
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

        let mut config = Config {
            cluster_name: "rill".to_string(),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(options.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: options.snapshot_logs_to_keep,
            snapshot_max_chunk_size: rpc::SNAPSHOT_CHUNK_BYTES,
            max_payload_entries: rpc::ENTRIES_PER_APPEND_MAX,
            ..Config::default()
        };
        if options.quorum.is_some() {
            // openraft's defaults (50 ms heartbeats, 150–300 ms elections)
            // suit a quiet network; a broker's controller shares its cores
            // with the data path and fsyncs each entry, so a busy moment
            // must not start an election. A follower also honours the
            // leader's lease (the longest election timeout) before it
            // votes, so a dead leader is replaced after lease + timeout:
            // about 2.4–3.2 s here, as Kafka's defaults give (a 2 s fetch
            // timeout, then a 1 s election timeout).
            config.heartbeat_interval = 200;
            config.election_timeout_min = 800;
            config.election_timeout_max = 1600;
        }
        let config = Arc::new(config.validate().map_err(ControllerError::raft)?);
        let raft = Raft::new(raft_id, config, TcpNetwork, log_store, state_machine)
            .await
            .map_err(ControllerError::raft)?;

        let shutdown = CancellationToken::new();
        let controller = Controller {
            node_id,
            dir: dir.to_path_buf(),
            raft,
            image_rx,
            shared: Arc::new(Shared {
                liveness: Mutex::new(active::Liveness::default()),
                peers: Mutex::new(HashMap::new()),
                shutdown: shutdown.clone(),
                options,
            }),
        };
        if let Some(listener) = listener {
            tokio::spawn(server::serve(
                controller.clone(),
                listener,
                shutdown.clone(),
            ));
        }
        let result = controller.join().await;
        if let Err(error) = result {
            let _ = controller.shutdown().await;
            return Err(error);
        }
        tokio::spawn(active::run(controller.clone(), shutdown));
        tracing::info!(
            node_id,
            version = controller.image().version,
            leader = ?controller.raft.metrics().borrow().current_leader,
            "controller ready"
        );
        Ok(controller)
    }

    /// Initialises or joins the quorum and waits for it to have a leader.
    async fn join(&self) -> Result<(), ControllerError> {
        let options = &self.shared.options;
        let raft_id = self.raft_id();
        let voters: BTreeMap<RaftNodeId, BasicNode> = match &options.quorum {
            None => BTreeMap::from([(
                raft_id,
                BasicNode::new(options.advertised_addr.clone().unwrap_or_default()),
            )]),
            Some(quorum) => quorum
                .voters
                .iter()
                .map(|(id, addr)| (*id as RaftNodeId, BasicNode::new(addr)))
                .collect(),
        };
        let is_voter = voters.contains_key(&raft_id);
        if self
            .raft
            .is_initialized()
            .await
            .map_err(ControllerError::raft)?
        {
            let membership: Vec<RaftNodeId> = self
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .collect();
            // A voter of a forming quorum may have granted a vote (and so be
            // "initialised") before any membership reached it: nothing to
            // check yet, the leader's log brings it.
            let forming = membership.is_empty();
            if !forming && is_voter && !membership.contains(&raft_id) {
                return Err(ControllerError::NotAVoter {
                    node_id: self.node_id,
                    voters: membership,
                });
            }
            // A data dir whose log was made by another quorum (a single
            // node's, or another cluster's) must not be taken for this
            // one's: this node would follow, or lead, the wrong log.
            if options.quorum.is_some() && !forming {
                let configured: Vec<RaftNodeId> = voters.keys().copied().collect();
                let mut found = membership.clone();
                found.sort_unstable();
                if found != configured {
                    return Err(ControllerError::QuorumMismatch { configured, found });
                }
            }
        } else if is_voter {
            tracing::info!(node_id = self.node_id, voters = ?voters.keys().collect::<Vec<_>>(), dir = %self.dir.display(), "initialising a new controller quorum");
            match self.raft.initialize(voters).await {
                Ok(()) => {}
                // Another voter initialised first and has already asked
                // this node for its vote: the quorum is forming, and this
                // node takes the membership from the leader's log.
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                    tracing::info!(
                        node_id = self.node_id,
                        "another voter initialised the quorum first; joining it"
                    );
                }
                Err(error) => return Err(ControllerError::raft(error)),
            }
        }
        let deadline = Instant::now() + options.open_timeout;
        if !is_voter {
            // An observer: the active controller adds it as a learner, and
            // it then receives the log like any follower.
            let addr = options
                .quorum
                .as_ref()
                .map(|q| q.self_addr.clone())
                .unwrap_or_default();
            let request = ControllerRequest::AddObserver {
                node_id: self.node_id,
                addr,
                cluster_id: options.data_dir_cluster_id.clone(),
                directory_id: options.directory_id,
            };
            match self.call(request, options.open_timeout).await? {
                ControllerResponse::ObserverAdded => {}
                ControllerResponse::DuplicateBrokerRegistration(why) => {
                    return Err(ControllerError::DuplicateBrokerRegistration(why))
                }
                ControllerResponse::InconsistentClusterId(why) => {
                    return Err(ControllerError::InconsistentClusterId(why))
                }
                other => return Err(unexpected_answer(&other)),
            }
        }
        if options.quorum.is_none() {
            self.raft
                .wait(Some(options.open_timeout))
                .state(ServerState::Leader, "the only voter elects itself")
                .await
                .map_err(ControllerError::raft)?;
            // A new leader commits a blank entry of its term; once that is
            // applied, so is everything before it.
            self.raft
                .ensure_linearizable()
                .await
                .map_err(ControllerError::raft)?;
            return Ok(());
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "the quorum has a leader")
            .await
            .map_err(|_| ControllerError::Timeout(options.open_timeout))?;
        Ok(())
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    fn raft_id(&self) -> RaftNodeId {
        RaftNodeId::try_from(self.node_id).expect("checked at open")
    }

    /// Whether this node is the active controller: the quorum's leader,
    /// in contact with a majority of the voters (see [`leads_with_quorum`]).
    pub fn is_active(&self) -> bool {
        leads_with_quorum(&self.raft.metrics().borrow())
    }

    /// The active controller's node id, if this node knows one.
    pub fn active_controller(&self) -> Option<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .current_leader
            .and_then(|id| NodeId::try_from(id).ok())
    }

    /// The quorum as this node sees it.
    pub fn quorum_state(&self) -> QuorumState {
        let metrics = self.raft.metrics().borrow().clone();
        let log_end = |id: RaftNodeId| {
            metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|log_id| log_id.index + 1)
                .or_else(|| {
                    (id == metrics.id)
                        .then_some(metrics.last_log_index.map(|i| i + 1))
                        .flatten()
                })
        };
        let membership = metrics.membership_config.membership();
        let to_node = |id: RaftNodeId| NodeId::try_from(id).unwrap_or(-1);
        QuorumState {
            leader: metrics.current_leader.map(to_node),
            term: metrics.current_term,
            high_watermark: metrics.last_applied.map_or(0, |l| l.index + 1),
            voters: membership
                .voter_ids()
                .map(|id| (to_node(id), log_end(id)))
                .collect(),
            observers: membership
                .learner_ids()
                .map(|id| (to_node(id), log_end(id)))
                .collect(),
            endpoints: membership
                .nodes()
                .map(|(id, node)| (to_node(*id), node.addr.clone()))
                .collect(),
        }
    }

    /// The quorum as the active controller sees it (which alone knows how
    /// far each voter and observer has replicated).
    pub async fn describe_quorum(&self, timeout: Duration) -> Result<QuorumState, ControllerError> {
        match self
            .call(ControllerRequest::DescribeQuorum, timeout)
            .await?
        {
            ControllerResponse::Quorum(state) => Ok(state),
            other => Err(unexpected_answer(&other)),
        }
    }

    /// Proposes a command through the active controller and waits until it
    /// is committed and applied here too, so that [`Controller::image`]
    /// shows the change. Gives up after the configured request timeout.
    pub async fn submit(&self, command: MetadataCommand) -> Result<ApplyOutcome, ControllerError> {
        self.submit_within(command, self.shared.options.request_timeout)
            .await
    }

    /// [`Controller::submit`] with a timeout of the caller's (a request's
    /// `timeout_ms`): past it, [`ControllerError::Timeout`].
    pub async fn submit_within(
        &self,
        command: MetadataCommand,
        timeout: Duration,
    ) -> Result<ApplyOutcome, ControllerError> {
        let deadline = Instant::now() + timeout;
        self.check_free_space()?;
        let bytes = serde_json::to_vec(&command)
            .map_err(ControllerError::raft)?
            .len();
        if bytes > rpc::COMMAND_BYTES_MAX {
            return Err(ControllerError::Rejected(MetadataError::InvalidRequest(
                format!(
                    "the metadata change is {bytes} bytes; at most {} fit the controller's log",
                    rpc::COMMAND_BYTES_MAX
                ),
            )));
        }
        match self
            .call(ControllerRequest::Submit(command), timeout)
            .await?
        {
            ControllerResponse::Submitted { result, log_index } => {
                self.wait_applied(log_index, deadline).await?;
                Ok(result?)
            }
            other => Err(unexpected_answer(&other)),
        }
    }

    /// Registers this node as a broker; returns its broker epoch. Waits
    /// until the registration is applied here.
    pub async fn register_broker(
        &self,
        registration: BrokerRegistrationRequest,
    ) -> Result<i64, ControllerError> {
        let timeout = self.shared.options.request_timeout;
        let deadline = Instant::now() + timeout;
        match self
            .call(ControllerRequest::Register(registration), timeout)
            .await?
        {
            ControllerResponse::Registered {
                broker_epoch,
                log_index,
            } => {
                self.wait_applied(log_index, deadline).await?;
                Ok(broker_epoch)
            }
            ControllerResponse::DuplicateBrokerRegistration(why) => {
                Err(ControllerError::DuplicateBrokerRegistration(why))
            }
            other => Err(unexpected_answer(&other)),
        }
    }

    /// Sends a broker heartbeat to the active controller.
    pub async fn heartbeat(
        &self,
        heartbeat: BrokerHeartbeat,
        timeout: Duration,
    ) -> Result<HeartbeatAnswer, ControllerError> {
        match self
            .call(ControllerRequest::Heartbeat(heartbeat), timeout)
            .await?
        {
            ControllerResponse::Heartbeat(answer) => Ok(answer),
            ControllerResponse::Submitted {
                result: Err(rejection),
                ..
            } => Err(ControllerError::Rejected(rejection)),
            other => Err(unexpected_answer(&other)),
        }
    }

    /// Waits until the image here has applied the entry at `log_index`.
    async fn wait_applied(&self, log_index: u64, deadline: Instant) -> Result<(), ControllerError> {
        let mut images = self.image_rx.clone();
        let timeout = deadline.saturating_duration_since(Instant::now());
        let wait = async move {
            images
                .wait_for(|image| image.version > log_index)
                .await
                .map(|_| ())
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ControllerError::Raft("the state machine stopped".into())),
            Err(_) => Err(ControllerError::Timeout(timeout)),
        }
    }

    /// Refuses when this node's controller file system is (nearly) full;
    /// see [`FREE_BYTES_MIN`].
    fn check_free_space(&self) -> Result<(), ControllerError> {
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
        Ok(())
    }

    /// Sends a request to the active controller — this node itself, or the
    /// leader it knows of over the controller port — and retries through
    /// elections and lost connections until `timeout`.
    async fn call(
        &self,
        request: ControllerRequest,
        timeout: Duration,
    ) -> Result<ControllerResponse, ControllerError> {
        let deadline = Instant::now() + timeout;
        let mut last_problem = String::from("no active controller known");
        // A leader named by a voter's answer, for a node that does not know
        // one itself (an observer before it has the log).
        let mut hint: Option<RaftNodeId> = None;
        let voters: Vec<RaftNodeId> = self
            .shared
            .options
            .quorum
            .iter()
            .flat_map(|q| q.voters.keys())
            .map(|id| *id as RaftNodeId)
            .collect();
        let mut next_voter = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.shared.shutdown.is_cancelled() {
                tracing::debug!(problem = %last_problem, "gave up on the active controller");
                return Err(ControllerError::Timeout(timeout));
            }
            let known = self.raft.metrics().borrow().current_leader;
            let target = known.or(hint.take()).or_else(|| {
                // Nobody known: ask the voters in turn; one that is not the
                // leader names it.
                let voter = voters.get(next_voter % voters.len().max(1)).copied();
                next_voter += 1;
                voter
            });
            tracing::debug!(?known, ?target, "calling the active controller");
            let answer = match target {
                Some(leader) if leader == self.raft_id() && known == Some(leader) => {
                    let work = self.handle_as_active(request.clone());
                    match tokio::time::timeout(left, work).await {
                        Ok(answer) => answer,
                        Err(_) => return Err(ControllerError::Timeout(timeout)),
                    }
                }
                Some(leader) if leader != self.raft_id() => {
                    match self.forward_while_leading(leader, &request, left).await {
                        Ok(answer) => answer,
                        Err(problem) => {
                            tracing::debug!(%problem, "the active controller did not answer");
                            last_problem = problem;
                            ControllerResponse::NotController { leader: None }
                        }
                    }
                }
                _ => ControllerResponse::NotController { leader: None },
            };
            match answer {
                ControllerResponse::NotController { leader } => {
                    hint = leader.filter(|l| *l != self.raft_id());
                    // An election is under way or the leader just moved:
                    // look again shortly.
                    let pause = Duration::from_millis(100).min(left);
                    tokio::time::sleep(pause).await;
                }
                ControllerResponse::Failed(why) => return Err(ControllerError::Remote(why)),
                answer => return Ok(answer),
            }
        }
    }

    /// [`Controller::forward`], given up when this node learns of another
    /// leader meanwhile: a leader that stopped answering (paused, cut off)
    /// is replaced by an election, and the request goes to the new one. A
    /// deposed leader cannot commit what it was sent, so the request is
    /// not applied twice.
    async fn forward_while_leading(
        &self,
        leader: RaftNodeId,
        request: &ControllerRequest,
        timeout: Duration,
    ) -> Result<ControllerResponse, String> {
        let mut metrics = self.raft.metrics();
        let replaced = async {
            loop {
                let now = metrics.borrow_and_update().current_leader;
                if now.is_some_and(|l| l != leader) {
                    return;
                }
                if metrics.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            answer = self.forward(leader, request, timeout) => answer,
            () = replaced => Err(format!("node {leader} is no longer the leader")),
        }
    }

    /// Sends `request` to node `leader` over the controller port.
    async fn forward(
        &self,
        leader: RaftNodeId,
        request: &ControllerRequest,
        timeout: Duration,
    ) -> Result<ControllerResponse, String> {
        let addr = {
            let metrics = self.raft.metrics().borrow().clone();
            let node = metrics
                .membership_config
                .membership()
                .get_node(&leader)
                .cloned();
            // The membership names every node; before this node has it
            // (an observer joining), the configured voters are where a
            // leader can be.
            node.map(|n| n.addr)
                .or_else(|| {
                    let quorum = self.shared.options.quorum.as_ref()?;
                    let id = NodeId::try_from(leader).ok()?;
                    quorum.voters.get(&id).cloned()
                })
                .ok_or_else(|| format!("no address for node {leader}"))?
        };
        let taken = self
            .shared
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&leader);
        let mut peer = match taken {
            Some(peer) if peer.addr() == addr => peer,
            _ => TcpPeer::new(leader, addr),
        };
        let result = peer
            .call(&Request::Controller(request.clone()), timeout)
            .await;
        match result {
            Ok(Response::Controller(answer)) => {
                self.shared
                    .peers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(leader, peer);
                Ok(answer)
            }
            Ok(other) => Err(format!("answer of the wrong kind: {other:?}")),
            Err(error) => Err(format!("node {leader}: {error}")),
        }
    }

    /// What the active controller does with a request. Answers
    /// `NotController` if this node turns out not to be it.
    pub(crate) async fn handle_as_active(&self, request: ControllerRequest) -> ControllerResponse {
        match request {
            ControllerRequest::Submit(command) => {
                if let Err(error) = self.check_free_space() {
                    return ControllerResponse::Failed(error.to_string());
                }
                // The proposer checked the size; a forwarded command is
                // checked again here, where it would enter the log.
                let bytes = serde_json::to_vec(&command).map_or(usize::MAX, |b| b.len());
                if bytes > rpc::COMMAND_BYTES_MAX {
                    return ControllerResponse::Failed(format!(
                        "a metadata change of {bytes} bytes does not fit the controller's log"
                    ));
                }
                self.propose(command).await
            }
            ControllerRequest::Register(registration) => self.handle_register(registration).await,
            ControllerRequest::Heartbeat(heartbeat) => self.handle_heartbeat(heartbeat).await,
            ControllerRequest::DescribeQuorum => ControllerResponse::Quorum(self.quorum_state()),
            ControllerRequest::AddObserver {
                node_id,
                addr,
                cluster_id,
                directory_id,
            } => {
                let Ok(raft_id) = RaftNodeId::try_from(node_id) else {
                    return ControllerResponse::Failed(format!("invalid node id {node_id}"));
                };
                let image = self.image();
                if let (Some(theirs), Some(ours)) = (&cluster_id, image.cluster_id()) {
                    if theirs != ours {
                        return ControllerResponse::InconsistentClusterId(format!(
                            "the data dir of node {node_id} belongs to cluster {theirs}, but the controller quorum is cluster {ours}"
                        ));
                    }
                }
                let membership = self.raft.metrics().borrow().membership_config.clone();
                if membership.membership().voter_ids().any(|v| v == raft_id) {
                    return ControllerResponse::Failed(format!(
                        "node {node_id} is a voter of the quorum; it cannot also join as an observer"
                    ));
                }
                match membership.membership().get_node(&raft_id) {
                    Some(node) if node.addr == addr => return ControllerResponse::ObserverAdded,
                    // The id is an observer at another address: a second
                    // process with the same id must not take the first's
                    // place while the first is alive.
                    Some(node)
                        if self.is_alive(node_id)
                            && image
                                .broker(node_id)
                                .is_none_or(|b| b.directory_id != directory_id) =>
                    {
                        return ControllerResponse::DuplicateBrokerRegistration(format!(
                            "node {node_id} follows the metadata from {} and is alive; stop it first or pick another node id",
                            node.addr
                        ))
                    }
                    _ => {}
                }
                match self
                    .raft
                    .add_learner(raft_id, BasicNode::new(&addr), false)
                    .await
                {
                    Ok(_) => ControllerResponse::ObserverAdded,
                    // Another membership change (another observer joining)
                    // is being committed: ask again shortly.
                    Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                        ChangeMembershipError::InProgress(_),
                    ))) => ControllerResponse::NotController {
                        leader: Some(self.raft_id()),
                    },
                    Err(error) => not_controller_or_failed(error),
                }
            }
        }
    }

    /// Proposes `command` as the active controller.
    async fn propose(&self, command: MetadataCommand) -> ControllerResponse {
        match self.raft.client_write(command).await {
            Ok(response) => ControllerResponse::Submitted {
                result: response.data,
                log_index: response.log_id.index,
            },
            Err(error) => not_controller_or_failed(error),
        }
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

    /// Waits until openraft's core has stopped on its own, on a fatal
    /// error (a storage failure, or one of its invariants; openraft 0.9.25
    /// also stops when it tries to send a snapshot to a follower whose
    /// replication stream has just ended on seeing a higher vote), and
    /// returns why. This node then neither votes nor learns metadata: its
    /// image is frozen and, as a broker, it would go on serving a view of
    /// the cluster that is no longer true. Kafka halts the process on such
    /// a fault; the caller should too, and restart from the data dir.
    /// Never returns once [`Controller::shutdown`] has begun.
    pub async fn failed(&self) -> String {
        let mut metrics = self.raft.metrics();
        let why = loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                break fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                break "the controller's raft core stopped".to_string();
            }
        };
        if self.shared.shutdown.is_cancelled() {
            std::future::pending::<()>().await;
        }
        why
    }

    /// Stops serving the controller port and openraft's tasks. Everything
    /// acknowledged is already durable.
    pub async fn shutdown(&self) -> Result<(), ControllerError> {
        self.shared.shutdown.cancel();
        self.raft.shutdown().await.map_err(ControllerError::raft)?;
        tracing::info!(node_id = self.node_id, "controller stopped");
        Ok(())
    }
}

/// How long a leader may go without a majority of the voters
/// acknowledging it before it stops acting as the active controller:
/// Kafka's check-quorum (a KRaft leader resigns after 1.5 ×
/// `controller.quorum.fetch.timeout.ms`, 3 s, without fetches from a
/// majority). openraft 0.9 has no such step-down: a leader cut off from the
/// quorum keeps its role until it hears of a higher term, and would go on
/// fencing brokers it cannot hear (docs/chaos.md, finding 6) — decisions
/// it could never commit.
const QUORUM_CONTACT_MAX: Duration = Duration::from_secs(3);

/// Whether these metrics are a leader's that a majority of the voters has
/// acknowledged within [`QUORUM_CONTACT_MAX`] (a single voter is its own
/// majority).
fn leads_with_quorum(metrics: &openraft::RaftMetrics<RaftNodeId, BasicNode>) -> bool {
    if metrics.state != ServerState::Leader {
        return false;
    }
    let voters = metrics.membership_config.membership().voter_ids().count();
    voters <= 1
        || metrics
            .millis_since_quorum_ack
            .is_some_and(|ms| u128::from(ms) <= QUORUM_CONTACT_MAX.as_millis())
}

/// openraft's refusal of a write or membership change: not the leader
/// (tell the caller where to go), or something worse.
fn not_controller_or_failed(
    error: RaftError<RaftNodeId, ClientWriteError<RaftNodeId, BasicNode>>,
) -> ControllerResponse {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            ControllerResponse::NotController {
                leader: forward.leader_id,
            }
        }
        other => ControllerResponse::Failed(other.to_string()),
    }
}

fn unexpected_answer(answer: &ControllerResponse) -> ControllerError {
    ControllerError::Raft(format!("unexpected answer from the controller: {answer:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader_of(voters: &[RaftNodeId], millis_since_quorum_ack: Option<u64>) -> bool {
        let mut metrics = openraft::RaftMetrics::new_initial(1);
        metrics.state = ServerState::Leader;
        let nodes: BTreeMap<RaftNodeId, BasicNode> = voters
            .iter()
            .map(|id| (*id, BasicNode::new(format!("127.0.0.1:{id}"))))
            .collect();
        metrics.membership_config = Arc::new(openraft::StoredMembership::new(None, nodes.into()));
        metrics.millis_since_quorum_ack = millis_since_quorum_ack;
        leads_with_quorum(&metrics)
    }

    #[test]
    fn a_leader_out_of_touch_with_the_quorum_is_not_active() {
        assert!(leader_of(&[1, 2, 3], Some(150)));
        assert!(!leader_of(&[1, 2, 3], Some(3_500)));
        assert!(!leader_of(&[1, 2, 3], None));
        // A single voter is its own majority.
        assert!(leader_of(&[1], None));
        let mut follower = openraft::RaftMetrics::<RaftNodeId, BasicNode>::new_initial(1);
        follower.millis_since_quorum_ack = Some(0);
        assert!(!leads_with_quorum(&follower));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_names_a_core_that_stopped_by_itself_but_not_a_shutdown() {
        let dir = tempfile::tempdir().expect("a temporary dir");
        let controller = Controller::open(dir.path(), 1).await.expect("open");
        let quiet = tokio::time::timeout(Duration::from_millis(200), controller.failed()).await;
        assert!(quiet.is_err(), "a running controller has not failed");
        // Stopped behind the controller's back, as a fatal error stops it.
        controller.raft.shutdown().await.expect("stop the core");
        let why = tokio::time::timeout(Duration::from_secs(5), controller.failed())
            .await
            .expect("failed() returns once the core has stopped");
        assert!(!why.is_empty());

        let dir = tempfile::tempdir().expect("a temporary dir");
        let controller = Controller::open(dir.path(), 1).await.expect("open");
        controller.shutdown().await.expect("shutdown");
        let after = tokio::time::timeout(Duration::from_millis(200), controller.failed()).await;
        assert!(after.is_err(), "a shutdown is not a failure");
    }
}
