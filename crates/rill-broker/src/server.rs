//! Start-up and shutdown of a node: the data dir, the controller, the
//! replicas, and the listeners.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rill_controller::raft::rpc::{BrokerHeartbeat, BrokerRegistrationRequest};
use rill_controller::raft::QuorumConfig;
use rill_controller::{Controller, ControllerError, ControllerOptions, MetadataImage};

use crate::metadata::MetadataClient;
use rill_storage::{LogManager, LogManagerConfig, StorageError};
use rill_types::{Clock, SystemClock, TopicPartition};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::BrokerConfig;
use crate::group::GroupCoordinator;
use crate::metrics::{CloseReason, Metrics};
use crate::producer_ids::ProducerIdManager;
use crate::replica::ReplicaManager;
use crate::txn::coordinator::TransactionCoordinator;
use crate::{connection, http};

/// The name of the controller's directory inside the data dir. It is not a
/// `<topic>-<partition>` name, so the log manager leaves it alone.
const CONTROLLER_DIR: &str = ".controller";
/// Kafka's file naming the cluster and node a data dir belongs to.
const META_PROPERTIES: &str = "meta.properties";
/// How long shutdown waits for in-flight requests before it stops anyway.
const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often recovery points are checkpointed (Kafka's
/// `log.flush.offset.checkpoint.interval.ms`).
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

/// Why a node could not start. Each names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("data dir {}: {source}", path.display())]
    DataDir { path: PathBuf, source: io::Error },
    #[error("data dir {}: {reason}", path.display())]
    DataDirMismatch { path: PathBuf, reason: String },
    /// Another live process is registered with this node id.
    #[error("node id {node_id} is taken: {reason}")]
    DuplicateNodeId { node_id: i32, reason: String },
    /// The quorum did not answer in time (a majority of its voters is down
    /// or unreachable).
    #[error("{0}")]
    Quorum(String),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("cannot start the disk threads: {0}")]
    DiskThreads(io::Error),
    #[error("controller: {0}")]
    Controller(#[from] ControllerError),
    /// A start-up step panicked (a bug): the message says which step.
    #[error("{step} failed unexpectedly: {reason}")]
    Panicked { step: &'static str, reason: String },
}

/// Runs a blocking start-up step off the async threads; a panic in it
/// becomes an error naming the step.
async fn blocking<T: Send + 'static>(
    step: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StartError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| StartError::Panicked {
            step,
            reason: error.to_string(),
        })
}

/// The shared state of a running node, handed to every connection.
#[derive(Debug)]
pub struct Broker {
    pub config: BrokerConfig,
    pub cluster_id: String,
    /// The controller quorum, as this broker sees it (see `metadata`).
    pub controller: Arc<dyn MetadataClient>,
    pub replicas: Arc<ReplicaManager>,
    /// Permits for fetches waiting for data ([`BrokerConfig::fetch_waiting_max`]).
    pub fetch_waiting: Semaphore,
    /// The request-bytes pool, one permit per byte
    /// ([`BrokerConfig::queued_request_bytes_max`]). Never smaller than the
    /// largest frame and one read: a connection alone must always be able
    /// to finish its frame, or it would wait for ever.
    pub request_bytes: Arc<Semaphore>,
    /// Cancelled when the node begins to shut down: waiting requests answer
    /// at once with what they have.
    pub shutdown: CancellationToken,
    /// This broker's registration epoch (0 on a controller-only node).
    pub broker_epoch: i64,
    /// Producer ids for InitProducerId.
    pub(crate) producer_ids: ProducerIdManager,
    /// The group coordinator of the `__consumer_offsets` partitions this
    /// node leads.
    pub groups: Arc<GroupCoordinator>,
    /// The transaction coordinator of the `__transaction_state`
    /// partitions this node leads.
    pub txns: Arc<TransactionCoordinator>,
    /// What `/metrics` serves.
    pub(crate) metrics: Metrics,
}

impl Broker {
    /// The node named as the controller in Metadata and DescribeCluster:
    /// this broker. Clients send admin requests to the node named, and any
    /// broker forwards them to the active controller, so naming the broker
    /// that answered — surely alive, since it answered — spares clients a
    /// wait on a dead controller during an election. Kafka's KRaft brokers
    /// name a random live broker for the same reason (KIP-590); the active
    /// controller itself is in DescribeQuorum.
    pub fn controller_id_for_clients(&self) -> i32 {
        self.config.node_id
    }

    /// Applies the controller's latest image to the replicas now, rather
    /// than when the follower task gets to it, so that a request that
    /// changed the metadata sees its change. Blocking.
    pub fn sync_metadata(&self) {
        let image = self.controller.image();
        self.metrics.observe_image(&image);
        self.replicas.apply_image(&image);
        self.groups.on_image(&image, &self.replicas);
        self.txns.on_image(&image);
    }
}

/// A started node. Dropping it without [`RunningBroker::shutdown`] leaves
/// the data dir to recover as after a crash.
#[derive(Debug)]
pub struct RunningBroker {
    broker: Arc<Broker>,
    /// The node's own controller, which only starting and stopping the
    /// node needs as such; everything else sees `broker.controller`.
    controller: Controller,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    kafka_addr: SocketAddr,
    controller_addr: SocketAddr,
    http_addr: SocketAddr,
}

impl RunningBroker {
    /// The address the Kafka listener is bound to (useful with port 0).
    pub fn kafka_addr(&self) -> SocketAddr {
        self.kafka_addr
    }

    /// The address the controller port is bound to.
    pub fn controller_addr(&self) -> SocketAddr {
        self.controller_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Waits until this node's controller has stopped on a fatal error and
    /// says why (see [`Controller::failed`]). The node must then stop: its
    /// view of the cluster can no longer change.
    pub async fn failed(&self) -> String {
        self.controller.failed().await
    }

    /// Asks the active controller to move this broker's leaderships away
    /// (controlled shutdown), stops accepting connections, lets in-flight
    /// requests finish (up to a bound), flushes every log, writes the
    /// clean-shutdown marker and stops the controller.
    pub async fn shutdown(self) -> Result<(), StartError> {
        info!("shutting down");
        // A single node has no other broker to hand its partitions to.
        if self.broker.config.roles.is_broker() && !self.broker.config.controller_quorum.is_empty()
        {
            controlled_shutdown(&self.broker).await;
        }
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_DRAIN_TIMEOUT, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(timeout = ?SHUTDOWN_DRAIN_TIMEOUT, "connections still busy; stopping anyway");
        }
        let broker = Arc::clone(&self.broker);
        tokio::task::spawn_blocking(move || {
            // Unsynced: the log manager's shutdown syncs the whole file
            // system next, before it marks the shutdown clean.
            broker.replicas.snapshot_producers(false);
            broker.replicas.logs().shutdown()
        })
        .await
        .map_err(|e| StorageError::Io {
            op: "shut down logs",
            path: self.broker.config.data_dir.clone(),
            source: io::Error::other(e.to_string()),
        })??;
        self.controller.shutdown().await?;
        info!("stopped");
        Ok(())
    }
}

/// The address a listener is bound to (the port chosen, for port 0).
fn local_addr(
    listener: &TcpListener,
    what: &'static str,
    addr: SocketAddr,
) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|source| StartError::Bind { what, addr, source })
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// The Kafka port's backlog once it listens (Kafka's `socket.listen.backlog.size`).
const KAFKA_LISTEN_BACKLOG: u32 = 1024;

/// Binds the Kafka port without listening yet: the address is taken (an
/// address in use fails the start at once, and port 0 is given its
/// number), but a client's connection is refused until [`listen_kafka`],
/// as Kafka's acceptor opens its port only when the broker serves. A
/// listening port that answers nothing would be worse: librdkafka takes a
/// connection that was accepted for a live broker, and waits out its
/// ApiVersions timeout (10 s) on it instead of asking another broker who
/// leads or coordinates now (chaos finding 11).
fn bind_kafka(addr: SocketAddr) -> Result<(TcpSocket, SocketAddr), StartError> {
    let what = "Kafka clients";
    let error = |source| StartError::Bind { what, addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(error)?;
    // As `TcpListener::bind`: a restart may rebind at once over the
    // previous process's connections in TIME_WAIT.
    socket.set_reuseaddr(true).map_err(error)?;
    socket.bind(addr).map_err(error)?;
    let local = socket.local_addr().map_err(error)?;
    Ok((socket, local))
}

fn listen_kafka(socket: TcpSocket, addr: SocketAddr) -> Result<TcpListener, StartError> {
    socket
        .listen(KAFKA_LISTEN_BACKLOG)
        .map_err(|source| StartError::Bind {
            what: "Kafka clients",
            addr,
            source,
        })
}

/// What `meta.properties` says of a data dir, as far as it says it yet.
#[derive(Debug, Clone, Default)]
struct DataDirIdentity {
    cluster_id: Option<String>,
    /// Kafka's `directory.id` (KIP-858): tells this data dir from any
    /// other, so that a node restarted on it is not taken for a duplicate.
    directory_id: Option<uuid::Uuid>,
}

/// Reads `meta.properties`, which ties the data dir to one cluster id and
/// node id, as Kafka's does: checks the node id and returns what the file
/// says (nothing for a new data dir).
fn read_data_dir_identity(config: &BrokerConfig) -> Result<DataDirIdentity, StartError> {
    let dir = &config.data_dir;
    let io_error = |source| StartError::DataDir {
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io_error)?;
    let path = dir.join(META_PROPERTIES);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let value = |key: &str| {
                text.lines()
                    .filter_map(|line| line.split_once('='))
                    .find(|(k, _)| k.trim() == key)
                    .map(|(_, v)| v.trim().to_string())
            };
            let mismatch = |reason: String| StartError::DataDirMismatch {
                path: path.clone(),
                reason,
            };
            let node_id = value("node.id").ok_or_else(|| mismatch("no node.id".into()))?;
            if node_id != config.node_id.to_string() {
                return Err(mismatch(format!(
                    "it belongs to node {node_id}, not node {}",
                    config.node_id
                )));
            }
            let cluster_id = value("cluster.id").ok_or_else(|| mismatch("no cluster.id".into()))?;
            // Written by rill since clusters; older data dirs get one now.
            let directory_id = match value("directory.id") {
                Some(id) => Some(
                    uuid::Uuid::parse_str(&id)
                        .map_err(|e| mismatch(format!("bad directory.id {id:?}: {e}")))?,
                ),
                None => None,
            };
            Ok(DataDirIdentity {
                cluster_id: Some(cluster_id),
                directory_id,
            })
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(DataDirIdentity::default()),
        Err(error) => Err(io_error(error)),
    }
}

/// Ties the data dir to the quorum's cluster id and its own directory id:
/// writes `meta.properties` where it lacks either, and refuses a data dir
/// of another cluster.
fn write_data_dir_identity(
    config: &BrokerConfig,
    existing: &DataDirIdentity,
    cluster_id: &str,
    directory_id: uuid::Uuid,
) -> Result<(), StartError> {
    let dir = &config.data_dir;
    let path = dir.join(META_PROPERTIES);
    if let Some(existing_cluster_id) = &existing.cluster_id {
        if existing_cluster_id != cluster_id {
            return Err(StartError::DataDirMismatch {
                path,
                reason: format!(
                    "it belongs to cluster {existing_cluster_id}, but the controller quorum is cluster {cluster_id}"
                ),
            });
        }
        if existing.directory_id == Some(directory_id) {
            return Ok(());
        }
    }
    let text = format!(
        "# rill node identity; do not edit\nversion=1\ncluster.id={cluster_id}\nnode.id={}\ndirectory.id={directory_id}\n",
        config.node_id
    );
    write_synced(dir, &path, text.as_bytes()).map_err(|source| StartError::DataDir {
        path: dir.clone(),
        source,
    })
}

/// A cluster id as Kafka makes them: a random UUID in URL-safe base64
/// without padding (22 characters).
fn new_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bits = uuid::Uuid::new_v4().as_u128();
    (0..22)
        .map(|i| {
            let shift = 128i32 - 6 * (i + 1);
            let sextet = if shift >= 0 {
                (bits >> shift) & 0x3f
            } else {
                (bits << -shift) & 0x3f
            };
            ALPHABET[sextet as usize] as char
        })
        .collect()
}

fn write_synced(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// How long start-up waits for the quorum: a leader, the cluster id, this
/// broker's registration and unfencing. Kafka's brokers wait for ever; a
/// bound turns a cluster that never forms into an error an operator sees.
const QUORUM_WAIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts a node: binds its listeners, opens the data dir, the controller
/// and every log, registers itself, and starts serving. Returns once the
/// node is ready for clients (a broker: registered and unfenced).
pub async fn start(config: BrokerConfig) -> Result<RunningBroker, StartError> {
    // Listeners first: an address in use is the most common start-up
    // failure, and finding it before recovery saves a long wait.
    // A controller-only node serves no Kafka traffic and takes no port
    // for it.
    let (kafka_socket, kafka_addr) = if config.roles.is_broker() {
        let (socket, addr) = bind_kafka(config.kafka_addr)?;
        (Some(socket), addr)
    } else {
        (None, config.kafka_addr)
    };
    let controller_listener = bind("the controller", config.controller_addr).await?;
    let http_listener = bind("HTTP", config.http_addr).await?;
    let http_addr = local_addr(&http_listener, "HTTP", config.http_addr)?;
    let controller_addr = local_addr(
        &controller_listener,
        "the controller",
        config.controller_addr,
    )?;
    let mut config = config;
    if config.advertised_kafka_addr.is_none() {
        config.advertised_kafka_addr = Some((kafka_addr.ip().to_string(), kafka_addr.port()));
    }
    if config.advertised_controller_addr.is_none() && config.controller_quorum.is_empty() {
        config.advertised_controller_addr = Some(controller_addr.to_string());
    }

    let identity = {
        let config = config.clone();
        blocking("reading the data dir", move || {
            read_data_dir_identity(&config)
        })
        .await??
    };
    let directory_id = identity.directory_id.unwrap_or_else(uuid::Uuid::new_v4);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metrics = Metrics::new();
    let logs = {
        let data_dir = config.data_dir.clone();
        let clock = Arc::clone(&clock);
        let manager_config = LogManagerConfig {
            default_log_config: config.log_defaults.clone(),
            flush_observer: Some(metrics.flush_observer()),
            ..LogManagerConfig::default()
        };
        blocking("opening the partition logs", move || {
            LogManager::open(&data_dir, manager_config, clock)
        })
        .await??
    };
    let quorum = (!config.controller_quorum.is_empty()).then(|| QuorumConfig {
        voters: config.controller_quorum.clone(),
        self_addr: config.advertised_controller(),
    });
    let options = ControllerOptions {
        advertised_addr: Some(config.advertised_controller()),
        quorum,
        cluster_id: Some(identity.cluster_id.clone().unwrap_or_else(new_cluster_id)),
        data_dir_cluster_id: identity.cluster_id.clone(),
        directory_id,
        broker_session_timeout: Some(config.broker_session_timeout),
        leader_imbalance_check_interval: config.leader_imbalance_check_interval,
        open_timeout: QUORUM_WAIT_TIMEOUT,
        clock: Arc::clone(&clock),
        ..ControllerOptions::default()
    };
    let controller = Controller::open_with(
        config.data_dir.join(CONTROLLER_DIR),
        config.node_id,
        options,
        Some(controller_listener),
    )
    .await?;
    let started = async {
        // The first active controller sets the cluster id; every node
        // checks its data dir against it.
        let image = wait_for_image(&controller, "the cluster id", |image| {
            image.cluster_id().is_some()
        })
        .await?;
        let cluster_id = image.cluster_id().expect("waited for it").to_string();
        {
            let config = config.clone();
            let cluster_id = cluster_id.clone();
            blocking("writing the data dir's identity", move || {
                write_data_dir_identity(&config, &identity, &cluster_id, directory_id)
            })
            .await??;
        }
        let (host, port) = config.advertised();
        // A single node is its own quorum and its own only broker: its
        // registration from the last run still holds (nobody else could
        // have led its partitions meanwhile), so a restart writes nothing
        // to the controller unless the endpoint changed — which also lets
        // it restart on a full disk. In a cluster every start registers a
        // new incarnation, fenced until it has caught up.
        let kept = image.broker(config.node_id).filter(|b| {
            config.controller_quorum.is_empty()
                && b.host == host
                && b.port == port
                && b.rack == config.rack
                && b.directory_id == directory_id
        });
        let broker_epoch = if let Some(kept) = kept {
            kept.broker_epoch
        } else if config.roles.is_broker() {
            let registration = BrokerRegistrationRequest {
                node_id: config.node_id,
                incarnation_id: uuid::Uuid::new_v4(),
                directory_id,
                host,
                port,
                rack: config.rack.clone(),
            };
            match controller.register_broker(registration).await {
                Ok(epoch) => epoch,
                Err(ControllerError::DuplicateBrokerRegistration(reason)) => {
                    return Err(StartError::DuplicateNodeId {
                        node_id: config.node_id,
                        reason,
                    })
                }
                Err(error) => return Err(error.into()),
            }
        } else {
            0
        };
        Ok((cluster_id, broker_epoch))
    }
    .await;
    let (cluster_id, broker_epoch) = match started {
        Ok(started) => started,
        Err(error) => {
            let _ = controller.shutdown().await;
            return Err(error);
        }
    };

    let replicas = match ReplicaManager::new(
        config.node_id,
        logs,
        config.log_defaults.clone(),
        config.producer_state,
        Arc::clone(&clock),
        config.disk_threads,
    ) {
        Ok(replicas) => Arc::new(replicas),
        Err(source) => {
            let _ = controller.shutdown().await;
            return Err(StartError::DiskThreads(source));
        }
    };
    let shutdown = CancellationToken::new();
    let broker = Arc::new_cyclic(|broker| Broker {
        shutdown: shutdown.clone(),
        replicas,
        fetch_waiting: Semaphore::new(config.fetch_waiting_max),
        request_bytes: Arc::new(Semaphore::new(
            config
                .queued_request_bytes_max
                .max(
                    config.request_bytes_max
                        + rill_protocol::SIZE_PREFIX_LEN
                        + connection::READ_BUFFER_BYTES,
                )
                .min(Semaphore::MAX_PERMITS),
        )),
        broker_epoch,
        producer_ids: ProducerIdManager::new(config.node_id),
        groups: Arc::new(GroupCoordinator::new(
            config.groups.clone(),
            config.node_id,
            Arc::clone(&clock),
        )),
        txns: Arc::new(TransactionCoordinator::new(
            config.txns.clone(),
            config.node_id,
            Arc::clone(&clock),
            broker.clone(),
        )),
        cluster_id,
        controller: Arc::new(controller.clone()),
        config,
        metrics,
    });
    {
        let broker = Arc::clone(&broker);
        blocking("opening the partitions in the metadata", move || {
            broker.sync_metadata()
        })
        .await?;
    }

    let tasks = TaskTracker::new();
    tasks.spawn(follow_metadata(Arc::clone(&broker), shutdown.clone()));
    if broker.config.roles.is_broker() {
        tasks.spawn(heartbeats(Arc::clone(&broker), shutdown.clone()));
    }
    let running = RunningBroker {
        broker: Arc::clone(&broker),
        controller,
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
        kafka_addr,
        controller_addr,
        http_addr,
    };
    if broker.config.roles.is_broker() {
        // Clients are served once this broker is unfenced, as Kafka's
        // brokers enable request processing only then: before, it leads
        // nothing and is in nobody's Metadata, not even its own, which
        // clients take for a broken answer. The Kafka port refuses
        // connections meanwhile (see `bind_kafka`).
        let node_id = broker.config.node_id;
        let unfenced = wait_for_image(&*broker.controller, "this broker to be unfenced", |image| {
            image.broker(node_id).is_some_and(|b| !b.fenced)
        })
        .await;
        if let Err(error) = unfenced {
            let _ = running.shutdown().await;
            return Err(error);
        }
        let synced = Arc::clone(&broker);
        blocking("opening the partitions this broker leads", move || {
            synced.sync_metadata()
        })
        .await?;
    }
    if let Some(kafka_socket) = kafka_socket {
        let kafka_listener = match listen_kafka(kafka_socket, kafka_addr) {
            Ok(listener) => listener,
            Err(error) => {
                let _ = running.shutdown().await;
                return Err(error);
            }
        };
        tasks.spawn(housekeeping(Arc::clone(&broker), shutdown.clone()));
        tasks.spawn(log_cleaner(Arc::clone(&broker), shutdown.clone()));
        tasks.spawn(GroupCoordinator::run(
            Arc::clone(&broker.groups),
            Arc::clone(&broker.replicas),
            shutdown.clone(),
        ));
        tasks.spawn(TransactionCoordinator::run(
            Arc::clone(&broker.txns),
            shutdown.clone(),
        ));
        let replication = crate::replication::ReplicationContext {
            node_id: broker.config.node_id,
            replicas: Arc::clone(&broker.replicas),
            controller: broker.controller.clone(),
            lag_max: broker.config.replica_lag_time_max,
            isr_changed: broker.metrics.isr_change_counter(),
        };
        tasks.spawn(crate::replication::run_fetchers(
            replication.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(crate::replication::run_isr_changes(
            replication,
            shutdown.clone(),
        ));
        tasks.spawn(accept_kafka(
            Arc::clone(&broker),
            kafka_listener,
            shutdown.clone(),
            tasks.clone(),
        ));
    }
    // Last: `/health` answering means the node serves.
    tasks.spawn(http::serve(
        Arc::clone(&broker),
        http_listener,
        shutdown.clone(),
    ));
    info!(
        node_id = broker.config.node_id,
        cluster_id = %broker.cluster_id,
        roles = ?broker.config.roles,
        %kafka_addr,
        %controller_addr,
        %http_addr,
        data_dir = %broker.config.data_dir.display(),
        "ready"
    );
    Ok(running)
}

/// Waits (bounded by [`QUORUM_WAIT_TIMEOUT`]) until the committed image
/// satisfies `done`.
async fn wait_for_image(
    controller: &dyn MetadataClient,
    what: &str,
    done: impl Fn(&MetadataImage) -> bool,
) -> Result<Arc<MetadataImage>, StartError> {
    let mut images = controller.subscribe();
    let wait = async move {
        images
            .wait_for(|image| done(image))
            .await
            .map(|image| Arc::clone(&image))
    };
    match tokio::time::timeout(QUORUM_WAIT_TIMEOUT, wait).await {
        Ok(Ok(image)) => Ok(image),
        Ok(Err(_)) => Err(StartError::Quorum(format!(
            "the controller stopped while waiting for {what}"
        ))),
        Err(_) => Err(StartError::Quorum(format!(
            "waited {QUORUM_WAIT_TIMEOUT:?} for {what}; is a majority of the controller quorum up and reachable?"
        ))),
    }
}

/// Heartbeats to the active controller (KIP-631): every
/// `broker.heartbeat.interval.ms`, and more often while fenced, so that a
/// broker that has caught up is unfenced promptly.
async fn heartbeats(broker: Arc<Broker>, shutdown: CancellationToken) {
    const FENCED_INTERVAL: Duration = Duration::from_millis(200);
    let node_id = broker.config.node_id;
    loop {
        let fenced = broker
            .controller
            .image()
            .broker(node_id)
            .is_none_or(|b| b.fenced);
        let pause = if fenced {
            FENCED_INTERVAL
        } else {
            broker.config.broker_heartbeat_interval
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let heartbeat = BrokerHeartbeat {
            node_id,
            broker_epoch: broker.broker_epoch,
            metadata_version: broker.replicas.applied_version(),
            want_shut_down: false,
        };
        let timeout = broker.config.broker_heartbeat_interval;
        if let Err(error) = broker.controller.heartbeat(heartbeat, timeout).await {
            warn!(%error, "heartbeat to the active controller failed");
        }
    }
}

/// Controlled shutdown: asks the active controller to move this broker's
/// leaderships away, and waits (bounded) until they have, so clients move
/// on after one metadata refresh instead of timing out against a stopped
/// broker.
async fn controlled_shutdown(broker: &Arc<Broker>) {
    let deadline = tokio::time::Instant::now() + broker.config.controlled_shutdown_timeout;
    let heartbeat = BrokerHeartbeat {
        node_id: broker.config.node_id,
        broker_epoch: broker.broker_epoch,
        metadata_version: broker.replicas.applied_version(),
        want_shut_down: true,
    };
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            warn!("controlled shutdown did not complete in time; stopping anyway");
            return;
        }
        match broker.controller.heartbeat(heartbeat, left).await {
            Ok(answer) if answer.shut_down_ready => {
                info!("controlled shutdown complete: this broker leads nothing");
                // Let the image that moved the leaderships reach this
                // node's replicas, so in-flight requests see it.
                let broker = Arc::clone(broker);
                let _ = tokio::task::spawn_blocking(move || broker.sync_metadata()).await;
                return;
            }
            Ok(_) => {}
            Err(error) => warn!(%error, "controlled shutdown request failed; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(200).min(left)).await;
    }
}

/// Applies each image the controller commits to the replicas.
async fn follow_metadata(broker: Arc<Broker>, shutdown: CancellationToken) {
    let mut images = broker.controller.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = images.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let broker = Arc::clone(&broker);
        if let Err(error) = tokio::task::spawn_blocking(move || broker.sync_metadata()).await {
            error!(%error, "applying metadata failed");
        }
    }
}

/// What one round of housekeeping does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chore {
    /// Recovery points, and snapshots of changed producer state.
    Checkpoint,
    /// Retention, then the checkpoints.
    Cleanup,
    /// Forget idle producers.
    ExpireProducers,
}

/// Periodic work: recovery-point checkpoints, producer snapshots,
/// retention, producer expiry. Compaction is the log cleaner's.
async fn housekeeping(broker: Arc<Broker>, shutdown: CancellationToken) {
    let mut checkpoints = tokio::time::interval(CHECKPOINT_INTERVAL);
    let mut cleanups = tokio::time::interval(broker.config.log_cleanup_interval);
    let mut expiries = tokio::time::interval(broker.config.producer_id_expiration_check_interval);
    checkpoints.tick().await;
    cleanups.tick().await;
    expiries.tick().await;
    loop {
        let chore = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = checkpoints.tick() => Chore::Checkpoint,
            _ = cleanups.tick() => Chore::Cleanup,
            _ = expiries.tick() => Chore::ExpireProducers,
        };
        let cleanup = chore == Chore::Cleanup;
        let worker = Arc::clone(&broker);
        let result = tokio::task::spawn_blocking(move || {
            let replicas = &worker.replicas;
            let logs = replicas.logs();
            match chore {
                Chore::ExpireProducers => {
                    replicas.expire_producers();
                    return Ok(());
                }
                Chore::Cleanup => {
                    logs.run_cleanup()?;
                    // Retention moves log starts; high watermarks stay put.
                }
                Chore::Checkpoint => replicas.snapshot_producers(true),
            }
            logs.checkpoint()
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(%error, cleanup, "log housekeeping failed"),
            Err(error) => error!(%error, "log housekeeping panicked"),
        }
    }
}

/// Kafka's log cleaner, with one cleaner thread: cleans the dirtiest
/// compacted log that needs it, then the next, and when none does, sleeps
/// `log.cleaner.backoff.ms`. One thread, not `log.cleaner.threads`: a pass
/// is disk- and CPU-bound, and a second one would compete with request
/// handling on a small machine more than it would help.
async fn log_cleaner(broker: Arc<Broker>, shutdown: CancellationToken) {
    let backoff = broker.config.log_cleaner_backoff;
    let dedupe_buffer_bytes = broker.config.log_cleaner_dedupe_buffer_bytes;
    loop {
        let worker = Arc::clone(&broker);
        let round = tokio::task::spawn_blocking(move || {
            let replicas = &worker.replicas;
            // Nothing at or past a partition's last stable offset is
            // cleaned (no open transaction, nothing above the high
            // watermark), and its producers keep what their state needs.
            let partition = |tp: &TopicPartition| replicas.get(tp.topic.as_str(), tp.partition);
            replicas.logs().clean_dirtiest(
                dedupe_buffer_bytes,
                |tp, log| {
                    partition(tp).map_or_else(|| log.high_watermark(), |p| p.last_stable_offset())
                },
                |tp, log| {
                    partition(tp).map_or_else(
                        || rill_storage::CleanBounds {
                            stable_offset: log.high_watermark(),
                            producers: Default::default(),
                        },
                        |p| p.clean_bounds(),
                    )
                },
            )
        })
        .await;
        let cleaned = match round {
            Ok(round) => {
                broker.metrics.log_cleaner_round(&round);
                // A failed pass was logged by the manager, which leaves
                // that log alone from now on.
                round.cleaned.is_some()
            }
            Err(error) => {
                error!(%error, "the log cleaner panicked");
                false
            }
        };
        // Another log may be waiting: go on at once after a pass, as
        // Kafka's cleaner does; back off only when nothing needed one.
        let pause = if cleaned { Duration::ZERO } else { backoff };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

async fn accept_kafka(
    broker: Arc<Broker>,
    listener: TcpListener,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let connections = Arc::new(Semaphore::new(broker.config.connections_max));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, most likely; back off rather than spin.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            warn!(%peer, limit = broker.config.connections_max, "too many connections; closing the new one");
            broker.metrics.connection_closed(CloseReason::Limit);
            continue;
        };
        tasks.spawn(connection::serve(
            Arc::clone(&broker),
            stream,
            peer,
            shutdown.clone(),
            permit,
        ));
    }
}
