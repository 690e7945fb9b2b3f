"""A burst of ordinary traffic on one stage 2 node, with Redis up and idle.

300 sockets push at the same moment, then 300 sockets rejoin at the same moment (as the
clients of a dead node do). Every one is answered ok: the node's Redis connection pool
waits for a free connection (`stage2_cluster/broker.py`, REDIS_POOL_SIZE) where redis-py's
default pool raised on the 101st and the node answered `unavailable`. A join that is
refused anyway is counted in `chat_joins_refused_total{reason}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator

import httpx

from tests.helpers.cluster import Cluster
from tests.helpers.metrics import metric
from tests.helpers.phoenix import LOBBY, PhoenixClient, unique
from tests.helpers.results import record
from tests.helpers.waits import async_wait_until

SOCKETS = 300
DEADLINE = 30.0  # seconds for the whole burst to be answered


@contextlib.asynccontextmanager
async def sockets(url: str, count: int) -> AsyncIterator[list[PhoenixClient]]:
    clients = [PhoenixClient(url, timeout=DEADLINE) for _ in range(count)]
    try:
        await asyncio.gather(*(client.open() for client in clients))
        yield clients
    finally:
        await asyncio.gather(*(client.close() for client in clients))


async def at_once(clients: list[PhoenixClient], event: str, payloads: list[dict[str, object]]) -> Counter[str]:
    """Send one frame from each client without waiting in between, then count the answers."""
    refs = await asyncio.gather(
        *(client.send(LOBBY, event, payload) for client, payload in zip(clients, payloads, strict=True))
    )
    replies = await asyncio.gather(*(client.reply(ref) for client, ref in zip(clients, refs, strict=True)))
    return Counter(reply.status if reply.ok else str(reply.response.get("reason")) for reply in replies)


async def test_300_pushes_and_300_rejoins_at_once_are_all_answered_ok(cluster: Cluster) -> None:
    (a,) = cluster.start("a")
    async with sockets(a.ws_url, SOCKETS) as clients:
        for start in range(0, SOCKETS, 50):  # joined a few at a time: the burst is the pushes
            group = clients[start : start + 50]
            assert await at_once(group, "phx_join", [{"user": f"u{start + i}"} for i in range(len(group))]) == {
                "ok": len(group)
            }
        body = unique("burst")
        started = time.monotonic()
        pushes = await at_once(clients, "new:msg", [{"user": f"u{i}", "body": f"{body}-{i}"} for i in range(SOCKETS)])
        pushes_took = time.monotonic() - started
        last_seen = clients[0].messages()[-1]["id"] if clients[0].messages() else None
    async with sockets(a.ws_url, SOCKETS) as clients:
        started = time.monotonic()
        joins = await at_once(
            clients, "phx_join", [{"user": f"u{i}", "last_seen_id": last_seen} for i in range(SOCKETS)]
        )
        joins_took = time.monotonic() - started
    async with httpx.AsyncClient() as http:
        text = (await http.get(a.url + "/metrics")).text
    refused = metric(text, "chat_joins_refused_total", default=0.0, reason="unavailable")
    record(
        "burst of pushes and rejoins",
        sockets=SOCKETS,
        pushes=dict(pushes),
        rejoins=dict(joins),
        refused=refused,
        pushes_answered_s=round(pushes_took, 2),
        rejoins_answered_s=round(joins_took, 2),
    )
    assert pushes == {"ok": SOCKETS}
    assert joins == {"ok": SOCKETS}
    assert refused == 0


async def test_a_join_refused_for_want_of_redis_is_counted(cluster: Cluster) -> None:
    (a,) = cluster.start("a")
    cluster.redis.stop()
    async with httpx.AsyncClient() as http:
        await async_wait_until(
            lambda: not cluster.ready(a), what="a not ready without Redis"
        )  # then every join is refused
        async with PhoenixClient(a.ws_url) as client:
            reply = await client.push(LOBBY, "phx_join", {"user": "u"})
        text = (await http.get(a.url + "/metrics")).text
    assert (reply.status, reply.response) == ("error", {"reason": "unavailable"})
    assert metric(text, "chat_joins_refused_total", reason="unavailable") == 1
