"""`python -m bench`: W1-W5 against ChatLab and its two peers, one table.

    python -m bench                      # the full run, under 8 minutes on 2 cores
    python -m bench --smoke              # tiny sizes: proves the harness works
    python -m bench --only W1,W3 --systems chatlab,channels

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
import datetime as dt
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Coroutine
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench import loadgen, report, systems
from bench.workloads import RUNNERS, SMOKE, WORKLOADS, Outcome, Sizes

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# W4 grows until its time budget is spent, so it runs last and takes what is left; W5
# stops one of its nodes, so it always has a cluster of its own.
RUN_ORDER = ("W1", "W2", "W3", "W5", "W4")
OWN_CLUSTER = ("W5",)
# `quick` leaves out the slowest system, which saturates first and so waits longest.
PRESETS = {"all": report.SYSTEM_NAMES, "quick": ("chatlab", "socketio")}

# Cleanup of last resort: whatever is still running when we exit is killed by PID.
_live: set[systems.Cluster] = set()


@atexit.register
def _kill_leftovers() -> None:
    for cluster in list(_live):
        cluster.kill_now()


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


async def run(args: argparse.Namespace) -> int:
    sizes = SMOKE if args.smoke else Sizes()
    if args.join_cap:
        sizes = replace(
            sizes,
            w1=replace(sizes.w1, join_cap=args.join_cap),
            w2=replace(sizes.w2, join_cap=args.join_cap),
            w5=replace(sizes.w5, join_cap=args.join_cap, rejoin_cap=args.join_cap),
            w3_join_cap=args.join_cap,
            settle_cap=args.join_cap,
            budget_seconds=max(sizes.budget_seconds, 8 * args.join_cap),
        )
    if args.budget:
        sizes = replace(sizes, budget_seconds=args.budget)
    workloads = [w for w in RUN_ORDER if w in args.only]
    names = [s for s in report.SYSTEM_NAMES if s in args.systems]
    loadgen.raise_fd_limit()
    began = time.monotonic()
    deadline = began + sizes.budget_seconds
    stamp = dt.datetime.now().astimezone()
    info = report.machine()
    load_before = os.getloadavg()
    workdir = systems.new_workdir()
    print(
        f"bench: {'smoke' if args.smoke else 'full'} run of {', '.join(workloads)} on {', '.join(names)} "
        f"({info['cores']} cores, load {load_before[0]:.2f})",
        flush=True,
    )
    results: dict[str, dict[str, Outcome]] = {workload: {} for workload in WORKLOADS if workload in workloads}

    async def one(workload: str, system: str, budget: float, shared: systems.Cluster | None = None) -> None:
        t = time.monotonic()
        outcome = await run_one(system, workload, sizes, budget, workdir, shared)
        results[workload][system] = outcome
        status = outcome.error or ", ".join(f"{k}={report.fmt(v)}" for k, v in outcome.metrics.items() if k != "steps")
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
            # One cluster per system for the workloads that leave it running: seconds, not minutes.
            shared_ones = [w for w in workloads if w not in OWN_CLUSTER]
            for index, system in enumerate(names):
                if shared_ones:
                    cluster = systems.SYSTEMS[system](workdir)
                    _live.add(cluster)
                    try:
                        try:
                            await cluster.start()
                        except Exception as error:
                            for workload in shared_ones:
                                results[workload][system] = Outcome(error=f"{type(error).__name__}: {error}")
                        else:
                            for workload in shared_ones:
                                budget = (deadline - time.monotonic()) / (len(names) - index)
                                await one(workload, system, max(sizes.w4_min_budget, budget), cluster)
                    finally:
                        await cluster.stop()
                        _live.discard(cluster)
                for workload in workloads:
                    if workload in OWN_CLUSTER:
                        await one(workload, system, deadline - time.monotonic())
    except asyncio.CancelledError:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    elapsed = time.monotonic() - began
    table = report.render_table(results, names, sizes)
    print()
    print(table)
    print(f"\ntotal {elapsed:.0f} s; load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")

    out_dir = Path(args.out) if args.out else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    name = stamp.strftime("%Y-%m-%d_%H%M%S") + ("-smoke" if args.smoke else "")
    document = {
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
        "header": report.header(names),
        "table": report.table_rows(results, names, sizes),
    }
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {json_path}")
    if not args.no_plot:
        from bench import plot

        png = plot.render(document, out_dir / f"{name}.png")
        print(f"wrote {png}")
    if any(o.error and not o.error.startswith("join did not") for by in results.values() for o in by.values()):
        print(f"server logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.smoke:
        problems = report.smoke_failures(results)
        for problem in problems:
            print(f"SMOKE FAILURE: {problem}")
        return 1 if problems else 0
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds: checks the harness only")
    parser.add_argument("--only", default=",".join(WORKLOADS), help="workloads to run, e.g. W1,W3")
    parser.add_argument(
        "--systems",
        default="all",
        help="systems, e.g. chatlab,channels, or a preset: "
        + ", ".join(f"{name} ({'+'.join(members)})" for name, members in PRESETS.items()),
    )
    parser.add_argument("--out", help="where the JSON and the plot go (default bench/results)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument(
        "--join-cap",
        type=float,
        metavar="SECONDS",
        help="allow this long for every join and settle phase (diagnosis: the run may then pass 8 minutes)",
    )
    parser.add_argument("--budget", type=float, metavar="SECONDS", help="the whole run's time budget (default 470)")
    args = parser.parse_args(argv)
    args.only = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    chosen = args.systems.strip().lower()
    args.systems = list(PRESETS[chosen]) if chosen in PRESETS else [s.strip() for s in chosen.split(",") if s.strip()]
    for w in args.only:
        if w not in WORKLOADS:
            parser.error(f"--only: unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    for s in args.systems:
        if s not in report.SYSTEM_NAMES:
            parser.error(f"--systems: unknown system {s!r}; choose from {', '.join(report.SYSTEM_NAMES)} or a preset")
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
