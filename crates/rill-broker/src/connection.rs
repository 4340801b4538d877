//! One client connection: frames in, requests dispatched in order, answers
//! written in the same order.
//!
//! Two tasks per connection. The reader takes frames off the socket, parses
//! each and runs its handler's ordered part (for Produce, the append; for
//! the group APIs, the group's decision and its `__consumer_offsets`
//! append); what a request still has to wait for (an fsync for acks=all or
//! a group change, data for a long-polling fetch, the end of a rebalance)
//! runs as its own task. So every effect a request has on the broker's
//! state happens in request order, as on Kafka's connections, which handle
//! one request at a time. The writer takes the pending answers in request
//! order, awaits each and writes it. So a pipelining client's waits
//! overlap, while its answers keep their order.
//!
//! A client that closes its side of the connection (the reader sees the
//! end of the stream, or a reset) is gone, as Kafka's network layer
//! treats it: the writer stops at once rather than wait for the answers
//! still owed (a long-polling fetch, a JoinGroup until its rebalance
//! ends), so the connection's slot is free again within moments. A
//! waiting Fetch is aborted (it only reads); every other wait runs on to
//! its end unanswered, because what follows it changes the broker's state
//! (a commit applied once durable, a group's sync completed).
//!
//! Metrics are counted here, where requests arrive and answers are
//! written: requests by API and version, latency from arrival to the
//! answer written, error codes in answers, Fetch bytes out per topic once
//! sent, open connections and why they closed.
//!
//! Bounds: a frame is at most `socket.request.max.bytes`; at most
//! `inflight_requests_per_connection_max` requests are read and not yet
//! answered (the reader stops reading until the writer catches up). Every
//! byte read is counted in the broker's request-bytes pool
//! (`queued.max.request.bytes`) before the next read, and stays counted
//! until its request's answer is written; while the pool has no room the
//! reader waits. So a connection is ahead of the pool by at most one read
//! (`READ_BUFFER_BYTES`), and a client that announces a large frame and
//! stalls holds only what it sent. A started frame must arrive whole within
//! `request.read.timeout.ms`, also while it waits for the pool: when the
//! pool is full of frames that their clients never finish, their deadlines
//! are what empties it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use rill_protocol::{
    decode_frame, encode_api_versions_unsupported, encode_fetch_response, encode_response,
    parse_request, FramePart, RequestError, SIZE_PREFIX_LEN,
};
use rill_storage::FileRegion;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn, Instrument};

use crate::handlers;
use crate::handlers::fetch::{FetchAnswer, Region};
use crate::metrics::CloseReason;
use crate::server::Broker;

/// The read buffer starts at this size and grows to the largest frame.
pub(crate) const READ_BUFFER_BYTES: usize = 64 * 1024;
/// The most the read buffer grows to at once for a frame announced but not
/// yet received; beyond it, it grows as the bytes arrive.
const FRAME_RESERVE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// What the reader needs to know of the writer to tell an idle connection:
/// answers not yet written, and when the last one was.
struct Activity {
    since: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `since` at which the last answer was written.
    last_answer_ms: AtomicU64,
}

impl Activity {
    fn answered(&self) {
        self.last_answer_ms
            .store(self.since.elapsed().as_millis() as u64, Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    fn last_answer(&self) -> Instant {
        self.since + Duration::from_millis(self.last_answer_ms.load(Ordering::Acquire))
    }
}

/// An answer the writer still has to write, in request order.
pub(crate) struct Pending {
    api_key: ApiKey,
    api_version: i16,
    correlation_id: i32,
    /// When the request was taken off the socket, for its latency.
    received: Instant,
    reply: Reply,
    /// The request's room in the request-bytes pool, given back when the
    /// answer is written (or given up).
    _request_bytes: Option<OwnedSemaphorePermit>,
}

/// How an answer becomes available.
pub(crate) enum Reply {
    /// Ready now. Boxed: response bodies are large and most answers wait
    /// in the queue only briefly.
    Ready(Box<ResponseKind>),
    /// Ready when the task finishes (acks=all produce, long-poll fetch).
    Later(JoinHandle<ResponseKind>),
    /// Already encoded as a whole frame.
    Encoded(Bytes),
    /// A Fetch answer, written with its records sent from the segment
    /// files. Dropped unanswered (its client gone), the fetch is aborted:
    /// a long poll must not outlive the connection it answers.
    Fetch(AbortOnDropHandle<FetchAnswer>),
}

/// An answer that waits: `wait` runs as its own task, after the reader has
/// run the request's ordered part (whatever built `wait`).
fn later(wait: impl Future<Output = ResponseKind> + Send + 'static) -> Reply {
    Reply::Later(tokio::spawn(wait.in_current_span()))
}

/// Takes `bytes` just read from the request-bytes pool, waiting while it
/// has no room (the connection reads nothing meanwhile), at most until
/// `deadline`.
async fn count_read(
    broker: &Broker,
    bytes: usize,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> Result<OwnedSemaphorePermit, CloseReason> {
    // At most one read's worth, which the pool always holds (see
    // `Broker::request_bytes`).
    let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
    let pool = &broker.request_bytes;
    if let Ok(permit) = Arc::clone(pool).try_acquire_many_owned(permits) {
        return Ok(permit);
    }
    debug!(
        bytes,
        "request bytes pool is full; reading paused (queued.max.request.bytes)"
    );
    tokio::select! {
        _ = shutdown.cancelled() => Err(CloseReason::Shutdown),
        _ = tokio::time::sleep_until(deadline.into()) => Err(CloseReason::ReadTimeout),
        permit = Arc::clone(pool).acquire_many_owned(permits) => {
            permit.map_err(|_| CloseReason::Shutdown)
        }
    }
}

/// What the reader does after one frame.
enum Next {
    Answer(Pending),
    /// Nothing to send (a Produce with acks=0).
    Nothing,
    /// Close the connection: the client broke the protocol (or, for an
    /// acks=0 produce that failed, must be told so).
    Close(CloseReason),
}

pub(crate) async fn serve(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let span = tracing::info_span!("connection", %peer);
    async move {
        debug!("accepted");
        let _open = broker.metrics.connection_opened();
        let _ = stream.set_nodelay(true);
        let (mut reader, writer) = stream.into_split();
        let (pending_tx, pending_rx) =
            mpsc::channel(broker.config.inflight_requests_per_connection_max);
        let activity = Arc::new(Activity {
            since: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_answer_ms: AtomicU64::new(0),
        });
        // Cancelled when the client has closed its side: the writer then
        // stops without waiting for the answers still owed.
        let client_gone = CancellationToken::new();
        let writer_task = tokio::spawn(
            write_answers(
                Arc::clone(&broker),
                writer,
                pending_rx,
                Arc::clone(&activity),
                client_gone.clone(),
            )
            .in_current_span(),
        );
        let mut last_read = Instant::now();
        // One timer, moved rather than recreated on every read.
        let idle_timer = tokio::time::sleep(broker.config.connections_max_idle);
        tokio::pin!(idle_timer);
        let read_timeout = broker.config.request_read_timeout;
        let read_timer = tokio::time::sleep(read_timeout);
        tokio::pin!(read_timer);

        let mut buf = BytesMut::with_capacity(READ_BUFFER_BYTES);
        // The bytes of `buf`, counted in the request-bytes pool. A decoded
        // frame takes its share with it, until its answer is written.
        let mut held: Option<OwnedSemaphorePermit> = None;
        // When the frame at the front of `buf` began to arrive, for
        // `request.read.timeout.ms`.
        let mut frame_started: Option<Instant> = None;
        let mut reason = CloseReason::Client;
        'connection: loop {
            loop {
                let frame = match decode_frame(&mut buf, broker.config.request_bytes_max) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(error) => {
                        info!(%error, "bad frame; closing the connection");
                        reason = CloseReason::BadFrame;
                        break 'connection;
                    }
                };
                frame_started = None;
                let request_bytes = held
                    .as_mut()
                    .and_then(|held| held.split(frame.len() + SIZE_PREFIX_LEN));
                // Every byte read was counted before the next read, so this
                // cannot be missing; if it were, the pool's count would be
                // wrong, and closing is safer than a panic.
                if request_bytes.is_none() {
                    warn!("a frame's bytes were not counted in the request pool (a bug); closing the connection");
                    reason = CloseReason::BadRequest;
                    break 'connection;
                }
                let frame = if frame.len() <= READ_BUFFER_BYTES {
                    // Copied out, so that a request kept until it is
                    // answered (a long-polling fetch) does not pin the read
                    // buffer it shared with other frames.
                    Bytes::copy_from_slice(&frame)
                } else {
                    // Read into an allocation of its own (reserved below);
                    // the next frames get a fresh buffer rather than the
                    // rest of this one, which would keep it all alive.
                    let mut fresh = BytesMut::with_capacity(READ_BUFFER_BYTES.max(buf.len()));
                    fresh.extend_from_slice(&buf);
                    buf = fresh;
                    frame.freeze()
                };
                match handle_frame(&broker, frame, peer).await {
                    Next::Answer(mut pending) => {
                        // The request's bytes stay counted until its answer
                        // is written: its parsed body may point into them.
                        pending._request_bytes = request_bytes;
                        activity.in_flight.fetch_add(1, Ordering::AcqRel);
                        // With the in-flight queue full (answers owed to a
                        // pipelining client) nothing more is read, so the
                        // end of the stream is watched for without reading.
                        let sent = tokio::select! {
                            sent = pending_tx.send(pending) => sent,
                            () = closed_by_peer(&mut reader) => {
                                debug!("closed by the client while its answers were queued");
                                client_gone.cancel();
                                break 'connection;
                            }
                        };
                        if sent.is_err() {
                            reason = CloseReason::WriteFailed;
                            break 'connection;
                        }
                    }
                    Next::Nothing => {}
                    Next::Close(why) => {
                        reason = why;
                        break 'connection;
                    }
                }
            }
            if buf.is_empty() {
                frame_started = None;
            } else if frame_started.is_none() {
                frame_started = Some(Instant::now());
            }
            // Read at most one buffer's worth at a time, and not past the
            // frame at the front once its size is known: what is read is
            // counted in the pool before the next read, so a connection is
            // ahead of the pool by at most one read.
            let read_max = match buf.first_chunk::<SIZE_PREFIX_LEN>() {
                Some(prefix) => {
                    // Its size is already checked against the limit by
                    // `decode_frame`.
                    let frame_len = u32::from_be_bytes(*prefix) as usize + SIZE_PREFIX_LEN;
                    // Make room for the whole frame, so that a large request
                    // is read straight into place rather than grown and
                    // copied in steps. Up to a bound: a client that announces
                    // a huge frame and stalls must not make the broker
                    // commit to its size.
                    let wanted = frame_len.min(FRAME_RESERVE_BYTES_MAX);
                    if buf.capacity() < wanted {
                        // A fresh allocation with only the bytes there
                        // copied: growing the buffer in place (realloc)
                        // copies, and so makes resident, all of its old
                        // capacity, 64 KiB for every client that announces
                        // a large frame and stalls.
                        let mut fresh = BytesMut::with_capacity(wanted);
                        fresh.extend_from_slice(&buf);
                        buf = fresh;
                    }
                    (frame_len - buf.len()).min(READ_BUFFER_BYTES)
                }
                None => {
                    buf.reserve(READ_BUFFER_BYTES.saturating_sub(buf.len()));
                    READ_BUFFER_BYTES - buf.len()
                }
            };
            let idle_max = broker.config.connections_max_idle;
            let last_activity = last_read.max(activity.last_answer());
            idle_timer.as_mut().reset((last_activity + idle_max).into());
            if let Some(started) = frame_started {
                read_timer.as_mut().reset((started + read_timeout).into());
            }
            let before = buf.len();
            let mut room = (&mut buf).limit(read_max);
            let read = tokio::select! {
                _ = shutdown.cancelled() => {
                    reason = CloseReason::Shutdown;
                    break;
                }
                read = reader.read_buf(&mut room) => read,
                _ = &mut read_timer, if frame_started.is_some() => {
                    info!(
                        timeout = ?read_timeout,
                        received = before,
                        "request not received whole in time; closing the connection (request.read.timeout.ms)"
                    );
                    reason = CloseReason::ReadTimeout;
                    break;
                }
                _ = &mut idle_timer => {
                    // Idle only if no answer is owed either: a long-polling
                    // fetch keeps its connection.
                    let quiet = activity.in_flight.load(Ordering::Acquire) == 0
                        && last_read.max(activity.last_answer()).elapsed() >= idle_max;
                    if quiet {
                        info!(idle = ?idle_max, "idle connection closed (connections.max.idle.ms)");
                        reason = CloseReason::Idle;
                        break;
                    }
                    // Look again one idle period from now: a connection closes
                    // between one and two idle periods after its last activity.
                    last_read = Instant::now();
                    continue;
                }
            };
            last_read = Instant::now();
            match read {
                Ok(0) => {
                    if !buf.is_empty() {
                        debug!(bytes = buf.len(), "closed in the middle of a frame");
                    }
                    client_gone.cancel();
                    break;
                }
                Ok(read) => {
                    frame_started.get_or_insert(last_read);
                    // Count what arrived; while the pool has no room for it
                    // nothing more is read. The frame's deadline still runs:
                    // if the pool is full of frames that their clients never
                    // finish, their deadlines are what empties it.
                    let deadline = frame_started.unwrap_or(last_read) + read_timeout;
                    match count_read(&broker, read, deadline, &shutdown).await {
                        Ok(permit) => match held.as_mut() {
                            Some(held) => held.merge(permit),
                            None => held = Some(permit),
                        },
                        Err(why) => {
                            if why == CloseReason::ReadTimeout {
                                info!(
                                    timeout = ?read_timeout,
                                    received = buf.len(),
                                    "request not received whole in time (waiting for queued.max.request.bytes); closing the connection (request.read.timeout.ms)"
                                );
                            }
                            reason = why;
                            break;
                        }
                    }
                }
                Err(error) => {
                    debug!(%error, "read failed");
                    client_gone.cancel();
                    break;
                }
            }
        }
        // The writer answers everything already read, then stops; or, if
        // the client is gone, stops now.
        drop(pending_tx);
        let _ = writer_task.await;
        broker.metrics.connection_closed(reason);
        debug!("closed");
    }
    .instrument(span)
    .await
}

/// Returns when the client has closed its side of the connection (end of
/// stream, or an error), found without consuming anything: only when the
/// next thing to read is the end. While unread bytes come first it never
/// returns (they must be read, in turn, before the end can be seen).
async fn closed_by_peer(reader: &mut OwnedReadHalf) {
    let mut byte = [0u8; 1];
    match reader.peek(&mut byte).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Parses one frame and runs the ordered part of its handler.
async fn handle_frame(broker: &Arc<Broker>, frame: Bytes, peer: SocketAddr) -> Next {
    let received = Instant::now();
    let request = match parse_request(frame) {
        Ok(request) => request,
        Err(RequestError::UnsupportedVersion {
            api_key: ApiKey::ApiVersions,
            correlation_id,
            api_version,
        }) => {
            broker
                .metrics
                .request_received(ApiKey::ApiVersions, api_version);
            let mut out = BytesMut::new();
            return match encode_api_versions_unsupported(correlation_id, &mut out) {
                Ok(()) => {
                    broker.metrics.request_error(
                        ApiKey::ApiVersions,
                        api_version,
                        ResponseError::UnsupportedVersion.code(),
                        1,
                    );
                    Next::Answer(Pending {
                        api_key: ApiKey::ApiVersions,
                        api_version,
                        correlation_id,
                        received,
                        reply: Reply::Encoded(out.freeze()),
                        _request_bytes: None,
                    })
                }
                Err(error) => {
                    warn!(%error, "cannot encode ApiVersions error");
                    Next::Close(CloseReason::WriteFailed)
                }
            };
        }
        Err(error) => {
            info!(%error, "unanswerable request; closing the connection");
            return Next::Close(CloseReason::BadRequest);
        }
    };
    if request.trailing_bytes > 0 {
        debug!(api_key = ?request.api_key, trailing = request.trailing_bytes, "request has bytes after its body; ignored");
    }
    let api_key = request.api_key;
    let api_version = request.api_version;
    let correlation_id = request.header.correlation_id;
    broker.metrics.request_received(api_key, api_version);
    tracing::trace!(?api_key, api_version, correlation_id, "request");
    let answer = |reply| {
        Next::Answer(Pending {
            api_key,
            api_version,
            correlation_id,
            received,
            reply,
            _request_bytes: None,
        })
    };
    let ready = |body| answer(Reply::Ready(Box::new(body)));
    let b = broker;
    let v = api_version;
    match request.body {
        RequestKind::ApiVersions(body) => ready(ResponseKind::ApiVersions(
            handlers::api_versions::handle(v, body),
        )),
        RequestKind::Metadata(body) => ready(ResponseKind::Metadata(
            handlers::metadata::handle(b, v, body).await,
        )),
        RequestKind::Produce(body) => match handlers::produce::handle(b, v, body).await {
            handlers::produce::Produced::NoAnswer => {
                // Done once appended: acks=0 gets no answer to wait for.
                broker.metrics.request_answered(api_key, received);
                Next::Nothing
            }
            handlers::produce::Produced::Close => {
                info!("acks=0 produce failed; closing the connection so the client notices");
                Next::Close(CloseReason::ProduceFailed)
            }
            handlers::produce::Produced::Ready(response) => ready(ResponseKind::Produce(response)),
            handlers::produce::Produced::Later(wait) => answer(Reply::Later(tokio::spawn(
                async move { ResponseKind::Produce(wait.await) }.in_current_span(),
            ))),
        },
        RequestKind::Fetch(body) => {
            let broker = Arc::clone(b);
            answer(Reply::Fetch(AbortOnDropHandle::new(tokio::spawn(
                handlers::fetch::handle(broker, v, body).in_current_span(),
            ))))
        }
        RequestKind::ListOffsets(body) => ready(ResponseKind::ListOffsets(
            handlers::list_offsets::handle(b, v, body).await,
        )),
        RequestKind::CreateTopics(body) => ready(ResponseKind::CreateTopics(
            handlers::create_topics::handle(b, v, body).await,
        )),
        RequestKind::DeleteTopics(body) => ready(ResponseKind::DeleteTopics(
            handlers::delete_topics::handle(b, v, body).await,
        )),
        RequestKind::DeleteRecords(body) => ready(ResponseKind::DeleteRecords(
            handlers::delete_records::handle(b, v, body).await,
        )),
        RequestKind::OffsetForLeaderEpoch(body) => ready(ResponseKind::OffsetForLeaderEpoch(
            handlers::offset_for_leader_epoch::handle(b, v, body),
        )),
        RequestKind::DescribeConfigs(body) => ready(ResponseKind::DescribeConfigs(
            handlers::describe_configs::handle(b, v, body),
        )),
        RequestKind::AlterConfigs(body) => ready(ResponseKind::AlterConfigs(
            handlers::alter_configs::handle(b, v, body).await,
        )),
        RequestKind::CreatePartitions(body) => ready(ResponseKind::CreatePartitions(
            handlers::create_partitions::handle(b, v, body).await,
        )),
        RequestKind::IncrementalAlterConfigs(body) => ready(ResponseKind::IncrementalAlterConfigs(
            handlers::incremental_alter_configs::handle(b, v, body).await,
        )),
        RequestKind::ElectLeaders(body) => ready(ResponseKind::ElectLeaders(
            handlers::elect_leaders::handle(b, v, body).await,
        )),
        RequestKind::AlterPartitionReassignments(body) => {
            ready(ResponseKind::AlterPartitionReassignments(
                handlers::alter_partition_reassignments::handle(b, v, body).await,
            ))
        }
        RequestKind::ListPartitionReassignments(body) => {
            ready(ResponseKind::ListPartitionReassignments(
                handlers::alter_partition_reassignments::list(b, v, body),
            ))
        }
        RequestKind::DescribeQuorum(body) => ready(ResponseKind::DescribeQuorum(
            handlers::describe_quorum::handle(b, v, body).await,
        )),
        RequestKind::DescribeCluster(body) => ready(ResponseKind::DescribeCluster(
            handlers::describe_cluster::handle(b, v, body),
        )),
        RequestKind::DescribeLogDirs(body) => ready(ResponseKind::DescribeLogDirs(
            handlers::describe_log_dirs::handle(b, v, body),
        )),
        RequestKind::DescribeTopicPartitions(body) => ready(ResponseKind::DescribeTopicPartitions(
            handlers::describe_topic_partitions::handle(b, v, body),
        )),
        RequestKind::InitProducerId(body) => ready(ResponseKind::InitProducerId(
            handlers::init_producer_id::handle(b, v, body).await,
        )),
        RequestKind::FindCoordinator(body) => ready(ResponseKind::FindCoordinator(
            handlers::find_coordinator::handle(b, v, body).await,
        )),
        RequestKind::JoinGroup(body) => {
            // The group takes the join here, in request order; the answer
            // waits for the rebalance, like an acks=all produce off the
            // connection's path.
            let client = handlers::join_group::ClientIdentity {
                client_id: request
                    .header
                    .client_id
                    .as_ref()
                    .map(|c| c.as_str().to_string())
                    .unwrap_or_default(),
                client_host: format!("/{}", peer.ip()),
            };
            let joined = handlers::join_group::handle(b, v, body, client);
            answer(later(async move { ResponseKind::JoinGroup(joined.await) }))
        }
        RequestKind::SyncGroup(body) => {
            let synced = handlers::sync_group::handle(b, v, body);
            answer(later(async move { ResponseKind::SyncGroup(synced.await) }))
        }
        RequestKind::Heartbeat(body) => ready(ResponseKind::Heartbeat(
            handlers::heartbeat::handle(b, v, body),
        )),
        RequestKind::LeaveGroup(body) => ready(ResponseKind::LeaveGroup(
            handlers::leave_group::handle(b, v, body),
        )),
        RequestKind::OffsetCommit(body) => {
            // Appended here, in request order, so that pipelined commits
            // take effect in the order they were sent; only the fsync is
            // waited for off the connection's path.
            let committed = handlers::offset_commit::handle(b, v, body);
            answer(later(
                async move { ResponseKind::OffsetCommit(committed.await) },
            ))
        }
        RequestKind::OffsetFetch(body) => ready(ResponseKind::OffsetFetch(
            handlers::offset_fetch::handle(b, v, body),
        )),
        RequestKind::DescribeGroups(body) => ready(ResponseKind::DescribeGroups(
            handlers::describe_groups::handle(b, v, body),
        )),
        RequestKind::ListGroups(body) => ready(ResponseKind::ListGroups(
            handlers::list_groups::handle(b, v, body),
        )),
        RequestKind::DeleteGroups(body) => {
            let deleted = handlers::delete_groups::handle(b, v, body);
            answer(later(
                async move { ResponseKind::DeleteGroups(deleted.await) },
            ))
        }
        RequestKind::OffsetDelete(body) => {
            let deleted = handlers::offset_delete::handle(b, v, body);
            answer(later(
                async move { ResponseKind::OffsetDelete(deleted.await) },
            ))
        }
        RequestKind::AddPartitionsToTxn(body) => {
            let broker = Arc::clone(b);
            answer(later(async move {
                ResponseKind::AddPartitionsToTxn(
                    handlers::add_partitions_to_txn::handle(&broker, v, body).await,
                )
            }))
        }
        RequestKind::AddOffsetsToTxn(body) => {
            let broker = Arc::clone(b);
            answer(later(async move {
                ResponseKind::AddOffsetsToTxn(
                    handlers::add_offsets_to_txn::handle(&broker, v, body).await,
                )
            }))
        }
        RequestKind::EndTxn(body) => {
            let broker = Arc::clone(b);
            answer(later(async move {
                ResponseKind::EndTxn(handlers::end_txn::handle(&broker, v, body).await)
            }))
        }
        RequestKind::DescribeTransactions(body) => ready(ResponseKind::DescribeTransactions(
            handlers::describe_transactions::handle(b, v, body),
        )),
        RequestKind::ListTransactions(body) => ready(ResponseKind::ListTransactions(
            handlers::list_transactions::handle(b, v, body),
        )),
        RequestKind::TxnOffsetCommit(body) => {
            // Appended here, in request order, as OffsetCommit.
            let committed = handlers::txn_offset_commit::handle(b, v, body);
            answer(later(async move {
                ResponseKind::TxnOffsetCommit(committed.await)
            }))
        }
        RequestKind::WriteTxnMarkers(body) => {
            let broker = Arc::clone(b);
            answer(later(async move {
                ResponseKind::WriteTxnMarkers(
                    handlers::write_txn_markers::handle(&broker, v, body).await,
                )
            }))
        }
        RequestKind::DescribeProducers(body) => ready(ResponseKind::DescribeProducers(
            handlers::describe_producers::handle(b, v, body),
        )),
        other => {
            // The version table let it through, so a handler must exist: a bug.
            warn!(api_key = ?api_key, "no handler for an advertised API; closing the connection");
            drop(other);
            Next::Close(CloseReason::BadRequest)
        }
    }
}

/// Writes a Fetch answer: the encoded parts with `write`, the records with
/// `sendfile` from their segment files (zero-copy).
async fn write_fetch(
    writer: &mut OwnedWriteHalf,
    version: i16,
    correlation_id: i32,
    answer: FetchAnswer,
) -> io::Result<()> {
    let parts = encode_fetch_response(version, correlation_id, answer)
        .map_err(|error| io::Error::other(error.to_string()))?;
    for part in parts {
        match part {
            FramePart::Bytes(bytes) => writer.write_all(&bytes).await?,
            FramePart::Records(Region(region)) => send_region(writer, &region).await?,
        }
    }
    Ok(())
}

/// Sends a file region to the socket with `sendfile(2)`, waiting for the
/// socket to be writable whenever it is full.
async fn send_region(writer: &mut OwnedWriteHalf, region: &FileRegion) -> io::Result<()> {
    let socket: &TcpStream = writer.as_ref();
    let mut position = region.position;
    let end = region.position + region.len;
    while position < end {
        socket.writable().await?;
        let remaining = usize::try_from(end - position).unwrap_or(usize::MAX);
        let sent = socket.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(socket, &*region.file, Some(&mut position), remaining)
                .map_err(io::Error::from)
        });
        match sent {
            // The file is shorter than the region: it was truncated after the
            // read. The frame's length is already on the wire, so the only
            // honest way out is to close the connection.
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "segment file ended before the fetched region",
                ))
            }
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Marks an answer as written (or given up) when dropped, whichever way
/// the writer's loop leaves it.
struct Answered<'a>(&'a Activity);

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        self.0.answered();
    }
}

/// Writes answers in request order until the reader is gone and every
/// pending answer is written, or the socket fails.
async fn write_answers(
    broker: Arc<Broker>,
    mut writer: OwnedWriteHalf,
    mut pending_rx: mpsc::Receiver<Pending>,
    activity: Arc<Activity>,
    client_gone: CancellationToken,
) {
    let mut out = BytesMut::with_capacity(READ_BUFFER_BYTES);
    loop {
        // Once the client is gone, nothing queued is worth waiting for:
        // the answers owed are dropped with the queue (`Reply::Fetch`).
        let pending = tokio::select! {
            biased;
            _ = client_gone.cancelled() => break,
            pending = pending_rx.recv() => match pending {
                Some(pending) => pending,
                None => break,
            },
        };
        let _answered = Answered(&activity);
        let api_key = pending.api_key;
        let written = tokio::select! {
            biased;
            _ = client_gone.cancelled() => {
                debug!(?api_key, "client gone; the answers it was owed are dropped");
                return;
            }
            written = write_answer(&broker, &mut writer, &mut out, pending) => written,
        };
        if written.is_err() {
            return;
        }
    }
    if !client_gone.is_cancelled() {
        let _ = writer.shutdown().await;
    }
}

/// Awaits one answer and writes it. `Err` closes the connection (the
/// reason is logged here).
async fn write_answer(
    broker: &Broker,
    writer: &mut OwnedWriteHalf,
    out: &mut BytesMut,
    pending: Pending,
) -> Result<(), ()> {
    let body = match pending.reply {
        Reply::Ready(body) => *body,
        Reply::Later(task) => match task.await {
            Ok(body) => body,
            Err(error) => {
                warn!(api_key = ?pending.api_key, %error, "request handler failed; closing the connection");
                return Err(());
            }
        },
        Reply::Encoded(frame) => {
            writer.write_all(&frame).await.map_err(|_| ())?;
            broker
                .metrics
                .request_answered(pending.api_key, pending.received);
            return Ok(());
        }
        Reply::Fetch(task) => {
            let answer = match task.await {
                Ok(answer) => answer,
                Err(error) => {
                    warn!(%error, "fetch handler failed; closing the connection");
                    return Err(());
                }
            };
            let bytes_out = broker.metrics.fetch_answer(pending.api_version, &answer);
            if let Err(error) =
                write_fetch(writer, pending.api_version, pending.correlation_id, answer).await
            {
                debug!(%error, "fetch response not written; closing the connection");
                return Err(());
            }
            bytes_out.sent();
            broker
                .metrics
                .request_answered(pending.api_key, pending.received);
            return Ok(());
        }
    };
    broker
        .metrics
        .response_errors(pending.api_key, pending.api_version, &body);
    out.clear();
    if let Err(error) = encode_response(
        pending.api_key,
        pending.api_version,
        pending.correlation_id,
        &body,
        out,
    ) {
        warn!(%error, "cannot encode a response; closing the connection");
        return Err(());
    }
    if let Err(error) = writer.write_all(out).await {
        debug!(%error, "write failed");
        return Err(());
    }
    broker
        .metrics
        .request_answered(pending.api_key, pending.received);
    Ok(())
}
