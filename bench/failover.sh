#!/usr/bin/env bash
# Failover timings of a 3-node local cluster (the control plane): how long
# after a fault the cluster works again, over RUNS runs (default 10) each.
#
#   bench/failover.sh [RILL_BIN]        # default: target/release/rill
#
# Every node runs with the default broker.heartbeat.interval.ms (2 s) and
# broker.session.timeout.ms (9 s). Measured per run, with a clock read in
# this script around each fault:
#   elect       SIGKILL of the active controller -> another node's
#               DescribeQuorum names a new leader.
#   controller  SIGKILL of the active controller -> the first CreateTopics
#               accepted through another node (a new controller elected and
#               committing), as `rill topic create` (librdkafka) sees it.
#   fence       SIGKILL of a broker (not the controller) -> Metadata from
#               another node no longer lists it (session timeout + check).
#   recover     restart of that broker on its data dir -> the first record
#               acknowledged (acks=all) by a partition it leads. Partition
#               data is not replicated yet, so no other replica can take
#               over: this is the whole outage of its partitions after the
#               restart begins.
#   sigterm     SIGTERM of a broker -> its process has exited, having moved
#               its leaderships away (controlled shutdown).
# Prints one line per run and the median and max of each.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
RILL="${1:-$here/../target/release/rill}"
RUNS="${RUNS:-10}"
command -v kcat >/dev/null || { echo "needs kcat" >&2; exit 1; }
[ -x "$RILL" ] || { echo "no rill binary at $RILL (cargo build --release -p rill-cli)" >&2; exit 1; }

WORK="$(mktemp -d /tmp/rill-failover-XXXXXX)"
declare -A PID
cleanup() {
  for pid in "${PID[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill -TERM "$pid" 2>/dev/null || true; done
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

start_node() {
  local i=$1
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
brokers_seen_by() { kcat -b "127.0.0.1:${KAFKA[$1]}" -L -m 5 2>/dev/null | awk '/ brokers:/ {print $1}'; }
controller_seen_by() { "$RILL" cluster describe --bootstrap "127.0.0.1:${KAFKA[$1]}" --timeout 2s 2>/dev/null | sed -n 's/^controller quorum: leader \([0-9-]*\),.*/\1/p'; }
leader_of() { # node, topic, partition
  kcat -b "127.0.0.1:${KAFKA[$1]}" -L -t "$2" -m 5 2>/dev/null | sed -n "s/.*partition $3, leader \([0-9-]*\),.*/\1/p"; }

for i in 1 2 3; do start_node "$i"; done
for i in 1 2 3; do wait_ready "$i"; done
"$RILL" topic create bench-failover --partitions 3 --replication-factor 1 --bootstrap "127.0.0.1:${KAFKA[1]}" >/dev/null

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}'; }
max() { sort -n | tail -1; }
: >"$WORK/elect" ; : >"$WORK/controller" ; : >"$WORK/fence" ; : >"$WORK/recover" ; : >"$WORK/sigterm"

for run in $(seq "$RUNS"); do
  # 1. The active controller dies.
  old=$(controller_seen_by 1); [ -n "$old" ] || old=$(controller_seen_by 2)
  other=$(( old % 3 + 1 ))
  t0=$(now_ms); kill -KILL "${PID[$old]}"; wait "${PID[$old]}" 2>/dev/null || true
  while :; do new=$(controller_seen_by "$other"); [ -n "$new" ] && [ "$new" != "$old" ] && [ "$new" != -1 ] && break; sleep 0.05; done
  elect=$(( $(now_ms) - t0 ))
  echo "$elect" >>"$WORK/elect"
  until "$RILL" topic create "after-$run" --partitions 1 --bootstrap "127.0.0.1:${KAFKA[$other]}" --timeout 2s >/dev/null 2>&1; do :; done
  controller=$(( $(now_ms) - t0 ))
  echo "$controller" >>"$WORK/controller"
  start_node "$old"; wait_ready "$old"
  until [ "$(brokers_seen_by "$other")" = 3 ]; do sleep 0.1; done

  # 2. A broker dies; it is fenced; it comes back and serves again.
  ctrl=$(controller_seen_by "$other")
  victim=$(( ctrl % 3 + 1 )); survivor=$(( victim % 3 + 1 ))
  partition=""
  for p in 0 1 2; do [ "$(leader_of "$survivor" bench-failover $p)" = "$victim" ] && partition=$p; done
  t0=$(now_ms); kill -KILL "${PID[$victim]}"; wait "${PID[$victim]}" 2>/dev/null || true
  until [ "$(brokers_seen_by "$survivor")" = 2 ]; do sleep 0.05; done
  fence=$(( $(now_ms) - t0 ))
  echo "$fence" >>"$WORK/fence"
  t0=$(now_ms); start_node "$victim"
  if [ -n "$partition" ]; then
    until echo "r$run" | "$RILL" produce bench-failover --partition "$partition" --acks all \
        --bootstrap "127.0.0.1:${KAFKA[$survivor]}" --timeout 2s >/dev/null 2>&1; do :; done
  else
    wait_ready "$victim"
  fi
  recover=$(( $(now_ms) - t0 ))
  echo "$recover" >>"$WORK/recover"
  wait_ready "$victim"
  until [ "$(brokers_seen_by "$survivor")" = 3 ]; do sleep 0.1; done

  # 3. A broker stops cleanly: a controlled shutdown, then exit.
  t0=$(now_ms); kill -TERM "${PID[$victim]}"; wait "${PID[$victim]}" 2>/dev/null || true
  sigterm=$(( $(now_ms) - t0 ))
  echo "$sigterm" >>"$WORK/sigterm"
  start_node "$victim"; wait_ready "$victim"
  until [ "$(brokers_seen_by "$survivor")" = 3 ]; do sleep 0.1; done

  echo "run $run: elect ${elect} ms, controller ${controller} ms, fence ${fence} ms, recover ${recover} ms (partition ${partition:-none}), sigterm ${sigterm} ms"
done

for what in elect controller fence recover sigterm; do
  echo "$what: median $(median <"$WORK/$what") ms, max $(max <"$WORK/$what") ms over $RUNS runs"
done
