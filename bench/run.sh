#!/usr/bin/env bash
# The standard `rill bench` workloads against a running Kafka-compatible
# broker, and this machine's limits measured in the same run. Prints a
# markdown table and writes it to a file (the raw JSON of every run beside it).
#
#   bench/run.sh BOOTSTRAP            # e.g. bench/run.sh 127.0.0.1:9092
#
# Workloads (issue 5):
#   1. produce, 1 partition, 100 B records, acks=1
#   2. the same with acks=all
#   3. produce, 16 partitions, 1 KiB records, 4 producers, acks=all
#   4. consume the records of 1 and of 3 (one consumer each)
#   5. end-to-end latency, 1 partition, 100 B, acks=all, at 50% of 2's records/s
#
# Settings (environment):
#   RILL            the rill binary [default: $CARGO_TARGET_DIR/release/rill or target/release/rill]
#   RECORDS         records of workloads 1 and 2 [default: 10000000]
#   RECORDS_1KIB    records of workload 3 [default: 2000000]
#   E2E_SECONDS     how long workload 5 sends [default: 15]
#   LIMITS_DIR      where `rill bench limits` writes; put it on the broker's disk [default: .]
#   LIMITS_DISK_MIB how much `rill bench limits` writes per disk run [default: 1024]
#   OUT             the markdown file to write [default: ./bench-results-<UTC time>.md]
#
# The defaults take one to two minutes on a 2-core machine. Each run uses new
# topics (bench-<time>-w1 ...), created with the partition counts above.
# `rill bench limits` runs before the workloads and again after them: a
# virtual machine's disk can change speed within minutes, and the two show
# by how much it did during the run.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: bench/run.sh BOOTSTRAP   (e.g. 127.0.0.1:9092)" >&2
  exit 2
fi
BOOTSTRAP=$1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RILL=${RILL:-${CARGO_TARGET_DIR:-$ROOT/target}/release/rill}
RECORDS=${RECORDS:-10000000}
RECORDS_1KIB=${RECORDS_1KIB:-2000000}
E2E_SECONDS=${E2E_SECONDS:-15}
LIMITS_DIR=${LIMITS_DIR:-.}
LIMITS_DISK_MIB=${LIMITS_DISK_MIB:-1024}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$PWD/bench-results-$STAMP.md}
RAW=${OUT%.md}.jsonl
PREFIX=bench-$(date +%s)

if [ ! -x "$RILL" ]; then
  echo "bench/run.sh: no rill binary at $RILL (cargo build --release -p rill-cli, or set RILL)" >&2
  exit 1
fi
command -v python3 >/dev/null || { echo "bench/run.sh: needs python3 to read the JSON" >&2; exit 1; }

: >"$RAW"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# Runs `rill bench ARGS --json`, keeps its JSON line (tagged with the
# workload's number and name) and echoes it.
run() { # number name args...
  local number=$1 name=$2
  shift 2
  echo "bench/run.sh: $number. $name" >&2
  local json
  json=$("$RILL" bench "$@" --bootstrap "$BOOTSTRAP" --json)
  python3 -c 'import json,sys; d=json.loads(sys.argv[3]); d["workload"]=sys.argv[1]; d["name"]=sys.argv[2]; print(json.dumps(d))' \
    "$number" "$name" "$json" >>"$RAW"
  echo "$json"
}

# Runs `rill bench limits --json` and keeps its line, tagged `when`.
limits() { # when
  echo "bench/run.sh: limits ($1)" >&2
  local json
  json=$("$RILL" bench limits --dir "$LIMITS_DIR" --disk-mib "$LIMITS_DISK_MIB" --json)
  python3 -c 'import json,sys; d=json.loads(sys.argv[2]); d["when"]=sys.argv[1]; print(json.dumps(d))' \
    "$1" "$json" >>"$RAW"
}

limits before
common=(--record-size 100 --linger-ms 5 --batch-bytes 1000000)
run 1 "produce, 1 partition, 100 B, acks=1" \
  produce --topic "$PREFIX-w1" --partitions 1 --records "$RECORDS" "${common[@]}" --acks 1 >/dev/null
w2=$(run 2 "produce, 1 partition, 100 B, acks=all" \
  produce --topic "$PREFIX-w2" --partitions 1 --records "$RECORDS" "${common[@]}" --acks all)
run 3 "produce, 16 partitions, 1 KiB, 4 producers, acks=all" \
  produce --topic "$PREFIX-w3" --partitions 16 --records "$RECORDS_1KIB" --record-size 1024 \
  --producers 4 --acks all >/dev/null
run 4a "consume the records of 1 (1 partition, 100 B)" \
  consume --topic "$PREFIX-w1" --records "$RECORDS" >/dev/null
run 4b "consume the records of 3 (16 partitions, 1 KiB)" \
  consume --topic "$PREFIX-w3" --records "$RECORDS_1KIB" >/dev/null
rate=$(python3 -c 'import json,sys; print(int(json.loads(sys.argv[1])["records_per_sec"] / 2))' "$w2")
rate_shown=$(python3 -c 'import sys; print(f"{int(sys.argv[1]):,}")' "$rate")
run 5 "e2e, 1 partition, 100 B, acks=all, $rate_shown rec/s (50% of 2)" \
  e2e --topic "$PREFIX-w5" --partitions 1 --rate "$rate" --duration "$E2E_SECONDS" "${common[@]}" \
  --acks all >/dev/null

limits after
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

machine() {
  echo "- Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr)"
  echo "- Limits dir: $(realpath "$LIMITS_DIR"), $(df -T "$LIMITS_DIR" | awk 'NR==2 {print $2 " on " $1}')"
  echo "- Load average (1, 5, 15 min): $load_before before, $load_after after"
}

{
  echo "### rill bench run.sh, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- Broker: $BOOTSTRAP; client: \`rill bench\` ($("$RILL" --version), source $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)) through librdkafka"
  machine
  echo
  python3 - "$RAW" "$LIMITS_DISK_MIB" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
size = f"{int(sys.argv[2]) // 1024} GiB" if int(sys.argv[2]) % 1024 == 0 else f"{sys.argv[2]} MiB"
print(f"Limits (`rill bench limits`, before and after the workloads): disk write of {size} in 1 MiB writes:")
for limits in (r for r in rows if r.get("mode") == "limits"):
    disk, tcp = limits["disk"], limits["loopback_tcp"]
    print(f"- {limits['when']}: fdatasync at the end **{disk['fdatasync_at_end_mb_per_sec']:,.0f} MB/s**, "
          f"fdatasync every 64 MiB **{disk['fdatasync_every_64mib_mb_per_sec']:,.0f} MB/s**; "
          f"loopback TCP, one connection **{tcp['gbit_per_sec']:.1f} Gbit/s**")
print()
print("| # | workload | records | records/s | MB/s | p50 ms | p99 ms | p99.9 ms | max ms |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    if r.get("mode") == "limits":
        continue
    lat = r.get("latency_ms") or {}
    cell = lambda k: f"{lat[k]:.2f}" if k in lat else "–"
    print(f"| {r['workload']} | {r['name']} | {r['records']:,} | {r['records_per_sec']:,.0f} "
          f"| {r['mb_per_sec']:,.1f} | {cell('p50')} | {cell('p99')} | {cell('p999')} | {cell('max')} |")
print()
print("Latency: produce, from `send` to the delivery report; e2e, from `send` to the consumer "
      "receiving the record; consume has none. MB/s are record values only (10^6 bytes/s).")
PY
} | tee "$OUT"
echo "bench/run.sh: wrote $OUT and $RAW" >&2
