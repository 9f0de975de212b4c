#!/usr/bin/env bash
# Make sure a RabbitMQ answers at AMQPTASKS_BROKER_URL (default amqp://guest:guest@127.0.0.1:5672/%2F).
# Order: already answering -> done; rabbitmq-server installed -> start detached; a Docker engine ->
# run a pinned image; root with apt-get -> install Debian's rabbitmq-server; else fail with advice.
# Enables the management plugin where it can (the topology diff reads arguments from it).
set -euo pipefail

URL="${AMQPTASKS_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672/%2F}"
IMAGE="rabbitmq:3.13.7-management"
hostport="${URL#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
HOST="${hostport%%:*}"; PORT="${hostport##*:}"; [ "$PORT" = "$HOST" ] && PORT=5672
[ "$HOST" = "localhost" ] && HOST=127.0.0.1

say() { echo "rabbitmq.sh: $*" >&2; }
answers() { timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$PORT" 2>/dev/null; }
wait_answers() {
  for _ in $(seq 1 120); do answers && return 0; sleep 0.5; done
  return 1
}
enable_management() {
  if command -v rabbitmq-plugins >/dev/null 2>&1; then
    rabbitmq-plugins enable --quiet rabbitmq_management >/dev/null 2>&1 \
      && say "management plugin enabled" || say "management plugin not enabled (the topology diff will use declare probes)"
  fi
}
start_local() {
  say "starting rabbitmq-server"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  rabbitmqctl await_startup --timeout 60 >/dev/null 2>&1 || true
  wait_answers
}

if answers; then
  enable_management
  exit 0
fi
if command -v rabbitmq-server >/dev/null 2>&1; then
  start_local && { enable_management; say "broker ready at $HOST:$PORT"; exit 0; }
  say "rabbitmq-server did not come up; see /var/log/rabbitmq/"; exit 1
fi
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  say "running $IMAGE in Docker"
  docker run -d --rm --name amqptasks-rabbitmq -p "$PORT:5672" -p 15672:15672 "$IMAGE" >/dev/null
  wait_answers && { say "broker ready at $HOST:$PORT"; exit 0; }
  say "the container did not answer on $PORT"; exit 1
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  say "installing Debian's rabbitmq-server"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  start_local && { enable_management; say "broker ready at $HOST:$PORT"; exit 0; }
  say "rabbitmq-server was installed but did not come up"; exit 1
fi
say "no broker at $HOST:$PORT and no way to start one here."
say "Install RabbitMQ (apt-get install rabbitmq-server), start Docker, or set AMQPTASKS_BROKER_URL to a running broker."
exit 1
