//! Transactions against an in-process broker, with requests encoded by
//! kafka-protocol's client side: the coordinator's answers to bad input
//! (each with Kafka's error code, changing nothing), KIP-890 part 1's
//! verification of transactional writes, markers from a stale epoch, the
//! last stable offset, and what a restart keeps.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, BrokerId, DescribeTransactionsRequest,
    EndTxnRequest, FindCoordinatorRequest, InitProducerIdRequest, ListOffsetsRequest,
    ListTransactionsRequest, ProduceRequest, ProducerId, TxnOffsetCommitRequest,
    WriteTxnMarkersRequest,
};
use kafka_protocol::records::{Record, TimestampType};
use rill_broker::BrokerConfig;

const TOPIC: &str = "txn-orders";
const TXN: &str = "txn-1";

const NONE: i16 = 0;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const INVALID_TXN_STATE: i16 = 48;
const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
const INVALID_TRANSACTION_TIMEOUT: i16 = 50;
const CONCURRENT_TRANSACTIONS: i16 = 51;
const OPERATION_NOT_ATTEMPTED: i16 = 55;
const PRODUCER_FENCED: i16 = 90;

/// A transactional batch of `count` records from sequence `first_seq`.
fn txn_batch(producer_id: i64, epoch: i16, first_seq: i32, count: i32) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: true,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i64::from(i),
            sequence: first_seq + i,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(format!(
                "{producer_id}/{epoch}/{}",
                first_seq + i
            ))),
            headers: Default::default(),
        })
        .collect();
    encode_batch(&records)
}

async fn produce_txn(client: &mut Client, transactional_id: Option<&str>, records: Bytes) -> i16 {
    let response = client
        .send(
            9,
            ProduceRequest::default()
                .with_transactional_id(transactional_id.map(|id| str_bytes(id).into()))
                .with_acks(-1)
                .with_timeout_ms(5000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(topic_name(TOPIC))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records))])]),
        )
        .await;
    response.responses[0].partition_responses[0].error_code
}

async fn init(client: &mut Client, timeout_ms: i32) -> (i16, i64, i16) {
    // The coordinator may answer CONCURRENT_TRANSACTIONS while it aborts
    // an open transaction; a client retries.
    for _ in 0..100 {
        let response = client
            .send(
                4,
                InitProducerIdRequest::default()
                    .with_transactional_id(Some(str_bytes(TXN).into()))
                    .with_transaction_timeout_ms(timeout_ms)
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1),
            )
            .await;
        if response.error_code != CONCURRENT_TRANSACTIONS {
            return (
                response.error_code,
                response.producer_id.0,
                response.producer_epoch,
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("InitProducerId answered CONCURRENT_TRANSACTIONS for 2 s");
}

async fn add_partition(
    client: &mut Client,
    version: i16,
    pid: i64,
    epoch: i16,
    topics: &[&str],
) -> Vec<i16> {
    let response = client
        .send(
            version,
            AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(str_bytes(TXN).into())
                .with_v3_and_below_producer_id(ProducerId(pid))
                .with_v3_and_below_producer_epoch(epoch)
                .with_v3_and_below_topics(
                    topics
                        .iter()
                        .map(|t| {
                            AddPartitionsToTxnTopic::default()
                                .with_name(topic_name(t))
                                .with_partitions(vec![0])
                        })
                        .collect(),
                ),
        )
        .await;
    response
        .results_by_topic_v3_and_below
        .iter()
        .flat_map(|t| {
            t.results_by_partition
                .iter()
                .map(|p| p.partition_error_code)
        })
        .collect()
}

async fn end_txn(client: &mut Client, id: &str, pid: i64, epoch: i16, commit: bool) -> i16 {
    client
        .send(
            3,
            EndTxnRequest::default()
                .with_transactional_id(str_bytes(id).into())
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch)
                .with_committed(commit),
        )
        .await
        .error_code
}

/// ListOffsets v5 latest of partition 0, read_committed (the LSO) or not
/// (the high watermark).
async fn latest(client: &mut Client, read_committed: bool) -> i64 {
    let response = client
        .send(
            5,
            ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_isolation_level(i8::from(read_committed))
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(topic_name(TOPIC))
                    .with_partitions(vec![ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_current_leader_epoch(-1)
                        .with_timestamp(-1)])]),
        )
        .await;
    let partition = &response.topics[0].partitions[0];
    assert_eq!(partition.error_code, NONE);
    partition.offset
}

/// Waits (bounded) until the LSO is `offset`: markers are written after
/// EndTxn is answered.
async fn await_lso(client: &mut Client, offset: i64) {
    for _ in 0..250 {
        if latest(client, true).await == offset {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the last stable offset did not reach {offset} within 5 s");
}

async fn txn_state(client: &mut Client) -> (i16, String, Vec<(String, Vec<i32>)>) {
    let mut response = None;
    // COORDINATOR_LOAD_IN_PROGRESS while a restarted coordinator reads its
    // partition back.
    for _ in 0..100 {
        let answer = client
            .send(
                0,
                DescribeTransactionsRequest::default()
                    .with_transactional_ids(vec![str_bytes(TXN).into()]),
            )
            .await;
        if answer.transaction_states[0].error_code != 14 {
            response = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = response.expect("the coordinator loaded within 2 s");
    let state = &response.transaction_states[0];
    (
        state.error_code,
        state.transaction_state.to_string(),
        state
            .topics
            .iter()
            .map(|t| (t.topic.0.to_string(), t.partitions.clone()))
            .collect(),
    )
}

#[tokio::test]
async fn bad_input_gets_kafkas_error_codes_and_changes_nothing() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client.create_topic(TOPIC, 1, &[]).await;
    let found = client
        .send(
            3,
            FindCoordinatorRequest::default()
                .with_key(str_bytes(TXN))
                .with_key_type(1),
        )
        .await;
    assert_eq!((found.error_code, found.node_id.0), (NONE, 1));

    // A timeout past transaction.max.timeout.ms (15 minutes).
    assert_eq!(
        init(&mut client, 900_001).await.0,
        INVALID_TRANSACTION_TIMEOUT
    );
    let (code, pid, epoch) = init(&mut client, 60_000).await;
    assert_eq!((code, epoch), (NONE, 0));
    assert!(pid >= 0);

    // EndTxn with no transaction open, and for an id nobody initialised.
    assert_eq!(
        end_txn(&mut client, TXN, pid, 0, true).await,
        INVALID_TXN_STATE
    );
    assert_eq!(
        end_txn(&mut client, "nobody", pid, 0, true).await,
        INVALID_PRODUCER_ID_MAPPING
    );
    // Another epoch is a fenced producer; before v2 it is told so as
    // INVALID_PRODUCER_EPOCH (KIP-588).
    assert_eq!(
        add_partition(&mut client, 3, pid, 1, &[TOPIC]).await,
        [PRODUCER_FENCED]
    );
    assert_eq!(
        add_partition(&mut client, 1, pid, 1, &[TOPIC]).await,
        [INVALID_PRODUCER_EPOCH]
    );
    assert_eq!(
        add_partition(&mut client, 3, pid + 1, 0, &[TOPIC]).await,
        [INVALID_PRODUCER_ID_MAPPING]
    );
    // One unknown partition: nothing is added.
    assert_eq!(
        add_partition(&mut client, 3, pid, 0, &[TOPIC, "no-such-topic"]).await,
        [OPERATION_NOT_ATTEMPTED, UNKNOWN_TOPIC_OR_PARTITION]
    );
    assert_eq!(txn_state(&mut client).await.1, "Empty");

    // KIP-890 part 1: a transactional write to a partition not in the
    // transaction is refused, and so is one without a transactional id.
    assert_eq!(
        produce_txn(&mut client, Some(TXN), txn_batch(pid, 0, 0, 3)).await,
        INVALID_TXN_STATE
    );
    assert_eq!(
        produce_txn(&mut client, None, txn_batch(pid, 0, 0, 3)).await,
        INVALID_TXN_STATE
    );
    assert_eq!(latest(&mut client, false).await, 0, "nothing was appended");

    // Offsets of a group not added to the transaction (no AddOffsetsToTxn).
    client
        .send(
            3,
            FindCoordinatorRequest::default()
                .with_key(str_bytes("g"))
                .with_key_type(0),
        )
        .await;
    let committed = client
        .send(
            3,
            TxnOffsetCommitRequest::default()
                .with_transactional_id(str_bytes(TXN).into())
                .with_group_id(str_bytes("g").into())
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(0)
                .with_generation_id(-1)
                .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                    .with_name(topic_name(TOPIC))
                    .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(1)])]),
        )
        .await;
    assert_eq!(
        committed.topics[0].partitions[0].error_code,
        INVALID_TXN_STATE
    );

    // Now a proper transaction: added, written, open.
    assert_eq!(
        add_partition(&mut client, 3, pid, 0, &[TOPIC]).await,
        [NONE]
    );
    let added = client
        .send(
            3,
            AddOffsetsToTxnRequest::default()
                .with_transactional_id(str_bytes(TXN).into())
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(0)
                .with_group_id(str_bytes("g").into()),
        )
        .await;
    assert_eq!(added.error_code, NONE);
    assert_eq!(
        produce_txn(&mut client, Some(TXN), txn_batch(pid, 0, 0, 3)).await,
        NONE
    );
    assert_eq!(latest(&mut client, false).await, 3);
    assert_eq!(
        latest(&mut client, true).await,
        0,
        "the open transaction holds the LSO"
    );
    let (code, state, partitions) = txn_state(&mut client).await;
    assert_eq!((code, state.as_str()), (NONE, "Ongoing"));
    assert!(
        partitions.contains(&(TOPIC.to_string(), vec![0])),
        "{partitions:?}"
    );
    let listed = client
        .send(
            0,
            ListTransactionsRequest::default().with_state_filters(vec![str_bytes("Ongoing")]),
        )
        .await;
    assert_eq!(listed.transaction_states.len(), 1);
    assert_eq!(listed.transaction_states[0].producer_id.0, pid);

    // A marker from an older producer epoch than the partition has seen
    // is refused. First move the producer's epoch on: InitProducerId
    // fences the open transaction (the epoch bumped to 1, which its abort
    // marker carries), and the retried call bumps it again, as Kafka's.
    let (code, same_pid, epoch) = init(&mut client, 60_000).await;
    assert_eq!((code, same_pid, epoch), (NONE, pid, 2));
    await_lso(&mut client, 4).await;
    assert_eq!(
        latest(&mut client, false).await,
        4,
        "three records and the abort marker"
    );
    let stale = client
        .send(
            1,
            WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(0)
                .with_transaction_result(true)
                .with_coordinator_epoch(0)
                .with_topics(vec![WritableTxnMarkerTopic::default()
                    .with_name(topic_name(TOPIC))
                    .with_partition_indexes(vec![0])])]),
        )
        .await;
    assert_eq!(
        stale.markers[0].topics[0].partitions[0].error_code,
        INVALID_PRODUCER_EPOCH
    );
    assert_eq!(
        latest(&mut client, false).await,
        4,
        "no marker was appended"
    );
    // And the fenced producer's writes are refused.
    assert_eq!(
        produce_txn(&mut client, Some(TXN), txn_batch(pid, 0, 3, 1)).await,
        INVALID_PRODUCER_EPOCH
    );
    assert_eq!(
        end_txn(&mut client, TXN, pid, 0, true).await,
        PRODUCER_FENCED
    );
    broker.stop().await;
}

#[tokio::test]
async fn commit_and_abort_move_the_lso_and_survive_a_restart() {
    commit_and_abort_move_the_lso_and_survive_a_restart_with(|_| {}).await;
}

/// [`commit_and_abort_move_the_lso_and_survive_a_restart`] with every append on the partitions' I/O threads
/// (`--appends-on-io-threads`): the coordinator's writes and the markers
/// are queued there in order and awaited after, as under disk pressure.
#[tokio::test]
async fn commit_and_abort_move_the_lso_and_survive_a_restart_on_io_threads() {
    commit_and_abort_move_the_lso_and_survive_a_restart_with(|config| {
        config.disk_threads.appends_on_io_threads = true
    })
    .await;
}

async fn commit_and_abort_move_the_lso_and_survive_a_restart_with(adjust: fn(&mut BrokerConfig)) {
    let mut broker = TestBroker::start_with(adjust).await;
    let mut client = broker.client().await;
    client.create_topic(TOPIC, 1, &[]).await;
    client
        .send(
            3,
            FindCoordinatorRequest::default()
                .with_key(str_bytes(TXN))
                .with_key_type(1),
        )
        .await;
    let (code, pid, epoch) = init(&mut client, 60_000).await;
    assert_eq!(code, NONE);

    // Committed: records 0-1, marker 2.
    assert_eq!(
        add_partition(&mut client, 3, pid, epoch, &[TOPIC]).await,
        [NONE]
    );
    assert_eq!(
        produce_txn(&mut client, Some(TXN), txn_batch(pid, epoch, 0, 2)).await,
        NONE
    );
    assert_eq!(end_txn(&mut client, TXN, pid, epoch, true).await, NONE);
    await_lso(&mut client, 3).await;
    // A retried EndTxn of the same end is answered NONE; the other end is
    // refused (once the first is complete).
    for _ in 0..100 {
        match end_txn(&mut client, TXN, pid, epoch, true).await {
            CONCURRENT_TRANSACTIONS => tokio::time::sleep(Duration::from_millis(20)).await,
            code => {
                assert_eq!(code, NONE);
                break;
            }
        }
    }
    assert_eq!(
        end_txn(&mut client, TXN, pid, epoch, false).await,
        INVALID_TXN_STATE
    );

    // Aborted: records 3-5, marker 6. The partition is added again: the
    // coordinator answers CONCURRENT_TRANSACTIONS until the last one's
    // completion is written.
    let mut codes = Vec::new();
    for _ in 0..100 {
        codes = add_partition(&mut client, 3, pid, epoch, &[TOPIC]).await;
        if codes != [CONCURRENT_TRANSACTIONS] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(codes, [NONE]);
    assert_eq!(
        produce_txn(&mut client, Some(TXN), txn_batch(pid, epoch, 2, 3)).await,
        NONE
    );
    assert_eq!(end_txn(&mut client, TXN, pid, epoch, false).await, NONE);
    await_lso(&mut client, 7).await;
    assert_eq!(latest(&mut client, false).await, 7);
    // Once the abort's completion is written too, nothing is left for a
    // restarted coordinator to finish (it would write the markers again).
    for _ in 0..100 {
        if txn_state(&mut client).await.1 == "CompleteAbort" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    broker.restart_with(adjust).await;
    let mut client = broker.client().await;
    assert_eq!(
        latest(&mut client, true).await,
        7,
        "the LSO after a restart"
    );
    let (code, state, _) = txn_state(&mut client).await;
    assert_eq!((code, state.as_str()), (NONE, "CompleteAbort"));
    // The same producer id goes on, with its epoch bumped.
    let (code, same_pid, next_epoch) = init(&mut client, 60_000).await;
    assert_eq!((code, same_pid, next_epoch), (NONE, pid, epoch + 1));
    if broker.broker().config.disk_threads.appends_on_io_threads {
        // The InitProducerId's write, at least, went through the I/O thread.
        assert!(broker.broker().replicas.disk_pressure().appends_moved() > 0);
    }
    broker.stop().await;
}
