#!/usr/bin/env bash
# Transactional throughput on a single local node, side by side in one run
# with the machine's limits (issue 15):
#
#   bench/transactions.sh [RILL_BIN]     # default: target/release/rill
#
#   limits     `rill bench limits` on the data dir's disk (fdatasync, TCP),
#              before and after the workloads.
#   produce    `rill bench produce`, 1 partition, 100-byte records, RECORDS
#              of them, linger.ms 5, acks=all: without transactions
#              (idempotence off, as in bench/run.sh), then in transactions of
#              100 and of 1,000 records (idempotent, one producer, one
#              transaction open at a time).
#   consume    `rill bench consume` of each transactional topic with
#              read_uncommitted and with read_committed, and of the
#              non-transactional one with read_uncommitted.
#
# Prints a markdown table (also written to OUT, with every run's JSON beside
# it in a .jsonl), the load and the busiest processes before, during (every
# 10 s) and after the workloads (the machine may be shared), and the
# broker's WARN/ERROR log lines. The defaults take about 2 minutes.
#
# Settings (environment):
#   RECORDS        records per produce workload [default: 1000000]
#   STEP_SECONDS   the longest any one step may take [default: 300]
#   OUT            the markdown file [default: ./bench-transactions-<UTC time>.md]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$here/.." && pwd)"
RILL="${1:-${CARGO_TARGET_DIR:-$ROOT/target}/release/rill}"
RECORDS="${RECORDS:-1000000}"
STEP_SECONDS="${STEP_SECONDS:-300}"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="${OUT:-$PWD/bench-transactions-$STAMP.md}"
RAW="${OUT%.md}.jsonl"
[ -x "$RILL" ] || { echo "no rill binary at $RILL (cargo build --release -p rill-cli)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench/transactions.sh: needs python3" >&2; exit 1; }

WORK="$(mktemp -d /tmp/rill-transactions-XXXXXX)"
BROKER_PID=
SAMPLER_PID=
cleanup() {
  if [ -n "$SAMPLER_PID" ]; then kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; fi
  if [ -n "$BROKER_PID" ]; then
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# The five busiest processes over one second (top's second frame), as "%CPU name".
busiest() {
  top -b -n 2 -d 1 -w 200 | awk '/^top -/ {frame++} frame == 2' | sed -n '/PID/,$p' \
    | awk 'NR > 1 && NR <= 6 {print "    " $9 "% " $12}'
}

port=$(free_port); ctl=$(free_port); http=$(free_port)
"$RILL" serve --data-dir "$WORK/data" --kafka-addr "127.0.0.1:$port" \
  --controller-addr "127.0.0.1:$ctl" --http-addr "127.0.0.1:$http" \
  >"$WORK/rill.out" 2>"$WORK/rill.log" &
BROKER_PID=$!
for _ in $(seq 300); do grep -q 'rill ready' "$WORK/rill.out" 2>/dev/null && break; sleep 0.1; done
grep -q 'rill ready' "$WORK/rill.out" || { echo "the broker did not start:" >&2; tail -20 "$WORK/rill.log" >&2; exit 1; }
BOOTSTRAP="127.0.0.1:$port"

: >"$RAW"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
busy_before=$(busiest)
# What else runs on the machine during the workloads: the busiest
# processes every 10 s, one line a sample (the bench's own are `rill`).
( while true; do echo "    $(date -u +%T): $(busiest | xargs | sed 's/% /%\xa0/g; s/ /, /g; s/\xa0/ /g')"; sleep 9; done ) >"$WORK/busy" 2>/dev/null &
SAMPLER_PID=$!

# Runs `rill bench ARGS --json` (at most STEP_SECONDS) and keeps its JSON
# line, tagged with the workload's name; on failure shows the broker's log.
run() { # name args...
  local name=$1 json
  shift
  echo "bench/transactions.sh: $name" >&2
  if ! json=$(timeout "$STEP_SECONDS" "$RILL" bench "$@" --bootstrap "$BOOTSTRAP" --json); then
    echo "bench/transactions.sh: '$name' failed or took over $STEP_SECONDS s; the broker's last log lines:" >&2
    tail -20 "$WORK/rill.log" >&2
    exit 1
  fi
  python3 -c 'import json,sys; d=json.loads(sys.argv[2]); d["name"]=sys.argv[1]; print(json.dumps(d))' \
    "$name" "$json" >>"$RAW"
}
limits() { # when
  echo "bench/transactions.sh: limits ($1)" >&2
  timeout "$STEP_SECONDS" "$RILL" bench limits --dir "$WORK" --disk-mib 512 >"$WORK/limits-$1"
}

limits before
common=(--partitions 1 --records "$RECORDS" --record-size 100 --linger-ms 5 --batch-bytes 1000000 --acks all)
run "produce, acks=all, no transactions" produce --topic plain "${common[@]}"
run "produce, transactions of 100 records" produce --topic txn-100 "${common[@]}" \
  --transactional-id bench-txn-100 --records-per-transaction 100
run "produce, transactions of 1,000 records" produce --topic txn-1000 "${common[@]}" \
  --transactional-id bench-txn-1000 --records-per-transaction 1000
for topic in txn-100 txn-1000; do
  for level in read_uncommitted read_committed; do
    run "consume $topic, $level" consume --topic "$topic" --records "$RECORDS" --isolation-level "$level"
  done
done
run "consume plain, read_uncommitted" consume --topic plain --records "$RECORDS" --isolation-level read_uncommitted
kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=
limits after
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
busy_after=$(busiest)

{
  echo "### bench/transactions.sh, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- Source $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown); $("$RILL" --version); one \`rill serve\` (default settings, fresh data dir on $(df -T "$WORK" | awk 'NR==2 {print $2 " on " $1}'))"
  echo "- Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr)"
  echo "- Load average (1, 5, 15 min): $load_before before, $load_after after"
  echo "- Busiest processes over one second before the workloads (%CPU of one core):"
  echo "$busy_before"
  echo "- during them, every 10 s:"
  cat "$WORK/busy"
  echo "- and after them:"
  echo "$busy_after"
  echo
  for when in before after; do
    echo "Limits $when the workloads (\`rill bench limits --disk-mib 512\` on the data dir's disk):"
    echo
    sed 's/^/    /' "$WORK/limits-$when"
    echo
  done
  python3 - "$RAW" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
produce = [r for r in rows if r.get("mode") == "produce"]
base = produce[0]["records_per_sec"] if produce else None
ms = lambda d, k: f"{d[k]:.2f}" if d else "–"
print("| workload | records | records/s | vs acks=all | MB/s | record p50 / p99 ms "
      "| transactions | commit p50 / p99 ms | EndTxn p50 / p99 ms |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in produce:
    lat, commit, end = r.get("latency_ms"), r.get("commit_latency_ms"), r.get("end_txn_latency_ms")
    print(f"| {r['name']} | {r['records']:,} | {r['records_per_sec']:,.0f} "
          f"| {100 * r['records_per_sec'] / base:.0f}% | {r['mb_per_sec']:,.1f} "
          f"| {ms(lat, 'p50')} / {ms(lat, 'p99')} | {r.get('transactions', '–')} "
          f"| {ms(commit, 'p50')} / {ms(commit, 'p99')} | {ms(end, 'p50')} / {ms(end, 'p99')} |")
print()
print("| consume | records | records/s | MB/s |")
print("|---|---:|---:|---:|")
for r in (r for r in rows if r.get("mode") == "consume"):
    print(f"| {r['name']} | {r['records']:,} | {r['records_per_sec']:,.0f} | {r['mb_per_sec']:,.1f} |")
print()
print("Record latency: `send` to delivery report. Commit: the transaction's last `send` to "
      "`commit_transaction`'s return; EndTxn: `commit_transaction` alone, once every record "
      "of the transaction was acknowledged. MB/s: record values (10^6 bytes/s).")
PY
  echo
  warnings=$(grep -cE 'WARN|ERROR' "$WORK/rill.log" || true)
  echo "Broker log: $warnings WARN/ERROR lines$([ "$warnings" -gt 0 ] && echo '; the first 20:')"
  grep -E 'WARN|ERROR' "$WORK/rill.log" | head -20 | sed 's/^/    /' || true
} | tee "$OUT"
echo "bench/transactions.sh: wrote $OUT and $RAW" >&2
