"""Experiments only: ``amqptasks worker`` without the typer CLI (typer 0.2x imports pydantic).

    python worker_no_cli.py QUEUE PROCESSES
"""

from __future__ import annotations

import sys

from amqptasks.worker.command import worker_main

if __name__ == "__main__":
    sys.exit(worker_main(app="bench_amqptasks", queues=sys.argv[1], processes=int(sys.argv[2]), threads=8, prefetch=0,
                         broker=None, topology=None, loglevel="warning", grace=30.0, burst=False))
