"""A three-node cluster started with `rill cluster local`, seen through the admin
clients of confluent-kafka (librdkafka) and kafka-python: every broker, the
controller, topics spread over the brokers, produce/consume across them, and
kafka-python riding through the SIGKILL of a partition's leader."""

import os
import re
import signal
import subprocess
import tempfile
import time
from types import SimpleNamespace

import pytest

from clients import WAIT_S, Record, ck_admin, ck_produce, kp_admin, kp_consume, kp_producer
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import NewTopic
from rill_broker import rill_bin

READY_S = 120


@pytest.fixture
def cluster():
    """`rill cluster local --nodes 3` in a temp dir; yields its bootstrap string
    and the cluster's dir (node N's data dir is `DIR/node-N`)."""
    with tempfile.TemporaryDirectory(prefix="rill-py-cluster-") as work:
        log = open(os.path.join(work, "cluster.out"), "w+")
        proc = subprocess.Popen(
            [rill_bin(), "cluster", "local", "--nodes", "3", "--dir", os.path.join(work, "c")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            bootstrap = None
            deadline = time.monotonic() + READY_S
            while bootstrap is None and time.monotonic() < deadline:
                assert proc.poll() is None, f"rill cluster local exited: {open(log.name).read()}"
                match = re.search(r"^bootstrap: (\S+)$", open(log.name).read(), re.MULTILINE)
                bootstrap = match.group(1) if match else None
                time.sleep(0.1)
            assert bootstrap, f"no bootstrap line in {READY_S} s: {open(log.name).read()}"
            yield SimpleNamespace(bootstrap=bootstrap, dir=os.path.join(work, "c"))
        finally:
            # Ctrl-C stops every node (each a controlled shutdown).
            proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
            output = open(log.name).read()
            assert code == 0, output
            assert "stopping every node" in output, output


def test_admin_clients_see_every_broker_and_the_controller(cluster):
    cluster = cluster.bootstrap
    admin = ck_admin(cluster)
    admin.create_topics([NewTopic("spread", num_partitions=6, replication_factor=3)])["spread"].result(timeout=WAIT_S)
    md = admin.list_topics(timeout=WAIT_S)
    assert sorted(md.brokers) == [1, 2, 3]
    assert md.controller_id in (1, 2, 3)
    partitions = md.topics["spread"].partitions
    assert sorted(p.leader for p in partitions.values()) == [1, 1, 2, 2, 3, 3]
    for p in partitions.values():
        assert sorted(p.replicas) == [1, 2, 3]
        # Followers copy the (empty) logs: every replica is in sync.
        assert sorted(p.isrs) == [1, 2, 3]

    described = admin.describe_cluster(request_timeout=WAIT_S).result(timeout=WAIT_S)
    assert sorted(n.id for n in described.nodes) == [1, 2, 3]
    assert described.controller.id in (1, 2, 3)

    kp = kp_admin(cluster)
    try:
        kp_cluster = kp.describe_cluster()
        assert sorted(b["broker_id"] for b in kp_cluster["brokers"]) == [1, 2, 3]
        assert kp_cluster["controller_id"] in (1, 2, 3)
        assert "spread" in kp.list_topics()
    finally:
        kp.close()

    # Records to every partition, led by three different brokers, read back.
    ck_produce(cluster, "spread", [Record(key=f"k{i}".encode(), value=f"v{i}".encode()) for i in range(60)])
    consumer = Consumer({"bootstrap.servers": cluster, "group.id": "py-cluster", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition("spread", p, 0) for p in range(6)])
        seen = []
        deadline = time.monotonic() + WAIT_S
        while len(seen) < 60 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                seen.append(message.value())
        assert sorted(seen) == sorted(f"v{i}".encode() for i in range(60))
    finally:
        consumer.close()


def _leader(bootstrap: str, topic: str, partition: int) -> int:
    admin = ck_admin(bootstrap)
    md = admin.list_topics(topic, timeout=WAIT_S)
    return md.topics[topic].partitions[partition].leader


def test_kafka_python_rides_through_a_leader_kill(cluster):
    """RF 3, min.insync.replicas 2: kafka-python (idempotent, acks=all) sends
    while the partition's leader is SIGKILLed; every record is delivered once
    and read back by kafka-python from the surviving replicas."""
    admin = ck_admin(cluster.bootstrap)
    admin.create_topics(
        [NewTopic("failover", num_partitions=1, replication_factor=3, config={"min.insync.replicas": "2"})]
    )["failover"].result(timeout=WAIT_S)
    leader = _leader(cluster.bootstrap, "failover", 0)
    producer = kp_producer(cluster.bootstrap, retries=100, retry_backoff_ms=200, request_timeout_ms=5000,
                           delivery_timeout_ms=60000)
    try:
        futures = [producer.send("failover", value=f"before-{i}".encode(), partition=0) for i in range(50)]
        producer.flush(timeout=WAIT_S)
        pid = subprocess.run(["pgrep", "-f", "--", f"--data-dir {cluster.dir}/node-{leader}( |$)"],
                             capture_output=True, text=True).stdout.split()
        assert len(pid) == 1, f"the leader's process: {pid}"
        os.kill(int(pid[0]), signal.SIGKILL)
        futures += [producer.send("failover", value=f"after-{i}".encode(), partition=0) for i in range(50)]
        producer.flush(timeout=60)
        offsets = [f.get(timeout=60).offset for f in futures]
    finally:
        producer.close(timeout=10)
    assert offsets == list(range(100)), offsets
    assert _leader(cluster.bootstrap, "failover", 0) != leader
    read = kp_consume(cluster.bootstrap, "failover", 1)
    assert [c.record.value for c in read] == [f"before-{i}".encode() for i in range(50)] + [
        f"after-{i}".encode() for i in range(50)]
