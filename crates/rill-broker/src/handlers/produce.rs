//! Produce (key 0), in two stages. The first runs in request order on the
//! connection: validate and append every partition's batches. The second is
//! the wait acks=all needs — the group-committed fsync of the appended
//! batches here, then the high watermark passing them (every ISR member
//! has fetched them, which it does only once it has fsynced them) — and
//! runs on its own, so a pipelining producer's next request is appended
//! while this one waits. The wait is bounded by the request's `timeout_ms`.
//!
//! A transactional batch that would open a transaction in its partition is
//! first verified with the transaction coordinator (KIP-890 part 1: the
//! partition must have been added to the producer's ongoing transaction),
//! so that a late or stray write cannot start a transaction nobody will
//! ever end (a hanging transaction, which would hold the last stable
//! offset back for good). See `txn_verification`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rill_protocol::kafka_protocol::error::ResponseError;
use rill_protocol::kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse,
    TopicProduceResponse,
};
use rill_protocol::kafka_protocol::messages::{BrokerId, ProduceRequest, ProduceResponse};
use rill_storage::{InvalidRecord, StorageError};
use tracing::{debug, warn};

use super::KafkaError;
use crate::disk::DiskError;
use crate::errors::{append_error_code, flush_error_code, replication_error_code};
use crate::replica::{
    AppendError, ClientAppend, LeaderAppend, Partition, PendingFlush, VerificationGuard,
};
use crate::server::Broker;

/// The longest acks=all waits, whatever the request's `timeout_ms`.
const PRODUCE_WAIT_MAX: Duration = Duration::from_secs(5 * 60);

/// What the connection does with a produce request after its appends.
pub enum Produced {
    /// acks=0: the client expects no answer.
    NoAnswer,
    /// acks=0 and something failed: Kafka closes the connection so that
    /// the client notices (it gets no error code).
    Close,
    /// acks=1, or nothing to wait for.
    Ready(ProduceResponse),
    /// acks=all: the answer once the batches are durable.
    Later(Pin<Box<dyn Future<Output = ProduceResponse> + Send>>),
}

/// Why a partition's batches were refused: the error and, when a check of
/// single records failed, each record that failed it (KIP-467: Produce v8+
/// `record_errors`, by the record's position in its batch).
struct Rejected {
    error: KafkaError,
    record_errors: Vec<BatchIndexAndErrorMessage>,
}

impl From<KafkaError> for Rejected {
    fn from(error: KafkaError) -> Self {
        Self {
            error,
            record_errors: Vec::new(),
        }
    }
}

/// A partition whose append acks=all must see flushed and replicated.
struct Durable {
    partition: Arc<Partition>,
    /// Flush (the append queued it) and replicate everything below this
    /// offset.
    end_offset: i64,
    /// The epoch it was appended in: a new leader may not have it.
    leader_epoch: i32,
    /// Where its result is in the response: topic and partition position.
    topic_at: usize,
    partition_at: usize,
}

pub async fn handle(broker: &Arc<Broker>, _version: i16, request: ProduceRequest) -> Produced {
    let transactional_id = request
        .transactional_id
        .as_ref()
        .map(|id| id.0.as_str().to_string());
    let acks = request.acks;
    let timeout =
        Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0)).min(PRODUCE_WAIT_MAX);
    let valid_acks = matches!(acks, -1..=1);

    // Every partition's append is started first (here, or queued on the
    // partition's I/O thread while the disk pushes back) and only then
    // awaited, so that queued ones run at once on their threads.
    let mut topics = Vec::with_capacity(request.topic_data.len());
    for topic in request.topic_data {
        let name = topic.name.0.as_str().to_string();
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for data in topic.partition_data {
            let batch_bytes = data.records.as_ref().map_or(0, |r| r.len() as u64);
            let appending = if !valid_acks {
                Err(KafkaError::new(ResponseError::InvalidRequiredAcks).into())
            } else {
                match super::txn_verification::verify(
                    broker,
                    transactional_id.as_deref(),
                    &name,
                    data.index,
                    data.records.as_deref(),
                )
                .await
                {
                    Ok(verified) => {
                        submit_append(broker, &name, data.index, data.records, acks, verified).await
                    }
                    Err(error) => Err(error.into()),
                }
            };
            partitions.push((data.index, batch_bytes, appending));
        }
        topics.push((topic.name, name, partitions));
    }

    let mut durable = Vec::new();
    let mut any_error = false;
    let mut responses = Vec::with_capacity(topics.len());
    for (topic_at, (topic_name, name, partitions)) in topics.into_iter().enumerate() {
        let mut partition_responses = Vec::with_capacity(partitions.len());
        // This topic's appends, counted once per topic (metrics).
        let mut bytes_in = 0u64;
        let mut records_in = 0u64;
        for (partition_at, (index, batch_bytes, appending)) in partitions.into_iter().enumerate() {
            let mut response = PartitionProduceResponse::default()
                .with_index(index)
                .with_base_offset(-1)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(-1);
            let result = match appending {
                Ok((partition, appending)) => match appending.result().await {
                    Ok(appended) => Ok((partition, appended)),
                    Err(error) => Err(rejected(&name, index, &error)),
                },
                Err(rejected) => Err(rejected),
            };
            match result {
                Ok((
                    partition,
                    (
                        LeaderAppend {
                            info,
                            duplicate,
                            leader_epoch,
                        },
                        flush,
                    ),
                )) => {
                    if !duplicate {
                        bytes_in += batch_bytes;
                        records_in +=
                            u64::try_from(info.last_offset - info.base_offset + 1).unwrap_or(0);
                    }
                    response = response
                        .with_base_offset(info.base_offset)
                        .with_log_append_time_ms(info.log_append_time)
                        .with_log_start_offset(info.log_start_offset);
                    if let Some(flush) = flush {
                        let d = Durable {
                            partition,
                            end_offset: info.last_offset + 1,
                            leader_epoch,
                            topic_at,
                            partition_at,
                        };
                        durable.push((d, flush));
                    }
                }
                Err(Rejected {
                    error,
                    record_errors,
                }) => {
                    any_error = true;
                    debug!(topic = %name, partition = index, code = error.code, message = ?error.message, "produce rejected");
                    response = response
                        .with_error_code(error.code)
                        .with_error_message(error.message_bytes())
                        .with_record_errors(record_errors);
                }
            }
            partition_responses.push(response);
        }
        if bytes_in > 0 {
            broker.metrics.produced(&name, bytes_in, records_in);
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(topic_name)
                .with_partition_responses(partition_responses),
        );
    }
    let mut response = ProduceResponse::default().with_responses(responses);
    match acks {
        0 if any_error => Produced::Close,
        0 => Produced::NoAnswer,
        -1 if !durable.is_empty() => {
            let deadline = tokio::time::Instant::now() + timeout;
            let broker = Arc::clone(broker);
            Produced::Later(Box::pin(async move {
                let mut response = wait_durable(response, durable, deadline).await;
                add_leader_hints(&broker, &mut response);
                response
            }))
        }
        _ => {
            add_leader_hints(broker, &mut response);
            Produced::Ready(response)
        }
    }
}

/// KIP-951 (v10+; older versions do not encode these fields): each
/// partition refused because this broker does not lead it names its
/// current leader, and the response lists those leaders' endpoints, so the
/// client retries there without waiting for fresh metadata.
fn add_leader_hints(broker: &Broker, response: &mut ProduceResponse) {
    if !response
        .responses
        .iter()
        .flat_map(|t| &t.partition_responses)
        .any(|p| super::is_leadership_error(p.error_code))
    {
        return;
    }
    let image = broker.controller.image();
    let mut leaders = std::collections::BTreeSet::new();
    for topic in &mut response.responses {
        for p in &mut topic.partition_responses {
            if !super::is_leadership_error(p.error_code) {
                continue;
            }
            if let Some((leader, epoch)) = super::current_leader(&image, &topic.name, p.index) {
                p.current_leader = LeaderIdAndEpoch::default()
                    .with_leader_id(BrokerId(leader))
                    .with_leader_epoch(epoch);
                leaders.insert(leader);
            }
        }
    }
    response.node_endpoints = leaders
        .into_iter()
        .filter_map(|id| image.broker(id))
        .map(|b| {
            NodeEndpoint::default()
                .with_node_id(BrokerId(b.node_id))
                .with_host(super::str_bytes(b.host.clone()))
                .with_port(i32::from(b.port))
                .with_rack(b.rack.clone().map(super::str_bytes))
        })
        .collect();
}

/// A partition's append under way.
type Appending = (Arc<Partition>, ClientAppend);

/// Checks what can be checked at once of one partition's batches and
/// starts their append as leader (see [`Partition::append_for_client`]).
async fn submit_append(
    broker: &Broker,
    topic: &str,
    index: i32,
    records: Option<bytes::Bytes>,
    acks: i16,
    verified: Option<VerificationGuard>,
) -> Result<Appending, Rejected> {
    if topic == crate::group::OFFSETS_TOPIC || topic == crate::txn::TRANSACTION_STATE_TOPIC {
        // The coordinators' records; Kafka lets no client write them.
        return Err(KafkaError::with_message(
            ResponseError::InvalidTopicException,
            "cannot append to an internal topic",
        )
        .into());
    }
    let Some(partition) = broker.replicas.get(topic, index) else {
        return Err(KafkaError::new(ResponseError::UnknownTopicOrPartition).into());
    };
    // Leadership and the ISR size are checked by the append itself, under
    // the partition's state lock (see `Partition::append_as_leader`).
    let Some(records) = records else {
        return Err(KafkaError::with_message(
            ResponseError::InvalidRecord,
            "produce request has null records",
        )
        .into());
    };
    let appending = partition
        .append_for_client(records, acks == -1, verified)
        .await;
    Ok((partition, appending))
}

/// A refused append as Kafka answers it. Records without a key on a
/// compacted topic are named one by one with Kafka's messages
/// (`LogValidator.validateKey` and `processRecordErrors`), so that a client
/// fails only them; every other refusal is one error for the partition.
fn rejected(topic: &str, index: i32, error: &AppendError) -> Rejected {
    let AppendError::Storage(StorageError::Invalid {
        reason: InvalidRecord::MissingKeyOnCompactedTopic { record_indexes },
        ..
    }) = error
    else {
        return KafkaError {
            code: append_error_code(error),
            message: Some(error.to_string()),
        }
        .into();
    };
    let refusal = format!(
        "Compacted topic cannot accept message without key in topic partition {topic}-{index}"
    );
    // Kafka's `RecordError.toString`, for the first three in the message.
    let shown: Vec<String> = record_indexes
        .iter()
        .take(3)
        .map(|i| format!("RecordError(batchIndex={i}, message='{refusal}')"))
        .collect();
    let message = format!(
        "One or more records have been rejected due to {} record errors in total, and only \
         showing the first three errors at most: [{}]",
        record_indexes.len(),
        shown.join(", ")
    );
    Rejected {
        error: KafkaError::with_message(ResponseError::InvalidRecord, message),
        record_errors: record_indexes
            .iter()
            .map(|i| {
                BatchIndexAndErrorMessage::default()
                    .with_batch_index(i32::try_from(*i).unwrap_or(i32::MAX))
                    .with_batch_index_error_message(Some(super::str_bytes(refusal.clone())))
            })
            .collect(),
    }
}

/// The second stage of acks=all: fsync what was appended (group-committed
/// with every other waiter of the same log), then wait for the ISR to have
/// it, and answer.
async fn wait_durable(
    mut response: ProduceResponse,
    durable: Vec<(Durable, Result<PendingFlush, DiskError>)>,
    deadline: tokio::time::Instant,
) -> ProduceResponse {
    // Each partition's flush was queued by its append; they run at once
    // on their flush threads.
    let mut flushed = Vec::with_capacity(durable.len());
    for (d, flush) in durable {
        let result = match flush {
            Ok(flush) => flush.await,
            Err(error) => Err(error.into()),
        };
        flushed.push((d, result));
    }
    for (d, result) in flushed {
        let p = &mut response.responses[d.topic_at].partition_responses[d.partition_at];
        if let Err(error) = result {
            warn!(topic = %d.partition.tp.topic, partition = d.partition.tp.partition, %error, "flush failed");
            p.error_code = flush_error_code(&error);
            p.error_message = Some(super::str_bytes(error.to_string()));
            continue;
        }
        if let Err(error) = d
            .partition
            .wait_replicated(d.end_offset, d.leader_epoch, deadline)
            .await
        {
            debug!(topic = %d.partition.tp.topic, partition = d.partition.tp.partition, %error, "acks=all not satisfied");
            p.error_code = replication_error_code(error);
            p.error_message = Some(super::str_bytes(error.to_string()));
        }
    }
    response
}
