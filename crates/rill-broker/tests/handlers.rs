//! End-to-end tests of the admin and replication handlers over real
//! sockets: the happy path of each, then bad input with the exact Kafka
//! error codes, and that the broker keeps serving afterwards.

mod common;

use std::collections::BTreeMap;

use common::{config_map, str_bytes, topic_name, Client, TestBroker};
use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsAssignment, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::DescribeConfigsResult;
use kafka_protocol::messages::incremental_alter_configs_request as incremental;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, ApiKey, ApiVersionsRequest, BrokerId, CreatePartitionsRequest,
    CreateTopicsRequest, DeleteRecordsRequest, DescribeClusterRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest, MetadataRequest, OffsetForLeaderEpochRequest,
};

// Kafka error codes.
const NONE: i16 = 0;
const OFFSET_OUT_OF_RANGE: i16 = 1;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const INVALID_PARTITIONS: i16 = 37;
const INVALID_REPLICATION_FACTOR: i16 = 38;
const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
const INVALID_CONFIG: i16 = 40;
const INVALID_REQUEST: i16 = 42;
const POLICY_VIOLATION: i16 = 44;
const UNKNOWN_LEADER_EPOCH: i16 = 75;
const UNKNOWN_TOPIC_ID: i16 = 100;
const MISMATCHED_ENDPOINT_TYPE: i16 = 114;
const UNSUPPORTED_ENDPOINT_TYPE: i16 = 115;

// Config resource types and sources.
const TOPIC: i8 = 2;
const BROKER: i8 = 4;
const BROKER_LOGGER: i8 = 8;
const GROUP: i8 = 32;
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DYNAMIC_BROKER: i8 = 2;
const SOURCE_DYNAMIC_DEFAULT_BROKER: i8 = 3;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

// IncrementalAlterConfigs operations.
const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_lists_the_new_apis() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    let response = client.send(3, ApiVersionsRequest::default()).await;
    let range = |key: ApiKey| {
        response
            .api_keys
            .iter()
            .find(|api| api.api_key == key as i16)
            .map(|api| (api.min_version, api.max_version))
    };
    assert_eq!(range(ApiKey::DeleteRecords), Some((0, 2)));
    assert_eq!(range(ApiKey::OffsetForLeaderEpoch), Some((2, 4)));
    assert_eq!(range(ApiKey::DescribeConfigs), Some((1, 4)));
    assert_eq!(range(ApiKey::AlterConfigs), Some((0, 2)));
    assert_eq!(range(ApiKey::CreatePartitions), Some((0, 3)));
    assert_eq!(range(ApiKey::IncrementalAlterConfigs), Some((0, 1)));
    assert_eq!(range(ApiKey::DescribeCluster), Some((0, 2)));
    broker.stop().await;
}

// ---------------------------------------------------------------------
// OffsetForLeaderEpoch

fn epoch_request(topic: &str, partitions: &[(i32, i32, i32)]) -> OffsetForLeaderEpochRequest {
    OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![OffsetForLeaderTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(
                partitions
                    .iter()
                    .map(|&(partition, current_leader_epoch, leader_epoch)| {
                        OffsetForLeaderPartition::default()
                            .with_partition(partition)
                            .with_current_leader_epoch(current_leader_epoch)
                            .with_leader_epoch(leader_epoch)
                    })
                    .collect(),
            )])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_for_leader_epoch() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client.create_topic("epochs", 2, &[]).await;
    assert_eq!(client.produce("epochs", 0, 3).await, (NONE, 0));
    assert_eq!(client.produce("epochs", 0, 2).await, (NONE, 3));

    for version in 2..=4 {
        let response = client
            .send(
                version,
                epoch_request(
                    "epochs",
                    &[
                        // The current epoch: it ends at the log end.
                        (0, 0, 0),
                        // A later epoch than any the log knows: Kafka's
                        // `endOffsetFor` answers undefined.
                        (0, -1, 7),
                        // No epoch asked for.
                        (0, -1, -1),
                        // An empty log knows the epoch its leader began:
                        // Kafka's `makeLeader` records it at the log end.
                        (1, 0, 0),
                        // The client thinks the leader is newer.
                        (0, 3, 0),
                        (2, -1, 0),
                        (-1, -1, 0),
                    ],
                ),
            )
            .await;
        let got: Vec<(i32, i16, i32, i64)> = response.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition, p.error_code, p.leader_epoch, p.end_offset))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, NONE, 0, 5),
                (0, NONE, -1, -1),
                (0, NONE, -1, -1),
                (1, NONE, 0, 0),
                (0, UNKNOWN_LEADER_EPOCH, -1, -1),
                (2, UNKNOWN_TOPIC_OR_PARTITION, -1, -1),
                (-1, UNKNOWN_TOPIC_OR_PARTITION, -1, -1),
            ],
            "v{version}"
        );
        let response = client
            .send(version, epoch_request("no-such-topic", &[(0, -1, 0)]))
            .await;
        assert_eq!(
            response.topics[0].partitions[0].error_code,
            UNKNOWN_TOPIC_OR_PARTITION
        );
    }
    client.assert_serving().await;
    broker.stop().await;
}

// ---------------------------------------------------------------------
// DescribeConfigs

fn describe_request(
    resources: &[(i8, &str, Option<&[&str]>)],
    include_synonyms: bool,
) -> DescribeConfigsRequest {
    DescribeConfigsRequest::default()
        .with_include_synonyms(include_synonyms)
        .with_resources(
            resources
                .iter()
                .map(|(resource_type, name, keys)| {
                    DescribeConfigsResource::default()
                        .with_resource_type(*resource_type)
                        .with_resource_name(str_bytes(name))
                        .with_configuration_keys(
                            keys.map(|keys| keys.iter().map(|k| str_bytes(k)).collect()),
                        )
                })
                .collect(),
        )
}

/// Describes one resource (v4, with synonyms) and returns its result.
async fn describe(client: &mut Client, resource_type: i8, name: &str) -> DescribeConfigsResult {
    let mut response = client
        .send(4, describe_request(&[(resource_type, name, None)], true))
        .await;
    assert_eq!(response.results.len(), 1);
    response.results.remove(0)
}

/// name → (value, source) of a described resource.
fn values(result: &DescribeConfigsResult) -> BTreeMap<String, (String, i8)> {
    result
        .configs
        .iter()
        .map(|c| {
            (
                c.name.to_string(),
                (
                    c.value.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                    c.config_source,
                ),
            )
        })
        .collect()
}

fn value_of(result: &DescribeConfigsResult, name: &str) -> (String, i8) {
    values(result)
        .remove(name)
        .unwrap_or_else(|| panic!("{name} not described"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_configs_of_a_topic() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client
        .create_topic(
            "described",
            1,
            &[("retention.ms", "1000"), ("cleanup.policy", "compact")],
        )
        .await;

    let result = describe(&mut client, TOPIC, "described").await;
    assert_eq!(result.error_code, NONE);
    assert_eq!(result.error_message, None);
    let names: Vec<&str> = rill_controller::config::topic_config_names().collect();
    assert_eq!(result.configs.len(), names.len());
    let described = values(&result);
    assert_eq!(
        described["retention.ms"],
        ("1000".to_string(), SOURCE_TOPIC)
    );
    assert_eq!(
        described["cleanup.policy"],
        ("compact".to_string(), SOURCE_TOPIC)
    );
    // Kafka's defaults, which are also the ones rill's log uses.
    for (name, value) in [
        ("segment.bytes", "1073741824"),
        ("segment.ms", "604800000"),
        ("retention.bytes", "-1"),
        ("max.message.bytes", "1048588"),
        ("message.timestamp.type", "CreateTime"),
        ("min.insync.replicas", "1"),
        ("delete.retention.ms", "86400000"),
        ("compression.type", "producer"),
        ("unclean.leader.election.enable", "false"),
    ] {
        assert_eq!(
            described[name],
            (value.to_string(), SOURCE_DEFAULT),
            "{name}"
        );
    }
    let retention = result
        .configs
        .iter()
        .find(|c| c.name.as_str() == "retention.ms")
        .unwrap();
    assert!(!retention.read_only);
    assert!(!retention.is_sensitive);
    assert_eq!(retention.config_type, 5); // LONG
    assert_eq!(retention.documentation, None);
    let synonyms: Vec<(String, String, i8)> = retention
        .synonyms
        .iter()
        .map(|s| {
            (
                s.name.to_string(),
                s.value.as_ref().unwrap().to_string(),
                s.source,
            )
        })
        .collect();
    assert_eq!(
        synonyms,
        vec![
            ("retention.ms".to_string(), "1000".to_string(), SOURCE_TOPIC),
            (
                "log.retention.ms".to_string(),
                "604800000".to_string(),
                SOURCE_DEFAULT
            ),
        ]
    );
    let cleanup = result
        .configs
        .iter()
        .find(|c| c.name.as_str() == "cleanup.policy")
        .unwrap();
    assert_eq!(cleanup.config_type, 7); // LIST

    // A key filter; unknown keys are left out.
    let response = client
        .send(
            4,
            describe_request(
                &[(
                    TOPIC,
                    "described",
                    Some(&["retention.ms", "no.such.config"]),
                )],
                false,
            ),
        )
        .await;
    assert_eq!(response.results[0].configs.len(), 1);
    assert!(response.results[0].configs[0].synonyms.is_empty());

    // Every version answers.
    for version in 1..=4 {
        let response = client
            .send(
                version,
                describe_request(&[(TOPIC, "described", None)], version >= 2),
            )
            .await;
        assert_eq!(response.results[0].error_code, NONE, "v{version}");
        assert_eq!(response.results[0].configs.len(), names.len(), "v{version}");
    }

    // Bad resources, each answered on its own.
    let response = client
        .send(
            4,
            describe_request(
                &[
                    (TOPIC, "no-such-topic", None),
                    (TOPIC, "bad name!", None),
                    (TOPIC, "", None),
                    (BROKER_LOGGER, "1", None),
                    (GROUP, "some-group", None),
                    (99, "x", None),
                    (TOPIC, "described", Some(&["retention.ms"])),
                ],
                false,
            ),
        )
        .await;
    let codes: Vec<i16> = response.results.iter().map(|r| r.error_code).collect();
    assert_eq!(
        codes,
        vec![
            UNKNOWN_TOPIC_OR_PARTITION,
            INVALID_TOPIC_EXCEPTION,
            INVALID_TOPIC_EXCEPTION,
            INVALID_REQUEST,
            INVALID_REQUEST,
            INVALID_REQUEST,
            NONE
        ]
    );
    assert!(response.results[..6].iter().all(|r| r.configs.is_empty()));
    assert_eq!(response.results[5].resource_type, 99);
    assert_eq!(response.results[5].resource_name.as_str(), "x");
    client.assert_serving().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_configs_of_the_broker() {
    let broker = TestBroker::start_with(|config| {
        config.num_partitions = 3;
        config.log_defaults.retention_ms = 3_600_000;
    })
    .await;
    let mut client = broker.client().await;

    let result = describe(&mut client, BROKER, "1").await;
    assert_eq!(result.error_code, NONE);
    let described = values(&result);
    assert_eq!(
        described["num.partitions"],
        ("3".to_string(), SOURCE_STATIC_BROKER)
    );
    assert_eq!(
        described["default.replication.factor"],
        ("1".to_string(), SOURCE_DEFAULT)
    );
    assert_eq!(
        described["auto.create.topics.enable"],
        ("true".to_string(), SOURCE_DEFAULT)
    );
    assert_eq!(
        described["socket.request.max.bytes"],
        ("104857600".to_string(), SOURCE_DEFAULT)
    );
    assert_eq!(
        described["log.retention.ms"],
        ("3600000".to_string(), SOURCE_STATIC_BROKER)
    );
    assert_eq!(
        described["log.segment.bytes"],
        ("1073741824".to_string(), SOURCE_DEFAULT)
    );
    let read_only = |name: &str| {
        result
            .configs
            .iter()
            .find(|c| c.name.as_str() == name)
            .unwrap()
            .read_only
    };
    assert!(read_only("num.partitions"));
    assert!(!read_only("log.retention.ms"));

    // The topic default comes from the broker's setting.
    client.create_topic("plain", 1, &[]).await;
    let topic = describe(&mut client, TOPIC, "plain").await;
    assert_eq!(
        value_of(&topic, "retention.ms"),
        ("3600000".to_string(), SOURCE_STATIC_BROKER)
    );
    let log = broker
        .broker()
        .replicas
        .get("plain", 0)
        .unwrap()
        .log
        .clone();
    assert_eq!(log.config().retention_ms, 3_600_000);

    // "" is the cluster-wide dynamic defaults: none set yet.
    let result = describe(&mut client, BROKER, "").await;
    assert_eq!(result.error_code, NONE);
    assert!(result.configs.is_empty());
    // Another broker's id, or not a number.
    for name in ["2", "one", "-1"] {
        let result = describe(&mut client, BROKER, name).await;
        assert_eq!(result.error_code, INVALID_REQUEST, "{name}");
        assert!(result.error_message.is_some());
    }
    client.assert_serving().await;
    broker.stop().await;
}

// ---------------------------------------------------------------------
// AlterConfigs

/// `(name, value)` pairs of an AlterConfigs resource.
type Configs<'a> = &'a [(&'a str, Option<&'a str>)];

fn alter_request(resources: &[(i8, &str, Configs)], validate_only: bool) -> AlterConfigsRequest {
    AlterConfigsRequest::default()
        .with_validate_only(validate_only)
        .with_resources(
            resources
                .iter()
                .map(|(resource_type, name, configs)| {
                    AlterConfigsResource::default()
                        .with_resource_type(*resource_type)
                        .with_resource_name(str_bytes(name))
                        .with_configs(
                            configs
                                .iter()
                                .map(|(k, v)| {
                                    AlterableConfig::default()
                                        .with_name(str_bytes(k))
                                        .with_value(v.map(str_bytes))
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
}

/// The configs set on a topic, from the controller's image.
fn topic_configs(broker: &TestBroker, topic: &str) -> BTreeMap<String, String> {
    broker
        .broker()
        .controller
        .image()
        .topic(topic)
        .unwrap()
        .configs
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_configs_replaces_a_topics_configs() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client
        .create_topic("altered", 1, &[("retention.ms", "1000")])
        .await;

    // Configs not named go back to their defaults.
    let response = client
        .send(
            2,
            alter_request(
                &[(TOPIC, "altered", &[("segment.ms", Some("100000"))])],
                false,
            ),
        )
        .await;
    assert_eq!(response.responses[0].error_code, NONE);
    assert_eq!(response.responses[0].error_message, None);
    assert_eq!(
        topic_configs(&broker, "altered"),
        config_map(&[("segment.ms", "100000")])
    );
    // The log has its new config before the answer.
    let log = broker
        .broker()
        .replicas
        .get("altered", 0)
        .unwrap()
        .log
        .clone();
    assert_eq!(log.config().segment_ms, 100_000);
    assert_eq!(log.config().retention_ms, 604_800_000);
    let described = describe(&mut client, TOPIC, "altered").await;
    assert_eq!(
        value_of(&described, "retention.ms"),
        ("604800000".to_string(), SOURCE_DEFAULT)
    );
    assert_eq!(
        value_of(&described, "segment.ms"),
        ("100000".to_string(), SOURCE_TOPIC)
    );

    // validate_only checks and changes nothing.
    for version in 0..=2 {
        let response = client
            .send(
                version,
                alter_request(&[(TOPIC, "altered", &[("retention.ms", Some("5"))])], true),
            )
            .await;
        assert_eq!(response.responses[0].error_code, NONE, "v{version}");
        let response = client
            .send(
                version,
                alter_request(&[(TOPIC, "altered", &[("retention.ms", Some("-5"))])], true),
            )
            .await;
        assert_eq!(
            response.responses[0].error_code, INVALID_CONFIG,
            "v{version}"
        );
    }
    assert_eq!(
        topic_configs(&broker, "altered"),
        config_map(&[("segment.ms", "100000")])
    );

    // Bad input, one resource at a time.
    let cases: &[(&str, i8, &str, Configs, i16)] = &[
        (
            "bad value",
            TOPIC,
            "altered",
            &[("retention.ms", Some("-5"))],
            INVALID_CONFIG,
        ),
        (
            "not a number",
            TOPIC,
            "altered",
            &[("segment.bytes", Some("big"))],
            INVALID_CONFIG,
        ),
        (
            "unknown name",
            TOPIC,
            "altered",
            &[("no.such.config", Some("1"))],
            INVALID_CONFIG,
        ),
        (
            "broker name on a topic",
            TOPIC,
            "altered",
            &[("log.retention.ms", Some("1"))],
            INVALID_CONFIG,
        ),
        (
            "null value",
            TOPIC,
            "altered",
            &[("retention.ms", None)],
            INVALID_REQUEST,
        ),
        (
            "duplicate keys",
            TOPIC,
            "altered",
            &[("retention.ms", Some("1")), ("retention.ms", Some("2"))],
            INVALID_REQUEST,
        ),
        (
            "unknown topic",
            TOPIC,
            "no-such-topic",
            &[("retention.ms", Some("1"))],
            UNKNOWN_TOPIC_OR_PARTITION,
        ),
        (
            "invalid topic name",
            TOPIC,
            "bad name!",
            &[("retention.ms", Some("1"))],
            INVALID_TOPIC_EXCEPTION,
        ),
        (
            "empty topic name",
            TOPIC,
            "",
            &[("retention.ms", Some("1"))],
            INVALID_REQUEST,
        ),
        (
            "read-only broker config",
            BROKER,
            "1",
            &[("num.partitions", Some("3"))],
            INVALID_REQUEST,
        ),
        // Kafka answers INVALID_REQUEST to every broker config it will not
        // change at run time, and to a bad value of one it will
        // (ConfigAdminManager, KAFKA-13609).
        (
            "unknown broker config",
            BROKER,
            "1",
            &[("no.such.config", Some("1"))],
            INVALID_REQUEST,
        ),
        (
            "bad broker value",
            BROKER,
            "1",
            &[("log.retention.ms", Some("-7"))],
            INVALID_REQUEST,
        ),
        (
            "another broker",
            BROKER,
            "2",
            &[("log.retention.ms", Some("1"))],
            INVALID_REQUEST,
        ),
        (
            "per-broker config as the cluster default",
            BROKER,
            "",
            &[("sasl.kerberos.min.time.before.relogin", Some("1"))],
            INVALID_REQUEST,
        ),
        (
            "broker logger",
            BROKER_LOGGER,
            "1",
            &[("root", Some("DEBUG"))],
            INVALID_REQUEST,
        ),
        (
            "group",
            GROUP,
            "g",
            &[("consumer.session.timeout.ms", Some("1"))],
            INVALID_REQUEST,
        ),
        ("unknown type", 77, "x", &[], INVALID_REQUEST),
    ];
    for (what, resource_type, name, configs, code) in cases {
        let response = client
            .send(0, alter_request(&[(*resource_type, name, configs)], false))
            .await;
        assert_eq!(response.responses[0].error_code, *code, "{what}");
        assert_eq!(
            response.responses[0].resource_type, *resource_type,
            "{what}"
        );
        assert_eq!(
            response.responses[0].resource_name.as_str(),
            *name,
            "{what}"
        );
        if *code != NONE {
            assert!(response.responses[0].error_message.is_some(), "{what}");
        }
    }
    // A resource named twice is an error for both mentions; the others
    // in the request still apply.
    client.create_topic("other", 1, &[]).await;
    let response = client
        .send(
            1,
            alter_request(
                &[
                    (TOPIC, "altered", &[("retention.ms", Some("1"))]),
                    (TOPIC, "other", &[("retention.ms", Some("2"))]),
                    (TOPIC, "altered", &[("retention.ms", Some("3"))]),
                ],
                false,
            ),
        )
        .await;
    let codes: Vec<i16> = response.responses.iter().map(|r| r.error_code).collect();
    assert_eq!(codes, vec![INVALID_REQUEST, NONE, INVALID_REQUEST]);
    assert_eq!(
        topic_configs(&broker, "altered"),
        config_map(&[("segment.ms", "100000")])
    );
    assert_eq!(
        topic_configs(&broker, "other"),
        config_map(&[("retention.ms", "2")])
    );
    client.assert_serving().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_broker_configs_set_topic_defaults() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client
        .create_topic("follows", 1, &[("segment.bytes", "1048576")])
        .await;
    let response = client
        .send(
            2,
            alter_request(
                &[(
                    BROKER,
                    "1",
                    &[
                        ("log.retention.ms", Some("3600000")),
                        ("log.segment.bytes", Some("2097152")),
                    ],
                )],
                false,
            ),
        )
        .await;
    assert_eq!(response.responses[0].error_code, NONE);
    let log = broker
        .broker()
        .replicas
        .get("follows", 0)
        .unwrap()
        .log
        .clone();
    // The broker's value is the default; the topic's own value wins.
    assert_eq!(log.config().retention_ms, 3_600_000);
    assert_eq!(log.config().segment_bytes, 1_048_576);

    let described = describe(&mut client, BROKER, "1").await;
    assert_eq!(
        value_of(&described, "log.retention.ms"),
        ("3600000".to_string(), SOURCE_DYNAMIC_BROKER)
    );
    let described = describe(&mut client, TOPIC, "follows").await;
    assert_eq!(
        value_of(&described, "retention.ms"),
        ("3600000".to_string(), SOURCE_DYNAMIC_BROKER)
    );
    assert_eq!(
        value_of(&described, "segment.bytes"),
        ("1048576".to_string(), SOURCE_TOPIC)
    );

    // AlterConfigs replaces the broker's whole dynamic set.
    let response = client
        .send(
            0,
            alter_request(
                &[(BROKER, "1", &[("log.segment.bytes", Some("2097152"))])],
                false,
            ),
        )
        .await;
    assert_eq!(response.responses[0].error_code, NONE);
    assert_eq!(log.config().retention_ms, 604_800_000);
    let described = describe(&mut client, TOPIC, "follows").await;
    assert_eq!(
        value_of(&described, "retention.ms"),
        ("604800000".to_string(), SOURCE_DEFAULT)
    );
    client.assert_serving().await;
    broker.stop().await;
}

/// Kafka's dynamic broker configs that rill has no use for yet are
/// accepted and stored per broker and as the cluster-wide default, listed
/// by DescribeConfigs with their sources; the cluster-wide `log.*`
/// defaults apply to the logs; what Kafka refuses stays refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafkas_dynamic_broker_configs_are_stored_and_described() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client.create_topic("defaults", 1, &[]).await;
    let set = |name: &'static str, value: &'static str| (name, SET, Some(value));
    for (name, ops) in [
        (
            "1",
            vec![
                set("sasl.kerberos.min.time.before.relogin", "60000"),
                set("log.cleaner.threads", "2"),
                set("listener.name.plaintext.ssl.keystore.password", "secret"),
                set("max.connections", "500"),
            ],
        ),
        (
            "",
            vec![
                set("log.cleaner.threads", "3"),
                set("num.io.threads", "16"),
                set("log.retention.ms", "3600000"),
            ],
        ),
    ] {
        let response = client
            .send(1, incremental_request(BROKER, name, &ops, false))
            .await;
        assert_eq!(
            (
                response.responses[0].error_code,
                &response.responses[0].error_message
            ),
            (NONE, &None),
            "broker {name:?}"
        );
    }

    // What Kafka refuses, with Kafka's code.
    for (name, config, value) in [
        ("1", "broker.id", "2"),
        ("1", "log.dirs", "/tmp"),
        ("1", "log.roll.hours", "1"),
        ("1", "ssl.keystore.location", "/k.jks"),
        ("1", "log.cleaner.threads", "many"),
        ("", "sasl.kerberos.min.time.before.relogin", "1"),
        (
            "",
            "listener.name.plaintext.ssl.keystore.location",
            "/k.jks",
        ),
    ] {
        for version in [0, 1] {
            let response = client
                .send(
                    version,
                    incremental_request(BROKER, name, &[set(config, value)], false),
                )
                .await;
            assert_eq!(
                response.responses[0].error_code, INVALID_REQUEST,
                "{config} on {name:?}"
            );
        }
        let response = client
            .send(
                0,
                alter_request(&[(BROKER, name, &[(config, Some(value))])], false),
            )
            .await;
        assert_eq!(
            response.responses[0].error_code, INVALID_REQUEST,
            "{config} on {name:?}"
        );
    }

    // A list operation's result is checked too.
    let response = client
        .send(
            1,
            incremental_request(
                BROKER,
                "1",
                &[("log.cleanup.policy", APPEND, Some("forever"))],
                false,
            ),
        )
        .await;
    assert_eq!(response.responses[0].error_code, INVALID_REQUEST);

    let described = describe(&mut client, BROKER, "1").await;
    assert_eq!(described.error_code, NONE);
    assert_eq!(
        value_of(&described, "sasl.kerberos.min.time.before.relogin"),
        ("60000".to_string(), SOURCE_DYNAMIC_BROKER)
    );
    assert_eq!(
        value_of(&described, "log.cleaner.threads"),
        ("2".to_string(), SOURCE_DYNAMIC_BROKER)
    );
    assert_eq!(
        value_of(&described, "num.io.threads"),
        ("16".to_string(), SOURCE_DYNAMIC_DEFAULT_BROKER)
    );
    assert_eq!(
        value_of(&described, "log.retention.ms"),
        ("3600000".to_string(), SOURCE_DYNAMIC_DEFAULT_BROKER)
    );
    assert_eq!(
        value_of(&described, "max.connections"),
        ("500".to_string(), SOURCE_DYNAMIC_BROKER)
    );
    let entry = |result: &DescribeConfigsResult, name: &str| {
        result
            .configs
            .iter()
            .find(|c| c.name.as_str() == name)
            .unwrap_or_else(|| panic!("{name} not described"))
            .clone()
    };
    // The broker's own value first, then the cluster default, then Kafka's.
    let synonyms: Vec<(String, Option<String>, i8)> = entry(&described, "log.cleaner.threads")
        .synonyms
        .iter()
        .map(|s| {
            (
                s.name.to_string(),
                s.value.as_ref().map(|v| v.to_string()),
                s.source,
            )
        })
        .collect();
    assert_eq!(
        synonyms,
        [
            (
                "log.cleaner.threads".to_string(),
                Some("2".to_string()),
                SOURCE_DYNAMIC_BROKER
            ),
            (
                "log.cleaner.threads".to_string(),
                Some("3".to_string()),
                SOURCE_DYNAMIC_DEFAULT_BROKER
            ),
            (
                "log.cleaner.threads".to_string(),
                Some("1".to_string()),
                SOURCE_DEFAULT
            ),
        ]
    );
    // Listed before it is set, with Kafka's default.
    assert_eq!(
        value_of(&described, "num.replica.fetchers"),
        ("1".to_string(), SOURCE_DEFAULT)
    );
    // A password is listed, without its value.
    let password = entry(&described, "listener.name.plaintext.ssl.keystore.password");
    assert!(password.is_sensitive);
    assert_eq!(password.value, None);
    assert_eq!(password.config_source, SOURCE_DYNAMIC_BROKER);
    assert!(!entry(&described, "max.connections").read_only);
    assert!(entry(&described, "broker.id").read_only);

    // The cluster-wide defaults: only what is set at that level.
    let defaults = values(&describe(&mut client, BROKER, "").await);
    assert_eq!(
        defaults,
        BTreeMap::from([
            (
                "log.cleaner.threads".to_string(),
                ("3".to_string(), SOURCE_DYNAMIC_DEFAULT_BROKER)
            ),
            (
                "log.retention.ms".to_string(),
                ("3600000".to_string(), SOURCE_DYNAMIC_DEFAULT_BROKER)
            ),
            (
                "num.io.threads".to_string(),
                ("16".to_string(), SOURCE_DYNAMIC_DEFAULT_BROKER)
            ),
        ])
    );

    // The cluster-wide log.* default applies to the topic's log.
    let log = broker
        .broker()
        .replicas
        .get("defaults", 0)
        .unwrap()
        .log
        .clone();
    assert_eq!(log.config().retention_ms, 3_600_000);
    let topic = describe(&mut client, TOPIC, "defaults").await;
    assert_eq!(
        value_of(&topic, "retention.ms"),
        ("3600000".to_string(), SOURCE_DYNAMIC_DEFAULT_BROKER)
    );
    // The broker's own value beats the cluster default.
    let response = client
        .send(
            1,
            incremental_request(BROKER, "1", &[set("log.retention.ms", "7200000")], false),
        )
        .await;
    assert_eq!(response.responses[0].error_code, NONE);
    assert_eq!(log.config().retention_ms, 7_200_000);

    // Deleting the defaults takes them away again.
    let response = client
        .send(
            1,
            incremental_request(
                BROKER,
                "",
                &[
                    ("log.cleaner.threads", DELETE, None),
                    ("num.io.threads", DELETE, None),
                    ("log.retention.ms", DELETE, None),
                ],
                false,
            ),
        )
        .await;
    assert_eq!(response.responses[0].error_code, NONE);
    assert!(describe(&mut client, BROKER, "").await.configs.is_empty());
    client.assert_serving().await;
    broker.stop().await;
}

// ---------------------------------------------------------------------
// IncrementalAlterConfigs

fn incremental_request(
    resource_type: i8,
    name: &str,
    ops: &[(&str, i8, Option<&str>)],
    validate_only: bool,
) -> IncrementalAlterConfigsRequest {
    IncrementalAlterConfigsRequest::default()
        .with_validate_only(validate_only)
        .with_resources(vec![incremental::AlterConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(str_bytes(name))
            .with_configs(
                ops.iter()
                    .map(|(k, op, v)| {
                        incremental::AlterableConfig::default()
                            .with_name(str_bytes(k))
                            .with_config_operation(*op)
                            .with_value(v.map(str_bytes))
                    })
                    .collect(),
            )])
}

/// IncrementalAlterConfigs on the topic "incremental" (v0, and v1 too
/// when only validating); returns the error code.
async fn alter(
    client: &mut Client,
    ops: Vec<(&'static str, i8, Option<&'static str>)>,
    validate_only: bool,
) -> i16 {
    let request = incremental_request(TOPIC, "incremental", &ops, validate_only);
    let code = client.send(0, request.clone()).await.responses[0].error_code;
    if validate_only {
        assert_eq!(client.send(1, request).await.responses[0].error_code, code);
    }
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_alter_configs() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client
        .create_topic("incremental", 1, &[("segment.ms", "100000")])
        .await;
    // SET leaves the other configs alone.
    assert_eq!(
        alter(
            &mut client,
            vec![("retention.ms", SET, Some("1000"))],
            false
        )
        .await,
        NONE
    );
    assert_eq!(
        topic_configs(&broker, "incremental"),
        config_map(&[("retention.ms", "1000"), ("segment.ms", "100000")])
    );
    // APPEND to a list config starts from its default.
    assert_eq!(
        alter(
            &mut client,
            vec![("cleanup.policy", APPEND, Some("compact"))],
            false
        )
        .await,
        NONE
    );
    assert_eq!(
        topic_configs(&broker, "incremental")["cleanup.policy"],
        "delete,compact"
    );
    let log = broker
        .broker()
        .replicas
        .get("incremental", 0)
        .unwrap()
        .log
        .clone();
    assert!(log.config().cleanup_policy.compact);
    assert!(log.config().cleanup_policy.delete);
    assert_eq!(
        alter(
            &mut client,
            vec![("cleanup.policy", SUBTRACT, Some("delete"))],
            false
        )
        .await,
        NONE
    );
    assert_eq!(
        topic_configs(&broker, "incremental")["cleanup.policy"],
        "compact"
    );
    assert!(!log.config().cleanup_policy.delete);
    // Subtracting the last item leaves an empty list, which is invalid.
    assert_eq!(
        alter(
            &mut client,
            vec![("cleanup.policy", SUBTRACT, Some("compact"))],
            false
        )
        .await,
        INVALID_CONFIG
    );
    // DELETE goes back to the default.
    assert_eq!(
        alter(&mut client, vec![("retention.ms", DELETE, None)], false).await,
        NONE
    );
    assert_eq!(log.config().retention_ms, 604_800_000);

    // validate_only changes nothing.
    let before = topic_configs(&broker, "incremental");
    assert_eq!(
        alter(&mut client, vec![("retention.ms", SET, Some("5"))], true).await,
        NONE
    );
    assert_eq!(
        alter(
            &mut client,
            vec![
                ("segment.ms", DELETE, None),
                ("retention.ms", SET, Some("-9"))
            ],
            true
        )
        .await,
        INVALID_CONFIG
    );
    assert_eq!(topic_configs(&broker, "incremental"), before);

    // Bad input.
    for (what, ops, code) in [
        (
            "APPEND to a non-list",
            vec![("retention.ms", APPEND, Some("1"))],
            INVALID_CONFIG,
        ),
        (
            "SUBTRACT from a non-list",
            vec![("segment.ms", SUBTRACT, Some("1"))],
            INVALID_CONFIG,
        ),
        (
            "APPEND an unknown config",
            vec![("no.such", APPEND, Some("1"))],
            INVALID_CONFIG,
        ),
        (
            "SET an unknown config",
            vec![("no.such", SET, Some("1"))],
            INVALID_CONFIG,
        ),
        (
            "DELETE an unknown config",
            vec![("no.such", DELETE, None)],
            INVALID_CONFIG,
        ),
        (
            "APPEND a bad word",
            vec![("cleanup.policy", APPEND, Some("shred"))],
            INVALID_CONFIG,
        ),
        (
            "bad value",
            vec![("retention.ms", SET, Some("soon"))],
            INVALID_CONFIG,
        ),
        (
            "unknown operation",
            vec![("retention.ms", 7, Some("1"))],
            INVALID_REQUEST,
        ),
        (
            "SET null",
            vec![("retention.ms", SET, None)],
            INVALID_REQUEST,
        ),
        (
            "duplicate keys",
            vec![
                ("retention.ms", SET, Some("1")),
                ("retention.ms", DELETE, None),
            ],
            INVALID_REQUEST,
        ),
    ] {
        assert_eq!(alter(&mut client, ops, false).await, code, "{what}");
    }
    assert_eq!(topic_configs(&broker, "incremental"), before);

    // Broker resources: the dynamic log configs only.
    for (what, resource_type, name, ops, code) in [
        (
            "dynamic",
            BROKER,
            "1",
            vec![("log.retention.bytes", SET, Some("1000000"))],
            NONE,
        ),
        (
            "list",
            BROKER,
            "1",
            vec![("log.cleanup.policy", APPEND, Some("compact"))],
            NONE,
        ),
        (
            "read-only",
            BROKER,
            "1",
            vec![("num.partitions", SET, Some("3"))],
            INVALID_REQUEST,
        ),
        (
            "unknown",
            BROKER,
            "1",
            vec![("no.such", SET, Some("3"))],
            INVALID_REQUEST,
        ),
        (
            "non-list",
            BROKER,
            "1",
            vec![("log.retention.ms", APPEND, Some("3"))],
            INVALID_CONFIG,
        ),
        (
            "other broker",
            BROKER,
            "7",
            vec![("log.retention.ms", SET, Some("3"))],
            INVALID_REQUEST,
        ),
        (
            "logger",
            BROKER_LOGGER,
            "1",
            vec![("root", SET, Some("DEBUG"))],
            INVALID_REQUEST,
        ),
        (
            "unknown topic",
            TOPIC,
            "nope",
            vec![("retention.ms", SET, Some("1"))],
            UNKNOWN_TOPIC_OR_PARTITION,
        ),
    ] {
        let response = client
            .send(1, incremental_request(resource_type, name, &ops, false))
            .await;
        assert_eq!(response.responses[0].error_code, code, "{what}");
    }
    assert_eq!(
        broker
            .broker()
            .controller
            .image()
            .broker_configs(1)
            .cloned()
            .unwrap_or_default(),
        config_map(&[
            ("log.cleanup.policy", "delete,compact"),
            ("log.retention.bytes", "1000000")
        ])
    );
    // The topic sets cleanup.policy itself; retention.bytes follows the broker.
    assert_eq!(log.config().retention_bytes, 1_000_000);
    assert!(!log.config().cleanup_policy.delete);
    client.assert_serving().await;
    broker.stop().await;
}

// ---------------------------------------------------------------------
// DeleteRecords

fn delete_records_request(topic: &str, partitions: &[(i32, i64)]) -> DeleteRecordsRequest {
    DeleteRecordsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![DeleteRecordsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(
                partitions
                    .iter()
                    .map(|&(partition_index, offset)| {
                        DeleteRecordsPartition::default()
                            .with_partition_index(partition_index)
                            .with_offset(offset)
                    })
                    .collect(),
            )])
}

/// (partition, error code, low watermark) per partition.
async fn delete_records(
    client: &mut Client,
    version: i16,
    topic: &str,
    partitions: &[(i32, i64)],
) -> Vec<(i32, i16, i64)> {
    let response = client
        .send(version, delete_records_request(topic, partitions))
        .await;
    response.topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.error_code, p.low_watermark))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_records_moves_the_log_start() {
    let mut broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client.create_topic("trimmed", 2, &[]).await;
    for _ in 0..5 {
        client.produce("trimmed", 0, 2).await;
    }

    assert_eq!(
        delete_records(&mut client, 2, "trimmed", &[(0, 4)]).await,
        vec![(0, NONE, 4)]
    );
    assert_eq!(client.list_offset("trimmed", 0, -2).await, (NONE, 4));
    assert_eq!(client.list_offset("trimmed", 0, -1).await, (NONE, 10));
    assert_eq!(client.fetch("trimmed", 0, 2).await.0, OFFSET_OUT_OF_RANGE);
    assert_eq!(client.fetch("trimmed", 0, 4).await, (NONE, 4));

    // Below the start changes nothing; above the high watermark, or
    // negative other than -1, is out of range.
    for version in 0..=2 {
        assert_eq!(
            delete_records(
                &mut client,
                version,
                "trimmed",
                &[(0, 2), (0, 11), (0, -5), (1, 1), (2, 0), (-1, 0)]
            )
            .await,
            vec![
                (0, NONE, 4),
                (0, OFFSET_OUT_OF_RANGE, -1),
                (0, OFFSET_OUT_OF_RANGE, -1),
                (1, OFFSET_OUT_OF_RANGE, -1),
                (2, UNKNOWN_TOPIC_OR_PARTITION, -1),
                (-1, UNKNOWN_TOPIC_OR_PARTITION, -1),
            ],
            "v{version}"
        );
    }
    assert_eq!(
        delete_records(&mut client, 0, "no-such-topic", &[(0, 0)]).await,
        vec![(0, UNKNOWN_TOPIC_OR_PARTITION, -1)]
    );
    // -1 is the high watermark; an empty partition's is 0.
    assert_eq!(
        delete_records(&mut client, 1, "trimmed", &[(0, -1), (1, -1)]).await,
        vec![(0, NONE, 10), (1, NONE, 0)]
    );
    assert_eq!(client.list_offset("trimmed", 0, -2).await, (NONE, 10));
    assert_eq!(client.fetch("trimmed", 0, 9).await.0, OFFSET_OUT_OF_RANGE);
    // Producing goes on from the end.
    assert_eq!(client.produce("trimmed", 0, 1).await, (NONE, 10));

    // A compacted topic's records cannot be deleted.
    client
        .create_topic("compacted", 1, &[("cleanup.policy", "compact")])
        .await;
    client.produce("compacted", 0, 2).await;
    assert_eq!(
        delete_records(&mut client, 2, "compacted", &[(0, 1)]).await,
        vec![(0, POLICY_VIOLATION, -1)]
    );
    client.assert_serving().await;

    // The new start was checkpointed: it survives a restart.
    broker.restart().await;
    let mut client = broker.client().await;
    assert_eq!(client.list_offset("trimmed", 0, -2).await, (NONE, 10));
    assert_eq!(client.list_offset("trimmed", 0, -1).await, (NONE, 11));
    broker.stop().await;
}

// ---------------------------------------------------------------------
// CreatePartitions

/// Replica lists of new partitions, one per partition.
type Assignments = Option<Vec<Vec<i32>>>;

fn create_partitions_request(
    topics: &[(&str, i32, Assignments)],
    validate_only: bool,
) -> CreatePartitionsRequest {
    CreatePartitionsRequest::default()
        .with_timeout_ms(5000)
        .with_validate_only(validate_only)
        .with_topics(
            topics
                .iter()
                .map(|(name, count, assignments)| {
                    CreatePartitionsTopic::default()
                        .with_name(topic_name(name))
                        .with_count(*count)
                        .with_assignments(assignments.as_ref().map(|lists| {
                            lists
                                .iter()
                                .map(|ids| {
                                    CreatePartitionsAssignment::default().with_broker_ids(
                                        ids.iter().copied().map(BrokerId).collect(),
                                    )
                                })
                                .collect()
                        }))
                })
                .collect(),
        )
}

async fn partition_count(client: &mut Client, topic: &str) -> usize {
    client.metadata(&[topic]).await.topics[0].partitions.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_partitions() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client.create_topic("growing", 1, &[]).await;

    // validate_only checks and changes nothing.
    for version in 0..=3 {
        let response = client
            .send(
                version,
                create_partitions_request(&[("growing", 5, None)], true),
            )
            .await;
        assert_eq!(response.results[0].error_code, NONE, "v{version}");
    }
    assert_eq!(partition_count(&mut client, "growing").await, 1);

    let response = client
        .send(3, create_partitions_request(&[("growing", 3, None)], false))
        .await;
    assert_eq!(response.results[0].error_code, NONE);
    assert_eq!(response.results[0].error_message, None);
    assert_eq!(partition_count(&mut client, "growing").await, 3);
    // The new partitions' logs exist before the answer.
    assert!(broker.broker().replicas.get("growing", 2).is_some());
    assert_eq!(client.produce("growing", 2, 1).await, (NONE, 0));

    // With explicit assignments.
    let response = client
        .send(
            1,
            create_partitions_request(&[("growing", 4, Some(vec![vec![1]]))], false),
        )
        .await;
    assert_eq!(response.results[0].error_code, NONE);
    assert_eq!(partition_count(&mut client, "growing").await, 4);

    for (what, count, assignments, code) in [
        ("fewer", 2, None, INVALID_PARTITIONS),
        ("the same", 4, None, INVALID_PARTITIONS),
        ("zero", 0, None, INVALID_PARTITIONS),
        ("negative", -5, None, INVALID_PARTITIONS),
        ("absurd", i32::MAX, None, INVALID_PARTITIONS),
        (
            "too few assignments",
            7,
            Some(vec![vec![1]]),
            INVALID_REPLICA_ASSIGNMENT,
        ),
        (
            "unknown broker",
            5,
            Some(vec![vec![9]]),
            INVALID_REPLICA_ASSIGNMENT,
        ),
        (
            "wrong replication factor",
            5,
            Some(vec![vec![1, 1]]),
            INVALID_REPLICA_ASSIGNMENT,
        ),
        (
            "empty replica list",
            5,
            Some(vec![vec![]]),
            INVALID_REPLICA_ASSIGNMENT,
        ),
    ] {
        for validate_only in [false, true] {
            let response = client
                .send(
                    2,
                    create_partitions_request(
                        &[("growing", count, assignments.clone())],
                        validate_only,
                    ),
                )
                .await;
            assert_eq!(response.results[0].error_code, code, "{what}");
            assert!(response.results[0].error_message.is_some(), "{what}");
        }
    }
    assert_eq!(partition_count(&mut client, "growing").await, 4);
    // Kafka's words, which kafka-topics.sh prints.
    let response = client
        .send(3, create_partitions_request(&[("growing", 2, None)], false))
        .await;
    assert_eq!(
        response.results[0].error_message.as_deref(),
        Some("The topic growing currently has 4 partition(s); 2 would not be an increase.")
    );

    let response = client
        .send(
            0,
            create_partitions_request(
                &[
                    ("no-such-topic", 2, None),
                    ("twice", 2, None),
                    ("growing", 5, None),
                    ("twice", 3, None),
                ],
                false,
            ),
        )
        .await;
    let results: Vec<(String, i16)> = response
        .results
        .iter()
        .map(|r| (r.name.to_string(), r.error_code))
        .collect();
    assert_eq!(
        results,
        vec![
            ("no-such-topic".to_string(), UNKNOWN_TOPIC_OR_PARTITION),
            ("twice".to_string(), INVALID_REQUEST),
            ("growing".to_string(), NONE),
        ]
    );
    assert_eq!(partition_count(&mut client, "growing").await, 5);
    client.assert_serving().await;
    broker.stop().await;
}

// ---------------------------------------------------------------------
// DescribeQuorum

/// A single node is the only voter of its quorum and leads it; the
/// metadata log has entries (the registration at least), all committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_quorum() {
    use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
    use kafka_protocol::messages::{DescribeQuorumRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    let request = |topic: &str, partition: i32| {
        DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
            .with_topic_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![
                PartitionData::default().with_partition_index(partition)
            ])])
    };
    for version in 0..=2 {
        let response = client.send(version, request("__cluster_metadata", 0)).await;
        assert_eq!(response.error_code, NONE, "v{version}");
        let partition = &response.topics[0].partitions[0];
        assert_eq!(partition.error_code, NONE);
        assert_eq!(partition.leader_id, BrokerId(1));
        assert!(partition.leader_epoch >= 1);
        assert!(partition.high_watermark > 0);
        assert_eq!(partition.current_voters.len(), 1);
        assert_eq!(partition.current_voters[0].replica_id, BrokerId(1));
        assert_eq!(
            partition.current_voters[0].log_end_offset,
            partition.high_watermark
        );
        assert!(partition.observers.is_empty());
        // v2 names the voters' controller endpoints.
        assert_eq!(response.nodes.len(), usize::from(version >= 2));
    }
    // Only the metadata log is described.
    for (topic, partition) in [("orders", 0), ("__cluster_metadata", 1)] {
        let response = client.send(1, request(topic, partition)).await;
        assert_eq!(
            response.error_code, UNKNOWN_TOPIC_OR_PARTITION,
            "{topic}-{partition}"
        );
    }
}

// ElectLeaders

/// On a single node every partition is led by its preferred (and only)
/// replica: nothing to elect, each partition named says so, an unknown one
/// is unknown, and a request for all partitions lists none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elect_leaders() {
    use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
    use kafka_protocol::messages::{ElectLeadersRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    const ELECTION_NOT_NEEDED: i16 = 84;
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client.create_topic("elect", 2, &[]).await;
    let named = |partitions: Vec<i32>| {
        Some(vec![TopicPartitions::default()
            .with_topic(TopicName(StrBytes::from_static_str("elect")))
            .with_partitions(partitions)])
    };
    for (version, election_type) in [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1)] {
        let response = client
            .send(
                version,
                ElectLeadersRequest::default()
                    .with_election_type(election_type)
                    .with_topic_partitions(named(vec![0, 1, 7]))
                    .with_timeout_ms(10_000),
            )
            .await;
        assert_eq!(response.error_code, NONE, "v{version}");
        let results = &response.replica_election_results[0].partition_result;
        let codes: Vec<(i32, i16)> = results
            .iter()
            .map(|r| (r.partition_id, r.error_code))
            .collect();
        assert_eq!(
            codes,
            vec![
                (0, ELECTION_NOT_NEEDED),
                (1, ELECTION_NOT_NEEDED),
                (7, UNKNOWN_TOPIC_OR_PARTITION)
            ],
            "v{version} type {election_type}"
        );
    }
    let all = client
        .send(
            2,
            ElectLeadersRequest::default()
                .with_topic_partitions(None)
                .with_timeout_ms(10_000),
        )
        .await;
    assert_eq!(all.error_code, NONE);
    assert!(all.replica_election_results.is_empty(), "{all:?}");
    let bad = client
        .send(2, ElectLeadersRequest::default().with_election_type(5))
        .await;
    assert_eq!(bad.error_code, INVALID_REQUEST);
}

// DescribeCluster

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_cluster() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    let cluster_id = client.metadata(&[]).await.cluster_id.unwrap().to_string();
    for version in 0..=2 {
        let response = client
            .send(version, DescribeClusterRequest::default())
            .await;
        assert_eq!(response.error_code, NONE, "v{version}");
        assert_eq!(response.cluster_id.as_str(), cluster_id);
        assert_eq!(response.controller_id, BrokerId(1));
        assert_eq!(response.cluster_authorized_operations, i32::MIN);
        assert_eq!(response.brokers.len(), 1);
        let only = &response.brokers[0];
        assert_eq!(only.broker_id, BrokerId(1));
        assert_eq!(only.host.as_str(), "127.0.0.1");
        assert_eq!(only.port, i32::from(broker.addr.port()));
        assert!(!only.is_fenced);
    }
    let response = client
        .send(
            1,
            DescribeClusterRequest::default().with_include_cluster_authorized_operations(true),
        )
        .await;
    assert_eq!(response.endpoint_type, 1);
    assert_ne!(response.cluster_authorized_operations, i32::MIN);
    // DESCRIBE (8) and ALTER_CONFIGS (11) are among them.
    assert_ne!(response.cluster_authorized_operations & (1 << 8), 0);
    assert_ne!(response.cluster_authorized_operations & (1 << 11), 0);

    for (endpoint_type, code) in [
        (2, MISMATCHED_ENDPOINT_TYPE),
        (0, UNSUPPORTED_ENDPOINT_TYPE),
        (9, UNSUPPORTED_ENDPOINT_TYPE),
    ] {
        let response = client
            .send(
                2,
                DescribeClusterRequest::default().with_endpoint_type(endpoint_type),
            )
            .await;
        assert_eq!(response.error_code, code, "endpoint type {endpoint_type}");
        assert!(response.error_message.is_some());
        assert!(response.brokers.is_empty());
    }
    client.assert_serving().await;
    broker.stop().await;
}

// ---------------------------------------------------------------------
// Authorized operations (KIP-430)

/// Without an authorizer Kafka answers every operation a resource type
/// has (`AclEntry.supportedOperations`), as a bit field of `AclOperation`
/// codes. Topic: READ 3, WRITE 4, CREATE 5, DELETE 6, ALTER 7, DESCRIBE 8,
/// DESCRIBE_CONFIGS 10, ALTER_CONFIGS 11.
const TOPIC_OPERATIONS: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);
/// Cluster: CREATE 5, ALTER 7, DESCRIBE 8, CLUSTER_ACTION 9,
/// DESCRIBE_CONFIGS 10, ALTER_CONFIGS 11, IDEMPOTENT_WRITE 12.
const CLUSTER_OPERATIONS: i32 =
    (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);
/// Not asked for.
const OPERATIONS_OMITTED: i32 = i32::MIN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_authorized_operations() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    client.create_topic("known", 1, &[]).await;
    for version in 8..=12 {
        let topics = ["known", "unknown"]
            .iter()
            .map(|name| MetadataRequestTopic::default().with_name(Some(topic_name(name))))
            .collect();
        let request = MetadataRequest::default()
            .with_topics(Some(topics))
            .with_allow_auto_topic_creation(false);
        let plain = client.send(version, request.clone()).await;
        assert_eq!(plain.cluster_authorized_operations, OPERATIONS_OMITTED);
        for topic in &plain.topics {
            assert_eq!(topic.topic_authorized_operations, OPERATIONS_OMITTED);
        }

        let mut asked = request
            .with_include_topic_authorized_operations(true)
            .with_include_cluster_authorized_operations(version <= 10);
        if version >= 12 {
            // A topic id nobody has keeps "not asked for", as in Kafka.
            asked.topics.as_mut().expect("topics").push(
                MetadataRequestTopic::default()
                    .with_name(None)
                    .with_topic_id(uuid::Uuid::from_u128(7)),
            );
        }
        let response = client.send(version, asked).await;
        // Metadata answers for the cluster only up to v10 (then
        // DescribeCluster does).
        let cluster = if version <= 10 {
            CLUSTER_OPERATIONS
        } else {
            OPERATIONS_OMITTED
        };
        assert_eq!(
            response.cluster_authorized_operations, cluster,
            "v{version}"
        );
        let operations: Vec<(Option<String>, i16, i32)> = response
            .topics
            .iter()
            .map(|t| {
                (
                    t.name.as_ref().map(|n| n.as_str().to_string()),
                    t.error_code,
                    t.topic_authorized_operations,
                )
            })
            .collect();
        let mut expected = vec![
            (Some("known".to_string()), NONE, TOPIC_OPERATIONS),
            // Kafka answers them for an unknown name too.
            (
                Some("unknown".to_string()),
                UNKNOWN_TOPIC_OR_PARTITION,
                TOPIC_OPERATIONS,
            ),
        ];
        if version >= 12 {
            expected.push((None, UNKNOWN_TOPIC_ID, OPERATIONS_OMITTED));
        }
        assert_eq!(operations, expected, "v{version}");
    }
}

// ---------------------------------------------------------------------
// Bad input to the handlers that were already there

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_handlers_reject_bad_input() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;

    // Metadata for an invalid topic name (auto-creation allowed or not).
    for allow_auto_topic_creation in [false, true] {
        let response = client
            .send(
                12,
                MetadataRequest::default()
                    .with_topics(Some(vec![
                        MetadataRequestTopic::default().with_name(Some(topic_name("bad name!")))
                    ]))
                    .with_allow_auto_topic_creation(allow_auto_topic_creation),
            )
            .await;
        assert_eq!(response.topics[0].error_code, INVALID_TOPIC_EXCEPTION);
    }
    assert_eq!(
        client.metadata(&["never-created"]).await.topics[0].error_code,
        UNKNOWN_TOPIC_OR_PARTITION
    );

    // CreateTopics with more replicas than brokers.
    let response = client
        .send(
            7,
            CreateTopicsRequest::default()
                .with_timeout_ms(5000)
                .with_topics(vec![CreatableTopic::default()
                    .with_name(topic_name("three-copies"))
                    .with_num_partitions(1)
                    .with_replication_factor(3)]),
        )
        .await;
    assert_eq!(response.topics[0].error_code, INVALID_REPLICATION_FACTOR);

    // CreateTopics v5+ lists every config of the new topic, with sources;
    // validate_only lists what it would have.
    for validate_only in [true, false] {
        let response = client
            .send(
                7,
                CreateTopicsRequest::default()
                    .with_timeout_ms(5000)
                    .with_validate_only(validate_only)
                    .with_topics(vec![CreatableTopic::default()
                        .with_name(topic_name("listed"))
                        .with_num_partitions(1)
                        .with_replication_factor(1)
                        .with_configs(vec![
                            kafka_protocol::messages::create_topics_request::CreatableTopicConfig::default()
                                .with_name(str_bytes("retention.ms"))
                                .with_value(Some(str_bytes("1000"))),
                        ])]),
            )
            .await;
        let topic = &response.topics[0];
        assert_eq!(topic.error_code, NONE);
        let configs = topic.configs.as_ref().unwrap();
        assert_eq!(
            configs.len(),
            rill_controller::config::topic_config_names().count()
        );
        let retention = configs
            .iter()
            .find(|c| c.name.as_str() == "retention.ms")
            .unwrap();
        assert_eq!(retention.value.as_ref().unwrap().as_str(), "1000");
        assert_eq!(retention.config_source, SOURCE_TOPIC);
        let segment = configs
            .iter()
            .find(|c| c.name.as_str() == "segment.bytes")
            .unwrap();
        assert_eq!(segment.config_source, SOURCE_DEFAULT);
    }

    // Produce to a partition that does not exist.
    client.create_topic("small", 1, &[]).await;
    assert_eq!(
        client.produce("small", 1, 1).await.0,
        UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(
        client.produce("small", -1, 1).await.0,
        UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(client.produce("small", 0, 2).await, (NONE, 0));
    // Fetch beyond the end.
    assert_eq!(client.fetch("small", 0, 3).await.0, OFFSET_OUT_OF_RANGE);
    assert_eq!(
        client.fetch("small", 0, i64::MAX).await.0,
        OFFSET_OUT_OF_RANGE
    );
    assert_eq!(client.fetch("small", 0, 2).await.0, NONE);
    client.assert_serving().await;
    broker.stop().await;
}
