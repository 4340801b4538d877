//! Produce, Fetch and ListOffsets at every version the broker advertises,
//! with real data: what goes in comes back byte for byte, and every
//! response encodes (a field set outside its version closes the
//! connection, which these tests would see).

mod common;

use bytes::Bytes;
use common::{topic_name, TestBroker};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ProduceRequest,
};
use rill_protocol::supported;
use rill_storage::records::BatchBuilder;

/// One uncompressed batch of `count` records (kafka-protocol's encoder, in
/// the harness's `record_batch`, makes one batch per record).
fn one_batch(count: usize) -> Bytes {
    let mut builder = BatchBuilder::new();
    for i in 0..count {
        let value = format!("value-{i}");
        builder.push(
            Some(format!("key-{i}").as_bytes()),
            Some(value.as_bytes()),
            1_700_000_000_000 + i as i64,
        );
    }
    Bytes::from(builder.build())
}

fn produce_request(topic: &str, acks: i16, batch: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch))])])
}

fn fetch_request(topic: &str, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])])
}

/// A consumer's ListOffsets for partition 0 of `topic` at `timestamp`.
fn list_offsets_request(topic: &str, timestamp: i64) -> ListOffsetsRequest {
    ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_current_leader_epoch(-1)
                .with_timestamp(timestamp)])])
}

/// The records of the only partition in a fetch response.
fn fetched(response: &FetchResponse) -> (i16, Bytes) {
    let partition = &response.responses[0].partitions[0];
    (
        partition.error_code,
        partition.records.clone().unwrap_or_default(),
    )
}

/// A batch as the log stores it: the broker rewrites the base offset
/// (bytes 0..8) and the partition leader epoch (bytes 12..16).
fn same_batch_modulo_offsets(stored: &[u8], sent: &[u8]) {
    assert_eq!(stored.len(), sent.len());
    assert_eq!(stored[8..12], sent[8..12], "batch length");
    assert_eq!(stored[16..], sent[16..], "batch body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_produce_and_fetch_version_round_trips_the_batch() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client.create_topic("versions", 1, &[]).await;
    let batch = one_batch(5);

    let mut expected_offset = 0;
    for version in supported(ApiKey::Produce).unwrap() {
        let response = client
            .send(version, produce_request("versions", -1, batch.clone()))
            .await;
        let partition = &response.responses[0].partition_responses[0];
        assert_eq!(partition.error_code, 0, "produce v{version}");
        assert_eq!(partition.base_offset, expected_offset, "produce v{version}");
        expected_offset += 5;
    }

    // From v13 a fetch names the topic by its id.
    let topic_id = client.metadata(&["versions"]).await.topics[0].topic_id;
    assert!(!topic_id.is_nil());
    for version in supported(ApiKey::Fetch).unwrap() {
        let mut request = fetch_request("versions", 5, 0);
        request.topics[0].topic_id = topic_id;
        let response = client.send(version, request).await;
        let (error, records) = fetched(&response);
        assert_eq!(error, 0, "fetch v{version}");
        if version >= 13 {
            assert_eq!(response.responses[0].topic_id, topic_id, "fetch v{version}");
        } else {
            assert_eq!(response.responses[0].topic.0.as_str(), "versions");
        }
        // Every batch from offset 5 on, each identical to what was sent.
        let batches = records.len() / batch.len();
        assert_eq!(records.len() % batch.len(), 0, "fetch v{version}");
        assert_eq!(batches as i64, expected_offset / 5 - 1, "fetch v{version}");
        for (i, stored) in records.chunks(batch.len()).enumerate() {
            let base_offset = i64::from_be_bytes(stored[..8].try_into().unwrap());
            assert_eq!(base_offset, 5 + 5 * i as i64, "fetch v{version}");
            same_batch_modulo_offsets(stored, &batch);
        }
        let partition = &response.responses[0].partitions[0];
        assert_eq!(
            partition.high_watermark, expected_offset,
            "fetch v{version}"
        );
    }
    client.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_by_an_unknown_topic_id_is_answered_unknown_topic_id() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client.create_topic("known", 1, &[]).await;
    for version in 13..=*supported(ApiKey::Fetch).unwrap().end() {
        let mut request = fetch_request("known", 0, 0);
        // The name is not sent from v13; an id no topic has.
        request.topics[0].topic_id = uuid::Uuid::from_u128(0xdead_beef);
        let response = client.send(version, request).await;
        let topic = &response.responses[0];
        assert_eq!(topic.topic_id, uuid::Uuid::from_u128(0xdead_beef));
        assert_eq!(topic.partitions[0].error_code, 100, "v{version}"); // UNKNOWN_TOPIC_ID
    }
    client.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_list_offsets_version_answers() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client.create_topic("offsets", 1, &[]).await;
    assert_eq!(client.produce("offsets", 0, 10).await, (0, 0));
    for version in supported(ApiKey::ListOffsets).unwrap() {
        // The batch's records carry timestamps 1_700_000_000_000 + i.
        for (timestamp, offset) in [(-1, 10), (-2, 0), (1_700_000_000_003, 3), (i64::MAX, -1)] {
            let response = client
                .send(version, list_offsets_request("offsets", timestamp))
                .await;
            let partition = &response.topics[0].partitions[0];
            assert_eq!(partition.error_code, 0, "v{version} timestamp {timestamp}");
            assert_eq!(partition.offset, offset, "v{version} timestamp {timestamp}");
        }
    }
    // KIP-405 and KIP-1005 on a broker without tiered storage: the earliest
    // local offset is the earliest, and nothing is tiered.
    for (timestamp, offset) in [(-4, 0), (-5, -1)] {
        let newest = *supported(ApiKey::ListOffsets).unwrap().end();
        let response = client
            .send(newest, list_offsets_request("offsets", timestamp))
            .await;
        let partition = &response.topics[0].partitions[0];
        assert_eq!(partition.error_code, 0, "timestamp {timestamp}");
        assert_eq!(partition.offset, offset, "timestamp {timestamp}");
    }
    client.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_answers_when_records_arrive() {
    let broker = TestBroker::start().await;
    let mut setup = broker.client().await;
    setup.create_topic("poll", 1, &[]).await;
    let mut consumer = broker.client().await;
    // A long wait: the fetch must come back because of the produce, not
    // because the wait ran out (the test's own timeout is far shorter).
    let waiting =
        tokio::spawn(async move { consumer.send(12, fetch_request("poll", 0, 60_000)).await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the fetch did not wait");
    let response = setup
        .send(9, produce_request("poll", 1, one_batch(3)))
        .await;
    assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
    let response = tokio::time::timeout(std::time::Duration::from_secs(20), waiting)
        .await
        .expect("the fetch was not woken by the produce")
        .unwrap();
    let (error, records) = fetched(&response);
    assert_eq!(error, 0);
    same_batch_modulo_offsets(&records, &one_batch(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_bytes_zero_answers_at_once() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client.create_topic("eager", 1, &[]).await;
    let request = fetch_request("eager", 0, 60_000).with_min_bytes(0);
    let response =
        tokio::time::timeout(std::time::Duration::from_secs(20), client.send(12, request))
            .await
            .expect("a fetch with min_bytes 0 waited");
    let (error, records) = fetched(&response);
    assert_eq!(error, 0);
    assert!(records.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_zero_gets_no_answer_and_the_next_request_does() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client.create_topic("fire", 1, &[]).await;
    client
        .send_no_answer(9, produce_request("fire", 0, one_batch(4)))
        .await;
    // The next answer on the connection belongs to the next request.
    assert_eq!(client.list_offset("fire", 0, -1).await, (0, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_produce_input_gets_kafka_errors_and_loses_nothing() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client
        .create_topic("bad", 1, &[("max.message.bytes", "200")])
        .await;
    let response = client
        .send(9, produce_request("bad", -1, one_batch(2)))
        .await;
    assert_eq!(response.responses[0].partition_responses[0].error_code, 0);

    let mut corrupt = one_batch(2).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff; // breaks the CRC
    let cases: [(Bytes, i16); 4] = [
        (Bytes::from(corrupt), 2),           // CORRUPT_MESSAGE
        (one_batch(40), 10),                 // MESSAGE_TOO_LARGE (max.message.bytes 200)
        (Bytes::from_static(b"garbage"), 2), // too short for a batch header
        (Bytes::new(), 87),                  // no batches: INVALID_RECORD
    ];
    for (records, expected) in cases {
        let response = client.send(9, produce_request("bad", -1, records)).await;
        let partition = &response.responses[0].partition_responses[0];
        assert_eq!(partition.error_code, expected, "{partition:?}");
    }
    let response = client
        .send(9, produce_request("bad", 7, one_batch(1)))
        .await;
    assert_eq!(response.responses[0].partition_responses[0].error_code, 21); // INVALID_REQUIRED_ACKS
                                                                             // What was written before is intact, and nothing else was added.
    assert_eq!(client.list_offset("bad", 0, -1).await, (0, 2));
    let response = client.send(12, fetch_request("bad", 0, 0)).await;
    let (error, records) = fetched(&response);
    assert_eq!(error, 0);
    same_batch_modulo_offsets(&records, &one_batch(2));
}

/// Every API in the version table, at every version in it, answers an
/// empty request (the connection stays open and the answer decodes), and
/// the table lists nothing else: a row without a handler would close the
/// connection here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_advertised_api_and_version_answers() {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::Request;

    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    let mut answered = Vec::new();
    macro_rules! each_version {
        ($($request:ty),* $(,)?) => {$(
            let key = ApiKey::try_from(<$request>::KEY).unwrap();
            for version in supported(key).expect("advertised") {
                client
                    .try_send(version, <$request>::default())
                    .await
                    .unwrap_or_else(|error| panic!("{key:?} v{version}: {error}"));
            }
            answered.push(key);
        )*};
    }
    each_version!(
        FetchRequest,
        ListOffsetsRequest,
        MetadataRequest,
        ApiVersionsRequest,
        CreateTopicsRequest,
        DeleteTopicsRequest,
        DeleteRecordsRequest,
        InitProducerIdRequest,
        OffsetForLeaderEpochRequest,
        DescribeConfigsRequest,
        AlterConfigsRequest,
        CreatePartitionsRequest,
        IncrementalAlterConfigsRequest,
        ElectLeadersRequest,
        AlterPartitionReassignmentsRequest,
        ListPartitionReassignmentsRequest,
        DescribeClusterRequest,
        DescribeLogDirsRequest,
        DescribeQuorumRequest,
        DescribeTopicPartitionsRequest,
        OffsetCommitRequest,
        OffsetFetchRequest,
        FindCoordinatorRequest,
        JoinGroupRequest,
        HeartbeatRequest,
        LeaveGroupRequest,
        SyncGroupRequest,
        DescribeGroupsRequest,
        ListGroupsRequest,
        DeleteGroupsRequest,
        OffsetDeleteRequest,
        AddPartitionsToTxnRequest,
        AddOffsetsToTxnRequest,
        EndTxnRequest,
        WriteTxnMarkersRequest,
        TxnOffsetCommitRequest,
        DescribeProducersRequest,
        DescribeTransactionsRequest,
        ListTransactionsRequest,
    );
    // Produce is the one API whose empty request (acks=0) gets no answer; the
    // round-trip test above covers each of its versions.
    let mut produce = produce_request("empty", 1, one_batch(1));
    produce.topic_data.clear();
    for version in supported(ApiKey::Produce).unwrap() {
        client.send(version, produce.clone()).await;
    }
    answered.push(ApiKey::Produce);
    let advertised: Vec<ApiKey> = rill_protocol::SUPPORTED_APIS
        .iter()
        .map(|api| api.key)
        .collect();
    answered.sort_by_key(|key| *key as i16);
    assert_eq!(
        answered, advertised,
        "the table and this test list different APIs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_but_waiting_fetches_do_not() {
    use tokio::io::AsyncReadExt;

    let idle = std::time::Duration::from_millis(300);
    let broker = TestBroker::start_with(|config| config.connections_max_idle = idle).await;
    let mut setup = broker.client().await;
    setup.create_topic("idle", 1, &[]).await;

    // A connection that never sends anything is closed (EOF on read).
    let mut silent = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), silent.read(&mut byte))
        .await
        .expect("the idle connection was not closed");
    assert_eq!(read.unwrap(), 0);

    // A fetch that waits longer than the idle limit keeps its connection
    // and gets its (empty) answer when its wait runs out.
    let mut consumer = broker.client().await;
    let response = consumer.send(12, fetch_request("idle", 0, 1_500)).await;
    let (error, records) = fetched(&response);
    assert_eq!(error, 0);
    assert!(records.is_empty());
    // And the connection is still usable right after.
    consumer.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_does_not_auto_create_internal_topics() {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::MetadataRequest;

    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    let request = |name: &str| {
        MetadataRequest::default()
            .with_allow_auto_topic_creation(true)
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name(name)))
            ]))
    };
    let response = client.send(12, request("__consumer_offsets")).await;
    assert_eq!(response.topics[0].error_code, 3); // UNKNOWN_TOPIC_OR_PARTITION
                                                  // An ordinary topic is created.
    let response = client.send(12, request("ordinary")).await;
    assert_eq!(response.topics[0].error_code, 0);
    assert_eq!(response.topics[0].partitions.len(), 1);
    let response = client.send(12, request("__consumer_offsets")).await;
    assert_eq!(response.topics[0].error_code, 3, "still not created");
}

/// KIP-467: a batch with keyless records sent to a compacted topic is
/// refused with INVALID_RECORD, and from Produce v8 the answer names each
/// bad record (its index in the batch, and why) in `record_errors`, with
/// Kafka's messages, so that a client fails only those records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_records_on_a_compacted_topic_are_named_in_record_errors() {
    const INVALID_RECORD: i16 = 87;
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client
        .create_topic("compacted", 1, &[("cleanup.policy", "compact")])
        .await;
    let mut builder = BatchBuilder::new();
    for i in 0..5 {
        // Records 1 and 3 have no key.
        let key = format!("key-{i}");
        let key = (i % 2 == 0).then_some(key.as_bytes());
        builder.push(key, Some(b"value".as_slice()), 1_700_000_000_000 + i);
    }
    let batch = Bytes::from(builder.build());
    let refusal =
        "Compacted topic cannot accept message without key in topic partition compacted-0";
    for version in supported(ApiKey::Produce).expect("produce") {
        if version < 3 {
            continue; // magic-2 batches need v3+
        }
        let response = client
            .send(version, produce_request("compacted", -1, batch.clone()))
            .await;
        let partition = &response.responses[0].partition_responses[0];
        assert_eq!(partition.error_code, INVALID_RECORD, "v{version}");
        let errors: Vec<(i32, String)> = partition
            .record_errors
            .iter()
            .map(|e| {
                let message = e.batch_index_error_message.as_ref();
                (
                    e.batch_index,
                    message.map(|m| m.to_string()).unwrap_or_default(),
                )
            })
            .collect();
        if version >= 8 {
            assert_eq!(
                errors,
                [(1, refusal.to_string()), (3, refusal.to_string())],
                "v{version}"
            );
            let message = partition.error_message.as_ref().map(|m| m.to_string());
            assert_eq!(
                message.as_deref(),
                Some(
                    format!(
                        "One or more records have been rejected due to 2 record errors in total, \
                         and only showing the first three errors at most: \
                         [RecordError(batchIndex=1, message='{refusal}'), \
                         RecordError(batchIndex=3, message='{refusal}')]"
                    )
                    .as_str()
                ),
                "v{version}"
            );
        } else {
            assert!(errors.is_empty(), "v{version}: {errors:?}");
        }
    }
    // Nothing of the refused batches was written.
    assert_eq!(client.list_offset("compacted", 0, -1).await, (0, 0));
}

/// DescribeTopicPartitions (KIP-966) pages through the topics in name
/// order, `response_partition_limit` partitions at a time, each page's
/// cursor starting the next; an unknown topic is named with its error, and
/// a cursor outside the request is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_topic_partitions_pages_with_a_cursor() {
    use kafka_protocol::messages::describe_topic_partitions_request::{Cursor, TopicRequest};
    use kafka_protocol::messages::DescribeTopicPartitionsRequest;

    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client.create_topic("b-three", 3, &[]).await;
    client.create_topic("a-two", 2, &[]).await;
    let topics = |names: &[&str]| {
        names
            .iter()
            .map(|n| TopicRequest::default().with_name(topic_name(n)))
            .collect::<Vec<_>>()
    };
    let request = |cursor: Option<(&str, i32)>| {
        DescribeTopicPartitionsRequest::default()
            .with_topics(topics(&["b-three", "a-two", "missing"]))
            .with_response_partition_limit(2)
            .with_cursor(cursor.map(|(t, p)| {
                Cursor::default()
                    .with_topic_name(topic_name(t))
                    .with_partition_index(p)
            }))
    };
    // Page by page: (topic, partitions) and the next cursor.
    let mut pages = Vec::new();
    let mut cursor: Option<(String, i32)> = None;
    for _ in 0..10 {
        let response = client
            .send(0, request(cursor.as_ref().map(|(t, p)| (t.as_str(), *p))))
            .await;
        let page: Vec<(String, i16, Vec<i32>)> = response
            .topics
            .iter()
            .map(|t| {
                (
                    t.name.as_ref().unwrap().0.to_string(),
                    t.error_code,
                    t.partitions.iter().map(|p| p.partition_index).collect(),
                )
            })
            .collect();
        for t in &response.topics {
            for p in &t.partitions {
                assert_eq!(p.leader_id.0, 1);
                assert_eq!(p.isr_nodes.len(), 1);
                assert_eq!(p.eligible_leader_replicas.as_deref(), Some(&[][..]));
            }
        }
        pages.push(page);
        cursor = response
            .next_cursor
            .map(|c| (c.topic_name.0.to_string(), c.partition_index));
        if cursor.is_none() {
            break;
        }
    }
    let page = |entries: &[(&str, i16, &[i32])]| {
        entries
            .iter()
            .map(|(n, e, p)| (n.to_string(), *e, p.to_vec()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        pages,
        vec![
            page(&[("a-two", 0, &[0, 1])]),
            page(&[("b-three", 0, &[0, 1])]),
            page(&[("b-three", 0, &[2]), ("missing", 3, &[])]),
        ]
    );
    // Every topic when none is named, in name order.
    let response = client
        .send(
            0,
            DescribeTopicPartitionsRequest::default().with_response_partition_limit(100),
        )
        .await;
    let names: Vec<String> = response
        .topics
        .iter()
        .map(|t| t.name.as_ref().unwrap().0.to_string())
        .collect();
    assert_eq!(names, ["a-two", "b-three"]);
    assert!(response.next_cursor.is_none());
    // A cursor on a topic the request does not name.
    let response = client
        .send(
            0,
            DescribeTopicPartitionsRequest::default()
                .with_topics(topics(&["a-two"]))
                .with_cursor(Some(
                    Cursor::default()
                        .with_topic_name(topic_name("b-three"))
                        .with_partition_index(0),
                )),
        )
        .await;
    assert_eq!(response.topics[0].error_code, 42); // INVALID_REQUEST
}

/// DescribeLogDirs: the data dir, each replica's size, and (v4) the file
/// system's sizes; named partitions this broker lacks are left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_log_dirs_lists_the_replicas_and_their_sizes() {
    use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
    use kafka_protocol::messages::DescribeLogDirsRequest;

    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client.create_topic("sized", 2, &[]).await;
    assert_eq!(client.produce("sized", 0, 10).await, (0, 0));
    for version in supported(ApiKey::DescribeLogDirs).unwrap() {
        let response = client
            .send(version, DescribeLogDirsRequest::default().with_topics(None))
            .await;
        assert_eq!(response.error_code, 0);
        assert_eq!(response.results.len(), 1);
        let dir = &response.results[0];
        assert_eq!(dir.error_code, 0);
        assert!(
            std::path::Path::new(dir.log_dir.as_str()).is_dir(),
            "{:?}",
            dir.log_dir
        );
        let sized = dir
            .topics
            .iter()
            .find(|t| t.name.0.as_str() == "sized")
            .expect("the topic");
        let sizes: Vec<(i32, bool)> = sized
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.partition_size > 0))
            .collect();
        assert_eq!(sizes, [(0, true), (1, false)], "v{version}");
        assert!(sized.partitions.iter().all(|p| p.offset_lag == 0));
        if version >= 4 {
            assert!(dir.total_bytes > 0 && dir.usable_bytes > 0);
            assert!(dir.usable_bytes <= dir.total_bytes);
        } else {
            assert_eq!((dir.total_bytes, dir.usable_bytes), (-1, -1));
        }
    }
    let response = client
        .send(
            4,
            DescribeLogDirsRequest::default().with_topics(Some(vec![
                DescribableLogDirTopic::default()
                    .with_topic(topic_name("sized"))
                    .with_partitions(vec![1, 7]),
                DescribableLogDirTopic::default()
                    .with_topic(topic_name("nowhere"))
                    .with_partitions(vec![0]),
            ])),
        )
        .await;
    let topics: Vec<(String, Vec<i32>)> = response.results[0]
        .topics
        .iter()
        .map(|t| {
            (
                t.name.0.to_string(),
                t.partitions.iter().map(|p| p.partition_index).collect(),
            )
        })
        .collect();
    assert_eq!(topics, [("sized".to_string(), vec![1])]);
}

/// A consumer far behind reads closed segments, which the broker first
/// reads on the partition's I/O thread to warm the page cache: every
/// batch comes back once, in order, from any offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_far_behind_reads_closed_segments_in_order() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    // Small segments: each batch of 20 records rolls a new one.
    client
        .create_topic("behind", 1, &[("segment.bytes", "1024")])
        .await;
    let batches = 15;
    for _ in 0..batches {
        let response = client
            .send(9, produce_request("behind", 1, one_batch(20)))
            .await;
        assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
    }
    let end = (batches * 20) as i64;
    for start in [0, 45, 201] {
        let mut next = start;
        let mut rounds = 0;
        while next < end {
            rounds += 1;
            assert!(rounds <= 2 * batches, "no progress from offset {next}");
            let response = client.send(12, fetch_request("behind", next, 0)).await;
            let (error, records) = fetched(&response);
            assert_eq!(error, 0);
            let mut at = 0;
            while at < records.len() {
                let header =
                    rill_storage::batch::BatchHeader::parse(&records[at..]).expect("whole batches");
                // The batch holding `next` first, then the ones after it.
                assert!(header.base_offset <= next && next <= header.last_offset());
                same_batch_modulo_offsets(&records[at..at + header.size()], &one_batch(20));
                next = header.last_offset() + 1;
                at += header.size();
            }
        }
        assert_eq!(next, end, "read from {start}");
    }
}
