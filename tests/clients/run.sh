#!/usr/bin/env bash
# End-to-end tests of rill with real Kafka clients: confluent-kafka and
# kafka-python (pytest), and kafkajs (node --test: kafkajs.test.mjs, groups.test.mjs,
# cluster.test.mjs, transactions.test.mjs).
#
#   tests/clients/run.sh            # both suites
#   tests/clients/run.sh python     # one suite
#   tests/clients/run.sh node
#
# Installs what it needs (setup.sh), builds the broker unless RILL_BIN names one
# already, and exits non-zero when any test fails. Extra pytest arguments can be
# passed in PYTEST_ARGS (e.g. PYTEST_ARGS="-k offsets -x").
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

suites=("$@")
[ ${#suites[@]} -eq 0 ] && suites=(python node)
for s in "${suites[@]}"; do
  case "$s" in python|node) ;; *) echo "unknown suite: $s (python or node)" >&2; exit 2 ;; esac
done

"$here/setup.sh"

if [ -z "${RILL_BIN:-}" ]; then
  echo "== build rill"
  (cd "$repo" && cargo build -p rill-cli --locked)
  target_dir="${CARGO_TARGET_DIR:-target}"
  case "$target_dir" in /*) ;; *) target_dir="$repo/$target_dir" ;; esac
  RILL_BIN="$target_dir/debug/rill"
fi
[ -x "$RILL_BIN" ] || { echo "RILL_BIN=$RILL_BIN is not an executable" >&2; exit 1; }
RILL_BIN="$(cd "$(dirname "$RILL_BIN")" && pwd)/$(basename "$RILL_BIN")"
export RILL_BIN
echo "using RILL_BIN=$RILL_BIN"

status=0
for s in "${suites[@]}"; do
  case "$s" in
    python)
      echo "== client tests: python (confluent-kafka, kafka-python)"
      # shellcheck disable=SC2086 # PYTEST_ARGS is split on purpose.
      (cd "$here/python" && .venv/bin/python -m pytest ${PYTEST_ARGS:-}) || status=1
      ;;
    node)
      echo "== client tests: node (kafkajs)"
      (cd "$here/node" && node --test --test-concurrency=1 kafkajs.test.mjs groups.test.mjs cluster.test.mjs transactions.test.mjs) || status=1
      ;;
  esac
done
exit $status
