"""Admin APIs: metadata, cluster, configs, partitions, topic deletion, and the errors
a client can provoke."""

import os
import time

import kafka.errors
import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource, NewPartitions, NewTopic, ResourceType,
)
from kafka.admin import ConfigResource as KpConfigResource

from clients import (
    WAIT_S, Record, ck_admin, ck_create_topic, ck_produce, ck_producer, ck_watermarks, kafka_error_code, kp_admin,
    kp_create_topic, kp_produce, wait_for_partitions,
)

# Kafka's default for retention.ms: 7 days.
RETENTION_MS_DEFAULT = "604800000"


def _result(futures: dict):
    """The single future of an admin call's result dict."""
    assert len(futures) == 1
    return next(iter(futures.values())).result(timeout=WAIT_S)


# ---------------------------------------------------------------- metadata and cluster


def test_metadata_and_describe_cluster(broker, topic_name):
    ck_create_topic(broker.bootstrap, topic_name, 3)
    admin = ck_admin(broker.bootstrap)
    md = admin.list_topics(timeout=WAIT_S)
    assert {b.id: (b.host, b.port) for b in md.brokers.values()} == {1: ("127.0.0.1", broker.kafka_port)}
    assert md.controller_id == 1
    tm = md.topics[topic_name]
    assert tm.error is None
    assert sorted(tm.partitions) == [0, 1, 2]
    for pm in tm.partitions.values():
        assert (pm.leader, list(pm.replicas), list(pm.isrs)) == (1, [1], [1])

    cluster = admin.describe_cluster(request_timeout=WAIT_S).result(timeout=WAIT_S)
    assert cluster.cluster_id, "DescribeCluster returned no cluster id"
    assert cluster.controller.id == 1
    assert [(n.id, n.host, n.port) for n in cluster.nodes] == [(1, "127.0.0.1", broker.kafka_port)]

    admin = kp_admin(broker.bootstrap)
    try:
        kp_cluster = admin.describe_cluster()
        assert kp_cluster["cluster_id"] == cluster.cluster_id
        assert kp_cluster["controller_id"] == 1
        assert [(b["broker_id"], b["host"], b["port"]) for b in kp_cluster["brokers"]] == [
            (1, "127.0.0.1", broker.kafka_port)]
        assert topic_name in admin.list_topics()
        [described] = admin.describe_topics([topic_name])
        assert sorted(p["partition_index"] for p in described["partitions"]) == [0, 1, 2]
    finally:
        admin.close()


def test_log_dirs_and_topic_partitions_kafka_python(broker, topic_name):
    """DescribeLogDirs and KIP-966's DescribeTopicPartitions, as kafka-python 3 calls them."""
    kp_create_topic(broker.bootstrap, topic_name, partitions=3)
    kp_produce(broker.bootstrap, topic_name, [Record(b"k", b"v" * 100)] * 5, partition=1)
    admin = kp_admin(broker.bootstrap)
    try:
        dirs = admin.describe_log_dirs()
        assert len(dirs) == 1, dirs
        text = repr(dirs)
        assert os.path.realpath(broker.data_dir) in text, text
        assert topic_name in text, text

        pages, cursor = [], None
        for _ in range(5):
            answer = admin.describe_topic_partitions([topic_name], response_partition_limit=2, cursor=cursor)
            pages.append([(t["name"], [p["partition_index"] for p in t["partitions"]]) for t in answer["topics"]])
            cursor = answer["next_cursor"]
            if cursor is None:
                break
        assert pages == [[(topic_name, [0, 1])], [(topic_name, [2])]], pages
    finally:
        admin.close()


# ---------------------------------------------------------------- configs


def src(entry: ConfigEntry) -> ConfigSource:
    return ConfigSource(entry.source)


def ck_topic_configs(bootstrap, topic) -> dict:
    admin = ck_admin(bootstrap)
    return _result(admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)], request_timeout=WAIT_S))


def test_configs_confluent(broker, topic_name):
    ck_create_topic(broker.bootstrap, topic_name, 1, config={"segment.bytes": "10485760"})
    admin = ck_admin(broker.bootstrap)

    configs = ck_topic_configs(broker.bootstrap, topic_name)
    retention = configs["retention.ms"]
    assert (retention.value, src(retention), retention.is_default) == (
        RETENTION_MS_DEFAULT, ConfigSource.DEFAULT_CONFIG, True)
    assert configs["cleanup.policy"].value == "delete"
    # A config given at creation is a topic override.
    segment = configs["segment.bytes"]
    assert (segment.value, src(segment), segment.is_default) == (
        "10485760", ConfigSource.DYNAMIC_TOPIC_CONFIG, False)

    # IncrementalAlterConfigs SET.
    resource = ConfigResource(ResourceType.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET)])
    assert _result(admin.incremental_alter_configs([resource], request_timeout=WAIT_S)) is None
    configs = ck_topic_configs(broker.bootstrap, topic_name)
    retention = configs["retention.ms"]
    assert (retention.value, src(retention), retention.is_default) == (
        "3600000", ConfigSource.DYNAMIC_TOPIC_CONFIG, False)
    assert configs["segment.bytes"].value == "10485760", "incremental alter touched another override"

    # Legacy AlterConfigs replaces the whole set of overrides: segment.bytes goes back to its default.
    resource = ConfigResource(ResourceType.TOPIC, topic_name, set_config={"retention.ms": "7200000"})
    assert _result(admin.alter_configs([resource], request_timeout=WAIT_S)) is None
    configs = ck_topic_configs(broker.bootstrap, topic_name)
    assert (configs["retention.ms"].value, src(configs["retention.ms"])) == (
        "7200000", ConfigSource.DYNAMIC_TOPIC_CONFIG)
    assert src(configs["segment.bytes"]) == ConfigSource.DEFAULT_CONFIG

    # IncrementalAlterConfigs DELETE brings back the default.
    resource = ConfigResource(ResourceType.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)])
    assert _result(admin.incremental_alter_configs([resource], request_timeout=WAIT_S)) is None
    retention = ck_topic_configs(broker.bootstrap, topic_name)["retention.ms"]
    assert (retention.value, src(retention)) == (RETENTION_MS_DEFAULT, ConfigSource.DEFAULT_CONFIG)

    # A value that does not parse is refused, and nothing changes.
    resource = ConfigResource(ResourceType.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("retention.ms", "not-a-number", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException) as e:
        _result(admin.incremental_alter_configs([resource], request_timeout=WAIT_S))
    assert kafka_error_code(e.value) == KafkaError.INVALID_CONFIG
    assert ck_topic_configs(broker.bootstrap, topic_name)["retention.ms"].value == RETENTION_MS_DEFAULT


def test_broker_configs_confluent(broker):
    admin = ck_admin(broker.bootstrap)
    configs = _result(admin.describe_configs(
        [ConfigResource(ResourceType.BROKER, "1")], request_timeout=WAIT_S))
    assert configs["num.partitions"].value == "1"
    assert configs["auto.create.topics.enable"].value == "true"


def test_dynamic_broker_configs_confluent(broker):
    """Kafka's dynamic broker configs that rill has no use for yet are accepted, stored and described with
    their source; a static one is refused as Kafka refuses it. (The cluster-wide defaults, the broker
    resource with the empty name, are covered by the raw-protocol tests: both Python clients refuse an
    empty broker name before sending.)"""
    admin = ck_admin(broker.bootstrap)

    def describe():
        return _result(admin.describe_configs([ConfigResource(ResourceType.BROKER, "1")], request_timeout=WAIT_S))

    def incremental(configs):
        entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in configs.items()]
        return _result(admin.incremental_alter_configs(
            [ConfigResource(ResourceType.BROKER, "1", incremental_configs=entries)], request_timeout=WAIT_S))

    configs = describe()
    # Listed before they are set, with Kafka's defaults.
    for name, value in (("sasl.kerberos.min.time.before.relogin", "60000"), ("log.cleaner.threads", "1"),
                        ("num.io.threads", "8")):
        entry = configs[name]
        assert (entry.value, src(entry), entry.is_read_only) == (value, ConfigSource.DEFAULT_CONFIG, False), name

    assert incremental({"sasl.kerberos.min.time.before.relogin": "30000", "log.cleaner.threads": "2"}) is None
    configs = describe()
    for name, value in (("sasl.kerberos.min.time.before.relogin", "30000"), ("log.cleaner.threads", "2")):
        entry = configs[name]
        assert (entry.value, src(entry), entry.is_default) == (value, ConfigSource.DYNAMIC_BROKER_CONFIG, False), name

    # Legacy AlterConfigs replaces the broker's whole dynamic set.
    resource = ConfigResource(ResourceType.BROKER, "1", set_config={"log.cleaner.threads": "4"})
    assert _result(admin.alter_configs([resource], request_timeout=WAIT_S)) is None
    configs = describe()
    assert (configs["log.cleaner.threads"].value, src(configs["log.cleaner.threads"])) == (
        "4", ConfigSource.DYNAMIC_BROKER_CONFIG)
    relogin = configs["sasl.kerberos.min.time.before.relogin"]
    assert (relogin.value, src(relogin)) == ("60000", ConfigSource.DEFAULT_CONFIG)

    # What Kafka refuses, with Kafka's code: a static config, and an SSL store without a listener prefix.
    for name in ("broker.id", "ssl.keystore.location"):
        with pytest.raises(KafkaException) as e:
            incremental({name: "2"})
        assert kafka_error_code(e.value) == KafkaError.INVALID_REQUEST, name


def test_dynamic_broker_configs_kafka_python(broker):
    admin = kp_admin(broker.bootstrap)
    try:
        # kafka-python checks each name against DescribeConfigs of the broker before it sends anything
        # (a name not listed, or listed read-only, is refused): this is what the issue saw refused.
        for incremental, configs in ((True, {"sasl.kerberos.min.time.before.relogin": "30000"}),
                                     (False, {"log.cleaner.threads": "3", "num.io.threads": "16"})):
            result = admin.alter_configs([KpConfigResource("BROKER", "1", configs=configs)], incremental=incremental)
            assert result == {"broker": {"1": "OK"}}, incremental
            described = admin.describe_configs([KpConfigResource("BROKER", "1")], config_filter="all")["broker"]["1"]
            for name, value in configs.items():
                assert (described[name]["value"], described[name]["config_source"]) == (
                    value, "DYNAMIC_BROKER_CONFIG"), name
        # The legacy AlterConfigs (incremental=False) kept the earlier incremental change: kafka-python
        # sends every modified config along, as DescribeConfigs lists them.
        assert described["sasl.kerberos.min.time.before.relogin"]["value"] == "30000"
        with pytest.raises(ValueError):
            admin.alter_configs([KpConfigResource("BROKER", "1", configs={"broker.id": "2"})])
        result = admin.alter_configs([KpConfigResource("BROKER", "1", configs={"broker.id": "2"})],
                                     raise_on_unknown=False)
        assert result["broker"]["1"].startswith("[Error 42] InvalidRequestError"), result
    finally:
        admin.close()


def test_configs_kafka_python(broker, topic_name):
    kp_create_topic(broker.bootstrap, topic_name, 1)
    admin = kp_admin(broker.bootstrap)

    def describe():
        res = admin.describe_configs([KpConfigResource("TOPIC", topic_name)], config_filter="all")
        return res["topic"][topic_name]

    try:
        retention = describe()["retention.ms"]
        assert (retention["value"], retention["config_source"]) == (RETENTION_MS_DEFAULT, "DEFAULT_CONFIG")

        for incremental, value in ((True, "3600000"), (False, "7200000")):
            result = admin.alter_configs(
                [KpConfigResource("TOPIC", topic_name, configs={"retention.ms": value})], incremental=incremental)
            assert result == {"topic": {topic_name: "OK"}}, f"incremental={incremental}"
            retention = describe()["retention.ms"]
            assert (retention["value"], retention["config_source"]) == (value, "DYNAMIC_TOPIC_CONFIG"), (
                f"incremental={incremental}")

        modified = admin.describe_configs([KpConfigResource("TOPIC", topic_name)])["topic"][topic_name]
        assert set(modified) == {"retention.ms"}, "only the altered config should be a topic override"
    finally:
        admin.close()


# ---------------------------------------------------------------- partitions and deletion


def test_create_partitions(broker, topic_name):
    ck_create_topic(broker.bootstrap, topic_name, 1)
    admin = ck_admin(broker.bootstrap)
    assert _result(admin.create_partitions([NewPartitions(topic_name, 3)], request_timeout=WAIT_S)) is None
    wait_for_partitions(broker.bootstrap, topic_name, 3)
    produced = ck_produce(broker.bootstrap, topic_name, [Record(b"k", b"v")], partition=2)
    assert (produced[0].partition, produced[0].offset) == (2, 0)

    # Fewer partitions than now is refused.
    with pytest.raises(KafkaException) as e:
        _result(admin.create_partitions([NewPartitions(topic_name, 2)], request_timeout=WAIT_S))
    assert kafka_error_code(e.value) == KafkaError.INVALID_PARTITIONS

    kadmin = kp_admin(broker.bootstrap)
    try:
        kadmin.create_partitions({topic_name: 5})
    finally:
        kadmin.close()
    wait_for_partitions(broker.bootstrap, topic_name, 5)


def _wait_topic_gone(bootstrap, topic, timeout_s=10.0):
    admin = ck_admin(bootstrap)
    deadline = time.monotonic() + timeout_s
    while topic in admin.list_topics(timeout=WAIT_S).topics:
        assert time.monotonic() < deadline, f"topic {topic} still in metadata {timeout_s}s after deletion"
        time.sleep(0.1)


def test_delete_topic_confluent(broker, topic_name):
    ck_create_topic(broker.bootstrap, topic_name, 2)
    ck_produce(broker.bootstrap, topic_name, [Record(b"k", b"v")] * 5, partition=0)
    admin = ck_admin(broker.bootstrap)
    assert _result(admin.delete_topics([topic_name], request_timeout=WAIT_S, operation_timeout=10)) is None
    _wait_topic_gone(broker.bootstrap, topic_name)

    # Deleting it again: it is unknown.
    with pytest.raises(KafkaException) as e:
        _result(admin.delete_topics([topic_name], request_timeout=WAIT_S))
    assert kafka_error_code(e.value) == KafkaError.UNKNOWN_TOPIC_OR_PART

    # The name can be used again, and the new topic starts empty.
    ck_create_topic(broker.bootstrap, topic_name, 1)
    assert ck_watermarks(broker.bootstrap, topic_name, 0) == (0, 0)


def test_delete_topic_kafka_python(broker, topic_name):
    kp_create_topic(broker.bootstrap, topic_name, 1)
    kp_produce(broker.bootstrap, topic_name, [Record(b"k", b"v")] * 3)
    admin = kp_admin(broker.bootstrap)
    try:
        admin.delete_topics([topic_name], timeout_ms=10000)
        deadline = time.monotonic() + 10
        while topic_name in admin.list_topics():
            assert time.monotonic() < deadline, "topic still listed 10s after deletion"
            time.sleep(0.1)
        with pytest.raises(kafka.errors.UnknownTopicOrPartitionError):
            admin.delete_topics([topic_name], timeout_ms=10000)
    finally:
        admin.close()


# ---------------------------------------------------------------- errors

INVALID_TOPIC_NAMES = ["bad name", "a/b", ".", "..", "x" * 250]


@pytest.mark.parametrize("name", INVALID_TOPIC_NAMES, ids=["space", "slash", "dot", "dotdot", "too-long"])
def test_create_invalid_topic_name(broker, name):
    admin = ck_admin(broker.bootstrap)
    futures = admin.create_topics([NewTopic(name, 1, 1)], request_timeout=WAIT_S)
    with pytest.raises(KafkaException) as e:
        _result(futures)
    assert kafka_error_code(e.value) == KafkaError.TOPIC_EXCEPTION  # INVALID_TOPIC_EXCEPTION, code 17

    kadmin = kp_admin(broker.bootstrap)
    try:
        with pytest.raises(kafka.errors.InvalidTopicError):
            kadmin.create_topics({name: {"num_partitions": 1, "replication_factor": 1}})
        assert name not in kadmin.list_topics()
    finally:
        kadmin.close()


def test_create_topic_errors(broker, topic_name):
    admin = ck_admin(broker.bootstrap)
    with pytest.raises(KafkaException) as e:
        _result(admin.create_topics([NewTopic(topic_name, 1, 3)], request_timeout=WAIT_S))
    assert kafka_error_code(e.value) == KafkaError.INVALID_REPLICATION_FACTOR
    assert topic_name not in admin.list_topics(timeout=WAIT_S).topics

    ck_create_topic(broker.bootstrap, topic_name, 2)
    with pytest.raises(KafkaException) as e:
        _result(admin.create_topics([NewTopic(topic_name, 4, 1)], request_timeout=WAIT_S))
    assert kafka_error_code(e.value) == KafkaError.TOPIC_ALREADY_EXISTS
    assert len(admin.list_topics(timeout=WAIT_S).topics[topic_name].partitions) == 2, "existing topic changed"

    kadmin = kp_admin(broker.bootstrap)
    try:
        with pytest.raises(kafka.errors.InvalidReplicationFactorError):
            kadmin.create_topics({topic_name + "-rf3": {"num_partitions": 1, "replication_factor": 3}})
        with pytest.raises(kafka.errors.TopicAlreadyExistsError):
            kadmin.create_topics({topic_name: {"num_partitions": 1, "replication_factor": 1}})
        with pytest.raises(kafka.errors.InvalidPartitionsError):
            kadmin.create_topics({topic_name + "-p0": {"num_partitions": 0, "replication_factor": 1}})
    finally:
        kadmin.close()


def test_message_too_large_confluent(broker, topic_name):
    ck_create_topic(broker.bootstrap, topic_name, 1)
    ck_create_topic(broker.bootstrap, topic_name + "-small", 1, config={"max.message.bytes": "1000"})
    # The client's own limit is raised so that the broker, not the client, refuses.
    p = ck_producer(broker.bootstrap, **{"message.max.bytes": 10_000_000, "compression.type": "none"})
    try:
        cases = [(topic_name, os.urandom(2_000_000)), (topic_name + "-small", os.urandom(5000))]
        for topic, value in cases:
            errors = []
            p.produce(topic, value=value, on_delivery=lambda err, msg: errors.append(err))
            assert p.flush(WAIT_S) == 0
            assert len(errors) == 1 and errors[0] is not None, f"{topic}: {len(value)} bytes accepted"
            assert errors[0].code() == KafkaError.MSG_SIZE_TOO_LARGE, errors[0]
            assert ck_watermarks(broker.bootstrap, topic, 0) == (0, 0)
        # A record that fits still goes through on the same connection.
        produced = ck_produce(broker.bootstrap, topic_name + "-small", [Record(None, b"x" * 100)], producer=p)
        assert produced[0].offset == 0
    finally:
        p.close()


def test_message_too_large_kafka_python(broker, topic_name):
    ck_create_topic(broker.bootstrap, topic_name, 1)
    with pytest.raises(kafka.errors.MessageSizeTooLargeError):
        kp_produce(broker.bootstrap, topic_name, [Record(None, os.urandom(2_000_000))],
                   max_request_size=10_000_000, retries=0, enable_idempotence=False)
    assert ck_watermarks(broker.bootstrap, topic_name, 0) == (0, 0)
