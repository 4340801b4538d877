//! Overload and bad clients, end to end: a real `rill serve` with small
//! limits, a hostile load from raw sockets, and a well-behaved client
//! (librdkafka) that must get its work done during the attack.
//!
//! Each scenario asserts that
//! - the good client produces its records (acks=all) and reads them back
//!   within [`GOOD_CLIENT_DEADLINE`];
//! - the broker's resident memory (`VmHWM`, the peak, from
//!   `/proc/<pid>/status`) stays below a bound derived from its settings,
//!   stated next to each scenario;
//! - hostile connections are closed by the broker when they must be (a read
//!   on them ends with EOF or a reset), with a log line and a count in
//!   `rill_connections_closed_total`.
//!
//! The same scenarios at realistic sizes and default limits run in the
//! ignored test `at_scale` (`cargo test -p rill-cli --test overload_e2e --
//! --ignored --nocapture at_scale`), which prints the peak memory and the
//! good client's latency with and without each attack.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use common::{poll_until, raise_open_files_limit, Broker};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest, RequestHeader, TopicName};
use kafka_protocol::protocol::{Encodable, Request, StrBytes};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

const MIB: u64 = 1024 * 1024;
/// How long the good client may take for its whole round trip, attack or
/// not (`at_scale` allows more: [`GOOD_CLIENT_DEADLINE_SECS`]).
const GOOD_CLIENT_DEADLINE: Duration = Duration::from_secs(60);
static GOOD_CLIENT_DEADLINE_SECS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(GOOD_CLIENT_DEADLINE.as_secs());
/// How long the broker may take to close a hostile connection once it must.
const CLOSE_DEADLINE: Duration = Duration::from_secs(20);
/// Records the good client produces and reads back in each scenario.
const GOOD_RECORDS: usize = 200;

/// The small limits the scenarios run with, so that they are cheap.
const POOL_BYTES: u64 = 32 * MIB;
const FRAME_BYTES_MAX: u64 = 4 * MIB;
const READ_TIMEOUT_MS: u64 = 2000;
/// One connection's read buffer (`connection::READ_BUFFER_BYTES`): what a
/// connection may hold beyond the pool.
const READ_BUFFER_BYTES: u64 = 64 * 1024;
/// Room for everything the bounds do not count: allocator slack, task
/// stacks, librdkafka-driven metadata, the good client's own requests.
const SLACK_BYTES: u64 = 96 * MIB;

fn small_limits() -> Vec<String> {
    [
        "--queued-max-request-bytes",
        &POOL_BYTES.to_string(),
        "--socket-request-max-bytes",
        &FRAME_BYTES_MAX.to_string(),
        "--request-read-timeout-ms",
        &READ_TIMEOUT_MS.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The scenarios run one at a time: each measures a broker's memory and a
/// good client's progress, which another scenario's load on the same two
/// cores (or the same disk) would blur.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn start(args: &[String]) -> Broker {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Broker::start_new_with_args(&args)
}

// ---------------------------------------------------------------------------
// The good client
// ---------------------------------------------------------------------------

/// Times each record from `send` to its delivery report.
#[derive(Default)]
struct Timed {
    latencies: Mutex<Vec<Duration>>,
    failures: Mutex<Vec<String>>,
}

impl ClientContext for Timed {}

impl ProducerContext for Timed {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Instant>) {
        match result {
            Ok(_) => self.latencies.lock().unwrap().push(sent.elapsed()),
            Err((error, _)) => self.failures.lock().unwrap().push(error.to_string()),
        }
    }
}

/// What the good client saw.
#[derive(Debug, Clone)]
struct Latencies(Vec<Duration>);

impl Latencies {
    fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted[index]
    }

    fn summary(&self) -> String {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms",
            self.quantile(0.5).as_secs_f64() * 1000.0,
            self.quantile(0.99).as_secs_f64() * 1000.0
        )
    }
}

/// Produces `records` records of `value_len` bytes to partition 0 of
/// `topic` (acks=all, one at a time, so that each record's latency is one
/// request's round trip), then reads them all back from the start. Panics
/// if either does not finish within [`GOOD_CLIENT_DEADLINE`].
fn good_client(bootstrap: &str, topic: &str, records: usize, value_len: usize) -> Latencies {
    let allowed = Duration::from_secs(GOOD_CLIENT_DEADLINE_SECS.load(Ordering::Relaxed));
    let deadline = Instant::now() + allowed;
    let producer: BaseProducer<Timed> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("message.timeout.ms", allowed.as_millis().to_string())
        .create_with_context(Timed::default())
        .expect("create the good producer");
    let value = vec![b'g'; value_len];
    for i in 0..records {
        let key = i.to_string();
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(Instant::now()))
            .partition(0)
            .key(&key)
            .payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((error, back)) => {
                    assert!(
                        Instant::now() < deadline,
                        "good producer could not queue record {i}: {error}"
                    );
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        // One at a time: wait for this record's report.
        while producer.in_flight_count() > 0 {
            assert!(
                Instant::now() < deadline,
                "good producer: record {i} not delivered within {allowed:?}"
            );
            producer.poll(Duration::from_millis(5));
        }
    }
    let context = producer.context();
    let failures = context.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "good producer failures: {failures:?}");
    let latencies = Latencies(context.latencies.lock().unwrap().clone());
    assert_eq!(latencies.0.len(), records, "every record delivered");

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "overload-good-client")
        .set("enable.auto.commit", "false")
        .create()
        .expect("create the good consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .expect("assign");
    consumer.assign(&assignment).expect("assign");
    // The topic may hold records of earlier runs: reading `records` of them
    // from the start is the round trip asked of the consumer.
    let mut read = 0usize;
    let wanted = records;
    while read < wanted {
        assert!(
            Instant::now() < deadline,
            "good consumer read {read} of {wanted} records within {allowed:?}"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("good consumer");
            assert_eq!(message.payload().map(<[u8]>::len), Some(value_len));
            read += 1;
        }
    }
    latencies
}

// ---------------------------------------------------------------------------
// Hostile connections
// ---------------------------------------------------------------------------

fn connect_many(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|i| {
            TcpStream::connect(addr)
                .unwrap_or_else(|error| panic!("hostile connection {i} of {count}: {error}"))
        })
        .collect()
}

/// Whether a read on `stream` ends (EOF or a reset) before `deadline`,
/// discarding whatever answers come first.
fn closed_by_peer(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut sink = [0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream
            .set_read_timeout(Some(left))
            .expect("set read timeout");
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                return true
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// Asserts that the broker closes every one of `streams` within `within`.
fn assert_all_closed(streams: &mut [TcpStream], within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    let open = streams
        .iter_mut()
        .filter_map(|stream| (!closed_by_peer(stream, deadline)).then_some(()))
        .count();
    assert_eq!(
        open,
        0,
        "{open} of {} {what} connections still open after {within:?}",
        streams.len()
    );
}

/// One request as a whole frame (size prefix, header v1/v2, body).
fn request_frame<R: Request + Encodable>(correlation_id: i32, version: i16, body: &R) -> Vec<u8> {
    let api_key = ApiKey::try_from(R::KEY).expect("known API");
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("overload-e2e")));
    let mut payload = BytesMut::new();
    header
        .encode(&mut payload, api_key.request_header_version(version))
        .expect("encode header");
    body.encode(&mut payload, version).expect("encode body");
    let mut frame = BytesMut::with_capacity(4 + payload.len());
    frame.put_u32(payload.len() as u32);
    frame.put_slice(&payload);
    frame.to_vec()
}

/// A Fetch (v11) of partition 0 of `topic` from `offset`.
fn fetch_frame(
    correlation_id: i32,
    topic: &str,
    offset: i64,
    max_wait_ms: i32,
    min_bytes: i32,
) -> Vec<u8> {
    let request = FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(min_bytes)
        .with_max_bytes(52_428_800)
        .with_isolation_level(0)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(1024 * 1024)])]);
    request_frame(correlation_id, 11, &request)
}

/// Reads one metric's value from `/metrics` (0 if the series is absent).
fn metric(broker: &Broker, series: &str) -> f64 {
    let (status, body) = broker.http_get("/metrics");
    assert_eq!(status, 200, "GET /metrics");
    body.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

fn closed_total(broker: &Broker, reason: &str) -> f64 {
    metric(
        broker,
        &format!("rill_connections_closed_total{{reason=\"{reason}\"}}"),
    )
}

fn log_lines_containing(broker: &Broker, needle: &str) -> usize {
    broker
        .stderr_lines()
        .iter()
        .filter(|line| line.contains(needle))
        .count()
}

/// Samples the broker's peak memory (`VmHWM`) at the end of a scenario,
/// and checks it against `bound`.
fn assert_peak_below(broker: &Broker, bound: u64, scenario: &str) -> u64 {
    let peak = broker.memory().peak;
    assert!(
        peak < bound,
        "{scenario}: broker peak RSS {} MiB is above the bound of {} MiB",
        peak / MIB,
        bound / MIB
    );
    peak
}

/// Keeps `streams` busy in the background (each gets one byte every
/// `every`) until dropped.
struct Trickle {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Vec<TcpStream>>>,
}

impl Trickle {
    fn start(mut streams: Vec<TcpStream>, every: Duration) -> Trickle {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                for stream in &mut streams {
                    // The broker may have closed it already; that is the point.
                    let _ = stream.write_all(&[0]);
                }
                thread::sleep(every);
            }
            streams
        });
        Trickle {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Vec<TcpStream> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("trickle thread")
    }
}

impl Drop for Trickle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Scenarios, shared by the tests and the measurement at scale
// ---------------------------------------------------------------------------

/// What one scenario measured.
struct Outcome {
    /// The broker's RSS after start-up and a first good-client run.
    base_rss: u64,
    /// The broker's peak RSS at the end of the scenario.
    peak_rss: u64,
    /// The good client alone, before the attack.
    before: Latencies,
    /// The good client during the attack.
    during: Latencies,
}

/// Starts `broker`'s warm-up: the good client alone, which also creates
/// the topic. Returns its latencies and the broker's RSS after it.
fn warm_up(broker: &Broker, topic: &str, records: usize) -> (Latencies, u64) {
    let before = good_client(&broker.bootstrap(), topic, records, 100);
    (before, broker.memory().rss)
}

/// `count` connections that each announce a frame of `frame_len` bytes,
/// send `sent` bytes of it, then one byte every 500 ms: never idle, never
/// done. The broker must close each `request.read.timeout.ms` after its
/// first byte, while the good client works.
fn slowloris(broker: &Broker, count: usize, frame_len: u32, records: usize) -> Outcome {
    let (before, base_rss) = warm_up(broker, "slowloris", records);
    let mut streams = connect_many(broker.ports().kafka, count);
    for stream in &mut streams {
        let mut start = frame_len.to_be_bytes().to_vec();
        start.extend_from_slice(&[0, 0, 0, 9]);
        stream.write_all(&start).expect("start a frame");
    }
    let trickle = Trickle::start(streams, Duration::from_millis(500));
    let during = good_client(&broker.bootstrap(), "slowloris", records, 100);
    let mut streams = trickle.stop();
    assert_all_closed(&mut streams, CLOSE_DEADLINE, "slowloris");
    Outcome {
        base_rss,
        peak_rss: broker.memory().peak,
        before,
        during,
    }
}

/// `count` connections that each send all but 64 bytes of a frame of
/// `frame_len` bytes as fast as they can, then stall: together far more
/// than the request-bytes pool. The pool fills, every connection stops
/// being read (backpressure), and the stalled frames' read deadlines empty
/// it again; the good client gets through once they do.
fn pool_flood(
    broker: &Broker,
    count: usize,
    frame_len: u32,
    records: usize,
    close_within: Duration,
) -> Outcome {
    let (before, base_rss) = warm_up(broker, "flood", records);
    let streams = connect_many(broker.ports().kafka, count);
    let senders: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            thread::spawn(move || {
                stream
                    .set_write_timeout(Some(Duration::from_secs(3)))
                    .expect("write timeout");
                let mut frame = frame_len.to_be_bytes().to_vec();
                frame.resize(frame_len as usize + 4 - 64, 7);
                // Blocks once the broker stops reading; a timeout is fine.
                let _ = stream.write_all(&frame);
                stream
            })
        })
        .collect();
    // Let the flood reach the broker before the good client starts.
    thread::sleep(Duration::from_millis(500));
    let during = good_client(&broker.bootstrap(), "flood", records, 100);
    let mut streams: Vec<TcpStream> = senders
        .into_iter()
        .map(|sender| sender.join().expect("sender"))
        .collect();
    assert_all_closed(&mut streams, close_within, "flooding");
    Outcome {
        base_rss,
        peak_rss: broker.memory().peak,
        before,
        during,
    }
}

/// `count` connections that open and send nothing.
fn idle(broker: &Broker, count: usize, records: usize, expect_closed: bool) -> Outcome {
    let (before, base_rss) = warm_up(broker, "idle", records);
    let mut streams = connect_many(broker.ports().kafka, count);
    let during = good_client(&broker.bootstrap(), "idle", records, 100);
    let peak_rss = broker.memory().peak;
    if expect_closed {
        assert_all_closed(&mut streams, CLOSE_DEADLINE, "idle");
    }
    Outcome {
        base_rss,
        peak_rss,
        before,
        during,
    }
}

/// `count` connections that each pipeline `requests` fetches of 1 MiB
/// (from a topic filled first) and never read an answer. Their writers
/// block on full sockets; everyone else must not notice.
fn non_readers(broker: &Broker, count: usize, requests: usize, records: usize) -> Outcome {
    // 16 MiB of records, so that every fetch has a full 1 MiB to send.
    good_client(&broker.bootstrap(), "full", 256, 64 * 1024);
    let (before, base_rss) = warm_up(broker, "non-readers", records);
    let mut streams = connect_many(broker.ports().kafka, count);
    for stream in &mut streams {
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .expect("write timeout");
        let mut frames = Vec::new();
        for i in 0..requests {
            frames.extend(fetch_frame(i as i32, "full", 0, 0, 1));
        }
        // Blocks (and times out) once the broker stops reading: fine.
        let _ = stream.write_all(&frames);
    }
    let during = good_client(&broker.bootstrap(), "non-readers", records, 100);
    let peak_rss = broker.memory().peak;
    drop(streams);
    Outcome {
        base_rss,
        peak_rss,
        before,
        during,
    }
}

/// `connections` connections each with `per_connection` fetches waiting
/// for 1 GiB that will never come (max wait 60 s), on the topic the good
/// client produces to: each of its appends wakes them all.
fn long_polls(
    broker: &Broker,
    connections: usize,
    per_connection: usize,
    records: usize,
) -> Outcome {
    let (before, base_rss) = warm_up(broker, "polled", records);
    let mut streams = connect_many(broker.ports().kafka, connections);
    for stream in &mut streams {
        let mut frames = Vec::new();
        for i in 0..per_connection {
            frames.extend(fetch_frame(i as i32, "polled", 0, 60_000, 1 << 30));
        }
        stream.write_all(&frames).expect("send long polls");
    }
    // Let them all reach the broker and start waiting.
    thread::sleep(Duration::from_millis(500));
    let during = good_client(&broker.bootstrap(), "polled", records, 100);
    let peak_rss = broker.memory().peak;
    drop(streams);
    Outcome {
        base_rss,
        peak_rss,
        before,
        during,
    }
}

/// `producers` librdkafka producers (half acks=all, half acks=1) sending
/// 1 KiB records flat out for `seconds`, while the good client works (it
/// starts one second in, and may finish after the flood: its records wait
/// for fsyncs on a disk the flood keeps busy). Returns the records the
/// flood got acknowledged.
fn fast_producers(
    broker: &Broker,
    producers: usize,
    seconds: u64,
    records: usize,
) -> (Outcome, usize) {
    let (before, base_rss) = warm_up(broker, "measured", records);
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..producers)
        .map(|p| {
            let bootstrap = broker.bootstrap();
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let acks = if p % 2 == 0 { "all" } else { "1" };
                let producer: BaseProducer<Timed> = ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap)
                    .set("acks", acks)
                    .set("linger.ms", "5")
                    // A few MiB queued in the client, so that its flush at
                    // the end is short.
                    .set("queue.buffering.max.kbytes", "4096")
                    .set("message.timeout.ms", "120000")
                    .create_with_context(Timed::default())
                    .expect("create a fast producer");
                let value = vec![b'f'; 1024];
                let topic = format!("fast-{p}");
                while !stop.load(Ordering::Relaxed) {
                    let record =
                        BaseRecord::<(), [u8], _>::with_opaque_to(&topic, Box::new(Instant::now()))
                            .partition(0)
                            .payload(&value);
                    if producer.send(record).is_err() {
                        // The queue is full: the broker is the bottleneck.
                        producer.poll(Duration::from_millis(1));
                    } else {
                        producer.poll(Duration::ZERO);
                    }
                }
                producer
                    .flush(Duration::from_secs(120))
                    .expect("fast producer flush");
                let context = producer.context();
                let failures = context.failures.lock().unwrap();
                assert!(
                    failures.is_empty(),
                    "fast producer {p}: {} failures, first {:?}",
                    failures.len(),
                    failures.first()
                );
                let delivered = context.latencies.lock().unwrap().len();
                delivered
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(1));
    let bootstrap = broker.bootstrap();
    let good = thread::spawn(move || good_client(&bootstrap, "measured", records, 100));
    thread::sleep(Duration::from_secs(seconds.saturating_sub(1)));
    stop.store(true, Ordering::Relaxed);
    let delivered = threads
        .into_iter()
        .map(|t| t.join().expect("fast producer"))
        .sum();
    let during = good.join().expect("good client");
    (
        Outcome {
            base_rss,
            peak_rss: broker.memory().peak,
            before,
            during,
        },
        delivered,
    )
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "base RSS {} MiB, peak RSS {} MiB; good client alone {}, during {}",
            self.base_rss / MIB,
            self.peak_rss / MIB,
            self.before.summary(),
            self.during.summary()
        )
    }
}

// ---------------------------------------------------------------------------
// The tests: small limits, cheap scenarios
// ---------------------------------------------------------------------------

#[test]
fn a_1_gib_length_prefix_is_closed_at_once_without_allocating() {
    let _serial = one_at_a_time();
    // Default limits: socket.request.max.bytes is 100 MiB.
    let broker = Broker::start_new();
    let before = broker.memory();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(broker.ports().kafka).expect("connect");
        stream
            .write_all(&[0x40, 0, 0, 0, 0, 18, 0, 0])
            .expect("send a 1 GiB size");
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(
            closed_by_peer(&mut stream, deadline),
            "a 1 GiB frame must close the connection at once"
        );
    }
    let after = broker.memory();
    // Nothing allocated for the announced size: the peak grew by less than
    // one frame's worth of anything.
    assert!(
        after.peak < before.peak.max(before.rss) + 16 * MIB,
        "peak RSS went from {} to {} MiB",
        before.peak / MIB,
        after.peak / MIB
    );
    assert!(
        poll_until(CLOSE_DEADLINE, || (closed_total(&broker, "bad_frame")
            >= 20.0)
            .then_some(()))
        .is_some()
    );
    assert!(log_lines_containing(&broker, "bad frame") >= 20);
}

#[test]
fn slowloris_frames_are_closed_by_the_read_timeout_while_a_good_client_works() {
    let _serial = one_at_a_time();
    let connections = 500;
    let broker = start(&small_limits());
    let outcome = slowloris(&broker, connections, FRAME_BYTES_MAX as u32, GOOD_RECORDS);
    // Each slowloris holds the bytes it sent (a few), not its announced
    // 4 MiB (500 × 4 MiB = 2 GiB): at most one read buffer each.
    let bound =
        outcome.base_rss + POOL_BYTES + connections as u64 * READ_BUFFER_BYTES + SLACK_BYTES;
    assert_peak_below(&broker, bound, "slowloris");
    assert!(
        poll_until(CLOSE_DEADLINE, || (closed_total(&broker, "read_timeout")
            >= connections as f64)
            .then_some(()))
        .is_some(),
        "{} slowloris connections counted as read_timeout",
        closed_total(&broker, "read_timeout")
    );
    assert!(log_lines_containing(&broker, "request.read.timeout.ms") >= connections);
    eprintln!("slowloris: {outcome:?}");
}

#[test]
fn a_flood_of_unfinished_frames_fills_the_pool_pauses_reading_and_drains() {
    let _serial = one_at_a_time();
    // 40 connections × 4 MiB = 160 MiB sent, five times the 32 MiB pool.
    let connections = 40;
    let broker = start(&small_limits());
    let outcome = pool_flood(
        &broker,
        connections,
        FRAME_BYTES_MAX as u32,
        GOOD_RECORDS,
        CLOSE_DEADLINE,
    );
    let bound =
        outcome.base_rss + POOL_BYTES + connections as u64 * READ_BUFFER_BYTES + SLACK_BYTES;
    assert!(
        bound < outcome.base_rss + connections as u64 * FRAME_BYTES_MAX,
        "the bound must be below what the flood sent, or it proves nothing"
    );
    assert_peak_below(&broker, bound, "flood");
    assert!(closed_total(&broker, "read_timeout") >= connections as f64);
    assert!(
        log_lines_containing(&broker, "waiting for queued.max.request.bytes") >= 1,
        "some flooding connection must have been closed while waiting for the pool"
    );
    eprintln!("flood: {outcome:?}");
}

#[test]
fn idle_connections_close_after_connections_max_idle_ms() {
    let _serial = one_at_a_time();
    let connections = 2000;
    let limit = raise_open_files_limit();
    assert!(
        limit > connections as u64 + 500,
        "this test needs {connections} connections; open files limit is {limit}"
    );
    let mut args = small_limits();
    args.extend(
        [
            "--connections-max-idle-ms",
            "1000",
            "--max-connections",
            "2100",
        ]
        .map(String::from),
    );
    let broker = start(&args);
    let outcome = idle(&broker, connections, GOOD_RECORDS, true);
    // An idle connection holds no request bytes; its buffer is allocated
    // but never written, so it costs little resident memory.
    let bound = outcome.base_rss + connections as u64 * READ_BUFFER_BYTES + SLACK_BYTES;
    assert_peak_below(&broker, bound, "idle");
    assert!(closed_total(&broker, "idle") >= connections as f64);
    assert!(log_lines_containing(&broker, "connections.max.idle.ms") >= connections);
    assert!(
        broker
            .stderr_lines()
            .iter()
            .any(|line| line.contains("RLIMIT_NOFILE")),
        "rill serve logs its open files limit"
    );
    eprintln!("idle: {outcome:?}");
}

#[test]
fn connections_beyond_max_connections_are_refused_and_counted() {
    let _serial = one_at_a_time();
    let broker = start(&["--max-connections".to_string(), "20".to_string()]);
    let kept = connect_many(broker.ports().kafka, 20);
    // Make sure the broker has taken all 20 before the next ones come.
    assert!(poll_until(CLOSE_DEADLINE, || (metric(
        &broker,
        "rill_connections_open"
    ) >= 20.0)
        .then_some(()))
    .is_some());
    let mut refused = connect_many(broker.ports().kafka, 10);
    assert_all_closed(&mut refused, CLOSE_DEADLINE, "refused");
    assert_eq!(closed_total(&broker, "limit"), 10.0);
    assert!(log_lines_containing(&broker, "too many connections") >= 10);
    drop(kept);
}

#[test]
fn clients_that_never_read_their_answers_block_no_one() {
    let _serial = one_at_a_time();
    let connections = 50;
    let requests = 100;
    let broker = start(&small_limits());
    let outcome = non_readers(&broker, connections, requests, GOOD_RECORDS);
    // Each non-reader has at most 64 answers pending, each a Fetch of
    // 1 MiB sent from the page cache: nothing of that is in the broker's
    // memory. Had they been buffered: 50 × 64 × 1 MiB = 3.2 GiB.
    let bound =
        outcome.base_rss + POOL_BYTES + connections as u64 * READ_BUFFER_BYTES + SLACK_BYTES;
    assert_peak_below(&broker, bound, "non-readers");
    // Once they go, their connections go with them.
    assert!(
        poll_until(CLOSE_DEADLINE, || (metric(
            &broker,
            "rill_connections_open"
        ) <= 2.0)
            .then_some(()))
        .is_some(),
        "{} connections still open after the non-readers left",
        metric(&broker, "rill_connections_open")
    );
    eprintln!("non-readers: {outcome:?}");
}

#[test]
fn thousands_of_long_polls_do_not_stop_a_good_client() {
    let _serial = one_at_a_time();
    let broker = start(&small_limits());
    // 1,000 long polls, each woken by every one of the good client's appends.
    let outcome = long_polls(&broker, 100, 10, 50);
    let bound = outcome.base_rss + POOL_BYTES + 100 * READ_BUFFER_BYTES + SLACK_BYTES;
    assert_peak_below(&broker, bound, "long polls");
    eprintln!("long polls: {outcome:?}");
}

#[test]
fn producers_faster_than_the_disk_keep_memory_bounded() {
    let _serial = one_at_a_time();
    let broker = start(&small_limits());
    let (outcome, delivered) = fast_producers(&broker, 4, 5, 20);
    assert!(delivered > 0, "the fast producers delivered nothing");
    // Records go to the page cache, which is the kernel's, not the
    // broker's: its memory is the pool and the slack, however much is sent.
    let bound = outcome.base_rss + POOL_BYTES + SLACK_BYTES;
    assert_peak_below(&broker, bound, "fast producers");
    eprintln!("fast producers: delivered {delivered}; {outcome:?}");
}

// ---------------------------------------------------------------------------
// At scale, default limits: run by hand, prints numbers
// ---------------------------------------------------------------------------

#[test]
#[ignore = "minutes long; run by hand for the numbers in the report"]
fn at_scale() {
    let _serial = one_at_a_time();
    raise_open_files_limit();
    GOOD_CLIENT_DEADLINE_SECS.store(600, Ordering::Relaxed);
    let records = 200;
    let report = |name: &str, outcome: &Outcome| {
        eprintln!(
            "| {name} | {} MiB | {} MiB | {} | {} |",
            outcome.base_rss / MIB,
            outcome.peak_rss / MIB,
            outcome.before.summary(),
            outcome.during.summary()
        );
    };
    eprintln!("| scenario | base RSS | peak RSS | good client alone | good client during |");
    eprintln!("|---|---|---|---|---|");
    {
        let broker = Broker::start_new();
        report(
            "5000 idle connections",
            &idle(&broker, 5000, records, false),
        );
    }
    {
        let broker = Broker::start_new();
        report(
            "2000 slowloris (100 MiB frames)",
            &slowloris_no_wait(&broker, 2000, 100 * MIB as u32, records),
        );
    }
    {
        let broker = Broker::start_new();
        report(
            "5000 long polls (250 conns × 20)",
            &long_polls(&broker, 250, 20, records),
        );
    }
    {
        let broker = Broker::start_new();
        report(
            "200 non-readers × 100 fetches of 1 MiB",
            &non_readers(&broker, 200, 100, records),
        );
    }
    {
        // Default limits but a 10 s read timeout: 12 × 100 MiB is more than
        // the 512 MiB pool, so the good client waits for the flood's read
        // deadlines (60 s by default, longer than the good client's).
        let broker = start(&["--request-read-timeout-ms".into(), "10000".into()]);
        report(
            "flood: 12 × 100 MiB frames, unfinished (read timeout 10 s)",
            &pool_flood(
                &broker,
                12,
                100 * MIB as u32,
                records,
                Duration::from_secs(60),
            ),
        );
    }
    {
        let broker = Broker::start_new();
        let (outcome, delivered) = fast_producers(&broker, 4, 20, records);
        report(
            &format!("4 producers flat out 20 s ({delivered} records acked)"),
            &outcome,
        );
    }
}

/// [`slowloris`] without waiting for the broker to close them (with the
/// default 60 s read timeout that is a minute): memory and latency only.
fn slowloris_no_wait(broker: &Broker, count: usize, frame_len: u32, records: usize) -> Outcome {
    let (before, base_rss) = warm_up(broker, "slowloris", records);
    let mut streams = connect_many(broker.ports().kafka, count);
    for stream in &mut streams {
        let mut start = frame_len.to_be_bytes().to_vec();
        start.extend_from_slice(&[0, 0, 0, 9]);
        stream.write_all(&start).expect("start a frame");
    }
    let trickle = Trickle::start(streams, Duration::from_millis(500));
    let during = good_client(&broker.bootstrap(), "slowloris", records, 100);
    drop(trickle);
    Outcome {
        base_rss,
        peak_rss: broker.memory().peak,
        before,
        during,
    }
}
