"""``python -m amqptasks.worker OPTIONS_JSON``: the worker, started without the CLI library.

``amqptasks worker`` parses its options with typer and then replaces itself with this entry point
(exec: same PID, same signals, same cwd). Otherwise typer, click, rich and (typer >= 0.26) pydantic
would stay loaded in the supervisor and in every forked consumer process: an idle 2-process worker
measured 118 MiB RSS summed with them, 93 MiB without.
"""

from __future__ import annotations

import json
import sys

from amqptasks.errors import AmqpTasksError
from amqptasks.exit_codes import EXIT_USAGE, explain


def main(argv: list[str]) -> int:
    """Run ``worker_main`` with the JSON options in ``argv[1]``; an exit code if it fails to start."""
    from amqptasks.worker.command import worker_main

    if len(argv) != 2:
        print("usage: python -m amqptasks.worker OPTIONS_JSON (start workers with: amqptasks worker)", file=sys.stderr)
        return EXIT_USAGE
    try:
        worker_main(json.loads(argv[1]))  # ends as the supervisor (exec)
    except AmqpTasksError as exc:
        lines, code = explain(exc)
        print("\n".join(lines), file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
