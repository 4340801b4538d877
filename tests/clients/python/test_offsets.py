"""ListOffsets (earliest, latest, by timestamp, max timestamp) and DeleteRecords."""

import time

import confluent_kafka
import kafka.errors
import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import OffsetSpec
from kafka.structs import TopicPartition as KpTopicPartition

from clients import (
    WAIT_S, Record, ck_admin, ck_consume, ck_consumer, ck_create_topic, ck_produce, ck_watermarks, kafka_error_code,
    kp_admin, kp_consume, kp_consumer, kp_produce,
)

# Records 0..9 have timestamps T0 + i seconds, except record 5, which carries the
# largest timestamp of the partition. That makes "max timestamp" point inside the
# log rather than at its end, and makes "first offset with timestamp >= t" differ
# from "offset of the closest timestamp" for t between T0+5s and T0+50s.
T0 = (int(time.time() * 1000) - 3_600_000) // 1000 * 1000
MAX_TS_OFFSET = 5
TIMESTAMPS = [T0 + i * 1000 for i in range(10)]
TIMESTAMPS[MAX_TS_OFFSET] = T0 + 50_000

# (query timestamp, expected offset or None when no record is that late)
BY_TIMESTAMP = [
    (T0 - 1, 0),
    (T0, 0),
    (T0 + 3500, 4),
    (T0 + 6500, 5),   # offset 5 (T0+50s) is the first in log order with ts >= T0+6.5s
    (T0 + 50_000, 5),
    (T0 + 50_001, None),
]


def timestamped_records():
    return [Record(f"k{i}".encode(), f"v{i}".encode(), (), ts) for i, ts in enumerate(TIMESTAMPS)]


@pytest.fixture(params=["confluent", "kafka-python"], ids=["produced-by-confluent", "produced-by-kafka-python"])
def timestamped_topic(request, broker, topic_name):
    """A 2-partition topic: partition 0 holds the 10 timestamped records (produced by
    the client named in the param), partition 1 is empty."""
    ck_create_topic(broker.bootstrap, topic_name, 2)
    produce = ck_produce if request.param == "confluent" else kp_produce
    produced = produce(broker.bootstrap, topic_name, timestamped_records(), partition=0)
    assert [(c.partition, c.offset) for c in produced] == [(0, i) for i in range(10)]
    return topic_name


def test_timestamps_round_trip(broker, timestamped_topic):
    for read in (ck_consume, kp_consume):
        got = read(broker.bootstrap, timestamped_topic, 2)
        assert [c.record.timestamp for c in got] == TIMESTAMPS


def test_list_offsets_confluent(broker, timestamped_topic):
    t = timestamped_topic
    assert ck_watermarks(broker.bootstrap, t, 0) == (0, 10)
    assert ck_watermarks(broker.bootstrap, t, 1) == (0, 0)

    admin = ck_admin(broker.bootstrap)
    tp0, tp1 = confluent_kafka.TopicPartition(t, 0), confluent_kafka.TopicPartition(t, 1)

    def list_offset(tp, spec):
        futures = admin.list_offsets({tp: spec}, request_timeout=WAIT_S)
        return next(iter(futures.values())).result(timeout=WAIT_S)

    assert list_offset(tp0, OffsetSpec.earliest()).offset == 0
    assert list_offset(tp0, OffsetSpec.latest()).offset == 10
    assert list_offset(tp1, OffsetSpec.earliest()).offset == 0
    assert list_offset(tp1, OffsetSpec.latest()).offset == 0
    max_ts = list_offset(tp0, OffsetSpec.max_timestamp())
    assert (max_ts.offset, max_ts.timestamp) == (MAX_TS_OFFSET, TIMESTAMPS[MAX_TS_OFFSET])
    for ts, expected in BY_TIMESTAMP:
        got = list_offset(tp0, OffsetSpec.for_timestamp(ts))
        if expected is None:
            assert got.offset == -1, f"timestamp {ts - T0:+} past every record: got offset {got.offset}"
        else:
            assert (got.offset, got.timestamp) == (expected, TIMESTAMPS[expected]), f"timestamp T0{ts - T0:+}"

    # The consumer's offsets_for_times goes through the same API with its own code path.
    c = ck_consumer(broker.bootstrap)
    try:
        for ts, expected in BY_TIMESTAMP:
            [res] = c.offsets_for_times([confluent_kafka.TopicPartition(t, 0, ts)], timeout=WAIT_S)
            assert res.error is None
            assert res.offset == (-1 if expected is None else expected), f"timestamp T0{ts - T0:+}"
    finally:
        c.close()


def test_list_offsets_kafka_python(broker, timestamped_topic):
    t = timestamped_topic
    tp0, tp1 = KpTopicPartition(t, 0), KpTopicPartition(t, 1)
    c = kp_consumer(broker.bootstrap)
    try:
        assert c.beginning_offsets([tp0, tp1], timeout_ms=30000) == {tp0: 0, tp1: 0}
        assert c.end_offsets([tp0, tp1], timeout_ms=30000) == {tp0: 10, tp1: 0}
        for ts, expected in BY_TIMESTAMP:
            got = c.offsets_for_times({tp0: ts}, timeout_ms=30000)[tp0]
            if expected is None:
                assert got is None, f"timestamp T0{ts - T0:+}: got {got}"
            else:
                assert (got.offset, got.timestamp) == (expected, TIMESTAMPS[expected]), f"timestamp T0{ts - T0:+}"
    finally:
        c.close()


def _ck_first_error(bootstrap, topic, partition, offset, **config):
    """Fetch from `offset` and return the first consumer error (or fail on a record)."""
    c = ck_consumer(bootstrap, **config)
    try:
        c.assign([confluent_kafka.TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is None:
                continue
            assert msg.error() is not None, f"read offset {msg.offset()} below the log start"
            return msg.error()
        raise AssertionError(f"no error within {WAIT_S}s fetching offset {offset}")
    finally:
        c.close()


def test_delete_records_confluent(broker, topic_name):
    ck_create_topic(broker.bootstrap, topic_name, 2)
    ck_produce(broker.bootstrap, topic_name, [Record(b"k", f"p0-{i}".encode()) for i in range(10)], partition=0)
    ck_produce(broker.bootstrap, topic_name, [Record(b"k", f"p1-{i}".encode()) for i in range(5)], partition=1)
    admin = ck_admin(broker.bootstrap)

    futures = admin.delete_records([confluent_kafka.TopicPartition(topic_name, 0, 4),
                                    confluent_kafka.TopicPartition(topic_name, 1, confluent_kafka.OFFSET_END)],
                                   request_timeout=WAIT_S, operation_timeout=10)
    low = {tp.partition: f.result(timeout=WAIT_S).low_watermark for tp, f in futures.items()}
    assert low == {0: 4, 1: 5}
    assert ck_watermarks(broker.bootstrap, topic_name, 0) == (4, 10)
    assert ck_watermarks(broker.bootstrap, topic_name, 1) == (5, 5)

    # Below the log start offset: OFFSET_OUT_OF_RANGE, which auto.offset.reset=earliest
    # turns into a jump to the new start, and =error hands to the application.
    got = ck_consume(broker.bootstrap, topic_name, 1, start_offsets={0: 2})
    assert [(c.offset, c.record.value) for c in got] == [(i, f"p0-{i}".encode()) for i in range(4, 10)]
    err = _ck_first_error(broker.bootstrap, topic_name, 0, 2, **{"auto.offset.reset": "error"})
    assert err.code() == KafkaError._AUTO_OFFSET_RESET, err
    assert "out of range" in err.str().lower(), err

    # Deleting past the high watermark is refused.
    futures = admin.delete_records([confluent_kafka.TopicPartition(topic_name, 0, 100)], request_timeout=WAIT_S)
    with pytest.raises(KafkaException) as e:
        next(iter(futures.values())).result(timeout=WAIT_S)
    assert kafka_error_code(e.value) == KafkaError.OFFSET_OUT_OF_RANGE
    assert ck_watermarks(broker.bootstrap, topic_name, 0) == (4, 10)

    # Appends go on after the deleted prefix.
    produced = ck_produce(broker.bootstrap, topic_name, [Record(b"k", b"after")], partition=0)
    assert produced[0].offset == 10


def test_delete_records_kafka_python(broker, topic_name):
    ck_create_topic(broker.bootstrap, topic_name, 1)
    kp_produce(broker.bootstrap, topic_name, [Record(b"k", f"v{i}".encode()) for i in range(10)], partition=0)
    tp = KpTopicPartition(topic_name, 0)
    admin = kp_admin(broker.bootstrap)
    try:
        result = admin.delete_records({tp: 4}, timeout_ms=10000)
        assert result[tp]["low_watermark"] == 4
        with pytest.raises(kafka.errors.OffsetOutOfRangeError):
            admin.delete_records({tp: 100}, timeout_ms=10000)
    finally:
        admin.close()

    c = kp_consumer(broker.bootstrap)
    try:
        assert c.beginning_offsets([tp], timeout_ms=30000) == {tp: 4}
        assert c.end_offsets([tp], timeout_ms=30000) == {tp: 10}
    finally:
        c.close()

    got = kp_consume(broker.bootstrap, topic_name, 1, start_offsets={0: 1})
    assert [(c.offset, c.record.value) for c in got] == [(i, f"v{i}".encode()) for i in range(4, 10)]

    c = kp_consumer(broker.bootstrap, auto_offset_reset="none")
    try:
        c.assign([tp])
        c.seek(tp, 1)
        deadline = time.monotonic() + WAIT_S
        with pytest.raises(kafka.errors.OffsetOutOfRangeError):
            while time.monotonic() < deadline:
                records = c.poll(timeout_ms=200)
                assert not records, f"read below the log start: {records}"
    finally:
        c.close()


def test_kafka_2_0_protocol_versions(broker, topic_name):
    """A client pinned to Kafka 2.0's protocol versions (ListOffsets v3, Produce v6,
    Fetch v8, Metadata v6) inside the ranges rill advertises: produce, list
    offsets and fetch all still work."""
    old = {"api_version": (2, 0)}
    ck_create_topic(broker.bootstrap, topic_name, 1)
    produced = kp_produce(broker.bootstrap, topic_name, timestamped_records(), partition=0, **old)
    assert [c.offset for c in produced] == list(range(10))
    tp = KpTopicPartition(topic_name, 0)
    c = kp_consumer(broker.bootstrap, **old)
    try:
        assert c.beginning_offsets([tp], timeout_ms=30000) == {tp: 0}
        assert c.end_offsets([tp], timeout_ms=30000) == {tp: 10}
        got = c.offsets_for_times({tp: T0 + 3500}, timeout_ms=30000)[tp]
        assert (got.offset, got.timestamp) == (4, TIMESTAMPS[4])
    finally:
        c.close()
    got = kp_consume(broker.bootstrap, topic_name, 1, **old)
    assert [(c.offset, c.record.value, c.record.timestamp) for c in got] == [
        (i, f"v{i}".encode(), ts) for i, ts in enumerate(TIMESTAMPS)]
