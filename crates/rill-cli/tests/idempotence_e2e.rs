//! Idempotent producers end to end against a `rill serve` process:
//! librdkafka with `enable.idempotence=true`, `acks=all` and five requests
//! in flight, directly and through a proxy that cuts connections after the
//! broker has answered but before the answer arrives (so librdkafka
//! retries batches the broker already has); and hand-built idempotent
//! batches (rill-storage's `BatchBuilder`) sent raw with kafka-protocol's
//! client encoding, retried across a crash (SIGKILL, producer state rebuilt
//! from the log) and a clean restart (producer state from the snapshot
//! written at shutdown).

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::RawClient;
use common::{poll_until, serve_command, Broker, Ports};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{InitProducerIdRequest, ProduceRequest, ProducerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use rill_storage::batch::{self, BatchHeader};
use rill_storage::records::BatchBuilder;

/// How long any one client operation may take before the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// librdkafka
// ---------------------------------------------------------------------------

fn client_config(broker: &impl Bootstrap) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker.bootstrap())
        .set("reconnect.backoff.ms", "20")
        .set("reconnect.backoff.max.ms", "500");
    config
}

/// Where clients find the broker: directly, or through the proxy.
trait Bootstrap {
    fn bootstrap(&self) -> String;
}

impl Bootstrap for Broker {
    fn bootstrap(&self) -> String {
        Broker::bootstrap(self)
    }
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime")
        .block_on(future)
}

fn create_topic(broker: &impl Bootstrap, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        client_config(broker).create().expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().request_timeout(Some(CLIENT_TIMEOUT));
    let results = block_on(admin.create_topics([&topic], &options)).expect("CreateTopics");
    if let Err((topic, code)) = &results[0] {
        panic!("CreateTopics {topic}: {code:?}");
    }
}

/// Every record of `topic`'s partition from its start up to its high
/// watermark now, as (offset, value).
fn read_partition(broker: &impl Bootstrap, topic: &str, partition: i32) -> Vec<(i64, String)> {
    let consumer: BaseConsumer = client_config(broker)
        .set("group.id", "rill-idempotence-e2e")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer");
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, CLIENT_TIMEOUT)
        .expect("watermarks");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Beginning)
        .expect("add partition");
    consumer.assign(&assignment).expect("assign");
    let mut read = Vec::new();
    let mut next = low;
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    while next < high {
        assert!(
            Instant::now() < deadline,
            "read {topic}-{partition} up to {next} of {high}"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("consume");
            assert_eq!(message.offset(), next, "offsets are contiguous");
            next += 1;
            let value = String::from_utf8(message.payload().expect("a value").to_vec())
                .expect("UTF-8 value");
            read.push((message.offset(), value));
        }
    }
    read
}

/// The batch headers in a partition's segment files, read from the data
/// dir (what the broker stored, byte for byte).
fn stored_batches(data_dir: &Path, topic: &str, partition: i32) -> Vec<BatchHeader> {
    let dir = data_dir.join(format!("{topic}-{partition}"));
    let mut logs: Vec<_> = std::fs::read_dir(&dir)
        .expect("partition dir")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    let mut headers = Vec::new();
    for path in logs {
        let bytes = std::fs::read(&path).expect("read a segment");
        for batch in batch::split(&bytes) {
            headers.push(batch::check(batch.expect("whole batch")).expect("valid batch"));
        }
    }
    headers
}

/// Produces `records` values `0..records` round-robin over the partitions
/// of `topic` with an idempotent librdkafka producer (acks=all, five in
/// flight), and checks that every partition holds each of its values once,
/// in the order sent.
fn produce_idempotently_and_check(
    broker: &impl Bootstrap,
    data_dir: &Path,
    topic: &str,
    partitions: i32,
    records: usize,
    during: impl FnOnce(),
) {
    // Small batches and a short linger, so that up to five requests per
    // partition leader are in flight at once.
    let producer: BaseProducer = client_config(broker)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("linger.ms", "2")
        .set("batch.num.messages", "40")
        .set("retry.backoff.ms", "20")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer");
    for i in 0..records {
        let value = i.to_string();
        let partition = (i % partitions as usize) as i32;
        loop {
            let record = BaseRecord::<(), str>::to(topic)
                .partition(partition)
                .payload(value.as_str());
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => {
                    producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => panic!("send {i}: {error}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("flush: every record delivered");
    assert_eq!(producer.in_flight_count(), 0);
    during();

    for partition in 0..partitions {
        // What a consumer reads: every record once, in the order sent.
        let read = read_partition(broker, topic, partition);
        let expected: Vec<String> = (0..records)
            .filter(|i| i % partitions as usize == partition as usize)
            .map(|i| i.to_string())
            .collect();
        let values: Vec<String> = read.into_iter().map(|(_, value)| value).collect();
        assert_eq!(values.len(), expected.len(), "partition {partition}");
        assert_eq!(values, expected, "partition {partition}");

        // And the producer really was idempotent: one producer id, sequences
        // that follow on from 0 without a gap or a repeat.
        let batches = stored_batches(data_dir, topic, partition);
        assert!(
            batches.len() > 1,
            "several batches in partition {partition}"
        );
        let producer_id = batches[0].producer_id;
        assert!(producer_id >= 0, "librdkafka got a producer id");
        let mut next_sequence = 0;
        for header in &batches {
            assert_eq!(header.producer_id, producer_id);
            assert_eq!(header.producer_epoch, 0);
            assert_eq!(header.base_sequence, next_sequence);
            next_sequence += header.record_count;
        }
        assert_eq!(next_sequence as usize, expected.len());
    }
}

#[test]
fn librdkafka_idempotent_producer_with_five_in_flight_keeps_order_without_duplicates() {
    let broker = Broker::start_new();
    create_topic(&broker, "idempotent-rdkafka", 3);
    produce_idempotently_and_check(
        &broker,
        broker.data_dir(),
        "idempotent-rdkafka",
        3,
        6000,
        || {},
    );
}

/// A `rill serve` that advertises a proxy in front of it, so that every
/// client connection goes through the proxy.
struct ProxiedBroker {
    child: Child,
    dir: tempfile::TempDir,
    proxy: Proxy,
    /// Duplicate batches the broker answered with their original offsets.
    duplicates: Arc<AtomicUsize>,
}

impl Bootstrap for ProxiedBroker {
    fn bootstrap(&self) -> String {
        self.proxy.addr.to_string()
    }
}

impl Drop for ProxiedBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ProxiedBroker {
    fn start() -> ProxiedBroker {
        let dir = tempfile::tempdir().expect("data dir");
        let ports = Ports::pick();
        let proxy = Proxy::start(ports.kafka);
        let mut child = serve_command(dir.path(), &ports)
            .arg("--advertised-kafka-addr")
            .arg(proxy.addr.to_string())
            .stdout(Stdio::piped())
            // The broker logs each duplicate it answers at debug level;
            // the test counts them.
            .env("RUST_LOG", "warn,rill_broker::replica=debug")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rill");
        let stderr = child.stderr.take().expect("stderr");
        let duplicates = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&duplicates);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("duplicate batch") {
                    counted.fetch_add(1, Ordering::SeqCst);
                } else if line.contains("WARN") || line.contains("ERROR") {
                    eprintln!("rill: {line}");
                }
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("rill ready") {
                    let _ = ready_tx.send(());
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("rill ready");
        ProxiedBroker {
            child,
            dir,
            proxy,
            duplicates,
        }
    }
}

/// A TCP proxy that, while `cutting`, closes each connection at a point
/// chosen per connection: right after the broker's answer to a request,
/// before the client gets it. The broker has then done the work (appended
/// the batch) and the client has to retry it.
struct Proxy {
    addr: SocketAddr,
    cutting: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
}

/// Connections cut at most; then the proxy only forwards, so that the test
/// ends.
const PROXY_CUTS_MAX: usize = 40;

impl Proxy {
    fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let cutting = Arc::new(AtomicBool::new(true));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (cutting_for_accept, cuts_for_accept) = (Arc::clone(&cutting), Arc::clone(&cuts));
        thread::spawn(move || {
            for (connection, client) in listener.incoming().enumerate() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                // Cut after 2..=17 answers: past the handshake (ApiVersions,
                // Metadata), within the produce requests.
                let cut_after = 2 + (xorshift(connection as u64 + 1) % 16) as usize;
                let cutting = Arc::clone(&cutting_for_accept);
                let cuts = Arc::clone(&cuts_for_accept);
                let (client_read, server_write) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                thread::spawn(move || copy_requests(client_read, server_write));
                thread::spawn(move || {
                    forward_answers(server, client, cut_after, &cutting, &cuts);
                });
            }
        });
        Proxy {
            addr,
            cutting,
            cuts,
        }
    }
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn copy_requests(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

/// Forwards whole response frames; drops the connection instead of
/// forwarding answer number `cut_after`, if still cutting.
fn forward_answers(
    mut server: TcpStream,
    mut client: TcpStream,
    cut_after: usize,
    cutting: &AtomicBool,
    cuts: &AtomicUsize,
) {
    let mut answered = 0;
    loop {
        let mut size = [0; 4];
        if server.read_exact(&mut size).is_err() {
            break;
        }
        let mut body = vec![0; u32::from_be_bytes(size) as usize];
        if server.read_exact(&mut body).is_err() {
            break;
        }
        if answered == cut_after
            && cutting.load(Ordering::SeqCst)
            && cuts.fetch_add(1, Ordering::SeqCst) < PROXY_CUTS_MAX
        {
            break;
        }
        if client.write_all(&size).is_err() || client.write_all(&body).is_err() {
            break;
        }
        answered += 1;
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

#[test]
fn librdkafka_retries_after_lost_answers_are_not_appended_twice() {
    const TOPIC: &str = "idempotent-lost-answers";
    let broker = ProxiedBroker::start();
    // The topic is created with every answer let through.
    broker.proxy.cutting.store(false, Ordering::SeqCst);
    create_topic(&broker, TOPIC, 2);
    broker.proxy.cutting.store(true, Ordering::SeqCst);
    produce_idempotently_and_check(&broker, broker.dir.path(), TOPIC, 2, 4000, || {
        // The check reads through the proxy too; let it.
        broker.proxy.cutting.store(false, Ordering::SeqCst);
    });
    let cuts = broker.proxy.cuts.load(Ordering::SeqCst);
    assert!(cuts >= 5, "only {cuts} answers were lost on the way");
    // The retries reached the broker, which recognised them.
    let duplicates = poll_until(CLIENT_TIMEOUT, || {
        let n = broker.duplicates.load(Ordering::SeqCst);
        (n > 0).then_some(n)
    });
    assert!(duplicates.is_some(), "no retried batch reached the broker");
}

// ---------------------------------------------------------------------------
// Raw requests
// ---------------------------------------------------------------------------

/// The idempotence tests' requests, on the shared raw client.
impl RawClient {
    fn init_producer_id(&mut self) -> (i64, i16) {
        let response = self.send(
            4,
            InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        );
        assert_eq!(response.error_code, 0, "InitProducerId");
        (response.producer_id.0, response.producer_epoch)
    }

    /// Produce v9, acks=all, to partition 0; returns (error code, base offset).
    fn produce(&mut self, topic: &str, records: &[u8]) -> (i16, i64) {
        let response = self.send(
            9,
            ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(10_000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(Bytes::copy_from_slice(records)))])]),
        );
        let partition = &response.responses[0].partition_responses[0];
        (partition.error_code, partition.base_offset)
    }
}

/// An idempotent batch of `count` records, built as a producer would.
fn idempotent_batch(producer_id: i64, epoch: i16, first_seq: i32, count: i32) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    builder.producer_id = producer_id;
    builder.producer_epoch = epoch;
    builder.base_sequence = first_seq;
    for i in 0..count {
        let value = format!("seq-{}", first_seq + i);
        builder.push(None, Some(value.as_bytes()), 1_700_000_000_000);
    }
    builder.build()
}

/// The stored records' values, by offset.
fn values(broker: &Broker, topic: &str) -> BTreeMap<i64, String> {
    read_partition(broker, topic, 0).into_iter().collect()
}

#[test]
fn raw_retries_get_the_original_offsets_across_a_crash_and_a_clean_restart() {
    const TOPIC: &str = "idempotent-raw";
    let mut broker = Broker::start_new();
    create_topic(&broker, TOPIC, 1);
    let mut client = RawClient::connect(broker.ports().kafka, CLIENT_TIMEOUT).expect("connect");
    let (pid, epoch) = client.init_producer_id();
    assert!(pid >= 0);
    assert_eq!(epoch, 0);

    let first = idempotent_batch(pid, epoch, 0, 3);
    let second = idempotent_batch(pid, epoch, 3, 2);
    assert_eq!(client.produce(TOPIC, &first), (0, 0));
    assert_eq!(client.produce(TOPIC, &second), (0, 3));
    // The same bytes again, as a producer retries after a lost answer: the
    // original offsets, and nothing written twice.
    assert_eq!(client.produce(TOPIC, &first), (0, 0));
    assert_eq!(client.produce(TOPIC, &second), (0, 3));
    // A gap in the sequence: OUT_OF_ORDER_SEQUENCE_NUMBER.
    assert_eq!(
        client.produce(TOPIC, &idempotent_batch(pid, epoch, 6, 1)).0,
        45
    );
    let expected: BTreeMap<i64, String> = (0..5).map(|i| (i, format!("seq-{i}"))).collect();
    assert_eq!(values(&broker, TOPIC), expected);

    // A crash: no snapshot was written (that happens every minute and at
    // shutdown), so the state comes back from the log alone.
    broker.kill();
    broker.start();
    let mut client = RawClient::connect(broker.ports().kafka, CLIENT_TIMEOUT).expect("connect");
    assert_eq!(client.produce(TOPIC, &second), (0, 3));
    assert_eq!(client.produce(TOPIC, &first), (0, 0));
    assert_eq!(
        client.produce(TOPIC, &idempotent_batch(pid, epoch, 6, 1)).0,
        45
    );
    let third = idempotent_batch(pid, epoch, 5, 2);
    assert_eq!(client.produce(TOPIC, &third), (0, 5));

    // A clean restart leaves a snapshot at the log end, and starts from it.
    broker.stop();
    let snapshot = broker
        .data_dir()
        .join(format!("{TOPIC}-0"))
        .join(format!("{:020}.snapshot", 7));
    assert!(
        snapshot.exists(),
        "{} after a clean stop",
        snapshot.display()
    );
    broker.start();
    let mut client = RawClient::connect(broker.ports().kafka, CLIENT_TIMEOUT).expect("connect");
    assert_eq!(client.produce(TOPIC, &third), (0, 5));
    assert_eq!(client.produce(TOPIC, &second), (0, 3));
    assert_eq!(
        client.produce(TOPIC, &idempotent_batch(pid, epoch, 7, 1)),
        (0, 7)
    );
    let expected: BTreeMap<i64, String> = (0..8).map(|i| (i, format!("seq-{i}"))).collect();
    assert_eq!(values(&broker, TOPIC), expected);
    assert!(
        broker
            .stderr_lines()
            .iter()
            .any(|line| line.contains("loaded producer state")
                && line.contains("snapshot_offset=Some(7)")),
        "the restart read the snapshot"
    );

    // Producer ids handed out before the restarts are never handed out again.
    let (next, _) = client.init_producer_id();
    assert!(next > pid, "{next} after {pid}");
}
