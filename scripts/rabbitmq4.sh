#!/usr/bin/env bash
# A RabbitMQ 4.x node beside the host's broker, for the RabbitMQ 4 test run (no Docker engine needed).
#   AMQP 127.0.0.1:5673 (guest/guest), management http://127.0.0.1:15673, node rabbit4@localhost,
#   its own epmd on 127.0.0.1:4373; Debian 13's rabbitmq-server (4.0.x, Erlang 27) in a chroot.
# Configured as RabbitMQ 4.3 behaves by default: transient non-exclusive queues and global QoS denied.
# Idempotent: each step is skipped when done; "stop" stops only this node and its epmd.
#
# A node that is not running starts from empty data: with transient non-exclusive queues denied,
# RabbitMQ 4.0.5 counts every queue as one at boot and refuses to start once any queue exists
# (rabbitmq-server#12802, fixed by #12840; measured). It is a test broker: nothing in it is kept.
#
# Usage: scripts/rabbitmq4.sh [start|stop|status|env|ctl ARGS...]
#   env: the variables that point the test suite at this node (eval "$(scripts/rabbitmq4.sh env)")
# Where a Docker engine answers, use AMQPTASKS_TEST_URL with a rabbitmq:4 container instead.
set -euo pipefail

ROOT=${AMQPTASKS_RABBITMQ4_ROOT:-/opt/amqptasks-rabbitmq4}
MIRROR=${MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
NODE=rabbit4@localhost
say() { echo "rabbitmq4.sh: $*" >&2; }

in_root() { chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
ctl() { in_root rabbitmqctl -n "$NODE" "$@"; }
installed() { [[ -x "$ROOT/usr/sbin/rabbitmq-server" ]]; }

mount_all() {
    mountpoint -q "$ROOT/proc"    || mount -t proc proc "$ROOT/proc"
    mountpoint -q "$ROOT/sys"     || mount -t sysfs sys "$ROOT/sys"
    mountpoint -q "$ROOT/dev"     || mount --bind /dev "$ROOT/dev"
    mountpoint -q "$ROOT/dev/pts" || mount --bind /dev/pts "$ROOT/dev/pts"
}

stop_node() {
    installed || return 0
    mount_all
    ctl stop >/dev/null 2>&1 || true
    for pid in $(pgrep -x epmd || true); do   # only this node's epmd (port 4373), by PID
        if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx 'ERL_EPMD_PORT=4373'; then kill "$pid"; fi
    done
    for _ in $(seq 1 30); do   # the node's processes (wrapper, su, beam, helpers) gone
        local left=0
        for p in /proc/[0-9]*; do [[ "$(readlink "$p/root" 2>/dev/null)" == "$ROOT" ]] && left=1 && break; done
        [[ $left == 0 ]] && break
        sleep 1
    done
    # unmount: a bind-mounted /dev under $ROOT makes "rm -rf $ROOT" dangerous
    for m in dev/pts dev sys proc; do mountpoint -q "$ROOT/$m" && umount "$ROOT/$m"; done
    say "stopped $NODE"
}

case "${1:-start}" in
    stop) stop_node; exit 0 ;;
    status) installed && mount_all && ctl status; exit ;;
    env) echo "export AMQPTASKS_TEST_URL='amqp://guest:guest@127.0.0.1:5673/%2F'"
         echo "export AMQPTASKS_TEST_MGMT_URL='http://guest:guest@127.0.0.1:15673'"
         echo "export AMQPTASKS_TEST_CTL='$(cd "$(dirname "$0")" && pwd)/rabbitmq4.sh ctl'"
         exit 0 ;;
    ctl) shift; mount_all; ctl "$@"; exit ;;
    start) ;;
    *) echo "usage: $0 [start|stop|status|env|ctl ARGS...]" >&2; exit 2 ;;
esac

[[ "$(id -u)" == 0 ]] || { say "needs root (chroot, mount); or point AMQPTASKS_TEST_URL4 at a RabbitMQ 4 broker"; exit 1; }

# 1. a minimal Debian 13 (once)
if [[ ! -x "$ROOT/usr/bin/apt-get" ]]; then
    command -v debootstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
    say "debootstrap trixie into $ROOT (once, a few minutes)"
    debootstrap --variant=minbase trixie "$ROOT" "$MIRROR" >/tmp/amqptasks-debootstrap.log 2>&1 \
        || { tail -20 /tmp/amqptasks-debootstrap.log >&2; exit 1; }
fi
mount_all
cp -f /etc/resolv.conf "$ROOT/etc/resolv.conf"

# 2. rabbitmq-server 4.0.x inside; policy-rc.d keeps the package from starting a service
if ! installed; then
    printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"; chmod +x "$ROOT/usr/sbin/policy-rc.d"
    say "installing rabbitmq-server in the chroot (once)"
    in_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive in_root apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
fi

# 3. configuration: other ports, own node name and epmd; 4.3's deprecated-feature defaults
cat > "$ROOT/etc/rabbitmq/rabbitmq-env.conf" <<'CONF'
NODENAME=rabbit4@localhost
NODE_PORT=5673
DIST_PORT=25673
ERL_EPMD_PORT=4373
ERL_EPMD_ADDRESS=127.0.0.1
CONF
cat > "$ROOT/etc/rabbitmq/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:5673
management.tcp.port = 15673
management.tcp.ip = 127.0.0.1
loopback_users.guest = true
deprecated_features.permit.transient_nonexcl_queues = false
deprecated_features.permit.global_qos = false
CONF
echo '[rabbitmq_management].' > "$ROOT/etc/rabbitmq/enabled_plugins"

# 4. start it unless it answers
if ctl await_startup --timeout 2 >/dev/null 2>&1; then
    say "$NODE already running"
else
    in_root mkdir -p /var/log/rabbitmq /var/lib/rabbitmq
    rm -rf "$ROOT/var/lib/rabbitmq/mnesia"   # empty data: see the note at the top
    in_root chown rabbitmq:rabbitmq /var/log/rabbitmq /var/lib/rabbitmq
    # Debian's wrapper runs the node as user rabbitmq in the foreground: detach it
    setsid nohup chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        /usr/sbin/rabbitmq-server > /tmp/amqptasks-rabbitmq4.out 2>&1 < /dev/null &
    say "starting $NODE"
    for _ in $(seq 1 120); do ctl await_startup --timeout 5 >/dev/null 2>&1 && break; sleep 1; done
    ctl await_startup --timeout 30 >/dev/null
fi
for _ in $(seq 1 30); do
    curl -fsu guest:guest http://127.0.0.1:15673/api/overview >/dev/null 2>&1 && break
    sleep 1
done
say "$(curl -fsu guest:guest http://127.0.0.1:15673/api/overview | python3 -c \
    'import json,sys; d=json.load(sys.stdin); print("ready:", d["rabbitmq_version"], "Erlang", d["erlang_version"], "on 127.0.0.1:5673")')"
