"""The broker contract: the same scenarios against every broker, as encode/broadcaster runs
its tests on every backend.

`memory` is `MemoryBroker` (shared/broker.py, one process, stage 1); `redis` is
`RedisBroker` (stage2_cluster/broker.py) against a real redis-server, where a Lua script
looks up and stores in one atomic step. Each test gets an empty broker with a history of
HISTORY messages. What only one broker has (Redis's catch-up after a lost subscription,
its answers to hostile lines) is tested beside it: tests/test_stage2_regain.py,
tests/test_stage2_hostile_redis.py; the idempotent push end to end, through a node whose
Redis answers go missing, is tests/test_idempotent_push.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest

from shared import protocol
from shared.broker import Broker, Delivery, MemoryBroker
from shared.history import RoomHistory, parse_id
from shared.messages import ChatMessage, Draft
from stage2_cluster.broker import Alone, RedisBroker
from tests.helpers.phoenix import LOBBY, unique
from tests.helpers.redis_server import RedisServer
from tests.helpers.waits import async_wait_until

HISTORY = 3
DEADLINE = 10.0
NODE = "a@localhost"
PEER = "b@localhost"


@dataclass
class Room:
    """A broker and every delivery it handed over, in order."""

    broker: Broker
    deliveries: list[Delivery] = field(default_factory=list)

    def deliver(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)

    @property
    def delivered(self) -> list[str]:
        """The bodies of the `new:msg` deliveries."""
        return [
            frame.payload["body"]
            for frame in (protocol.decode(d.frame) for d in self.deliveries)
            if frame.event == "new:msg"
        ]

    async def publish(self, user: str, body: str, client_msg_id: str | None = None) -> ChatMessage:
        return await self.broker.publish(LOBBY, Draft(user, body, client_msg_id), NODE)

    async def settled(self) -> list[str]:
        """Every delivery so far: a last message without an id is published, and once it is
        delivered, so is everything stored before it (one total order per room)."""
        marker = f"marker {unique()}"
        await self.publish("test", marker)
        await async_wait_until(lambda: marker in self.delivered, DEADLINE, "the marker delivered")
        return self.delivered[: self.delivered.index(marker)]


@pytest.fixture(scope="module")
def module_redis() -> Iterator[RedisServer]:
    """One redis-server for the module, emptied for each test by `room`."""
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.slow)])
async def room(request: pytest.FixtureRequest) -> AsyncIterator[Room]:
    if request.param == "memory":
        broker: Broker = MemoryBroker(HISTORY)
    else:
        server: RedisServer = request.getfixturevalue("module_redis")
        with server.client() as client:
            client.flushall()
        broker = RedisBroker(server.url, NODE, HISTORY)
    room = Room(broker)
    await broker.start(room.deliver)
    try:
        await async_wait_until(lambda: broker.available, DEADLINE, "the broker available")
        yield room
    finally:
        await broker.stop()


# Storing and delivering ---------------------------------------------------------------------


async def test_a_published_message_is_stored_and_delivered_once_with_its_id(room: Room) -> None:
    message = await room.publish("alice", "hello")

    assert (message.user, message.body, message.node) == ("alice", "hello", NODE)
    assert (await room.broker.history(LOBBY, None)).messages == [message]
    assert await room.settled() == ["hello"]
    [delivery] = [d for d in room.deliveries if d.message_id == message.id]
    assert protocol.decode(delivery.frame).payload == message.payload()


async def test_ids_increase_in_publishing_order(room: Room) -> None:
    ids = [(await room.publish("alice", f"m{n}")).id for n in range(HISTORY)]

    assert all(parse_id(a) < parse_id(b) for a, b in itertools.pairwise(ids))


async def test_history_after_an_id_holds_only_the_later_messages_oldest_first(room: Room) -> None:
    first, second, third = [await room.publish("alice", f"m{n}") for n in range(3)]

    assert [m.id for m in (await room.broker.history(LOBBY, first.id)).messages] == [second.id, third.id]
    assert (await room.broker.history(LOBBY, third.id)).messages == []
    assert (await room.broker.history("rooms:empty", None)).messages == []


async def test_a_last_seen_id_that_left_history_is_told_the_replay_is_truncated(room: Room) -> None:
    first, *kept = [await room.publish("alice", f"m{n}") for n in range(HISTORY + 2)]
    kept = kept[1:]  # the second left history too

    replay = await room.broker.history(LOBBY, first.id)

    assert replay.truncated
    assert replay.messages == kept
    assert not (await room.broker.history(LOBBY, kept[0].id)).truncated
    assert not (await room.broker.history(LOBBY, None)).truncated


async def test_a_replay_is_read_again_after_every_append_and_trim(room: Room) -> None:
    """The Redis broker keeps a copy of each room; a join must never get it stale."""
    seen = []
    for n in range(HISTORY + 2):
        seen.append(await room.publish("alice", f"m{n}"))
        replay = await room.broker.history(LOBBY, None)
        assert replay.messages == seen[-HISTORY:]
        assert [json.loads(p) for p in replay.payloads] == [m.payload() for m in seen[-HISTORY:]]


@pytest.mark.slow  # Redis
async def test_a_copy_of_the_history_is_not_stale_when_an_unconnected_node_appends(
    module_redis: RedisServer,
) -> None:
    """Two nodes that are not connected share the room's stream but hear nothing of each
    other's messages: the copy one keeps must still follow what the other appends."""
    with module_redis.client() as client:
        client.flushall()
    a, b = RedisBroker(module_redis.url, "a@localhost", HISTORY), RedisBroker(module_redis.url, "b@localhost", HISTORY)
    for broker in (a, b):
        await broker.start(lambda delivery: None)
    try:
        await async_wait_until(lambda: a.available and b.available, DEADLINE, "both available")
        first = await a.publish(LOBBY, Draft("alice", "from a"), "a@localhost")
        assert (await a.history(LOBBY, None)).messages == [first]
        appended = [await b.publish(LOBBY, Draft("bob", f"from b {n}"), "b@localhost") for n in range(HISTORY + 1)]

        replay = await a.history(LOBBY, first.id)

        assert replay.messages == appended[1:]  # b's appends trimmed `first` and its own first one
        assert replay.truncated
        assert (await a.history(LOBBY, appended[1].id)).messages == appended[2:]
    finally:
        for broker in (a, b):
            await broker.stop()


@pytest.mark.slow  # Redis
async def test_a_copy_of_the_history_is_read_whole_again_when_the_stream_was_replaced(
    module_redis: RedisServer,
) -> None:
    """A stream emptied and written anew (by hand, or a Redis that lost its data) matches no
    copy plus what came after it: the node reads it whole."""
    with module_redis.client() as client:
        client.flushall()
    broker = RedisBroker(module_redis.url, NODE, HISTORY)
    await broker.start(lambda delivery: None)
    try:
        await async_wait_until(lambda: broker.available, DEADLINE, "the broker available")
        for n in range(2):
            await broker.publish(LOBBY, Draft("alice", f"before {n}"), NODE)
        assert len((await broker.history(LOBBY, None)).messages) == 2
        with module_redis.client() as client:
            client.flushall()
        after = await broker.publish(LOBBY, Draft("alice", "after"), NODE)

        assert (await broker.history(LOBBY, None)).messages == [after]
    finally:
        await broker.stop()


async def test_a_history_read_holds_every_message_stored_before_it_was_asked_for(room: Room) -> None:
    """Joins may share reads (stage 2 does, in a storm), but a read never starts before a
    join that shares it asked: what was stored before the ask is in its replay."""
    for n in range(20):
        under_way = asyncio.ensure_future(room.broker.history(LOBBY, None))
        await asyncio.sleep(0)  # its read starts
        message = await room.publish("alice", f"m{n}")
        asked = await room.broker.history(LOBBY, None)
        assert message.id in [m.id for m in asked]
        assert len(await under_way) <= HISTORY


async def test_a_storm_of_history_reads_shares_one_read_per_round_trip() -> None:
    """Stage 2: every join that asks while a read of its room is under way waits for the
    next one and shares it; one that asks after that read started waits for a third."""
    broker = RedisBroker("redis://127.0.0.1:1/0", NODE, HISTORY)  # never connected: reads are stubbed
    started: list[asyncio.Event] = []
    gates: list[asyncio.Event] = []

    async def read(topic: str) -> RoomHistory:
        started.append(asyncio.Event())
        gates.append(asyncio.Event())
        started[-1].set()
        await gates[-1].wait()
        history = RoomHistory(HISTORY)
        history.append(ChatMessage(f"{len(gates)}-0", "test", f"read {len(gates)}", NODE, 0))
        return history

    broker._read = read  # type: ignore[method-assign]  # the read without Redis
    first = asyncio.ensure_future(broker.history(LOBBY, None))
    await async_wait_until(lambda: len(started) == 1, DEADLINE, "the first read started")
    sharing = [asyncio.ensure_future(broker.history(LOBBY, None)) for _ in range(50)]
    for _ in range(10):  # loop steps enough for a read that did not wait to start
        await asyncio.sleep(0)
    assert len(started) == 1, "the next read waits for the one under way"
    gates[0].set()
    await async_wait_until(lambda: len(started) == 2, DEADLINE, "the shared read started")
    late = asyncio.ensure_future(broker.history(LOBBY, None))
    gates[1].set()
    await async_wait_until(lambda: len(started) == 3, DEADLINE, "a read for the late join")
    gates[2].set()

    assert [m.body for m in await first] == ["read 1"]
    assert {m.body for r in await asyncio.gather(*sharing) for m in r} == {"read 2"}
    assert [m.body for m in await late] == ["read 3"]
    assert len(started) == 3


async def test_a_broadcast_reaches_the_room_but_is_not_stored(room: Room) -> None:
    joiner = object()

    await room.broker.broadcast(LOBBY, "user:entered", {"user": "carol"}, exclude=joiner)

    await async_wait_until(lambda: room.deliveries, DEADLINE, "the broadcast delivered")
    [delivery] = room.deliveries
    frame = protocol.decode(delivery.frame)
    assert (delivery.topic, frame.event, frame.payload) == (LOBBY, "user:entered", {"user": "carol"})
    assert (delivery.exclude, delivery.message_id) == (joiner, None)
    assert (await room.broker.history(LOBBY, None)).messages == []


class Pair(Alone):
    """A membership of two nodes: a broker publishes to both."""

    def targets(self) -> list[str]:
        return [self.node, PEER]


@pytest.mark.slow  # Redis
async def test_broadcasts_for_a_peer_arrive_all_in_order_without_awaiting_redis(module_redis: RedisServer) -> None:
    """Stage 2 only: a storm of broadcasts goes to the peer in pipelines, in order, and the
    broadcast itself never waits for Redis (each returns before any round trip)."""
    with module_redis.client() as client:
        client.flushall()
    sender, peer = (
        RedisBroker(module_redis.url, NODE, HISTORY, Pair(NODE)),
        RedisBroker(module_redis.url, PEER, HISTORY),
    )
    heard = Room(peer)
    await sender.start(lambda delivery: None)
    await peer.start(heard.deliver)
    try:
        await async_wait_until(lambda: sender.available and peer.available, DEADLINE, "both brokers available")
        for n in range(300):
            broadcast = sender.broadcast(LOBBY, "user:entered", {"user": f"u{n}"}).__await__()
            with pytest.raises(StopIteration):  # done at the first step: nothing awaited
                next(broadcast)
        await async_wait_until(lambda: len(heard.deliveries) >= 300, DEADLINE, "the peer heard every broadcast")
        users = [protocol.decode(d.frame).payload["user"] for d in heard.deliveries]
        assert users == [f"u{n}" for n in range(300)]
    finally:
        await sender.stop()
        await peer.stop()


# Idempotent pushes: a `client_msg_id` is stored once per user while in history ----------------


async def test_a_retry_with_the_same_client_msg_id_is_stored_and_broadcast_once(room: Room) -> None:
    first = await room.publish("alice", "hello", "c-1")
    again = await room.publish("alice", "hello", "c-1")

    assert (again.id, again.body, again.user, again.node, again.ts) == (
        first.id,
        first.body,
        first.user,
        first.node,
        first.ts,
    )
    assert [m.id for m in (await room.broker.history(LOBBY, None)).messages] == [first.id]
    assert await room.settled() == ["hello"]


async def test_retries_racing_each_other_are_stored_once(room: Room) -> None:
    results = await asyncio.gather(*(room.publish("alice", "hello", "c-race") for _ in range(5)))

    assert len({m.id for m in results}) == 1
    assert len((await room.broker.history(LOBBY, None)).messages) == 1


async def test_the_same_client_msg_id_from_another_user_is_another_message(room: Room) -> None:
    alice = await room.publish("alice", "hello", "c-1")
    bob = await room.publish("bob", "hello", "c-1")

    assert alice.id != bob.id
    assert await room.settled() == ["hello", "hello"]


async def test_pushes_without_client_msg_id_are_each_stored(room: Room) -> None:
    await room.publish("alice", "hello")
    await room.publish("alice", "hello")

    assert len((await room.broker.history(LOBBY, None)).messages) == 2


async def test_a_client_msg_id_whose_message_left_history_stores_again(room: Room) -> None:
    first = await room.publish("alice", "hello", "c-old")
    for n in range(HISTORY):
        await room.publish("bob", f"filler {n}", f"f-{n}")

    again = await room.publish("alice", "hello", "c-old")

    assert again.id != first.id
    assert [m.body for m in (await room.broker.history(LOBBY, None)).messages] == ["filler 1", "filler 2", "hello"]
