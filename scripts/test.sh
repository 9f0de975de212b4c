#!/usr/bin/env bash
# The whole test suite from nothing: venv, dependencies, brokers, then every configuration CI needs.
#   1. ruff and mypy (strict on amqptasks/): zero findings
#   2. RabbitMQ 4.0 (scripts/rabbitmq4.sh, denying what 4.3 denies): unit + integration suites, and
#      the fault scenarios that differ there (broker restart, delays survive, consumer_timeout)
#   3. fast paths off (AMQPTASKS_FAST_PATHS=0, docs/internals.md): the integration suite
#   4. the oldest dependencies allowed (constraints/oldest.txt, scripts/deps.sh): unit + integration
#   5. last, everything on RabbitMQ 3.10 with the newest dependencies allowed (scripts/deps.sh newest,
#      renewed daily): unit, integration, the fault suite and the 3-node cluster scenarios (scripts/cluster.sh)
# With arguments, only pytest runs, with them (e.g. ./scripts/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
./scripts/rabbitmq.sh
if [[ $# -gt 0 ]]; then exec python -m pytest "$@"; fi

step() { printf '\n===== %s\n' "$*"; }
step "ruff and mypy"
ruff check amqptasks tests scripts
mypy

step "RabbitMQ 4: unit and integration"
./scripts/rabbitmq4.sh start
( eval "$(./scripts/rabbitmq4.sh env)"; python -m pytest -q tests/unit tests/integration )
step "RabbitMQ 4: fault scenarios on a private 4.0 node"
AMQPTASKS_FAULTS_RABBITMQ_ROOT=/opt/amqptasks-rabbitmq4 python -m pytest -q \
    tests/faults/test_broker_restart.py tests/faults/test_delays_survive.py tests/faults/test_consumer_timeout.py

step "fast paths off: integration"
AMQPTASKS_FAST_PATHS=0 python -m pytest -q tests/integration

step "oldest dependencies: unit and integration"
./scripts/deps.sh oldest -q tests/unit tests/integration

step "RabbitMQ 3.10, newest dependencies: everything"
exec ./scripts/deps.sh newest
