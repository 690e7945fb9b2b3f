"""`python -m bench`: W1-W4 against ChatLab and the python-socketio peer, one table.

    python -m bench                      # the full run, under 5 minutes on 2 cores
    python -m bench --smoke              # seconds, tiny sizes: proves the harness works
    python -m bench --only W1,W3 --systems chatlab

Each workload gets a fresh Redis and two fresh server processes per system, so one
workload's leftovers (buffers, history, freed-but-kept memory) never colour the next.
Within a workload the systems run one after the other, under the same load generator
in this process. Every wait has a deadline: a phase that does not finish in its time
is reported as such, with no number, and the run goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench import loadgen, systems
from bench.loadgen import Generator, JoinTimeout, Traffic

WORKLOADS = ("W1", "W2", "W3", "W4")
SYSTEM_NAMES = ("chatlab", "socketio")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class FanOut:
    """W1 or W2: subscribers and publishers split over both nodes, messages at a steady rate."""

    subscribers: int
    publishers: int
    rate: float  # messages a second, all publishers together
    seconds: float
    join_cap: float  # seconds for everyone to join


@dataclass
class Sizes:
    w1: FanOut = FanOut(subscribers=1000, publishers=4, rate=10.0, seconds=10.0, join_cap=35.0)
    w2: FanOut = FanOut(subscribers=200, publishers=10, rate=50.0, seconds=10.0, join_cap=20.0)
    w3_connections: int = 5000
    w4_steps: tuple[int, ...] = (500, 1000, 2500, 5000, 10000, 15000)
    w4_publishers: int = 4
    w4_rate: float = 10.0
    w4_seconds: float = 5.0
    drain_seconds: float = 2.0  # after the last send; what has not arrived by then is lost
    # Deadlines (seconds). The sum of the worst cases keeps the whole run under 5 minutes.
    budget_seconds: float = 285.0
    w3_join_cap: float = 60.0
    settle_cap: float = 10.0
    w4_min_budget: float = 15.0
    fresh_clusters: bool = True  # a new Redis and new nodes for every workload


SMOKE = Sizes(
    w1=FanOut(subscribers=20, publishers=2, rate=10.0, seconds=1.0, join_cap=10.0),
    w2=FanOut(subscribers=10, publishers=2, rate=20.0, seconds=1.0, join_cap=10.0),
    w3_connections=50,
    w4_steps=(20, 40),
    w4_publishers=2,
    w4_rate=10.0,
    w4_seconds=1.0,
    drain_seconds=2.0,
    budget_seconds=60.0,
    w3_join_cap=10.0,
    settle_cap=3.0,
    w4_min_budget=10.0,
    fresh_clusters=False,
)


@dataclass
class Outcome:
    """One workload on one system: the figures, or why there are none."""

    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None


# Cleanup of last resort: whatever is still running when we exit is killed by PID.
_live: set[systems.Cluster] = set()


@atexit.register
def _kill_leftovers() -> None:
    for cluster in list(_live):
        cluster.kill_now()


# Phases ------------------------------------------------------------------------------------


async def settle(gen: Generator, cluster: systems.Cluster, cap: float, window: float = 0.3) -> bool:
    """Wait until the servers are idle: nothing arrives for `window` seconds and the node
    processes used under a fifth of a core meanwhile. False when `cap` passes first."""
    end = time.monotonic() + cap
    while time.monotonic() < end:
        bytes_before, cpu_before = gen.bytes_in, cluster.cpu_seconds()
        await asyncio.sleep(window)
        if gen.bytes_in == bytes_before and cluster.cpu_seconds() - cpu_before < 0.2 * window:
            return True
    return False


async def join(
    gen: Generator,
    cluster: systems.Cluster,
    users: list[str],
    targets: list[tuple[str, int]],
    *,
    subscriber: bool,
    seconds: float,
) -> list[loadgen.Client]:
    return await loadgen.connect_and_join(
        gen, cluster.protocol, targets, users, subscriber=subscriber, deadline=time.monotonic() + seconds
    )


async def traffic_phase(
    gen: Generator,
    cluster: systems.Cluster,
    subscribers: list[loadgen.Client],
    publishers: list[loadgen.Client],
    *,
    rate: float,
    seconds: float,
    drain: float,
) -> dict[str, Any]:
    """Send rate x seconds messages; count, time and cost what the subscribers receive."""
    traffic = Traffic(max(1, round(rate * seconds)))
    expected = traffic.messages * len(subscribers)
    dropped_before = gen.dropped
    gen.traffic = traffic
    cpu_before, redis_before = cluster.cpu_seconds(), cluster.redis_cpu_seconds()
    own_before = time.process_time()
    started = time.monotonic()
    await loadgen.send_traffic(publishers, traffic, rate)
    sent_at = time.monotonic()
    complete = await loadgen.wait_until(
        lambda: traffic.received >= expected and traffic.acks_ok + traffic.acks_error >= traffic.sent, drain
    )
    finished = time.monotonic()
    cpu = cluster.cpu_seconds() - cpu_before
    redis_cpu = cluster.redis_cpu_seconds() - redis_before
    loadgen_cpu = time.process_time() - own_before
    gen.traffic = None
    latencies = sorted(traffic.latencies)
    delivered = traffic.received

    def ms(q: float) -> float | None:
        value = loadgen.percentile(latencies, q)
        return None if value is None else round(value / 1e6, 2)

    return {
        "messages_sent": traffic.sent,
        "subscribers": len(subscribers),
        "deliveries_expected": expected,
        "deliveries": delivered,
        "lost": expected - delivered,
        "duplicates": traffic.duplicates,
        "rejected": traffic.acks_error,
        "unanswered": traffic.sent - traffic.acks_ok - traffic.acks_error,
        "dropped_connections": gen.dropped - dropped_before,
        "cpu_us_per_delivery": round(cpu * 1e6 / delivered, 2) if delivered else None,
        "server_cpu_s": round(cpu, 3),
        "redis_cpu_s": round(redis_cpu, 3),
        "loadgen_cpu_s": round(loadgen_cpu, 3),  # this process: shows whether the generator kept up
        "p50_ms": ms(50),
        "p99_ms": ms(99),
        "max_ms": ms(100),
        "send_s": round(sent_at - started, 2),
        "drain_s": round(finished - sent_at, 2),
        "complete": complete,
    }


# Workloads ---------------------------------------------------------------------------------


async def fan_out(cluster: systems.Cluster, out: Outcome, load: FanOut, sizes: Sizes) -> None:
    """W1 and W2: subscribers and publishers split evenly over the two nodes."""
    gen = Generator()
    gen.start()
    try:
        started = time.monotonic()
        try:
            pubs = await join(
                gen,
                cluster,
                [f"p{i}" for i in range(load.publishers)],
                cluster.targets,
                subscriber=False,
                seconds=load.join_cap,
            )
            subs = await join(
                gen,
                cluster,
                [f"s{i}" for i in range(load.subscribers)],
                cluster.targets,
                subscriber=True,
                seconds=load.join_cap - (time.monotonic() - started),
            )
        except JoinTimeout as timeout:
            out.error = f"join did not finish: {timeout}"
            return
        out.metrics["join_s"] = round(time.monotonic() - started, 2)
        out.metrics["settled"] = await settle(gen, cluster, sizes.settle_cap)
        if not out.metrics["settled"]:
            out.notes.append(f"servers still busy {sizes.settle_cap:.0f} s after the joins: figures include that work")
        out.metrics.update(
            await traffic_phase(
                gen, cluster, subs, pubs, rate=load.rate, seconds=load.seconds, drain=sizes.drain_seconds
            )
        )
    finally:
        await gen.stop()


async def w1(cluster: systems.Cluster, out: Outcome, sizes: Sizes, budget: float) -> None:
    await fan_out(cluster, out, sizes.w1, sizes)


async def w2(cluster: systems.Cluster, out: Outcome, sizes: Sizes, budget: float) -> None:
    await fan_out(cluster, out, sizes.w2, sizes)


async def w3(cluster: systems.Cluster, out: Outcome, sizes: Sizes, budget: float) -> None:
    """Idle memory: RSS of node a before and after N joined sockets that then sit idle."""
    gen = Generator()
    gen.start()
    node = cluster.nodes[0]
    try:
        await settle(gen, cluster, sizes.settle_cap)
        before = node.rss()
        started = time.monotonic()
        n = sizes.w3_connections
        try:
            await join(
                gen,
                cluster,
                [f"s{i}" for i in range(n)],
                cluster.targets[:1],
                subscriber=True,
                seconds=sizes.w3_join_cap,
            )
        except JoinTimeout as timeout:
            out.error = f"join did not finish: {timeout}"
            return
        out.metrics["join_s"] = round(time.monotonic() - started, 2)
        if not await settle(gen, cluster, sizes.settle_cap):
            out.notes.append(f"node still busy {sizes.settle_cap:.0f} s after the joins")
        after = node.rss()
        held = len(gen.clients)
        out.metrics.update(
            {
                "connections": n,
                "held": held,
                "dropped_connections": gen.dropped,
                "rss_before_mb": round(before / 2**20, 1),
                "rss_after_mb": round(after / 2**20, 1),
                "kb_per_connection": round((after - before) / n / 1024, 2),
            }
        )
    finally:
        await gen.stop()


async def w4(cluster: systems.Cluster, out: Outcome, sizes: Sizes, budget: float) -> None:
    """Scale: grow the sockets on node a step by step, W1-style traffic at each step;
    the answer is the largest step where every message reached every socket."""
    end = time.monotonic() + budget
    reserve = sizes.w4_seconds + sizes.drain_seconds + 3.0  # traffic + drain + settle, at least
    gen = Generator()
    gen.start()
    steps: list[dict[str, Any]] = []
    out.metrics.update({"max_held": 0, "steps": steps})
    try:
        pubs = await join(
            gen,
            cluster,
            [f"p{i}" for i in range(sizes.w4_publishers)],
            cluster.targets,
            subscriber=False,
            seconds=max(1.0, end - time.monotonic()),
        )
        subs: list[loadgen.Client] = []
        for target in sizes.w4_steps:
            step: dict[str, Any] = {"connections": target}
            steps.append(step)
            join_time = end - time.monotonic() - reserve
            if join_time <= 1.0:
                step["result"] = "skipped: time budget spent"
                break
            started = time.monotonic()
            try:
                subs += await join(
                    gen,
                    cluster,
                    [f"s{i}" for i in range(len(subs), target)],
                    cluster.targets[:1],
                    subscriber=True,
                    seconds=join_time,
                )
            except JoinTimeout as timeout:
                step["result"] = (
                    f"join did not finish within the time budget: {len(subs) + timeout.joined} of {target}"
                    f" joined after {timeout.seconds:.0f} s"
                )
                break
            except RuntimeError as error:
                step["result"] = f"join failed: {error}"
                break
            step["join_s"] = round(time.monotonic() - started, 2)
            settle_cap = min(sizes.settle_cap, max(0.5, end - time.monotonic() - reserve + 3.0))
            if not await settle(gen, cluster, settle_cap):
                step["note"] = "node still busy after the joins"
            figures = await traffic_phase(
                gen, cluster, subs, pubs, rate=sizes.w4_rate, seconds=sizes.w4_seconds, drain=sizes.drain_seconds
            )
            step.update(
                {
                    k: figures[k]
                    for k in ("lost", "dropped_connections", "rejected", "p50_ms", "p99_ms", "cpu_us_per_delivery")
                }
            )
            held = figures["lost"] == 0 and figures["dropped_connections"] == 0 and figures["rejected"] == 0
            step["result"] = "held" if held else "failed"
            if not held:
                break
            out.metrics["max_held"] = target
        if steps and steps[-1]["result"].startswith(("skipped", "join did not")):
            out.notes.append(f"stopped at {steps[-1]['connections']}: time budget")
    finally:
        await gen.stop()


RUNNERS = {"W1": w1, "W2": w2, "W3": w3, "W4": w4}


async def run_one(
    system: str, workload: str, sizes: Sizes, budget: float, workdir: Path, shared: systems.Cluster | None = None
) -> Outcome:
    """One workload on a fresh cluster of `system`, or on `shared` (smoke runs) when given."""
    out = Outcome()
    cluster = shared or systems.SYSTEMS[system](workdir)
    _live.add(cluster)
    started = time.monotonic()
    try:
        if shared is None:
            await cluster.start()
            out.metrics["start_s"] = round(time.monotonic() - started, 1)
        await RUNNERS[workload](cluster, out, sizes, budget - (time.monotonic() - started))
    except Exception as error:  # one workload failing must not stop the others
        out.error = f"{type(error).__name__}: {error}"
        for node in cluster.nodes:
            tail = node.log_tail(5)
            if tail:
                out.notes.append(f"{node.name} log: {tail}")
    finally:
        if shared is None:
            stopping = time.monotonic()
            await cluster.stop()
            _live.discard(cluster)
            out.metrics["stop_s"] = round(time.monotonic() - stopping, 1)
    out.metrics["wall_s"] = round(time.monotonic() - started, 1)
    return out


# Report ------------------------------------------------------------------------------------

# (workload, label, metric key, which way is better)
ROWS = [
    ("W1", "server CPU per delivery (µs)", "cpu_us_per_delivery", "lower"),
    ("W1", "latency p50 (ms)", "p50_ms", "lower"),
    ("W1", "latency p99 (ms)", "p99_ms", "lower"),
    ("W1", "deliveries lost (2 s drain)", "lost", "lower"),
    ("W1", "joining the subscribers (s)", "join_s", "lower"),
    ("W2", "latency p50 (ms)", "p50_ms", "lower"),
    ("W2", "latency p99 (ms)", "p99_ms", "lower"),
    ("W2", "deliveries lost (2 s drain)", "lost", "lower"),
    ("W3", "memory per idle connection (KB)", "kb_per_connection", "lower"),
    ("W3", "joining the connections (s)", "join_s", "lower"),
    ("W4", "most connections held", "max_held", "higher"),
]
TITLES = {"W1": "W1 fan-out", "W2": "W2 light", "W3": "W3 idle", "W4": "W4 scale"}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table_rows(results: dict[str, dict[str, Outcome]], names: list[str]) -> list[list[str]]:
    rows = []
    for workload, label, key, better in ROWS:
        if workload not in results:
            continue
        values = []
        for system in names:
            outcome = results[workload].get(system)
            values.append(None if outcome is None or outcome.error else outcome.metrics.get(key))
        ratio = "-"
        if len(values) == 2 and all(isinstance(v, int | float) for v in values) and values[1]:
            ratio = f"{values[0] / values[1]:.2f}"
        rows.append([TITLES[workload], label, *(_fmt(v) for v in values), ratio, better])
    return rows


def render_table(results: dict[str, dict[str, Outcome]], names: list[str]) -> str:
    header = ["workload", "metric", *names, "ratio" if len(names) == 2 else "", "better"]
    rows = [header, *table_rows(results, names)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        cells = [cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
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
    if len(names) == 2:
        lines.append(f"ratio = {names[0]} / {names[1]}")
    return "\n".join(lines + (["", *notes] if notes else []))


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in (
        "quart",
        "hypercorn",
        "uvloop",
        "orjson",
        "redis",
        "hiredis",
        "python-socketio",
        "python-engineio",
        "uvicorn",
        "websockets",
    ):
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
            elif workload == "W4" and not m.get("max_held"):
                problems.append(f"{where}: no step held: {m.get('steps')}")
    return problems


async def run(args: argparse.Namespace) -> int:
    sizes = SMOKE if args.smoke else Sizes()
    if args.join_cap:
        sizes = replace(
            sizes,
            w1=replace(sizes.w1, join_cap=args.join_cap),
            w2=replace(sizes.w2, join_cap=args.join_cap),
            w3_join_cap=args.join_cap,
            settle_cap=args.join_cap,
            budget_seconds=max(sizes.budget_seconds, 6 * args.join_cap),
        )
    if args.budget:
        sizes = replace(sizes, budget_seconds=args.budget)
    workloads = [w for w in WORKLOADS if w in args.only]
    names = [s for s in SYSTEM_NAMES if s in args.systems]
    loadgen.raise_fd_limit()
    began = time.monotonic()
    deadline = began + sizes.budget_seconds
    stamp = dt.datetime.now().astimezone()
    info = machine()
    load_before = os.getloadavg()
    workdir = systems.new_workdir()
    results: dict[str, dict[str, Outcome]]
    print(
        f"bench: {'smoke' if args.smoke else 'full'} run of {', '.join(workloads)} on {', '.join(names)} "
        f"({info['cores']} cores, load {load_before[0]:.2f})",
        flush=True,
    )
    results = {workload: {} for workload in workloads}

    async def one(workload: str, system: str, budget: float, shared: systems.Cluster | None = None) -> None:
        t = time.monotonic()
        outcome = await run_one(system, workload, sizes, budget, workdir, shared)
        results[workload][system] = outcome
        status = outcome.error or ", ".join(f"{k}={_fmt(v)}" for k, v in outcome.metrics.items() if k != "steps")
        print(f"  {workload} {system:<9} {time.monotonic() - t:5.1f} s  {status}", flush=True)

    try:
        if sizes.fresh_clusters:
            # Workload by workload, the systems back to back, each on a fresh cluster.
            for workload in workloads:
                for index, system in enumerate(names):
                    budget = deadline - time.monotonic()
                    if workload == "W4":
                        budget = max(sizes.w4_min_budget, budget / (len(names) - index))
                    await one(workload, system, budget)
        else:
            # One cluster per system for every workload: seconds instead of a minute.
            for index, system in enumerate(names):
                cluster = systems.SYSTEMS[system](workdir)
                _live.add(cluster)
                try:
                    try:
                        await cluster.start()
                    except Exception as error:
                        for workload in workloads:
                            results[workload][system] = Outcome(error=f"{type(error).__name__}: {error}")
                        continue
                    for workload in workloads:
                        budget = (deadline - time.monotonic()) / (len(names) - index)
                        await one(workload, system, max(sizes.w4_min_budget, budget), cluster)
                finally:
                    await cluster.stop()
                    _live.discard(cluster)
    except asyncio.CancelledError:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    elapsed = time.monotonic() - began
    table = render_table(results, names)
    print()
    print(table)
    print(f"\ntotal {elapsed:.0f} s; load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")

    out_dir = Path(args.out) if args.out else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    name = stamp.strftime("%Y-%m-%d_%H%M%S") + ("-smoke" if args.smoke else "")
    report = {
        "date": stamp.isoformat(timespec="seconds"),
        "command": "make bench" if not args.smoke else "python -m bench --smoke",
        "argv": sys.argv[1:],
        "mode": "smoke" if args.smoke else "full",
        "machine": info,
        "load_average": {"before": load_before[0], "after": os.getloadavg()[0]},
        "elapsed_s": round(elapsed, 1),
        "sizes": asdict(sizes),
        "systems": names,
        "results": {w: {s: asdict(o) for s, o in by.items()} for w, by in results.items()},
        "table": table_rows(results, names),
    }
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {json_path}")
    if not args.no_plot:
        from bench import plot

        png = plot.render(report, out_dir / f"{name}.png")
        print(f"wrote {png}")
    if any(o.error and not o.error.startswith("join did not") for by in results.values() for o in by.values()):
        print(f"server logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.smoke:
        problems = smoke_failures(results)
        for problem in problems:
            print(f"SMOKE FAILURE: {problem}")
        return 1 if problems else 0
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds: checks the harness only")
    parser.add_argument("--only", default=",".join(WORKLOADS), help="workloads to run, e.g. W1,W3")
    parser.add_argument("--systems", default=",".join(SYSTEM_NAMES), help="chatlab,socketio or one of them")
    parser.add_argument("--out", help="where the JSON and the plot go (default bench/results)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument(
        "--join-cap",
        type=float,
        metavar="SECONDS",
        help="allow this long for every join and settle phase (diagnosis: the run may then pass 5 minutes)",
    )
    parser.add_argument("--budget", type=float, metavar="SECONDS", help="the whole run's time budget (default 285)")
    args = parser.parse_args(argv)
    args.only = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    args.systems = [s.strip().lower() for s in args.systems.split(",") if s.strip()]
    for w in args.only:
        if w not in WORKLOADS:
            parser.error(f"--only: unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    for s in args.systems:
        if s not in SYSTEM_NAMES:
            parser.error(f"--systems: unknown system {s!r}; choose from {', '.join(SYSTEM_NAMES)}")
    if not args.only or not args.systems:
        parser.error("nothing to run")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        return runner(interruptible(run(args)))
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("bench: interrupted; every process it started has been stopped", file=sys.stderr)
        return 130


async def interruptible(main: Coroutine[Any, Any, int]) -> int:
    """SIGINT or SIGTERM cancels the run, so every `finally` stops what it started."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    return await main
