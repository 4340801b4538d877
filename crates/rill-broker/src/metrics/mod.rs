//! Prometheus metrics, served as text on the HTTP port's `/metrics`
//! (the table of them is in `docs/metrics.md`).
//!
//! Two kinds. What the broker *does* is counted as it happens: requests
//! and their latency (in `connection`, where answers are written), error
//! codes in answers, bytes and records in per topic (Produce), bytes out
//! per topic (Fetch, after `sendfile`), connections, and the duration of
//! every log flush (reported by `rill-storage` through its
//! [`FlushObserver`] hook, so that the storage crate has no metrics
//! dependency). What the broker *is* — partitions, log sizes and offsets,
//! consumer-group lag, open transactions, how far each last stable offset
//! trails its high watermark — is read from its state when scraped, so
//! nothing on the produce or fetch path updates a gauge. So are the
//! completed transactions, which the transaction coordinator counts itself.
//!
//! The registry belongs to one broker rather than to the process, so
//! brokers started side by side in one process (the in-process tests)
//! each report only their own.
//!
//! Cost on the hot path: a request costs one atomic add for its counter
//! and one histogram observation, through handles cached per API and
//! version (no lookup, no allocation). Produce adds two labelled-counter
//! lookups (bytes, records) per topic per request; Fetch one per topic
//! that returned bytes.

mod response_errors;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use rill_controller::MetadataImage;
use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::{ApiKey, ResponseKind};
use rill_protocol::SUPPORTED_APIS;
use rill_storage::FlushObserver;

use crate::group::GroupCoordinator;
use crate::handlers::fetch::FetchAnswer;
use crate::metadata::MetadataClient;
use crate::replica::ReplicaManager;
use crate::txn::coordinator::TransactionCoordinator;

/// The content type of the text exposition format, version 0.0.4.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Request latencies: from 100 µs (a Metadata answer from memory) to 30 s
/// (a JoinGroup waiting for its rebalance; a long-polling Fetch waits up to
/// its `max_wait_ms`).
const REQUEST_SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// Flush latencies: from 50 µs (a disk with a fast write cache) to 5 s (a
/// disk in trouble).
const FLUSH_SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// Why a client connection closed (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The client closed it, or reading from it failed.
    Client,
    /// A frame larger than `socket.request.max.bytes` (or with a negative size).
    BadFrame,
    /// A request that cannot be parsed, so cannot be answered.
    BadRequest,
    /// Nothing sent and nothing owed for `connections.max.idle.ms`.
    Idle,
    /// The broker is shutting down.
    Shutdown,
    /// An acks=0 produce failed: Kafka closes so that the client notices.
    ProduceFailed,
    /// Writing an answer failed (or its handler did): the writer stopped.
    WriteFailed,
    /// Refused on accept: `max.connections` were open. Such a connection
    /// was never counted as open.
    Limit,
    /// A frame did not arrive whole within `request.read.timeout.ms`.
    ReadTimeout,
}

impl CloseReason {
    fn label(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::BadFrame => "bad_frame",
            CloseReason::BadRequest => "bad_request",
            CloseReason::Idle => "idle",
            CloseReason::Shutdown => "shutdown",
            CloseReason::ProduceFailed => "produce_failed",
            CloseReason::WriteFailed => "write_failed",
            CloseReason::Limit => "limit",
            CloseReason::ReadTimeout => "read_timeout",
        }
    }
}

/// One API's cached metric handles; each made the first time it is used,
/// so that only APIs and versions clients use appear in the output.
struct ApiMetrics {
    /// Kafka's request name (`Produce`, `Fetch`, ...), the `api` label.
    name: String,
    min_version: i16,
    /// Requests at each supported version, from `min_version`.
    requests: Vec<OnceLock<IntCounter>>,
    /// Requests at a version rill does not handle (only ApiVersions is
    /// answered at such a version; any other is closed). One series for
    /// all of them, so that a client cannot make a series per version.
    requests_unsupported: OnceLock<IntCounter>,
    duration: OnceLock<Histogram>,
}

impl ApiMetrics {
    /// The request counter's slot of `version`, if rill handles it.
    fn slot(&self, version: i16) -> Option<&OnceLock<IntCounter>> {
        // In i32: a client's version may be anything, and must not overflow.
        let index = i32::from(version) - i32::from(self.min_version);
        usize::try_from(index)
            .ok()
            .and_then(|i| self.requests.get(i))
    }
}

/// The broker's metrics; see the module doc.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_errors: IntCounterVec,
    request_duration: HistogramVec,
    /// Indexed by API key; `None` for APIs rill does not handle.
    apis: Vec<Option<ApiMetrics>>,
    connections_open: IntGauge,
    connections_closed: IntCounterVec,
    topic_bytes_in: IntCounterVec,
    topic_messages_in: IntCounterVec,
    topic_bytes_out: IntCounterVec,
    log_flush_duration: Histogram,
    leader_elections: IntCounterVec,
    isr_shrinks: IntCounter,
    isr_expands: IntCounter,
    log_cleaner_runs: IntCounterVec,
    log_cleaner_bytes_cleaned: IntCounter,
    log_cleaner_bytes_reclaimed: IntCounter,
    log_cleaner_max_dirty_ratio: prometheus::Gauge,
    log_cleaner_uncleanable_partitions: IntGauge,
    /// The image the leader changes were last counted against.
    last_image: std::sync::Mutex<Option<Arc<MetadataImage>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Registers `collector`; a failure is a bug (a name or label set given
/// twice), caught by every test that starts a broker.
fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names are unique and valid");
    collector
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"),
    )
}

/// Kafka's name of an error code (`UNKNOWN_TOPIC_OR_PARTITION`), as its
/// `Errors` enum and tools spell it.
fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(code)) => format!("UNKNOWN_CODE_{code}"),
        Some(error) => {
            let camel = error.to_string();
            let mut name = String::with_capacity(camel.len() + 8);
            for (i, c) in camel.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    name.push('_');
                }
                name.push(c.to_ascii_uppercase());
            }
            name
        }
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let registry = Registry::new();
        let requests = counter_vec(
            &registry,
            "rill_requests_total",
            "Kafka requests received, by API and version.",
            &["api", "version"],
        );
        let request_errors = counter_vec(
            &registry,
            "rill_request_errors_total",
            "Error codes in answers, by API, version and Kafka error name; a request with \
             several failed partitions counts once per partition.",
            &["api", "version", "error"],
        );
        let request_duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "rill_request_duration_seconds",
                    "Time from a request's arrival to its answer written to the socket, by API.",
                )
                .buckets(REQUEST_SECONDS_BUCKETS.to_vec()),
                &["api"],
            )
            .expect("valid histogram"),
        );
        let connections_open = register(
            &registry,
            IntGauge::new(
                "rill_connections_open",
                "Kafka client connections open now.",
            )
            .expect("valid gauge"),
        );
        let connections_closed = counter_vec(
            &registry,
            "rill_connections_closed_total",
            "Kafka client connections closed, by reason (client, bad_frame, bad_request, idle, \
             shutdown, produce_failed, write_failed).",
            &["reason"],
        );
        let topic_bytes_in = counter_vec(
            &registry,
            "rill_topic_bytes_in_total",
            "Record batch bytes appended by Produce requests, by topic (retried duplicates \
             not counted).",
            &["topic"],
        );
        let topic_messages_in = counter_vec(
            &registry,
            "rill_topic_messages_in_total",
            "Records appended by Produce requests, by topic (retried duplicates not counted).",
            &["topic"],
        );
        let topic_bytes_out = counter_vec(
            &registry,
            "rill_topic_bytes_out_total",
            "Record batch bytes sent in Fetch answers, by topic.",
            &["topic"],
        );
        let log_flush_duration = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "rill_log_flush_duration_seconds",
                    "Time of one flush of a partition log: the fsync of its unsynced segment \
                     files (and of its directory and closed indexes when they changed). \
                     Concurrent acks=all waiters share one flush.",
                )
                .buckets(FLUSH_SECONDS_BUCKETS.to_vec()),
            )
            .expect("valid histogram"),
        );
        let slots = SUPPORTED_APIS
            .iter()
            .map(|api| api.key as usize + 1)
            .max()
            .unwrap_or(0);
        let mut apis: Vec<Option<ApiMetrics>> = (0..slots).map(|_| None).collect();
        for api in SUPPORTED_APIS {
            apis[api.key as usize] = Some(ApiMetrics {
                name: format!("{:?}", api.key),
                min_version: api.min,
                requests: (api.min..=api.max).map(|_| OnceLock::new()).collect(),
                requests_unsupported: OnceLock::new(),
                duration: OnceLock::new(),
            });
        }
        let leader_elections = counter_vec(
            &registry,
            "rill_leader_elections_total",
            "Leader changes committed to the metadata since this node started, by kind: \
             clean (a new leader from the ISR), unclean (from outside the ISR), \
             offline (no replica could lead).",
            &["kind"],
        );
        let isr_shrinks = register(
            &registry,
            IntCounter::new(
                "rill_isr_shrinks_total",
                "ISR changes this node, as leader, had committed that removed a replica.",
            )
            .expect("valid counter"),
        );
        let isr_expands = register(
            &registry,
            IntCounter::new(
                "rill_isr_expands_total",
                "ISR changes this node, as leader, had committed that added a replica.",
            )
            .expect("valid counter"),
        );
        let log_cleaner_runs = counter_vec(
            &registry,
            "rill_log_cleaner_runs_total",
            "Passes of the log cleaner over a compacted log, by result (ok, failed).",
            &["result"],
        );
        let log_cleaner_bytes_cleaned = register(
            &registry,
            IntCounter::new(
                "rill_log_cleaner_bytes_cleaned_total",
                "Bytes of segments the log cleaner read and deduplicated.",
            )
            .expect("valid counter"),
        );
        let log_cleaner_bytes_reclaimed = register(
            &registry,
            IntCounter::new(
                "rill_log_cleaner_bytes_reclaimed_total",
                "Bytes the log cleaner's rewrites removed from segments.",
            )
            .expect("valid counter"),
        );
        let log_cleaner_max_dirty_ratio = register(
            &registry,
            prometheus::Gauge::new(
                "rill_log_cleaner_max_dirty_ratio",
                "The highest dirty ratio (uncleaned share of closed bytes) among compacted \
                 logs, at the log cleaner's last round.",
            )
            .expect("valid gauge"),
        );
        let log_cleaner_uncleanable_partitions = register(
            &registry,
            IntGauge::new(
                "rill_log_cleaner_uncleanable_partitions",
                "Logs the log cleaner leaves alone because a pass over them failed \
                 (a corrupt batch); until they are deleted or the broker restarts.",
            )
            .expect("valid gauge"),
        );
        Self {
            registry,
            requests,
            request_errors,
            request_duration,
            apis,
            connections_open,
            connections_closed,
            topic_bytes_in,
            topic_messages_in,
            topic_bytes_out,
            log_flush_duration,
            leader_elections,
            isr_shrinks,
            isr_expands,
            log_cleaner_runs,
            log_cleaner_bytes_cleaned,
            log_cleaner_bytes_reclaimed,
            log_cleaner_max_dirty_ratio,
            log_cleaner_uncleanable_partitions,
            last_image: std::sync::Mutex::new(None),
        }
    }

    /// Reports one round of the log cleaner.
    pub(crate) fn log_cleaner_round(&self, round: &rill_storage::CleanerRound) {
        self.log_cleaner_max_dirty_ratio.set(round.max_dirty_ratio);
        self.log_cleaner_uncleanable_partitions
            .set(i64::try_from(round.uncleanable_partitions).unwrap_or(i64::MAX));
        match &round.cleaned {
            None => {}
            Some((_, Ok(stats))) => {
                self.log_cleaner_runs.with_label_values(&["ok"]).inc();
                self.log_cleaner_bytes_cleaned.inc_by(stats.bytes_read);
                self.log_cleaner_bytes_reclaimed
                    .inc_by(stats.bytes_before.saturating_sub(stats.bytes_after));
            }
            Some((_, Err(_))) => self.log_cleaner_runs.with_label_values(&["failed"]).inc(),
        }
    }

    /// Counts the leader changes between the last image seen and `image`.
    /// Called for each image the node applies.
    pub(crate) fn observe_image(&self, image: &Arc<MetadataImage>) {
        let mut last = self.last_image.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(previous) = last.as_ref() {
            if previous.version >= image.version {
                return;
            }
            for topic in image.topics() {
                let Some(before) = previous.topic_by_id(&topic.topic_id) else {
                    continue;
                };
                for (now, then) in topic.partitions.iter().zip(&before.partitions) {
                    if now.leader == then.leader {
                        continue;
                    }
                    let kind = if now.leader < 0 {
                        "offline"
                    } else if then.isr.contains(&now.leader) {
                        "clean"
                    } else {
                        "unclean"
                    };
                    self.leader_elections.with_label_values(&[kind]).inc();
                }
            }
        }
        *last = Some(Arc::clone(image));
    }

    /// What counts the ISR changes this node proposed and had committed:
    /// called with (shrunk, expanded).
    pub fn isr_change_counter(&self) -> Arc<dyn Fn(bool, bool) + Send + Sync> {
        let (shrinks, expands) = (self.isr_shrinks.clone(), self.isr_expands.clone());
        Arc::new(move |shrunk, expanded| {
            if shrunk {
                shrinks.inc();
            }
            if expanded {
                expands.inc();
            }
        })
    }

    fn api(&self, api_key: ApiKey) -> Option<&ApiMetrics> {
        self.apis.get(api_key as usize).and_then(Option::as_ref)
    }

    /// Counts a request as it arrives (before its handler runs).
    pub(crate) fn request_received(&self, api_key: ApiKey, version: i16) {
        let Some(api) = self.api(api_key) else {
            return;
        };
        let counter = match api.slot(version) {
            Some(slot) => slot.get_or_init(|| {
                self.requests
                    .with_label_values(&[api.name.as_str(), &version.to_string()])
            }),
            None => api.requests_unsupported.get_or_init(|| {
                self.requests
                    .with_label_values(&[api.name.as_str(), "unsupported"])
            }),
        };
        counter.inc();
    }

    /// Records a request's latency once its answer is written (or, for an
    /// acks=0 produce, once it is appended).
    pub(crate) fn request_answered(&self, api_key: ApiKey, received: Instant) {
        let Some(api) = self.api(api_key) else {
            return;
        };
        api.duration
            .get_or_init(|| {
                self.request_duration
                    .with_label_values(&[api.name.as_str()])
            })
            .observe(received.elapsed().as_secs_f64());
    }

    /// Counts `count` occurrences of error `code` in answers to `api_key`.
    pub(crate) fn request_error(&self, api_key: ApiKey, version: i16, code: i16, count: u64) {
        let Some(api) = self.api(api_key) else {
            return;
        };
        let version = match api.slot(version) {
            Some(_) => version.to_string(),
            None => "unsupported".to_string(),
        };
        self.request_errors
            .with_label_values(&[api.name.as_str(), &version, &error_name(code)])
            .inc_by(count);
    }

    /// Counts the non-zero error codes in an answer, at every level the
    /// answer has them (the whole request, a topic, a partition, a group).
    pub(crate) fn response_errors(&self, api_key: ApiKey, version: i16, body: &ResponseKind) {
        let mut codes = ErrorTally::default();
        response_errors::for_each_code(body, |code| codes.add(code));
        for (code, count) in codes.0 {
            self.request_error(api_key, version, code, count);
        }
    }

    /// Counts a Fetch answer's error codes, and returns the bytes it will
    /// send per topic, counted once they are sent ([`FetchBytesOut::sent`]).
    pub(crate) fn fetch_answer(&self, version: i16, answer: &FetchAnswer) -> FetchBytesOut {
        let mut codes = ErrorTally::default();
        codes.add(answer.error_code);
        let mut out = Vec::new();
        for topic in &answer.topics {
            let mut bytes = 0u64;
            for partition in &topic.partitions {
                codes.add(partition.error_code);
                bytes += partition.records.iter().map(|r| r.0.len).sum::<u64>();
            }
            if bytes > 0 {
                out.push((
                    self.topic_bytes_out
                        .with_label_values(&[topic.topic.as_str()]),
                    bytes,
                ));
            }
        }
        for (code, count) in codes.0 {
            self.request_error(ApiKey::Fetch, version, code, count);
        }
        FetchBytesOut(out)
    }

    /// Counts one Produce request's appends to `topic`.
    pub(crate) fn produced(&self, topic: &str, bytes: u64, records: u64) {
        self.topic_bytes_in
            .with_label_values(&[topic])
            .inc_by(bytes);
        self.topic_messages_in
            .with_label_values(&[topic])
            .inc_by(records);
    }

    /// Counts a client connection open until the guard is dropped.
    pub(crate) fn connection_opened(&self) -> OpenConnection {
        self.connections_open.inc();
        OpenConnection(self.connections_open.clone())
    }

    pub(crate) fn connection_closed(&self, reason: CloseReason) {
        self.connections_closed
            .with_label_values(&[reason.label()])
            .inc();
    }

    /// The hook `rill-storage` reports each log flush's duration to.
    pub(crate) fn flush_observer(&self) -> Arc<dyn FlushObserver> {
        Arc::new(FlushMetric(self.log_flush_duration.clone()))
    }

    /// Drops the per-topic series of topics the image no longer has, so
    /// that topics made and deleted over and over do not grow the output
    /// (a topic made again starts from zero, as in Kafka). Done at scrape
    /// time: its cost is one pass over the series, too much for every
    /// metadata change when thousands of topics are made one by one.
    fn forget_deleted_topics(&self, image: &MetadataImage) {
        for vec in [
            &self.topic_bytes_in,
            &self.topic_messages_in,
            &self.topic_bytes_out,
        ] {
            for family in vec.collect() {
                for metric in family.get_metric() {
                    let Some(topic) = metric.get_label().first().map(|l| l.value()) else {
                        continue;
                    };
                    if image.topic(topic).is_none() {
                        // Already gone if two updates race: nothing to do.
                        let _ = vec.remove_label_values(&[topic]);
                    }
                }
            }
        }
    }

    /// The text exposition of every metric: the counters kept so far and
    /// the broker's state read now. Blocking (it takes the logs' and the
    /// group coordinator's locks briefly).
    pub(crate) fn render(&self, sources: &Sources<'_>) -> Vec<u8> {
        let image = sources.metadata.image();
        self.forget_deleted_topics(&image);
        let mut families = self.registry.gather();
        families.extend(state_families(sources, &image));
        families.retain(|family| !family.get_metric().is_empty());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into memory fails only for an empty or unnamed family,
        // which the line above and the registry rule out.
        if let Err(error) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(%error, "cannot encode metrics");
        }
        out
    }
}

/// Error codes counted in one answer, so that a label set is looked up
/// once per distinct code rather than once per partition. Allocates only
/// when the answer has an error.
#[derive(Default)]
struct ErrorTally(Vec<(i16, u64)>);

impl ErrorTally {
    fn add(&mut self, code: i16) {
        if code == 0 {
            return;
        }
        match self.0.iter_mut().find(|(c, _)| *c == code) {
            Some((_, count)) => *count += 1,
            None => self.0.push((code, 1)),
        }
    }
}

/// A Fetch answer's bytes per topic, counted once sent.
pub(crate) struct FetchBytesOut(Vec<(IntCounter, u64)>);

impl FetchBytesOut {
    pub(crate) fn sent(self) {
        for (counter, bytes) in self.0 {
            counter.inc_by(bytes);
        }
    }
}

/// An open client connection, counted until dropped.
pub(crate) struct OpenConnection(IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Debug)]
struct FlushMetric(Histogram);

impl FlushObserver for FlushMetric {
    fn flushed(&self, elapsed: Duration) {
        self.0.observe(elapsed.as_secs_f64());
    }
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge")
}

/// What the gauges read at scrape time: the parts of a node they need.
pub(crate) struct Sources<'a> {
    pub node_id: rill_types::NodeId,
    pub metadata: &'a dyn MetadataClient,
    pub replicas: &'a ReplicaManager,
    pub groups: &'a GroupCoordinator,
    pub txns: &'a TransactionCoordinator,
}

/// The gauges read from the broker's state at scrape time.
fn state_families(sources: &Sources<'_>, image: &MetadataImage) -> Vec<MetricFamily> {
    let node_id = sources.node_id;
    let partitions = sources.replicas.all();

    let partition_count = IntGauge::new(
        "rill_partitions",
        "Partitions this node holds a replica of (internal topics included).",
    )
    .expect("valid gauge");
    partition_count.set(partitions.len() as i64);
    let under_replicated = IntGauge::new(
        "rill_under_replicated_partitions",
        "Partitions this node leads with fewer in-sync replicas than replicas.",
    )
    .expect("valid gauge");
    let log_size = gauge_vec(
        "rill_log_size_bytes",
        "Bytes in a partition's log segments.",
        &["topic", "partition"],
    );
    let log_end = gauge_vec(
        "rill_log_end_offset",
        "The offset the next record appended to a partition will get.",
        &["topic", "partition"],
    );
    let log_start = gauge_vec(
        "rill_log_start_offset",
        "A partition's first offset still in its log.",
        &["topic", "partition"],
    );
    let follower_lag = gauge_vec(
        "rill_replica_follower_lag",
        "As leader: how many offsets a follower's log end is behind this node's.",
        &["topic", "partition", "follower"],
    );
    let lso_lag = gauge_vec(
        "rill_partition_lso_lag",
        "As leader: a partition's high watermark minus its last stable offset, the offsets \
         read_committed consumers cannot read yet because a transaction is open there (or \
         its marker is not yet replicated).",
        &["topic", "partition"],
    );
    let mut under = 0;
    for partition in &partitions {
        let topic = partition.tp.topic.as_str();
        let index = partition.tp.partition.to_string();
        let labels = [topic, index.as_str()];
        log_size
            .with_label_values(&labels)
            .set(i64::try_from(partition.log.size_bytes()).unwrap_or(i64::MAX));
        log_end
            .with_label_values(&labels)
            .set(partition.log.log_end_offset());
        log_start
            .with_label_values(&labels)
            .set(partition.log.log_start_offset());
        for (follower, lag) in partition.follower_lag() {
            let follower = follower.to_string();
            follower_lag
                .with_label_values(&[topic, index.as_str(), follower.as_str()])
                .set(lag);
        }
        // One read of the partition's state: leader, ISR and replicas
        // together, as the last image applied had them.
        let state = partition.state();
        if state.leader == node_id && state.isr.len() < state.replicas.len() {
            under += 1;
        }
        if state.leader == node_id {
            // The last stable offset reads the high watermark again; one
            // that moved in between would make the lag negative, shown as 0.
            let high_watermark = partition.high_watermark();
            let lag = high_watermark - partition.last_stable_offset();
            lso_lag.with_label_values(&labels).set(lag.max(0));
        }
    }
    under_replicated.set(under);

    let committed = gauge_vec(
        "rill_consumer_group_committed_offset",
        "A consumer group's committed offset of a partition (groups this node coordinates).",
        &["group", "topic", "partition"],
    );
    let lag = gauge_vec(
        "rill_consumer_group_lag",
        "Records a consumer group has yet to read in a partition: the high watermark \
         (the log end with one replica) minus the committed offset.",
        &["group", "topic", "partition"],
    );
    for (group, topic, index, offset) in sources.groups.committed_offsets() {
        let index_label = index.to_string();
        let labels = [group.as_str(), topic.as_str(), index_label.as_str()];
        committed.with_label_values(&labels).set(offset);
        // Lag needs the partition's end, which only its leader knows; a
        // negative committed offset (-1: none) has no lag to speak of.
        if let Some(partition) = sources.replicas.get(&topic, index) {
            if offset >= 0 {
                let end = partition.high_watermark();
                lag.with_label_values(&labels).set((end - offset).max(0));
            }
        }
    }

    let controller_active = IntGauge::new(
        "rill_controller_active",
        "1 if this node is the active controller (the quorum's leader), else 0.",
    )
    .expect("valid gauge");
    controller_active.set(i64::from(sources.metadata.is_active()));
    let fenced = IntGauge::new(
        "rill_fenced_brokers",
        "Registered brokers that are fenced: they lead nothing and are not offered to clients.",
    )
    .expect("valid gauge");
    fenced.set(image.brokers().filter(|b| b.fenced).count() as i64);
    let metadata_offset = IntGauge::new(
        "rill_metadata_offset",
        "How far into the controller's metadata log this node's image is.",
    )
    .expect("valid gauge");
    metadata_offset.set(i64::try_from(image.version).unwrap_or(i64::MAX));

    let txns = sources.txns.counts();
    let txns_ongoing = IntGauge::new(
        "rill_transactions_ongoing",
        "Transactions open among the transactional ids this node coordinates: Ongoing, or \
         decided (PrepareCommit, PrepareAbort) with their markers still being written.",
    )
    .expect("valid gauge");
    txns_ongoing.set(i64::try_from(txns.ongoing).unwrap_or(i64::MAX));
    let txns_committed = IntCounter::new(
        "rill_transactions_committed_total",
        "Transactions this node, as their coordinator, completed as committed (every \
         partition has its marker and the completion is written).",
    )
    .expect("valid counter");
    txns_committed.inc_by(txns.committed);
    let txns_aborted = IntCounter::new(
        "rill_transactions_aborted_total",
        "Transactions this node, as their coordinator, completed as aborted (by their \
         producer, a timeout or a fence).",
    )
    .expect("valid counter");
    txns_aborted.inc_by(txns.aborted);

    let pressure = sources.replicas.disk_pressure();
    let disk_pressure = IntGauge::new(
        "rill_disk_pressure",
        "1 while an append on this node took 10 ms or more in the last second (the disk \
         pushing back): client and coordinator appends then run on their partitions' I/O threads.",
    )
    .expect("valid gauge");
    disk_pressure.set(i64::from(pressure.is_on()));
    let appends_moved = IntCounter::new(
        "rill_appends_on_io_threads_total",
        "Client and coordinator appends run on their partition's I/O thread: because the \
         disk pushed back (see rill_disk_pressure), behind an earlier append queued there, \
         or always (--appends-on-io-threads); the others run where the request is handled.",
    )
    .expect("valid counter");
    appends_moved.inc_by(pressure.appends_moved());

    let mut families = Vec::new();
    families.extend(controller_active.collect());
    families.extend(fenced.collect());
    families.extend(metadata_offset.collect());
    families.extend(partition_count.collect());
    families.extend(under_replicated.collect());
    families.extend(log_size.collect());
    families.extend(log_end.collect());
    families.extend(log_start.collect());
    families.extend(follower_lag.collect());
    families.extend(committed.collect());
    families.extend(lag.collect());
    families.extend(lso_lag.collect());
    families.extend(txns_ongoing.collect());
    families.extend(txns_committed.collect());
    families.extend(txns_aborted.collect());
    families.extend(disk_pressure.collect());
    families.extend(appends_moved.collect());
    families
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_are_kafkas() {
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(1), "OFFSET_OUT_OF_RANGE");
        assert_eq!(error_name(56), "KAFKA_STORAGE_ERROR");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_name(i16::MAX), format!("UNKNOWN_CODE_{}", i16::MAX));
    }

    #[test]
    fn requests_count_per_version_and_unsupported_versions_share_one_series() {
        let metrics = Metrics::new();
        metrics.request_received(ApiKey::Metadata, 12);
        metrics.request_received(ApiKey::Metadata, 12);
        metrics.request_received(ApiKey::ApiVersions, 99);
        metrics.request_received(ApiKey::ApiVersions, 100);
        metrics.request_received(ApiKey::ApiVersions, i16::MIN);
        let text = String::from_utf8(metrics.registry_text()).unwrap();
        assert!(
            text.contains("rill_requests_total{api=\"Metadata\",version=\"12\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("rill_requests_total{api=\"ApiVersions\",version=\"unsupported\"} 3\n"),
            "{text}"
        );
    }

    impl Metrics {
        fn registry_text(&self) -> Vec<u8> {
            let mut out = Vec::new();
            TextEncoder::new()
                .encode(&self.registry.gather(), &mut out)
                .unwrap();
            out
        }
    }
}
