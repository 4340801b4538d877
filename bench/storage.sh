#!/usr/bin/env bash
# Storage benchmarks of rill-storage: prints the machine, runs
# `cargo bench -p rill-storage --bench log`, and prints a markdown table of
# the results with each log figure as a share of the raw disk baseline
# measured in the same run.
#
# Usage: bench/storage.sh [criterion filter args...]
# Environment:
#   RILL_BENCH_BYTES  bytes per sample (default 1G; e.g. 64M for a quick run)
#   RILL_BENCH_DIR    where files are written (default <target>/tmp/rill-storage-bench);
#                     must be on the disk under test, not a tmpfs
#   CARGO_TARGET_DIR  as usual (default <repo>/target)
# Needs python3 to read criterion's JSON.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
export RILL_BENCH_DIR=${RILL_BENCH_DIR:-$target/tmp/rill-storage-bench}
export RILL_BENCH_BYTES=${RILL_BENCH_BYTES:-1G}
mkdir -p "$RILL_BENCH_DIR"

echo "## Machine"
echo
echo '```'
echo "date:     $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "host:     $(uname -srm)"
echo "cpu:      $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
echo "nproc:    $(nproc)"
echo "rustc:    $(rustc --version)"
echo "source:   $(git rev-parse --short HEAD 2>/dev/null || echo 'no commit'); crates/rill-storage/src sha256 $(cat crates/rill-storage/src/*.rs | sha256sum | cut -c1-12)"
echo "bytes:    $RILL_BENCH_BYTES per sample"
echo "dir:      $RILL_BENCH_DIR"
echo
free -g
echo
df -hT "$RILL_BENCH_DIR"
echo '```'
echo

log=$target/rill-storage-bench.log
mkdir -p "$target"
started=$(date +%s)
echo "Running: RILL_BENCH_BYTES=$RILL_BENCH_BYTES cargo bench -p rill-storage --bench log${*:+ -- $*}" >&2
cargo bench -p rill-storage --bench log ${*:+-- "$@"} 2>&1 | tee "$log" >&2

python3 - "$target/criterion/storage" "$started" "$RILL_BENCH_DIR/sched.jsonl" <<'EOF'
import json, os, statistics, sys

base, started, sched_path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
sched = {}
try:
    with open(sched_path) as f:
        for line in f:
            rec = json.loads(line)
            sched.setdefault(rec["name"], []).append(rec)
except OSError:
    pass

def result(name):
    d = os.path.join(base, name, "new")
    try:
        if os.path.getmtime(os.path.join(d, "sample.json")) < started:
            return None  # left over from an earlier run
        with open(os.path.join(d, "benchmark.json")) as f:
            nbytes = json.load(f)["throughput"]["Bytes"]
        with open(os.path.join(d, "estimates.json")) as f:
            est = json.load(f)
        with open(os.path.join(d, "sample.json")) as f:
            sample = json.load(f)
    except (OSError, KeyError, TypeError):
        return None
    per_sample = [nbytes * i / t for i, t in zip(sample["iters"], sample["times"])]  # bytes/ns = GB/s
    # The last len(per_sample) records are the measured samples (before them: warm-up).
    recs = sched.get(name, [])[-len(per_sample):]
    wall = sum(r["wall_ns"] for r in recs)
    return {
        "on_cpu": sum(r["on_cpu_ns"] for r in recs) / wall if wall else None,
        "cpu_wait": sum(r["run_delay_ns"] for r in recs) / wall if wall else None,
        "bytes": nbytes,
        "mean_s": est["mean"]["point_estimate"] / 1e9,
        "gbps": nbytes / est["mean"]["point_estimate"],
        "median_gbps": nbytes / est["median"]["point_estimate"],
        "min": min(per_sample),
        "max": max(per_sample),
        "cv": statistics.pstdev(per_sample) / statistics.mean(per_sample),
        "n": len(per_sample),
    }

def pct(x):
    return "?" if x is None else f"{x * 100:.0f}%"

def rate(gbps):
    return f"{gbps:.2f} GB/s" if gbps >= 1 else f"{gbps * 1000:.0f} MB/s"

# name, description, baseline, target (kind, value)
rows = [
    ("raw_disk_write", "raw write 64 KiB chunks + fsync at end", None, None),
    ("raw_read", "raw read from page cache, 1 MiB reads", None, None),
    ("append_no_fsync", "Log::append, 64 KiB batches, no fsync", "raw_disk_write", ("share", 0.80)),
    ("append_group_commit_every_mib", "Log::append; another thread flush_until every 1 MiB (group commit)", "raw_disk_write", ("share", 0.50)),
    ("append_fsync_inline_every_mib", "diag: Log::append + flush_until inline every 1 MiB", "raw_disk_write", None),
    ("read_copying", "Log::read_into, 1 MiB max_bytes, page cache", "raw_read", ("abs", 2.0)),
    ("recovery", "Log::open, not clean, log in dirty pages", "raw_read", ("share", 1.00)),
    ("raw_write_no_fsync", "diag: raw write of one batch per write(), no fsync", "raw_disk_write", None),
    ("raw_write_fsync_every_mib", "diag: raw write, fdatasync every 1 MiB", "raw_disk_write", None),
    ("read_regions", "diag: Log::read (no copy), 1 MiB max_bytes", "raw_read", None),
    ("recovery_synced", "diag: Log::open, not clean, segments fsynced before", "raw_read", None),
]
res = {name: result(name) for name, *_ in rows}
print("## Results")
print()
print("GB/s and MB/s are decimal (10^9, 10^6 bytes per second). Throughput is bytes per sample / mean")
print("time per sample; the spread is the slowest and fastest of the samples; CV is their coefficient")
print("of variation. \"on CPU\" and \"CPU wait\" are the benchmark thread's time running and time")
print("runnable but waiting for a CPU (taken by other work on the machine), as shares of the measured")
print("wall time (from /proc/thread-self/schedstat).")
print()
print("| benchmark | what | throughput | median | samples (min – max) | CV | on CPU | CPU wait | share of baseline | target | met? |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
for name, what, baseline, target in rows:
    r = res[name]
    if r is None:
        print(f"| `{name}` | {what} | not run | | | | | | | | |")
        continue
    b = res.get(baseline) if baseline else None
    share = f"{r['gbps'] / b['gbps'] * 100:.0f}% of `{baseline}`" if b else ""
    tgt, met = "", ""
    if target:
        kind, value = target
        if kind == "share":
            tgt = f"≥ {value * 100:.0f}% of `{baseline}`"
            met = ("yes" if r["gbps"] >= value * b["gbps"] else "**no**") if b else "?"
        else:
            tgt = f"≥ {value:g} GB/s"
            met = "yes" if r["gbps"] >= value else "**no**"
    print(f"| `{name}` | {what} | {rate(r['gbps'])} | {rate(r['median_gbps'])} "
          f"| {rate(r['min'])} – {rate(r['max'])} | {r['cv'] * 100:.1f}% "
          f"| {pct(r['on_cpu'])} | {pct(r['cpu_wait'])} | {share} | {tgt} | {met} |")
first = next((r for r in res.values() if r), None)
if first:
    print()
    print(f"{first['n']} samples per benchmark, {first['bytes']:,} bytes per sample (log benchmarks:"
          " whole batches, so slightly under the raw size).")
EOF
