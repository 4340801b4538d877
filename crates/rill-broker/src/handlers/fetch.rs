//! Fetch (key 1): whole record batches from each requested partition, from
//! the fetch offset up to the high watermark, within the per-partition and
//! per-response byte limits. When fewer than `min_bytes` are available the
//! request waits (long-poll) until enough arrive or `max_wait_ms` passes;
//! an append to (or a high-watermark move of) one of its partitions wakes
//! it to count what was appended since its last look (the whole response
//! is read again only once there may be enough).
//!
//! The response is a [`FetchResponseOut`] whose records are file regions:
//! the connection writes them with `sendfile`, so record bytes never pass
//! through this process's memory.
//!
//! A fetch with `replica_id` set comes from a follower (DESIGN.md §7): it
//! reads up to the log end rather than the high watermark, and its fetch
//! offset tells the leader how far that follower's log reaches
//! ([`crate::replica::Partition::fetched_by_follower`]), which may move the
//! high watermark sent back in the same answer.
//!
//! Fetch from follower (KIP-392): from v11 a consumer may fetch from any
//! replica, which serves up to its own high watermark. A leader asked by a
//! consumer that names its rack (`rack_id`, librdkafka's `client.rack`)
//! that is not the leader's own names an in-sync replica in that rack as
//! `preferred_read_replica` instead of sending records (Kafka's
//! `RackAwareReplicaSelector`); the client then fetches there.
//!
//! Isolation (v4+): a read_uncommitted consumer reads to the high
//! watermark; a read_committed one only to the last stable offset (below
//! every transaction not yet decided), and gets the aborted transactions
//! among the records it reads, from the log's transaction index, so that
//! it can drop their records. Every answer carries the partition's LSO.
//!
//! Fetch sessions (KIP-227) are declined: the response's session id is 0,
//! so clients send full fetch requests, as the protocol allows.

use std::sync::Arc;
use std::time::Duration;

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::fetch_request::FetchPartition;
use rill_protocol::kafka_protocol::messages::FetchRequest;
use rill_protocol::{
    FetchPartitionOut, FetchResponseOut, FetchTopicOut, NodeEndpointOut, RecordSource,
};
use rill_storage::{FileRegion, StorageError};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{check_leader_epoch, KafkaError};
use crate::errors::storage_error_code;
use crate::server::Broker;

/// The longest a fetch waits, whatever the client asks.
const FETCH_WAIT_MAX: Duration = Duration::from_secs(5 * 60);

/// A byte range of a segment file, as the Fetch writer sees it.
#[derive(Debug, Clone)]
pub struct Region(pub FileRegion);

impl RecordSource for Region {
    fn byte_len(&self) -> u64 {
        self.0.len
    }
}

pub type FetchAnswer = FetchResponseOut<Region>;

pub async fn handle(broker: Arc<Broker>, version: i16, mut request: FetchRequest) -> FetchAnswer {
    normalize(&broker, version, &mut request);
    let bytes_max = if version >= 3 {
        usize::try_from(request.max_bytes).unwrap_or(0)
    } else {
        usize::MAX
    }
    .min(broker.config.fetch_bytes_max);
    prefetch_closed_segments(&broker, version, &request, bytes_max).await;
    let bytes_min = usize::try_from(request.min_bytes).unwrap_or(0);
    let wait =
        Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0)).min(FETCH_WAIT_MAX);
    let deadline = Instant::now() + wait;

    let wake = Arc::new(Notify::new());
    let mut _permit = None;
    let mut waiting: Option<Waiting> = None;
    loop {
        // A waiting fetch watches each of its partitions before it looks,
        // so an append between the look and the wait still wakes it; only
        // its own partitions' appends and high-watermark moves do (Kafka's
        // delayed-fetch purgatory). A wake reads only what was appended
        // since the last look, and the whole response only once there may
        // be enough.
        let look = match waiting.as_mut() {
            None => true,
            Some(waiting) => {
                watch(&broker, &request, &wake);
                waiting.enough(&broker, &request, bytes_min)
            }
        };
        if look {
            let (response, bytes, any_error) = read(&broker, version, &request, bytes_max);
            // As Kafka: `min_bytes` of 0 (or less) answers at once, data or not.
            if bytes >= bytes_min || any_error || Instant::now() >= deadline {
                return response;
            }
            if _permit.is_none() {
                match broker.fetch_waiting.try_acquire() {
                    Ok(permit) => _permit = Some(permit),
                    // Too many fetches waiting already: answer with what there is.
                    Err(_) => return response,
                }
            }
            if waiting.is_none() {
                // Watch, then count what arrived since this look.
                waiting = Some(Waiting::new(&request));
                continue;
            }
        }
        tokio::select! {
            _ = broker.shutdown.cancelled() => return read(&broker, version, &request, bytes_max).0,
            () = wake.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {
                return read(&broker, version, &request, bytes_max).0;
            }
        }
    }
}

/// A chunk of a warming read (see [`prefetch_closed_segments`]).
const PREFETCH_CHUNK_BYTES: usize = 256 * 1024;

/// Reads of closed segments (a consumer or follower far behind) are done
/// once on the partitions' I/O threads first, so that what the fetch then
/// reads and sends from this connection's async worker — the batch
/// headers `Log::read` scans and the records `sendfile` sends — is in the
/// page cache, and a cold disk read blocks an I/O thread rather than an
/// async worker (Kafka's network threads have this problem: KAFKA-7504,
/// whose fix warmed the pages on the request handler thread the same way).
/// Reads in the active segment, where consumers that keep up read, are
/// left alone: they are page-cache hits, and the thread switch would cost
/// them more than it saves (bench/README.md). The warming is a hint: its
/// errors are left to the real read.
async fn prefetch_closed_segments(
    broker: &Broker,
    version: i16,
    request: &FetchRequest,
    bytes_max: usize,
) {
    let replica_id = request.replica_id.0;
    let mut budget = bytes_max as u64;
    let mut jobs = Vec::new();
    'topics: for topic in &request.topics {
        let name = topic.topic.0.as_str();
        for fetch in &topic.partitions {
            let Some(partition) = broker.replicas.get(name, fetch.partition) else {
                continue;
            };
            let offset = fetch.fetch_offset;
            let servable = partition.is_leader() || (replica_id < 0 && version >= 11);
            if !servable || offset >= partition.log.active_segment_base_offset() {
                continue;
            }
            let wanted = u64::try_from(fetch.partition_max_bytes)
                .unwrap_or(0)
                .min(budget);
            if wanted == 0 {
                break 'topics;
            }
            budget -= wanted;
            let upper_bound = readable_end(&partition, replica_id, request.isolation_level);
            let job = partition
                .submit_io(move |partition| warm(partition, offset, wanted, upper_bound))
                .await;
            jobs.push(job);
        }
    }
    for job in jobs.into_iter().flatten() {
        let _ = job.await;
    }
}

/// Reads what a fetch from `offset` will send, so that it is in the page
/// cache. Blocking: runs on the partition's I/O thread.
fn warm(partition: &crate::replica::Partition, offset: i64, wanted: u64, upper_bound: i64) {
    use std::os::unix::fs::FileExt;
    let Ok(info) = partition.log.read(offset, wanted.max(1), upper_bound) else {
        return;
    };
    let mut chunk = vec![0u8; PREFETCH_CHUNK_BYTES.min(info.bytes as usize)];
    for region in &info.regions {
        let mut position = region.position;
        let end = region.position + region.len;
        while position < end {
            let len = chunk.len().min((end - position) as usize);
            match region.file.read_at(&mut chunk[..len], position) {
                Ok(0) | Err(_) => break,
                Ok(read) => position += read as u64,
            }
        }
    }
}

/// Brings a request of any version to the fields the rest of this module
/// reads: from v13 each topic's name is looked up from its id (an unknown
/// id leaves the name empty, answered UNKNOWN_TOPIC_ID), and from v15 the
/// follower's id is in `replica_state`.
fn normalize(broker: &Broker, version: i16, request: &mut FetchRequest) {
    if version >= 15 {
        request.replica_id = request.replica_state.replica_id;
    }
    if version >= 13 {
        let image = broker.controller.image();
        for topic in &mut request.topics {
            topic.topic = image.topic_by_id(&topic.topic_id).map_or_else(
                || super::wire_topic(""),
                |t| super::wire_topic(t.name.as_str()),
            );
        }
    }
}

/// Has `wake` notified at the next append or high-watermark move of any
/// partition `request` reads.
fn watch(broker: &Broker, request: &FetchRequest, wake: &Arc<Notify>) {
    for topic in &request.topics {
        let name = topic.topic.0.as_str();
        for p in &topic.partitions {
            if let Some(partition) = broker.replicas.get(name, p.partition) {
                partition.watch_fetch(wake);
            }
        }
    }
}

/// What a waiting fetch has counted of each requested partition (in
/// request order): where the records not yet counted begin, and the bytes
/// counted so far.
struct Waiting {
    next_offsets: Vec<i64>,
    bytes: u64,
}

impl Waiting {
    fn new(request: &FetchRequest) -> Waiting {
        let next_offsets = request
            .topics
            .iter()
            .flat_map(|topic| topic.partitions.iter().map(|p| p.fetch_offset))
            .collect();
        Waiting {
            next_offsets,
            bytes: 0,
        }
    }

    /// Counts the records appended since the last call; whether there may
    /// now be `bytes_min` to answer with (or something changed that the
    /// full read must answer, such as an error).
    fn enough(&mut self, broker: &Broker, request: &FetchRequest, bytes_min: usize) -> bool {
        let bytes_min = bytes_min as u64;
        let partitions = request.topics.iter().flat_map(|topic| {
            let name = topic.topic.0.as_str();
            topic.partitions.iter().map(move |p| (name, p.partition))
        });
        for ((topic, index), next_offset) in partitions.zip(&mut self.next_offsets) {
            let Some(partition) = broker.replicas.get(topic, index) else {
                return true;
            };
            let upper_bound =
                readable_end(&partition, request.replica_id.0, request.isolation_level);
            if *next_offset >= upper_bound {
                continue;
            }
            let wanted = bytes_min.saturating_sub(self.bytes).max(1);
            match partition.log.read(*next_offset, wanted, upper_bound) {
                Ok(info) => {
                    self.bytes += info.bytes;
                    *next_offset = info.next_offset;
                }
                Err(_) => return true,
            }
            if self.bytes >= bytes_min {
                return true;
            }
        }
        false
    }
}

/// One pass over every requested partition. Returns the response, the
/// record bytes in it, and whether any partition has an error (which
/// answers at once, as in Kafka).
fn read(
    broker: &Broker,
    version: i16,
    request: &FetchRequest,
    bytes_max: usize,
) -> (FetchAnswer, usize, bool) {
    let asker = Asker {
        replica_id: request.replica_id.0,
        follower_reads: version >= 11,
        rack: request.rack_id.as_str(),
        read_committed: request.replica_id.0 < 0 && request.isolation_level == READ_COMMITTED,
    };
    let mut total = 0usize;
    let mut any_error = false;
    let mut topics = Vec::with_capacity(request.topics.len());
    let mut leaders = std::collections::BTreeSet::new();
    for topic in &request.topics {
        let name = topic.topic.0.as_str();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for fetch in &topic.partitions {
            let read = if version >= 13 && name.is_empty() {
                Err((KafkaError::new(ResponseError::UnknownTopicId), -1, -1))
            } else {
                read_partition(broker, &asker, name, fetch, bytes_max, total)
            };
            let data = match read {
                Ok(data) => {
                    total += data
                        .records
                        .iter()
                        .map(|r| r.byte_len() as usize)
                        .sum::<usize>();
                    data
                }
                Err((error, log_start_offset, high_watermark)) => {
                    any_error = true;
                    // KIP-951, from v16: where the leader is now.
                    let current_leader = (version >= 16 && super::is_leadership_error(error.code))
                        .then(|| {
                            super::current_leader(&broker.controller.image(), name, fetch.partition)
                        })
                        .flatten();
                    if let Some((leader, _)) = current_leader {
                        leaders.insert(leader);
                    }
                    FetchPartitionOut {
                        partition_index: fetch.partition,
                        error_code: error.code,
                        high_watermark,
                        last_stable_offset: high_watermark,
                        log_start_offset,
                        preferred_read_replica: -1,
                        aborted_transactions: None,
                        current_leader,
                        records: Vec::new(),
                    }
                }
            };
            partitions.push(data);
        }
        topics.push(FetchTopicOut {
            topic: name.to_string(),
            topic_id: topic.topic_id,
            partitions,
        });
    }
    let node_endpoints = if leaders.is_empty() {
        Vec::new()
    } else {
        let image = broker.controller.image();
        leaders
            .into_iter()
            .filter_map(|id| image.broker(id))
            .map(|b| NodeEndpointOut {
                node_id: b.node_id,
                host: b.host.clone(),
                port: i32::from(b.port),
                rack: b.rack.clone(),
            })
            .collect()
    };
    let response = FetchResponseOut {
        throttle_time_ms: 0,
        error_code: 0,
        session_id: 0,
        topics,
        node_endpoints,
    };
    (response, total, any_error)
}

type PartitionError = (KafkaError, i64, i64);

/// Fetch's `isolation_level` for a read_committed consumer.
const READ_COMMITTED: i8 = 1;

/// Where a fetch may read to: the log end for a follower, the high
/// watermark for a read_uncommitted consumer, the last stable offset for a
/// read_committed one.
fn readable_end(partition: &crate::replica::Partition, replica_id: i32, isolation: i8) -> i64 {
    if replica_id >= 0 {
        partition.log.log_end_offset()
    } else if isolation == READ_COMMITTED {
        partition.last_stable_offset()
    } else {
        partition.high_watermark()
    }
}

/// Who asks, as far as it decides what a partition's answer is.
struct Asker<'a> {
    /// A follower's node id, or -1 for a consumer.
    replica_id: i32,
    /// Fetch v11+: a consumer may read from a follower.
    follower_reads: bool,
    /// The consumer's rack (`client.rack`), or empty.
    rack: &'a str,
    /// A consumer with isolation read_committed.
    read_committed: bool,
}

/// The in-sync replica in the consumer's rack that the leader sends it
/// to, if the leader's own rack is another.
fn preferred_read_replica(
    broker: &Broker,
    partition: &crate::replica::Partition,
    rack: &str,
) -> Option<i32> {
    if rack.is_empty() {
        return None;
    }
    let image = broker.controller.image();
    let in_rack = |id: i32| {
        image
            .broker(id)
            .is_some_and(|b| !b.fenced && b.rack.as_deref() == Some(rack))
    };
    if in_rack(broker.config.node_id) {
        return None;
    }
    partition
        .state()
        .isr
        .into_iter()
        .find(|id| *id != broker.config.node_id && in_rack(*id))
}

fn read_partition(
    broker: &Broker,
    asker: &Asker<'_>,
    topic: &str,
    fetch: &FetchPartition,
    bytes_max: usize,
    bytes_so_far: usize,
) -> Result<FetchPartitionOut<Region>, PartitionError> {
    let partition =
        super::hosted_partition(broker, topic, fetch.partition).map_err(|error| (error, -1, -1))?;
    let log = &partition.log;
    let fail = |error: KafkaError| (error, log.log_start_offset(), partition.high_watermark());
    let replica_id = asker.replica_id;
    let leading = partition.leader() == broker.config.node_id;
    if !leading && (replica_id >= 0 || !asker.follower_reads) {
        return Err(fail(KafkaError::new(ResponseError::NotLeaderOrFollower)));
    }
    check_leader_epoch(fetch.current_leader_epoch, partition.leader_epoch()).map_err(fail)?;
    if leading && replica_id < 0 && asker.follower_reads {
        if let Some(preferred) = preferred_read_replica(broker, &partition, asker.rack) {
            return Ok(FetchPartitionOut {
                partition_index: fetch.partition,
                error_code: 0,
                high_watermark: partition.high_watermark(),
                last_stable_offset: partition.last_stable_offset(),
                log_start_offset: log.log_start_offset(),
                preferred_read_replica: preferred,
                aborted_transactions: None,
                current_leader: None,
                records: Vec::new(),
            });
        }
    }
    if replica_id >= 0 {
        // A move of the high watermark wakes the consumers waiting.
        if partition
            .fetched_by_follower(replica_id, fetch.fetch_offset)
            .is_none()
        {
            return Err(fail(KafkaError::new(ResponseError::NotLeaderOrFollower)));
        }
    }
    let high_watermark = partition.high_watermark();
    let last_stable_offset = partition.last_stable_offset();
    let upper_bound = if replica_id >= 0 {
        log.log_end_offset()
    } else if asker.read_committed {
        last_stable_offset
    } else {
        high_watermark
    };

    let partition_max = usize::try_from(fetch.partition_max_bytes).unwrap_or(0);
    let room = bytes_max.saturating_sub(bytes_so_far).min(partition_max);
    let info = if room == 0 && bytes_so_far > 0 {
        None
    } else {
        // Only where the records are: they are sent from the files.
        match log.read(fetch.fetch_offset, room.max(1) as u64, upper_bound) {
            Ok(info) => Some(info),
            Err(error @ StorageError::OffsetOutOfRange { .. }) => {
                return Err(fail(KafkaError {
                    code: storage_error_code(&error),
                    message: None,
                }))
            }
            Err(error) => {
                tracing::warn!(topic, partition = fetch.partition, %error, "fetch failed");
                return Err(fail(KafkaError {
                    code: storage_error_code(&error),
                    message: None,
                }));
            }
        }
    };
    let log_start_offset = info
        .as_ref()
        .map_or_else(|| log.log_start_offset(), |i| i.log_start_offset);
    // The aborted transactions with records among those read (Kafka's
    // `collectAbortedTxns` up to the end of the read).
    // An empty read (a long poll looking again) has none, and skips the
    // log's lock.
    let aborted_transactions = asker.read_committed.then(|| {
        let end = info.as_ref().map_or(fetch.fetch_offset, |i| i.next_offset);
        if end <= fetch.fetch_offset {
            return Vec::new();
        }
        log.aborted_txns(fetch.fetch_offset, end)
            .into_iter()
            .map(|txn| (txn.producer_id, txn.first_offset))
            .collect()
    });
    let mut records: Vec<Region> = info
        .map(|i| i.regions.into_iter().map(Region).collect())
        .unwrap_or_default();
    // A batch larger than the room left is only returned as the first bytes
    // of the response, so that a consumer always makes progress.
    let bytes: u64 = records.iter().map(|r| r.byte_len()).sum();
    if bytes_so_far > 0 && bytes > room as u64 {
        records.clear();
    }
    Ok(FetchPartitionOut {
        partition_index: fetch.partition,
        error_code: 0,
        high_watermark,
        last_stable_offset,
        log_start_offset,
        preferred_read_replica: -1,
        aborted_transactions,
        current_leader: None,
        records,
    })
}
