//! Idempotent producers against an in-process broker, with requests encoded
//! by kafka-protocol's client side: InitProducerId, and Produce of batches
//! with producer ids — duplicates, gaps, epochs, the one-batch rule — before
//! and after a restart.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{InitProducerIdRequest, ProduceRequest, ProducerId};
use kafka_protocol::records::{Record, TimestampType};

const TOPIC: &str = "idempotent";

/// A producer's batch: `count` records from sequence `first_seq`.
fn batch(producer_id: i64, epoch: i16, first_seq: i32, count: i32) -> Bytes {
    batch_with(producer_id, epoch, first_seq, count, false)
}

fn batch_with(
    producer_id: i64,
    epoch: i16,
    first_seq: i32,
    count: i32,
    transactional: bool,
) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i64::from(i),
            sequence: first_seq.wrapping_add(i),
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(format!(
                "{producer_id}/{epoch}/{}",
                first_seq + i
            ))),
            headers: Default::default(),
        })
        .collect();
    common::encode_batch(&records)
}

async fn produce_raw(client: &mut Client, acks: i16, records: Bytes) -> PartitionProduceResponse {
    let response = client
        .send(
            9,
            ProduceRequest::default()
                .with_acks(acks)
                .with_timeout_ms(5000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(topic_name(TOPIC))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records))])]),
        )
        .await;
    response.responses[0].partition_responses[0].clone()
}

/// Produces and returns (error code, base offset).
async fn produce(client: &mut Client, records: Bytes) -> (i16, i64) {
    let response = produce_raw(client, -1, records).await;
    (response.error_code, response.base_offset)
}

async fn init_producer_id(client: &mut Client, version: i16) -> (i16, i64, i16) {
    let response = client
        .send(
            version,
            InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        )
        .await;
    (
        response.error_code,
        response.producer_id.0,
        response.producer_epoch,
    )
}

async fn log_end(client: &mut Client) -> i64 {
    let (error, offset) = client.list_offset(TOPIC, 0, -1).await;
    assert_eq!(error, 0);
    offset
}

#[tokio::test]
async fn init_producer_id_hands_out_new_ids_at_every_version() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    let mut ids = Vec::new();
    for version in 0..=4 {
        let (error, id, epoch) = init_producer_id(&mut client, version).await;
        assert_eq!((error, epoch), (0, 0), "v{version}");
        ids.push(id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 5, "distinct ids: {ids:?}");

    // A producer that gives its current id and epoch (KIP-360) gets a new
    // id with epoch 0, as from Kafka without a transactional id.
    let response = client
        .send(
            4,
            InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_producer_id(ProducerId(ids[0]))
                .with_producer_epoch(3),
        )
        .await;
    assert_eq!(response.error_code, 0);
    assert!(!ids.contains(&response.producer_id.0));
    assert_eq!(response.producer_epoch, 0);

    // An id without an epoch, or the other way round: INVALID_REQUEST.
    let response = client
        .send(
            3,
            InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(0),
        )
        .await;
    assert_eq!(response.error_code, 42);
    assert_eq!(response.producer_id.0, -1);

    // A transactional id goes to its transaction coordinator: before any
    // FindCoordinator has made __transaction_state, this node is not it.
    for version in [0, 4] {
        let response = client
            .send(
                version,
                InitProducerIdRequest::default()
                    .with_transactional_id(Some(str_bytes("txn-1").into()))
                    .with_transaction_timeout_ms(60_000)
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1),
            )
            .await;
        assert_eq!(response.error_code, 16, "v{version}"); // NOT_COORDINATOR
        assert_eq!(response.producer_id.0, -1);
    }
    let response = client
        .send(
            4,
            InitProducerIdRequest::default()
                .with_transactional_id(Some(str_bytes("").into()))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        )
        .await;
    assert_eq!(response.error_code, 42);
    broker.stop().await;
}

#[tokio::test]
async fn duplicates_get_the_original_offsets_and_gaps_and_old_epochs_are_refused() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client.create_topic(TOPIC, 1, &[]).await;
    let (_, pid, epoch) = init_producer_id(&mut client, 4).await;

    assert_eq!(produce(&mut client, batch(pid, epoch, 0, 3)).await, (0, 0));
    assert_eq!(produce(&mut client, batch(pid, epoch, 3, 2)).await, (0, 3));
    // Another producer's batches in between.
    let (_, other, _) = init_producer_id(&mut client, 4).await;
    assert_eq!(produce(&mut client, batch(other, 0, 0, 1)).await, (0, 5));
    // Retries of the first two batches, with acks=all and acks=1: the
    // original base offsets, nothing appended.
    assert_eq!(produce(&mut client, batch(pid, epoch, 0, 3)).await, (0, 0));
    let retry = produce_raw(&mut client, 1, batch(pid, epoch, 3, 2)).await;
    assert_eq!((retry.error_code, retry.base_offset), (0, 3));
    assert_eq!(log_end(&mut client).await, 6);

    // A gap: OUT_OF_ORDER_SEQUENCE_NUMBER, nothing appended.
    let (error, offset) = produce(&mut client, batch(pid, epoch, 6, 1)).await;
    assert_eq!((error, offset), (45, -1));
    // A batch overlapping the last without matching it is a gap too.
    assert_eq!(produce(&mut client, batch(pid, epoch, 4, 2)).await.0, 45);
    assert_eq!(log_end(&mut client).await, 6);
    assert_eq!(produce(&mut client, batch(pid, epoch, 5, 1)).await, (0, 6));

    // A new epoch starts at 0; once it has written, the old one is fenced.
    assert_eq!(produce(&mut client, batch(pid, 1, 6, 1)).await.0, 45);
    assert_eq!(produce(&mut client, batch(pid, 1, 0, 2)).await, (0, 7));
    assert_eq!(produce(&mut client, batch(pid, 0, 6, 1)).await.0, 47);
    assert_eq!(produce(&mut client, batch(pid, 0, 5, 1)).await.0, 47);
    assert_eq!(log_end(&mut client).await, 9);

    // A producer the partition has not seen may start anywhere (KIP-360).
    let (_, fresh, _) = init_producer_id(&mut client, 4).await;
    assert_eq!(produce(&mut client, batch(fresh, 0, 100, 1)).await, (0, 9));
    assert_eq!(produce(&mut client, batch(fresh, 0, 100, 1)).await, (0, 9));
    assert_eq!(produce(&mut client, batch(fresh, 0, 101, 1)).await, (0, 10));
    broker.stop().await;
}

#[tokio::test]
async fn batches_with_producer_ids_follow_kafkas_batch_rules() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client.create_topic(TOPIC, 1, &[]).await;
    let (_, pid, _) = init_producer_id(&mut client, 4).await;

    // Two batches in one partition's records: Kafka takes one per request.
    let mut two = BytesMut::new();
    two.extend_from_slice(&batch(pid, 0, 0, 1));
    two.extend_from_slice(&batch(pid, 0, 1, 1));
    assert_eq!(produce(&mut client, two.freeze()).await.0, 87);
    let mut mixed = BytesMut::new();
    mixed.extend_from_slice(&record_batch(1));
    mixed.extend_from_slice(&batch(pid, 0, 0, 1));
    assert_eq!(produce(&mut client, mixed.freeze()).await.0, 87);
    // A producer id needs a sequence.
    assert_eq!(produce(&mut client, batch(pid, 0, -1, 1)).await.0, 87);
    // A transactional batch in a request without a transactional id cannot
    // be verified as part of a transaction: INVALID_TXN_STATE.
    assert_eq!(
        produce(&mut client, batch_with(pid, 0, 0, 1, true)).await.0,
        48
    );
    assert_eq!(log_end(&mut client).await, 0);
    // Several batches without producer ids are still fine.
    let mut plain = BytesMut::new();
    plain.extend_from_slice(&record_batch(2));
    plain.extend_from_slice(&record_batch(3));
    assert_eq!(produce(&mut client, plain.freeze()).await, (0, 0));

    // A damaged retry of a batch already written is CORRUPT_MESSAGE, not
    // a duplicate.
    let good = batch(pid, 0, 0, 2);
    assert_eq!(produce(&mut client, good.clone()).await, (0, 5));
    let mut damaged = BytesMut::from(&good[..]);
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    assert_eq!(produce(&mut client, damaged.freeze()).await.0, 2);
    assert_eq!(produce(&mut client, good).await, (0, 5));
    assert_eq!(log_end(&mut client).await, 7);
    broker.stop().await;
}

#[tokio::test]
async fn producer_state_and_ids_survive_a_restart() {
    let mut broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client.create_topic(TOPIC, 1, &[]).await;
    let (_, pid, _) = init_producer_id(&mut client, 4).await;
    for seq in (0..10).step_by(2) {
        assert_eq!(
            produce(&mut client, batch(pid, 0, seq, 2)).await,
            (0, i64::from(seq))
        );
    }
    broker.restart().await;
    let data_dir = broker.broker().config.data_dir.clone();
    let snapshots: Vec<_> = std::fs::read_dir(data_dir.join(format!("{TOPIC}-0")))
        .expect("partition dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".snapshot"))
        .collect();
    assert_eq!(
        snapshots,
        vec!["00000000000000000010.snapshot"],
        "a clean shutdown leaves a snapshot at the log end"
    );

    let mut client = broker.client().await;
    // Retries of the last five batches are still duplicates.
    for seq in (0..10).step_by(2) {
        assert_eq!(
            produce(&mut client, batch(pid, 0, seq, 2)).await,
            (0, i64::from(seq)),
            "retry of sequence {seq}"
        );
    }
    assert_eq!(produce(&mut client, batch(pid, 0, 11, 1)).await.0, 45);
    assert_eq!(produce(&mut client, batch(pid, 0, 10, 1)).await, (0, 10));
    // New ids come from a block the controller had not handed out before.
    let (_, next, _) = init_producer_id(&mut client, 4).await;
    assert!(next > pid, "{next} after {pid}");
    broker.stop().await;
}
