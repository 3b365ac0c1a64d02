#!/usr/bin/env bash
# Run a receipt-streams worker. With KAFKA_BOOTSTRAP_SERVERS set, against that cluster;
# otherwise against a local single-node Kafka started here (data kept in .local/kafka) and
# stopped again when the worker stops (Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  state=.local/kafka
  python3 deploy/local-kafka/kafka.py start --state-dir "$state"
  KAFKA_BOOTSTRAP_SERVERS=$(cat "$state/bootstrap")
  export KAFKA_BOOTSTRAP_SERVERS
  trap 'python3 deploy/local-kafka/kafka.py stop --state-dir "$state"' EXIT
fi
export RECEIPT_STREAMS_DATA_DIR=${RECEIPT_STREAMS_DATA_DIR:-.local/worker}
if [ -z "${RECEIPT_STREAMS_TOKENS_FILE:-}${RECEIPT_STREAMS_HOMESERVER_URL:-}" ]; then
  export RECEIPT_STREAMS_TOKENS_FILE=deploy/dev-tokens.json  # alice-token, bob-token
  export RECEIPT_STREAMS_SERVER_NAME=${RECEIPT_STREAMS_SERVER_NAME:-localhost}
fi
echo "receipt-streams worker -> $KAFKA_BOOTSTRAP_SERVERS (HTTP API on port ${RECEIPT_STREAMS_WEB_PORT:-6066})"
.venv/bin/receipt-streams worker &
worker=$!
trap 'kill -TERM $worker 2>/dev/null; wait $worker; python3 deploy/local-kafka/kafka.py stop --state-dir "${state:-.local/kafka}" 2>/dev/null || true' EXIT INT TERM
wait $worker
