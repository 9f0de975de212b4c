#!/usr/bin/env bash
# The Celery quickstart, end to end on amqptasks: a broker, a worker started with -A tasks, and the
# "python shell" session (add.delay(3, 4) -> 7, add(3, 4), apply_async), then the worker's log.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
./scripts/rabbitmq.sh

cd examples/quickstart
log="$(mktemp -t amqptasks-worker.XXXXXX)"
amqptasks worker -A tasks --queues celery --processes 1 >"$log" 2>&1 &
worker=$!
stop_worker() {
  kill -TERM "$worker" 2>/dev/null || true
  wait "$worker" 2>/dev/null || true
}
trap stop_worker EXIT
for _ in $(seq 1 100); do
  grep -q "consuming from" "$log" && break
  kill -0 "$worker" 2>/dev/null || { cat "$log"; echo "quickstart: the worker exited" >&2; exit 1; }
  sleep 0.1
done
grep -q "consuming from" "$log" || { cat "$log"; echo "quickstart: the worker did not start" >&2; exit 1; }

echo "== python session"
python session.py
stop_worker
trap - EXIT
echo
echo "== worker log"
cat "$log"
rm -f "$log"
