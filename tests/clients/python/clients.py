"""Thin, bounded helpers over confluent-kafka ("ck") and kafka-python ("kp").

Consumers here use manual assignment (test_groups.py has the group members). Producers are idempotent whenever acks=all allows it (the
default of kafka-python and the Java client), and plain otherwise.
Every call that waits takes a timeout; nothing here blocks without one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import confluent_kafka
from confluent_kafka import OFFSET_BEGINNING, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
import kafka
import kafka.admin
from kafka.structs import TopicPartition as KpTopicPartition

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]

# A generous bound for a single request or a flush on a loopback broker.
WAIT_S = 30.0

# librdkafka logs through Python logging, so pytest captures its connection
# errors (shown only for a failing test) instead of printing them to stderr.
RDKAFKA_LOGGER = logging.getLogger("rdkafka")


@dataclass(frozen=True)
class Record:
    """One record as sent or as read back. Headers are a tuple of (str, bytes|None)."""
    key: bytes | None
    value: bytes | None
    headers: tuple = ()
    timestamp: int | None = None


@dataclass(frozen=True)
class Consumed:
    partition: int
    offset: int
    record: Record


# ---------------------------------------------------------------- confluent-kafka


def ck_admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000, "logger": RDKAFKA_LOGGER})


def ck_create_topic(bootstrap: str, topic: str, partitions: int = 1, config: dict | None = None) -> None:
    # The admin client must outlive its futures: a collected client cancels them.
    admin = ck_admin(bootstrap)
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=10, request_timeout=WAIT_S)
    futures[topic].result(timeout=WAIT_S)
    wait_for_partitions(bootstrap, topic, partitions)


def wait_for_partitions(bootstrap: str, topic: str, partitions: int, timeout_s: float = 10.0) -> None:
    """Wait until metadata shows `partitions` partitions of `topic`, each with a leader."""
    admin = ck_admin(bootstrap)
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=10).topics.get(topic)
        if md is not None and md.error is None:
            seen = {p: pm.leader for p, pm in md.partitions.items()}
            if len(seen) == partitions and all(leader >= 0 for leader in seen.values()):
                return
        time.sleep(0.1)
    raise AssertionError(
        f"topic {topic} did not show {partitions} led partitions within {timeout_s}s; last seen {seen}")


def ck_producer(bootstrap: str, **config) -> confluent_kafka.Producer:
    conf = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 20,
        "message.timeout.ms": 20000,
        "request.timeout.ms": 10000,
        "reconnect.backoff.max.ms": 1000,
        "logger": RDKAFKA_LOGGER,
    }
    conf.update(config)
    # Idempotence needs acks=all; the tests of acks 0 and 1 run without it.
    conf.setdefault("enable.idempotence", str(conf["acks"]) in ("all", "-1"))
    return confluent_kafka.Producer(conf)


def ck_produce(bootstrap: str, topic: str, records: list[Record], producer=None, partition: int | None = None,
               **config) -> list[Consumed]:
    """Produce `records` in order (to `partition`, or where the partitioner puts them)
    and return each one's (partition, offset) from its delivery report, in send
    order. Fails on any delivery error."""
    p = producer or ck_producer(bootstrap, **config)
    try:
        return _ck_produce(p, topic, records, partition)
    finally:
        if producer is None:
            p.close()


def _ck_produce(p, topic, records, partition) -> list[Consumed]:
    reports: list = [None] * len(records)

    def on_delivery(index):
        def cb(err, msg):
            reports[index] = (err, msg.partition() if err is None else None, msg.offset() if err is None else None)
        return cb

    for i, r in enumerate(records):
        kwargs = {"key": r.key, "value": r.value, "on_delivery": on_delivery(i)}
        if r.headers:
            kwargs["headers"] = list(r.headers)
        if r.timestamp is not None:
            kwargs["timestamp"] = r.timestamp
        if partition is not None:
            kwargs["partition"] = partition
        _ck_produce_one(p, topic, kwargs)
    remaining = p.flush(WAIT_S)
    assert remaining == 0, f"{remaining} records still undelivered after {WAIT_S}s"
    errors = [(i, rep[0]) for i, rep in enumerate(reports) if rep is None or rep[0] is not None]
    assert not errors, f"delivery failed for {len(errors)} records, first: {errors[:3]}"
    return [Consumed(rep[1], rep[2], r) for rep, r in zip(reports, records)]


def _ck_produce_one(p, topic, kwargs) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            p.produce(topic, **kwargs)
            p.poll(0)
            return
        except BufferError:
            # Local queue full: serve delivery reports until there is room.
            assert time.monotonic() < deadline, "producer queue stayed full"
            p.poll(0.1)


def ck_consumer(bootstrap: str, **config) -> confluent_kafka.Consumer:
    # confluent-kafka refuses to build a Consumer without group.id. We never
    # subscribe or commit, so the group is never joined: assign() fetches alone.
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": "rill-client-tests",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "fetch.wait.max.ms": 100,
        "socket.timeout.ms": 10000,
        "logger": RDKAFKA_LOGGER,
    }
    conf.update(config)
    return confluent_kafka.Consumer(conf)


def ck_watermarks(bootstrap: str, topic: str, partition: int) -> tuple[int, int]:
    c = ck_consumer(bootstrap)
    try:
        return c.get_watermark_offsets(confluent_kafka.TopicPartition(topic, partition), timeout=WAIT_S, cached=False)
    finally:
        c.close()


def _ck_headers(msg) -> tuple:
    return tuple(msg.headers() or ())


def ck_consume(bootstrap: str, topic: str, partitions: int, start_offsets: dict | None = None,
               timeout_s: float = WAIT_S, **config) -> list[Consumed]:
    """Read each partition from `start_offsets` (default: the beginning) up to the
    high watermark measured first. Returns records in per-partition fetch order."""
    c = ck_consumer(bootstrap, **config)
    try:
        ends = {}
        for p in range(partitions):
            _, high = c.get_watermark_offsets(confluent_kafka.TopicPartition(topic, p), timeout=WAIT_S, cached=False)
            ends[p] = high
        starts = start_offsets or {}
        c.assign([confluent_kafka.TopicPartition(topic, p, starts.get(p, OFFSET_BEGINNING)) for p in range(partitions)])
        out: list[Consumed] = []
        next_offset = {p: None for p in range(partitions)}
        deadline = time.monotonic() + timeout_s

        def done():
            return all(ends[p] == 0 or (next_offset[p] is not None and next_offset[p] >= ends[p])
                       for p in range(partitions))

        while not done():
            assert time.monotonic() < deadline, (
                f"did not reach high watermarks {ends} within {timeout_s}s; at {next_offset}")
            msg = c.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            out.append(Consumed(msg.partition(), msg.offset(), Record(
                msg.key(), msg.value(), _ck_headers(msg), msg.timestamp()[1])))
            next_offset[msg.partition()] = msg.offset() + 1
        return out
    finally:
        c.close()


# ---------------------------------------------------------------- kafka-python


def kp_admin(bootstrap: str) -> kafka.KafkaAdminClient:
    return kafka.KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)


def kp_producer(bootstrap: str, **config) -> kafka.KafkaProducer:
    conf = dict(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                request_timeout_ms=10000, max_block_ms=10000)
    conf.update(config)
    # kafka-python turns idempotence on by default; it needs acks=all.
    conf.setdefault("enable_idempotence", str(conf["acks"]) in ("all", "-1"))
    return kafka.KafkaProducer(**conf)


def kp_produce(bootstrap: str, topic: str, records: list[Record], producer=None, partition: int | None = None,
               **config) -> list[Consumed]:
    p = producer or kp_producer(bootstrap, **config)
    try:
        futures = [p.send(topic, key=r.key, value=r.value, headers=list(r.headers), timestamp_ms=r.timestamp,
                          partition=partition)
                   for r in records]
        p.flush(timeout=WAIT_S)
        out = []
        for f, r in zip(futures, records):
            md = f.get(timeout=WAIT_S)
            out.append(Consumed(md.partition, md.offset, r))
        return out
    finally:
        if producer is None:
            p.close(timeout=10)


def kp_consumer(bootstrap: str, **config) -> kafka.KafkaConsumer:
    conf = dict(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                auto_offset_reset="earliest", request_timeout_ms=15000, fetch_max_wait_ms=100)
    conf.update(config)
    return kafka.KafkaConsumer(**conf)


def kp_consume(bootstrap: str, topic: str, partitions: int, start_offsets: dict | None = None,
               timeout_s: float = WAIT_S, **config) -> list[Consumed]:
    c = kp_consumer(bootstrap, **config)
    try:
        tps = [KpTopicPartition(topic, p) for p in range(partitions)]
        ends = {tp.partition: off for tp, off in c.end_offsets(tps, timeout_ms=int(WAIT_S * 1000)).items()}
        c.assign(tps)
        starts = start_offsets or {}
        for tp in tps:
            if tp.partition in starts:
                c.seek(tp, starts[tp.partition])
            else:
                c.seek_to_beginning(tp)
        out: list[Consumed] = []
        next_offset = {p: None for p in range(partitions)}
        deadline = time.monotonic() + timeout_s

        def done():
            return all(ends[p] == 0 or (next_offset[p] is not None and next_offset[p] >= ends[p])
                       for p in range(partitions))

        while not done():
            assert time.monotonic() < deadline, (
                f"did not reach high watermarks {ends} within {timeout_s}s; at {next_offset}")
            batches = c.poll(timeout_ms=200)
            for tp, msgs in batches.items():
                for m in msgs:
                    out.append(Consumed(tp.partition, m.offset, Record(
                        m.key, m.value, tuple((k, v) for k, v in m.headers), m.timestamp)))
                    next_offset[tp.partition] = m.offset + 1
        return out
    finally:
        c.close()


# ---------------------------------------------------------------- checks


def without_timestamp(r: Record) -> Record:
    return Record(r.key, r.value, r.headers)


def assert_read_back(produced: list[Consumed], consumed: list[Consumed]) -> None:
    """Every produced record sits at the offset its ack named, with the same key,
    value and headers; each partition reads back gap-free and in offset order;
    and nothing else is in the partitions."""
    by_position = {}
    for c in consumed:
        assert (c.partition, c.offset) not in by_position, f"offset read twice: {c.partition}/{c.offset}"
        by_position[(c.partition, c.offset)] = c.record
    for p in sorted({c.partition for c in consumed}):
        offsets = [c.offset for c in consumed if c.partition == p]
        assert offsets == sorted(offsets), f"partition {p} read out of offset order"
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), f"partition {p} has offset gaps"
    for sent in produced:
        got = by_position.get((sent.partition, sent.offset))
        assert got is not None, f"acked record missing at {sent.partition}/{sent.offset}: {sent.record}"
        assert without_timestamp(got) == without_timestamp(sent.record), (
            f"at {sent.partition}/{sent.offset}: sent {sent.record}, read {got}")
    assert len(consumed) == len(produced), f"read {len(consumed)} records, produced {len(produced)}"


def kafka_error_code(exc: BaseException) -> int:
    """The Kafka error code carried by a confluent-kafka KafkaException."""
    assert isinstance(exc, KafkaException), f"expected KafkaException, got {exc!r}"
    return exc.args[0].code()


def kp_create_topic(bootstrap: str, topic: str, partitions: int = 1, config: dict | None = None) -> None:
    admin = kp_admin(bootstrap)
    try:
        admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": 1,
                                     "configs": config or {}}})
    finally:
        admin.close()
    wait_for_partitions(bootstrap, topic, partitions)
