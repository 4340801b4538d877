"""Durability across restarts: a clean SIGTERM restart keeps topics, configs,
records and log start offsets; a SIGKILL during acks=all production loses no
acknowledged record."""

import time

import confluent_kafka
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from kafka.structs import TopicPartition as KpTopicPartition

from clients import (
    WAIT_S, Record, assert_read_back, ck_admin, ck_consume, ck_create_topic, ck_produce, ck_producer, ck_watermarks,
    kp_consume, kp_consumer, kp_create_topic, kp_produce, wait_for_partitions,
)


def _records(prefix: str, n: int) -> list[Record]:
    return [Record(f"key-{i % 17}".encode(), f"{prefix}-{i}".encode() * (1 + i % 7), (("i", str(i).encode()),))
            for i in range(n)]


def test_sigterm_restart_keeps_topics_and_records(broker, topic_name):
    a, b = topic_name + "-a", topic_name + "-b"
    ck_create_topic(broker.bootstrap, a, 3)
    produced_a = ck_produce(broker.bootstrap, a, _records("gzip", 300), **{"compression.type": "gzip"})
    produced_a += ck_produce(broker.bootstrap, a, _records("zstd", 300), **{"compression.type": "zstd"})
    kp_create_topic(broker.bootstrap, b, 1)
    produced_b = kp_produce(broker.bootstrap, b, _records("b", 10), compression_type="lz4")
    ends_before = {p: ck_watermarks(broker.bootstrap, a, p)[1] for p in range(3)}

    assert broker.restart() == 0, "SIGTERM shutdown did not exit 0"

    wait_for_partitions(broker.bootstrap, a, 3)
    wait_for_partitions(broker.bootstrap, b, 1)
    assert_read_back(produced_a, ck_consume(broker.bootstrap, a, 3))
    assert_read_back(produced_a, kp_consume(broker.bootstrap, a, 3))
    assert_read_back(produced_b, ck_consume(broker.bootstrap, b, 1))
    assert {p: ck_watermarks(broker.bootstrap, a, p)[1] for p in range(3)} == ends_before

    # Appends continue where the log ended.
    more = ck_produce(broker.bootstrap, a, [Record(b"after", b"restart")], partition=0)
    assert more[0].offset == ends_before[0]

    # And a second restart keeps what the first one recovered plus the new record.
    assert broker.restart() == 0, "second SIGTERM shutdown did not exit 0"
    assert_read_back(produced_a + more, ck_consume(broker.bootstrap, a, 3))


def test_sigterm_restart_keeps_configs_and_log_start(broker, topic_name):
    a, b = topic_name + "-a", topic_name + "-b"
    ck_create_topic(broker.bootstrap, a, 1)
    kp_create_topic(broker.bootstrap, b, 1, config={"retention.ms": "3600000"})
    kp_produce(broker.bootstrap, b, _records("b", 10), compression_type="lz4")

    admin = ck_admin(broker.bootstrap)
    resource = ConfigResource(ResourceType.TOPIC, a, incremental_configs=[
        ConfigEntry("retention.ms", "1234567", incremental_operation=AlterConfigOpType.SET)])
    next(iter(admin.incremental_alter_configs([resource]).values())).result(timeout=WAIT_S)
    deleted = admin.delete_records([confluent_kafka.TopicPartition(b, 0, 4)], request_timeout=WAIT_S)
    assert next(iter(deleted.values())).result(timeout=WAIT_S).low_watermark == 4

    assert broker.restart() == 0, "SIGTERM shutdown did not exit 0"

    admin = ck_admin(broker.bootstrap)
    configs = {res.name: f.result(timeout=WAIT_S) for res, f in admin.describe_configs(
        [ConfigResource(ResourceType.TOPIC, a), ConfigResource(ResourceType.TOPIC, b)]).items()}
    assert configs[a]["retention.ms"].value == "1234567"
    assert configs[b]["retention.ms"].value == "3600000"

    # The log start offset set by DeleteRecords survives too.
    tp = KpTopicPartition(b, 0)
    c = kp_consumer(broker.bootstrap)
    try:
        assert c.beginning_offsets([tp], timeout_ms=30000) == {tp: 4}
        assert c.end_offsets([tp], timeout_ms=30000) == {tp: 10}
    finally:
        c.close()
    assert [c.offset for c in kp_consume(broker.bootstrap, b, 1)] == list(range(4, 10))


def test_sigkill_during_acks_all_production(broker, topic_name):
    """Kill -9 the broker while a producer with acks=all has records in flight,
    restart it, let the producer retry, then check that every record whose
    delivery was acknowledged is stored at the offset its acknowledgement named."""
    total, kill_after_acked, burst = 3000, 1000, 100
    ck_create_topic(broker.bootstrap, topic_name, 3)
    p = ck_producer(broker.bootstrap, **{
        "acks": "all", "linger.ms": 2, "message.timeout.ms": 60000, "retry.backoff.ms": 100,
        "compression.type": "lz4"})
    try:
        _produce_through_kill(broker, p, topic_name, total, kill_after_acked, burst)
    finally:
        p.close()


def _produce_through_kill(broker, p, topic_name, total, kill_after_acked, burst):
    acked: dict[int, tuple[int, int]] = {}
    failed: dict[int, str] = {}

    def on_delivery(i):
        def cb(err, msg):
            if err is None:
                acked[i] = (msg.partition(), msg.offset())
            else:
                failed[i] = str(err)
        return cb

    killed_at_sent = None
    deadline = time.monotonic() + 60
    for start in range(0, total, burst):
        for i in range(start, start + burst):
            p.produce(topic_name, key=f"k{i % 50}".encode(), value=f"record-{i}".encode(), on_delivery=on_delivery(i))
        if killed_at_sent is None and len(acked) >= kill_after_acked:
            # The burst just queued has not been acknowledged yet: kill now.
            broker.kill()
            killed_at_sent = start + burst
        else:
            p.poll(0.01)
        while killed_at_sent is None and len(acked) < start and time.monotonic() < deadline:
            p.poll(0.01)  # Keep the producer close behind, so the kill lands mid-stream.
    assert killed_at_sent is not None, f"only {len(acked)} of {total} acked before the end; never killed"

    broker.start_again()
    assert p.flush(90) == 0, "producer did not finish within 90s of the restart"
    assert len(acked) + len(failed) == total
    assert len(acked) >= kill_after_acked

    print(f"killed after {killed_at_sent} sent; {len(acked)} acked, {len(failed)} failed")
    positions = list(acked.values())
    assert len(set(positions)) == len(positions), "two acknowledged records share an offset"
    stored = {(c.partition, c.offset): c.record.value for c in ck_consume(broker.bootstrap, topic_name, 3)}
    lost = [(i, pos) for i, pos in sorted(acked.items()) if stored.get(pos) != f"record-{i}".encode()]
    assert not lost, (f"{len(lost)} acknowledged records missing or different after SIGKILL "
                      f"(first: {lost[:5]}); {len(failed)} deliveries failed, killed after {killed_at_sent} sent")
