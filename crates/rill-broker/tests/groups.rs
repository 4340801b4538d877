//! The group coordinator over the wire: every group API with kafka-protocol's
//! client encoder, the error codes Kafka gives for bad requests, and what
//! survives a restart. (Real clients' consumer groups are tested in
//! rill-cli's and tests/clients' suites.)

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes};
use common::{str_bytes, topic_name, Client, TestBroker};
use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::join_group_request::{JoinGroupRequest, JoinGroupRequestProtocol};
use kafka_protocol::messages::leave_group_request::{LeaveGroupRequest, MemberIdentity};
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequest, OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequest, OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::{SyncGroupRequest, SyncGroupRequestAssignment};
use kafka_protocol::messages::{GroupId, HeartbeatRequest, JoinGroupResponse, SyncGroupResponse};
use rill_broker::BrokerConfig;

// Kafka's error codes, as the tests expect them.
const NONE: i16 = 0;
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const OFFSET_METADATA_TOO_LARGE: i16 = 12;
const INVALID_GROUP_ID: i16 = 24;
const ILLEGAL_GENERATION: i16 = 22;
const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
const UNKNOWN_MEMBER_ID: i16 = 25;
const INVALID_SESSION_TIMEOUT: i16 = 26;
const REBALANCE_IN_PROGRESS: i16 = 27;
const INVALID_REQUEST: i16 = 42;
const NON_EMPTY_GROUP: i16 = 68;
const GROUP_ID_NOT_FOUND: i16 = 69;
const MEMBER_ID_REQUIRED: i16 = 79;
const GROUP_MAX_SIZE_REACHED: i16 = 81;
const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
const INVALID_TOPIC_EXCEPTION: i16 = 17;

fn quick_groups(config: &mut BrokerConfig) {
    config.groups.initial_rebalance_delay_ms = 0;
    config.groups.min_session_timeout_ms = 1_000;
    config.groups.max_size = 2;
    config.groups.offsets_topic_partitions = 5;
}

/// [`quick_groups`] with every client and coordinator append on the
/// partitions' I/O threads (`--appends-on-io-threads`): the coordinator's
/// appends are queued there under its lock and awaited after it, the path
/// they take whenever the disk pushes back.
fn quick_groups_on_io_threads(config: &mut BrokerConfig) {
    quick_groups(config);
    config.disk_threads.appends_on_io_threads = true;
}

/// A consumer's subscription metadata (ConsumerProtocolSubscription v0).
fn subscription(topics: &[&str]) -> Bytes {
    let mut out = Vec::new();
    out.put_i16(0);
    out.put_i32(topics.len() as i32);
    for topic in topics {
        out.put_i16(topic.len() as i16);
        out.put_slice(topic.as_bytes());
    }
    out.put_i32(-1);
    Bytes::from(out)
}

fn join_request(group: &str, member_id: &str, topics: &[&str]) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(str_bytes(group)))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(str_bytes(member_id))
        .with_protocol_type(str_bytes("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(str_bytes("range"))
            .with_metadata(subscription(topics))])
}

/// KIP-394's two joins; returns the second's answer.
async fn join(client: &mut Client, group: &str, topics: &[&str]) -> JoinGroupResponse {
    let first = client.send(5, join_request(group, "", topics)).await;
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
    let member_id = first.member_id.as_str().to_string();
    client
        .send(5, join_request(group, &member_id, topics))
        .await
}

fn sync_request(group: &str, joined: &JoinGroupResponse, assignment: &[u8]) -> SyncGroupRequest {
    SyncGroupRequest::default()
        .with_group_id(GroupId(str_bytes(group)))
        .with_generation_id(joined.generation_id)
        .with_member_id(joined.member_id.clone())
        .with_assignments(vec![SyncGroupRequestAssignment::default()
            .with_member_id(joined.member_id.clone())
            .with_assignment(Bytes::copy_from_slice(assignment))])
}

fn commit_request(
    group: &str,
    generation: i32,
    member_id: &str,
    topic: &str,
    partitions: &[(i32, i64, &str)],
) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(GroupId(str_bytes(group)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(str_bytes(member_id))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(
                partitions
                    .iter()
                    .map(|(index, offset, metadata)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(*index)
                            .with_committed_offset(*offset)
                            .with_committed_leader_epoch(-1)
                            .with_committed_metadata(Some(str_bytes(metadata)))
                    })
                    .collect(),
            )])
}

fn commit_codes(response: &kafka_protocol::messages::OffsetCommitResponse) -> Vec<i16> {
    response
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
        .collect()
}

/// Committed offsets of one group, through OffsetFetch v5 (one group).
/// Retries COORDINATOR_LOAD_IN_PROGRESS (after a restart) for a while.
async fn committed(client: &mut Client, group: &str, topic: &str, partitions: &[i32]) -> Vec<i64> {
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(str_bytes(group)))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partition_indexes(partitions.to_vec())]));
    let mut response = client.send(5, request.clone()).await;
    for _ in 0..100 {
        if response.error_code != COORDINATOR_LOAD_IN_PROGRESS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        response = client.send(5, request.clone()).await;
    }
    assert_eq!(response.error_code, NONE);
    response.topics[0]
        .partitions
        .iter()
        .map(|p| p.committed_offset)
        .collect()
}

async fn describe(client: &mut Client, version: i16, group: &str) -> (i16, String, usize) {
    let response = client
        .send(
            version,
            DescribeGroupsRequest::default().with_groups(vec![GroupId(str_bytes(group))]),
        )
        .await;
    let g = &response.groups[0];
    (
        g.error_code,
        g.group_state.as_str().to_string(),
        g.members.len(),
    )
}

/// A group's state as ListGroups shows it; `None` if it is not listed.
async fn listed_state(client: &mut Client, group: &str) -> Option<String> {
    let listed = client.send(4, ListGroupsRequest::default()).await;
    listed
        .groups
        .iter()
        .find(|g| g.group_id.as_str() == group)
        .map(|g| g.group_state.as_str().to_string())
}

/// DeleteGroups v2 of one group; its error code.
async fn delete_group(client: &mut Client, group: &str) -> i16 {
    let deleted = client
        .send(
            2,
            DeleteGroupsRequest::default().with_groups_names(vec![GroupId(str_bytes(group))]),
        )
        .await;
    deleted.results[0].error_code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_coordinator_makes_the_offsets_topic_and_answers_each_key() {
    let broker = TestBroker::start_with(quick_groups).await;
    let mut client = broker.client().await;
    let single = client
        .send(
            3,
            FindCoordinatorRequest::default().with_key(str_bytes("g1")),
        )
        .await;
    assert_eq!((single.error_code, single.node_id.0), (NONE, 1));
    assert_eq!(single.port, i32::from(broker.addr.port()));
    let metadata = client.metadata(&["__consumer_offsets"]).await;
    let topic = &metadata.topics[0];
    assert_eq!(topic.error_code, NONE);
    assert!(topic.is_internal);
    assert_eq!(topic.partitions.len(), 5, "offsets.topic.num.partitions");

    let batched = client
        .send(
            4,
            FindCoordinatorRequest::default().with_coordinator_keys(vec![
                str_bytes("a"),
                str_bytes("b"),
                str_bytes(""),
            ]),
        )
        .await;
    let codes: Vec<(String, i16, i32)> = batched
        .coordinators
        .iter()
        .map(|c| (c.key.as_str().to_string(), c.error_code, c.node_id.0))
        .collect();
    assert_eq!(
        codes,
        [
            ("a".to_string(), NONE, 1),
            ("b".to_string(), NONE, 1),
            (String::new(), INVALID_REQUEST, -1)
        ]
    );
    let transactional = client
        .send(
            3,
            FindCoordinatorRequest::default()
                .with_key(str_bytes("tx"))
                .with_key_type(1),
        )
        .await;
    // A transactional id's coordinator: the first lookup makes
    // __transaction_state, and this node leads all of it.
    assert_eq!(
        (transactional.error_code, transactional.node_id.0),
        (NONE, 1)
    );
    let share = client
        .send(
            6,
            FindCoordinatorRequest::default()
                .with_coordinator_keys(vec![str_bytes("s")])
                .with_key_type(2),
        )
        .await;
    assert_eq!(share.coordinators[0].error_code, INVALID_REQUEST);

    // Clients may not write the coordinator's records.
    let (code, _) = client.produce("__consumer_offsets", 0, 1).await;
    assert_eq!(code, INVALID_TOPIC_EXCEPTION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_syncs_commits_and_leaves() {
    a_member_joins_syncs_commits_and_leaves_with(quick_groups).await;
}

/// [`a_member_joins_syncs_commits_and_leaves`] with every append on the I/O threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_syncs_commits_and_leaves_on_io_threads() {
    a_member_joins_syncs_commits_and_leaves_with(quick_groups_on_io_threads).await;
}

async fn a_member_joins_syncs_commits_and_leaves_with(adjust: fn(&mut BrokerConfig)) {
    let broker = TestBroker::start_with(adjust).await;
    let mut client = broker.client().await;
    client.create_topic("t", 3, &[]).await;
    client
        .send(
            3,
            FindCoordinatorRequest::default().with_key(str_bytes("g")),
        )
        .await;

    let joined = join(&mut client, "g", &["t"]).await;
    assert_eq!(joined.error_code, NONE);
    assert_eq!(joined.generation_id, 1);
    assert_eq!(joined.leader, joined.member_id, "the only member leads");
    assert_eq!(joined.members.len(), 1);
    assert_eq!(joined.members[0].metadata, subscription(&["t"]));
    let member_id = joined.member_id.as_str().to_string();

    let synced: SyncGroupResponse = client.send(3, sync_request("g", &joined, b"plan")).await;
    assert_eq!(
        (synced.error_code, &synced.assignment[..]),
        (NONE, &b"plan"[..])
    );
    let heartbeat = HeartbeatRequest::default()
        .with_group_id(GroupId(str_bytes("g")))
        .with_generation_id(1)
        .with_member_id(str_bytes(&member_id));
    assert_eq!(client.send(4, heartbeat.clone()).await.error_code, NONE);
    assert_eq!(
        client
            .send(4, heartbeat.clone().with_generation_id(0))
            .await
            .error_code,
        ILLEGAL_GENERATION
    );

    let commit = commit_request("g", 1, &member_id, "t", &[(0, 10, "m0"), (1, 20, "")]);
    assert_eq!(commit_codes(&client.send(8, commit).await), [NONE, NONE]);
    assert_eq!(
        committed(&mut client, "g", "t", &[0, 1, 2]).await,
        [10, 20, -1]
    );

    // The multi-group form (v8): all of g's offsets, and an unknown group's.
    let multi = client
        .send(
            8,
            OffsetFetchRequest::default().with_groups(vec![
                OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(str_bytes("g")))
                    .with_topics(None),
                OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(str_bytes("other")))
                    .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                        .with_name(topic_name("t"))
                        .with_partition_indexes(vec![0])])),
            ]),
        )
        .await;
    let g = &multi.groups[0];
    assert_eq!(g.error_code, NONE);
    let mut all: Vec<(i32, i64, String)> = g.topics[0]
        .partitions
        .iter()
        .map(|p| {
            let metadata = p.metadata.as_ref().map(|m| m.as_str().to_string());
            (
                p.partition_index,
                p.committed_offset,
                metadata.unwrap_or_default(),
            )
        })
        .collect();
    all.sort();
    assert_eq!(all, [(0, 10, "m0".to_string()), (1, 20, String::new())]);
    assert_eq!(
        multi.groups[1].topics[0].partitions[0].committed_offset, -1,
        "{multi:?}"
    );

    assert_eq!(
        describe(&mut client, 5, "g").await,
        (NONE, "Stable".into(), 1)
    );
    let listed = client
        .send(
            4,
            ListGroupsRequest::default().with_states_filter(vec![str_bytes("stable")]),
        )
        .await;
    assert_eq!(listed.groups.len(), 1);
    assert_eq!(listed.groups[0].group_state.as_str(), "Stable");
    let none_empty = client
        .send(
            4,
            ListGroupsRequest::default().with_states_filter(vec![str_bytes("Empty")]),
        )
        .await;
    assert!(none_empty.groups.is_empty());

    // OffsetDelete refuses the subscribed topic while the member is there.
    let offset_delete = OffsetDeleteRequest::default()
        .with_group_id(GroupId(str_bytes("g")))
        .with_topics(vec![OffsetDeleteRequestTopic::default()
            .with_name(topic_name("t"))
            .with_partitions(vec![
                OffsetDeleteRequestPartition::default().with_partition_index(1)
            ])]);
    let refused = client.send(0, offset_delete.clone()).await;
    assert_eq!(
        refused.topics[0].partitions[0].error_code,
        GROUP_SUBSCRIBED_TO_TOPIC
    );
    let deleted = client
        .send(
            2,
            DeleteGroupsRequest::default().with_groups_names(vec![GroupId(str_bytes("g"))]),
        )
        .await;
    assert_eq!(deleted.results[0].error_code, NON_EMPTY_GROUP);

    let left = client
        .send(
            4,
            LeaveGroupRequest::default()
                .with_group_id(GroupId(str_bytes("g")))
                .with_members(vec![
                    MemberIdentity::default().with_member_id(str_bytes(&member_id)),
                    MemberIdentity::default().with_member_id(str_bytes("stranger")),
                ]),
        )
        .await;
    let codes: Vec<i16> = left.members.iter().map(|m| m.error_code).collect();
    assert_eq!(codes, [NONE, UNKNOWN_MEMBER_ID]);
    assert_eq!(
        describe(&mut client, 5, "g").await,
        (NONE, "Empty".into(), 0)
    );
    assert_eq!(
        client.send(4, heartbeat).await.error_code,
        UNKNOWN_MEMBER_ID
    );

    let removed = client.send(0, offset_delete).await;
    assert_eq!(removed.topics[0].partitions[0].error_code, NONE);
    assert_eq!(committed(&mut client, "g", "t", &[0, 1]).await, [10, -1]);
    let deleted = client
        .send(
            2,
            DeleteGroupsRequest::default()
                .with_groups_names(vec![GroupId(str_bytes("g")), GroupId(str_bytes("never"))]),
        )
        .await;
    let codes: Vec<i16> = deleted.results.iter().map(|r| r.error_code).collect();
    assert_eq!(codes, [NONE, GROUP_ID_NOT_FOUND]);
    assert_eq!(committed(&mut client, "g", "t", &[0]).await, [-1]);
    assert_eq!(
        describe(&mut client, 5, "g").await,
        (NONE, "Dead".into(), 0)
    );
    assert_eq!(describe(&mut client, 6, "g").await.0, GROUP_ID_NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_kafka_errors_and_the_group_keeps_working() {
    let broker = TestBroker::start_with(quick_groups).await;
    let mut client = broker.client().await;
    client.create_topic("t", 2, &[]).await;
    client
        .send(
            3,
            FindCoordinatorRequest::default().with_key(str_bytes("g")),
        )
        .await;

    let no_group = client.send(5, join_request("", "", &["t"])).await;
    assert_eq!(no_group.error_code, INVALID_GROUP_ID);
    let too_short = client
        .send(5, join_request("g", "", &["t"]).with_session_timeout_ms(10))
        .await;
    assert_eq!(too_short.error_code, INVALID_SESSION_TIMEOUT);
    let too_long = client
        .send(
            5,
            join_request("g", "", &["t"]).with_session_timeout_ms(i32::MAX),
        )
        .await;
    assert_eq!(too_long.error_code, INVALID_SESSION_TIMEOUT);
    let no_protocols = client
        .send(5, join_request("g", "", &["t"]).with_protocols(vec![]))
        .await;
    assert_eq!(no_protocols.error_code, INCONSISTENT_GROUP_PROTOCOL);
    let made_up = client.send(5, join_request("g", "made-up", &["t"])).await;
    assert_eq!(made_up.error_code, UNKNOWN_MEMBER_ID);

    let joined = join(&mut client, "g", &["t"]).await;
    let member_id = joined.member_id.as_str().to_string();
    let synced = client.send(5, sync_request("g", &joined, b"x")).await;
    assert_eq!(synced.error_code, NONE);

    // Sync with a stale generation or as a stranger.
    let mut stale = sync_request("g", &joined, b"x");
    stale.generation_id = 0;
    assert_eq!(client.send(5, stale).await.error_code, ILLEGAL_GENERATION);
    let mut stranger = sync_request("g", &joined, b"x");
    stranger.member_id = str_bytes("stranger");
    assert_eq!(client.send(5, stranger).await.error_code, UNKNOWN_MEMBER_ID);
    let mut wrong_protocol = sync_request("g", &joined, b"x");
    wrong_protocol.protocol_name = Some(str_bytes("roundrobin"));
    assert_eq!(
        client.send(5, wrong_protocol).await.error_code,
        INCONSISTENT_GROUP_PROTOCOL
    );

    // Commits: unknown partitions and oversize metadata per partition,
    // member and generation errors for all.
    let big = "x".repeat(4097);
    let mixed = commit_request(
        "g",
        1,
        &member_id,
        "t",
        &[(0, 5, ""), (9, 5, ""), (1, 5, &big)],
    );
    assert_eq!(
        commit_codes(&client.send(8, mixed).await),
        [NONE, UNKNOWN_TOPIC_OR_PARTITION, OFFSET_METADATA_TOO_LARGE]
    );
    let unknown_topic = commit_request("g", 1, &member_id, "nope", &[(0, 5, "")]);
    assert_eq!(
        commit_codes(&client.send(8, unknown_topic).await),
        [UNKNOWN_TOPIC_OR_PARTITION]
    );
    let stale = commit_request("g", 7, &member_id, "t", &[(0, 6, "")]);
    assert_eq!(
        commit_codes(&client.send(8, stale).await),
        [ILLEGAL_GENERATION]
    );
    let stranger = commit_request("g", 1, "stranger", "t", &[(0, 6, "")]);
    assert_eq!(
        commit_codes(&client.send(8, stranger).await),
        [UNKNOWN_MEMBER_ID]
    );
    let simple = commit_request("g", -1, "", "t", &[(0, 6, "")]);
    assert_eq!(
        commit_codes(&client.send(8, simple).await),
        [UNKNOWN_MEMBER_ID],
        "a group with members takes no commits from outside it"
    );
    let no_group = commit_request("", -1, "", "t", &[(0, 6, "")]);
    assert_eq!(
        commit_codes(&client.send(8, no_group).await),
        [INVALID_GROUP_ID]
    );
    let unknown_group = commit_request("fresh", 3, "m", "t", &[(0, 6, "")]);
    assert_eq!(
        commit_codes(&client.send(8, unknown_group).await),
        [ILLEGAL_GENERATION]
    );
    assert_eq!(committed(&mut client, "g", "t", &[0, 1]).await, [5, -1]);

    // A second member starts a rebalance: the first's commits and
    // heartbeats are told so until it rejoins.
    let mut other = broker.client().await;
    let first = other.send(5, join_request("g", "", &["t"])).await;
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
    // group.max.size is 2: one member and one being admitted fill it.
    let full = client.send(5, join_request("g", "", &["t"])).await;
    assert_eq!(full.error_code, GROUP_MAX_SIZE_REACHED);
    let second_id = first.member_id.as_str().to_string();
    let waiting = tokio::spawn(async move {
        let answer = other.send(5, join_request("g", &second_id, &["t"])).await;
        (other, answer)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let heartbeat = HeartbeatRequest::default()
        .with_group_id(GroupId(str_bytes("g")))
        .with_generation_id(1)
        .with_member_id(str_bytes(&member_id));
    assert_eq!(
        client.send(4, heartbeat).await.error_code,
        REBALANCE_IN_PROGRESS
    );
    let rejoined = client.send(5, join_request("g", &member_id, &["t"])).await;
    let (_other, second) = waiting.await.unwrap();
    assert_eq!((rejoined.error_code, second.error_code), (NONE, NONE));
    assert_eq!((rejoined.generation_id, second.generation_id), (2, 2));
    let leader_is_first = rejoined.leader == rejoined.member_id;
    assert_eq!(
        (rejoined.members.len(), second.members.len()),
        if leader_is_first { (2, 0) } else { (0, 2) }
    );
    // The group still takes commits from a member of the new generation.
    let ok = commit_request("g", 2, &member_id, "t", &[(1, 9, "")]);
    let codes = commit_codes(&client.send(8, ok).await);
    // Until the leader syncs the group is completing its rebalance.
    assert_eq!(codes, [REBALANCE_IN_PROGRESS]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_offsets_survive_a_restart() {
    groups_and_offsets_survive_a_restart_with(quick_groups).await;
}

/// [`groups_and_offsets_survive_a_restart`] with every append on the I/O threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_offsets_survive_a_restart_on_io_threads() {
    groups_and_offsets_survive_a_restart_with(quick_groups_on_io_threads).await;
}

async fn groups_and_offsets_survive_a_restart_with(adjust: fn(&mut BrokerConfig)) {
    let mut broker = TestBroker::start_with(adjust).await;
    let mut client = broker.client().await;
    client.create_topic("t", 2, &[]).await;
    client
        .send(
            3,
            FindCoordinatorRequest::default().with_key(str_bytes("g")),
        )
        .await;
    let joined = join(&mut client, "g", &["t"]).await;
    let member_id = joined.member_id.as_str().to_string();
    client
        .send(5, sync_request("g", &joined, b"assigned"))
        .await;
    let commit = commit_request("g", 1, &member_id, "t", &[(0, 3, ""), (1, 4, "")]);
    assert_eq!(commit_codes(&client.send(8, commit).await), [NONE, NONE]);
    // A second group that only commits (generation -1), then deleted.
    let simple = commit_request("simple", -1, "", "t", &[(0, 1, "")]);
    assert_eq!(commit_codes(&client.send(8, simple).await), [NONE]);
    let deleted = client
        .send(
            1,
            DeleteGroupsRequest::default().with_groups_names(vec![GroupId(str_bytes("simple"))]),
        )
        .await;
    assert_eq!(deleted.results[0].error_code, NONE);
    drop(client);

    broker.restart_with(adjust).await;
    let mut client = broker.client().await;
    // Loading may still be under way.
    let mut attempts = 0;
    let offsets = loop {
        let response = client
            .send(
                5,
                OffsetFetchRequest::default()
                    .with_group_id(GroupId(str_bytes("g")))
                    .with_topics(None),
            )
            .await;
        if response.error_code == COORDINATOR_LOAD_IN_PROGRESS && attempts < 100 {
            attempts += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(response.error_code, NONE);
        let mut offsets: Vec<(i32, i64)> = response.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.committed_offset))
            .collect();
        offsets.sort();
        break offsets;
    };
    assert_eq!(offsets, [(0, 3), (1, 4)]);
    assert_eq!(committed(&mut client, "simple", "t", &[0]).await, [-1]);
    // The member and its assignment came back: no rebalance needed.
    assert_eq!(
        describe(&mut client, 5, "g").await,
        (NONE, "Stable".into(), 1)
    );
    let heartbeat = HeartbeatRequest::default()
        .with_group_id(GroupId(str_bytes("g")))
        .with_generation_id(1)
        .with_member_id(str_bytes(&member_id));
    assert_eq!(client.send(4, heartbeat).await.error_code, NONE);
    let again = client.send(5, sync_request("g", &joined, b"ignored")).await;
    assert_eq!(&again.assignment[..], b"assigned");
    let stranger = HeartbeatRequest::default()
        .with_group_id(GroupId(str_bytes("g")))
        .with_generation_id(1)
        .with_member_id(str_bytes("someone-else"));
    assert_eq!(client.send(4, stranger).await.error_code, UNKNOWN_MEMBER_ID);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_removes_its_committed_offsets() {
    use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;

    let mut broker = TestBroker::start_with(quick_groups).await;
    let mut client = broker.client().await;
    client.create_topic("gone", 1, &[]).await;
    client.create_topic("kept", 1, &[]).await;
    client
        .send(
            3,
            FindCoordinatorRequest::default().with_key(str_bytes("g")),
        )
        .await;
    for topic in ["gone", "kept"] {
        let commit = commit_request("g", -1, "", topic, &[(0, 7, "")]);
        assert_eq!(commit_codes(&client.send(8, commit).await), [NONE]);
    }
    let deleted = client
        .send(
            4,
            DeleteTopicsRequest::default()
                .with_topic_names(vec![topic_name("gone")])
                .with_timeout_ms(5_000),
        )
        .await;
    assert_eq!(deleted.responses[0].error_code, NONE);
    client.create_topic("gone", 1, &[]).await;
    assert_eq!(committed(&mut client, "g", "gone", &[0]).await, [-1]);
    assert_eq!(committed(&mut client, "g", "kept", &[0]).await, [7]);
    // The tombstones are in the log: a restart does not bring them back.
    drop(client);
    broker.restart_with(quick_groups).await;
    let mut client = broker.client().await;
    assert_eq!(committed(&mut client, "g", "gone", &[0]).await, [-1]);
    assert_eq!(committed(&mut client, "g", "kept", &[0]).await, [7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_of_empty_groups_expire() {
    let broker = TestBroker::start_with(|config| {
        quick_groups(config);
        config.groups.offsets_retention_ms = 200;
        config.groups.offsets_retention_check_interval = Duration::from_millis(50);
    })
    .await;
    let mut client = broker.client().await;
    client.create_topic("t", 1, &[]).await;
    client
        .send(
            3,
            FindCoordinatorRequest::default().with_key(str_bytes("g")),
        )
        .await;
    let commit = commit_request("g", -1, "", "t", &[(0, 7, "")]);
    assert_eq!(commit_codes(&client.send(8, commit).await), [NONE]);
    let mut expired = false;
    for _ in 0..100 {
        if committed(&mut client, "g", "t", &[0]).await == [-1] {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(expired, "the offset never expired");
    // The group went with its last offset.
    let listed = client.send(3, ListGroupsRequest::default()).await;
    assert!(listed.groups.is_empty(), "{listed:?}");
}

/// Member metadata too large for a `__consumer_offsets` record: the
/// leader's SyncGroup fails with an error (as Kafka's does), nothing is
/// half-written, and the group works again once that member is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_member_metadata_fails_the_sync_not_the_group() {
    const UNKNOWN_SERVER_ERROR: i16 = -1;
    let broker = TestBroker::start_with(quick_groups).await;
    let mut client = broker.client().await;
    client
        .send(
            3,
            FindCoordinatorRequest::default().with_key(str_bytes("g")),
        )
        .await;
    let huge = Bytes::from(vec![7u8; 2 * 1024 * 1024]);
    let mut request = join_request("g", "", &["t"]);
    request.protocols[0].metadata = huge.clone();
    let first = client.send(5, request.clone()).await;
    request.member_id = first.member_id.clone();
    let joined = client.send(5, request).await;
    assert_eq!(joined.error_code, NONE);
    assert_eq!(joined.members[0].metadata.len(), huge.len());
    let synced = client.send(5, sync_request("g", &joined, b"x")).await;
    assert_eq!(synced.error_code, UNKNOWN_SERVER_ERROR);
    let left = client
        .send(
            1,
            LeaveGroupRequest::default()
                .with_group_id(GroupId(str_bytes("g")))
                .with_member_id(joined.member_id.clone()),
        )
        .await;
    assert_eq!(left.error_code, NONE);

    let joined = join(&mut client, "g", &["t"]).await;
    assert_eq!(joined.error_code, NONE);
    let synced = client.send(5, sync_request("g", &joined, b"ok")).await;
    assert_eq!(
        (synced.error_code, &synced.assignment[..]),
        (NONE, &b"ok"[..])
    );
}

/// OffsetCommits pipelined on one connection take effect in request
/// order, as Kafka's one-request-at-a-time connections do: the last
/// commit sent is the one that stays (librdkafka's async commits send
/// them like this).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commits_take_effect_in_request_order() {
    pipelined_commits_take_effect_in_request_order_with(quick_groups).await;
}

/// [`pipelined_commits_take_effect_in_request_order`] with every append on the I/O threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commits_take_effect_in_request_order_on_io_threads() {
    pipelined_commits_take_effect_in_request_order_with(quick_groups_on_io_threads).await;
}

async fn pipelined_commits_take_effect_in_request_order_with(adjust: fn(&mut BrokerConfig)) {
    const COMMITS: i64 = 50;
    let broker = TestBroker::start_with(adjust).await;
    let mut client = broker.client().await;
    client.create_topic("t", 1, &[]).await;
    client
        .send(
            3,
            FindCoordinatorRequest::default().with_key(str_bytes("g")),
        )
        .await;
    for round in 0..20 {
        let group = format!("pipelined-{round}");
        let mut sent = Vec::new();
        for offset in 1..=COMMITS {
            let commit = commit_request(&group, -1, "", "t", &[(0, offset, "")]);
            sent.push(client.write(8, commit).await);
        }
        for correlation_id in sent {
            let answer = client.read::<OffsetCommitRequest>(8, correlation_id).await;
            assert_eq!(commit_codes(&answer), [NONE]);
        }
        assert_eq!(
            committed(&mut client, &group, "t", &[0]).await,
            [COMMITS],
            "round {round}: an earlier commit overtook a later one"
        );
    }
    // Where the commits were appended: on the I/O threads exactly when so
    // configured (nothing else here makes the disk push back for long).
    let node = broker.broker();
    let moved = node.replicas.disk_pressure().appends_moved();
    if node.config.disk_threads.appends_on_io_threads {
        assert!(moved >= 20 * COMMITS as u64, "{moved} appends moved");
    }
}

/// Kafka's timers fire at their deadlines; rill's coordinator ticks every
/// 50 ms. A ListGroups, DescribeGroups or DeleteGroups that comes right
/// after a member's session deadline must not see the member any more
/// (it used to until the next tick: Stable, NON_EMPTY_GROUP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_right_after_a_session_deadline_see_the_member_gone() {
    const SESSION_MS: u64 = 1_000;
    const TRIES: u64 = 9;
    let broker = TestBroker::start_with(quick_groups).await;
    let mut client = broker.client().await;
    client.create_topic("t", 1, &[]).await;
    client
        .send(
            3,
            FindCoordinatorRequest::default().with_key(str_bytes("g")),
        )
        .await;
    let mut tries = Vec::new();
    for i in 0..TRIES {
        let mut client = broker.client().await;
        tries.push(tokio::spawn(async move {
            // Spread over the tick, so that the deadlines fall at
            // different points of it.
            tokio::time::sleep(Duration::from_millis(i * 7)).await;
            let group = format!("expiring-{i}");
            let short = |member_id: &str| {
                join_request(&group, member_id, &["t"]).with_session_timeout_ms(SESSION_MS as i32)
            };
            let first = client.send(5, short("")).await;
            let joined = client.send(5, short(first.member_id.as_str())).await;
            assert_eq!(joined.error_code, NONE);
            let synced = client.send(5, sync_request(&group, &joined, b"x")).await;
            assert_eq!(synced.error_code, NONE);
            // The session was last renewed when the broker took the sync,
            // before this answer came: it is over one session from now.
            tokio::time::sleep(Duration::from_millis(SESSION_MS + 1)).await;
            // Each decision comes first in a third of the tries.
            match i % 3 {
                0 => {
                    let listed = listed_state(&mut client, &group).await;
                    assert_eq!(listed.as_deref(), Some("Empty"));
                    assert_eq!(delete_group(&mut client, &group).await, NONE);
                }
                1 => {
                    let described = describe(&mut client, 5, &group).await;
                    assert_eq!(described, (NONE, "Empty".into(), 0));
                    assert_eq!(delete_group(&mut client, &group).await, NONE);
                }
                _ => assert_eq!(delete_group(&mut client, &group).await, NONE),
            }
        }));
    }
    for attempt in tries {
        attempt.await.expect("a try failed");
    }
}

/// KIP-430: DescribeGroups with `include_authorized_operations` answers,
/// for each group found, every operation Kafka's group resource has
/// (without an authorizer): READ 3, DELETE 6, DESCRIBE 8, and since
/// Kafka 3.9 (group configs) DESCRIBE_CONFIGS 10 and ALTER_CONFIGS 11.
/// A group answered with an error keeps "not asked for", as in Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_groups_answers_authorized_operations() {
    const GROUP_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8) | (1 << 10) | (1 << 11);
    const OMITTED: i32 = i32::MIN;
    let broker = TestBroker::start_with(quick_groups).await;
    let mut client = broker.client().await;
    client.create_topic("t", 1, &[]).await;
    client
        .send(
            3,
            FindCoordinatorRequest::default().with_key(str_bytes("g")),
        )
        .await;
    let commit = commit_request("g", -1, "", "t", &[(0, 1, "")]);
    assert_eq!(commit_codes(&client.send(8, commit).await), [NONE]);
    let groups = vec![
        GroupId(str_bytes("g")),
        GroupId(str_bytes("never")),
        GroupId(str_bytes("")),
    ];
    for version in 3..=6 {
        let request = DescribeGroupsRequest::default().with_groups(groups.clone());
        let plain = client.send(version, request.clone()).await;
        for group in &plain.groups {
            assert_eq!(group.authorized_operations, OMITTED, "v{version}");
        }
        let asked = client
            .send(version, request.with_include_authorized_operations(true))
            .await;
        let answered: Vec<(i16, i32)> = asked
            .groups
            .iter()
            .map(|g| (g.error_code, g.authorized_operations))
            .collect();
        // An unknown group is "Dead" without an error before v6.
        let never = if version >= 6 {
            (GROUP_ID_NOT_FOUND, OMITTED)
        } else {
            (NONE, GROUP_OPERATIONS)
        };
        assert_eq!(
            answered,
            [(NONE, GROUP_OPERATIONS), never, (INVALID_GROUP_ID, OMITTED)],
            "v{version}"
        );
    }
}

/// A static member that comes back with a new member id (its process
/// restarted) to a stable group is answered without a rebalance, but only
/// once the group's record with the new id is durable: the answer is not
/// given before the `__consumer_offsets` partition is fsynced past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_members_replacement_is_durable_before_its_answer() {
    let broker = TestBroker::start_with(quick_groups).await;
    let mut client = broker.client().await;
    client.create_topic("t", 1, &[]).await;
    client
        .send(
            3,
            FindCoordinatorRequest::default().with_key(str_bytes("static")),
        )
        .await;
    let static_join =
        join_request("static", "", &["t"]).with_group_instance_id(Some(str_bytes("instance-1")));
    let joined = client.send(5, static_join.clone()).await;
    assert_eq!(joined.error_code, NONE);
    let synced = client
        .send(5, sync_request("static", &joined, b"assigned"))
        .await;
    assert_eq!(synced.error_code, NONE);

    let partition = rill_broker::group::partition_for("static", 5);
    let log = broker
        .broker()
        .replicas
        .get("__consumer_offsets", partition)
        .expect("the group's partition")
        .log
        .clone();
    for _ in 0..5 {
        let end_before = log.log_end_offset();
        let again = client.send(5, static_join.clone()).await;
        assert_eq!(again.error_code, NONE);
        assert_ne!(again.member_id, joined.member_id);
        assert_eq!(again.generation_id, joined.generation_id, "no rebalance");
        assert!(
            log.log_end_offset() > end_before,
            "the replacement is written"
        );
        assert!(
            log.recovery_point() >= log.log_end_offset(),
            "answered before the group's record was durable: recovery point {}, log end {}",
            log.recovery_point(),
            log.log_end_offset()
        );
    }
    client.assert_serving().await;
    broker.stop().await;
}

/// The number of groups is bounded: past `groups_max`, a JoinGroup or an
/// OffsetCommit with generation -1 that would create a group is answered
/// COORDINATOR_NOT_AVAILABLE (retriable; Kafka has no such bound), while
/// the groups there are keep working, and a deleted group makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_number_of_groups_is_bounded() {
    let broker = TestBroker::start_with(|config| {
        quick_groups(config);
        config.groups.groups_max = 2;
    })
    .await;
    let mut client = broker.client().await;
    client.create_topic("t", 1, &[]).await;
    client
        .send(
            3,
            FindCoordinatorRequest::default().with_key(str_bytes("g1")),
        )
        .await;
    for group in ["g1", "g2"] {
        let commit = commit_request(group, -1, "", "t", &[(0, 1, "")]);
        assert_eq!(
            commit_codes(&client.send(8, commit).await),
            [NONE],
            "{group}"
        );
    }
    let commit = commit_request("g3", -1, "", "t", &[(0, 1, "")]);
    assert_eq!(
        commit_codes(&client.send(8, commit).await),
        [COORDINATOR_NOT_AVAILABLE]
    );
    let joined = client.send(5, join_request("g4", "", &["t"])).await;
    assert_eq!(joined.error_code, COORDINATOR_NOT_AVAILABLE);
    assert_eq!(listed_state(&mut client, "g3").await, None);
    assert_eq!(listed_state(&mut client, "g4").await, None);

    // The groups there keep working.
    let commit = commit_request("g1", -1, "", "t", &[(0, 5, "")]);
    assert_eq!(commit_codes(&client.send(8, commit).await), [NONE]);
    assert_eq!(committed(&mut client, "g1", "t", &[0]).await, [5]);

    // A deleted group makes room for a new one.
    assert_eq!(delete_group(&mut client, "g2").await, NONE);
    let first = client.send(5, join_request("g4", "", &["t"])).await;
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
    let commit = commit_request("g3", -1, "", "t", &[(0, 1, "")]);
    assert_eq!(
        commit_codes(&client.send(8, commit).await),
        [COORDINATOR_NOT_AVAILABLE],
        "g4 took the room"
    );
    client.assert_serving().await;
    broker.stop().await;
}
