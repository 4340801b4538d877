//! The follower side of replication (DESIGN.md §7): one fetcher per leader
//! broker, carrying every partition this node follows from it, and the
//! leader-side ISR task that proposes ISR changes to the controller.
//!
//! A fetcher's round, for the partitions it carries:
//! 1. **Truncation**, once per leader epoch (KIP-101/KIP-279): it asks the
//!    leader with OffsetForLeaderEpoch where this log's latest epoch ends in
//!    the leader's log, and cuts this log there, exactly; when the leader
//!    knows a smaller epoch only, it cuts to where that epoch ends here and
//!    asks again. So no replica keeps a record its leader does not have.
//! 2. **Fetch** from the log end (Fetch v12 with `replica_id`): the leader's
//!    batches are appended as they are ([`Partition::append_as_follower`]),
//!    **fsynced**, and only then is the next fetch sent — the fetch offset is
//!    what the leader takes as this replica's log end, so what the leader
//!    counts towards its high watermark is durable here. The leader's high
//!    watermark and log start come back in the answer and are taken.
//!
//! Errors that say the leadership moved (NOT_LEADER_OR_FOLLOWER, a fenced
//! or unknown epoch) park the partition until the metadata changes; the
//! connection is re-opened with a backoff when it fails.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, FetchResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rill_controller::{MetadataCommand, MetadataImage};
use rill_storage::batch::BatchHeader;
use rill_types::{NodeId, TopicPartition};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::disk::DiskError;
use crate::peer::PeerConnection;
use crate::replica::{AppendError, IsrChange, Partition, PendingFlush, ReplicaManager};

/// What replication uses of a node — its id, its replicas, the committed
/// metadata and the controller to propose ISR changes to, and a counter of
/// those changes — and nothing else of it, so that the fetchers and the
/// ISR task can run (and be tested) without a whole broker.
#[derive(Clone)]
pub struct ReplicationContext {
    pub node_id: NodeId,
    pub replicas: Arc<ReplicaManager>,
    pub controller: Arc<dyn crate::metadata::MetadataClient>,
    /// `replica.lag.time.max.ms`.
    pub lag_max: Duration,
    /// Told of each committed ISR change: (shrunk, expanded).
    pub isr_changed: Arc<dyn Fn(bool, bool) + Send + Sync>,
}

/// Fetch v12: the newest this broker serves, with `replica_id` and the
/// current leader epoch per partition.
const FETCH_VERSION: i16 = 12;
/// OffsetForLeaderEpoch v4 (flexible, with `replica_id`).
const OFFSET_FOR_LEADER_EPOCH_VERSION: i16 = 4;
/// How long the leader may hold a fetch with nothing new
/// (`replica.fetch.wait.max.ms`).
const FETCH_WAIT: Duration = Duration::from_millis(500);
/// `replica.fetch.max.bytes` and `replica.fetch.response.max.bytes`.
const PARTITION_FETCH_BYTES: i32 = 1024 * 1024;
const RESPONSE_FETCH_BYTES: i32 = 10 * 1024 * 1024;
/// The answer timeout beyond the fetch's own wait.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Backoff after a failed connection or a refused partition
/// (`replica.fetch.backoff.ms`).
const BACKOFF: Duration = Duration::from_millis(500);
/// How often the leader looks for ISR changes to propose.
const ISR_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// One partition a fetcher carries.
#[derive(Debug, Clone)]
struct Followed {
    partition: Arc<Partition>,
    /// The leader epoch this node follows in: sent as the current epoch,
    /// so a deposed leader refuses rather than answers.
    leader_epoch: i32,
    /// Whether this log was cut where it diverges from the leader's, in
    /// this epoch.
    truncated: bool,
    /// Not fetched before this (the leader refused it).
    parked_until: Option<Instant>,
}

/// A running fetcher: its partitions, shared with the task.
#[derive(Debug)]
struct Fetcher {
    addr: String,
    partitions: Arc<Mutex<BTreeMap<TopicPartition, Followed>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Follows the applied images: starts, updates and stops one fetcher per
/// leader broker so that every partition this node follows is fetched
/// from its current leader.
pub async fn run_fetchers(cx: ReplicationContext, shutdown: CancellationToken) {
    let mut images = cx.replicas.subscribe_images();
    let mut fetchers: HashMap<NodeId, Fetcher> = HashMap::new();
    loop {
        let image = cx.controller.image();
        reconcile(&cx, &image, &mut fetchers, &shutdown);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = images.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            // Partitions opened late (or a broker that re-registered at
            // another address) are picked up within a second.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    for (_, fetcher) in fetchers.drain() {
        fetcher.stop.cancel();
        let _ = fetcher.task.await;
    }
}

fn reconcile(
    cx: &ReplicationContext,
    image: &MetadataImage,
    fetchers: &mut HashMap<NodeId, Fetcher>,
    shutdown: &CancellationToken,
) {
    let node_id = cx.node_id;
    let mut wanted: HashMap<NodeId, Vec<(Arc<Partition>, i32)>> = HashMap::new();
    for partition in cx.replicas.all() {
        let state = partition.state();
        if state.leader < 0 || state.leader == node_id || !state.replicas.contains(&node_id) {
            continue;
        }
        wanted
            .entry(state.leader)
            .or_default()
            .push((partition, state.leader_epoch));
    }
    // Fetchers whose leader no longer leads anything here, or moved.
    fetchers.retain(|leader, fetcher| {
        let addr = leader_addr(image, *leader);
        let keep = wanted.contains_key(leader) && addr.as_deref() == Some(fetcher.addr.as_str());
        if !keep {
            fetcher.stop.cancel();
        }
        keep
    });
    for (leader, partitions) in wanted {
        let Some(addr) = leader_addr(image, leader) else {
            continue;
        };
        let fetcher = fetchers.entry(leader).or_insert_with(|| {
            let shared = Arc::new(Mutex::new(BTreeMap::new()));
            let stop = shutdown.child_token();
            info!(leader, %addr, "starting a replica fetcher");
            let task = tokio::spawn(fetch_loop(
                cx.clone(),
                leader,
                addr.clone(),
                Arc::clone(&shared),
                stop.clone(),
            ));
            Fetcher {
                addr: addr.clone(),
                partitions: shared,
                stop,
                task,
            }
        });
        let mut shared = lock(&fetcher.partitions);
        let keep: HashMap<TopicPartition, (Arc<Partition>, i32)> = partitions
            .into_iter()
            .map(|(p, epoch)| (p.tp.clone(), (p, epoch)))
            .collect();
        // A new leader epoch (or a re-created partition) starts over, with
        // truncation first.
        shared.retain(|tp, followed| {
            keep.get(tp).is_some_and(|(partition, epoch)| {
                *epoch == followed.leader_epoch && Arc::ptr_eq(partition, &followed.partition)
            })
        });
        for (tp, (partition, leader_epoch)) in keep {
            shared.entry(tp).or_insert_with(|| Followed {
                partition,
                leader_epoch,
                truncated: false,
                parked_until: None,
            });
        }
    }
}

fn leader_addr(image: &MetadataImage, leader: NodeId) -> Option<String> {
    image
        .broker(leader)
        .filter(|b| !b.fenced)
        .map(|b| format!("{}:{}", b.host, b.port))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// One fetcher: rounds of truncation and fetch against one leader.
async fn fetch_loop(
    cx: ReplicationContext,
    leader: NodeId,
    addr: String,
    partitions: Arc<Mutex<BTreeMap<TopicPartition, Followed>>>,
    stop: CancellationToken,
) {
    let mut connection: Option<PeerConnection> = None;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let now = Instant::now();
        let due: Vec<Followed> = lock(&partitions)
            .values()
            .filter(|f| f.parked_until.is_none_or(|t| t <= now))
            .cloned()
            .collect();
        if due.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        }
        let conn = match connection.as_mut() {
            Some(conn) => conn,
            None => {
                let connected = tokio::select! {
                    _ = stop.cancelled() => return,
                    connected = PeerConnection::connect(&addr, format!("rill-replica-fetcher-{}", cx.node_id)) => connected,
                };
                match connected {
                    Ok(conn) => connection.insert(conn),
                    Err(error) => {
                        debug!(leader, %addr, %error, "cannot reach the leader; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(BACKOFF) => continue,
                        }
                    }
                }
            }
        };
        let round = tokio::select! {
            _ = stop.cancelled() => return,
            round = fetch_round(&cx, conn, &due) => round,
        };
        match round {
            Ok(outcomes) => {
                let mut shared = lock(&partitions);
                for (tp, outcome) in outcomes {
                    let Some(followed) = shared.get_mut(&tp) else {
                        continue;
                    };
                    match outcome {
                        Outcome::Truncated(epoch) if followed.leader_epoch == epoch => {
                            followed.truncated = true;
                        }
                        Outcome::Truncated(_) => {}
                        Outcome::Retruncate => followed.truncated = false,
                        Outcome::Park => followed.parked_until = Some(Instant::now() + BACKOFF),
                    }
                }
            }
            Err(error) => {
                debug!(leader, %addr, %error, "replica fetch failed; reconnecting");
                connection = None;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(BACKOFF) => {}
                }
            }
        }
    }
}

/// What a round decided for one partition.
#[derive(Debug)]
enum Outcome {
    /// Its log no longer diverges from the leader's, in this epoch.
    Truncated(i32),
    /// Ask the leader where the logs diverge (again).
    Retruncate,
    /// The leader refused it: wait for the metadata to change.
    Park,
}

async fn fetch_round(
    cx: &ReplicationContext,
    conn: &mut PeerConnection,
    due: &[Followed],
) -> Result<Vec<(TopicPartition, Outcome)>, String> {
    let mut outcomes = Vec::new();
    let (untruncated, ready): (Vec<&Followed>, Vec<&Followed>) =
        due.iter().partition(|f| !f.truncated);
    if !untruncated.is_empty() {
        outcomes.extend(truncate(cx, conn, &untruncated).await?);
    }
    if ready.is_empty() {
        return Ok(outcomes);
    }
    let request = fetch_request(cx.node_id, &ready);
    let response: FetchResponse = conn
        .send(request, FETCH_VERSION, FETCH_WAIT + ANSWER_TIMEOUT)
        .await?;
    if response.error_code != 0 {
        return Err(format!("fetch refused with error {}", response.error_code));
    }
    let by_tp: HashMap<(String, i32), &Followed> = ready
        .iter()
        .map(|f| {
            (
                (f.partition.tp.topic.to_string(), f.partition.tp.partition),
                *f,
            )
        })
        .collect();
    let mut answers = Vec::new();
    for topic in response.responses {
        let name = topic.topic.0.to_string();
        for data in topic.partitions {
            if let Some(followed) = by_tp.get(&(name.clone(), data.partition_index)) {
                answers.push(((*followed).clone(), data));
            }
        }
    }
    // Only records to append, or a log to cut or restart, need the
    // partition's I/O thread; the rest (most partitions of most rounds:
    // nothing new, or a refusal) is settled here without a thread switch.
    let (blocking, quick): (Vec<_>, Vec<_>) = answers
        .into_iter()
        .partition(|(_, data)| needs_io_thread(data));
    let mut applied: Vec<_> = quick
        .into_iter()
        .map(|(followed, data)| {
            let applied = apply_fetched(cx, &followed, data);
            (followed, Ok(applied))
        })
        .collect();
    let worker = cx.clone();
    applied.extend(
        each_on_io_thread(blocking, move |followed, data| {
            apply_fetched(&worker, followed, data)
        })
        .await,
    );
    // The appends are made durable before the round ends, so the next
    // fetch, which tells the leader this log's end, claims only what is
    // durable here. Each append queued its flush; they run at once on
    // their flush threads.
    let mut following = Vec::new();
    for (followed, applied) in applied {
        let tp = followed.partition.tp.clone();
        match applied {
            Err(_) => outcomes.push((tp, Outcome::Park)),
            Ok(Applied::Done(outcome)) => outcomes.extend(outcome.map(|o| (tp, o))),
            Ok(Applied::Follow {
                flush,
                leader_log_start,
                leader_high_watermark,
            }) => following.push((followed, flush, leader_log_start, leader_high_watermark)),
        }
    }
    for (followed, flush, leader_log_start, leader_high_watermark) in following {
        let partition = &followed.partition;
        let tp = &partition.tp;
        if let Some(flush) = flush {
            let flushed = match flush {
                Ok(flush) => flush.await,
                Err(error) => Err(error.into()),
            };
            if let Err(error) = flushed {
                warn!(topic = %tp.topic, partition = tp.partition, %error, "cannot flush fetched records");
                outcomes.push((tp.clone(), Outcome::Park));
                continue;
            }
        }
        if leader_log_start > partition.log.log_start_offset() {
            let replicas = Arc::clone(&cx.replicas);
            let moved = partition
                .on_io_thread(move |partition| {
                    replicas.follow_log_start(partition, leader_log_start)
                })
                .await;
            let failed = match moved {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(error) => Some(error.to_string()),
            };
            if let Some(error) = failed {
                warn!(topic = %tp.topic, partition = tp.partition, %error, "cannot follow the leader's log start");
            }
        }
        partition.follow_high_watermark(leader_high_watermark);
    }
    Ok(outcomes)
}

/// Runs `work` for each partition on the partition's I/O thread, every
/// job queued before any is awaited, so that partitions on different
/// threads are worked on at once.
async fn each_on_io_thread<A, R>(
    items: Vec<(Followed, A)>,
    work: impl Fn(&Followed, A) -> R + Send + Sync + 'static,
) -> Vec<(Followed, Result<R, DiskError>)>
where
    A: Send + 'static,
    R: Send + 'static,
{
    let work = Arc::new(work);
    let mut jobs = Vec::with_capacity(items.len());
    for (followed, arg) in items {
        let work = Arc::clone(&work);
        let partition = Arc::clone(&followed.partition);
        let job = {
            let followed = followed.clone();
            partition.submit_io(move |_| work(&followed, arg)).await
        };
        jobs.push((followed, job));
    }
    let mut done = Vec::with_capacity(jobs.len());
    for (followed, job) in jobs {
        let result = match job {
            Ok(job) => job.await,
            Err(error) => Err(error),
        };
        done.push((followed, result));
    }
    done
}

fn fetch_request(node_id: NodeId, ready: &[&Followed]) -> FetchRequest {
    let mut topics: BTreeMap<String, Vec<FetchPartition>> = BTreeMap::new();
    for followed in ready {
        let log = &followed.partition.log;
        topics
            .entry(followed.partition.tp.topic.to_string())
            .or_default()
            .push(
                FetchPartition::default()
                    .with_partition(followed.partition.tp.partition)
                    .with_current_leader_epoch(followed.leader_epoch)
                    .with_fetch_offset(log.log_end_offset())
                    .with_last_fetched_epoch(log.latest_epoch().unwrap_or(-1))
                    .with_log_start_offset(log.log_start_offset())
                    .with_partition_max_bytes(PARTITION_FETCH_BYTES),
            );
    }
    FetchRequest::default()
        .with_replica_id(BrokerId(node_id))
        .with_max_wait_ms(FETCH_WAIT.as_millis() as i32)
        .with_min_bytes(1)
        .with_max_bytes(RESPONSE_FETCH_BYTES)
        .with_session_epoch(-1)
        .with_topics(
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(name)))
                        .with_partitions(partitions)
                })
                .collect(),
        )
}

/// What the I/O thread did with one partition's part of a fetch answer.
enum Applied {
    /// Nothing more to do this round; the outcome for the fetcher, if any.
    Done(Option<Outcome>),
    /// Await the flush of what was appended (queued by the append, if
    /// anything was), then take the leader's log start and high
    /// watermark.
    Follow {
        flush: Option<Result<PendingFlush, DiskError>>,
        leader_log_start: i64,
        leader_high_watermark: i64,
    },
}

/// Whether [`apply_fetched`] may block on files for this answer: it has
/// records (almost always whole batches to append; [`apply_fetched`]
/// finds out), or its log must be cut or restarted.
fn needs_io_thread(data: &kafka_protocol::messages::fetch_response::PartitionData) -> bool {
    match data.error_code {
        0 => data
            .records
            .as_ref()
            .is_some_and(|records| !records.is_empty()),
        code => code == ResponseError::OffsetOutOfRange.code(),
    }
}

/// Appends one partition's fetched records, or handles the leader's
/// refusal. Blocking when [`needs_io_thread`] says so: it then runs on the
/// partition's I/O thread.
fn apply_fetched(
    cx: &ReplicationContext,
    followed: &Followed,
    data: kafka_protocol::messages::fetch_response::PartitionData,
) -> Applied {
    let partition = &followed.partition;
    let tp = &partition.tp;
    let code = data.error_code;
    if code == ResponseError::OffsetOutOfRange.code() {
        let end = partition.log.log_end_offset();
        if end < data.log_start_offset {
            // The leader deleted what this log would need next.
            info!(topic = %tp.topic, partition = tp.partition, end, leader_log_start = data.log_start_offset, "behind the leader's log start; restarting the log there");
            if let Err(error) = cx.replicas.restart_log_at(partition, data.log_start_offset) {
                warn!(topic = %tp.topic, partition = tp.partition, %error, "cannot restart the log");
                return Applied::Done(Some(Outcome::Park));
            }
            return Applied::Done(None);
        }
        // Past the leader's log end: cut to the leader's high watermark,
        // which the leader surely holds, and fetch from there.
        let to = data.high_watermark.max(partition.log.log_start_offset());
        info!(topic = %tp.topic, partition = tp.partition, end, to, "past the leader's log end; truncating to its high watermark");
        if let Err(error) = cx.replicas.truncate(partition, to) {
            warn!(topic = %tp.topic, partition = tp.partition, %error, "cannot truncate");
        }
        return Applied::Done(Some(Outcome::Park));
    }
    if code != 0 {
        debug!(topic = %tp.topic, partition = tp.partition, code, "the leader refused a replica fetch");
        return Applied::Done(Some(Outcome::Park));
    }
    let records = data.records.unwrap_or_default();
    let whole = whole_batches(&records);
    let mut flush = None;
    if !whole.is_empty() {
        match partition.append_as_follower(whole, followed.leader_epoch) {
            Ok(info) => flush = Some(partition.queue_flush(info.last_offset + 1)),
            Err(AppendError::NotLeader) => return Applied::Done(Some(Outcome::Park)),
            Err(AppendError::Storage(rill_storage::StorageError::Invalid { reason, .. })) => {
                // Records that do not start at this log's end: the logs
                // diverge after all; ask the leader again.
                warn!(topic = %tp.topic, partition = tp.partition, %reason, "fetched records do not follow this log");
                return Applied::Done(Some(Outcome::Retruncate));
            }
            Err(error) => {
                warn!(topic = %tp.topic, partition = tp.partition, %error, "cannot append fetched records");
                return Applied::Done(Some(Outcome::Park));
            }
        }
    }
    Applied::Follow {
        flush,
        leader_log_start: data.log_start_offset,
        leader_high_watermark: data.high_watermark,
    }
}

/// The complete batches at the front of a fetched record set (a leader may
/// end it with part of a batch).
fn whole_batches(records: &[u8]) -> &[u8] {
    let mut end = 0;
    while let Ok(header) = BatchHeader::parse(&records[end..]) {
        if end + header.size() > records.len() {
            break;
        }
        end += header.size();
    }
    &records[..end]
}

/// Cuts each partition's log where it diverges from the leader's.
async fn truncate(
    cx: &ReplicationContext,
    conn: &mut PeerConnection,
    untruncated: &[&Followed],
) -> Result<Vec<(TopicPartition, Outcome)>, String> {
    let mut outcomes = Vec::new();
    let mut asked: Vec<(&Followed, i32)> = Vec::new();
    for followed in untruncated {
        match followed.partition.log.latest_epoch() {
            // Nothing with an epoch here: nothing can diverge.
            None => outcomes.push((
                followed.partition.tp.clone(),
                Outcome::Truncated(followed.leader_epoch),
            )),
            Some(epoch) => asked.push((followed, epoch)),
        }
    }
    if asked.is_empty() {
        return Ok(outcomes);
    }
    let mut topics: BTreeMap<String, Vec<OffsetForLeaderPartition>> = BTreeMap::new();
    for (followed, epoch) in &asked {
        topics
            .entry(followed.partition.tp.topic.to_string())
            .or_default()
            .push(
                OffsetForLeaderPartition::default()
                    .with_partition(followed.partition.tp.partition)
                    .with_current_leader_epoch(followed.leader_epoch)
                    .with_leader_epoch(*epoch),
            );
    }
    let request = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(cx.node_id))
        .with_topics(
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    OffsetForLeaderTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(name)))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    let response: OffsetForLeaderEpochResponse = conn
        .send(request, OFFSET_FOR_LEADER_EPOCH_VERSION, ANSWER_TIMEOUT)
        .await?;
    let mut answers = Vec::new();
    for topic in response.topics {
        let name = topic.topic.to_string();
        for answer in topic.partitions {
            if let Some((followed, _)) = asked.iter().find(|(f, _)| {
                f.partition.tp.topic.as_str() == name
                    && f.partition.tp.partition == answer.partition
            }) {
                answers.push(((*followed).clone(), answer));
            }
        }
    }
    let worker = cx.clone();
    let cut = each_on_io_thread(answers, move |followed, answer| {
        cut_where_diverging(&worker, followed, &answer)
    })
    .await;
    outcomes.extend(cut.into_iter().map(|(followed, outcome)| {
        // A truncation that did not run is tried again after a pause.
        (
            followed.partition.tp.clone(),
            outcome.unwrap_or(Outcome::Park),
        )
    }));
    Ok(outcomes)
}

/// KIP-279's rule for one partition, given the leader's answer for this
/// log's latest epoch. Blocking.
fn cut_where_diverging(
    cx: &ReplicationContext,
    followed: &Followed,
    answer: &kafka_protocol::messages::offset_for_leader_epoch_response::EpochEndOffset,
) -> Outcome {
    let partition = &followed.partition;
    let tp = &partition.tp;
    if answer.error_code != 0 {
        debug!(topic = %tp.topic, partition = tp.partition, code = answer.error_code, "the leader refused OffsetForLeaderEpoch");
        return Outcome::Park;
    }
    let log = &partition.log;
    let end = log.log_end_offset();
    let (to, done) = if answer.leader_epoch < 0 || answer.end_offset < 0 {
        // The leader knows no epoch this old (its log starts later, or is
        // empty): keep what is committed here and let the fetch sort out
        // the rest (an offset past the leader's end is cut to its high
        // watermark).
        (partition.high_watermark(), true)
    } else {
        let local = log.end_offset_for_epoch(answer.leader_epoch);
        if local.epoch == answer.leader_epoch {
            (answer.end_offset.min(local.end_offset), true)
        } else {
            // This log never had the leader's epoch: cut to where this
            // log's largest epoch below it ends, and ask again.
            (local.end_offset.max(log.log_start_offset()), false)
        }
    };
    if to < end {
        info!(
            topic = %tp.topic,
            partition = tp.partition,
            leader_epoch = answer.leader_epoch,
            leader_end_offset = answer.end_offset,
            from = end,
            to,
            "truncating to where the log diverges from the leader's"
        );
        if let Err(error) = cx.replicas.truncate(partition, to) {
            warn!(topic = %tp.topic, partition = tp.partition, %error, "cannot truncate");
            return Outcome::Park;
        }
    }
    if done {
        Outcome::Truncated(followed.leader_epoch)
    } else {
        Outcome::Retruncate
    }
}

/// The leader side: every [`ISR_CHECK_INTERVAL`], proposes the ISR changes
/// its partitions call for (AlterPartition), one in flight per partition.
/// A refused proposal (a stale partition epoch, a fenced replica) is
/// dropped; the next check proposes again on fresh metadata.
pub async fn run_isr_changes(cx: ReplicationContext, shutdown: CancellationToken) {
    let lag_max = cx.lag_max;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(ISR_CHECK_INTERVAL) => {}
        }
        for partition in cx.replicas.all() {
            let Some(change) = partition.isr_change(lag_max) else {
                continue;
            };
            let cx = cx.clone();
            tokio::spawn(async move { propose(&cx, &partition, change).await });
        }
    }
}

async fn propose(cx: &ReplicationContext, partition: &Partition, change: IsrChange) {
    let before = partition.state().isr;
    let IsrChange {
        tp,
        leader_epoch,
        partition_epoch,
        isr,
    } = change;
    let command = MetadataCommand::AlterPartition {
        topic_id: partition.topic_id,
        partition: tp.partition,
        leader: cx.node_id,
        leader_epoch,
        partition_epoch,
        isr: isr.clone(),
    };
    match cx.controller.submit(command).await {
        Ok(_) => {
            let shrunk = before.iter().any(|r| !isr.contains(r));
            let expanded = isr.iter().any(|r| !before.contains(r));
            info!(topic = %tp.topic, partition = tp.partition, ?before, after = ?isr, "ISR changed");
            (cx.isr_changed)(shrunk, expanded);
            // The image with the new ISR, applied by the metadata follower,
            // clears the pending change.
        }
        Err(error) => {
            debug!(topic = %tp.topic, partition = tp.partition, %error, "ISR change refused; will retry");
            partition.isr_change_failed();
        }
    }
}
