#!/usr/bin/env bash
# Broker benchmark: a single rill node driven by librdkafka, with this
# machine's limits (disk write with fsync, loopback TCP) measured in the same
# run. Prints a markdown table for bench/README.md.
#
#   bench/broker.sh                 # rill only
#   TANSU=/path/to/tansu bench/broker.sh   # also Tansu on its memory engine, side by side
#
# Needs: cargo, gcc/make (to build librdkafka's rdkafka_performance from the
# source bundled in the rdkafka-sys crate), iperf3 (apt-get install iperf3).
# Records: 100 bytes; batching linger 5 ms, batch.size 1 MB; 1 partition.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RECORDS=${RECORDS:-10000000}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d "${BENCH_DIR:-$TARGET}/rill-broker-bench.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --release -p rill-cli --locked >&2
RILL="$TARGET/release/rill"

# librdkafka's own benchmark client, from the sources the rdkafka-sys crate bundles.
PERF="$TARGET/rdkafka-perf/examples/rdkafka_performance"
if [ ! -x "$PERF" ]; then
  src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/rdkafka-sys-*/librdkafka | sort | tail -n 1)
  rm -rf "$TARGET/rdkafka-perf" && cp -r "$src" "$TARGET/rdkafka-perf"
  (cd "$TARGET/rdkafka-perf" && ./configure --disable-ssl --disable-gssapi --disable-sasl --disable-curl >/dev/null \
    && make -j2 libs >/dev/null 2>&1; make -C examples rdkafka_performance >/dev/null)
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "## Machine" 
echo
echo "- $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr)"
echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "- data dir filesystem: $(df -T "$WORK" | awk 'NR==2 {print $2}') on $(df "$WORK" | awk 'NR==2 {print $1}')"
sync
disk=$(dd if=/dev/zero of="$WORK/dd" bs=1M count=1024 conv=fdatasync 2>&1 | awk '/copied/ {print $(NF-1), $NF}')
rm -f "$WORK/dd"
iperf3 -s -1 -p 5299 >/dev/null 2>&1 & PIDS+=($!)
sleep 0.5
loop=$(iperf3 -c 127.0.0.1 -p 5299 -t 5 -f g 2>/dev/null | awk '/receiver/ {print $(NF-2), $(NF-1)}')
echo "- sequential disk write with fdatasync (dd, 1 GiB): $disk"
echo "- loopback TCP, one stream (iperf3, 5 s): $loop"
echo

stop_rill() {
  if [ -n "${RILL_PID:-}" ]; then kill "$RILL_PID"; wait "$RILL_PID" 2>/dev/null || true; RILL_PID=; fi
}

start_rill() {
  local port ctl http
  stop_rill
  port=$(free_port); ctl=$(free_port); http=$(free_port)
  "$RILL" serve --data-dir "$WORK/rill-data" --kafka-addr "127.0.0.1:$port" \
    --controller-addr "127.0.0.1:$ctl" --http-addr "127.0.0.1:$http" >"$WORK/rill.out" 2>"$WORK/rill.err" &
  RILL_PID=$!
  PIDS+=($!)
  for _ in $(seq 300); do grep -q 'rill ready' "$WORK/rill.out" 2>/dev/null && break; sleep 0.1; done
  grep -q 'rill ready' "$WORK/rill.out" || { cat "$WORK/rill.err" >&2; exit 1; }
  BOOTSTRAP="127.0.0.1:$port"
}

start_tansu() {
  local port
  port=$(free_port)
  "$TANSU" broker --storage-engine memory://tansu/ \
    --kafka-listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    >"$WORK/tansu.out" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  BOOTSTRAP="127.0.0.1:$port"
  # Tansu does not create topics on demand.
  for topic in bench-acks1 bench-acksall; do
    "$TANSU" topic create --broker "tcp://$BOOTSTRAP" --partitions 1 "$topic" >/dev/null
  done
}

# The last table row of rdkafka_performance -u: records/s and MB/s.
produce() { # topic acks
  "$PERF" -P -t "$1" -p 0 -b "$BOOTSTRAP" -s 100 -c "$RECORDS" -a "$2" -u \
    -X linger.ms=5 -X batch.size=1000000 -X enable.idempotence=false 2>/dev/null \
    | grep '^|' | tail -n 1 | awk -F'|' '{gsub(/ /,""); printf "%d records/s, %.1f MB/s", $7, $8}'
}
consume() { # topic
  "$PERF" -C -t "$1" -p 0 -b "$BOOTSTRAP" -o beginning -c "$RECORDS" -u \
    -X fetch.max.bytes=52428800 -X max.partition.fetch.bytes=10485760 2>/dev/null \
    | grep '^|' | tail -n 1 | awk -F'|' '{gsub(/ /,""); printf "%d records/s, %.1f MB/s", $6, $7}'
}

echo "## Results ($RECORDS records of 100 B per workload, rdkafka_performance)"
echo
echo "| broker | produce acks=1 | produce acks=all | consume (page cache) |"
echo "|---|---|---|---|"
start_rill
p1=$(produce bench-acks1 1); pall=$(produce bench-acksall -1); c1=$(consume bench-acks1)
echo "| rill (disk, fsync on acks=all) | $p1 | $pall | $c1 |"
if [ -n "${TANSU:-}" ]; then
  stop_rill
  start_tansu
  p1=$(produce bench-acks1 1); pall=$(produce bench-acksall -1); c1=$(consume bench-acks1)
  echo "| Tansu (memory engine) | $p1 | $pall | $c1 |"
fi
echo
echo "## rill bench (rdkafka crate), latency from send to delivery report"
echo
start_rill
echo '```'
"$RILL" bench produce --bootstrap "$BOOTSTRAP" --topic lat-acks1 --records 2000000 --acks 1 --json
"$RILL" bench produce --bootstrap "$BOOTSTRAP" --topic lat-acksall --records 2000000 --acks all --json
echo '```'
