//! The `rill` binary.
//!
//! `rill serve` starts a node. Settings come from, in increasing order of
//! precedence: built-in defaults, a TOML file (`--config`), `RILL_*`
//! environment variables, and command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use rill_broker::BrokerConfig;
use serde::Deserialize;

mod admin;
mod bench;
mod cmd;

#[derive(Debug, Parser)]
#[command(name = "rill", version, about = "A Kafka-compatible message broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: with no quorum given, a single-node cluster that is both
    /// controller and broker; with --controller-quorum, one node of a cluster.
    Serve(Box<ServeArgs>),
    /// Measure a Kafka-compatible broker's throughput and latency.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    #[command(flatten)]
    Client(cmd::ClientCommand),
    /// Print a shell completion script: `rill completions bash > /etc/bash_completion.d/rill`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Every `serve` setting. Each flag can also be set as `RILL_<NAME>` in the
/// environment and as `<name> = value` in the `--config` file.
#[derive(Debug, Args)]
struct ServeArgs {
    /// A TOML file of settings, named as the flags (`data-dir = "/var/lib/rill"`).
    #[arg(long, env = "RILL_CONFIG")]
    config: Option<PathBuf>,
    /// Where partition logs and the controller's log live [default: ./rill-data].
    #[arg(long, env = "RILL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The Kafka protocol listener [default: 127.0.0.1:9092].
    #[arg(long, env = "RILL_KAFKA_ADDR")]
    kafka_addr: Option<SocketAddr>,
    /// The host:port clients are told to connect to [default: the Kafka address].
    #[arg(long, env = "RILL_ADVERTISED_KAFKA_ADDR")]
    advertised_kafka_addr: Option<String>,
    /// The controller quorum's listener [default: 127.0.0.1:9093].
    #[arg(long, env = "RILL_CONTROLLER_ADDR")]
    controller_addr: Option<SocketAddr>,
    /// The HTTP listener for /health and /metrics [default: 127.0.0.1:9644].
    #[arg(long, env = "RILL_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// This node's id [default: 1].
    #[arg(long, env = "RILL_NODE_ID")]
    node_id: Option<i32>,
    /// The controller quorum's voters, `ID@HOST:PORT,...` (Kafka's
    /// controller.quorum.voters) [default: none: a single-node cluster].
    #[arg(long, env = "RILL_CONTROLLER_QUORUM")]
    controller_quorum: Option<String>,
    /// What this node does: `broker,controller`, `broker` or `controller` [default: broker,controller].
    #[arg(long, env = "RILL_PROCESS_ROLES")]
    process_roles: Option<String>,
    /// The host:port peers reach this node's controller port at [default: its entry in the quorum, or the controller address].
    #[arg(long, env = "RILL_ADVERTISED_CONTROLLER_ADDR")]
    advertised_controller_addr: Option<String>,
    /// This broker's rack (broker.rack), for rack-aware placement and clients.
    #[arg(long, env = "RILL_RACK")]
    rack: Option<String>,
    /// How often a broker heartbeats to the active controller, in milliseconds [default: 2000].
    #[arg(long, env = "RILL_BROKER_HEARTBEAT_INTERVAL_MS")]
    broker_heartbeat_interval_ms: Option<u64>,
    /// How long the active controller waits for a broker's heartbeat before it fences the broker, in milliseconds [default: 9000].
    #[arg(long, env = "RILL_BROKER_SESSION_TIMEOUT_MS")]
    broker_session_timeout_ms: Option<u64>,
    /// How long a follower may go without catching up with its leader before it leaves the ISR, in milliseconds [default: 30000].
    #[arg(long, env = "RILL_REPLICA_LAG_TIME_MAX_MS")]
    replica_lag_time_max_ms: Option<u64>,
    /// Move partitions back to their preferred leaders when a broker leads too few of its own [default: true].
    #[arg(long, env = "RILL_AUTO_LEADER_REBALANCE_ENABLE")]
    auto_leader_rebalance_enable: Option<bool>,
    /// How often the active controller looks for leader imbalance, in milliseconds [default: 300000].
    #[arg(long, env = "RILL_LEADER_IMBALANCE_CHECK_INTERVAL_MS")]
    leader_imbalance_check_interval_ms: Option<u64>,
    /// Create unknown topics when a client asks for their metadata [default: true].
    #[arg(long, env = "RILL_AUTO_CREATE_TOPICS_ENABLE")]
    auto_create_topics_enable: Option<bool>,
    /// Partitions of auto-created topics [default: 1].
    #[arg(long, env = "RILL_NUM_PARTITIONS")]
    num_partitions: Option<i32>,
    /// The largest request frame, in bytes [default: 104857600].
    #[arg(long, env = "RILL_SOCKET_REQUEST_MAX_BYTES")]
    socket_request_max_bytes: Option<usize>,
    /// The most client connections at once [default: 10000].
    #[arg(long, env = "RILL_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Threads that append to partitions and do their other file work; each partition uses one (Kafka's num.io.threads) [default: 8].
    #[arg(long, env = "RILL_IO_THREADS")]
    io_threads: Option<usize>,
    /// Threads that fsync partitions; each partition uses one [default: 8].
    #[arg(long, env = "RILL_FLUSH_THREADS")]
    flush_threads: Option<usize>,
    /// Run every client and coordinator append on its partition's I/O thread, as Kafka does, not only while the disk pushes back [default: false].
    #[arg(long, env = "RILL_APPENDS_ON_IO_THREADS")]
    appends_on_io_threads: Option<bool>,
    /// The most bytes of requests being read or handled at once, across all connections [default: 536870912].
    #[arg(long, env = "RILL_QUEUED_MAX_REQUEST_BYTES")]
    queued_max_request_bytes: Option<usize>,
    /// Close a connection whose started request frame does not arrive whole within this many milliseconds [default: 60000].
    #[arg(long, env = "RILL_REQUEST_READ_TIMEOUT_MS")]
    request_read_timeout_ms: Option<u64>,
    /// How often retention runs, in milliseconds [default: 300000].
    #[arg(long, env = "RILL_LOG_RETENTION_CHECK_INTERVAL_MS")]
    log_retention_check_interval_ms: Option<u64>,
    /// How long the log cleaner sleeps when no compacted log needs cleaning, in milliseconds [default: 15000].
    #[arg(long, env = "RILL_LOG_CLEANER_BACKOFF_MS")]
    log_cleaner_backoff_ms: Option<u64>,
    /// The most memory the log cleaner's key map may use, in bytes [default: 134217728].
    #[arg(long, env = "RILL_LOG_CLEANER_DEDUPE_BUFFER_SIZE")]
    log_cleaner_dedupe_buffer_size: Option<u64>,
    /// Close a connection that sends nothing for this long, in milliseconds [default: 600000].
    #[arg(long, env = "RILL_CONNECTIONS_MAX_IDLE_MS")]
    connections_max_idle_ms: Option<u64>,
    /// How long the first rebalance of an empty group waits for more members, in milliseconds [default: 3000].
    #[arg(long, env = "RILL_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    group_initial_rebalance_delay_ms: Option<i32>,
    /// The shortest session timeout a group member may ask for, in milliseconds [default: 6000].
    #[arg(long, env = "RILL_GROUP_MIN_SESSION_TIMEOUT_MS")]
    group_min_session_timeout_ms: Option<i32>,
    /// The longest session timeout a group member may ask for, in milliseconds [default: 1800000].
    #[arg(long, env = "RILL_GROUP_MAX_SESSION_TIMEOUT_MS")]
    group_max_session_timeout_ms: Option<i32>,
    /// The most members in one consumer group [default: 1000].
    #[arg(long, env = "RILL_GROUP_MAX_SIZE")]
    group_max_size: Option<usize>,
    /// The most consumer groups this node coordinates; a new group past it is refused with COORDINATOR_NOT_AVAILABLE [default: 100000].
    #[arg(long, env = "RILL_GROUP_MAX_COUNT")]
    group_max_count: Option<usize>,
    /// Partitions of __consumer_offsets when it is created [default: 50].
    #[arg(long, env = "RILL_OFFSETS_TOPIC_NUM_PARTITIONS")]
    offsets_topic_num_partitions: Option<i32>,
    /// How long an empty group's committed offsets are kept, in minutes [default: 10080].
    #[arg(long, env = "RILL_OFFSETS_RETENTION_MINUTES")]
    offsets_retention_minutes: Option<u64>,
    /// How often expired offsets are removed, in milliseconds [default: 600000].
    #[arg(long, env = "RILL_OFFSETS_RETENTION_CHECK_INTERVAL_MS")]
    offsets_retention_check_interval_ms: Option<u64>,
    /// The longest transaction timeout a producer may ask for, in milliseconds [default: 900000].
    #[arg(long, env = "RILL_TRANSACTION_MAX_TIMEOUT_MS")]
    transaction_max_timeout_ms: Option<i32>,
    /// How long a transactional id unused is kept, in milliseconds [default: 604800000].
    #[arg(long, env = "RILL_TRANSACTIONAL_ID_EXPIRATION_MS")]
    transactional_id_expiration_ms: Option<i64>,
    /// The most transactional ids one __transaction_state partition holds; new ones past it are refused with COORDINATOR_NOT_AVAILABLE [default: 100000].
    #[arg(long, env = "RILL_TRANSACTIONAL_ID_MAX_COUNT")]
    transactional_id_max_count: Option<usize>,
    /// How often transactions past their timeout are looked for and aborted, in milliseconds [default: 10000].
    #[arg(
        long,
        env = "RILL_TRANSACTION_ABORT_TIMED_OUT_TRANSACTION_CLEANUP_INTERVAL_MS"
    )]
    transaction_abort_timed_out_transaction_cleanup_interval_ms: Option<u64>,
    /// Partitions of __transaction_state when it is created [default: 50].
    #[arg(long, env = "RILL_TRANSACTION_STATE_LOG_NUM_PARTITIONS")]
    transaction_state_log_num_partitions: Option<i32>,
    /// Replicas of each __transaction_state partition, capped at the brokers there are [default: 3].
    #[arg(long, env = "RILL_TRANSACTION_STATE_LOG_REPLICATION_FACTOR")]
    transaction_state_log_replication_factor: Option<i16>,
    /// min.insync.replicas of __transaction_state, capped at its replication factor [default: 2].
    #[arg(long, env = "RILL_TRANSACTION_STATE_LOG_MIN_ISR")]
    transaction_state_log_min_isr: Option<i32>,
}

/// The `--config` file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileSettings {
    data_dir: Option<PathBuf>,
    kafka_addr: Option<SocketAddr>,
    advertised_kafka_addr: Option<String>,
    controller_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    node_id: Option<i32>,
    controller_quorum: Option<String>,
    process_roles: Option<String>,
    advertised_controller_addr: Option<String>,
    rack: Option<String>,
    broker_heartbeat_interval_ms: Option<u64>,
    broker_session_timeout_ms: Option<u64>,
    replica_lag_time_max_ms: Option<u64>,
    auto_leader_rebalance_enable: Option<bool>,
    leader_imbalance_check_interval_ms: Option<u64>,
    auto_create_topics_enable: Option<bool>,
    num_partitions: Option<i32>,
    socket_request_max_bytes: Option<usize>,
    max_connections: Option<usize>,
    io_threads: Option<usize>,
    flush_threads: Option<usize>,
    appends_on_io_threads: Option<bool>,
    queued_max_request_bytes: Option<usize>,
    request_read_timeout_ms: Option<u64>,
    log_retention_check_interval_ms: Option<u64>,
    log_cleaner_backoff_ms: Option<u64>,
    log_cleaner_dedupe_buffer_size: Option<u64>,
    connections_max_idle_ms: Option<u64>,
    group_initial_rebalance_delay_ms: Option<i32>,
    group_min_session_timeout_ms: Option<i32>,
    group_max_session_timeout_ms: Option<i32>,
    group_max_size: Option<usize>,
    group_max_count: Option<usize>,
    offsets_topic_num_partitions: Option<i32>,
    offsets_retention_minutes: Option<u64>,
    offsets_retention_check_interval_ms: Option<u64>,
    transaction_max_timeout_ms: Option<i32>,
    transactional_id_expiration_ms: Option<i64>,
    transactional_id_max_count: Option<usize>,
    transaction_abort_timed_out_transaction_cleanup_interval_ms: Option<u64>,
    transaction_state_log_num_partitions: Option<i32>,
    transaction_state_log_replication_factor: Option<i16>,
    transaction_state_log_min_isr: Option<i32>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(error),
    };
    init_logging();
    match cli.command {
        Command::Bench(command) => match bench::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("rill bench: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Client(command) => match cmd::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("rill: {}", one_line(&error));
                ExitCode::FAILURE
            }
        },
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "rill", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Serve(args) => match serve(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("rill: {}", one_line(&error));
                if error.is::<Fatal>() {
                    ExitCode::FAILURE
                } else {
                    ExitCode::from(2)
                }
            }
        },
    }
}

/// Help and version go to stdout as clap writes them; a bad flag or value
/// is one line on stderr and exit code 2.
fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let rendered = error.render().to_string();
    let mut lines = rendered.lines().filter(|line| !line.trim().is_empty());
    let mut first = lines
        .next()
        .unwrap_or("bad command line")
        .trim_start_matches("error: ")
        .to_string();
    // "the following required arguments were not provided:" names them on
    // the indented lines after it.
    if first.ends_with(':') {
        let named: Vec<&str> = lines
            .take_while(|line| line.starts_with(char::is_whitespace))
            .map(str::trim)
            .collect();
        first = format!("{first} {}", named.join(", "));
    }
    eprintln!("rill: {}", first.trim_end_matches(':'));
    ExitCode::from(2)
}

/// An error and its causes on one line, each cause once: errors that
/// already quote their source in their message are not repeated.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if !line.contains(&message) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&message);
        }
    }
    line
}

fn init_logging() {
    use std::io::IsTerminal;
    // openraft narrates every election at info; a single node's are not news.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn read_settings(path: &Path) -> anyhow::Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("bad config file {}", path.display()))
}

fn parse_host_port(value: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = value
        .rsplit_once(':')
        .with_context(|| format!("advertised address '{value}' is not host:port"))?;
    let port = port
        .parse()
        .with_context(|| format!("advertised address '{value}' has a bad port"))?;
    anyhow::ensure!(!host.is_empty(), "advertised address '{value}' has no host");
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

fn broker_config(args: ServeArgs) -> anyhow::Result<BrokerConfig> {
    let file = match &args.config {
        Some(path) => read_settings(path)?,
        None => FileSettings::default(),
    };
    let mut config = BrokerConfig::default();
    macro_rules! setting {
        ($field:ident => $target:expr) => {
            if let Some(value) = args.$field.or(file.$field) {
                $target = value;
            }
        };
    }
    setting!(data_dir => config.data_dir);
    setting!(kafka_addr => config.kafka_addr);
    setting!(controller_addr => config.controller_addr);
    setting!(http_addr => config.http_addr);
    setting!(node_id => config.node_id);
    setting!(auto_create_topics_enable => config.auto_create_topics_enable);
    setting!(num_partitions => config.num_partitions);
    setting!(socket_request_max_bytes => config.request_bytes_max);
    setting!(max_connections => config.connections_max);
    setting!(io_threads => config.disk_threads.io);
    setting!(flush_threads => config.disk_threads.flush);
    setting!(appends_on_io_threads => config.disk_threads.appends_on_io_threads);
    setting!(queued_max_request_bytes => config.queued_request_bytes_max);
    setting!(group_initial_rebalance_delay_ms => config.groups.initial_rebalance_delay_ms);
    setting!(group_min_session_timeout_ms => config.groups.min_session_timeout_ms);
    setting!(group_max_session_timeout_ms => config.groups.max_session_timeout_ms);
    setting!(group_max_size => config.groups.max_size);
    setting!(group_max_count => config.groups.groups_max);
    setting!(offsets_topic_num_partitions => config.groups.offsets_topic_partitions);
    setting!(transaction_max_timeout_ms => config.txns.limits.transaction_max_timeout_ms);
    setting!(transactional_id_expiration_ms => config.txns.transactional_id_expiration_ms);
    setting!(transactional_id_max_count => config.txns.limits.transactional_ids_max);
    setting!(transaction_state_log_num_partitions => config.txns.state_partitions);
    setting!(transaction_state_log_replication_factor => config.txns.state_replication_factor);
    setting!(transaction_state_log_min_isr => config.txns.state_min_isr);
    if let Some(ms) = args
        .transaction_abort_timed_out_transaction_cleanup_interval_ms
        .or(file.transaction_abort_timed_out_transaction_cleanup_interval_ms)
    {
        anyhow::ensure!(
            ms > 0,
            "transaction-abort-timed-out-transaction-cleanup-interval-ms must be positive"
        );
        config.txns.abort_timed_out_interval = std::time::Duration::from_millis(ms);
    }
    if let Some(minutes) = args
        .offsets_retention_minutes
        .or(file.offsets_retention_minutes)
    {
        anyhow::ensure!(minutes > 0, "offsets-retention-minutes must be positive");
        config.groups.offsets_retention_ms = i64::try_from(minutes.saturating_mul(60_000))
            .context("offsets-retention-minutes is too large")?;
    }
    if let Some(ms) = args
        .offsets_retention_check_interval_ms
        .or(file.offsets_retention_check_interval_ms)
    {
        anyhow::ensure!(
            ms > 0,
            "offsets-retention-check-interval-ms must be positive"
        );
        config.groups.offsets_retention_check_interval = std::time::Duration::from_millis(ms);
    }
    if let Some(advertised) = args.advertised_kafka_addr.or(file.advertised_kafka_addr) {
        config.advertised_kafka_addr = Some(parse_host_port(&advertised)?);
    }
    if let Some(quorum) = args.controller_quorum.or(file.controller_quorum) {
        config.controller_quorum = rill_broker::config::QuorumConfig::parse_voters(&quorum)
            .map_err(|e| anyhow::anyhow!("controller-quorum '{quorum}': {e}"))?;
    }
    if let Some(roles) = args.process_roles.or(file.process_roles) {
        config.roles = rill_broker::config::ProcessRoles::parse(&roles)
            .map_err(|e| anyhow::anyhow!("process-roles '{roles}': {e}"))?;
    }
    if let Some(addr) = args
        .advertised_controller_addr
        .or(file.advertised_controller_addr)
    {
        parse_host_port(&addr)?;
        config.advertised_controller_addr = Some(addr);
    }
    config.rack = args.rack.or(file.rack);
    if let Some(ms) = args
        .broker_heartbeat_interval_ms
        .or(file.broker_heartbeat_interval_ms)
    {
        anyhow::ensure!(ms > 0, "broker-heartbeat-interval-ms must be positive");
        config.broker_heartbeat_interval = std::time::Duration::from_millis(ms);
    }
    if let Some(ms) = args
        .leader_imbalance_check_interval_ms
        .or(file.leader_imbalance_check_interval_ms)
    {
        anyhow::ensure!(
            ms > 0,
            "leader-imbalance-check-interval-ms must be positive"
        );
        config.leader_imbalance_check_interval = Some(std::time::Duration::from_millis(ms));
    }
    if !args
        .auto_leader_rebalance_enable
        .or(file.auto_leader_rebalance_enable)
        .unwrap_or(true)
    {
        config.leader_imbalance_check_interval = None;
    }
    if let Some(ms) = args
        .replica_lag_time_max_ms
        .or(file.replica_lag_time_max_ms)
    {
        anyhow::ensure!(ms > 0, "replica-lag-time-max-ms must be positive");
        config.replica_lag_time_max = std::time::Duration::from_millis(ms);
    }
    if let Some(ms) = args
        .broker_session_timeout_ms
        .or(file.broker_session_timeout_ms)
    {
        anyhow::ensure!(ms > 0, "broker-session-timeout-ms must be positive");
        config.broker_session_timeout = std::time::Duration::from_millis(ms);
    }
    anyhow::ensure!(
        config.broker_session_timeout > config.broker_heartbeat_interval,
        "broker-session-timeout-ms must be larger than broker-heartbeat-interval-ms"
    );
    if config.controller_quorum.is_empty() {
        anyhow::ensure!(
            config.roles == rill_broker::config::ProcessRoles::Combined,
            "process-roles other than broker,controller need a controller-quorum"
        );
    } else if config.roles.is_controller() {
        anyhow::ensure!(
            config.controller_quorum.contains_key(&config.node_id),
            "node {} has the controller role but is not among the controller-quorum voters",
            config.node_id
        );
    } else {
        anyhow::ensure!(
            !config.controller_quorum.contains_key(&config.node_id),
            "node {} is a voter of the controller-quorum; a broker-only node may not be",
            config.node_id
        );
    }
    if let Some(ms) = args
        .log_retention_check_interval_ms
        .or(file.log_retention_check_interval_ms)
    {
        anyhow::ensure!(ms > 0, "log-retention-check-interval-ms must be positive");
        config.log_cleanup_interval = std::time::Duration::from_millis(ms);
    }
    if let Some(ms) = args.log_cleaner_backoff_ms.or(file.log_cleaner_backoff_ms) {
        anyhow::ensure!(ms > 0, "log-cleaner-backoff-ms must be positive");
        config.log_cleaner_backoff = std::time::Duration::from_millis(ms);
    }
    if let Some(bytes) = args
        .log_cleaner_dedupe_buffer_size
        .or(file.log_cleaner_dedupe_buffer_size)
    {
        anyhow::ensure!(bytes > 0, "log-cleaner-dedupe-buffer-size must be positive");
        config.log_cleaner_dedupe_buffer_bytes = bytes;
    }
    if let Some(ms) = args
        .connections_max_idle_ms
        .or(file.connections_max_idle_ms)
    {
        anyhow::ensure!(ms > 0, "connections-max-idle-ms must be positive");
        config.connections_max_idle = std::time::Duration::from_millis(ms);
    }
    if let Some(ms) = args
        .request_read_timeout_ms
        .or(file.request_read_timeout_ms)
    {
        anyhow::ensure!(ms > 0, "request-read-timeout-ms must be positive");
        config.request_read_timeout = std::time::Duration::from_millis(ms);
    }
    anyhow::ensure!(
        config.node_id >= 0,
        "node-id must be at least 0, not {}",
        config.node_id
    );
    let groups = &config.groups;
    anyhow::ensure!(
        groups.initial_rebalance_delay_ms >= 0,
        "group-initial-rebalance-delay-ms must not be negative"
    );
    anyhow::ensure!(
        0 < groups.min_session_timeout_ms
            && groups.min_session_timeout_ms <= groups.max_session_timeout_ms,
        "group-min-session-timeout-ms must be positive and at most group-max-session-timeout-ms"
    );
    anyhow::ensure!(groups.max_size >= 1, "group-max-size must be at least 1");
    anyhow::ensure!(groups.groups_max >= 1, "group-max-count must be at least 1");
    anyhow::ensure!(
        groups.offsets_topic_partitions >= 1,
        "offsets-topic-num-partitions must be at least 1"
    );
    let txns = &config.txns;
    anyhow::ensure!(
        txns.limits.transaction_max_timeout_ms >= 1,
        "transaction-max-timeout-ms must be positive"
    );
    anyhow::ensure!(
        txns.transactional_id_expiration_ms >= 1,
        "transactional-id-expiration-ms must be positive"
    );
    anyhow::ensure!(
        txns.limits.transactional_ids_max >= 1,
        "transactional-id-max-count must be at least 1"
    );
    anyhow::ensure!(
        txns.state_partitions >= 1,
        "transaction-state-log-num-partitions must be at least 1"
    );
    anyhow::ensure!(
        txns.state_replication_factor >= 1,
        "transaction-state-log-replication-factor must be at least 1"
    );
    anyhow::ensure!(
        txns.state_min_isr >= 1,
        "transaction-state-log-min-isr must be at least 1"
    );
    anyhow::ensure!(
        config.num_partitions >= 1,
        "num-partitions must be at least 1, not {}",
        config.num_partitions
    );
    anyhow::ensure!(
        config.request_bytes_max >= 1024,
        "socket-request-max-bytes must be at least 1024"
    );
    anyhow::ensure!(
        config.connections_max >= 1,
        "max-connections must be at least 1"
    );
    for (name, threads) in [
        ("io-threads", config.disk_threads.io),
        ("flush-threads", config.disk_threads.flush),
    ] {
        anyhow::ensure!(
            (1..=256).contains(&threads),
            "{name} must be between 1 and 256, not {threads}"
        );
    }
    // The largest frame must fit in the pool, or its connection would wait
    // for room that never comes.
    anyhow::ensure!(
        config.queued_request_bytes_max >= config.request_bytes_max,
        "queued-max-request-bytes ({}) must be at least socket-request-max-bytes ({})",
        config.queued_request_bytes_max,
        config.request_bytes_max
    );
    Ok(config)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = broker_config(args)?;
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rill")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let running = rill_broker::start(config).await?;
        if running.broker().config.roles.is_broker() {
            println!(
                "rill ready: kafka={} controller={} http={} data-dir={}",
                running.kafka_addr(),
                running.controller_addr(),
                running.http_addr(),
                running.broker().config.data_dir.display()
            );
        } else {
            println!(
                "rill ready: controller={} http={} data-dir={}",
                running.controller_addr(),
                running.http_addr(),
                running.broker().config.data_dir.display()
            );
        }
        tokio::select! {
            signal = wait_for_signal() => {
                signal?;
                running.shutdown().await?;
                Ok(())
            }
            why = running.failed() => {
                // As after a crash: what was acknowledged is on disk, and
                // a restart recovers the rest from the data dir.
                tracing::error!(error = %why, "the controller stopped on a fatal error; exiting");
                Err(Fatal(why).into())
            }
        }
    })
}

/// The node stopped on an error it cannot recover from while running (its
/// controller's raft core died); a supervisor should restart it. Exit code
/// 1, unlike a refused start (2).
#[derive(Debug)]
struct Fatal(String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the controller stopped on a fatal error ({}); restart the node on its data dir",
            self.0
        )
    }
}

impl std::error::Error for Fatal {}

/// Raises this process's soft limit on open files to its hard limit: each
/// connection is a descriptor, and the usual soft limit of 1024 would refuse
/// connections (accept fails with EMFILE) long before `max-connections`.
/// Logged, and a failure is only a warning: the broker still works within
/// the lower limit.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        tracing::info!(open_files_max = ?limit.current, "open files limit (RLIMIT_NOFILE)");
        return;
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(
            from = ?limit.current,
            to = ?limit.maximum,
            "raised the open files limit (RLIMIT_NOFILE) to its hard limit"
        ),
        Err(error) => tracing::warn!(
            %error,
            open_files_max = ?limit.current,
            "cannot raise the open files limit (RLIMIT_NOFILE)"
        ),
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = interrupt.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_args(args: &[&str]) -> ServeArgs {
        let mut argv = vec!["rill", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).expect("parse").command {
            Command::Serve(args) => *args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = broker_config(serve_args(&[])).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("rill-data"));
        assert_eq!(config.kafka_addr.to_string(), "127.0.0.1:9092");
        assert_eq!(config.controller_addr.to_string(), "127.0.0.1:9093");
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:9644");
        assert_eq!(config.node_id, 1);
        assert!(config.auto_create_topics_enable);
        assert_eq!(config.num_partitions, 1);
        assert_eq!(config.queued_request_bytes_max, 512 * 1024 * 1024);
        assert_eq!(
            config.request_read_timeout,
            std::time::Duration::from_secs(60)
        );
    }

    #[test]
    fn flags_win_over_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rill.toml");
        std::fs::write(
            &file,
            "data-dir = \"/from/file\"\nnum-partitions = 6\nkafka-addr = \"127.0.0.1:1111\"\nadvertised-kafka-addr = \"broker.example:9000\"\n",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let config =
            broker_config(serve_args(&["--config", file, "--num-partitions", "3"])).unwrap();
        assert_eq!(config.num_partitions, 3, "the flag wins");
        assert_eq!(
            config.data_dir,
            PathBuf::from("/from/file"),
            "the file fills the rest"
        );
        assert_eq!(config.kafka_addr.to_string(), "127.0.0.1:1111");
        assert_eq!(config.advertised(), ("broker.example".to_string(), 9000));
    }

    #[test]
    fn bad_settings_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rill.toml");
        std::fs::write(&file, "no-such-setting = 1\n").unwrap();
        let error = broker_config(serve_args(&["--config", file.to_str().unwrap()])).unwrap_err();
        assert!(
            format!("{error:#}").contains("no-such-setting"),
            "{error:#}"
        );
        let error = broker_config(serve_args(&["--num-partitions", "0"])).unwrap_err();
        assert!(error.to_string().contains("num-partitions"), "{error}");
        let error = broker_config(serve_args(&["--advertised-kafka-addr", "no-port"])).unwrap_err();
        assert!(error.to_string().contains("no-port"), "{error}");
        assert!(Cli::try_parse_from(["rill", "serve", "--kafka-addr", "x"]).is_err());
        let error = broker_config(serve_args(&[
            "--socket-request-max-bytes",
            "2048",
            "--queued-max-request-bytes",
            "1024",
        ]))
        .unwrap_err();
        assert!(
            error.to_string().contains("queued-max-request-bytes"),
            "{error}"
        );
    }
}
