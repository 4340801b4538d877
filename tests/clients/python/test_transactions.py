"""Kafka transactions (exactly-once) through confluent-kafka (librdkafka) and
kafka-python: commit and abort seen by read_committed and read_uncommitted
consumers, the last stable offset held by an open transaction, offsets sent to
a transaction (consume-transform-produce), zombie fencing, the coordinator's
transaction timeout, a refused timeout, a broker SIGKILL with transactions
open, an exactly-once pipeline through three broker SIGKILLs, and a 3-node
cluster losing the transaction coordinator's node.

What is asserted is Kafka's semantics, as a real Kafka gives them:

- A transaction's records are delivered to a read_committed consumer only once
  it committed; those of an aborted transaction never are. A read_uncommitted
  consumer sees every record, committed, aborted or open.
- Every commit or abort writes one control record (a marker) in each partition
  the transaction wrote to. It takes an offset, which no consumer delivers: the
  offsets that consumers see show the gap, and the high watermark counts it.
- The markers are written after EndTxn has answered, so anything that waits for
  them (watermarks, a read_committed read) polls with a bound.
- A read_committed fetch, and ListOffsets(latest) with isolation
  read_committed, stop at the last stable offset: the first offset of the
  oldest open transaction in the partition (or the high watermark when none).
- InitProducerId with a transactional.id aborts that id's open transaction and
  fences the producer that opened it (a newer epoch); the coordinator aborts a
  transaction that stays open longer than its transaction.timeout.ms, and
  refuses a timeout above transaction.max.timeout.ms (900000 by default).

Producers close with purge + GC rather than Producer.close(), which would try to
abort an open transaction against a broker that may be down or fenced them.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time

import confluent_kafka
import kafka
import kafka.errors
import pytest
from confluent_kafka import OFFSET_BEGINNING, IsolationLevel, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic, OffsetSpec
from kafka.structs import TopicPartition as KpTopicPartition

from clients import (
    RDKAFKA_LOGGER, WAIT_S, Record, ck_admin, ck_consumer, ck_create_topic, ck_produce, kp_admin, kp_consumer,
    kp_producer,
)
from rill_broker import _die_with_parent
from test_cluster import cluster  # noqa: F401  (the 3-node fixture)

# Bound of one transactional call (init, commit, abort, send offsets).
TXN_WAIT_S = 30.0
# How long a read_committed consumer is watched to show that it gets nothing more.
HOLD_S = 3.0
# After a read saw what it expected, how long it keeps polling to catch extras.
QUIET_S = 1.0
# How long the coordinator may take to abort a timed-out transaction: Kafka checks
# every transaction.abort.timed.out.transaction.cleanup.interval.ms (10 s default).
TIMEOUT_ABORT_S = 40.0
# Kafka's transaction.max.timeout.ms default.
TRANSACTION_MAX_TIMEOUT_MS = 900000
# Kafka's transaction.state.log.num.partitions default.
TRANSACTION_STATE_PARTITIONS = 50

# How librdkafka reports a producer fenced by a newer one with its transactional.id.
FENCED_CODES = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}

# Errors that re-creating the producer cannot cure: the EOS pipeline fails on them at once.
UNRECOVERABLE = {
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.INVALID_TRANSACTION_TIMEOUT, KafkaError.UNSUPPORTED_VERSION, KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
}

READ_COMMITTED = "read_committed"
READ_UNCOMMITTED = "read_uncommitted"


# ---------------------------------------------------------------- helpers


def txn_producer(bootstrap: str, transactional_id: str, **config) -> confluent_kafka.Producer:
    """A librdkafka transactional producer (idempotent, acks=all). message.timeout.ms
    is left to default to transaction.timeout.ms, which librdkafka requires."""
    conf = {
        "bootstrap.servers": bootstrap,
        "transactional.id": transactional_id,
        "acks": "all",
        "linger.ms": 5,
        "request.timeout.ms": 10000,
        "reconnect.backoff.max.ms": 1000,
        "logger": RDKAFKA_LOGGER,
    }
    conf.update(config)
    return confluent_kafka.Producer(conf)


def drop_producer(p) -> None:
    """Discard a producer without Producer.close() (which aborts an open
    transaction and flushes, and could wait on a dead or fencing broker)."""
    if p is None:
        return
    try:
        p.purge()
        p.flush(0)
    except Exception:  # noqa: BLE001 - a fenced or failed producer may refuse; it is dropped anyway
        pass


def describe(err: KafkaError) -> str:
    return (f"{err.name()} ({err.code()}): {err.str()} [fatal={err.fatal()} retriable={err.retriable()} "
            f"abortable={err.txn_requires_abort()}]")


def kafka_err(exc: BaseException) -> KafkaError:
    assert isinstance(exc, KafkaException), f"expected a KafkaException, got {exc!r}"
    return exc.args[0]


def txn_send(p, topic: str, items: list[tuple[int, bytes | None, bytes]], check: bool = True) -> list:
    """Produce (partition, key, value) items in order and flush. Returns, in send
    order, (partition, offset) when `check` (failing on any delivery error), else
    (error or None, partition, offset)."""
    reports: list = [None] * len(items)

    def on_delivery(i):
        def cb(err, msg):
            # On an error, touch no message method: a fatal error can have
            # an exception pending in the client while this runs.
            if err is not None:
                reports[i] = (err, items[i][0], None)
            else:
                reports[i] = (None, msg.partition(), msg.offset())
        return cb

    for i, (partition, key, value) in enumerate(items):
        try:
            p.produce(topic, key=key, value=value, partition=partition, on_delivery=on_delivery(i))
        except KafkaException as e:
            if check:
                raise
            reports[i] = (kafka_err(e), partition, None)
        p.poll(0)
    try:
        remaining = p.flush(WAIT_S)
    except KafkaException:
        # A fatal error (a fenced producer) raises from flush; the records
        # it failed are in their delivery reports, or never delivered.
        if check:
            raise
        remaining = len(p)
    if not check:
        return [r if r is not None else ("undelivered", items[i][0], None) for i, r in enumerate(reports)]
    assert remaining == 0, f"{remaining} records undelivered after {WAIT_S}s"
    bad = [(i, r) for i, r in enumerate(reports) if r is None or r[0] is not None]
    assert not bad, f"delivery failed for {len(bad)} records, first: {bad[:3]}"
    return [(r[1], r[2]) for r in reports]


def items(prefix: str, n: int, partitions: int = 1) -> list[tuple[int, bytes, bytes]]:
    """n records spread round-robin over the partitions, values `prefix-i`."""
    return [(i % partitions, f"k{i}".encode(), f"{prefix}-{i}".encode()) for i in range(n)]


def expected_by_partition(sent: list[tuple[int, bytes, bytes]], positions: list[tuple[int, int]]) -> dict:
    """{partition: [(offset, value)]} from items and their delivery positions."""
    out: dict = {}
    for (partition, _key, value), (p2, offset) in zip(sent, positions):
        assert partition == p2
        out.setdefault(partition, []).append((offset, value))
    return out


def merge(*parts: dict) -> dict:
    out: dict = {}
    for part in parts:
        for p, entries in part.items():
            out.setdefault(p, []).extend(entries)
    return {p: sorted(entries) for p, entries in out.items()}


class CkReader:
    """A librdkafka consumer on every partition of a topic from the beginning, at
    one isolation level (manual assignment; the group is never joined)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, isolation: str):
        self.c = ck_consumer(bootstrap, **{"isolation.level": isolation})
        self.c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.got: list[tuple[int, int, bytes]] = []

    def _poll(self, timeout: float) -> None:
        msg = self.c.poll(timeout)
        if msg is None:
            return
        if msg.error():
            if msg.error().fatal():
                raise KafkaException(msg.error())
            return  # Transport errors are informational; the consumer reconnects.
        self.got.append((msg.partition(), msg.offset(), msg.value()))

    def poll_for(self, seconds: float) -> dict:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._poll(0.1)
        return self.by_partition()

    def poll_until(self, count: int, timeout_s: float = WAIT_S, quiet_s: float = QUIET_S) -> dict:
        """Poll until `count` records arrived in all (bounded), then `quiet_s` more
        to catch any that should not be there."""
        deadline = time.monotonic() + timeout_s
        while len(self.got) < count and time.monotonic() < deadline:
            self._poll(0.1)
        return self.poll_for(quiet_s)

    def by_partition(self) -> dict:
        out: dict = {}
        for p, offset, value in self.got:
            out.setdefault(p, []).append((offset, value))
        return out

    def close(self) -> None:
        self.c.close()


def ck_read(bootstrap: str, topic: str, partitions: int, isolation: str, count: int,
            timeout_s: float = WAIT_S, quiet_s: float = QUIET_S) -> dict:
    """{partition: [(offset, value)]} in delivery order, read by a fresh consumer."""
    r = CkReader(bootstrap, topic, partitions, isolation)
    try:
        return r.poll_until(count, timeout_s, quiet_s)
    finally:
        r.close()


def kp_read(bootstrap: str, topic: str, partitions: int, isolation: str, count: int,
            timeout_s: float = WAIT_S, quiet_s: float = QUIET_S) -> dict:
    c = kp_consumer(bootstrap, isolation_level=isolation)
    try:
        tps = [KpTopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        got: dict = {}
        deadline = time.monotonic() + timeout_s
        quiet_until = None
        while True:
            now = time.monotonic()
            n = sum(len(v) for v in got.values())
            if n >= count and quiet_until is None:
                quiet_until = now + quiet_s
            if (quiet_until is not None and now >= quiet_until) or now >= deadline:
                return got
            for tp, msgs in c.poll(timeout_ms=100).items():
                got.setdefault(tp.partition, []).extend((m.offset, m.value) for m in msgs)
    finally:
        c.close()


def latest_offsets(bootstrap: str, topic: str, partitions: int, isolation: IsolationLevel) -> dict:
    """ListOffsets(latest) at an isolation level: the high watermark, or for
    read_committed the last stable offset."""
    admin = ck_admin(bootstrap)
    futures = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in range(partitions)},
                                 isolation_level=isolation, request_timeout=WAIT_S)
    return {tp.partition: f.result(timeout=WAIT_S).offset for tp, f in futures.items()}


def both_latest(bootstrap: str, topic: str, partitions: int) -> tuple[dict, dict]:
    return (latest_offsets(bootstrap, topic, partitions, IsolationLevel.READ_COMMITTED),
            latest_offsets(bootstrap, topic, partitions, IsolationLevel.READ_UNCOMMITTED))


def eventually(what: str, fn, timeout_s: float = WAIT_S, interval_s: float = 0.2):
    """Call fn until it returns a truthy value; fail after timeout_s with its last value."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        try:
            last = fn()
        except KafkaException as e:  # e.g. a broker restarting; retried until the bound
            last = e
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s}s; last: {last!r}")
        time.sleep(interval_s)


def settled_offsets(bootstrap: str, topic: str, partitions: int, want: dict, timeout_s: float = WAIT_S) -> None:
    """Wait until both the LSO and the high watermark of each partition equal `want`
    (markers written, nothing open)."""
    def check():
        committed, uncommitted = both_latest(bootstrap, topic, partitions)
        return (committed == want and uncommitted == want) or None
    try:
        eventually(f"{topic}: LSO and high watermark {want}", check, timeout_s)
    except AssertionError:
        committed, uncommitted = both_latest(bootstrap, topic, partitions)
        raise AssertionError(f"{topic}: want LSO = high watermark = {want}; "
                             f"read_committed {committed}, read_uncommitted {uncommitted}") from None


# ---------------------------------------------------------------- confluent-kafka


def test_commit_seen_by_read_committed_and_read_uncommitted(broker, topic_name):
    """One transaction writes 2 x 25 records to 2 partitions and commits: both
    isolation levels read exactly those records, in order, at offsets 0..24 of
    each partition; the commit marker takes offset 25 (high watermark 26 = LSO)."""
    ck_create_topic(broker.bootstrap, topic_name, 2)
    p = txn_producer(broker.bootstrap, f"{topic_name}-txn")
    try:
        p.init_transactions(TXN_WAIT_S)
        p.begin_transaction()
        sent = items("committed", 50, 2)
        positions = txn_send(p, topic_name, sent)
        p.commit_transaction(TXN_WAIT_S)
    finally:
        drop_producer(p)
    expected = expected_by_partition(sent, positions)
    assert {q: [o for o, _ in e] for q, e in expected.items()} == {0: list(range(25)), 1: list(range(25))}

    assert ck_read(broker.bootstrap, topic_name, 2, READ_COMMITTED, 50) == expected
    assert ck_read(broker.bootstrap, topic_name, 2, READ_UNCOMMITTED, 50) == expected
    settled_offsets(broker.bootstrap, topic_name, 2, {0: 26, 1: 26})


def test_abort_hidden_from_read_committed_seen_by_read_uncommitted(broker, topic_name):
    """Commit 2x10, abort 2x5, commit 2x7 on 2 partitions: read_committed gets the
    two committed transactions only, read_uncommitted all three; every marker
    takes an offset (0-9 | 10 | 11-15 | 16 | 17-23 | 24)."""
    ck_create_topic(broker.bootstrap, topic_name, 2)
    p = txn_producer(broker.bootstrap, f"{topic_name}-txn")
    try:
        p.init_transactions(TXN_WAIT_S)
        p.begin_transaction()
        sent1 = items("first", 20, 2)
        pos1 = txn_send(p, topic_name, sent1)
        p.commit_transaction(TXN_WAIT_S)

        p.begin_transaction()
        sent2 = items("aborted", 10, 2)
        pos2 = txn_send(p, topic_name, sent2)  # flushed: in the log before the abort
        p.abort_transaction(TXN_WAIT_S)

        p.begin_transaction()
        sent3 = items("third", 14, 2)
        pos3 = txn_send(p, topic_name, sent3)
        p.commit_transaction(TXN_WAIT_S)
    finally:
        drop_producer(p)
    first, aborted, third = (expected_by_partition(s, q) for s, q in ((sent1, pos1), (sent2, pos2), (sent3, pos3)))
    for q in (0, 1):
        assert [o for o, _ in first[q]] == list(range(0, 10))
        assert [o for o, _ in aborted[q]] == list(range(11, 16)), "the first commit marker takes offset 10"
        assert [o for o, _ in third[q]] == list(range(17, 24)), "the abort marker takes offset 16"

    assert ck_read(broker.bootstrap, topic_name, 2, READ_COMMITTED, 34) == merge(first, third)
    assert ck_read(broker.bootstrap, topic_name, 2, READ_UNCOMMITTED, 44) == merge(first, aborted, third)
    settled_offsets(broker.bootstrap, topic_name, 2, {0: 25, 1: 25})


def test_open_transaction_holds_read_committed_at_the_lso(broker, topic_name):
    """A committed transaction (2x5, marker at 5), then an open one on partition 0
    (offsets 6-9, flushed) and a plain record after it (10): the LSO of partition
    0 is 6 (ListOffsets and the read_committed consumer's watermarks), and a
    read_committed consumer gets nothing past it, not even the plain record, for
    3 s; after the commit it gets 6-10, and LSO = high watermark = 12."""
    ck_create_topic(broker.bootstrap, topic_name, 2)
    p = txn_producer(broker.bootstrap, f"{topic_name}-txn")
    reader = None
    try:
        p.init_transactions(TXN_WAIT_S)
        p.begin_transaction()
        sent1 = items("committed", 10, 2)
        first = expected_by_partition(sent1, txn_send(p, topic_name, sent1))
        p.commit_transaction(TXN_WAIT_S)
        settled_offsets(broker.bootstrap, topic_name, 2, {0: 6, 1: 6})

        p.begin_transaction()
        sent2 = items("open", 4, 1)
        open_ = expected_by_partition(sent2, txn_send(p, topic_name, sent2))
        assert [o for o, _ in open_[0]] == [6, 7, 8, 9]
        plain = ck_produce(broker.bootstrap, topic_name, [Record(b"plain", b"after-the-open-txn")], partition=0)
        assert plain[0].offset == 10
        plain_e = {0: [(10, b"after-the-open-txn")]}

        lso, hw = both_latest(broker.bootstrap, topic_name, 2)
        assert lso == {0: 6, 1: 6}, "ListOffsets read_committed: the LSO is the open transaction's first offset"
        assert hw == {0: 11, 1: 6}
        rc = ck_consumer(broker.bootstrap, **{"isolation.level": READ_COMMITTED})
        try:
            assert rc.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=WAIT_S, cached=False) == (0, 6)
        finally:
            rc.close()

        reader = CkReader(broker.bootstrap, topic_name, 2, READ_COMMITTED)
        assert reader.poll_until(10, quiet_s=HOLD_S) == first, "read_committed went past the LSO"
        assert ck_read(broker.bootstrap, topic_name, 2, READ_UNCOMMITTED, 15) == merge(first, open_, plain_e)

        p.commit_transaction(TXN_WAIT_S)
        assert reader.poll_until(15) == merge(first, open_, plain_e)
        settled_offsets(broker.bootstrap, topic_name, 2, {0: 12, 1: 6})
    finally:
        if reader is not None:
            reader.close()
        drop_producer(p)


def test_send_offsets_to_transaction_commits_the_group_offsets(group_broker, topic_name):
    """Consume-transform-produce: a group member (subscribe, read_committed) reads
    20 input records, the transactional producer writes their transforms and
    sends consumer.position() with the consumer's group metadata, then commits:
    the group's committed offsets are that position and the output is visible.
    A second round that aborts leaves committed offsets and visible output alone."""
    bootstrap = group_broker.bootstrap
    src, dst, group = topic_name + "-in", topic_name + "-out", topic_name + "-group"
    ck_create_topic(bootstrap, src, 2)
    ck_create_topic(bootstrap, dst, 2)
    ck_produce(bootstrap, src, [Record(None, f"in-0-{i}".encode()) for i in range(10)], partition=0)
    ck_produce(bootstrap, src, [Record(None, f"in-1-{i}".encode()) for i in range(14)], partition=1)
    total1 = 24

    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap, "group.id": group, "isolation.level": READ_COMMITTED,
        "enable.auto.commit": False, "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500, "fetch.wait.max.ms": 100, "logger": RDKAFKA_LOGGER,
    })
    p = txn_producer(bootstrap, f"{topic_name}-txn")
    try:
        consumer.subscribe([src])

        def consume(n: int) -> list:
            got = []
            deadline = time.monotonic() + WAIT_S
            while len(got) < n and time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is not None and not msg.error():
                    got.append(msg)
            assert len(got) == n, f"consumed {len(got)} of {n} input records within {WAIT_S}s"
            return got

        def transform(msgs):
            return [(m.partition(), m.key(), m.value() + b"!") for m in msgs]

        p.init_transactions(TXN_WAIT_S)
        round1 = consume(total1)
        p.begin_transaction()
        out1 = transform(round1)
        pos_out1 = txn_send(p, dst, out1)
        position = consumer.position(consumer.assignment())
        want = {tp.partition: tp.offset for tp in position}
        ends = latest_offsets(bootstrap, src, 2, IsolationLevel.READ_UNCOMMITTED)
        assert want == ends, f"position {want} after consuming everything, log ends {ends}"
        p.send_offsets_to_transaction(position, consumer.consumer_group_metadata(), TXN_WAIT_S)
        p.commit_transaction(TXN_WAIT_S)

        def committed() -> dict:
            return {tp.partition: tp.offset for tp in consumer.committed(
                [TopicPartition(src, q) for q in (0, 1)], timeout=WAIT_S)}
        eventually("group offsets committed by the transaction", lambda: committed() == want, 10)
        assert committed() == want

        # Round 2: more input, processed and sent with the new position, then aborted.
        ck_produce(bootstrap, src, [Record(None, f"again-{i}".encode()) for i in range(3)], partition=0)
        ck_produce(bootstrap, src, [Record(None, f"again-{i}".encode()) for i in range(3)], partition=1)
        round2 = consume(6)
        p.begin_transaction()
        txn_send(p, dst, transform(round2))
        position2 = consumer.position(consumer.assignment())
        assert {tp.partition: tp.offset for tp in position2} == {q: want[q] + 3 for q in (0, 1)}
        p.send_offsets_to_transaction(position2, consumer.consumer_group_metadata(), TXN_WAIT_S)
        p.abort_transaction(TXN_WAIT_S)
        time.sleep(QUIET_S)
        assert committed() == want, "an aborted transaction's offsets became the group's"

        expected_out = expected_by_partition(out1, pos_out1)
        assert ck_read(bootstrap, dst, 2, READ_COMMITTED, total1) == expected_out
        assert sum(len(v) for v in ck_read(bootstrap, dst, 2, READ_UNCOMMITTED, total1 + 6).values()) == total1 + 6
    finally:
        drop_producer(p)
        consumer.close()


def test_zombie_producer_is_fenced_by_a_new_producer_with_the_same_id(broker, topic_name):
    """Producer A opens a transaction (5 records, flushed); producer B inits with
    the same transactional.id, which aborts A's transaction and fences A: A's next
    produce and its commit fail with a fenced error. read_committed sees only
    B's committed records; read_uncommitted also sees A's 5 (aborted), never the
    record A tried after it was fenced."""
    ck_create_topic(broker.bootstrap, topic_name, 1)
    txn_id = f"{topic_name}-txn"
    a = txn_producer(broker.bootstrap, txn_id)
    b = None
    try:
        a.init_transactions(TXN_WAIT_S)
        a.begin_transaction()
        sent_a = items("zombie", 5)
        pos_a = txn_send(a, topic_name, sent_a)
        assert [o for _, o in pos_a] == list(range(5))

        b = txn_producer(broker.bootstrap, txn_id)
        b.init_transactions(TXN_WAIT_S)  # aborts A's open transaction: marker at 5

        late = txn_send(a, topic_name, [(0, b"late", b"zombie-after-fence")], check=False)
        assert late[0][0] is not None, f"a fenced producer's record was acknowledged at {late[0]}"
        with pytest.raises(KafkaException) as raised:
            a.commit_transaction(TXN_WAIT_S)
        err = kafka_err(raised.value)
        assert err.code() in FENCED_CODES or (err.fatal() and "fenc" in err.str().lower()), (
            f"A's commit after B's init: {describe(err)}")
        assert not err.retriable() and (err.fatal() or err.code() in FENCED_CODES), describe(err)

        b.begin_transaction()
        sent_b = items("fencer", 3)
        pos_b = txn_send(b, topic_name, sent_b)
        assert all(o >= 6 for _, o in pos_b), f"B wrote before A's abort marker (offset 5): {pos_b}"
        b.commit_transaction(TXN_WAIT_S)
    finally:
        drop_producer(a)
        drop_producer(b)
    expected_b = expected_by_partition(sent_b, pos_b)
    assert ck_read(broker.bootstrap, topic_name, 1, READ_COMMITTED, 3) == expected_b
    assert ck_read(broker.bootstrap, topic_name, 1, READ_UNCOMMITTED, 8) == merge(
        expected_by_partition(sent_a, pos_a), expected_b)


def test_coordinator_aborts_a_transaction_past_its_timeout(broker, topic_name):
    """transaction.timeout.ms=2000: a transaction that produced 5 records (0-4)
    and then sits idle is aborted by the coordinator (marker at 5, LSO = high
    watermark = 6) within the bound; read_committed never delivers its records
    but does deliver a plain record written after it; the producer's commit fails."""
    ck_create_topic(broker.bootstrap, topic_name, 1)
    p = txn_producer(broker.bootstrap, f"{topic_name}-txn", **{"transaction.timeout.ms": 2000})
    try:
        p.init_transactions(TXN_WAIT_S)
        p.begin_transaction()
        sent = items("timed-out", 5)
        pos = txn_send(p, topic_name, sent)
        assert [o for _, o in pos] == list(range(5))
        assert latest_offsets(broker.bootstrap, topic_name, 1, IsolationLevel.READ_COMMITTED) == {0: 0}

        # The producer does nothing: only the coordinator can end the transaction.
        settled_offsets(broker.bootstrap, topic_name, 1, {0: 6}, timeout_s=TIMEOUT_ABORT_S)
        plain = ck_produce(broker.bootstrap, topic_name, [Record(b"plain", b"after-timeout")], partition=0)
        assert plain[0].offset == 6

        assert ck_read(broker.bootstrap, topic_name, 1, READ_COMMITTED, 1) == {0: [(6, b"after-timeout")]}
        assert ck_read(broker.bootstrap, topic_name, 1, READ_UNCOMMITTED, 6) == merge(
            expected_by_partition(sent, pos), {0: [(6, b"after-timeout")]})

        with pytest.raises(KafkaException) as raised:
            p.commit_transaction(TXN_WAIT_S)
        print(f"commit after the coordinator's abort: {describe(kafka_err(raised.value))}")
    finally:
        drop_producer(p)
    assert ck_read(broker.bootstrap, topic_name, 1, READ_COMMITTED, 1) == {0: [(6, b"after-timeout")]}


def test_transaction_timeout_above_the_broker_max_is_refused(broker, topic_name):
    """transaction.timeout.ms above transaction.max.timeout.ms (900000): InitProducerId
    answers INVALID_TRANSACTION_TIMEOUT and init_transactions raises it."""
    p = txn_producer(broker.bootstrap, f"{topic_name}-txn",
                     **{"transaction.timeout.ms": TRANSACTION_MAX_TIMEOUT_MS + 1})
    try:
        with pytest.raises(KafkaException) as raised:
            p.init_transactions(TXN_WAIT_S)
        err = kafka_err(raised.value)
        assert err.code() == KafkaError.INVALID_TRANSACTION_TIMEOUT or "INVALID_TRANSACTION_TIMEOUT" in (
            err.name() + " " + err.str()).upper().replace(" ", "_"), describe(err)
    finally:
        drop_producer(p)


# ---------------------------------------------------------------- kafka-python


def test_kafka_python_commit_and_abort_read_committed(broker, topic_name):
    """kafka-python's transactional producer: commit 2x5, abort 2x3 (flushed),
    commit 2x2 on 2 partitions (offsets 0-4 | 5 | 6-8 | 9 | 10-11 | 12):
    KafkaConsumer(isolation_level='read_committed') and librdkafka's
    read_committed get the committed ones only; read_uncommitted gets all."""
    if not hasattr(kafka.KafkaProducer, "init_transactions"):
        pytest.skip(f"kafka-python {kafka.__version__} has no transactional producer")
    ck_create_topic(broker.bootstrap, topic_name, 2)
    p = kp_producer(broker.bootstrap, transactional_id=f"{topic_name}-txn", enable_idempotence=True)

    def send(prefix, n):
        sent = items(prefix, n, 2)
        futures = [p.send(topic_name, key=k, value=v, partition=q) for q, k, v in sent]
        p.flush(timeout=WAIT_S)
        return expected_by_partition(sent, [(f.get(timeout=WAIT_S).partition, f.get(timeout=WAIT_S).offset)
                                            for f in futures])
    try:
        p.init_transactions()
        p.begin_transaction()
        first = send("first", 10)
        p.commit_transaction()
        p.begin_transaction()
        aborted = send("aborted", 6)
        p.abort_transaction()
        p.begin_transaction()
        third = send("third", 4)
        p.commit_transaction()
    finally:
        p.close(timeout=10)
    for q in (0, 1):
        assert [o for o, _ in first[q]] == [0, 1, 2, 3, 4]
        assert [o for o, _ in aborted[q]] == [6, 7, 8]
        assert [o for o, _ in third[q]] == [10, 11]

    committed_e, all_e = merge(first, third), merge(first, aborted, third)
    assert kp_read(broker.bootstrap, topic_name, 2, READ_COMMITTED, 14) == committed_e
    assert kp_read(broker.bootstrap, topic_name, 2, READ_UNCOMMITTED, 20) == all_e
    assert ck_read(broker.bootstrap, topic_name, 2, READ_COMMITTED, 14) == committed_e
    settled_offsets(broker.bootstrap, topic_name, 2, {0: 13, 1: 13})


# ---------------------------------------------------------------- broker SIGKILL

# Runs in a child process that the test SIGKILLs: an application that committed
# one transaction with id X, then left a transaction of X and one of Z (timeout
# 5 s) open, flushed, when it died.
_CRASHING_APP = r"""
import json, sys, time
import confluent_kafka

bootstrap, topic, id_x, id_z = sys.argv[1:5]

def producer(tid, **extra):
    conf = {"bootstrap.servers": bootstrap, "transactional.id": tid, "acks": "all", "linger.ms": 5}
    conf.update(extra)
    return confluent_kafka.Producer(conf)

def send(p, values):
    reports = []
    for v in values:
        p.produce(topic, value=v.encode(), partition=0,
                  on_delivery=lambda err, msg: reports.append((str(err) if err else None, msg.offset())))
    assert p.flush(30) == 0, "undelivered"
    assert all(e is None for e, _ in reports), reports
    return [[o, v] for (_, o), v in zip(reports, values)]

x = producer(id_x)
x.init_transactions(30)
x.begin_transaction()
committed = send(x, ["committed-%d" % i for i in range(5)])
x.commit_transaction(30)
x.begin_transaction()
open_x = send(x, ["open-x-%d" % i for i in range(3)])
z = producer(id_z, **{"transaction.timeout.ms": 5000})
z.init_transactions(30)
z.begin_transaction()
open_z = send(z, ["open-z-%d" % i for i in range(2)])
print(json.dumps({"committed": committed, "open_x": open_x, "open_z": open_z}), flush=True)
time.sleep(600)
"""


def _run_crashing_app(tmp_path, bootstrap, topic, id_x, id_z) -> tuple[subprocess.Popen, dict]:
    err_path = tmp_path / "app.err"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", _CRASHING_APP, bootstrap, topic, id_x, id_z],
                                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent)
    deadline = time.monotonic() + 3 * TXN_WAIT_S
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready = select.select([proc.stdout], [], [], max(left, 0))[0] if left > 0 else []
        chunk = os.read(proc.stdout.fileno(), 4096) if ready else b""
        if not chunk:
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"the application did not report its transactions (exit {proc.returncode}):\n"
                                 f"{err_path.read_text(errors='replace')[-3000:]}")
        line += chunk
    return proc, json.loads(line)


def test_sigkill_with_transactions_open(broker, topic_name, tmp_path):
    """An application commits a transaction of X (offsets 0-4, marker 5), opens
    another of X (6-8) and one of Z with a 5 s timeout (9-10), and dies; the
    broker is SIGKILLed and restarted. The committed records are readable; a new
    producer with id X inits (aborting X's open transaction) and commits 4
    records; Z's is aborted by its timeout; read_committed then gets the 5 + 4
    committed records only, read_uncommitted all 14."""
    ck_create_topic(broker.bootstrap, topic_name, 1)
    id_x, id_z = f"{topic_name}-x", f"{topic_name}-z"
    app, report = _run_crashing_app(tmp_path, broker.bootstrap, topic_name, id_x, id_z)
    app.send_signal(signal.SIGKILL)
    app.wait(10)
    committed = {0: [(o, v.encode()) for o, v in report["committed"]]}
    open_x = {0: [(o, v.encode()) for o, v in report["open_x"]]}
    open_z = {0: [(o, v.encode()) for o, v in report["open_z"]]}
    assert [o for o, _ in committed[0]] == [0, 1, 2, 3, 4]
    assert [o for o, _ in open_x[0]] == [6, 7, 8]
    assert [o for o, _ in open_z[0]] == [9, 10]

    broker.restart_after_kill()

    lso = eventually("ListOffsets after the restart",
                     lambda: latest_offsets(broker.bootstrap, topic_name, 1, IsolationLevel.READ_COMMITTED))
    assert lso == {0: 6}, "after the restart, the LSO is the first offset of X's open transaction"
    assert ck_read(broker.bootstrap, topic_name, 1, READ_COMMITTED, 5) == committed

    x2 = txn_producer(broker.bootstrap, id_x)
    try:
        x2.init_transactions(TXN_WAIT_S)
        x2.begin_transaction()
        sent = items("after-restart", 4)
        pos = txn_send(x2, topic_name, sent)
        x2.commit_transaction(TXN_WAIT_S)
    finally:
        drop_producer(x2)
    after = expected_by_partition(sent, pos)
    assert all(o > 10 for o, _ in after[0]), f"written before the open transactions' records: {after}"

    # Z's transaction ends only by its timeout: then nothing is open.
    def nothing_open():
        lso, hw = both_latest(broker.bootstrap, topic_name, 1)
        return lso == hw
    eventually("no open transaction left (Z's aborted by its timeout)", nothing_open, TIMEOUT_ABORT_S)
    assert ck_read(broker.bootstrap, topic_name, 1, READ_COMMITTED, 9) == merge(committed, after)
    assert ck_read(broker.bootstrap, topic_name, 1, READ_UNCOMMITTED, 14) == merge(committed, open_x, open_z, after)


# ---------------------------------------------------------------- EOS pipeline under SIGKILL

PIPELINE_DEADLINE_S = 150


@pytest.mark.timeout(PIPELINE_DEADLINE_S + 60)
def test_exactly_once_pipeline_through_broker_sigkills(broker, topic_name):
    """2000 keyed input records in 3 partitions; a consume(read_committed) ->
    value + "!" -> transactional produce loop that sends its offsets in each
    transaction of up to 100 records, while another thread SIGKILLs and restarts
    the broker three times (after 400, 900 and 1400 records committed, plus a
    random 0-300 ms, so mid-transaction). The loop recovers as an EOS application
    does: abort on abortable errors, retry a commit on retriable ones, re-create
    producer and consumer (init_transactions, then the group's committed offsets)
    on anything else. At the end the output, read read_committed, holds each
    input's result exactly once, in input order per partition, and the group's
    committed offsets are the input's ends."""
    n, partitions, batch_max, kill_at = 2000, 3, 100, (400, 900, 1400)
    bootstrap = broker.bootstrap
    src, dst, group, txn_id = topic_name + "-in", topic_name + "-out", topic_name + "-group", topic_name + "-txn"
    ck_create_topic(bootstrap, src, partitions)
    ck_create_topic(bootstrap, dst, partitions)
    produced = ck_produce(bootstrap, src, [Record(f"key-{i % 41}".encode(), f"v{i}".encode()) for i in range(n)])
    expected = {q: [c.record.value + b"!" for c in sorted(produced, key=lambda c: c.offset) if c.partition == q]
                for q in range(partitions)}
    ends = {q: len(expected[q]) for q in range(partitions)}
    assert sum(ends.values()) == n

    seed = random.randrange(1 << 30)
    print(f"kill-delay seed {seed}")
    rng = random.Random(seed)
    progress = [0]  # input records covered by committed transactions
    kills: list[float] = []
    killer_errors: list[BaseException] = []
    stop = threading.Event()

    def killer():
        try:
            for threshold in kill_at:
                while progress[0] < threshold:
                    if stop.wait(0.01):
                        return
                time.sleep(rng.uniform(0, 0.3))
                broker.kill()
                kills.append(time.monotonic())
                time.sleep(0.3)
                broker.start_again()
            # The broker dies with the thread that started it (the harness
            # sets PR_SET_PDEATHSIG, which Linux ties to the forking thread):
            # this thread lives until the pipeline is done.
            stop.wait()
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            killer_errors.append(e)

    events: list[str] = []
    state = {"p": None, "c": None, "pos": None}

    def teardown():
        drop_producer(state["p"])
        if state["c"] is not None:
            try:
                state["c"].close()
            except Exception:  # noqa: BLE001
                pass
        state.update(p=None, c=None, pos=None)

    def assign_from_committed():
        c = state["c"]
        tps = c.committed([TopicPartition(src, q) for q in range(partitions)], timeout=TXN_WAIT_S)
        pos = {tp.partition: max(tp.offset, 0) for tp in tps}
        c.assign([TopicPartition(src, q, pos[q]) for q in range(partitions)])
        state["pos"] = pos

    def start():
        # With every broker down (one node, SIGKILLed), librdkafka >= 2.10
        # re-bootstraps and decommissions the broker it knew; if that broker was
        # the cached group coordinator, send_offsets_to_transaction() then hangs
        # past its timeout (librdkafka issues #5511 and #5456, open). Kafka
        # would meet the same client bug; the pipeline keeps its known brokers.
        p = txn_producer(bootstrap, txn_id, **{"transaction.timeout.ms": 20000,
                                               "metadata.recovery.strategy": "none"})
        state["p"] = p
        p.init_transactions(TXN_WAIT_S)  # fences the last instance; waits for its commit or abort to finish
        state["c"] = ck_consumer(bootstrap, **{"group.id": group, "isolation.level": READ_COMMITTED})
        assign_from_committed()

    def commit(p):
        deadline = time.monotonic() + 2 * TXN_WAIT_S
        while True:
            try:
                p.commit_transaction(TXN_WAIT_S)
                return
            except KafkaException as e:
                if not kafka_err(e).retriable() or time.monotonic() > deadline:
                    raise
                events.append(f"commit retried: {describe(kafka_err(e))}")

    thread = threading.Thread(target=killer, name="broker-killer", daemon=True)
    thread.start()
    deadline = time.monotonic() + PIPELINE_DEADLINE_S
    try:
        while True:
            assert time.monotonic() < deadline, (
                f"pipeline not done within {PIPELINE_DEADLINE_S}s: {progress[0]}/{n} committed, "
                f"{len(kills)} kills, last events {events[-10:]}")
            assert not killer_errors, f"restarting the broker failed: {killer_errors[0]!r}"
            try:
                if state["p"] is None:
                    start()
                pos = state["pos"]
                if pos == ends:
                    break
                p, c = state["p"], state["c"]
                p.begin_transaction()
                batch = []
                batch_deadline = time.monotonic() + 1.0
                while len(batch) < batch_max and time.monotonic() < batch_deadline:
                    msg = c.poll(0.05)
                    if msg is None:
                        continue
                    if msg.error():
                        if msg.error().fatal():
                            raise KafkaException(msg.error())
                        continue
                    batch.append(msg)
                new_pos = dict(pos)
                for m in batch:
                    q = m.partition()
                    # The input has no control records: each partition reads gap-free.
                    assert m.offset() == new_pos[q], f"input {q}: read offset {m.offset()}, expected {new_pos[q]}"
                    new_pos[q] = m.offset() + 1
                    while True:
                        try:
                            p.produce(dst, key=m.key(), value=m.value() + b"!", partition=q)
                            break
                        except BufferError:
                            p.poll(0.1)
                if batch:
                    p.send_offsets_to_transaction([TopicPartition(src, q, o) for q, o in new_pos.items()],
                                                  c.consumer_group_metadata(), TXN_WAIT_S)
                commit(p)
                state["pos"] = new_pos
                progress[0] = sum(new_pos.values())
            except KafkaException as e:
                err = kafka_err(e)
                # No new producer gets past these: an EOS application stops.
                assert err.code() not in UNRECOVERABLE, f"unrecoverable: {describe(err)}; before: {events[-5:]}"
                if err.txn_requires_abort() and state["p"] is not None:
                    events.append(f"abort: {describe(err)}")
                    try:
                        state["p"].abort_transaction(TXN_WAIT_S)
                        assign_from_committed()  # rewind to what the group committed
                        continue
                    except KafkaException as e2:
                        events.append(f"abort failed: {describe(kafka_err(e2))}")
                events.append(f"re-create: {describe(err)}")
                teardown()
                time.sleep(0.2)
    finally:
        stop.set()
        thread.join(60)
        teardown()
    assert not thread.is_alive(), "the broker-killer thread did not finish"
    assert not killer_errors, f"restarting the broker failed: {killer_errors[0]!r}"
    print(f"{len(kills)} kills; {len(events)} recoveries: {events[:20]}")
    assert len(kills) == len(kill_at), f"only {len(kills)} of {len(kill_at)} kills happened before the end"
    # The broker the killer thread started died with that thread: start it
    # again from this one (one more unclean stop) to read the output.
    broker.kill()
    broker.start_again()

    got = ck_read(bootstrap, dst, partitions, READ_COMMITTED, n, timeout_s=60, quiet_s=2.0)
    for q in range(partitions):
        values = [v for _, v in got.get(q, [])]
        missing = len(set(expected[q]) - set(values))
        dup = len(values) - len(set(values))
        assert values == expected[q], (
            f"output partition {q}: {len(values)} records for {len(expected[q])} inputs, {missing} missing, "
            f"{dup} duplicated; first difference at "
            f"{next((i for i, (a, b) in enumerate(zip(values, expected[q])) if a != b), min(len(values), len(expected[q])))}")
    c = ck_consumer(bootstrap, **{"group.id": group, "isolation.level": READ_COMMITTED})
    try:
        tps = c.committed([TopicPartition(src, q) for q in range(partitions)], timeout=TXN_WAIT_S)
        assert {tp.partition: tp.offset for tp in tps} == ends
    finally:
        c.close()


# ---------------------------------------------------------------- 3-node cluster


def _java_string_hash(s: str) -> int:
    data, h = s.encode("utf-16-be"), 0
    for i in range(0, len(data), 2):  # Java hashes UTF-16 code units
        h = (31 * h + (data[i] << 8 | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def _kafka_abs(n: int) -> int:
    return 0 if n == -(1 << 31) else abs(n)


def _transaction_coordinator(bootstrap: str, txn_id: str) -> tuple[int, str]:
    """The node coordinating `txn_id`: FindCoordinator(key type TRANSACTION) through
    kafka-python's admin client when it has that call, else the leader of
    __transaction_state partition abs(hashCode(id)) % partition count."""
    try:
        from kafka.protocol.metadata import CoordinatorType
    except ImportError:
        CoordinatorType = None
    admin = kp_admin(bootstrap)
    try:
        # kafka-python has no public call for this; use its own when it is there.
        find = getattr(admin, "_find_coordinator_id", None)
        manager = getattr(admin, "_manager", None)
        if CoordinatorType is not None and find is not None and hasattr(manager, "run"):
            return manager.run(find, txn_id, CoordinatorType.TRANSACTION), "FindCoordinator"
    finally:
        admin.close()
    md = ck_admin(bootstrap).list_topics("__transaction_state", timeout=WAIT_S).topics.get("__transaction_state")
    assert md is not None and md.error is None and md.partitions, f"no metadata for __transaction_state: {md}"
    count = len(md.partitions) or TRANSACTION_STATE_PARTITIONS
    partition = _kafka_abs(_java_string_hash(txn_id)) % count
    return md.partitions[partition].leader, f"leader of __transaction_state-{partition}"


@pytest.mark.timeout(300)
def test_cluster_transactions_survive_the_coordinators_death(cluster):  # noqa: F811
    """3 nodes, a topic with RF 3 and min.insync.replicas 2: commit 2x5 and abort
    2x2 read back right by read_committed and read_uncommitted; a third
    transaction (2x3) is open when the transaction coordinator's node is
    SIGKILLed; the same producer then commits it through the new coordinator; a
    new producer with the same id inits and commits 2x4. read_committed then holds
    the three committed transactions, in order, and nothing of the aborted one."""
    bootstrap, topic, txn_id = cluster.bootstrap, "txn-failover", "cluster-txn"
    admin = ck_admin(bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=3,
                                  config={"min.insync.replicas": "2"})])[topic].result(timeout=WAIT_S)
    a = txn_producer(bootstrap, txn_id, **{"retry.backoff.ms": 200})
    b = None
    try:
        a.init_transactions(TXN_WAIT_S)
        a.begin_transaction()
        s1 = items("first", 10, 2)
        t1 = expected_by_partition(s1, txn_send(a, topic, s1))
        a.commit_transaction(TXN_WAIT_S)
        a.begin_transaction()
        s2 = items("aborted", 4, 2)
        t2 = expected_by_partition(s2, txn_send(a, topic, s2))
        a.abort_transaction(TXN_WAIT_S)
        assert ck_read(bootstrap, topic, 2, READ_COMMITTED, 10) == t1
        assert ck_read(bootstrap, topic, 2, READ_UNCOMMITTED, 14) == merge(t1, t2)

        coordinator, how = _transaction_coordinator(bootstrap, txn_id)
        print(f"transaction coordinator of {txn_id}: node {coordinator} ({how})")
        assert coordinator in (1, 2, 3), f"coordinator {coordinator} ({how})"
        a.begin_transaction()
        s3 = items("across-failover", 6, 2)
        t3 = expected_by_partition(s3, txn_send(a, topic, s3))
        pid = subprocess.run(["pgrep", "-f", "--", f"--data-dir {cluster.dir}/node-{coordinator}( |$)"],
                             capture_output=True, text=True).stdout.split()
        assert len(pid) == 1, f"the coordinator's process: {pid}"
        os.kill(int(pid[0]), signal.SIGKILL)

        deadline = time.monotonic() + 90
        while True:
            try:
                a.commit_transaction(TXN_WAIT_S)
                break
            except KafkaException as e:
                err = kafka_err(e)
                assert err.retriable() and time.monotonic() < deadline, (
                    f"commit across the coordinator's death: {describe(err)}")

        b = txn_producer(bootstrap, txn_id, **{"retry.backoff.ms": 200})
        b.init_transactions(60)
        b.begin_transaction()
        s4 = items("new-producer", 8, 2)
        t4 = expected_by_partition(s4, txn_send(b, topic, s4))
        b.commit_transaction(TXN_WAIT_S)
    finally:
        drop_producer(a)
        drop_producer(b)
    assert ck_read(bootstrap, topic, 2, READ_COMMITTED, 24, timeout_s=60) == merge(t1, t3, t4)
    assert ck_read(bootstrap, topic, 2, READ_UNCOMMITTED, 28, timeout_s=60) == merge(t1, t2, t3, t4)
