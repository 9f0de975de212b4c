"""Encoding cost A/B: task bodies and results of two checkouts of amqptasks, side by side.

Usage: ``python scripts/bench_encode.py --a /path/to/old/checkout --b . [--repeats 7]``

Each repeat runs both checkouts (interleaved, each in a fresh interpreter with its tree first on
``sys.path``) over the same payloads: the common small send ``add.delay(3, 4)``, a mixed body with
containers, a 1,000-int list, and a small result. Prints the fastest ns per encode seen over all
repeats (the least disturbed by other load on a shared machine) and B/A.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, timeit
sys.path.insert(0, sys.argv[1])
from amqptasks.core import envelope
assert envelope.__file__.startswith(sys.argv[1]), envelope.__file__
CASES = {
    "small args (3, 4)": ((3, 4), {}),
    "mixed args": (("hello", 1.5, {"a": [1, 2, 3], "b": None}, [0.5, 2.5]), {"x": "y", "n": 7}),
    "1000-int list": ((list(range(1000)),), {}),
}
out = {}
def send(args, kwargs):
    envelope.encode_new_task("id", "tasks.add", args, kwargs, reply_to=None, priority=None, eta_ms=None,
                             expires_ms=None, extra_headers={})
for name, (args, kwargs) in CASES.items():
    n = 2000 if "1000" in name else 50000
    out[name] = min(timeit.repeat(lambda: send(args, kwargs), number=n, repeat=5)) / n * 1e9
make = getattr(envelope, "checked_success", None)
def result():
    outcome = make("id", "tasks.add", {"sum": 7, "parts": [3, 4]}) if make else envelope.success("id", {"sum": 7, "parts": [3, 4]})
    envelope.encode_result(outcome)
out["result {sum, parts} (worker: outcome + encode)"] = min(timeit.repeat(result, number=50000, repeat=5)) / 50000 * 1e9
print(json.dumps(out))
"""


def run(tree: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(tree.resolve())], check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=Path, required=True, help="checkout A (e.g. the code before a change)")
    parser.add_argument("--b", type=Path, default=Path("."), help="checkout B (default: this one)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"a": [], "b": []}
    for _ in range(args.repeats):
        runs["a"].append(run(args.a))
        runs["b"].append(run(args.b))
    print(f"{'case':50} {'A ns':>9} {'B ns':>9} {'B/A':>6}")
    for case in runs["a"][0]:
        a = min(r[case] for r in runs["a"])
        b = min(r[case] for r in runs["b"])
        print(f"{case:50} {a:9.0f} {b:9.0f} {b / a:6.2f}")


if __name__ == "__main__":
    main()
