"""Stage-2 nodes (`python -m stage2_cluster`) `a@localhost`, `b@localhost`.. on free ports,
sharing one Redis and one cookie, plus the node API (`connect`, `disconnect`, `nodes_of`)
and waits for what the cluster reports.

The fixtures `redis_server`, `cluster` and `two_nodes` (tests/conftest.py) give one ready
to use:

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
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.helpers.node import NodeProcess
from tests.helpers.redis_server import RedisServer
from tests.helpers.waits import wait_until

DEADLINE = 10.0  # default seconds for any wait of a cluster


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


def env_without(*names: str) -> dict[str, str]:
    """This process's environment minus `names` (e.g. a CLUSTER_COOKIE the test must not inherit)."""
    return {k: v for k, v in os.environ.items() if k not in names}
