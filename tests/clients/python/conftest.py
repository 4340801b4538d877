"""Fixtures: a fresh rill broker per test, on free loopback ports in a temp dir."""

import itertools
import logging
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from rill_broker import Broker  # noqa: E402

_topic_seq = itertools.count()

# kafka-python logs every dropped connection at ERROR, hundreds of lines while it
# retries; the broker's log (printed for a failing test) says why it dropped.
logging.getLogger("kafka.net").setLevel(logging.CRITICAL)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Keep each phase's report on the test item so that fixtures can tell in
    # teardown whether the test failed (and then show the broker's log).
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


# Group settings for tests of consumer groups: a short first-join delay (Kafka's
# default is 3 s) and session timeouts down to 1 s, so that a test can use 6 s.
GROUP_BROKER_ARGS = ["--group-initial-rebalance-delay-ms", "100", "--group-min-session-timeout-ms", "1000"]


def _run_broker(request, extra_args=None):
    b = Broker(extra_args=extra_args)
    try:
        b.start()
        yield b
    finally:
        failed = any(
            getattr(request.node, "rep_" + phase, None) is not None
            and getattr(request.node, "rep_" + phase).failed
            for phase in ("setup", "call")
        )
        if failed:
            print(f"\n----- rill broker log (last lines, {b.log_path}) -----\n{b.log_tail(120)}")
        b.close()


@pytest.fixture
def broker(request):
    yield from _run_broker(request)


@pytest.fixture
def group_broker(request):
    """A fresh broker with GROUP_BROKER_ARGS."""
    yield from _run_broker(request, GROUP_BROKER_ARGS)


@pytest.fixture
def topic_name(request):
    """A topic name unique within the run, readable in broker logs."""
    base = re.sub(r"[^a-zA-Z0-9.-]+", "-", request.node.name).strip("-")
    return f"{base[:180]}-{next(_topic_seq)}"
