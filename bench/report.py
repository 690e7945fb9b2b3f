"""What a run prints and keeps: the table, the machine it ran on, the JSON report and
the checks a smoke run must pass."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench import loadgen, systems
from bench.workloads import Outcome, Sizes

SYSTEM_NAMES = ("chatlab", "socketio", "channels")
LABELS = {"chatlab": "ChatLab", "socketio": "python-socketio", "channels": "Django Channels"}
TITLES = {"W1": "W1 fan-out", "W2": "W2 light", "W3": "W3 idle", "W4": "W4 scale", "W5": "W5 reconnect storm"}
PACKAGES = (
    "quart",
    "hypercorn",
    "uvloop",
    "orjson",
    "redis",
    "hiredis",
    "python-socketio",
    "python-engineio",
    "django",
    "channels",
    "channels-redis",
    "msgpack",
    "uvicorn",
    "websockets",
)


def rows(sizes: Sizes) -> list[tuple[str, str, str, str]]:
    """(workload, label, metric key, which way is better) for every row of the table.
    A W4 step's key is `step:<connections>:<key in that step>`."""
    return [
        ("W1", "server CPU per delivery (µs)", "cpu_us_per_delivery", "lower"),
        ("W1", "latency p50 (ms)", "p50_ms", "lower"),
        ("W1", "latency p99 (ms)", "p99_ms", "lower"),
        ("W1", "deliveries lost (2 s drain)", "lost", "lower"),
        ("W1", f"of them never delivered (+{sizes.late_seconds:.0f} s)", "never", "lower"),
        ("W1", "joining the subscribers (s)", "join_s", "lower"),
        ("W2", "latency p50 (ms)", "p50_ms", "lower"),
        ("W2", "latency p99 (ms)", "p99_ms", "lower"),
        ("W2", "deliveries lost (2 s drain)", "lost", "lower"),
        ("W2", f"of them never delivered (+{sizes.late_seconds:.0f} s)", "never", "lower"),
        ("W3", "memory per idle connection (KB)", "kb_per_connection", "lower"),
        ("W3", "joining the connections (s)", "join_s", "lower"),
        ("W4", "most connections held", "max_held", "higher"),
        *(
            ("W4", f"join per client, step to {n:,} (ms)", f"step:{n}:join_ms_per_client", "lower")
            for n in sizes.w4_steps
        ),
        ("W5", "node a's last socket closed (s)", "closed_s", "lower"),
        ("W5", "half the clients back on node b (s)", "rejoin_p50_s", "lower"),
        ("W5", f"all {sizes.w5.clients:,} back on node b (s)", "rejoin_s", "lower"),
        ("W5", "every client caught up (s)", "caught_up_s", "lower"),
        ("W5", "acknowledged messages lost", "lost", "lower"),
        ("W5", "clients missing messages", "clients_missing_messages", "lower"),
        ("W5", "messages received twice", "duplicates", "lower"),
    ]


def value(outcome: Outcome | None, key: str) -> Any:
    if outcome is None or outcome.error:
        return None
    if key.startswith("step:"):
        _, connections, inner = key.split(":")
        for step in outcome.metrics.get("steps", []):
            if step["connections"] == int(connections):
                return step.get(inner)
        return None
    return outcome.metrics.get(key)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def header(names: list[str]) -> list[str]:
    ratios = [f"÷ {LABELS[n]}" for n in names[1:]] if names[0] == "chatlab" else []
    return ["workload", "metric", *(LABELS[n] for n in names), *ratios, "better"]


def table_rows(results: dict[str, dict[str, Outcome]], names: list[str], sizes: Sizes) -> list[list[str]]:
    """One row per metric: each system's figure, then ChatLab's ratio to each peer."""
    table = []
    for workload, label, key, better in rows(sizes):
        if workload not in results:
            continue
        values = [value(results[workload].get(system), key) for system in names]
        if key.startswith("step:") and all(v is None for v in values):
            continue  # a W4 step no system reached
        ratios = []
        if names[0] == "chatlab":
            for peer in values[1:]:
                ok = all(isinstance(v, int | float) for v in (values[0], peer)) and peer
                ratios.append(f"{values[0] / peer:.2f}" if ok else "-")
        table.append([TITLES[workload], label, *(fmt(v) for v in values), *ratios, better])
    return table


def render_table(results: dict[str, dict[str, Outcome]], names: list[str], sizes: Sizes) -> str:
    head = header(names)
    lines_in = [head, *table_rows(results, names, sizes)]
    widths = [max(len(row[i]) for row in lines_in) for i in range(len(head))]
    lines = []
    for n, row in enumerate(lines_in):
        cells = [cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    if names[0] == "chatlab" and len(names) > 1:
        lines.append("÷ peer = ChatLab's figure divided by that peer's")
    notes = []
    for workload, by_system in results.items():
        for system, outcome in by_system.items():
            if outcome.error:
                notes.append(f"{workload} {system}: no figures: {outcome.error}")
            notes.extend(f"{workload} {system}: {note}" for note in outcome.notes)
            if workload == "W4":
                for step in outcome.metrics.get("steps", []):
                    notes.append(
                        f"W4 {system}: {step['connections']:>6} connections: {step.get('result')}"
                        + (
                            f" (join {step['join_s']} s, lost {step.get('lost')}, p99 {step.get('p99_ms')} ms)"
                            if "join_s" in step and "lost" in step
                            else ""
                        )
                    )
    return "\n".join(lines + (["", *notes] if notes else []))


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        line = subprocess.run(
            [systems.redis_server_binary(), "--version"], capture_output=True, text=True, timeout=5
        ).stdout
        versions["redis-server"] = next((w.split("=")[1] for w in line.split() if w.startswith("v=")), line.strip())
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release().split('-')[0]}",
        "python": platform.python_version(),
        "open_files_limit": loadgen.raise_fd_limit(),
        "versions": versions,
    }


def smoke_failures(results: dict[str, dict[str, Outcome]]) -> list[str]:
    """What a smoke run must show: every workload produced numbers, nothing was lost."""
    problems = []
    for workload, by_system in results.items():
        for system, outcome in by_system.items():
            where = f"{workload} {system}"
            m = outcome.metrics
            if outcome.error:
                problems.append(f"{where}: {outcome.error}")
                continue
            if workload in ("W1", "W2"):
                for key in ("cpu_us_per_delivery", "p50_ms", "p99_ms"):
                    if not isinstance(m.get(key), int | float):
                        problems.append(f"{where}: no {key}")
                for key in ("lost", "duplicates", "rejected", "unanswered", "dropped_connections"):
                    if m.get(key) != 0:
                        problems.append(f"{where}: {key} = {m.get(key)}")
            elif workload == "W3":
                if not isinstance(m.get("kb_per_connection"), int | float) or m.get("held") != m.get("connections"):
                    problems.append(f"{where}: held {m.get('held')} of {m.get('connections')}")
            elif workload == "W4":
                steps = m.get("steps", [])
                if not m.get("max_held") or not all(isinstance(s.get("join_ms_per_client"), float) for s in steps):
                    problems.append(f"{where}: not every step held and timed its joins: {steps}")
            elif workload == "W5":
                if not isinstance(m.get("rejoin_s"), int | float) or m.get("rejoined") != m.get("clients"):
                    problems.append(f"{where}: back on node b: {m.get('rejoined')} of {m.get('clients')}")
                # The smoke storm's clients all come back before a message is missed; only
                # ChatLab promises that whatever the gap, so only its loss counts here.
                if system == "chatlab" and m.get("lost") != 0:
                    problems.append(f"{where}: lost {m.get('lost')}")
    return problems
