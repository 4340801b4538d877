#!/usr/bin/env bash
# Runs every test rill has. This is the README's test command and what CI runs.
# It installs what the tests need on a fresh machine first.
set -euo pipefail
cd "$(dirname "$0")"

# The Rust toolchain comes from rustup; make sure the components the checks use are there.
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

# kcat (Debian's, on librdkafka 2.0) is the second real client the end-to-end
# tests drive (crates/rill-cli/tests/kcat_e2e.rs). The rdkafka crate builds its
# own librdkafka from source and needs only gcc and make, which the machine has.
if ! command -v kcat >/dev/null 2>&1; then
  echo "== installing kcat"
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && apt-get install -y -qq kcat >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq kcat >/dev/null
  fi
fi

# nftables and iproute2 give rill-chaos its network namespace and its
# partitions (crates/rill-chaos/tests/bounded_run.rs runs a partition case
# as root; without them it is skipped, saying why).
for tool in nft:nftables ip:iproute2; do
  if ! command -v "${tool%%:*}" >/dev/null 2>&1; then
    echo "== installing ${tool#*:}"
    if [ "$(id -u)" -eq 0 ]; then
      apt-get update -qq && apt-get install -y -qq "${tool#*:}" >/dev/null
    else
      sudo apt-get update -qq && sudo apt-get install -y -qq "${tool#*:}" >/dev/null
    fi
  fi
done

echo "== format"
cargo fmt --all -- --check

echo "== lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
# rill-chaos's bounded run drives the rill binary, which cargo builds only
# for rill-cli's own tests: build it first.
cargo build -p rill-cli --locked
cargo test --workspace --locked

echo "== client tests (Python: confluent-kafka, kafka-python; Node: kafkajs)"
tests/clients/run.sh

echo "== benchmarks compile"
cargo bench --workspace --locked --no-run

echo "all tests passed"
