//! The broker's settings, with Kafka's defaults where Kafka has the setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rill_storage::producer_state::ProducerStateConfig;
use rill_storage::LogConfig;
use rill_types::NodeId;

pub use crate::disk::DiskThreads;

pub use crate::group::GroupConfig;
pub use crate::txn::coordinator::TxnCoordinatorConfig;
pub use rill_controller::raft::QuorumConfig;

/// Kafka's `process.roles`: what a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessRoles {
    /// `broker,controller`: a voter of the quorum that also serves clients.
    Combined,
    /// `broker`: serves clients and follows the metadata; not a voter.
    Broker,
    /// `controller`: a voter that serves no Kafka traffic.
    Controller,
}

impl ProcessRoles {
    /// Parses Kafka's comma-separated form, in any order.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut broker = false;
        let mut controller = false;
        for role in text.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match role {
                "broker" => broker = true,
                "controller" => controller = true,
                other => {
                    return Err(format!(
                        "unknown process role '{other}' (broker, controller or both)"
                    ))
                }
            }
        }
        match (broker, controller) {
            (true, true) => Ok(ProcessRoles::Combined),
            (true, false) => Ok(ProcessRoles::Broker),
            (false, true) => Ok(ProcessRoles::Controller),
            (false, false) => Err("no process role given".to_string()),
        }
    }

    pub fn is_broker(self) -> bool {
        self != ProcessRoles::Controller
    }

    pub fn is_controller(self) -> bool {
        self != ProcessRoles::Broker
    }
}

/// Everything a node needs to start. Every field has a default that works on
/// a laptop ([`BrokerConfig::default`]).
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: NodeId,
    /// Partition logs, the controller's Raft log and `meta.properties`.
    pub data_dir: PathBuf,
    /// The Kafka protocol listener.
    pub kafka_addr: SocketAddr,
    /// The `host:port` clients are told to connect to (Metadata,
    /// DescribeCluster). Defaults to `kafka_addr`.
    pub advertised_kafka_addr: Option<(String, u16)>,
    /// The controller port: the quorum's Raft traffic and the brokers'
    /// registration and heartbeats.
    pub controller_addr: SocketAddr,
    /// The `host:port` peers reach this node's controller port at (the
    /// address under this node's id in `controller_quorum`, if it is a
    /// voter). Defaults to `controller_addr`.
    pub advertised_controller_addr: Option<String>,
    /// `controller.quorum.voters`: node id → controller address. Empty:
    /// a single-node cluster, this node its only voter.
    pub controller_quorum: BTreeMap<NodeId, String>,
    /// `process.roles`.
    pub roles: ProcessRoles,
    /// `broker.rack`.
    pub rack: Option<String>,
    /// `broker.heartbeat.interval.ms`.
    pub broker_heartbeat_interval: Duration,
    /// `broker.session.timeout.ms`: the active controller fences a broker
    /// silent this long.
    pub broker_session_timeout: Duration,
    /// `replica.lag.time.max.ms`: a follower that has not caught up with
    /// its leader's log end for this long leaves the ISR.
    pub replica_lag_time_max: Duration,
    /// Kafka's `auto.leader.rebalance.enable` and
    /// `leader.imbalance.check.interval.seconds`: how often the active
    /// controller moves partitions back to their preferred leaders (`None`:
    /// never).
    pub leader_imbalance_check_interval: Option<Duration>,
    /// How long a SIGTERM waits for the controller to move this broker's
    /// leaderships away (controlled shutdown) before it stops anyway.
    pub controlled_shutdown_timeout: Duration,
    /// `/health` (and, later, `/metrics`).
    pub http_addr: SocketAddr,

    /// `auto.create.topics.enable`: Metadata for an unknown topic creates it.
    pub auto_create_topics_enable: bool,
    /// `num.partitions`: partitions of auto-created topics and of CreateTopics
    /// requests that leave the count to the broker (-1).
    pub num_partitions: i32,
    /// `default.replication.factor`.
    pub default_replication_factor: i16,
    /// Defaults of every topic's log settings (`log.segment.bytes`,
    /// `log.retention.ms`, …); a topic's own configs override them.
    pub log_defaults: LogConfig,
    /// How often retention runs (`log.retention.check.interval.ms`).
    pub log_cleanup_interval: Duration,
    /// How long the log cleaner sleeps when no log needs cleaning
    /// (`log.cleaner.backoff.ms`).
    pub log_cleaner_backoff: Duration,
    /// The most memory one cleaning pass's key map may use
    /// (`log.cleaner.dedupe.buffer.size`).
    pub log_cleaner_dedupe_buffer_bytes: u64,
    /// Idempotent producers' state in each partition:
    /// `producer.id.expiration.ms` (one day) and the most producers one
    /// partition remembers.
    pub producer_state: ProducerStateConfig,
    /// How often idle producers are expired
    /// (`producer.id.expiration.check.interval.ms`).
    pub producer_id_expiration_check_interval: Duration,

    /// The threads that do partitions' disk work (see `crate::disk`): appends
    /// and other file work (`--io-threads`, Kafka's `num.io.threads`), and
    /// fsyncs (`--flush-threads`).
    pub disk_threads: DiskThreads,

    /// `socket.request.max.bytes`: a larger request frame closes the connection.
    pub request_bytes_max: usize,
    /// `max.connections`: further connections are accepted and closed at once.
    pub connections_max: usize,
    /// `queued.max.request.bytes`: the bytes of requests read and not yet
    /// answered, across all connections. A connection counts what it reads
    /// in this pool before it reads more, and the bytes of a request stay
    /// counted until its answer is written; while the pool has no room the
    /// connection stops reading (backpressure, as Kafka mutes channels), it
    /// does not fail. Counting bytes as they arrive, rather than a frame's
    /// announced size, means a client that announces a large frame and
    /// stalls holds only what it sent. At least `request_bytes_max` (the
    /// broker adds one read buffer to it), so that the largest frame always
    /// fits. Kafka's default is unbounded (-1); ours bounds what 10,000
    /// connections sending 100 MiB frames at once could make the broker
    /// hold.
    pub queued_request_bytes_max: usize,
    /// `request.read.timeout.ms`: how long a frame, once its first byte has
    /// arrived, may take to arrive whole, waits for the pool included. A
    /// client that sends half a frame and then a byte every few minutes is
    /// never idle, so `connections.max.idle.ms` does not close it; this
    /// does. Kafka has no such setting (its pool is unbounded by default);
    /// ours is bounded, and frames that their clients never finish would
    /// hold a share of it for ever, and with enough of them, all of it.
    pub request_read_timeout: Duration,
    /// Requests read from one connection but not yet answered. Reading stops
    /// at this bound until the oldest answer is written (Kafka reads one
    /// request at a time per connection; pipelining clients get more).
    pub inflight_requests_per_connection_max: usize,
    /// Fetch requests long-polling at once, across all connections; a fetch
    /// beyond it is answered at once with what there is.
    pub fetch_waiting_max: usize,
    /// The most bytes one fetch response may carry, whatever the client asks
    /// (`fetch.max.bytes`, 55 MiB in Kafka).
    pub fetch_bytes_max: usize,
    /// `connections.max.idle.ms`: a connection that sends nothing for this
    /// long, with no request in flight, is closed.
    pub connections_max_idle: Duration,

    /// The group coordinator's settings (`group.*`, `offsets.*`).
    pub groups: GroupConfig,
    /// The transaction coordinator's settings.
    pub txns: TxnCoordinatorConfig,
}

impl BrokerConfig {
    pub const NODE_ID_DEFAULT: NodeId = 1;
    pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;
    /// 512 MiB: five frames of the largest size at once.
    pub const QUEUED_REQUEST_BYTES_MAX_DEFAULT: usize = 512 * 1024 * 1024;
    pub const REQUEST_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
    pub const INFLIGHT_REQUESTS_PER_CONNECTION_MAX_DEFAULT: usize = 64;
    pub const FETCH_WAITING_MAX_DEFAULT: usize = 10_000;
    pub const FETCH_BYTES_MAX_DEFAULT: usize = 55 * 1024 * 1024;
    /// Kafka's default, 10 minutes.
    pub const CONNECTIONS_MAX_IDLE_DEFAULT: Duration = Duration::from_secs(600);

    /// The controller address peers are told to use.
    pub fn advertised_controller(&self) -> String {
        self.advertised_controller_addr
            .clone()
            .or_else(|| self.controller_quorum.get(&self.node_id).cloned())
            .unwrap_or_else(|| self.controller_addr.to_string())
    }

    /// The host and port clients are told to use.
    pub fn advertised(&self) -> (String, u16) {
        self.advertised_kafka_addr
            .clone()
            .unwrap_or_else(|| (self.kafka_addr.ip().to_string(), self.kafka_addr.port()))
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Self {
            node_id: Self::NODE_ID_DEFAULT,
            data_dir: PathBuf::from("rill-data"),
            kafka_addr: local(9092),
            advertised_kafka_addr: None,
            controller_addr: local(9093),
            advertised_controller_addr: None,
            controller_quorum: BTreeMap::new(),
            roles: ProcessRoles::Combined,
            rack: None,
            broker_heartbeat_interval: Duration::from_secs(2),
            broker_session_timeout: Duration::from_secs(9),
            replica_lag_time_max: Duration::from_secs(30),
            leader_imbalance_check_interval: Some(Duration::from_secs(300)),
            controlled_shutdown_timeout: Duration::from_secs(15),
            http_addr: local(9644),
            auto_create_topics_enable: true,
            num_partitions: 1,
            default_replication_factor: 1,
            log_defaults: LogConfig::default(),
            log_cleanup_interval: Duration::from_secs(300),
            log_cleaner_backoff: Duration::from_secs(15),
            log_cleaner_dedupe_buffer_bytes: rill_storage::DEDUPE_BUFFER_BYTES_DEFAULT,
            producer_state: ProducerStateConfig::default(),
            producer_id_expiration_check_interval: Duration::from_secs(600),
            disk_threads: DiskThreads::default(),
            request_bytes_max: rill_protocol::REQUEST_BYTES_MAX_DEFAULT,
            connections_max: Self::CONNECTIONS_MAX_DEFAULT,
            queued_request_bytes_max: Self::QUEUED_REQUEST_BYTES_MAX_DEFAULT,
            request_read_timeout: Self::REQUEST_READ_TIMEOUT_DEFAULT,
            inflight_requests_per_connection_max:
                Self::INFLIGHT_REQUESTS_PER_CONNECTION_MAX_DEFAULT,
            fetch_waiting_max: Self::FETCH_WAITING_MAX_DEFAULT,
            fetch_bytes_max: Self::FETCH_BYTES_MAX_DEFAULT,
            connections_max_idle: Self::CONNECTIONS_MAX_IDLE_DEFAULT,
            groups: GroupConfig::default(),
            txns: TxnCoordinatorConfig::default(),
        }
    }
}
