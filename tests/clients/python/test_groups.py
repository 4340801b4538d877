"""Consumer groups through confluent-kafka (librdkafka) and kafka-python: partitions
shared and moved between members (join, clean leave, SIGKILL), manual commits that
survive broker restarts and rebalances, the group admin APIs, the errors a client
can provoke, and each client's assignors.

Every member runs in its own thread (or, to be killed, in its own process), polls
in a loop, commits synchronously after each batch it processed, and publishes its
assignment after every poll. Tests compare three views: what each member says it
owns, what the broker says (DescribeGroups), and which records were consumed.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter

import confluent_kafka
import kafka
import kafka.errors
import pytest
from confluent_kafka import ConsumerGroupState, KafkaError, KafkaException
from confluent_kafka import TopicPartition as CkTopicPartition
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from kafka.structs import OffsetAndMetadata
from kafka.structs import TopicPartition as KpTopicPartition

from clients import (
    WAIT_S, Record, ck_admin, ck_consumer, ck_create_topic, ck_produce, ck_producer, kp_admin, kp_consumer,
)
from rill_broker import _die_with_parent

LIBS = ["confluent", "kafka-python"]

# Short enough that a killed member's partitions move within a test's budget, and
# inside the group broker's [1 s, 30 min] session timeout range.
SESSION_TIMEOUT_MS = 6000
# Long: a test that must see a clean LeaveGroup act cannot pass by waiting it out.
SESSION_TIMEOUT_LONG_MS = 30000
HEARTBEAT_INTERVAL_MS = 500
# Records a member takes from one poll (and then commits).
BATCH_MAX = 20
# How long a group may take to settle after a join or a leave.
SETTLE_S = 30.0
# How long a member's thread may take to close its client (LeaveGroup included).
CLOSE_S = 30.0

# Kafka error codes the tests expect.
UNKNOWN_TOPIC_OR_PARTITION = 3
OFFSET_METADATA_TOO_LARGE = 12
COORDINATOR_LOAD_IN_PROGRESS = 14
COORDINATOR_NOT_AVAILABLE = 15
NOT_COORDINATOR = 16
ILLEGAL_GENERATION = 22
UNKNOWN_MEMBER_ID = 25
NON_EMPTY_GROUP = 68
GROUP_ID_NOT_FOUND = 69
FENCED_INSTANCE_ID = 82
GROUP_SUBSCRIBED_TO_TOPIC = 86
# Answers a client is told to retry (a coordinator loading or not chosen yet).
COORDINATOR_RETRY_CODES = {COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR}

_CK_STATE_NAMES = {
    ConsumerGroupState.STABLE: "Stable",
    ConsumerGroupState.EMPTY: "Empty",
    ConsumerGroupState.PREPARING_REBALANCING: "PreparingRebalance",
    ConsumerGroupState.COMPLETING_REBALANCING: "CompletingRebalance",
    ConsumerGroupState.DEAD: "Dead",
    ConsumerGroupState.UNKNOWN: "Unknown",
}


def partitions_of(topic: str, count: int) -> frozenset:
    return frozenset((topic, p) for p in range(count))


# ---------------------------------------------------------------- one member's client


class CommitError(Exception):
    """A commit that failed, with the Kafka error code of each failed partition
    (or of the whole request, under the key None)."""

    def __init__(self, codes: dict, detail: str):
        super().__init__(f"commit failed: {codes} ({detail})")
        self.codes = codes


class _CkClient:
    """A confluent-kafka consumer subscribed to `topics`."""

    def __init__(self, member, bootstrap, group, topics, config):
        conf = {"group.id": group, "client.id": member.name, "session.timeout.ms": SESSION_TIMEOUT_MS,
                "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS}
        conf.update(config)
        self.c = ck_consumer(bootstrap, **conf)

        def on_revoke(consumer, partitions):
            member.revocations.append(frozenset((tp.topic, tp.partition) for tp in partitions))

        self.c.subscribe(list(topics), on_revoke=on_revoke, on_lost=on_revoke)

    def poll(self, max_records: int) -> list[tuple[str, int, int]]:
        out = []
        for msg in self.c.consume(num_messages=max_records, timeout=0.2):
            if msg.error():
                if msg.error().retriable() or msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(msg.error())
            out.append((msg.topic(), msg.partition(), msg.offset()))
        return out

    def assignment(self) -> frozenset:
        return frozenset((tp.topic, tp.partition) for tp in self.c.assignment())

    def commit(self, offsets: dict) -> None:
        """Commit {(topic, partition): offset or (offset, metadata)} synchronously."""
        tps = []
        for (topic, partition), value in offsets.items():
            offset, metadata = value if isinstance(value, tuple) else (value, None)
            tps.append(CkTopicPartition(topic, partition, offset) if metadata is None
                       else CkTopicPartition(topic, partition, offset, metadata))
        try:
            result = self.c.commit(offsets=tps, asynchronous=False)
        except KafkaException as e:
            raise CommitError({None: e.args[0].code()}, str(e)) from None
        failed = {(tp.topic, tp.partition): tp.error.code() for tp in result or [] if tp.error is not None}
        if failed:
            raise CommitError(failed, "partition errors")

    def pause(self, partitions) -> None:
        self.c.pause([CkTopicPartition(t, p) for t, p in partitions])

    def resume(self, partitions) -> None:
        self.c.resume([CkTopicPartition(t, p) for t, p in partitions])

    def seek(self, topic, partition, offset) -> None:
        self.c.seek(CkTopicPartition(topic, partition, offset))

    def close(self) -> None:
        self.c.close()


class _KpListener(kafka.ConsumerRebalanceListener):
    def __init__(self, member):
        self.member = member

    def on_partitions_revoked(self, revoked):
        self.member.revocations.append(frozenset((tp.topic, tp.partition) for tp in revoked))

    def on_partitions_assigned(self, assigned):
        pass


class _KpClient:
    """A kafka-python consumer subscribed to `topics`."""

    def __init__(self, member, bootstrap, group, topics, config):
        conf = dict(group_id=group, client_id=member.name, session_timeout_ms=SESSION_TIMEOUT_MS,
                    heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS)
        conf.update(config)
        self.c = kp_consumer(bootstrap, **conf)
        self.c.subscribe(topics=list(topics), listener=_KpListener(member))

    def poll(self, max_records: int) -> list[tuple[str, int, int]]:
        batches = self.c.poll(timeout_ms=200, max_records=max_records)
        return [(tp.topic, tp.partition, m.offset) for tp, msgs in batches.items() for m in msgs]

    def assignment(self) -> frozenset:
        return frozenset((tp.topic, tp.partition) for tp in self.c.assignment())

    def commit(self, offsets: dict) -> None:
        commit = {}
        for (topic, partition), value in offsets.items():
            offset, metadata = value if isinstance(value, tuple) else (value, "")
            commit[KpTopicPartition(topic, partition)] = OffsetAndMetadata(offset, metadata, -1)
        try:
            self.c.commit(commit, timeout_ms=int(WAIT_S * 1000))
        except kafka.errors.KafkaError as e:
            raise CommitError({None: getattr(e, "errno", None)}, repr(e)) from None

    def pause(self, partitions) -> None:
        self.c.pause(*[KpTopicPartition(t, p) for t, p in partitions])

    def resume(self, partitions) -> None:
        self.c.resume(*[KpTopicPartition(t, p) for t, p in partitions])

    def seek(self, topic, partition, offset) -> None:
        self.c.seek(KpTopicPartition(topic, partition), offset)

    def close(self) -> None:
        self.c.close()


class Member:
    """One group member: a consumer driven by its own thread.

    The thread polls, commits each batch it took (synchronously, offset of the last
    record + 1 per partition) and publishes `assignment` after each poll. With a
    `limit`, it takes no more than `limit` records in all: past it, it pauses its
    partitions and rewinds any record it was handed anyway. `call(fn)` runs
    fn(client) in the member's thread between two polls."""

    def __init__(self, lib, bootstrap, group, topics, name, limit=None, **config):
        self.lib, self.name, self.group = lib, name, group
        self.limit = limit
        self.consumed: list[tuple[str, int, int]] = []  # (topic, partition, offset), in processing order
        self.commit_failures: list[tuple[list, str]] = []  # (records of the batch, why)
        self.revocations: list[frozenset] = []
        self.assignment: frozenset | None = None
        self.failure: str | None = None
        self.stopped = False  # closed on purpose: the checks of running members skip it
        self._args = (bootstrap, group, list(topics), config)
        self._calls: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"member-{name}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def call(self, fn, timeout_s: float = WAIT_S):
        """fn(client) run by the member's thread; its result, or its exception raised here."""
        assert self.alive, f"member {self.name} is not running: {self.failure}"
        future = concurrent.futures.Future()
        self._calls.put((fn, future))
        return future.result(timeout=timeout_s)

    def close(self, timeout_s: float = CLOSE_S) -> None:
        """Stop polling and close the client (a clean LeaveGroup); wait for the thread."""
        self.stopped = True
        self._stop.set()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"member {self.name} did not close within {timeout_s}s"
        assert self.failure is None, f"member {self.name} failed:\n{self.failure}"

    def _run(self) -> None:
        client = None
        try:
            bootstrap, group, topics, config = self._args
            make = _CkClient if self.lib == "confluent" else _KpClient
            client = make(self, bootstrap, group, topics, config)
            paused = False
            while not self._stop.is_set():
                self._serve_calls(client)
                holding = self.limit is not None and len(self.consumed) >= self.limit
                owned = client.assignment()
                if holding and owned:
                    client.pause(owned)
                    paused = True
                elif not holding and paused:
                    client.resume(owned)
                    paused = False
                room = BATCH_MAX if self.limit is None else max(1, min(BATCH_MAX, self.limit - len(self.consumed)))
                batch = client.poll(room)
                # Rebalances happen inside poll: publish what it left us with.
                self.assignment = client.assignment()
                if batch:
                    self._process(client, batch)
        except BaseException:
            self.failure = traceback.format_exc()
        finally:
            self._fail_calls()
            if client is not None:
                try:
                    client.close()
                except BaseException:
                    self.failure = self.failure or traceback.format_exc()

    def _process(self, client, batch) -> None:
        keep = batch if self.limit is None else batch[:max(0, self.limit - len(self.consumed))]
        rewind = {}
        for topic, partition, offset in batch[len(keep):]:
            rewind.setdefault((topic, partition), offset)
        for (topic, partition), offset in rewind.items():
            client.seek(topic, partition, offset)
        if not keep:
            return
        offsets = {}
        for topic, partition, offset in keep:
            offsets[(topic, partition)] = offset + 1
        try:
            client.commit(offsets)
        except CommitError as e:
            self.commit_failures.append((keep, str(e)))
        self.consumed.extend(keep)

    def _serve_calls(self, client) -> None:
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(fn(client))
            except BaseException as e:
                future.set_exception(e)

    def _fail_calls(self) -> None:
        while True:
            try:
                _, future = self._calls.get_nowait()
            except queue.Empty:
                return
            future.set_exception(RuntimeError(f"member {self.name} stopped"))


class ChildMember:
    """A Member in a child process (so that it can be killed with SIGKILL). The child
    reports its assignment and each committed batch on stdout; this mirrors them."""

    def __init__(self, lib, bootstrap, group, topics, name, **config):
        self.lib, self.name, self.group = lib, name, group
        self.consumed: list[tuple[str, int, int]] = []
        self.commit_failures: list = []
        self.assignment: frozenset | None = None
        self.failure: str | None = None
        self.stopped = False
        spec = json.dumps(dict(lib=lib, bootstrap=bootstrap, group=group, topics=list(topics), name=name,
                               config=config))
        # The child's stderr goes to a file (a pipe nobody reads could fill and stall it).
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--member", spec],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr,
                                     preexec_fn=_die_with_parent, text=True)
        self._reader = threading.Thread(target=self._read, name=f"child-{name}", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _read(self) -> None:
        for line in self.proc.stdout:
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            if "assignment" in event:
                self.assignment = frozenset((t, p) for t, p in event["assignment"])
            if "consumed" in event:
                self.consumed.extend((t, p, o) for t, p, o in event["consumed"])
            if "commit_failure" in event:
                self.commit_failures.append(event["commit_failure"])
            if "failure" in event:
                self.failure = event["failure"]
        if not self.stopped and self.failure is None:
            self._stderr.seek(0)
            tail = self._stderr.read().decode(errors="replace")[-3000:]
            self.failure = f"child process exited with {self.proc.wait(10)}; stderr:\n{tail}"

    def kill(self) -> None:
        self.stopped = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reader.join(10)

    def close(self) -> None:
        if self.alive:
            self.kill()
        self._stderr.close()


def _child_main(spec_json: str) -> None:
    """The child process of a ChildMember: run a Member, report on stdout until killed."""
    spec = json.loads(spec_json)
    m = Member(spec["lib"], spec["bootstrap"], spec["group"], spec["topics"], spec["name"], **spec["config"])
    reported_assignment, reported_consumed, reported_failures = None, 0, 0

    def emit(event):
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    while True:
        if m.assignment != reported_assignment:
            reported_assignment = m.assignment
            emit({"assignment": sorted(reported_assignment)})
        # `consumed` grows after each batch's commit: report only what was committed.
        consumed = m.consumed[reported_consumed:]
        if consumed:
            reported_consumed += len(consumed)
            emit({"consumed": consumed})
        while reported_failures < len(m.commit_failures):
            emit({"commit_failure": m.commit_failures[reported_failures][1]})
            reported_failures += 1
        if not m.alive:
            emit({"failure": m.failure or "member thread stopped"})
            return
        time.sleep(0.05)


@pytest.fixture
def members():
    """start(lib, bootstrap, group, topics, name, ...) → a running Member, closed at teardown."""
    started = []

    def start(*args, **kwargs):
        m = Member(*args, **kwargs)
        started.append(m)
        return m

    yield start
    for m in started:
        m._stop.set()
    for m in started:
        m._thread.join(CLOSE_S)


# ---------------------------------------------------------------- the broker's view (admin APIs)


def _error_code(exc: BaseException) -> int | None:
    if isinstance(exc, KafkaException):
        return exc.args[0].code()
    return getattr(exc, "errno", None)


def retrying(fn, what: str, timeout_s: float = WAIT_S):
    """fn(), again while the coordinator answers that it is loading or elsewhere."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except (KafkaException, kafka.errors.KafkaError) as e:
            if _error_code(e) not in COORDINATOR_RETRY_CODES or time.monotonic() > deadline:
                raise AssertionError(f"{what}: {e!r}") from e
        time.sleep(0.2)


class GroupAdmin:
    """Groups as the broker describes them, through one client library's admin API."""

    def __init__(self, lib: str, bootstrap: str):
        self.lib = lib
        self.ck = ck_admin(bootstrap) if lib == "confluent" else None
        self.kp = kp_admin(bootstrap) if lib == "kafka-python" else None

    def close(self) -> None:
        if self.kp is not None:
            self.kp.close()

    def describe(self, group: str) -> dict:
        """{'state', 'protocol', 'members': {client_id: frozenset((topic, partition))},
        'member_ids': {client_id: member_id}}."""
        return retrying(lambda: self._describe(group), f"describe group {group}")

    def _describe(self, group):
        if self.ck is not None:
            d = self.ck.describe_consumer_groups([group], request_timeout=WAIT_S)[group].result(timeout=WAIT_S)
            return dict(
                state=_CK_STATE_NAMES[d.state], protocol=d.partition_assignor,
                members={m.client_id: frozenset((tp.topic, tp.partition) for tp in m.assignment.topic_partitions)
                         for m in d.members},
                member_ids={m.client_id: m.member_id for m in d.members})
        d = self.kp.describe_groups([group])[group]
        assert d["error"] is None, f"DescribeGroups {group}: {d['error']}"
        members, member_ids = {}, {}
        for m in d["members"]:
            assignment = m["member_assignment"]
            owned = frozenset()
            if assignment:
                owned = frozenset((t["topic"], p) for t in assignment["assigned_partitions"] for p in t["partitions"])
            members[m["client_id"]] = owned
            member_ids[m["client_id"]] = m["member_id"]
        return dict(state=d["group_state"], protocol=d["protocol_data"], members=members, member_ids=member_ids)

    def list_groups(self, states: list[str] | None = None) -> dict:
        """{group_id: state} of the groups ListGroups names (in `states` only, if given)."""
        return retrying(lambda: self._list_groups(states), "list groups")

    def _list_groups(self, states):
        if self.ck is not None:
            by_name = {v: k for k, v in _CK_STATE_NAMES.items()}
            kwargs = {"states": {by_name[s] for s in states}} if states else {}
            result = self.ck.list_consumer_groups(request_timeout=WAIT_S, **kwargs).result(timeout=WAIT_S)
            assert not result.errors, f"ListGroups errors: {result.errors}"
            return {g.group_id: _CK_STATE_NAMES[g.state] for g in result.valid}
        return {g["group_id"]: g.get("group_state") for g in self.kp.list_groups(states_filter=states)}

    def committed(self, group: str, partitions) -> dict:
        """{(topic, partition): committed offset, or None when there is none}."""
        return retrying(lambda: self._committed(group, sorted(partitions)), f"committed offsets of {group}")

    def _committed(self, group, partitions):
        if self.ck is not None:
            request = confluent_kafka.ConsumerGroupTopicPartitions(
                group, [CkTopicPartition(t, p) for t, p in partitions])
            result = self.ck.list_consumer_group_offsets([request], request_timeout=WAIT_S)[group].result(
                timeout=WAIT_S)
            out = {}
            for tp in result.topic_partitions:
                assert tp.error is None, f"OffsetFetch {group} {tp.topic}-{tp.partition}: {tp.error}"
                out[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
            return out
        result = self.kp.list_group_offsets({group: [KpTopicPartition(t, p) for t, p in partitions]})[group]
        out = {(tp.topic, tp.partition): (om.offset if om.offset >= 0 else None) for tp, om in result.items()}
        for tp in partitions:
            out.setdefault(tp, None)
        return out

    def delete_groups(self, groups: list[str]) -> dict:
        """{group: 0 or the Kafka error code DeleteGroups answered}."""
        if self.ck is not None:
            out = {}
            for group, future in self.ck.delete_consumer_groups(groups, request_timeout=WAIT_S).items():
                try:
                    future.result(timeout=WAIT_S)
                    out[group] = 0
                except KafkaException as e:
                    out[group] = _error_code(e)
            return out
        result = self.kp.delete_groups(groups)
        return {g: 0 if r == "OK" else getattr(kafka.errors, r).errno for g, r in result.items()}


def kp_delete_offsets(bootstrap: str, group: str, partitions) -> dict:
    """OffsetDelete through kafka-python (confluent-kafka's Python admin has no such call):
    {(topic, partition): 0 or the partition's error code}."""
    admin = kp_admin(bootstrap)
    try:
        result = retrying(lambda: admin.delete_group_offsets(group, [KpTopicPartition(t, p) for t, p in partitions]),
                          f"delete offsets of {group}")
        return {(tp.topic, tp.partition): err.errno for tp, err in result.items()}
    finally:
        admin.close()


# ---------------------------------------------------------------- waits and checks


def _check_members_running(members) -> None:
    for m in members:
        if m.stopped:
            continue
        assert m.failure is None, f"member {m.name} failed:\n{m.failure}"
        assert m.alive, f"member {m.name} stopped"


def wait_assignment(admin: GroupAdmin, group: str, members, partitions: frozenset,
                    timeout_s: float = SETTLE_S, why: str = "") -> dict:
    """Wait until `members` own `partitions` between them, each partition exactly once and
    every member at least one, and the broker describes the group as Stable with exactly
    these members owning exactly that. Returns {member name: its partitions}."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        _check_members_running(members)
        views = {m.name: m.assignment for m in members}
        owned = [tp for v in views.values() if v for tp in v]
        if (all(views.values()) and len(owned) == len(set(owned)) and set(owned) == partitions):
            described = admin.describe(group)
            last = (views, described)
            if described["state"] == "Stable" and described["members"] == views:
                return views
        else:
            last = (views, None)
        assert time.monotonic() < deadline, (
            f"group {group} did not settle within {timeout_s}s{why}: each of {len(partitions)} partitions "
            f"exactly once over {[m.name for m in members]}, Stable on the broker; last seen (members' "
            f"views, broker) = {last}")
        time.sleep(0.1)


def wait_consumed(members, expected: set, timeout_s: float = WAIT_S) -> dict:
    """Wait until `members` together consumed every record in `expected` ((topic,
    partition, offset)); then check that none was consumed twice and nothing else was
    consumed. Returns {record: name of the member that consumed it}."""
    deadline = time.monotonic() + timeout_s
    while True:
        _check_members_running(members)
        seen = {r for m in members for r in m.consumed}
        if seen >= expected:
            break
        assert time.monotonic() < deadline, (
            f"{len(expected - seen)} of {len(expected)} records not consumed within {timeout_s}s, "
            f"e.g. {sorted(expected - seen)[:5]}; assignments {[(m.name, m.assignment) for m in members]}")
        time.sleep(0.05)
    return assert_consumed_once(members, expected)


def assert_consumed_once(members, expected: set) -> dict:
    counts = Counter(r for m in members for r in m.consumed)
    twice = sorted(r for r, n in counts.items() if n > 1)
    assert not twice, f"{len(twice)} records consumed more than once by the group, e.g. {twice[:5]}"
    extra = sorted(set(counts) - expected)
    assert not extra, f"{len(extra)} records consumed that were not expected, e.g. {extra[:5]}"
    missing = sorted(expected - set(counts))
    assert not missing, f"{len(missing)} records never consumed, e.g. {missing[:5]}"
    return {r: m.name for m in members for r in m.consumed}


def assert_consumed_by_owners(consumer_of: dict, records: set, views: dict) -> None:
    """Each record was consumed by the member that owns its partition in `views`."""
    owner = {tp: name for name, owned in views.items() for tp in owned}
    wrong = sorted((r, consumer_of[r], owner[r[:2]]) for r in records if consumer_of[r] != owner[r[:2]])
    assert not wrong, f"records consumed by a member that does not own their partition: {wrong[:5]}"


def assert_no_commit_failures(members) -> None:
    for m in members:
        assert not m.commit_failures, f"member {m.name}: {len(m.commit_failures)} commits failed, first: " \
                                      f"{m.commit_failures[0][1]}"


def produce_to_each(bootstrap: str, topic: str, partitions: int, count: int, tag: str) -> set:
    """`count` records to each partition; returns their (topic, partition, offset)."""
    p = ck_producer(bootstrap)
    try:
        out = set()
        for partition in range(partitions):
            records = [Record(f"{tag}-{partition}".encode(), f"{tag}-{partition}-{i}".encode()) for i in range(count)]
            out |= {(topic, c.partition, c.offset)
                    for c in ck_produce(bootstrap, topic, records, producer=p, partition=partition)}
        return out
    finally:
        p.flush(WAIT_S)


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict:
    c = ck_consumer(bootstrap)
    try:
        return {(topic, p): c.get_watermark_offsets(CkTopicPartition(topic, p), timeout=WAIT_S, cached=False)[1]
                for p in range(partitions)}
    finally:
        c.close()


# ---------------------------------------------------------------- 1. join, join, leave


@pytest.mark.parametrize("lib", LIBS)
def test_members_share_partitions_and_move_them(group_broker, topic_name, members, lib):
    """Three members split six partitions; a fourth joins and all four own some; one
    leaves cleanly and the other three take its partitions. After each step, records
    produced to every partition are consumed exactly once, each by its partition's owner."""
    bootstrap = group_broker.bootstrap
    ck_create_topic(bootstrap, topic_name, 6)
    group, partitions = f"{topic_name}-group", partitions_of(topic_name, 6)
    admin = GroupAdmin(lib, bootstrap)
    # A long session timeout: the leave below must act through LeaveGroup, not expiry.
    config = ({"session.timeout.ms": SESSION_TIMEOUT_LONG_MS} if lib == "confluent"
              else {"session_timeout_ms": SESSION_TIMEOUT_LONG_MS})
    try:
        group_members = [members(lib, bootstrap, group, [topic_name], f"m{i}", **config) for i in range(3)]
        views = wait_assignment(admin, group, group_members, partitions)
        assert sorted(len(v) for v in views.values()) == [2, 2, 2], views
        produced = produce_to_each(bootstrap, topic_name, 6, 10, "three")
        assert_consumed_by_owners(wait_consumed(group_members, produced), produced, views)

        group_members.append(members(lib, bootstrap, group, [topic_name], "m3", **config))
        views = wait_assignment(admin, group, group_members, partitions, why=" after a fourth member joined")
        assert sorted(len(v) for v in views.values()) == [1, 1, 2, 2], views
        new = produce_to_each(bootstrap, topic_name, 6, 10, "four")
        produced |= new
        assert_consumed_by_owners(wait_consumed(group_members, produced), new, views)

        leaving = group_members[0]
        left_behind = views[leaving.name]
        leaving.close()
        rest = group_members[1:]
        views = wait_assignment(admin, group, rest, partitions, timeout_s=SESSION_TIMEOUT_LONG_MS / 2000,
                                why=f" after {leaving.name} left (LeaveGroup; the session timeout is "
                                    f"{SESSION_TIMEOUT_LONG_MS} ms)")
        assert left_behind <= frozenset().union(*views.values())
        new = produce_to_each(bootstrap, topic_name, 6, 10, "after-leave")
        produced |= new
        assert_consumed_by_owners(wait_consumed(group_members, produced), new, views)

        for m in rest:
            m.close()
        assert_consumed_once(group_members, produced)
        assert_no_commit_failures(group_members)
    finally:
        admin.close()


# ---------------------------------------------------------------- 2. SIGKILL of a member


@pytest.mark.parametrize("lib", LIBS)
def test_killed_member_partitions_move_after_session_timeout(group_broker, topic_name, members, lib):
    """A member in a child process is killed with SIGKILL: once its session times out,
    the two survivors own all partitions and consume what is produced to them, starting
    where the killed member committed."""
    bootstrap = group_broker.bootstrap
    ck_create_topic(bootstrap, topic_name, 6)
    group, partitions = f"{topic_name}-group", partitions_of(topic_name, 6)
    admin = GroupAdmin(lib, bootstrap)
    child = ChildMember(lib, bootstrap, group, [topic_name], "doomed")
    try:
        survivors = [members(lib, bootstrap, group, [topic_name], f"m{i}") for i in range(2)]
        everyone = survivors + [child]
        views = wait_assignment(admin, group, everyone, partitions)
        produced = produce_to_each(bootstrap, topic_name, 6, 10, "before")
        assert_consumed_by_owners(wait_consumed(everyone, produced), produced, views)
        orphaned = views[child.name]

        child.kill()
        killed_at = time.monotonic()
        views = wait_assignment(admin, group, survivors, partitions,
                                timeout_s=SESSION_TIMEOUT_MS / 1000 + SETTLE_S, why=" after the SIGKILL")
        print(f"{lib}: partitions of the killed member reassigned {time.monotonic() - killed_at:.1f}s after SIGKILL")
        assert orphaned <= frozenset().union(*views.values())

        new = produce_to_each(bootstrap, topic_name, 6, 10, "after")
        consumer_of = wait_consumed(everyone, produced | new)
        assert_consumed_by_owners(consumer_of, new, views)
        assert not any(consumer_of[r] == child.name for r in new)
        for m in survivors:
            m.close()
        assert_consumed_once(everyone, produced | new)
        assert_no_commit_failures(everyone)
    finally:
        child.close()
        admin.close()


# ---------------------------------------------------------------- static membership


@pytest.mark.parametrize("lib", LIBS)
def test_static_member_restarts_without_rebalance(group_broker, topic_name, members, lib):
    """A static member (group.instance.id) closes, which does not leave the group, and
    comes back within its session timeout: it gets its partitions back and resumes at
    its commits, while the other member keeps its own and sees no rebalance. A second
    consumer with the same instance id then fences the first (FENCED_INSTANCE_ID) and
    takes its place, again without a rebalance."""
    bootstrap = group_broker.bootstrap
    ck_create_topic(bootstrap, topic_name, 4)
    group, partitions = f"{topic_name}-group", partitions_of(topic_name, 4)
    if lib == "confluent":
        dynamic = {"session.timeout.ms": SESSION_TIMEOUT_LONG_MS}
        static = {**dynamic, "group.instance.id": "static-0"}
    else:
        dynamic = {"session_timeout_ms": SESSION_TIMEOUT_LONG_MS}
        static = {**dynamic, "group_instance_id": "static-0"}
    admin = GroupAdmin(lib, bootstrap)
    try:
        first = members(lib, bootstrap, group, [topic_name], "s0", **static)
        other = members(lib, bootstrap, group, [topic_name], "d1", **dynamic)
        views = wait_assignment(admin, group, [first, other], partitions)
        produced = produce_to_each(bootstrap, topic_name, 4, 10, "first")
        wait_consumed([first, other], produced)
        revocations = len(other.revocations)
        member_id = admin.describe(group)["member_ids"]["s0"]

        first.close()
        described = admin.describe(group)
        assert (described["state"], described["members"]) == ("Stable", views), (
            f"closing a static member changed the group: {described}")

        again = members(lib, bootstrap, group, [topic_name], "s0", **static)
        assert wait_assignment(admin, group, [again, other], partitions, why=" after s0 came back") == views
        assert admin.describe(group)["member_ids"]["s0"] != member_id, "the returning member kept its member id"
        new = produce_to_each(bootstrap, topic_name, 4, 10, "second")
        produced |= new
        consumer_of = wait_consumed([first, again, other], produced)
        assert_consumed_by_owners(consumer_of, new, views)

        third = members(lib, bootstrap, group, [topic_name], "s0", **static)
        assert wait_assignment(admin, group, [third, other], partitions, why=" after s0 was replaced") == views
        if lib == "confluent":
            # librdkafka raises the fencing as a fatal error, which ends the member.
            deadline = time.monotonic() + SETTLE_S
            while again.failure is None:
                assert time.monotonic() < deadline, "the replaced static member was not fenced"
                time.sleep(0.1)
            assert "fenced" in again.failure.lower(), again.failure
            again.stopped = True
        else:
            # kafka-python only logs a fenced heartbeat; the member's next commit is refused.
            committed = admin.committed(group, partitions)
            with pytest.raises(CommitError) as e:
                again.call(lambda client: client.commit({tp: 1 for tp in views["s0"]}))
            assert e.value.codes == {None: FENCED_INSTANCE_ID}, e.value
            assert admin.committed(group, partitions) == committed, "a fenced member's commit landed"
            again.close()
        assert len(other.revocations) == revocations, (
            f"the dynamic member saw a rebalance: {other.revocations[revocations:]}")
        new = produce_to_each(bootstrap, topic_name, 4, 10, "third")
        produced |= new
        wait_consumed([first, again, third, other], produced)
        for m in (third, other):
            m.close()
        assert_no_commit_failures([first, third, other])
    finally:
        admin.close()


# ---------------------------------------------------------------- 3. commits across restarts and rebalances


def assert_resumed_at_commits(first: set, second: set, committed: dict, produced: set) -> None:
    """The first phase consumed a prefix of each partition, up to the committed offset;
    the second started exactly there and read the rest: nothing twice, nothing skipped."""
    for tp, offset in committed.items():
        before = sorted(o for t, p, o in first if (t, p) == tp)
        assert before == list(range(offset or 0)), f"{tp}: first phase consumed {before}, committed {offset}"
        after = sorted(o for t, p, o in second if (t, p) == tp)
        if after:
            assert after[0] == (offset or 0), f"{tp}: resumed at {after[0]}, committed {offset}"
    again = sorted(first & second)
    assert not again, f"{len(again)} committed records consumed again, e.g. {again[:5]}"
    skipped = sorted(produced - first - second)
    assert not skipped, f"{len(skipped)} records skipped, e.g. {skipped[:5]}"
    assert (first | second) == produced


def wait_limits(members_, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(len(m.consumed) >= m.limit for m in members_):
        _check_members_running(members_)
        assert time.monotonic() < deadline, (
            f"members did not each consume their limit within {timeout_s}s: "
            f"{[(m.name, len(m.consumed), m.limit) for m in members_]}")
        time.sleep(0.05)


@pytest.mark.parametrize("restart", ["sigterm", "sigkill"])
@pytest.mark.parametrize("lib", LIBS)
def test_commits_survive_broker_restart(group_broker, topic_name, members, lib, restart):
    """Two members consume part of a topic, committing after each batch, and leave.
    The broker restarts (SIGTERM, or SIGKILL and start). The committed offsets are
    still there, and two new members of the group resume exactly at them."""
    bootstrap = group_broker.bootstrap
    ck_create_topic(bootstrap, topic_name, 4)
    group, partitions = f"{topic_name}-group", partitions_of(topic_name, 4)
    produced = produce_to_each(bootstrap, topic_name, 4, 50, "first")

    first_members = [members(lib, bootstrap, group, [topic_name], f"first{i}", limit=45) for i in range(2)]
    wait_limits(first_members)
    for m in first_members:
        m.close()
    first = {r for m in first_members for r in m.consumed}
    assert len(first) == 90, "the first members consumed something twice"
    assert_no_commit_failures(first_members)

    admin = GroupAdmin(lib, bootstrap)
    try:
        committed = admin.committed(group, partitions)
    finally:
        admin.close()
    assert sum(offset or 0 for offset in committed.values()) == 90, committed

    if restart == "sigterm":
        assert group_broker.restart() == 0, "SIGTERM shutdown did not exit 0"
    else:
        group_broker.kill()
        group_broker.start_again()

    admin = GroupAdmin(lib, bootstrap)
    try:
        assert admin.committed(group, partitions) == committed, f"committed offsets changed across the {restart} restart"
    finally:
        admin.close()
    produced |= produce_to_each(bootstrap, topic_name, 4, 10, "second")

    second_members = [members(lib, bootstrap, group, [topic_name], f"second{i}") for i in range(2)]
    wait_consumed(second_members, produced - first)
    for m in second_members:
        m.close()
    assert_no_commit_failures(second_members)
    second = {r for m in second_members for r in m.consumed}
    assert_resumed_at_commits(first, second, committed, produced)


@pytest.mark.parametrize("lib", LIBS)
def test_commits_hold_across_rebalance(group_broker, topic_name, members, lib):
    """A member consumes part of a topic and commits; a second member joins and takes
    some partitions, which it starts reading at the first member's commits. Together
    they read the rest: no record twice, none skipped."""
    bootstrap = group_broker.bootstrap
    ck_create_topic(bootstrap, topic_name, 4)
    group, partitions = f"{topic_name}-group", partitions_of(topic_name, 4)
    produced = produce_to_each(bootstrap, topic_name, 4, 50, "all")
    admin = GroupAdmin(lib, bootstrap)
    try:
        # 110 of 4 × 50: at least one partition stops in the middle.
        a = members(lib, bootstrap, group, [topic_name], "a", limit=110)
        wait_limits([a])
        first = set(a.consumed)
        committed = admin.committed(group, partitions)
        assert sum(offset or 0 for offset in committed.values()) == 110, committed

        b = members(lib, bootstrap, group, [topic_name], "b")
        views = wait_assignment(admin, group, [a, b], partitions, why=" after b joined")
        a.limit = None
        wait_consumed([a, b], produced)
        a.close()
        b.close()
        assert_no_commit_failures([a, b])
        assert_consumed_once([a, b], produced)

        second = {r for m in (a, b) for r in m.consumed} - first
        assert_resumed_at_commits(first, second, committed, produced)
        # b read a's former partitions from a's commits on (or not at all, where a had read all).
        ends = end_offsets(bootstrap, topic_name, 4)
        for tp in views["b"]:
            offsets = sorted(o for t, p, o in b.consumed if (t, p) == tp)
            assert offsets == list(range(committed[tp] or 0, ends[tp])), (tp, offsets[:3], committed)
        assert admin.committed(group, partitions) == ends
    finally:
        admin.close()


# ---------------------------------------------------------------- 4. admin


@pytest.mark.parametrize("lib", LIBS)
def test_group_admin(group_broker, topic_name, members, lib):
    """ListGroups (with the state filter), DescribeGroups, committed offsets, lag,
    OffsetDelete and DeleteGroups, while the group has members and after they left."""
    bootstrap = group_broker.bootstrap
    topic, other = topic_name, topic_name + "-other"
    ck_create_topic(bootstrap, topic, 4)
    ck_create_topic(bootstrap, other, 1)
    group, partitions = f"{topic_name}-group", partitions_of(topic, 4)
    produced = produce_to_each(bootstrap, topic, 4, 10, "before")
    admin = GroupAdmin(lib, bootstrap)
    try:
        group_members = [members(lib, bootstrap, group, [topic], f"m{i}") for i in range(2)]
        views = wait_assignment(admin, group, group_members, partitions)
        wait_consumed(group_members, produced)
        # A commit to a topic the group does not subscribe to, by a member.
        group_members[0].call(lambda client: client.commit({(other, 0): 7}))

        listed = admin.list_groups()
        assert listed.get(group) == "Stable", listed
        assert group in admin.list_groups(["Stable"])
        assert group not in admin.list_groups(["Empty"])
        described = admin.describe(group)
        assert described["state"] == "Stable"
        assert described["members"] == views
        assert described["protocol"] == "range", described  # both clients' default: range first
        assert len(set(described["member_ids"].values())) == 2
        assert admin.committed(group, partitions | {(other, 0)}) == {
            **{tp: 10 for tp in partitions}, (other, 0): 7}

        # While the group has members: it cannot be deleted, nor can the offsets of a
        # topic it subscribes to; those of another topic can.
        assert admin.delete_groups([group, group + "-unknown"]) == {
            group: NON_EMPTY_GROUP, group + "-unknown": GROUP_ID_NOT_FOUND}
        assert kp_delete_offsets(bootstrap, group, [(topic, 0), (other, 0)]) == {
            (topic, 0): GROUP_SUBSCRIBED_TO_TOPIC, (other, 0): 0}
        assert admin.committed(group, [(topic, 0), (other, 0)]) == {(topic, 0): 10, (other, 0): None}

        for m in group_members:
            m.close()
        deadline = time.monotonic() + SETTLE_S
        while (described := admin.describe(group))["state"] != "Empty":
            assert time.monotonic() < deadline, f"group not Empty after its members left: {described}"
            time.sleep(0.1)
        assert described["members"] == {}
        assert admin.list_groups(["Empty"]).get(group) == "Empty"
        assert group not in admin.list_groups(["Stable"])

        # Lag: log end − committed is what was produced after the members left.
        for partition in range(4):
            ck_produce(bootstrap, topic, [Record(b"k", b"late")] * (partition + 1), partition=partition)
        ends = end_offsets(bootstrap, topic, 4)
        committed = admin.committed(group, partitions)
        assert {tp: ends[tp] - committed[tp] for tp in partitions} == {(topic, p): p + 1 for p in range(4)}

        # An empty group: its offsets can go, then the group itself.
        assert kp_delete_offsets(bootstrap, group, [(topic, 0)]) == {(topic, 0): 0}
        assert admin.committed(group, partitions) == {(topic, 0): None, **{(topic, p): 10 for p in range(1, 4)}}
        assert admin.delete_groups([group]) == {group: 0}
        assert group not in admin.list_groups()
        assert admin.committed(group, partitions) == {tp: None for tp in partitions}
        assert admin.delete_groups([group]) == {group: GROUP_ID_NOT_FOUND}
    finally:
        admin.close()


# ---------------------------------------------------------------- 5. bad input


def _consume_and_commit_once(lib, bootstrap, group, topic, members, expected: set, name: str):
    """A new member of `group` joins, consumes `expected`, commits, and leaves."""
    m = members(lib, bootstrap, group, [topic], name)
    wait_consumed([m], expected)
    m.close()
    assert_no_commit_failures([m])
    return m


def test_bad_commits_confluent(group_broker, topic_name, members):
    """Through librdkafka: a commit to a partition that does not exist and a commit
    with metadata over 4096 bytes are refused with their Kafka codes; the group's
    other offsets are untouched and the group keeps working."""
    lib, bootstrap = "confluent", group_broker.bootstrap
    ck_create_topic(bootstrap, topic_name, 2)
    group, partitions = f"{topic_name}-group", partitions_of(topic_name, 2)
    produced = produce_to_each(bootstrap, topic_name, 2, 5, "first")
    admin = GroupAdmin(lib, bootstrap)
    try:
        m = members(lib, bootstrap, group, [topic_name], "m")
        wait_assignment(admin, group, [m], partitions)
        wait_consumed([m], produced)

        with pytest.raises(CommitError) as e:
            m.call(lambda client: client.commit({(topic_name, 99): 1}))
        assert set(e.value.codes.values()) == {UNKNOWN_TOPIC_OR_PARTITION}, e.value.codes

        with pytest.raises(CommitError) as e:
            m.call(lambda client: client.commit({(topic_name, 0): (3, "x" * 4097)}))
        assert set(e.value.codes.values()) == {OFFSET_METADATA_TOO_LARGE}, e.value.codes
        assert admin.committed(group, partitions) == {tp: 5 for tp in partitions}

        # 4096 bytes are fine. (confluent-kafka sends the C string's NUL with the
        # metadata: 4095 characters are 4096 bytes on the wire, 4097 are 4098.)
        m.call(lambda client: client.commit({(topic_name, 0): (5, "y" * 4095)}))
        m.close()

        more = produce_to_each(bootstrap, topic_name, 2, 5, "second")
        _consume_and_commit_once(lib, bootstrap, group, topic_name, members, more, "after")
        assert admin.committed(group, partitions) == {tp: 10 for tp in partitions}
    finally:
        admin.close()


def _kp_raw_commit(bootstrap: str, group: str, generation: int, member_id: str, offsets: dict) -> dict:
    """One OffsetCommit (v8) as kafka-python encodes it, with the generation and member
    id given; returns {(topic, partition): error code}."""
    from kafka.protocol.consumer import OffsetCommitRequest
    _Topic = OffsetCommitRequest.OffsetCommitRequestTopic
    _Partition = _Topic.OffsetCommitRequestPartition
    by_topic: dict = {}
    for (topic, partition), offset in offsets.items():
        by_topic.setdefault(topic, []).append(_Partition(
            partition_index=partition, committed_offset=offset, committed_leader_epoch=-1, committed_metadata=""))
    request = OffsetCommitRequest(
        group_id=group, generation_id_or_member_epoch=generation, member_id=member_id, group_instance_id=None,
        retention_time_ms=-1, topics=[_Topic(name=t, partitions=ps) for t, ps in by_topic.items()],
        max_version=8)
    admin = kp_admin(bootstrap)
    try:
        async def send():
            coordinator = await admin._find_coordinator_id(group)
            return await admin._manager.send(request, node_id=coordinator)

        response = admin._manager.run(send)
        return {(t.name, p.partition_index): p.error_code for t in response.topics for p in t.partitions}
    finally:
        admin.close()


def test_bad_commits_kafka_python(group_broker, topic_name, members):
    """Through kafka-python: an unknown partition, oversize metadata, a commit from a
    member the group rebalanced without (CommitFailedError), and OffsetCommit with a
    stale generation or an unknown member id (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID)
    next to one with the current generation that succeeds. The group keeps working."""
    lib, bootstrap = "kafka-python", group_broker.bootstrap
    ck_create_topic(bootstrap, topic_name, 2)
    group, partitions = f"{topic_name}-group", partitions_of(topic_name, 2)
    produced = produce_to_each(bootstrap, topic_name, 2, 5, "first")
    admin = GroupAdmin(lib, bootstrap)
    # A short rebalance timeout (max.poll.interval.ms), so that the group can move on
    # without a member that stops polling.
    config = dict(max_poll_interval_ms=3000)
    try:
        a = members(lib, bootstrap, group, [topic_name], "a", **config)
        wait_assignment(admin, group, [a], partitions)
        wait_consumed([a], produced)

        # The admin client's OffsetCommit for an empty-member, generation -1 commit is
        # refused while the group has members; a partition that does not exist, always.
        result = retrying(lambda: admin.kp.alter_group_offsets(
            group, {KpTopicPartition(topic_name, 0): OffsetAndMetadata(1, "", -1)}), "alter offsets")
        assert {tp: err.errno for tp, err in result.items()} == {KpTopicPartition(topic_name, 0): UNKNOWN_MEMBER_ID}

        with pytest.raises(kafka.errors.OffsetMetadataTooLargeError):
            a.call(lambda client: client.c.commit(
                {KpTopicPartition(topic_name, 0): OffsetAndMetadata(2, "x" * 4097, -1)}, timeout_ms=10000))
        a.call(lambda client: client.c.commit(
            {KpTopicPartition(topic_name, 0): OffsetAndMetadata(5, "y" * 4096, -1)}, timeout_ms=10000))
        stored = retrying(lambda: admin.kp.list_group_offsets({group: [KpTopicPartition(topic_name, 0)]}),
                          "fetch offsets")[group][KpTopicPartition(topic_name, 0)]
        assert (stored.offset, stored.metadata) == (5, "y" * 4096)

        generation = a.call(lambda client: client.c.group_metadata())
        assert generation.generation_id >= 1 and generation.member_id
        assert _kp_raw_commit(bootstrap, group, generation.generation_id, generation.member_id,
                              {(topic_name, 99): 1}) == {(topic_name, 99): UNKNOWN_TOPIC_OR_PARTITION}
        assert admin.committed(group, partitions) == {tp: 5 for tp in partitions}

        # b joins while a is stuck (not polling) for longer than its rebalance timeout:
        # the group rebalances without a, and a's commit then fails.
        def stuck_then_commit(client):
            b = members(lib, bootstrap, group, [topic_name], "b", **config)
            wait_assignment(admin, group, [b], partitions, why=" while a was not polling")
            with pytest.raises((kafka.errors.CommitFailedError, kafka.errors.RebalanceInProgressError)):
                client.c.commit({KpTopicPartition(topic_name, 0): OffsetAndMetadata(1, "", -1)}, timeout_ms=10000)
            return b

        b = a.call(stuck_then_commit, timeout_s=SETTLE_S + WAIT_S)
        assert admin.committed(group, partitions) == {tp: 5 for tp in partitions}, "a stale commit landed"

        # a polls again and rejoins; the generation moves on.
        views = wait_assignment(admin, group, [a, b], partitions, why=" after a came back")
        current_b = b.call(lambda client: client.c.group_metadata())
        assert current_b.generation_id > generation.generation_id
        assert _kp_raw_commit(bootstrap, group, generation.generation_id, current_b.member_id,
                              {(topic_name, 0): 1}) == {(topic_name, 0): ILLEGAL_GENERATION}
        assert _kp_raw_commit(bootstrap, group, current_b.generation_id, "no-such-member",
                              {(topic_name, 0): 1}) == {(topic_name, 0): UNKNOWN_MEMBER_ID}
        assert admin.committed(group, partitions) == {tp: 5 for tp in partitions}, "a refused commit landed"
        # The same request with the current generation and member id succeeds.
        b_partition = min(p for _, p in views["b"])
        assert _kp_raw_commit(bootstrap, group, current_b.generation_id, current_b.member_id,
                              {(topic_name, b_partition): 4}) == {(topic_name, b_partition): 0}
        assert admin.committed(group, [(topic_name, b_partition)]) == {(topic_name, b_partition): 4}

        more = produce_to_each(bootstrap, topic_name, 2, 5, "second")
        wait_consumed([a, b], produced | more)
        a.close()
        b.close()
        assert_no_commit_failures([a, b])
        assert admin.committed(group, partitions) == {tp: 10 for tp in partitions}

        # Now empty: the admin client's commit works, except to a partition that does not exist.
        result = admin.kp.alter_group_offsets(group, {
            KpTopicPartition(topic_name, 0): OffsetAndMetadata(3, "", -1),
            KpTopicPartition(topic_name, 99): OffsetAndMetadata(3, "", -1)})
        assert {tp.partition: err.errno for tp, err in result.items()} == {0: 0, 99: UNKNOWN_TOPIC_OR_PARTITION}
        assert admin.committed(group, partitions) == {(topic_name, 0): 3, (topic_name, 1): 10}
    finally:
        admin.close()


# ---------------------------------------------------------------- 6. assignors


ASSIGNORS = [
    ("confluent", "range"),
    ("confluent", "roundrobin"),
    ("confluent", "cooperative-sticky"),
    ("kafka-python", RangePartitionAssignor),
    ("kafka-python", RoundRobinPartitionAssignor),
    ("kafka-python", StickyPartitionAssignor),
    ("kafka-python", CooperativeStickyAssignor),
]


@pytest.mark.parametrize("lib,assignor", ASSIGNORS,
                         ids=[f"{lib}-{a if isinstance(a, str) else a.name}" for lib, a in ASSIGNORS])
def test_assignor(group_broker, topic_name, members, lib, assignor):
    """Two members, then three, on two topics of three partitions: every partition
    exactly once, the group's protocol is the assignor's, the split is the assignor's
    (range: per topic; the others: balanced), sticky assignors keep what they can, and
    cooperative ones revoke only what moves."""
    bootstrap = group_broker.bootstrap
    topics = [topic_name + "-a", topic_name + "-b"]
    for t in topics:
        ck_create_topic(bootstrap, t, 3)
    group = f"{topic_name}-group"
    partitions = partitions_of(topics[0], 3) | partitions_of(topics[1], 3)
    name = assignor if isinstance(assignor, str) else assignor.name
    config = ({"partition.assignment.strategy": assignor} if lib == "confluent"
              else {"partition_assignment_strategy": (assignor,)})
    admin = GroupAdmin(lib, bootstrap)
    try:
        group_members = [members(lib, bootstrap, group, topics, f"m{i}", **config) for i in range(2)]
        views = wait_assignment(admin, group, group_members, partitions)
        assert admin.describe(group)["protocol"] == name
        sizes = sorted(len(v) for v in views.values())
        assert sizes == ([2, 4] if name == "range" else [3, 3]), views
        produced = set()
        for t in topics:
            produced |= produce_to_each(bootstrap, t, 3, 5, "two")
        assert_consumed_by_owners(wait_consumed(group_members, produced), produced, views)

        revocations_before = {m.name: len(m.revocations) for m in group_members}
        group_members.append(members(lib, bootstrap, group, topics, "m2", **config))
        before, views = views, wait_assignment(admin, group, group_members, partitions, why=" after m2 joined")
        assert sorted(len(v) for v in views.values()) == [2, 2, 2], views
        if "sticky" in name:
            for m in group_members[:2]:
                assert views[m.name] <= before[m.name], f"{name} moved {m.name}'s partitions: {before} → {views}"
        if name == "cooperative-sticky":
            for m in group_members[:2]:
                revoked = frozenset().union(*m.revocations[revocations_before[m.name]:])
                assert revoked == before[m.name] - views[m.name], (
                    f"{m.name} had {sorted(revoked)} revoked; only {sorted(before[m.name] - views[m.name])} moved")
        new = set()
        for t in topics:
            new |= produce_to_each(bootstrap, t, 3, 5, "three")
        produced |= new
        assert_consumed_by_owners(wait_consumed(group_members, produced), new, views)
        for m in group_members:
            m.close()
        assert_no_commit_failures(group_members)
    finally:
        admin.close()


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--member":
    _child_main(sys.argv[2])
