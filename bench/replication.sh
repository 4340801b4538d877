#!/usr/bin/env bash
# Replication on a 3-node local cluster, side by side in one run with the
# machine's limits:
#
#   bench/replication.sh [RILL_BIN]      # default: target/release/rill
#
#   limits      `rill bench limits` on the data dirs' disk (fdatasync, TCP).
#   throughput  `rill bench produce`, 1 partition, 100-byte records,
#               librdkafka: acks=all on RF 3 (min.insync.replicas 2),
#               acks=1 on RF 3, acks=all on RF 1 — all on the same cluster.
#   latency     `rill bench e2e` at 10,000 records/s, linger.ms=0,
#               acks=all: RF 3 and RF 1.
#   failover    RUNS (default 10) times: SIGKILL the leader of the RF 3
#               partition, then send one acks=all record (`rill produce`,
#               2 s timeout, again until acknowledged) and time it; restart
#               the node and wait until it is back in the ISR. Default
#               broker.session.timeout.ms (9 s): the leader is replaced
#               when the controller fences it.
# RECORDS (default 2,000,000) sets the throughput runs' size. PARTS
# (default "throughput latency failover") picks the parts to run, in that
# order; limits always run. Each throughput and latency run prints how
# many fsyncs each node did meanwhile, and how many were slow.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
RILL="${1:-$here/../target/release/rill}"
RUNS="${RUNS:-10}"
RECORDS="${RECORDS:-2000000}"
PARTS="${PARTS:-throughput latency failover}"
command -v kcat >/dev/null || { echo "needs kcat" >&2; exit 1; }
command -v curl >/dev/null || { echo "needs curl" >&2; exit 1; }
[ -x "$RILL" ] || { echo "no rill binary at $RILL (cargo build --release -p rill-cli)" >&2; exit 1; }

WORK="$(mktemp -d /tmp/rill-replication-XXXXXX)"
declare -A PID
cleanup() {
  for pid in "${PID[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${PID[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

declare -A KAFKA CTRL HTTP
for i in 1 2 3; do KAFKA[$i]=$(free_port); CTRL[$i]=$(free_port); HTTP[$i]=$(free_port); done
QUORUM="1@127.0.0.1:${CTRL[1]},2@127.0.0.1:${CTRL[2]},3@127.0.0.1:${CTRL[3]}"
BOOT="127.0.0.1:${KAFKA[1]},127.0.0.1:${KAFKA[2]},127.0.0.1:${KAFKA[3]}"

start_node() {
  local i=$1
  : >"$WORK/node-$i.out"
  "$RILL" serve --node-id "$i" --controller-quorum "$QUORUM" --data-dir "$WORK/node-$i" \
    --kafka-addr "127.0.0.1:${KAFKA[$i]}" --controller-addr "127.0.0.1:${CTRL[$i]}" \
    --http-addr "127.0.0.1:${HTTP[$i]}" >"$WORK/node-$i.out" 2>>"$WORK/node-$i.log" &
  PID[$i]=$!
}
wait_ready() {
  local i=$1
  for _ in $(seq 1200); do grep -q 'rill ready' "$WORK/node-$i.out" 2>/dev/null && return 0; sleep 0.05; done
  echo "node $i not ready" >&2; tail -20 "$WORK/node-$i.log" >&2; exit 1
}
# leader and ISR of partition 0 of a topic, as node $1 sees it: "LEADER ISR"
partition_of() {
  kcat -b "127.0.0.1:${KAFKA[$1]}" -L -t "$2" -m 5 2>/dev/null \
    | sed -n 's/.*partition 0, leader \([0-9-]*\), replicas: [0-9,]*, isrs: \([0-9,]*\).*/\1 \2/p'
}

for i in 1 2 3; do start_node "$i"; done
for i in 1 2 3; do wait_ready "$i"; done
"$RILL" topic create rf3 --partitions 1 --replication-factor 3 --config min.insync.replicas=2 --bootstrap "$BOOT" >/dev/null
"$RILL" topic create rf3-acks1 --partitions 1 --replication-factor 3 --config min.insync.replicas=2 --bootstrap "$BOOT" >/dev/null
"$RILL" topic create rf1 --partitions 1 --replication-factor 1 --bootstrap "$BOOT" >/dev/null
"$RILL" topic create e2e-rf3 --partitions 1 --replication-factor 3 --config min.insync.replicas=2 --bootstrap "$BOOT" >/dev/null
"$RILL" topic create e2e-rf1 --partitions 1 --replication-factor 1 --bootstrap "$BOOT" >/dev/null

echo "== limits (data dirs' disk: $WORK)"
"$RILL" bench limits --dir "$WORK" --disk-mib 512

# fsyncs of node $1 so far (rill_log_flush_duration_seconds): "COUNT OVER_25MS OVER_100MS"
fsync_counts() {
  curl -s "http://127.0.0.1:${HTTP[$1]}/metrics" | awk '
    /^rill_log_flush_duration_seconds_bucket\{le="0.025"\}/ {a=$2}
    /^rill_log_flush_duration_seconds_bucket\{le="0.1"\}/ {b=$2}
    /^rill_log_flush_duration_seconds_count/ {n=$2}
    END {print n+0, n-a, n-b}'
}

# Runs a command, then prints the fsyncs each node did meanwhile: slow
# ones are where a latency's tail can come from.
with_fsyncs() {
  local before=()
  for i in 1 2 3; do before[$i]="$(fsync_counts "$i")"; done
  "$@"
  for i in 1 2 3; do
    read -r n0 a0 b0 <<<"${before[$i]}"; read -r n1 a1 b1 < <(fsync_counts "$i")
    echo "node $i fsyncs during the run: $((n1 - n0)), over 25 ms: $((a1 - a0)), over 100 ms: $((b1 - b0))"
  done
}
throughput() {
  with_fsyncs "$RILL" bench produce --bootstrap "$BOOT" --topic "$1" --partitions 1 --records "$RECORDS" --record-size 100 --acks "$2"
}
latency() {
  with_fsyncs "$RILL" bench e2e --bootstrap "$BOOT" --topic "$1" --partitions 1 --rate 10000 --duration 20 --record-size 100 --acks all --linger-ms 0
}
part() { [[ " $PARTS " == *" $1 "* ]]; }

if part throughput; then
  echo "== throughput: acks=all, RF 3 (min.insync.replicas 2)"
  throughput rf3 all
  echo "== throughput: acks=1, RF 3"
  throughput rf3-acks1 1
  echo "== throughput: acks=all, RF 1"
  throughput rf1 all
fi

# The throughput runs leave dirty pages (acks=1 data is not flushed) that
# the kernel writes back 30 s later (vm.dirty_expire_centisecs), which
# would land in the latency runs: an fsync then waits for ext4's journal
# commit behind that writeback (bench/README.md, 2026-12-05 "RF 1 tail").
sync
if part latency; then
  echo "== latency: 10,000 records/s, linger.ms=0, acks=all, RF 3"
  latency e2e-rf3
  echo "== latency: 10,000 records/s, linger.ms=0, acks=all, RF 1"
  latency e2e-rf1
fi

part failover || exit 0
echo "== failover: SIGKILL of the RF 3 leader -> next acks=all record acknowledged"
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}'; }
: >"$WORK/failover"
for run in $(seq "$RUNS"); do
  read -r leader _ < <(partition_of 1 rf3 || true)
  [ -n "${leader:-}" ] && [ "$leader" != -1 ] || { echo "no leader for rf3" >&2; exit 1; }
  t0=$(now_ms); kill -KILL "${PID[$leader]}"; wait "${PID[$leader]}" 2>/dev/null || true
  others=""; for i in 1 2 3; do [ "$i" = "$leader" ] || others="$others,127.0.0.1:${KAFKA[$i]}"; done
  until echo "run-$run" | "$RILL" produce rf3 --partition 0 --acks all --timeout 2s --bootstrap "${others#,}" >/dev/null 2>&1; do :; done
  took=$(( $(now_ms) - t0 ))
  echo "$took" >>"$WORK/failover"
  start_node "$leader"; wait_ready "$leader"
  other=$(( leader % 3 + 1 ))
  for _ in $(seq 600); do
    read -r _ isr < <(partition_of "$other" rf3 || true)
    [ "$(echo "${isr:-}" | tr ',' '\n' | grep -c .)" = 3 ] && break; sleep 0.1
  done
  echo "run $run: leader $leader killed; next acknowledged write after ${took} ms"
done
echo "failover: median $(median <"$WORK/failover") ms, max $(sort -n "$WORK/failover" | tail -1) ms over $RUNS runs"
