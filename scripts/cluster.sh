#!/usr/bin/env bash
# A private 3-node RabbitMQ cluster for amqptasks' cluster tests (tests/faults/test_cluster.py),
# from the host's RabbitMQ binaries, beside the shared broker (rabbit@localhost, 5672), which is
# never read nor touched:
#   c1@localhost  AMQP 127.0.0.1:5681  mgmt 15681  dist 25691
#   c2@localhost  AMQP 127.0.0.1:5682  mgmt 15682  dist 25692
#   c3@localhost  AMQP 127.0.0.1:5683  mgmt 15683  dist 25693
# Data, logs and the Erlang cookie live under $AMQPTASKS_CLUSTER_DIR (default /tmp/amqptasks-cluster);
# the nodes register with a private epmd on 127.0.0.1:$AMQPTASKS_CLUSTER_EPMD (default 4391).
#
# Usage: scripts/cluster.sh [start]       start missing nodes, join c2/c3 to c1 (idempotent)
#        scripts/cluster.sh stop          stop the three nodes, then our private epmd (by PID)
#        scripts/cluster.sh start cN      start one node (again) and wait until it runs
#        scripts/cluster.sh ctl cN ARGS   rabbitmqctl -n cN@localhost ARGS
#        scripts/cluster.sh queues cN ARGS  rabbitmq-queues -n cN@localhost ARGS
#        scripts/cluster.sh urls          the three AMQP URLs, ';'-joined (AMQPTASKS_BROKER_URL)
set -euo pipefail

BASE=${AMQPTASKS_CLUSTER_DIR:-/tmp/amqptasks-cluster}
EPMD_PORT=${AMQPTASKS_CLUSTER_EPMD:-4391}
NODES=(c1 c2 c3)
# Debian's /usr/sbin/rabbitmq-* wrappers re-run as user rabbitmq when called by root, and that user
# cannot read our data dir: use the real scripts.
BIN=/usr/lib/rabbitmq/bin
[[ -x "$BIN/rabbitmq-server" ]] || BIN=$(dirname "$(readlink -f "$(command -v rabbitmq-server)")")
[[ -x "$BIN/rabbitmq-server" ]] || { echo "rabbitmq-server not found: install it (./scripts/rabbitmq.sh)" >&2; exit 1; }

mkdir -p "$BASE"
export HOME="$BASE"              # the Erlang cookie that the nodes and our CLI calls share
export ERL_EPMD_PORT="$EPMD_PORT" ERL_EPMD_ADDRESS=127.0.0.1
# an empty env file: /etc/rabbitmq/rabbitmq-env.conf (NODENAME=rabbit@localhost) must not be read
export RABBITMQ_CONF_ENV_FILE="$BASE/rabbitmq-env.conf"
: > "$RABBITMQ_CONF_ENV_FILE"
if [[ ! -f "$BASE/.erlang.cookie" ]]; then
    head -c 24 /dev/urandom | base64 | tr -dc A-Za-z0-9 > "$BASE/.erlang.cookie"
    chmod 400 "$BASE/.erlang.cookie"
fi

ctl()    { local n=$1; shift; "$BIN/rabbitmqctl" -n "$n@localhost" "$@"; }
queues() { local n=$1; shift; "$BIN/rabbitmq-queues" -n "$n@localhost" "$@"; }

check_node() {
    case "$1" in c1|c2|c3) ;; *) echo "no node $1: use c1, c2 or c3" >&2; exit 2 ;; esac
}

node_env() {  # cN -> the environment of its server (written to its own config files)
    local n=$1 i=${1#c}
    local dir="$BASE/$n"
    mkdir -p "$dir/mnesia" "$dir/log"
    cat > "$dir/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:568$i
management.tcp.port = 1568$i
management.tcp.ip = 127.0.0.1
loopback_users.guest = true
cluster_partition_handling = pause_minority
log.console = false
EOF
    echo '[rabbitmq_management].' > "$dir/enabled_plugins"
    # the delay cascade's quorum queues dead-letter at least once: see docs/reliability.md
    echo '[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 10000}]}].' > "$dir/advanced.config"
    echo RABBITMQ_NODENAME="$n@localhost" RABBITMQ_NODE_PORT="568$i" RABBITMQ_DIST_PORT="2569$i" \
        RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_PID_FILE="$dir/node.pid" \
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
}

# the Erlang node is up (its app may be stopped: "ping" answers, "await_startup" does not)
running() { "$BIN/rabbitmq-diagnostics" -n "$1@localhost" -q ping >/dev/null 2>&1; }
app_up()  { ctl "$1" await_startup --timeout 1 >/dev/null 2>&1; }

launch_node() {  # start the node (or only its app) without waiting for it
    local n=$1
    if running "$n"; then
        app_up "$n" || ctl "$n" start_app >/dev/null
    else
        local vars; vars=$(node_env "$n")
        # -detached returns at once; the node registers with epmd a few seconds later
        (cd "$BASE/$n" && env $vars "$BIN/rabbitmq-server" -detached >/dev/null 2>&1)
    fi
}

wait_node() {
    local n=$1
    for _ in $(seq 1 60); do running "$n" && break; sleep 1; done
    # a restarted member waits for its peers' tables: start them all first, then wait
    ctl "$n" await_startup --timeout 300 >/dev/null
    echo "$n@localhost up (AMQP 127.0.0.1:568${n#c})"
}

stop_epmd() {  # only our private epmd, found by its port in its environment, by PID
    local pid
    for pid in $(pgrep -x epmd || true); do
        if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx "ERL_EPMD_PORT=$EPMD_PORT"; then
            kill "$pid" && echo "private epmd ($EPMD_PORT) stopped"
        fi
    done
}

case "${1:-start}" in
    ctl)    shift; check_node "${1:-}"; ctl "$@"; exit ;;
    queues) shift; check_node "${1:-}"; queues "$@"; exit ;;
    urls)   echo "amqp://guest:guest@127.0.0.1:5681/%2F;amqp://guest:guest@127.0.0.1:5682/%2F;amqp://guest:guest@127.0.0.1:5683/%2F"; exit ;;
    stop)
        for n in "${NODES[@]}"; do
            if running "$n"; then ctl "$n" stop >/dev/null && echo "$n stopped"; fi
        done
        stop_epmd
        exit ;;
    start)
        if [[ -n "${2:-}" ]]; then check_node "$2"; launch_node "$2"; wait_node "$2"; exit; fi ;;
    *) echo "usage: $0 [start [cN]|stop|ctl cN ...|queues cN ...|urls]" >&2; exit 2 ;;
esac

for n in "${NODES[@]}"; do launch_node "$n"; done
for n in "${NODES[@]}"; do wait_node "$n"; done
for n in c2 c3; do
    if ! ctl c1 cluster_status --formatter json 2>/dev/null | grep -q "\"$n@localhost\""; then
        # RabbitMQ 3.10 logs harmless warnings while a node joins: kept in join.log, shown on failure
        if ! { ctl "$n" stop_app && ctl "$n" reset && ctl "$n" join_cluster c1@localhost && ctl "$n" start_app \
               && ctl "$n" await_startup --timeout 60; } >"$BASE/join-$n.log" 2>&1; then
            cat "$BASE/join-$n.log" >&2; echo "$n could not join c1" >&2; exit 1
        fi
        echo "$n joined c1"
    fi
done
ctl c1 cluster_status --formatter json | python3 -c \
    'import json,sys; d=json.load(sys.stdin); print("running nodes:", " ".join(sorted(d["running_nodes"])))'
