"""Produce with every codec from each client; read back with both clients.

Reading what one client wrote with both clients is the cross-client check:
confluent-kafka (librdkafka) and kafka-python encode batches, compression and
headers independently, so a broker that mangles either shows up here.
"""

import time
from collections import defaultdict

import pytest

from clients import (
    CODECS, WAIT_S, Record, assert_read_back, ck_consume, ck_create_topic, ck_produce, ck_watermarks, kp_consume,
    kp_create_topic, kp_produce, wait_for_partitions,
)

PARTITIONS = 3


def make_records(codec: str, null_header_values: bool) -> list[Record]:
    """About 250 records: keyed (interleaved keys, several per key), null keys,
    null values, empty key and value, a few large compressible values, and headers
    including duplicate keys and empty values."""
    records = []
    for j in range(10):
        for k in range(20):
            headers = [("seq", str(j).encode()), ("dup", b"a"), ("dup", b"b"), ("empty", b"")]
            if null_header_values and k % 5 == 0:
                headers.append(("null", None))
            value = f"{codec}|key-{k}|{j}|".encode() * (1 + (k * j) % 13)
            records.append(Record(f"key-{k}".encode(), value, tuple(headers)))
    records += [Record(None, f"no-key-{i}".encode()) for i in range(20)]
    records += [Record(f"tombstone-{i}".encode(), None, (("t", b"1"),)) for i in range(10)]
    records += [Record(b"", b"empty key"), Record(b"empty-value", b"")]
    records += [Record(f"big-{i}".encode(), (f"{codec}-big-{i}-".encode() * 20000)[:200_000]) for i in range(3)]
    return records


def assert_partitioning(produced) -> None:
    partitions_by_key = defaultdict(set)
    offsets_by_key = defaultdict(list)
    for c in produced:
        if c.record.key is not None:
            partitions_by_key[c.record.key].add(c.partition)
            offsets_by_key[c.record.key].append(c.offset)
    for key, parts in partitions_by_key.items():
        assert len(parts) == 1, f"key {key!r} went to partitions {sorted(parts)}"
    for key, offsets in offsets_by_key.items():
        assert offsets == sorted(offsets), f"records of key {key!r} stored out of send order: {offsets}"
    used = {c.partition for c in produced}
    assert used == set(range(PARTITIONS)), f"20 keys over {PARTITIONS} partitions only used {used}"


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_produce_read_by_both(broker, topic_name, codec):
    ck_create_topic(broker.bootstrap, topic_name, PARTITIONS)
    records = make_records(codec, null_header_values=True)
    produced = ck_produce(broker.bootstrap, topic_name, records, **{"compression.type": codec})
    assert_partitioning(produced)

    assert_read_back(produced, ck_consume(broker.bootstrap, topic_name, PARTITIONS))
    assert_read_back(produced, kp_consume(broker.bootstrap, topic_name, PARTITIONS))


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_python_produce_read_by_both(broker, topic_name, codec):
    kp_create_topic(broker.bootstrap, topic_name, PARTITIONS)
    # kafka-python only sends (str, bytes) headers: no null header values.
    records = make_records(codec, null_header_values=False)
    produced = kp_produce(broker.bootstrap, topic_name, records,
                          compression_type=None if codec == "none" else codec)
    assert_partitioning(produced)

    assert_read_back(produced, kp_consume(broker.bootstrap, topic_name, PARTITIONS))
    assert_read_back(produced, ck_consume(broker.bootstrap, topic_name, PARTITIONS))


def test_auto_create_on_produce(broker, topic_name):
    """Producing to an unknown topic creates it with num.partitions=1."""
    produced = ck_produce(broker.bootstrap, topic_name, [Record(b"k", b"v")])
    assert [(c.partition, c.offset) for c in produced] == [(0, 0)]
    wait_for_partitions(broker.bootstrap, topic_name, 1)
    assert_read_back(produced, kp_consume(broker.bootstrap, topic_name, 1))


def test_acks_one_and_zero(broker, topic_name):
    """acks=1 reports offsets; acks=0 reports none, but the records still land, in order."""
    ck_create_topic(broker.bootstrap, topic_name, 1)
    ones = [Record(b"k", f"acks1-{i}".encode()) for i in range(50)]
    zeros = [Record(b"k", f"acks0-{i}".encode()) for i in range(50)]
    produced = ck_produce(broker.bootstrap, topic_name, ones, acks="1")
    assert [c.offset for c in produced] == list(range(50))
    produced = ck_produce(broker.bootstrap, topic_name, zeros, acks="0")
    # librdkafka reports no offset (None) for acks=0: there is no response to take it from.
    assert all(c.offset is None for c in produced), [c.offset for c in produced][:5]

    deadline = time.monotonic() + WAIT_S
    while (marks := ck_watermarks(broker.bootstrap, topic_name, 0)) != (0, 100):
        assert time.monotonic() < deadline, f"acks=0 records not all in: watermarks {marks}"
        time.sleep(0.1)
    got = ck_consume(broker.bootstrap, topic_name, 1)
    assert [c.record.value for c in got] == [r.value for r in ones + zeros]
