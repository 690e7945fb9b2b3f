"""Stage 2 cluster semantics with real nodes and a real redis-server.

Live delivery follows cluster connections (Phoenix PubSub over distributed Erlang);
history lives in Redis and is shared by every node (the original's database); every
node delivers a room's messages in one order; a client catches up with last_seen_id.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers.cluster import Cluster
from tests.helpers.phoenix import LOBBY, PhoenixClient, parse_ids, unique

pytestmark = pytest.mark.slow


def chat_bodies(client: PhoenixClient, since: int = 0) -> list[str]:
    return [m["body"] for m in client.messages(since=since)]


async def test_unconnected_nodes_do_not_share_live_messages(cluster: Cluster) -> None:
    a, b = cluster.start("a", "b")
    first, marker = unique("from-a"), unique("marker-b")
    async with PhoenixClient(a.ws_url) as at_a, PhoenixClient(b.ws_url) as at_b:
        await at_a.join(LOBBY, {"user": "ann"})
        since = await at_b.join(LOBBY, {"user": "bob"})
        assert (await at_a.message(first, "ann")).ok
        # Redis runs commands one at a time: had `first` been published to b's channel,
        # it would reach b before this later marker does.
        assert (await at_b.message(marker, "bob")).ok
        await at_b.wait_for_message(marker, since=since)
        assert first not in chat_bodies(at_b, since)
        assert chat_bodies(at_b, since) == [marker]


async def test_unconnected_nodes_share_history(cluster: Cluster) -> None:
    a, b = cluster.start("a", "b")
    body = unique("stored-at-a")
    async with PhoenixClient(a.ws_url) as at_a:
        await at_a.join(LOBBY, {"user": "ann"})
        reply = await at_a.message(body, "ann")
        assert reply.ok
    async with PhoenixClient(b.ws_url) as at_b:
        since = await at_b.join(LOBBY, {"user": "bob"})
        replayed = await at_b.wait_for_message(body, since=since)
    assert replayed.payload["id"] == reply.response["id"]
    assert replayed.payload["node"] == "a@localhost"
    assert cluster.nodes_of("a") == ["a@localhost"] and cluster.nodes_of("b") == ["b@localhost"]


def test_connect_makes_both_nodes_list_each_other(cluster: Cluster) -> None:
    cluster.start("a", "b")
    assert cluster.connect("a", "b") == ["a@localhost", "b@localhost"]
    cluster.wait_nodes("b", ["b", "a"])
    assert cluster.nodes_of("a") == ["a@localhost", "b@localhost"]


async def test_connected_nodes_deliver_messages_both_ways(cluster: Cluster) -> None:
    a, b = cluster.start("a", "b")
    cluster.connected("a", "b")
    a_to_b, b_to_a = unique("a-to-b"), unique("b-to-a")
    async with PhoenixClient(a.ws_url) as at_a, PhoenixClient(b.ws_url) as at_b:
        since_a = await at_a.join(LOBBY, {"user": "ann"})
        since_b = await at_b.join(LOBBY, {"user": "bob"})
        sent = await at_a.message(a_to_b, "ann")
        got = await at_b.wait_for_message(a_to_b, since=since_b)
        assert got.payload == {**got.payload, "id": sent.response["id"], "user": "ann", "node": "a@localhost"}
        sent = await at_b.message(b_to_a, "bob")
        got = await at_a.wait_for_message(b_to_a, since=since_a)
        assert got.payload == {**got.payload, "id": sent.response["id"], "user": "bob", "node": "b@localhost"}


def test_connect_is_transitive(cluster: Cluster) -> None:
    cluster.start("a", "b", "c")
    cluster.connected("a", "b")
    everyone = ["a@localhost", "b@localhost", "c@localhost"]
    # Like Erlang: c connects to a, and through a to a's peer b, before answering.
    assert cluster.connect("c", "a") == ["c@localhost", "a@localhost", "b@localhost"]
    cluster.wait_nodes("a", everyone)
    cluster.wait_nodes("b", ["b@localhost", "a@localhost", "c@localhost"])
    assert cluster.nodes_of("c") == ["c@localhost", "a@localhost", "b@localhost"]


async def test_disconnect_separates_both_sides_and_stops_live_messages(cluster: Cluster) -> None:
    a, b = cluster.start("a", "b")
    cluster.connected("a", "b")
    before, after, marker = unique("before"), unique("after"), unique("marker-b")
    async with PhoenixClient(a.ws_url) as at_a, PhoenixClient(b.ws_url) as at_b:
        await at_a.join(LOBBY, {"user": "ann"})
        since = await at_b.join(LOBBY, {"user": "bob"})
        assert (await at_a.message(before, "ann")).ok
        await at_b.wait_for_message(before, since=since)

        assert await asyncio.to_thread(cluster.disconnect, "a", "b") == ["a@localhost"]
        await asyncio.to_thread(cluster.wait_nodes, "b", ["b"])

        assert (await at_a.message(after, "ann")).ok
        assert (await at_b.message(marker, "bob")).ok
        await at_b.wait_for_message(marker, since=since)
        assert chat_bodies(at_b, since) == [before, marker]


async def test_every_node_delivers_the_same_order_under_concurrent_publishers(cluster: Cluster) -> None:
    names = ("a", "b", "c")
    per_publisher = 50
    nodes = cluster.start(*names, RATE_LIMIT="1000/1000", HISTORY_SIZE="1000")
    cluster.connected(*names)
    run = unique("order")
    publishers = [PhoenixClient(node.ws_url) for node in nodes]
    subscribers = [PhoenixClient(node.ws_url) for node in nodes]
    clients = publishers + subscribers
    try:
        await asyncio.gather(*(client.open() for client in clients))
        starts = await asyncio.gather(*(client.join(LOBBY, {"user": f"u{i}"}) for i, client in enumerate(clients)))

        async def publish(index: int, client: PhoenixClient) -> list[str]:
            refs = [
                await client.send(LOBBY, "new:msg", {"user": f"p{index}", "body": f"{run} {index} {n}"})
                for n in range(per_publisher)
            ]
            replies = [await client.reply(ref) for ref in refs]
            assert all(reply.ok for reply in replies), [r for r in replies if not r.ok][:3]
            return [reply.response["id"] for reply in replies]

        acked = await asyncio.gather(*(publish(i, client) for i, client in enumerate(publishers)))
        total = len(names) * per_publisher

        def ours(client: PhoenixClient, since: int) -> list[str]:
            return [m["id"] for m in client.messages(since=since) if m["body"].startswith(run + " ")]

        for client, since in zip(clients, starts, strict=True):
            await client.wait_for(lambda _f, c=client, s=since: len(ours(c, s)) >= total, what=f"{total} messages")
        sequences = [ours(client, since) for client, since in zip(clients, starts, strict=True)]
    finally:
        await asyncio.gather(*(client.close() for client in clients))

    first = sequences[0]
    assert len(first) == total and len(set(first)) == total
    assert all(sequence == first for sequence in sequences)
    assert parse_ids(first) == sorted(parse_ids(first)) and len(set(parse_ids(first))) == total
    assert set(first) == {message_id for ids in acked for message_id in ids}
    for ids in acked:  # each publisher's own messages keep the order it sent them in
        assert [i for i in first if i in set(ids)] == ids


async def test_last_seen_id_catches_up_across_a_node_restart(cluster: Cluster) -> None:
    a, b = cluster.start("a", "b")
    cluster.connected("a", "b")
    seen_bodies = [unique("seen") for _ in range(3)]
    missed_bodies = [unique("missed") for _ in range(4)]
    async with PhoenixClient(a.ws_url) as at_a:
        await at_a.join(LOBBY, {"user": "ann"})
        async with PhoenixClient(b.ws_url) as at_b:
            since = await at_b.join(LOBBY, {"user": "bob"})
            for body in seen_bodies:
                assert (await at_a.message(body, "ann")).ok
            last_seen = (await at_b.wait_for_message(seen_bodies[-1], since=since)).payload["id"]
            await asyncio.to_thread(cluster.stop, "b")
            assert await at_b.wait_closed() == 1001  # going away: come back later
        missed_ids = [(await at_a.message(body, "ann")).response["id"] for body in missed_bodies]

    b = await asyncio.to_thread(cluster.restart, "b")
    marker = unique("marker-b")
    async with PhoenixClient(b.ws_url) as again:
        since = await again.join(LOBBY, {"user": "bob", "last_seen_id": last_seen})
        assert (await again.message(marker, "bob")).ok
        await again.wait_for_message(marker, since=since)
        received = again.messages(since=since)
    assert [m["id"] for m in received[:-1]] == missed_ids
    assert [m["body"] for m in received] == [*missed_bodies, marker]
