"""A peer dropped for silence and regained: its sockets miss nothing, in order, once.

On loopback, with real nodes and a real redis-server. Node b is paused with SIGSTOP
for longer than NODE_DOWN_AFTER, so a stops hearing b and drops it, while b's Redis
connection stays up (as on the far side of a partition that heals on b's side first):

- a keeps publishing to the peer it dropped for silence (for REGISTRY_KEEP x
  NODE_DOWN_AFTER), so b's sockets get a's messages from the pause, in order, before a
  and b are connected again;
- a node that regains a peer catches its sockets up from the room's stream, for what
  the peer did not send it (past that bound), live messages held meanwhile;
- a peer removed on purpose (`chatctl disconnect`) is sent nothing.

The partition between network namespaces is tests/test_reliability_partition.py.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from shared.broker import Delivery
from shared.messages import Draft
from stage2_cluster.broker import Alone, RedisBroker
from tests.helpers.cluster import Cluster, full_name
from tests.helpers.phoenix import LOBBY, PhoenixClient, unique
from tests.helpers.redis_server import RedisServer
from tests.helpers.results import record
from tests.helpers.views import check_view, message_ids
from tests.helpers.waits import async_wait_until

pytestmark = pytest.mark.slow

NODE_DOWN_AFTER = 0.5
ENV = {"NODE_DOWN_AFTER": str(NODE_DOWN_AFTER)}


def stream_ids(cluster: Cluster) -> list[str]:
    with cluster.redis.client() as client:
        return [entry_id for entry_id, _ in client.xrange(f"chat:room:{LOBBY}")]


async def lists(cluster: Cluster, name: str, expected: list[str]) -> None:
    want = [full_name(n) for n in expected]
    await async_wait_until(lambda: cluster.nodes_of(name) == want, deadline=15, what=f"{name} lists {want}", step=0.1)


async def pause_b_until_a_drops_it(cluster: Cluster) -> None:
    cluster.node("b").signal(signal.SIGSTOP)
    try:
        await lists(cluster, "a", ["a"])
    except BaseException:
        cluster.node("b").signal(signal.SIGCONT)
        raise


async def test_a_peer_dropped_for_silence_still_gets_the_messages_of_its_absence_in_order(cluster: Cluster) -> None:
    cluster.start("a", "b", DISCOVERY="redis", **ENV)
    await lists(cluster, "a", ["a", "b"])
    async with PhoenixClient(cluster.node("a").ws_url) as alice, PhoenixClient(cluster.node("b").ws_url) as bob:
        await alice.join(LOBBY, {"user": "alice"})
        await bob.join(LOBBY, {"user": "bob"})
        assert (await alice.message(unique("before"), "alice")).ok
        await pause_b_until_a_drops_it(cluster)
        during = [unique("during") for _ in range(5)]
        for body in during:
            assert (await alice.message(body, "alice")).ok
        resumed = time.monotonic()
        cluster.node("b").signal(signal.SIGCONT)
        for body in during:
            await bob.wait_for_message(body)
        got_them = time.monotonic() - resumed
        await lists(cluster, "a", ["a", "b"])  # the registry brings them together again
        last = unique("after")
        assert (await alice.message(last, "alice")).ok
        await bob.wait_for_message(last)
        view = check_view(message_ids(bob), stream_ids(cluster))
    assert view.clean, view
    regained = [
        e for name in "ab" for e in cluster.node(name).logs() if e.get("event") == "caught up after reconnecting"
    ]
    assert regained, "the node that regained its peer caught up from the stream"
    record(
        "peer dropped for silence, regained",
        node_down_after_s=NODE_DOWN_AFTER,
        messages_while_dropped=len(during),
        bob_gaps=len(view.gaps),
        bob_duplicates=len(view.duplicates),
        bob_out_of_order=view.out_of_order,
        delivered_after_resume_s=round(got_them, 3),
    )


async def test_a_catch_up_delivers_the_stream_past_the_last_message_in_order_and_once(
    redis_server: RedisServer,
) -> None:
    """What a node does on regaining a peer that had stopped sending it messages (the path the
    test above also takes, with nothing left to deliver): read the room's stream past the
    last message its sockets got, while live messages wait, so the order holds."""
    membership = Alone("x@localhost")
    broker = RedisBroker(redis_server.url, "x@localhost", 100, membership=membership)
    delivered: list[Delivery] = []
    await broker.start(delivered.append)
    try:
        await async_wait_until(lambda: broker.available, what="subscribed")
        await broker.publish(LOBBY, Draft("u", "first"), "x@localhost")
        await async_wait_until(lambda: len(delivered) == 1, what="the first message delivered")
        with redis_server.client() as client:  # stored by y, which was not publishing to x
            for n in range(5):
                client.xadd(f"chat:room:{LOBBY}", {"user": "u", "body": f"missed {n}", "node": "y@localhost", "ts": 0})
            # ...and an entry no node wrote (no user, no ts): skipped, not a crash
            forged = client.xadd(f"chat:room:{LOBBY}", {"node": "y@localhost", "body": "forged"})
        membership.targets = lambda: ["x@localhost", "y@localhost"]  # type: ignore[method-assign]  # y regained
        catching_up = asyncio.create_task(broker.catch_up())
        await broker.publish(LOBBY, Draft("u", "live"), "x@localhost")  # arrives during or after the read
        assert await catching_up in (5, 6)
        await async_wait_until(lambda: len(delivered) >= 7, what="every message delivered")
        with redis_server.client() as client:
            stream = [entry_id for entry_id, _ in client.xrange(f"chat:room:{LOBBY}")]
        assert [d.message_id for d in delivered] == [entry_id for entry_id in stream if entry_id != forged]
    finally:
        await broker.stop()


async def test_a_peer_removed_on_purpose_is_sent_nothing(cluster: Cluster) -> None:
    cluster.start("a", "b", **ENV)
    cluster.connected("a", "b")
    async with PhoenixClient(cluster.node("a").ws_url) as alice, PhoenixClient(cluster.node("b").ws_url) as bob:
        await alice.join(LOBBY, {"user": "alice"})
        await bob.join(LOBBY, {"user": "bob"})
        response = cluster.http.delete(cluster.node("a").url + f"/api/nodes/{full_name('b')}", headers=cluster.auth())
        assert response.json()["nodes"] == [full_name("a")]
        await lists(cluster, "b", ["b"])
        body = unique("private")
        assert (await alice.message(body, "alice")).ok
        probe = unique("probe")  # b's own message: once bob has it, a's would have come before
        mine = PhoenixClient(cluster.node("b").ws_url)
        async with mine:
            await mine.join(LOBBY, {"user": "carol"})
            assert (await mine.message(probe, "carol")).ok
        await bob.wait_for_message(probe)
        assert body not in [p["body"] for p in bob.messages()]
        assert cluster.nodes_of("a") == [full_name("a")]
