//! A small blocking Kafka client for the admin requests librdkafka has no
//! API for: IncrementalAlterConfigs, OffsetFetch of every topic of a group,
//! OffsetDelete, Metadata's cluster id and controller, the ApiVersions
//! table itself, and the transaction APIs (ListTransactions,
//! DescribeTransactions, DescribeProducers, WriteTxnMarkers); and for
//! ListOffsets, where librdkafka's client-side lookups take time quadratic
//! in the partitions asked for (170 s for 100,000), while one request per
//! leader takes well under a second.
//!
//! One request at a time over a `TcpStream`, encoded and decoded with the
//! `kafka-protocol` crate. Every connection first asks the broker which
//! versions it speaks (ApiVersions v0, which every broker since Kafka 0.10
//! answers), and each request goes at the highest version both sides know;
//! callers name the range of versions whose fields they fill, because the
//! shape of some requests changes between versions. Every read, write and
//! connect is bounded by the caller's timeout, so a broker that is down or
//! stuck fails the command instead of hanging it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, BrokerId, FindCoordinatorRequest, ListOffsetsRequest,
    MetadataRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

/// The largest response this client accepts: far above any admin answer,
/// and a guard against a size prefix that is not one.
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How long to wait before asking again when a coordinator is still being
/// chosen or loaded.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// The client id brokers see in their logs.
const CLIENT_ID: &str = "rill-cli";

/// One connection to one broker.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    /// The address as the user or the broker named it, for messages.
    addr: String,
    correlation_id: i32,
    /// The broker's versions per API key, from its ApiVersions answer.
    versions: BTreeMap<i16, (i16, i16)>,
}

impl Connection {
    /// Connects to the first address of a comma-separated bootstrap list
    /// that answers within `timeout`.
    pub fn bootstrap(bootstrap: &str, timeout: Duration) -> anyhow::Result<Connection> {
        let mut last_error = None;
        for addr in bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            match Connection::connect(addr, timeout) {
                Ok(connection) => return Ok(connection),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("no bootstrap address given")))
    }

    /// Connects to `addr` (`host:port`) and learns the broker's versions.
    pub fn connect(addr: &str, timeout: Duration) -> anyhow::Result<Connection> {
        let deadline = Instant::now() + timeout;
        let targets: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {addr}"))?
            .collect();
        let mut last_error = None;
        let mut stream = None;
        for target in targets {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match TcpStream::connect_timeout(&target, left) {
                Ok(connected) => {
                    stream = Some(connected);
                    break;
                }
                Err(error) => last_error = Some(error),
            }
        }
        let stream = match (stream, last_error) {
            (Some(stream), _) => stream,
            (None, Some(error)) => bail!("cannot connect to {addr}: {error}"),
            (None, None) => bail!("cannot connect to {addr}: no address to try"),
        };
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .and_then(|()| stream.set_nodelay(true))
            .with_context(|| format!("cannot set up the connection to {addr}"))?;
        let mut connection = Connection {
            stream,
            addr: addr.to_string(),
            correlation_id: 0,
            versions: BTreeMap::new(),
        };
        let answer = connection.exchange(ApiVersionsRequest::default(), 0)?;
        if let Some(error) = ResponseError::try_from_code(answer.error_code) {
            bail!("{addr} refused ApiVersions: {error}");
        }
        connection.versions = answer
            .api_keys
            .iter()
            .map(|api| (api.api_key, (api.min_version, api.max_version)))
            .collect();
        Ok(connection)
    }

    /// The broker's version range of every API it advertises, by API key.
    pub fn versions(&self) -> &BTreeMap<i16, (i16, i16)> {
        &self.versions
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// This connection if it is to `addr` (the broker asked is usually the
    /// one already connected to), else a new one to `addr`, kept in `other`.
    pub fn or_connect<'a>(
        &'a mut self,
        addr: &str,
        timeout: Duration,
        other: &'a mut Option<Connection>,
    ) -> anyhow::Result<&'a mut Connection> {
        if addr == self.addr {
            return Ok(self);
        }
        Ok(other.insert(Connection::connect(addr, timeout)?))
    }

    /// Sends `body` at the highest version in `handled` (the versions whose
    /// fields the caller fills) that the broker speaks, and returns the
    /// version used with the answer.
    pub fn send<R: Request>(
        &mut self,
        body: R,
        handled: RangeInclusive<i16>,
    ) -> anyhow::Result<(i16, R::Response)> {
        let api = &api_name(R::KEY);
        let Some(&(broker_min, broker_max)) = self.versions.get(&R::KEY) else {
            bail!("the broker at {} does not support {api}", self.addr);
        };
        let version = (*handled.end()).min(broker_max).min(R::VERSIONS.max);
        let lowest = (*handled.start()).max(broker_min).max(R::VERSIONS.min);
        if version < lowest {
            bail!(
                "the broker at {} speaks {api} v{broker_min}..=v{broker_max}, and this client v{}..=v{}",
                self.addr,
                handled.start(),
                handled.end()
            );
        }
        let answer = self.exchange(body, version)?;
        Ok((version, answer))
    }

    /// One request and its answer at a chosen version.
    fn exchange<R: Request>(&mut self, body: R, version: i16) -> anyhow::Result<R::Response> {
        let api = &api_name(R::KEY);
        let key = ApiKey::try_from(R::KEY).map_err(|()| anyhow!("unknown API key {}", R::KEY))?;
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        let mut payload = BytesMut::new();
        header
            .encode(&mut payload, key.request_header_version(version))
            .and_then(|()| body.encode(&mut payload, version))
            .with_context(|| format!("cannot encode {api} v{version}"))?;
        let size = u32::try_from(payload.len()).context("request too large")?;
        let mut frame = BytesMut::with_capacity(4 + payload.len());
        frame.put_u32(size);
        frame.put_slice(&payload);
        self.stream
            .write_all(&frame)
            .map_err(|error| self.io_error(api, error))?;

        let mut size = [0; 4];
        self.stream
            .read_exact(&mut size)
            .map_err(|error| self.io_error(api, error))?;
        let size = u32::from_be_bytes(size) as usize;
        if size > RESPONSE_BYTES_MAX {
            bail!("{} sent a {size}-byte answer to {api}", self.addr);
        }
        let mut answer = vec![0; size];
        self.stream
            .read_exact(&mut answer)
            .map_err(|error| self.io_error(api, error))?;
        let mut answer = Bytes::from(answer);
        let header = ResponseHeader::decode(&mut answer, key.response_header_version(version))
            .with_context(|| format!("cannot decode the header of {api} from {}", self.addr))?;
        if header.correlation_id != self.correlation_id {
            bail!(
                "{} answered {api} request {} with correlation id {}",
                self.addr,
                self.correlation_id,
                header.correlation_id
            );
        }
        let decoded = R::Response::decode(&mut answer, version)
            .with_context(|| format!("cannot decode {api} v{version} from {}", self.addr))?;
        if answer.has_remaining() {
            tracing::debug!(api, remaining = answer.remaining(), "bytes after an answer");
        }
        Ok(decoded)
    }

    fn io_error(&self, api: &str, error: std::io::Error) -> anyhow::Error {
        use std::io::ErrorKind;
        match error.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                anyhow!("{} did not answer {api} in time", self.addr)
            }
            ErrorKind::UnexpectedEof => anyhow!("{} closed the connection during {api}", self.addr),
            _ => anyhow!("{api} to {} failed: {error}", self.addr),
        }
    }
}

/// What a coordinator is looked up for: FindCoordinator's key types.
#[derive(Debug, Clone, Copy)]
pub enum CoordinatorKey<'a> {
    /// A consumer group (key type 0).
    Group(&'a str),
    /// A transactional id (key type 1).
    Transaction(&'a str),
}

impl CoordinatorKey<'_> {
    fn key(&self) -> &str {
        match self {
            CoordinatorKey::Group(key) | CoordinatorKey::Transaction(key) => key,
        }
    }
}

impl std::fmt::Display for CoordinatorKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CoordinatorKey::Group(group) => write!(f, "group '{group}'"),
            CoordinatorKey::Transaction(id) => write!(f, "transactional id '{id}'"),
        }
    }
}

/// Finds the coordinator of `group` through `bootstrap` and connects to it.
/// Retries while the coordinator is being chosen or loaded (the offsets
/// topic may be created by this very request), up to `timeout`.
pub fn group_coordinator(
    bootstrap: &mut Connection,
    group: &str,
    timeout: Duration,
) -> anyhow::Result<Connection> {
    coordinator(bootstrap, CoordinatorKey::Group(group), timeout).map(|(_, connection)| connection)
}

/// Finds the coordinator of `key` through `bootstrap` and connects to it:
/// its node id and the connection. Retries while the coordinator is being
/// chosen or loaded (its internal topic may be created by this very
/// request), up to `timeout`.
pub fn coordinator(
    bootstrap: &mut Connection,
    key: CoordinatorKey<'_>,
    timeout: Duration,
) -> anyhow::Result<(i32, Connection)> {
    let deadline = Instant::now() + timeout;
    loop {
        let request =
            FindCoordinatorRequest::default().with_key(StrBytes::from_string(key.key().into()));
        // v4 and later batch keys in another field; the key type is v1's.
        let (_, answer) = match key {
            CoordinatorKey::Group(_) => bootstrap.send(request, 0..=3)?,
            CoordinatorKey::Transaction(_) => bootstrap.send(request.with_key_type(1), 1..=3)?,
        };
        match ResponseError::try_from_code(answer.error_code) {
            None => {
                let addr = format!("{}:{}", answer.host, answer.port);
                // The coordinator is usually the broker already connected to.
                let connection = Connection::connect(&addr, timeout)
                    .with_context(|| format!("cannot reach the coordinator of {key}"))?;
                return Ok((answer.node_id.0, connection));
            }
            Some(error) if is_retriable(error) && Instant::now() < deadline => {
                std::thread::sleep(RETRY_BACKOFF);
            }
            Some(error) => {
                let message = answer.error_message.map(|m| m.to_string());
                bail!(
                    "cannot find the coordinator of {key}: {}",
                    with_message(error, message.as_deref())
                );
            }
        }
    }
}

/// A broker as Metadata names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: i32,
    /// `host:port`.
    pub addr: String,
}

/// What Metadata says of one topic: the leader of each partition (-1 for
/// none), and the cluster's brokers.
#[derive(Debug)]
pub struct TopicLeaders {
    pub leaders: BTreeMap<i32, i32>,
    pub brokers: Vec<Node>,
}

impl TopicLeaders {
    /// The leader of `partition`, failing clearly if the partition does
    /// not exist or has no leader now.
    pub fn leader(&self, topic: &str, partition: i32) -> anyhow::Result<Node> {
        let Some(&leader) = self.leaders.get(&partition) else {
            bail!("topic '{topic}' has no partition {partition}");
        };
        if leader < 0 {
            bail!("partition {partition} of topic '{topic}' has no leader now");
        }
        self.broker(leader)
            .cloned()
            .ok_or_else(|| anyhow!("the leader of partition {partition} of topic '{topic}', node {leader}, is not among the brokers"))
    }

    pub fn broker(&self, id: i32) -> Option<&Node> {
        self.brokers.iter().find(|node| node.id == id)
    }
}

/// Metadata of `topic` (never creating it) through `bootstrap`.
pub fn topic_leaders(bootstrap: &mut Connection, topic: &str) -> anyhow::Result<TopicLeaders> {
    let name = TopicName(StrBytes::from_string(topic.to_string()));
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(name.clone()))
        ]))
        .with_allow_auto_topic_creation(false);
    let (_, metadata) = bootstrap.send(request, 1..=12)?;
    let Some(found) = metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref() == Some(&name))
    else {
        bail!("topic '{topic}' does not exist");
    };
    match ResponseError::try_from_code(found.error_code) {
        None => {}
        Some(ResponseError::UnknownTopicOrPartition) => bail!("topic '{topic}' does not exist"),
        Some(error) => bail!("cannot look up topic '{topic}': {error}"),
    }
    Ok(TopicLeaders {
        leaders: found
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.leader_id.0))
            .collect(),
        brokers: nodes(&metadata.brokers),
    })
}

/// Every broker of the cluster (Metadata of no topic through `bootstrap`).
pub fn brokers(bootstrap: &mut Connection) -> anyhow::Result<Vec<Node>> {
    let request = MetadataRequest::default()
        .with_topics(Some(Vec::new()))
        .with_allow_auto_topic_creation(false);
    let (_, metadata) = bootstrap.send(request, 1..=12)?;
    Ok(nodes(&metadata.brokers))
}

fn nodes(
    brokers: &[kafka_protocol::messages::metadata_response::MetadataResponseBroker],
) -> Vec<Node> {
    let mut nodes: Vec<Node> = brokers
        .iter()
        .map(|b| Node {
            id: b.node_id.0,
            addr: format!("{}:{}", b.host, b.port),
        })
        .collect();
    nodes.sort_by_key(|node| node.id);
    nodes
}

/// ListOffsets for `partitions` of `topic` at `timestamp` (-2 for the log
/// start, -1 for the log end, else a time in ms): the offset of each
/// partition whose leader answered, -1 where a time is past every record.
/// One Metadata request through `bootstrap` finds the leaders, then one
/// ListOffsets per leader asks for all of its partitions at once. A
/// partition without a leader, or whose leader failed it, is missing.
pub fn list_offsets(
    bootstrap: &mut Connection,
    timeout: Duration,
    topic: &str,
    partitions: &[i32],
    timestamp: i64,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let name = TopicName(StrBytes::from_string(topic.to_string()));
    let found = topic_leaders(bootstrap, topic)?;
    let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for partition in partitions {
        if let Some(&leader) = found.leaders.get(partition).filter(|&&leader| leader >= 0) {
            by_leader.entry(leader).or_default().push(*partition);
        }
    }
    let mut offsets = BTreeMap::new();
    for (leader, asked) in by_leader {
        let Some(broker) = found.broker(leader) else {
            continue;
        };
        let mut other = None;
        let connection = bootstrap.or_connect(&broker.addr, timeout, &mut other)?;
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(name.clone())
                .with_partitions(
                    asked
                        .iter()
                        .map(|&partition| {
                            ListOffsetsPartition::default()
                                .with_partition_index(partition)
                                .with_current_leader_epoch(-1)
                                .with_timestamp(timestamp)
                        })
                        .collect(),
                )]);
        // v1 is the first with one offset per partition; the fields this
        // fills are the same up to v7.
        let (_, answer) = connection.send(request, 1..=7)?;
        for answered in answer.topics.iter().filter(|t| t.name == name) {
            for p in &answered.partitions {
                if p.error_code == 0 {
                    offsets.insert(p.partition_index, p.offset);
                }
            }
        }
    }
    Ok(offsets)
}

/// Errors that go away by themselves: a coordinator being elected or
/// loading its state.
pub fn is_retriable(error: ResponseError) -> bool {
    matches!(
        error,
        ResponseError::CoordinatorNotAvailable
            | ResponseError::CoordinatorLoadInProgress
            | ResponseError::NotCoordinator
            | ResponseError::LeaderNotAvailable
    )
}

/// A broker's error with its message, when it sent one that adds anything.
pub fn with_message(error: ResponseError, message: Option<&str>) -> String {
    match message {
        Some(message) if !message.is_empty() && message != error.to_string() => {
            format!("{error} ({message})")
        }
        _ => error.to_string(),
    }
}

/// Kafka's name of an error (`INVALID_PRODUCER_EPOCH`), as its `Errors`
/// enum and its tools spell it.
pub fn error_name(error: ResponseError) -> String {
    if let ResponseError::Unknown(code) = error {
        return format!("UNKNOWN_CODE_{code}");
    }
    let camel = format!("{error:?}");
    let mut name = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// The name of an API key as Kafka's protocol guide spells it (the
/// `ApiKey` enum's variants are named after it).
pub fn api_name(key: i16) -> String {
    ApiKey::try_from(key).map_or_else(|()| format!("API {key}"), |key| format!("{key:?}"))
}
