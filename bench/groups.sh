#!/usr/bin/env bash
# Consumer-group benchmark: failover time after a member's SIGKILL, and
# OffsetCommit throughput from 100 consumers, against a fresh single rill node
# with its default group settings. The disk's fsynced write speed and the
# machine's load are measured in the same run. Prints markdown for
# bench/README.md; the measuring code is crates/rill-cli/examples/group_bench.rs.
#
#   bench/groups.sh
#   REPETITIONS=5 SECONDS_PER_RUN=20 CONSUMERS=100 bench/groups.sh
#
# Needs: cargo, kcat (apt-get install kcat), python3 (to pick free ports).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REPETITIONS=${REPETITIONS:-5}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-20}
CONSUMERS=${CONSUMERS:-100}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/rill-groups-bench.XXXXXX")
RILL_PID=
cleanup() {
  if [ -n "$RILL_PID" ]; then kill "$RILL_PID" 2>/dev/null || true; wait "$RILL_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

KCAT=$(command -v kcat) || { echo "kcat is not on PATH (apt-get install kcat)" >&2; exit 1; }
cargo build --release -p rill-cli --locked >&2
cargo build --release -p rill-cli --example group_bench --locked >&2
RILL="$TARGET/release/rill"
BENCH="$TARGET/release/examples/group_bench"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# CPU seconds (user + system) a process has used so far.
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }

echo "## Machine"
echo
echo "- $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr)"
echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "- data dir filesystem: $(df -T "$WORK" | awk 'NR==2 {print $2}') on $(df "$WORK" | awk 'NR==2 {print $1}')"
echo "- load average (1, 5, 15 min) before the run: $(loadavg)"
sync
disk=$(dd if=/dev/zero of="$WORK/dd" bs=1M count=1024 conv=fdatasync 2>&1 | awk '/copied/ {print $(NF-1), $NF}')
rm -f "$WORK/dd"
echo "- sequential disk write with fdatasync (dd, 1 GiB): $disk"
echo

port=$(free_port); ctl=$(free_port); http=$(free_port)
"$RILL" serve --data-dir "$WORK/rill-data" --kafka-addr "127.0.0.1:$port" \
  --controller-addr "127.0.0.1:$ctl" --http-addr "127.0.0.1:$http" >"$WORK/rill.out" 2>"$WORK/rill.err" &
RILL_PID=$!
for _ in $(seq 300); do grep -q 'rill ready' "$WORK/rill.out" 2>/dev/null && break; sleep 0.1; done
grep -q 'rill ready' "$WORK/rill.out" || { cat "$WORK/rill.err" >&2; exit 1; }
BOOTSTRAP="127.0.0.1:$port"

echo "## Results"
echo
echo "rill with default group settings (group.initial.rebalance.delay.ms 3000, min session timeout 6000 ms)."
echo
for session in 6000 10000; do
  echo "- $("$BENCH" --bootstrap "$BOOTSTRAP" failover --kcat "$KCAT" \
    --session-timeout-ms "$session" --repetitions "$REPETITIONS")"
done
for groups in 1 "$CONSUMERS"; do
  before=$(cpu_seconds "$RILL_PID")
  result=$("$BENCH" --bootstrap "$BOOTSTRAP" commits --consumers "$CONSUMERS" --groups "$groups" \
    --seconds "$SECONDS_PER_RUN")
  after=$(cpu_seconds "$RILL_PID")
  echo "- $result; broker CPU over the whole run (joins included): $(awk -v a="$before" -v b="$after" 'BEGIN {printf "%.1f", b - a}') s"
done
echo
echo "- load average (1, 5, 15 min) after the run: $(loadavg)"
