"""Summaries, targets, and the three outputs: results/bench.json, bench.md, bench.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common import median
from scenarios import METRIC, Sample
from systems import IO_CEILING, SCENARIOS, System

# (scenario, amqptasks contender, peer, ratio amqptasks/peer must be >= or <= this). The peer
# CEILING is the I/O-bound scenario's ceiling (64 slots / 10 ms): the ratio is the fraction reached.
CEILING = "ceiling"
TARGETS: list[tuple[str, str, str, str, float]] = [
    ("drain", "at", "dramatiq", ">=", 1.5),
    ("drain", "at", "celery", ">=", 3.0),
    ("drain", "at", "faststream", ">=", 2.0),
    ("drain", "at", "raw_pika", ">=", 0.6),
    ("io", "at", CEILING, ">=", 0.85),
    ("io", "at", "dramatiq", ">=", 1.15),
    ("io", "at_async_def", CEILING, ">=", 0.90),
    ("io", "at_async_def", "taskiq", ">=", 1.3),
    ("rpc", "at_sync", "raw_pika", "<=", 1.3),
    ("rpc", "at_sync", "celery", "<=", 0.4),
    ("publish", "at_async", "raw_aiopika", ">=", 1.0),
    ("publish", "at_async_many", "raw_aiopika", ">=", 1.0),
    ("memory", "at", "dramatiq", "<=", 1.0),
]
EXTRA = {
    "publish": [],
    "drain": [("broker_cpu_pct", "broker CPU %"), ("worker_cpu_pct", "worker CPU %"),
              ("broker_us_per_task", "broker CPU µs/task"), ("worker_us_per_task", "worker CPU µs/task")],
    "io": [("ceiling_pct", "% of ceiling"), ("broker_cpu_pct", "broker CPU %"), ("worker_cpu_pct", "worker CPU %"),
           ("worker_us_per_task", "worker CPU µs/task")],
    "rpc": [("p99_ms", "p99 ms"), ("mean_ms", "mean ms")],
    "memory": [("pss_mb", "PSS MiB"), ("processes", "processes")],
    "delay": [("p99_ms", "p99 ms"), ("max_ms", "max ms"), ("early", "early")],
}


def _value(sample: Sample | None, key: str) -> float | None:
    if not sample or "error" in sample or "skipped" in sample:
        return None
    value = sample.get(key)
    return float(value) if isinstance(value, int | float) else None


def ratio(samples: dict[str, list[Sample]], scenario: str, ours: str, peer: str) -> tuple[float | None, list[float]]:
    """Median over repeats of amqptasks/peer for the scenario's metric, and the per-repeat ratios."""
    key = METRIC[scenario][0]
    if peer == CEILING:
        ratios = [v / IO_CEILING for v in (_value(x, key) for x in samples.get(ours, [])) if v is not None]
        return median(ratios), ratios
    pairs = zip(samples.get(ours, []), samples.get(peer, []), strict=False)
    ratios = [a / b for a, b in ((_value(x, key), _value(y, key)) for x, y in pairs) if a is not None and b]
    return median(ratios), ratios


def summarize(scenario: str, systems: list[System], samples: dict[str, list[Sample]]) -> list[dict[str, Any]]:
    key = METRIC[scenario][0]
    rows = []
    for system in systems:
        runs = samples.get(system.key, [])
        if not runs:  # not selected (--systems)
            continue
        values = [v for v in (_value(s, key) for s in runs) if v is not None]
        notes = sorted({s.get("error") or s.get("skipped") for s in runs if "error" in s or "skipped" in s})
        row: dict[str, Any] = {
            "system": system.key, "label": system.label, "config": system.note, "vs": system.vs,
            "median": median(values), "min": min(values, default=None), "max": max(values, default=None),
            "ok_repeats": len(values), "repeats": len(runs), "notes": notes,
            "extra": {name: median(_value(s, name) for s in runs) for name, _ in EXTRA[scenario]},
        }
        if system.vs:
            row["ratio"], row["ratios"] = ratio(samples, scenario, system.vs, system.key)
        rows.append(row)
    return rows


def judge(samples: dict[str, dict[str, list[Sample]]]) -> list[dict[str, Any]]:
    verdicts = []
    for scenario, ours, peer, op, threshold in TARGETS:
        if scenario not in samples:
            continue
        value, _ = ratio(samples[scenario], scenario, ours, peer)
        met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        verdicts.append({"scenario": scenario, "ours": ours, "peer": peer, "target": f"{op} {threshold}",
                         "ratio": value, "met": met})
    return verdicts


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _load(values: Any) -> str:
    return " / ".join(f"{v:.1f}" for v in values) if values else "?"


def markdown(meta: dict[str, Any], summary: dict[str, list[dict[str, Any]]], verdicts: list[dict[str, Any]]) -> str:
    lines = [f"# amqptasks benchmark — {meta['date']}", "", f"`{meta['command']}`", "",
             f"{meta['machine']} (broker {meta.get('broker', '?')}); {meta['repeats']} interleaved repeats after a warm-up round; "
             "ratio = median over repeats of (amqptasks / peer) for the scenario's figure.", "",
             (f"Load average (1, 5, 15 min) before: {_load(meta.get('loadavg_before'))}, after: {_load(meta.get('loadavg_after'))} "
              "(other work on the machine shows here; absolute figures move with it, ratios less)."), ""]
    for scenario, rows in summary.items():
        _key, unit, higher = METRIC[scenario]
        extras = EXTRA[scenario]
        lines += [f"## {scenario} ({meta['sizes'][scenario]})", "",
                  "| system | configuration | " + unit + " (median) | min–max | amqptasks/peer | vs | "
                  + " | ".join(label for _, label in extras) + (" |" if extras else "") + " notes |",
                  "|---|---|---:|---:|---:|---|" + "---:|" * len(extras) + "---|"]
        digits = 0 if higher else 1
        for row in rows:
            ratio_text = _fmt(row.get("ratio"), 2) + ("×" if row.get("ratio") is not None else "") if row["vs"] else ""
            cells = [row["label"], row["config"], _fmt(row["median"], digits),
                     f"{_fmt(row['min'], digits)}–{_fmt(row['max'], digits)}" if row["median"] is not None else "–", ratio_text, row["vs"] or "",
                     *(_fmt(row["extra"][name], 1) for name, _ in extras), "; ".join(row["notes"])[:160]]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Targets", "", "| scenario | amqptasks / peer | target | measured | met |", "|---|---|---|---:|---|"]
    for v in verdicts:
        met = {True: "yes", False: "**no**", None: "n/a"}[v["met"]]
        lines.append(f"| {v['scenario']} | {v['ours']} / {v['peer']} | {v['target']} | {_fmt(v['ratio'], 2)} | {met} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(summary), 1, figsize=(9, 2.2 + 3.0 * len(summary)), squeeze=False)
    for ax, (scenario, rows) in zip(axes[:, 0], summary.items(), strict=True):
        _key, unit, higher = METRIC[scenario]
        rows = [r for r in rows if r["median"] is not None]
        labels = [r["label"] for r in rows]
        values = [r["median"] for r in rows]
        errors = [[v - r["min"] for v, r in zip(values, rows, strict=True)],
                  [r["max"] - v for v, r in zip(values, rows, strict=True)]]
        colors = ["tab:green" if r["system"].startswith("at") else "tab:gray" for r in rows]
        ax.barh(labels, values, xerr=errors, color=colors, capsize=3)
        ax.invert_yaxis()
        if values and min(values) > 0 and max(values) / min(values) > 50:
            ax.set_xscale("log")  # e.g. delay lateness: 2 ms beside 500 ms
        ax.set_title(f"{scenario}: {unit} ({'higher' if higher else 'lower'} is better; bars = median, whiskers = min–max)",
                     fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results_dir: Path, meta: dict[str, Any], samples: dict[str, dict[str, list[Sample]]]) -> dict[str, Any]:
    results_dir.mkdir(parents=True, exist_ok=True)
    summary = {s: summarize(s, SCENARIOS[s], samples[s]) for s in samples}
    verdicts = judge(samples)
    data = {"meta": meta, "summary": summary, "targets": verdicts, "samples": samples}
    (results_dir / "bench.json").write_text(json.dumps(data, indent=1, default=str))
    (results_dir / "bench.md").write_text(markdown(meta, summary, verdicts))
    if summary:
        plot(summary, results_dir / "bench.png")
    return data
