"""A private test network of Linux network namespaces (needs root and iproute2).

    with Network(hosts=3) as net:
        net.hub, net.hub_ip                  # a namespace holding the bridge, e.g. for Redis
        for host in net.hosts:               # one namespace per host, linked to the bridge
            host.ns, host.ip
        net.spawn(net.hub, [...], ready="...")   # a long-running process inside a namespace
        net.python(host.ns, "print(1)")          # a short Python snippet inside a namespace
        net.prefix(host.ns)                      # ["ip", "netns", "exec", ns] for NodeProcess

Layout: the hub namespace holds a bridge `br0` with `hub_ip`; host i has `eth0` with
`SUBNET.(10+i)`, the other end of its veth pair plugged into the bridge. Every link is
created inside these namespaces (the veth pairs are born in the hub), so the namespace
the tests run in, its interfaces and its routes are never touched. Names carry the pid
and a counter, so parallel or leftover runs never collide.

On exit every process left inside the namespaces is ended (they can only be ours: the
namespaces are), then the namespaces are deleted, which destroys their links.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field

from tests.helpers.waits import wait_until

SUBNET = "10.213.7"  # a private range used only inside these namespaces
STOP_DEADLINE = 5.0
_counter = itertools.count(1)


@dataclass
class Host:
    ns: str
    ip: str


@dataclass
class Spawned:
    """A process started inside a namespace, its output collected in memory."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def collect(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout as stream:
            for line in stream:
                self.lines.append(line.rstrip("\n"))


class Network:
    def __init__(self, hosts: int) -> None:
        tag = f"chatlab{os.getpid()}n{next(_counter)}"
        self.hub = f"{tag}-hub"
        self.hub_ip = f"{SUBNET}.1"
        self.hosts = [Host(f"{tag}-h{i}", f"{SUBNET}.{10 + i}") for i in range(1, hosts + 1)]
        self.namespaces = [self.hub, *(host.ns for host in self.hosts)]
        self.created: list[str] = []
        self.spawned: list[Spawned] = []

    def __enter__(self) -> Network:
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # Building and tearing down ---------------------------------------------------------

    def create(self) -> None:
        for ns in self.namespaces:
            _ip("netns", "add", ns)
            self.created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        # No multicast snooping: the bridge floods group traffic to every port, as a plain
        # switch does, instead of waiting for IGMP reports that no querier asks for.
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", self.hub, "addr", "add", f"{self.hub_ip}/24", "dev", "br0")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for i, host in enumerate(self.hosts, 1):
            _ip("-n", self.hub, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", host.ns)
            _ip("-n", self.hub, "link", "set", f"v{i}", "master", "br0", "up")
            _ip("-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _ip("-n", host.ns, "link", "set", "eth0", "up")
            # Without a route for the multicast range, sending to a group fails with
            # "network unreachable" unless the socket names its interface.
            _ip("-n", host.ns, "route", "add", "224.0.0.0/4", "dev", "eth0")

    def destroy(self) -> None:
        for spawned in self.spawned:
            _end(spawned.proc)
        for ns in self.created:
            self._end_all_in(ns)
        for ns in self.created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self.created.clear()

    def _end_all_in(self, ns: str) -> None:
        """Whatever still runs inside `ns` (a node a failed test left): TERM, then KILL."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids(ns)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: not self.pids(ns), STOP_DEADLINE, f"processes in {ns} ended")
                return

    @staticmethod
    def pids(ns: str) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10).stdout
        return [int(pid) for pid in out.split()]

    # Running things inside -------------------------------------------------------------

    @staticmethod
    def prefix(ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def spawn(self, ns: str, argv: list[str], ready: str | None = None, deadline: float = 10.0) -> Spawned:
        """Start `argv` inside `ns`; with `ready`, wait until a line of its output contains it."""
        proc = subprocess.Popen(
            [*self.prefix(ns), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        spawned = Spawned(proc)
        self.spawned.append(spawned)
        threading.Thread(target=spawned.collect, daemon=True).start()
        if ready is not None:

            def is_ready() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"{argv[0]} exited with {proc.returncode}:\n" + "\n".join(spawned.lines))
                return any(ready in line for line in spawned.lines)

            wait_until(is_ready, deadline, f"{argv[0]} ready in {ns}", step=0.02)
        return spawned

    def python(self, ns: str, code: str, *args: str, timeout: float = 15.0) -> str:
        """Run a Python snippet inside `ns` with this interpreter; its stdout, or an error with its output."""
        result = subprocess.run(
            [*self.prefix(ns), sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(f"python in {ns} exited with {result.returncode}:\n{result.stdout}{result.stderr}")
        return result.stdout


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _end(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_DEADLINE)


# Scripts to run inside a namespace with Network.python().

# Each node's GET /api/nodes, or null for one that does not answer.
FETCH_VIEWS = """
import json, sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
views = {}
for address in sys.argv[1:]:
    try:
        with opener.open(f"http://{address}/api/nodes", timeout=2) as response:
            views[address] = json.load(response)
    except OSError:
        views[address] = None
print(json.dumps(views))
"""

# Join the lobby on two nodes, push on the first, print the message as the second got it.
SEND_AND_RECEIVE = """
import asyncio, json, sys
from shared.client import LOBBY, PhoenixClient

async def main(sender, receiver, body):
    async with PhoenixClient(f"ws://{receiver}/socket/websocket?vsn=2.0.0") as bob, \\
            PhoenixClient(f"ws://{sender}/socket/websocket?vsn=2.0.0") as ann:
        await bob.join(LOBBY, {"user": "bob"})
        await ann.join(LOBBY, {"user": "ann"})
        await ann.send(LOBBY, "new:msg", {"user": "ann", "body": body})
        print(json.dumps((await bob.wait_for_message(body)).payload))

asyncio.run(asyncio.wait_for(main(*sys.argv[1:]), 10))
"""
