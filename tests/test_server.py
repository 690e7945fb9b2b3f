"""A real `python -m stage1_dev` process, over real WebSockets and real HTTP.

The frames here are written and read raw, with `websockets` alone, so that what the node
sends is checked as it is on the wire and what it refuses (garbage, binary, oversize) can
be sent at all. Tests that only chat speak through the project's client, shared/client.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bench import loadgen
from shared.protocol import MAX_FRAME_BYTES
from tests.helpers.node import NodeProcess, running_node

pytestmark = pytest.mark.slow

LOBBY = "rooms:lobby"
DEADLINE = 10.0  # seconds; every wait in this file ends by then
OK: dict[str, Any] = {"status": "ok", "response": {}}


@pytest.fixture
def pinging_node() -> Iterator[NodeProcess]:
    with running_node("stage1_dev", {"PING_INTERVAL": "1"}) as node:
        yield node


async def recv(ws: ClientConnection) -> list[Any]:
    async with asyncio.timeout(DEADLINE):
        return json.loads(await ws.recv())


async def recv_until(ws: ClientConnection, wanted: Callable[[list[Any]], bool]) -> list[Any]:
    async with asyncio.timeout(DEADLINE):
        while True:
            frame = json.loads(await ws.recv())
            if wanted(frame):
                return frame


async def send(ws: ClientConnection, *frame: Any) -> None:
    await ws.send(json.dumps(list(frame)))


async def join(ws: ClientConnection, user: str, join_ref: str = "1", **params: Any) -> None:
    await send(ws, join_ref, join_ref, LOBBY, "phx_join", {"user": user, **params})
    assert await recv(ws) == [join_ref, join_ref, LOBBY, "phx_reply", OK]


async def close_code(ws: ClientConnection) -> int:
    """Read until the server closes; the code it sent (1006 when it sent no close frame)."""
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(DEADLINE):
            while True:
                await ws.recv()
    received = closed.value.rcvd
    return received.code if received is not None else 1006


# Limits and close codes --------------------------------------------------------------------


async def test_frame_over_64_kib_closes_with_1009(stage1_node: NodeProcess) -> None:
    async with connect(stage1_node.ws_url) as ws:
        await send(ws, "1", "1", LOBBY, "phx_join", {"pad": "x" * MAX_FRAME_BYTES})

        assert await close_code(ws) == 1009


async def test_frame_over_64_kib_of_multibyte_text_closes_with_1009(stage1_node: NodeProcess) -> None:
    async with connect(stage1_node.ws_url) as ws:
        frame = json.dumps(["1", "1", LOBBY, "phx_join", {"pad": "é" * 40_000}], ensure_ascii=False)
        assert len(frame) < MAX_FRAME_BYTES < len(frame.encode())
        await ws.send(frame)

        assert await close_code(ws) == 1009


async def test_garbage_closes_with_1007(stage1_node: NodeProcess) -> None:
    async with connect(stage1_node.ws_url) as ws:
        await ws.send("this is not a phoenix frame")

        assert await close_code(ws) == 1007


async def test_binary_frame_closes_with_1007(stage1_node: NodeProcess) -> None:
    async with connect(stage1_node.ws_url) as ws:
        await ws.send(b'["1","1","rooms:lobby","phx_join",{}]')

        assert await close_code(ws) == 1007


async def test_disallowed_origin_gets_http_403_on_the_upgrade(stage1_node: NodeProcess) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with asyncio.timeout(DEADLINE):
            async with connect(stage1_node.ws_url, origin="http://evil.example"):  # type: ignore[arg-type]
                pass

    assert refused.value.response.status_code == 403


async def test_same_host_origin_is_accepted(stage1_node: NodeProcess) -> None:
    async with connect(stage1_node.ws_url, origin=stage1_node.url) as ws:  # type: ignore[arg-type]
        await send(ws, None, "1", "phoenix", "heartbeat", {})

        assert await recv(ws) == [None, "1", "phoenix", "phx_reply", OK]


async def test_past_max_connections_the_upgrade_gets_503_json_until_one_leaves() -> None:
    with running_node("stage1_dev", {"PING_INTERVAL": "0", "MAX_CONNECTIONS": "3"}) as node:
        first, *others = [await connect(node.ws_url) for _ in range(3)]
        try:
            # Upgrades arriving together cannot slip past the cap: one socket more, five tries at once.
            tries = await asyncio.gather(*(connect(node.ws_url) for _ in range(5)), return_exceptions=True)
            assert all(isinstance(refused, InvalidStatus) for refused in tries), tries
            response = tries[0].response  # type: ignore[union-attr]
            assert response.status_code == 503
            assert response.headers["content-type"] == "application/json"
            assert json.loads(response.body) == {
                "error": "node is full: too many connections, try again or another node"
            }
            await first.close()
            async with asyncio.timeout(DEADLINE):
                while True:  # the freed place is taken as soon as the node has let the socket go
                    try:
                        async with connect(node.ws_url) as again:
                            await send(again, None, "1", "phoenix", "heartbeat", {})
                            assert await recv(again) == [None, "1", "phoenix", "phx_reply", OK]
                            break
                    except InvalidStatus:
                        await asyncio.sleep(0.05)
        finally:
            for ws in (first, *others):
                await ws.close()


# Chat --------------------------------------------------------------------------------------


async def test_two_clients_exchange_a_message(stage1_node: NodeProcess) -> None:
    async with connect(stage1_node.ws_url) as alice, connect(stage1_node.ws_url) as bob:
        await join(alice, "alice")
        await join(bob, "bob")

        await send(alice, "1", "2", LOBBY, "new:msg", {"user": "alice", "body": "hello bob"})
        seen_by_bob = await recv_until(bob, lambda f: f[3] == "new:msg")
        reply = await recv_until(alice, lambda f: f[1] == "2")

    assert seen_by_bob[:3] == [None, None, LOBBY]
    message = seen_by_bob[4]
    assert {k: message[k] for k in ("user", "body", "node")} == {
        "user": "alice",
        "body": "hello bob",
        "node": "nonode@nohost",
    }
    assert reply == [
        "1",
        "2",
        LOBBY,
        "phx_reply",
        {"status": "ok", "response": {"msg": "hello bob", "id": message["id"]}},
    ]


async def test_reconnect_with_last_seen_id_receives_only_missed_messages(stage1_node: NodeProcess) -> None:
    async with connect(stage1_node.ws_url) as alice:
        await join(alice, "alice")
        ids = []
        for n in range(3):
            await send(alice, "1", f"m{n}", LOBBY, "new:msg", {"user": "alice", "body": f"message {n}"})
            ids.append((await recv_until(alice, lambda f, n=n: f[1] == f"m{n}"))[4]["response"]["id"])

    async with connect(stage1_node.ws_url) as back:
        await join(back, "alice", last_seen_id=ids[0])
        await send(back, None, "hb", "phoenix", "heartbeat", {})  # everything the join sent comes before its reply
        frames = []
        while (frame := await recv(back))[1] != "hb":
            frames.append(frame)

    assert [f[4]["id"] for f in frames if f[3] == "new:msg"] == ids[1:]


async def test_joined_client_receives_the_system_ping(pinging_node: NodeProcess) -> None:
    async with connect(pinging_node.ws_url) as ws:
        await join(ws, "alice")

        ping = await recv_until(ws, lambda f: f[3] == "new:msg")

    assert ping == [None, None, LOBBY, "new:msg", {"user": "SYSTEM", "body": "ping"}]


# HTTP --------------------------------------------------------------------------------------


async def test_healthz_readyz_and_metrics_over_http(stage1_node: NodeProcess) -> None:
    async with httpx.AsyncClient(base_url=stage1_node.url, timeout=DEADLINE) as http:
        healthz = await http.get("/healthz")
        readyz = await http.get("/readyz")
        metrics = await http.get("/metrics")
        nodes = await http.get("/api/nodes")

    assert healthz.status_code == 200
    assert healthz.json() == {"status": "ok", "node": "nonode@nohost"}
    assert readyz.status_code == 200
    assert readyz.json()["ready"] is True
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "\nchat_connections 0.0\n" in metrics.text
    assert "\nchat_cluster_nodes 1.0\n" in metrics.text
    assert nodes.json() == {"self": "nonode@nohost", "nodes": ["nonode@nohost"]}


async def full_collections(node: NodeProcess) -> int:
    async with httpx.AsyncClient(base_url=node.url, timeout=DEADLINE) as http:
        text = (await http.get("/metrics")).text
    return int(float(re.search(r'\npython_gc_collections_total\{generation="2"\} (\S+)\n', text)[1]))  # type: ignore[index]  # a missing metric fails the test


@pytest.mark.slow  # a node process and 3000 sockets
async def test_a_join_storm_of_3000_runs_at_most_one_full_collection() -> None:
    """shared/server.py tune_gc: a full collection walks every socket's objects while the
    node does nothing else. With Python's defaults 3000 joins run three or more."""
    assert loadgen.raise_fd_limit() > 6100, "the test opens 3000 sockets, the node as many"
    with running_node("stage1_dev", {"PING_INTERVAL": "0", "MAX_CONNECTIONS": "4000"}) as node:
        before = await full_collections(node)
        gen = loadgen.Generator()
        gen.start()
        try:
            users = [f"u{i}" for i in range(3000)]
            deadline = time.monotonic() + 60
            await loadgen.connect_and_join(
                gen, "phoenix", [(node.host, node.port)], users, subscriber=True, deadline=deadline
            )
            after = await full_collections(node)
        finally:
            await gen.stop()

    assert after - before <= 1


async def test_unknown_route_is_a_json_404_over_http(stage1_node: NodeProcess) -> None:
    async with httpx.AsyncClient(base_url=stage1_node.url, timeout=DEADLINE) as http:
        response = await http.get("/nope")

    assert response.status_code == 404
    assert list(response.json()) == ["error"]


# Shutdown ----------------------------------------------------------------------------------


async def test_sigterm_closes_a_joined_client_with_1001_and_the_process_exits_0() -> None:
    with running_node("stage1_dev", {"PING_INTERVAL": "0"}) as node:
        async with connect(node.ws_url) as ws:
            await join(ws, "alice")

            node.signal(signal.SIGTERM)

            assert await close_code(ws) == 1001
        assert await asyncio.to_thread(node.wait, DEADLINE) == 0
