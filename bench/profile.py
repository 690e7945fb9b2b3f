"""`python -m bench.profile`: a flame graph of one join storm on a ChatLab node.

    python -m bench.profile                              # 5,000 clients, bench/profiles/join-storm.svg
    python -m bench.profile --clients 1000 --out /some/where.svg
    python -m bench.profile --out storm.txt              # collapsed stacks, for grep and sort

Starts the same cluster as `make bench` (Redis and two stage 2 nodes), attaches the
py-spy sampling profiler (pinned in the bench extra) to node a, joins `--clients`
clients to `rooms:lobby` on node a as W3 does, waits until the node is idle again,
and writes py-spy's flame graph (an SVG to open in a browser; `.json` gives speedscope's
format, `.txt` py-spy's collapsed stacks). Profiling a process it
did not start needs ptrace: on Linux, the same user and a `kernel.yama.ptrace_scope`
of 0, or root.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench import loadgen, systems
from bench.workloads import join_subscribers, settle

PROFILES = Path(__file__).resolve().parent / "profiles"
RATE = 200  # samples a second
FORMATS = {".svg": "flamegraph", ".json": "speedscope", ".txt": "raw"}  # by the output's suffix
JOIN_CAP = 120.0  # seconds for the whole storm: a profile of a slow join is the point
SETTLE_CAP = 30.0


async def storm(clients: int, out: Path) -> float:
    """Profile node a through a storm of `clients` joins; returns the seconds the joins took."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    workdir = Path(tempfile.mkdtemp(prefix="chatlab-profile-"))
    cluster = systems.ChatLab(workdir)
    await cluster.start()
    gen = loadgen.Generator()
    gen.start()
    spy: asyncio.subprocess.Process | None = None
    try:
        await settle(gen, cluster, SETTLE_CAP)
        node = cluster.nodes[0]
        argv = [py_spy, "record", "--pid", str(node.proc.pid), "--rate", str(RATE), "--format", FORMATS[out.suffix]]
        spy = await asyncio.create_subprocess_exec(*argv, "--output", str(out), stdout=asyncio.subprocess.DEVNULL)
        await asyncio.sleep(1.0)  # py-spy attaches before the first join
        if spy.returncode is not None:
            raise RuntimeError(f"py-spy could not attach to pid {node.proc.pid} (exit {spy.returncode})")
        started = time.monotonic()
        await join_subscribers(gen, cluster, range(clients), cluster.targets[:1], JOIN_CAP)  # as W3 joins
        took = time.monotonic() - started
        await settle(gen, cluster, SETTLE_CAP)
        return took
    finally:
        if spy is not None and spy.returncode is None:
            spy.send_signal(signal.SIGINT)  # py-spy writes the graph on SIGINT
            async with asyncio.timeout(60):
                await spy.wait()
        await gen.stop()
        await cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def retitle(svg: Path, title: str) -> None:
    """py-spy titles its flame graph with its own command line, paths of this machine
    included; a graph kept in the repository says what it shows instead."""
    text = svg.read_text()
    svg.write_text(
        re.sub(r'(<text id="title"[^>]*>)[^<]*(</text>)', lambda m: m[1] + html.escape(title) + m[2], text, count=1)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=5000, help="how many clients join (default 5000)")
    parser.add_argument("--out", type=Path, default=PROFILES / "join-storm.svg", help="where the SVG goes")
    args = parser.parse_args(argv)
    if args.out.suffix not in FORMATS:
        parser.error(f"--out must end in one of {', '.join(FORMATS)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    loadgen.raise_fd_limit()
    took = asyncio.run(storm(args.clients, args.out.resolve()))
    if args.out.suffix == ".svg":
        retitle(
            args.out, f"ChatLab node a, {args.clients} clients joining rooms:lobby ({took:.1f} s, py-spy, {RATE} Hz)"
        )
    print(f"{args.clients} joins in {took:.2f} s; flame graph: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
