"""Start, stop, restart and kill a rill broker for end-to-end client tests.

Each `Broker` owns a temporary directory (data dir and the broker's log) and
three free loopback ports. Every wait is bounded, and the broker is started
with PR_SET_PDEATHSIG so that it dies with the test process even when pytest
itself is killed.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

# How long a start may take until /health answers 200. A fresh data dir starts
# in well under a second; recovery after SIGKILL of a small log is not much slower.
START_TIMEOUT_S = 30.0
# How long a SIGTERM shutdown may take before the broker is killed.
STOP_TIMEOUT_S = 20.0
# A port picked by bind(0) can be taken by someone else before the broker binds
# it; starting again on new ports is the way out of that race.
START_ATTEMPTS_MAX = 3

_PR_SET_PDEATHSIG = 1


def rill_bin() -> str:
    path = os.environ.get("RILL_BIN")
    if not path:
        raise RuntimeError("RILL_BIN is not set: run tests/clients/run.sh, or export RILL_BIN=path/to/rill")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"RILL_BIN={path} is not an executable file")
    return path


def free_ports(count: int) -> list[int]:
    """Ports that were free a moment ago, all distinct (held open together while picked)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: the broker gets SIGKILL when the
    # thread that started it (pytest's main thread) dies.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class BrokerError(RuntimeError):
    pass


class Broker:
    def __init__(self, node_id: int = 1, extra_args: list[str] | None = None):
        self.node_id = node_id
        # More `rill serve` arguments, given on every start (e.g. group settings).
        self.extra_args = list(extra_args or [])
        self.root = tempfile.mkdtemp(prefix="rill-client-test-")
        self.data_dir = os.path.join(self.root, "data")
        self.log_path = os.path.join(self.root, "broker.log")
        self.kafka_port = self.controller_port = self.http_port = 0
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self.starts = 0

    # -- addresses -------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/health"

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Start on new free ports (first start) and wait until /health says 200."""
        last_error = None
        for _ in range(START_ATTEMPTS_MAX):
            self.kafka_port, self.controller_port, self.http_port = free_ports(3)
            try:
                self._spawn_and_wait()
                return
            except BrokerError as e:
                last_error = e
                if "in use" not in self.log_tail().lower():
                    break
        raise last_error

    def start_again(self) -> None:
        """Start a stopped or killed broker on the same data dir and ports."""
        self._spawn_and_wait()

    def restart(self) -> int:
        """SIGTERM, wait for exit, start again on the same data dir and ports.

        Returns the exit code of the stopped process (0 for a clean shutdown)."""
        code = self.stop()
        self.start_again()
        return code

    def restart_after_kill(self) -> None:
        """SIGKILL, then start again on the same data dir and ports."""
        self.kill()
        self.start_again()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code
        (negative signal number when it was killed)."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                self._close_log()
                raise BrokerError(f"broker did not exit within {timeout_s}s of SIGTERM; killed it")
        self._close_log()
        return proc.returncode

    def kill(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        self._close_log()

    def close(self) -> None:
        """Stop whatever runs (killing on timeout) and remove the temporary directory."""
        try:
            try:
                self.stop()
            except BrokerError:
                pass
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- internals -------------------------------------------------------

    def _spawn_and_wait(self) -> None:
        assert self.proc is None, "broker already running"
        os.makedirs(self.data_dir, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        self.starts += 1
        self._log_file.write(f"\n===== start {self.starts} =====\n".encode())
        self._log_file.flush()
        cmd = [
            rill_bin(), "serve",
            "--node-id", str(self.node_id),
            "--data-dir", self.data_dir,
            "--kafka-addr", f"127.0.0.1:{self.kafka_port}",
            "--controller-addr", f"127.0.0.1:{self.controller_port}",
            "--http-addr", f"127.0.0.1:{self.http_port}",
            *self.extra_args,
        ]
        # The broker reads RILL_* variables as settings; none from the caller's
        # environment may leak into a test's broker.
        env = {k: v for k, v in os.environ.items() if not k.startswith("RILL_")}
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                self._close_log()
                raise BrokerError(f"broker exited with code {code} before it was ready:\n{self.log_tail()}")
            if self._healthy():
                return
            time.sleep(0.05)
        self.kill()
        raise BrokerError(f"broker not healthy within {START_TIMEOUT_S}s:\n{self.log_tail()}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.health_url, timeout=1) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = 60) -> str:
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no broker log)"
        return "\n".join(text.splitlines()[-lines:])
