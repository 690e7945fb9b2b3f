"""The bench's PNG: one small panel for every row of the table, each system a bar.

python -m bench.plot bench/results/<date>.json   # redraw <date>.png from a report
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COLORS = {"chatlab": "#4C72B0", "socketio": "#DD8452", "channels": "#55A868"}
LABELS = {"chatlab": "ChatLab", "socketio": "python-socketio", "channels": "Django Channels"}
COLUMNS = 4


def _number(cell: str) -> float | None:
    try:
        return float(cell.replace(",", ""))
    except ValueError:
        return None


@dataclass(frozen=True)
class Panel:
    """One row of the table: its title, each system's figure (None: no number) and label."""

    title: str
    values: list[float | None]
    labels: list[str]
    better: str


def panels(report: dict[str, Any]) -> list[Panel]:
    """One panel for every row of `report["table"]`, the figures as printed."""
    count = len(report["systems"])
    out = []
    for row in report["table"]:
        workload, label, cells, better = row[0], row[1], row[2 : 2 + count], row[-1]
        values = [_number(cell) for cell in cells]
        labels = ["n/a" if cell == "-" else cell for cell in cells]
        out.append(Panel(f"{workload.split()[0]}: {label}", values, labels, better))
    return out


def render(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = report["systems"]
    shown = panels(report)
    lines = max(1, math.ceil(len(shown) / COLUMNS))
    fig, axes = plt.subplots(lines, COLUMNS, figsize=(3.4 * COLUMNS, 2.5 * lines), squeeze=False)
    for ax, panel in zip(axes.flat, shown, strict=False):
        bars = ax.bar(range(len(names)), [v or 0.0 for v in panel.values], color=[COLORS.get(n, "grey") for n in names])
        ax.bar_label(bars, labels=panel.labels, fontsize=7, padding=2)
        ax.set_title(panel.title, fontsize=8)
        ax.set_xticks(range(len(names)), [LABELS.get(n, n) for n in names], fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.text(
            0.99,
            0.97,
            f"{panel.better} is better",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=6,
            color="grey",
        )
        ax.margins(y=0.25)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    machine = report["machine"]
    fig.suptitle(
        f"{' vs '.join(LABELS.get(n, n) for n in names)} - {report['date'][:10]} - "
        f"{machine['cores']} cores, {machine['cpu']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def markdown(report: dict[str, Any]) -> str:
    """The report's table as Markdown, for docs/benchmarks.md."""
    header = report["header"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in report["table"]]
    return "\n".join(lines)


if __name__ == "__main__":
    source = Path(sys.argv[1])
    report = json.loads(source.read_text())
    print(render(report, source.with_suffix(".png")))
    print(markdown(report))
