#!/usr/bin/env bash
# Run pytest on another set of dependency releases: ./scripts/deps.sh newest|oldest [pytest args]
#   newest: the newest releases pyproject.toml allows (pip picks them; upgraded when the stamp changes)
#   oldest: each direct dependency at its lower bound (constraints/oldest.txt)
# The venv (.venv-newest / .venv-oldest, gitignored) is reused while pyproject.toml and the
# constraints are unchanged (a stamp of their hash, as scripts/_venv.sh does). A release that
# breaks an internal we rely on (docs/internals.md) shows up here, not at a user's.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
set_name="${1:-}"
case "$set_name" in
  newest) constraints=() ;;
  oldest) constraints=(-c "$ROOT/constraints/oldest.txt") ;;
  *) echo "usage: scripts/deps.sh newest|oldest [pytest args...]" >&2; exit 2 ;;
esac
shift
VENV="$ROOT/.venv-$set_name"
# newest: also renewed daily, so a kept venv meets new releases.
day=""; [ "$set_name" = newest ] && day="$(date +%F)"
stamp="$VENV/.installed-$( (cat "$ROOT/pyproject.toml" "$ROOT/constraints/oldest.txt"; echo "$day") | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  # From scratch: an upgrade in place can leave a package the new set no longer wants.
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    ${constraints[@]+"${constraints[@]}"} -e "$ROOT[dev]"
  touch "$stamp"
fi
"$VENV/bin/python" -c 'import importlib.metadata as m; print("deps.sh '"$set_name"':", ", ".join(f"{p} {m.version(p)}" for p in ("pika", "aio-pika", "aiormq", "pamqp", "yarl")))'
exec "$VENV/bin/python" -m pytest "$@"
