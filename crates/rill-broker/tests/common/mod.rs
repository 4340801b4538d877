//! A broker started in-process on free ports, and a Kafka client for it
//! that encodes requests with kafka-protocol's client-side encoder (a code
//! path independent of the broker's decoding) over a real socket.
// Shared by the integration tests; each test file uses a different subset.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, FetchRequest, ListOffsetsRequest, MetadataRequest,
    MetadataResponse, ProduceRequest, RequestHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use rill_broker::{BrokerConfig, RunningBroker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest response a test expects; a bigger size prefix is a bug.
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// A running broker with its own data dir, removed when dropped.
pub struct TestBroker {
    running: Option<RunningBroker>,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl TestBroker {
    /// Starts a broker with the default settings on free ports.
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker after `adjust` has changed its settings.
    pub async fn start_with(adjust: impl FnOnce(&mut BrokerConfig)) -> TestBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        let running = start_in(dir.path().to_path_buf(), adjust).await;
        TestBroker {
            addr: running.kafka_addr(),
            running: Some(running),
            dir,
        }
    }

    /// The broker's in-process state, for checking what a request changed.
    pub fn broker(&self) -> &std::sync::Arc<rill_broker::Broker> {
        self.running.as_ref().expect("running").broker()
    }

    /// The address of the broker's HTTP port (`/health`, `/metrics`).
    pub fn http_addr(&self) -> SocketAddr {
        self.running.as_ref().expect("running").http_addr()
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// Shuts the broker down cleanly and starts it again on the same data
    /// dir (on new ports).
    pub async fn restart(&mut self) {
        self.restart_with(|_| {}).await;
    }

    /// [`TestBroker::restart`] with settings changed by `adjust`.
    pub async fn restart_with(&mut self, adjust: impl FnOnce(&mut BrokerConfig)) {
        let running = self.running.take().expect("running");
        running.shutdown().await.expect("clean shutdown");
        let running = start_in(self.dir.path().to_path_buf(), adjust).await;
        self.addr = running.kafka_addr();
        self.running = Some(running);
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.expect("clean shutdown");
        }
    }
}

async fn start_in(data_dir: PathBuf, adjust: impl FnOnce(&mut BrokerConfig)) -> RunningBroker {
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = BrokerConfig {
        data_dir,
        kafka_addr: any_port,
        controller_addr: any_port,
        http_addr: any_port,
        ..BrokerConfig::default()
    };
    adjust(&mut config);
    rill_broker::start(config).await.expect("broker starts")
}

/// One connection to the broker, sending one request at a time.
pub struct Client {
    stream: TcpStream,
    correlation_id: i32,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.expect("connect"),
            correlation_id: 0,
        }
    }

    /// Sends `body` as version `version` of its API and returns the
    /// decoded response. Panics if the broker closes the connection.
    pub async fn send<R: Request>(&mut self, version: i16, body: R) -> R::Response {
        self.try_send(version, body)
            .await
            .unwrap_or_else(|error| panic!("{:?} v{version}: {error}", api_key::<R>()))
    }

    /// Sends a request that gets no answer (a Produce with acks=0).
    pub async fn send_no_answer<R: Request>(&mut self, version: i16, body: R) {
        self.write_request(version, body)
            .await
            .unwrap_or_else(|error| panic!("{:?} v{version}: {error}", api_key::<R>()));
    }

    /// Writes one request frame; returns its correlation id.
    async fn write_request<R: Request>(&mut self, version: i16, body: R) -> Result<i32, String> {
        let api_key = api_key::<R>();
        self.correlation_id += 1;
        let correlation_id = self.correlation_id;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("rill-handler-tests")));
        let mut payload = BytesMut::new();
        header
            .encode(&mut payload, api_key.request_header_version(version))
            .map_err(|e| format!("encode header: {e}"))?;
        body.encode(&mut payload, version)
            .map_err(|e| format!("encode body: {e}"))?;
        let mut frame = BytesMut::with_capacity(4 + payload.len());
        frame.put_u32(u32::try_from(payload.len()).expect("small request"));
        frame.put_slice(&payload);
        self.stream
            .write_all(&frame)
            .await
            .map_err(|e| format!("write: {e}"))?;
        Ok(correlation_id)
    }

    /// [`Client::send`], with a closed connection as an error.
    pub async fn try_send<R: Request>(
        &mut self,
        version: i16,
        body: R,
    ) -> Result<R::Response, String> {
        let correlation_id = self.write_request(version, body).await?;
        self.read_response::<R>(version, correlation_id).await
    }

    /// Writes a request without reading its answer, for pipelining;
    /// returns its correlation id for [`Client::read`].
    pub async fn write<R: Request>(&mut self, version: i16, body: R) -> i32 {
        self.write_request(version, body)
            .await
            .unwrap_or_else(|error| panic!("{:?} v{version}: {error}", api_key::<R>()))
    }

    /// Reads the answer to a request sent with [`Client::write`].
    pub async fn read<R: Request>(&mut self, version: i16, correlation_id: i32) -> R::Response {
        self.read_response::<R>(version, correlation_id)
            .await
            .unwrap_or_else(|error| panic!("{:?} v{version}: {error}", api_key::<R>()))
    }

    /// Reads one answer and checks that it is for `correlation_id`.
    async fn read_response<R: Request>(
        &mut self,
        version: i16,
        correlation_id: i32,
    ) -> Result<R::Response, String> {
        let api_key = api_key::<R>();
        let size = self
            .stream
            .read_u32()
            .await
            .map_err(|e| format!("connection closed: {e}"))? as usize;
        if size > RESPONSE_BYTES_MAX {
            return Err(format!("response of {size} bytes"));
        }
        let mut response = vec![0; size];
        self.stream
            .read_exact(&mut response)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let mut response = Bytes::from(response);
        let header_version = api_key.response_header_version(version);
        let header =
            kafka_protocol::messages::ResponseHeader::decode(&mut response, header_version)
                .map_err(|e| format!("decode response header: {e}"))?;
        if header.correlation_id != correlation_id {
            return Err(format!(
                "correlation id {} for request {correlation_id}",
                header.correlation_id
            ));
        }
        let decoded = R::Response::decode(&mut response, version)
            .map_err(|e| format!("decode response: {e}"))?;
        if response.has_remaining() {
            return Err(format!("{} bytes after the response", response.remaining()));
        }
        Ok(decoded)
    }

    /// Creates a topic (CreateTopics v7) and asserts it worked.
    pub async fn create_topic(&mut self, name: &str, partitions: i32, configs: &[(&str, &str)]) {
        let configs = configs
            .iter()
            .map(|(k, v)| {
                CreatableTopicConfig::default()
                    .with_name(StrBytes::from_string(k.to_string()))
                    .with_value(Some(StrBytes::from_string(v.to_string())))
            })
            .collect();
        let response = self
            .send(
                7,
                CreateTopicsRequest::default()
                    .with_timeout_ms(5000)
                    .with_topics(vec![CreatableTopic::default()
                        .with_name(topic_name(name))
                        .with_num_partitions(partitions)
                        .with_replication_factor(1)
                        .with_configs(configs)]),
            )
            .await;
        assert_eq!(
            response.topics[0].error_code, 0,
            "create {name}: {response:?}"
        );
    }

    /// Produces `count` records in one batch (acks=1); returns the error
    /// code and base offset.
    pub async fn produce(&mut self, topic: &str, partition: i32, count: usize) -> (i16, i64) {
        let response = self
            .send(
                9,
                ProduceRequest::default()
                    .with_acks(1)
                    .with_timeout_ms(5000)
                    .with_topic_data(vec![TopicProduceData::default()
                        .with_name(topic_name(topic))
                        .with_partition_data(vec![PartitionProduceData::default()
                            .with_index(partition)
                            .with_records(Some(record_batch(count)))])]),
            )
            .await;
        let partition = &response.responses[0].partition_responses[0];
        (partition.error_code, partition.base_offset)
    }

    /// ListOffsets v7 for one partition with `timestamp` (-1 latest, -2
    /// earliest); returns the error code and offset.
    pub async fn list_offset(&mut self, topic: &str, partition: i32, timestamp: i64) -> (i16, i64) {
        let response = self
            .send(
                7,
                ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(vec![ListOffsetsTopic::default()
                        .with_name(topic_name(topic))
                        .with_partitions(vec![ListOffsetsPartition::default()
                            .with_partition_index(partition)
                            .with_current_leader_epoch(-1)
                            .with_timestamp(timestamp)])]),
            )
            .await;
        let partition = &response.topics[0].partitions[0];
        (partition.error_code, partition.offset)
    }

    /// Fetch v12 from one partition without waiting; returns the error
    /// code and the log start offset the broker reports.
    pub async fn fetch(&mut self, topic: &str, partition: i32, offset: i64) -> (i16, i64) {
        let response = self
            .send(
                12,
                FetchRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_max_wait_ms(0)
                    .with_min_bytes(1)
                    .with_max_bytes(1 << 20)
                    .with_topics(vec![FetchTopic::default()
                        .with_topic(topic_name(topic))
                        .with_partitions(vec![FetchPartition::default()
                            .with_partition(partition)
                            .with_fetch_offset(offset)
                            .with_partition_max_bytes(1 << 20)])]),
            )
            .await;
        let partition = &response.responses[0].partitions[0];
        (partition.error_code, partition.log_start_offset)
    }

    /// Metadata v12 for the given topics (without auto-creation).
    pub async fn metadata(&mut self, topics: &[&str]) -> MetadataResponse {
        let topics = topics
            .iter()
            .map(|name| MetadataRequestTopic::default().with_name(Some(topic_name(name))))
            .collect();
        self.send(
            12,
            MetadataRequest::default()
                .with_topics(Some(topics))
                .with_allow_auto_topic_creation(false),
        )
        .await
    }

    /// Asserts that the broker still answers on this connection.
    pub async fn assert_serving(&mut self) {
        let response = self.metadata(&[]).await;
        assert_eq!(response.brokers.len(), 1);
    }
}

fn api_key<R: Request>() -> ApiKey {
    ApiKey::try_from(R::KEY).expect("a known API")
}

pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// One uncompressed magic-2 batch of `count` records.
pub fn record_batch(count: usize) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 1_700_000_000_000 + i as i64,
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::from(format!("value-{i}"))),
            headers: Default::default(),
        })
        .collect();
    encode_batch(&records)
}

/// Records encoded by kafka-protocol's encoder, uncompressed, magic 2.
pub fn encode_batch(records: &[Record]) -> Bytes {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode records");
    buf.freeze()
}

/// `(name, value)` pairs as a map, for comparing configs.
pub fn config_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
