#!/usr/bin/env bash
# The whole test suite from nothing: venv, dependencies, a running broker, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
./scripts/rabbitmq.sh
exec python -m pytest "$@"
