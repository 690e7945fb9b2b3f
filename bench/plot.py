"""The bench's PNG: one panel per workload, the two systems side by side.

python -m bench.plot bench/results/<date>.json   # redraw <date>.png from a report
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLORS = {"chatlab": "#4C72B0", "socketio": "#DD8452"}
LABELS = {"chatlab": "ChatLab", "socketio": "python-socketio"}

# (title, [(workload, metric key, bar label)], y label)
PANELS = [
    ("W1 fan-out: server CPU per delivery", [("W1", "cpu_us_per_delivery", "")], "µs per delivery (lower is better)"),
    (
        "W1 / W2 latency",
        [
            ("W1", "p50_ms", "W1 p50"),
            ("W1", "p99_ms", "W1 p99"),
            ("W2", "p50_ms", "W2 p50"),
            ("W2", "p99_ms", "W2 p99"),
        ],
        "ms, end to end (lower is better)",
    ),
    ("W3 idle: memory per connection", [("W3", "kb_per_connection", "")], "KB RSS per connection (lower is better)"),
    ("W4 scale: connections held on one node", [("W4", "max_held", "")], "connections (higher is better)"),
]


def _value(report: dict[str, Any], workload: str, system: str, key: str) -> float | None:
    outcome = report["results"].get(workload, {}).get(system)
    if not outcome or outcome.get("error"):
        return None
    value = outcome["metrics"].get(key)
    return float(value) if isinstance(value, int | float) else None


def render(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = report["systems"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    width = 0.8 / max(1, len(names))
    for ax, (title, series, ylabel) in zip(axes.flat, PANELS, strict=True):
        for i, system in enumerate(names):
            xs, heights, labels = [], [], []
            for x, (workload, key, _) in enumerate(series):
                value = _value(report, workload, system, key)
                xs.append(x + (i - (len(names) - 1) / 2) * width)
                heights.append(value or 0.0)
                labels.append("n/a" if value is None else f"{value:,.4g}")
            bars = ax.bar(xs, heights, width, color=COLORS.get(system), label=LABELS.get(system, system))
            ax.bar_label(bars, labels=labels, fontsize=8, padding=2)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xticks(range(len(series)), [label for _, _, label in series], fontsize=8)
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    cpu = report["machine"]["cpu"]
    fig.suptitle(
        f"ChatLab vs python-socketio - {report['date'][:10]} - {report['machine']['cores']} cores, {cpu}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(report: dict[str, Any]) -> str:
    """The report's table as Markdown, for docs/benchmarks.md."""
    names = [LABELS.get(s, s) for s in report["systems"]]
    header = ["workload", "metric", *names, "ratio" if len(names) == 2 else "", "better"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in report["table"]]
    return "\n".join(lines)


if __name__ == "__main__":
    source = Path(sys.argv[1])
    report = json.loads(source.read_text())
    print(render(report, source.with_suffix(".png")))
    print(markdown(report))
