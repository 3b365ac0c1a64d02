#!/usr/bin/env bash
# Run every benchmark scenario (receipt-streams bench all): against KAFKA_BOOTSTRAP_SERVERS, or
# a local single-node Kafka started here for the run and stopped after it. Extra arguments go to
# `receipt-streams bench` (e.g. scripts/bench.sh fold --receipts 100000); results land in
# bench-results/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-tools.sh

if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  state=$(mktemp -d)
  python3 deploy/local-kafka/kafka.py start --state-dir "$state"
  KAFKA_BOOTSTRAP_SERVERS=$(cat "$state/bootstrap")
  export KAFKA_BOOTSTRAP_SERVERS
  trap 'python3 deploy/local-kafka/kafka.py stop --state-dir "$state"; rm -rf "$state"' EXIT
fi
if [ $# -eq 0 ]; then set -- all; fi
.venv/bin/receipt-streams bench "$@"
