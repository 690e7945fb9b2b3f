"""PhoenixSocket and RoomChannel driven directly, without a server.

Two ways in: `socket.handle(text)` then reading `socket.outbox` (the in-memory broker
delivers synchronously, so after `handle` returns every frame it caused is queued,
which makes "nothing was delivered" checkable), and `socket.run()` over in-memory
queues (the way the Quart route serves it) for close codes and timed behaviour.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from wsproto.frame_protocol import FrameProtocol

import shared.socket
from shared.broker import Broker, BrokerUnavailable, Delivery, MemoryBroker
from shared.history import Replay
from shared.messages import ChatMessage, Draft
from shared.node import ChatNode
from shared.protocol import MAX_FRAME_BYTES
from shared.settings import Settings
from shared.socket import NEXT, PhoenixSocket, State
from tests.helpers.waits import async_wait_until

LOBBY = "rooms:lobby"
NODE = "nonode@nohost"
DEADLINE = 5.0  # seconds; every wait in this file ends by then
OK: dict[str, Any] = {"status": "ok", "response": {}}


async def make_node(broker: Broker | None = None, **settings: Any) -> ChatNode:
    config = Settings(**{"ping_interval": 0, **settings})
    broker = broker or MemoryBroker(config.history_size)
    node = ChatNode(config, broker)
    await broker.start(node.hub.deliver)
    return node


def text(join_ref: str | None, ref: str | None, topic: str, event: str, payload: dict[str, Any] | None = None) -> str:
    return json.dumps([join_ref, ref, topic, event, {} if payload is None else payload])


def take(sock: PhoenixSocket, *, presence_diffs: bool = False) -> list[list[Any]]:
    """Every frame queued for `sock`, decoded, oldest first; empties the outbox.

    Presence diffs go out on a timer and are left out unless asked for."""
    frames = [json.loads(frame) for frame in sock.outbox.frames]
    sock.outbox.frames.clear()
    sock.outbox.bytes = 0
    return [f for f in frames if presence_diffs or f[3] != "presence_diff"]


async def take_when(sock: PhoenixSocket, expected: list[Any]) -> list[list[Any]]:
    """`take(sock)` once `expected` is among the frames: events such as user:entered
    reach the other members in batches, a few milliseconds after they happen."""
    await async_wait_until(
        lambda: any(json.loads(frame) == expected for frame in sock.outbox.frames),
        DEADLINE,
        f"{expected} queued",
        0.005,
    )
    return take(sock)


async def joined(node: ChatNode, user: str | None = "alice", join_ref: str = "1") -> PhoenixSocket:
    sock = node.new_socket()
    payload = {} if user is None else {"user": user}
    await sock.handle(text(join_ref, join_ref, LOBBY, "phx_join", payload))
    frames = take(sock)
    assert frames[0] == [join_ref, join_ref, LOBBY, "phx_reply", OK]
    return sock


async def publish(node: ChatNode, body: str, user: str = "bob") -> ChatMessage:
    return await node.broker.publish(LOBBY, Draft(user, body), node.name)


async def stored(node: ChatNode) -> list[ChatMessage]:
    return (await node.broker.history(LOBBY, None)).messages


async def take_diff(sock: PhoenixSocket) -> dict[str, Any]:
    """The next presence_diff queued for `sock` (diffs go out on a timer)."""

    def diffs() -> list[dict[str, Any]]:
        return [json.loads(f)[4] for f in sock.outbox.frames if json.loads(f)[3] == "presence_diff"]

    await async_wait_until(lambda: bool(diffs()), DEADLINE, "a presence_diff queued", 0.005)
    return diffs()[0]


def new_msg(sock_frames: list[list[Any]]) -> list[dict[str, Any]]:
    return [f[4] for f in sock_frames if f[3] == "new:msg"]


class Client:
    """A socket served by `run()` over in-memory queues, as the Quart route serves it."""

    def __init__(self, node: ChatNode, **kwargs: Any) -> None:
        self.socket = node.new_socket(**kwargs)
        self.to_server: asyncio.Queue[str | bytes] = asyncio.Queue()
        self.from_server: asyncio.Queue[list[Any]] = asyncio.Queue()
        self.task: asyncio.Task[int] | None = None

    async def __aenter__(self) -> Client:
        self.task = asyncio.create_task(self.socket.run(self.to_server.get, self._send))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        if not self.task.done():
            self.task.cancel()
        async with asyncio.timeout(DEADLINE):
            await asyncio.gather(self.task, return_exceptions=True)

    async def _send(self, frame: str) -> None:
        await self.from_server.put(json.loads(frame))

    async def send(self, *frame: Any) -> None:
        await self.to_server.put(text(*frame))

    async def send_raw(self, data: str | bytes) -> None:
        await self.to_server.put(data)

    async def recv(self, *, skip: tuple[str, ...] = ("presence_diff",)) -> list[Any]:
        async with asyncio.timeout(DEADLINE):
            while True:
                frame = await self.from_server.get()
                if frame[3] not in skip:
                    return frame

    async def recv_event(self, event: str, match: Callable[[dict[str, Any]], bool] = lambda payload: True) -> list[Any]:
        """The next `event` frame whose payload `match`es, skipping everything before it."""
        async with asyncio.timeout(DEADLINE):
            while True:
                frame = await self.from_server.get()
                if frame[3] == event and match(frame[4]):
                    return frame

    async def join(self, user: str, join_ref: str = "1") -> None:
        await self.send(join_ref, join_ref, LOBBY, "phx_join", {"user": user})
        assert await self.recv() == [join_ref, join_ref, LOBBY, "phx_reply", OK]

    async def close_code(self) -> int:
        assert self.task is not None
        async with asyncio.timeout(DEADLINE):
            return await self.task


# Join ------------------------------------------------------------------------------------


async def test_join_sends_reply_entered_join_presence_state_then_history_oldest_first_then_presence_diff() -> None:
    node = await make_node()
    first = await publish(node, "one")
    second = await publish(node, "two")

    async with Client(node) as alice:
        await alice.send("1", "1", LOBBY, "phx_join", {"user": "alice"})
        frames = [await alice.recv(skip=()) for _ in range(7)]

    # Phoenix's after_join idiom: tracked first, so the joiner is in its own presence_state.
    state = frames[3][4]
    [meta] = state["alice"]["metas"]
    assert frames[:6] == [
        ["1", "1", LOBBY, "phx_reply", OK],
        [None, None, LOBBY, "user:entered", {"user": "alice"}],
        ["1", None, LOBBY, "join", {"status": "connected"}],
        ["1", None, LOBBY, "presence_state", {"alice": {"metas": [meta]}}],
        ["1", None, LOBBY, "new:msg", first.payload()],
        ["1", None, LOBBY, "new:msg", second.payload()],
    ]
    assert isinstance(meta["phx_ref"], str) and meta["phx_ref"]
    assert meta["node"] == NODE
    join_ref, ref, topic, event, diff = frames[6]
    assert [join_ref, ref, topic, event] == [None, None, LOBBY, "presence_diff"]
    assert diff == {"joins": {"alice": {"metas": [meta]}}, "leaves": {}}


async def test_join_without_user_broadcasts_user_entered_null() -> None:
    node = await make_node()
    sock = node.new_socket()

    await sock.handle(text("1", "1", LOBBY, "phx_join"))

    assert take(sock)[1] == [None, None, LOBBY, "user:entered", {"user": None}]


async def test_user_entered_is_broadcast_to_members_already_in_the_room() -> None:
    node = await make_node()
    alice = await joined(node, "alice")

    await joined(node, "bob")

    entered = [None, None, LOBBY, "user:entered", {"user": "bob"}]
    assert await take_when(alice, entered) == [entered]


async def test_a_join_storm_names_the_first_entered_names_and_counts_the_rest() -> None:
    """ENTERED_NAMES per batch by name, the rest of the batch as one users:entered count.
    The joins below run without the loop turning, so they fall into one batch."""
    node = await make_node(entered_names=2)
    alice = await joined(node, "alice")
    await async_wait_until(lambda: LOBBY not in node.hub._events, DEADLINE, "alice's batch sent", 0.005)
    take(alice)
    joiners = [await joined(node, f"u{i}") for i in range(5)]

    count = [None, None, LOBBY, "users:entered", {"count": 3}]
    frames = await take_when(alice, count)
    assert [f[4] for f in frames if f[3] in ("user:entered", "users:entered")] == [
        {"user": "u0"},
        {"user": "u1"},
        {"count": 3},
    ]
    # A joiner summed in the count is not sent it (it heard its own entry at its join);
    # one named hears the other named one and the count.
    first = await take_when(joiners[0], [None, None, LOBBY, "user:entered", {"user": "u1"}])
    assert [f[4] for f in first if f[3].endswith(":entered")] == [{"user": "u1"}, {"count": 3}]
    await async_wait_until(lambda: LOBBY not in node.hub._events, DEADLINE, "the batch sent", 0.005)
    assert [f[4] for f in take(joiners[4]) if f[3].endswith(":entered")] == [{"user": "u0"}, {"user": "u1"}]


async def test_joiners_of_one_batch_share_one_encoding_and_each_finds_itself() -> None:
    node = await make_node()
    await joined(node, "alice")
    socks = [node.new_socket() for _ in range(3)]
    for i, sock in enumerate(socks):
        await sock.handle(text("1", "1", LOBBY, "phx_join", {"user": f"u{i}"}))

    states = [next(f[4] for f in take(sock) if f[3] == "presence_state") for sock in socks]
    # Each joiner's state holds the room as last encoded and itself; the joins between
    # come in the batch's presence_diff, which every one of them gets.
    assert [sorted(state) for state in states] == [["alice", f"u{i}"] for i in range(3)]
    for sock in socks:
        assert sorted((await take_diff(sock))["joins"]) == ["alice", "u0", "u1", "u2"]


async def test_presence_state_lists_the_members_already_in_the_room_and_the_joiner() -> None:
    node = await make_node()
    await joined(node, "alice")
    bob = node.new_socket()

    await bob.handle(text("1", "1", LOBBY, "phx_join", {"user": "bob"}))

    [state] = [f[4] for f in take(bob) if f[3] == "presence_state"]
    assert sorted(state) == ["alice", "bob"]
    assert [meta["node"] for meta in state["alice"]["metas"]] == [NODE]
    assert [meta["node"] for meta in state["bob"]["metas"]] == [NODE]


async def test_members_see_a_presence_diff_when_someone_joins_and_leaves() -> None:
    node = await make_node()
    async with Client(node) as alice, Client(node) as bob:
        await alice.join("alice")
        await alice.recv_event("presence_diff", lambda diff: "alice" in diff["joins"])
        await bob.join("bob")

        joined_diff = (await alice.recv_event("presence_diff"))[4]
        await bob.send("1", "2", LOBBY, "phx_leave")
        left_diff = (await alice.recv_event("presence_diff"))[4]

    assert list(joined_diff["joins"]) == ["bob"] and joined_diff["leaves"] == {}
    assert left_diff["joins"] == {} and list(left_diff["leaves"]) == ["bob"]
    assert left_diff["leaves"]["bob"] == joined_diff["joins"]["bob"]


async def test_join_of_another_room_is_unauthorized() -> None:
    node = await make_node()
    sock = node.new_socket()

    await sock.handle(text("1", "1", "rooms:secret", "phx_join", {"user": "alice"}))

    assert take(sock) == [
        ["1", "1", "rooms:secret", "phx_reply", {"status": "error", "response": {"reason": "unauthorized"}}]
    ]
    assert sock.channels == {}
    assert "rooms:secret" not in node.hub.members


async def test_join_of_an_unknown_topic_is_unmatched() -> None:
    node = await make_node()
    sock = node.new_socket()

    await sock.handle(text("1", "1", "foo", "phx_join"))

    assert take(sock) == [
        ["1", "1", "foo", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}]
    ]
    assert sock.channels == {}


async def test_push_on_an_unjoined_topic_is_unmatched() -> None:
    node = await make_node()
    sock = node.new_socket()

    await sock.handle(text("1", "2", LOBBY, "new:msg", {"user": "alice", "body": "hi"}))

    assert take(sock) == [
        ["1", "2", LOBBY, "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}]
    ]
    assert await stored(node) == []


@pytest.mark.parametrize("user", ["u" * 33, 42, ["alice"]])
async def test_join_with_an_invalid_user_is_refused(user: Any) -> None:
    node = await make_node()
    sock = node.new_socket()

    await sock.handle(text("1", "1", LOBBY, "phx_join", {"user": user}))

    [reply] = take(sock)
    assert reply[:4] == ["1", "1", LOBBY, "phx_reply"]
    assert reply[4]["status"] == "error"
    assert "user" in reply[4]["response"]["reason"]
    assert LOBBY not in node.hub.members


# new:msg ---------------------------------------------------------------------------------


async def test_new_msg_is_broadcast_to_every_member_including_the_sender_and_replied_with_body_and_id() -> None:
    node = await make_node()
    alice = await joined(node, "alice")
    bob = await joined(node, "bob")
    take(alice)

    await alice.handle(text("1", "2", LOBBY, "new:msg", {"user": "alice", "body": "  hello  "}))

    [message] = await stored(node)
    assert (message.user, message.body, message.node) == ("alice", "hello", NODE)
    broadcast = [
        None,
        None,
        LOBBY,
        "new:msg",
        {"id": message.id, "user": "alice", "body": "hello", "node": NODE, "ts": message.ts},
    ]
    reply = ["1", "2", LOBBY, "phx_reply", {"status": "ok", "response": {"msg": "hello", "id": message.id}}]
    sender_frames = take(alice)
    assert len(sender_frames) == 2
    assert broadcast in sender_frames
    assert reply in sender_frames
    assert take(bob) == [broadcast]


INVALID_MESSAGES = {
    "missing-user": {"body": "hi"},
    "missing-body": {"user": "alice"},
    "non-string-user": {"user": 7, "body": "hi"},
    "null-user": {"user": None, "body": "hi"},
    "non-string-body": {"user": "alice", "body": ["hi"]},
    "too-long-user": {"user": "u" * 33, "body": "hi"},
    "too-long-body": {"user": "alice", "body": "b" * 2001},
    "empty-body": {"user": "alice", "body": ""},
    "whitespace-body": {"user": "alice", "body": " \n\t "},
}


@pytest.mark.parametrize("payload", INVALID_MESSAGES.values(), ids=INVALID_MESSAGES.keys())
async def test_invalid_new_msg_replies_error_and_is_neither_stored_nor_broadcast(payload: dict[str, Any]) -> None:
    node = await make_node()
    alice = await joined(node, "alice")
    bob = await joined(node, "bob")
    take(alice)

    await alice.handle(text("1", "2", LOBBY, "new:msg", payload))

    [reply] = take(alice)
    assert reply[:4] == ["1", "2", LOBBY, "phx_reply"]
    assert reply[4]["status"] == "error"
    assert isinstance(reply[4]["response"]["reason"], str) and reply[4]["response"]["reason"]
    assert await stored(node) == []
    assert take(bob) == []


async def test_unknown_event_on_a_joined_topic_replies_error() -> None:
    node = await make_node()
    alice = await joined(node, "alice")

    await alice.handle(text("1", "2", LOBBY, "shout", {"body": "hi"}))

    [reply] = take(alice)
    assert reply[:4] == ["1", "2", LOBBY, "phx_reply"]
    assert reply[4]["status"] == "error"
    assert await stored(node) == []


# Heartbeat, leave, rejoin ----------------------------------------------------------------


async def test_heartbeat_replies_ok() -> None:
    node = await make_node()
    sock = node.new_socket()

    await sock.handle(text(None, "9", "phoenix", "heartbeat"))

    assert take(sock) == [[None, "9", "phoenix", "phx_reply", OK]]


async def test_leave_replies_ok_then_phx_close() -> None:
    node = await make_node()
    alice = await joined(node, "alice")

    await alice.handle(text("1", "5", LOBBY, "phx_leave"))

    assert take(alice) == [["1", "5", LOBBY, "phx_reply", OK], ["1", "1", LOBBY, "phx_close", {}]]


async def test_after_leave_the_socket_gets_no_room_messages_and_its_presence_is_gone() -> None:
    node = await make_node()
    alice = await joined(node, "alice")
    bob = await joined(node, "bob")
    await alice.handle(text("1", "5", LOBBY, "phx_leave"))
    take(alice)

    await bob.handle(text("1", "2", LOBBY, "new:msg", {"user": "bob", "body": "still there?"}))

    assert take(alice) == []
    assert list(node.tracker.room(LOBBY).state()) == ["bob"]


async def test_push_after_leave_is_unmatched() -> None:
    node = await make_node()
    alice = await joined(node, "alice")
    await alice.handle(text("1", "5", LOBBY, "phx_leave"))
    take(alice)

    await alice.handle(text("1", "6", LOBBY, "new:msg", {"user": "alice", "body": "hi"}))

    assert take(alice) == [
        ["1", "6", LOBBY, "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}]
    ]


async def test_duplicate_join_closes_the_old_join_first_then_joins_again() -> None:
    node = await make_node()
    alice = await joined(node, "alice", join_ref="1")

    await alice.handle(text("3", "3", LOBBY, "phx_join", {"user": "alice"}))

    frames = take(alice)
    assert frames[0] == ["1", "1", LOBBY, "phx_close", {}]
    assert frames[1] == ["3", "3", LOBBY, "phx_reply", OK]
    assert ["3", None, LOBBY, "join", {"status": "connected"}] in frames
    assert len(node.tracker.room(LOBBY)) == 1


async def test_after_a_duplicate_join_messages_arrive_once_on_the_new_join() -> None:
    node = await make_node()
    alice = await joined(node, "alice", join_ref="1")
    await alice.handle(text("3", "3", LOBBY, "phx_join", {"user": "alice"}))
    take(alice)

    await alice.handle(text("3", "4", LOBBY, "new:msg", {"user": "alice", "body": "again"}))

    frames = take(alice)
    assert len(new_msg(frames)) == 1
    assert [
        "3",
        "4",
        LOBBY,
        "phx_reply",
        {"status": "ok", "response": {"msg": "again", "id": new_msg(frames)[0]["id"]}},
    ] in frames


async def test_push_with_a_stale_join_ref_is_ignored() -> None:
    node = await make_node()
    alice = await joined(node, "alice", join_ref="1")
    await alice.handle(text("3", "3", LOBBY, "phx_join", {"user": "alice"}))
    take(alice)

    await alice.handle(text("1", "4", LOBBY, "new:msg", {"user": "alice", "body": "from the old join"}))

    assert take(alice) == []
    assert await stored(node) == []


async def test_leave_with_a_stale_join_ref_is_ignored() -> None:
    node = await make_node()
    alice = await joined(node, "alice", join_ref="1")
    await alice.handle(text("3", "3", LOBBY, "phx_join", {"user": "alice"}))
    take(alice)

    await alice.handle(text("1", "4", LOBBY, "phx_leave"))

    assert take(alice) == []
    assert alice.channels[LOBBY].join_ref == "3"
    assert LOBBY in node.hub.members


# History and catch-up --------------------------------------------------------------------


async def test_join_with_last_seen_id_replays_only_newer_messages() -> None:
    node = await make_node()
    first = await publish(node, "one")
    second = await publish(node, "two")
    third = await publish(node, "three")
    sock = node.new_socket()

    await sock.handle(text("1", "1", LOBBY, "phx_join", {"user": "alice", "last_seen_id": first.id}))

    assert new_msg(take(sock)) == [second.payload(), third.payload()]


async def test_join_with_the_newest_id_as_last_seen_id_replays_nothing() -> None:
    node = await make_node()
    await publish(node, "one")
    newest = await publish(node, "two")
    sock = node.new_socket()

    await sock.handle(text("1", "1", LOBBY, "phx_join", {"user": "alice", "last_seen_id": newest.id}))

    frames = take(sock)
    assert frames[0] == ["1", "1", LOBBY, "phx_reply", OK]
    assert new_msg(frames) == []


@pytest.mark.parametrize("last_seen_id", ["yesterday", "1-2-3", "", 1700000000000, ["1-0"]])
async def test_join_with_an_invalid_last_seen_id_is_refused(last_seen_id: Any) -> None:
    node = await make_node()
    sock = node.new_socket()

    await sock.handle(text("1", "1", LOBBY, "phx_join", {"user": "alice", "last_seen_id": last_seen_id}))

    [reply] = take(sock)
    assert reply[:4] == ["1", "1", LOBBY, "phx_reply"]
    assert reply[4]["status"] == "error"
    assert "last_seen_id" in reply[4]["response"]["reason"]
    assert sock.channels == {}
    assert LOBBY not in node.hub.members


async def test_join_replays_at_most_history_size_messages() -> None:
    node = await make_node(history_size=3)
    messages = [await publish(node, f"message {n}") for n in range(5)]
    sock = node.new_socket()

    await sock.handle(text("1", "1", LOBBY, "phx_join", {"user": "alice"}))

    assert new_msg(take(sock)) == [m.payload() for m in messages[2:]]


async def test_a_join_whose_last_seen_id_left_history_is_told_in_its_reply() -> None:
    node = await make_node(history_size=3)
    messages = [await publish(node, f"message {n}") for n in range(6)]
    sock = node.new_socket()

    await sock.handle(text("1", "1", LOBBY, "phx_join", {"user": "alice", "last_seen_id": messages[1].id}))

    frames = take(sock)
    assert frames[0] == ["1", "1", LOBBY, "phx_reply", {"status": "ok", "response": {"history_truncated": True}}]
    assert new_msg(frames) == [m.payload() for m in messages[3:]]


async def test_a_join_whose_last_seen_id_is_still_in_history_gets_the_usual_reply() -> None:
    node = await make_node(history_size=3)
    messages = [await publish(node, f"message {n}") for n in range(6)]
    sock = node.new_socket()

    await sock.handle(text("1", "1", LOBBY, "phx_join", {"user": "alice", "last_seen_id": messages[3].id}))

    frames = take(sock)
    assert frames[0] == ["1", "1", LOBBY, "phx_reply", OK]
    assert new_msg(frames) == [m.payload() for m in messages[4:]]


async def test_joins_past_the_replay_budget_are_refused_until_it_refills(frozen_clock: FrozenTime) -> None:
    from shared.channel import REPLAY_BUDGET

    rate, burst = REPLAY_BUDGET
    node = await make_node(history_size=100, rate_limit=(1000.0, 1000))
    for n in range(100):
        await publish(node, f"{n:03} " + "x" * 1996)  # 100 messages of 2000 characters
    replay_size = (await node.broker.history(LOBBY, None)).size
    sock = node.new_socket()
    fits = burst // replay_size

    replies = []
    for n in range(fits + 1):
        await sock.handle(text(str(n), str(n), LOBBY, "phx_join", {"user": "alice"}))
        replies += [f[4] for f in take(sock) if f[3] == "phx_reply"]

    assert [r["status"] for r in replies] == ["ok"] * fits + ["error"]
    assert replies[-1]["response"] == {"reason": "replay_limited"}
    assert LOBBY not in sock.channels
    # A catch-up costs only what it missed: the newest id replays nothing, and is let in.
    newest = (await stored(node))[-1].id
    await sock.handle(text("c", "c", LOBBY, "phx_join", {"user": "alice", "last_seen_id": newest}))
    assert [f[4]["status"] for f in take(sock) if f[3] == "phx_reply"] == ["ok"]
    frozen_clock.now += replay_size / rate  # refilled by one replay's worth
    await sock.handle(text("r", "r", LOBBY, "phx_join", {"user": "alice"}))
    assert [f[4]["status"] for f in take(sock) if f[3] == "phx_reply"] == ["ok"]
    assert node.metrics.messages_rejected.labels("replay_limited")._value.get() == 1


class GatedBroker(MemoryBroker):
    """history() stops at a gate the test opens, either before or after reading the history."""

    def __init__(self, history_size: int, *, read_before_gate: bool) -> None:
        super().__init__(history_size)
        self.read_before_gate = read_before_gate
        self.waiting = asyncio.Event()
        self.gate = asyncio.Event()

    async def history(self, topic: str, after: str | None) -> Replay:
        kept = await super().history(topic, after) if self.read_before_gate else None
        self.waiting.set()
        await self.gate.wait()
        return kept if kept is not None else await super().history(topic, after)


@pytest.mark.parametrize(
    "read_before_gate", [True, False], ids=["not-in-the-replayed-history", "also-in-the-replayed-history"]
)
async def test_message_published_while_a_joiner_replays_history_is_delivered_once_and_in_order(
    read_before_gate: bool,
) -> None:
    broker = GatedBroker(100, read_before_gate=read_before_gate)
    node = await make_node(broker)
    first = await publish(node, "one")
    second = await publish(node, "two")
    sock = node.new_socket()

    join = asyncio.create_task(sock.handle(text("1", "1", LOBBY, "phx_join", {"user": "alice"})))
    async with asyncio.timeout(DEADLINE):
        await broker.waiting.wait()
    third = await publish(node, "three")
    broker.gate.set()
    async with asyncio.timeout(DEADLINE):
        await join

    frames = take(sock)
    assert frames[0] == ["1", "1", LOBBY, "phx_reply", OK]
    assert [m["id"] for m in new_msg(frames)] == [first.id, second.id, third.id]


class LateBusBroker(MemoryBroker):
    """Stores at once but hands live messages over only when told: in stage 2 the stream
    (XADD) is written before the bus carries the message to the other nodes, so a joiner's
    history can hold a message whose live copy reaches its node after the join is done."""

    def __init__(self, history_size: int) -> None:
        super().__init__(history_size)
        self.holding = False
        self.held: list[Delivery] = []

    def _send(self, delivery: Delivery) -> None:
        if self.holding:
            self.held.append(delivery)
        else:
            super()._send(delivery)

    def release(self) -> None:
        self.holding = False
        for delivery in self.held:
            super()._send(delivery)
        self.held.clear()


async def test_a_replayed_message_whose_live_copy_arrives_after_the_join_is_not_sent_twice() -> None:
    broker = LateBusBroker(100)
    node = await make_node(broker)
    first = await publish(node, "one")
    broker.holding = True
    second = await publish(node, "two")  # in history, its live copy still on the bus
    sock = node.new_socket()
    await sock.handle(text("1", "1", LOBBY, "phx_join", {"user": "alice"}))
    assert [m["id"] for m in new_msg(take(sock))] == [first.id, second.id]  # the replay

    broker.release()  # "two" arrives live, after the join replayed it
    third = await publish(node, "three")  # and the next one is delivered as usual
    frames = await take_when_ids(sock, [third.id])
    assert [m["id"] for m in new_msg(frames)] == [third.id]


async def take_when_ids(sock: PhoenixSocket, ids: list[str]) -> list[list[Any]]:
    """`take(sock)` once every message of `ids` is queued."""

    def queued() -> bool:
        seen = {json.loads(frame)[4].get("id") for frame in sock.outbox.frames}
        return set(ids) <= seen

    await async_wait_until(queued, DEADLINE, f"{ids} queued", 0.005)
    return take(sock)


async def test_broadcast_arriving_before_the_join_reply_is_sent_after_it() -> None:
    broker = GatedBroker(100, read_before_gate=False)
    node = await make_node(broker)
    sock = node.new_socket()

    join = asyncio.create_task(sock.handle(text("1", "1", LOBBY, "phx_join", {"user": "alice"})))
    async with asyncio.timeout(DEADLINE):
        await broker.waiting.wait()
    await broker.broadcast(LOBBY, "user:entered", {"user": "carol"})
    broker.gate.set()
    async with asyncio.timeout(DEADLINE):
        await join

    carol = [None, None, LOBBY, "user:entered", {"user": "carol"}]
    frames = await take_when(sock, carol)
    assert frames[0] == ["1", "1", LOBBY, "phx_reply", OK]
    assert frames.count(carol) == 1


# Broker unavailable ----------------------------------------------------------------------


class SwitchableBroker(MemoryBroker):
    """A MemoryBroker that can be switched off, as a Redis broker is while Redis is down."""

    def __init__(self, history_size: int) -> None:
        super().__init__(history_size)
        self.down = False

    async def history(self, topic: str, after: str | None) -> Replay:
        if self.down:
            raise BrokerUnavailable("down")
        return await super().history(topic, after)

    async def publish(self, topic: str, draft: Draft, node: str) -> ChatMessage:
        if self.down:
            raise BrokerUnavailable("down")
        return await super().publish(topic, draft, node)


async def test_join_while_the_broker_is_unavailable_replies_error_unavailable() -> None:
    broker = SwitchableBroker(100)
    node = await make_node(broker)
    broker.down = True
    sock = node.new_socket()

    await sock.handle(text("1", "1", LOBBY, "phx_join", {"user": "alice"}))

    assert take(sock) == [["1", "1", LOBBY, "phx_reply", {"status": "error", "response": {"reason": "unavailable"}}]]
    assert LOBBY not in node.hub.members


async def test_new_msg_while_the_broker_is_unavailable_replies_error_and_is_not_broadcast() -> None:
    broker = SwitchableBroker(100)
    node = await make_node(broker)
    alice = await joined(node, "alice")
    bob = await joined(node, "bob")
    take(alice)
    broker.down = True

    await alice.handle(text("1", "2", LOBBY, "new:msg", {"user": "alice", "body": "hi"}))

    assert take(alice) == [["1", "2", LOBBY, "phx_reply", {"status": "error", "response": {"reason": "unavailable"}}]]
    assert take(bob) == []
    broker.down = False
    assert await stored(node) == []


async def test_a_push_as_system_is_refused_and_neither_stored_nor_broadcast() -> None:
    node = await make_node()
    sock = await joined(node, "mallory")
    take(sock)

    await sock.handle(
        text("1", "2", LOBBY, "new:msg", {"user": "SYSTEM", "body": "server restarting, log in at evil.example"})
    )

    reason = {"reason": "user SYSTEM is reserved for the server"}
    assert take(sock) == [["1", "2", LOBBY, "phx_reply", {"status": "error", "response": reason}]]
    assert await stored(node) == []


async def test_a_join_as_system_is_refused() -> None:
    node = await make_node()
    sock = node.new_socket()

    await sock.handle(text("1", "1", LOBBY, "phx_join", {"user": "system"}))

    reason = {"reason": "user SYSTEM is reserved for the server"}
    assert take(sock) == [["1", "1", LOBBY, "phx_reply", {"status": "error", "response": reason}]]
    assert LOBBY not in sock.channels


# Rate limit ------------------------------------------------------------------------------


class FrozenTime:
    """Stands in for the `time` module inside shared.socket only; `monotonic()` moves when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> FrozenTime:
    """The socket module's clock, stopped: "quick" pushes are quick however slow the machine."""
    clock = FrozenTime()
    monkeypatch.setattr(shared.socket, "time", clock)
    return clock


async def rate_limited_socket(node: ChatNode) -> PhoenixSocket:
    """A joined socket that has used 20 pushes (the join and 19 messages), all accepted."""
    sock = node.new_socket()
    await sock.handle(text("1", "1", LOBBY, "phx_join", {"user": "alice"}))
    for n in range(2, 21):
        await sock.handle(text("1", str(n), LOBBY, "new:msg", {"user": "alice", "body": f"message {n}"}))
    replies = [f for f in take(sock) if f[3] == "phx_reply"]
    assert [r[4]["status"] for r in replies] == ["ok"] * 20
    return sock


async def test_the_21st_quick_push_replies_rate_limited_and_is_not_stored(frozen_clock: FrozenTime) -> None:
    node = await make_node(rate_limit=(10.0, 20))
    sock = await rate_limited_socket(node)

    await sock.handle(text("1", "21", LOBBY, "new:msg", {"user": "alice", "body": "one too many"}))

    assert take(sock) == [["1", "21", LOBBY, "phx_reply", {"status": "error", "response": {"reason": "rate_limited"}}]]
    assert len(await stored(node)) == 19


async def test_a_heartbeat_past_the_limit_replies_rate_limited(frozen_clock: FrozenTime) -> None:
    node = await make_node(rate_limit=(10.0, 20))
    sock = await rate_limited_socket(node)

    await sock.handle(text(None, "hb", "phoenix", "heartbeat"))

    assert take(sock) == [
        [None, "hb", "phoenix", "phx_reply", {"status": "error", "response": {"reason": "rate_limited"}}]
    ]


async def test_heartbeats_use_up_the_burst(frozen_clock: FrozenTime) -> None:
    node = await make_node(rate_limit=(10.0, 20))
    sock = node.new_socket()
    for n in range(20):
        await sock.handle(text(None, f"hb{n}", "phoenix", "heartbeat"))

    await sock.handle(text("1", "1", LOBBY, "phx_join", {"user": "alice"}))

    replies = take(sock)
    assert replies[:20] == [[None, f"hb{n}", "phoenix", "phx_reply", OK] for n in range(20)]
    assert replies[20] == ["1", "1", LOBBY, "phx_reply", {"status": "error", "response": {"reason": "rate_limited"}}]


async def test_invalid_pushes_use_up_the_burst(frozen_clock: FrozenTime) -> None:
    node = await make_node(rate_limit=(10.0, 20))
    sock = node.new_socket()
    for n in range(20):
        await sock.handle(text(None, str(n), LOBBY, "new:msg", {"user": "eve", "body": ""}))

    await sock.handle(text("1", "join", LOBBY, "phx_join", {"user": "eve"}))

    assert take(sock)[-1] == [
        "1",
        "join",
        LOBBY,
        "phx_reply",
        {"status": "error", "response": {"reason": "rate_limited"}},
    ]


async def test_frames_refused_for_the_rate_cost_a_token_too(frozen_clock: FrozenTime) -> None:
    """A flooder that keeps sending runs into debt: one second's refill is not enough to get through."""
    node = await make_node(rate_limit=(10.0, 20))
    sock = await rate_limited_socket(node)
    for n in range(30):  # refused, and each one costs: 20 tokens of debt (the floor)
        await sock.handle(text(None, f"hb{n}", "phoenix", "heartbeat"))
    take(sock)

    frozen_clock.now += 2.0  # 20 tokens: the debt paid, nothing saved
    await sock.handle(text(None, "late", "phoenix", "heartbeat"))
    frozen_clock.now += 0.2  # the refused one cost a token too: two more to get one through
    await sock.handle(text(None, "paid", "phoenix", "heartbeat"))

    reasons = [f[4]["response"].get("reason", f[4]["status"]) for f in take(sock)]
    assert reasons == ["rate_limited", "ok"]


async def test_the_bucket_refills_at_the_rate_per_second(frozen_clock: FrozenTime) -> None:
    node = await make_node(rate_limit=(10.0, 20))
    sock = await rate_limited_socket(node)

    frozen_clock.now += 1.0
    for n in range(21, 32):
        await sock.handle(text("1", str(n), LOBBY, "new:msg", {"user": "alice", "body": f"message {n}"}))

    statuses = [f[4]["response"].get("reason", f[4]["status"]) for f in take(sock) if f[3] == "phx_reply"]
    assert statuses == ["ok"] * 10 + ["rate_limited"]


# Socket lifetime: close codes, slow consumers, idle timeout ------------------------------


async def test_slow_consumer_is_dropped_with_1008_while_another_member_gets_every_message() -> None:
    node = await make_node()
    slow = node.new_socket(outbox_limit=4096)
    await slow.handle(text("1", "1", LOBBY, "phx_join", {"user": "slow"}))
    never = asyncio.Event()

    async def stuck_send(frame: str) -> None:
        await never.wait()  # a client that stopped reading

    slow_in: asyncio.Queue[str] = asyncio.Queue()
    slow_run = asyncio.create_task(slow.run(slow_in.get, stuck_send))
    async with Client(node) as fast:
        await fast.join("fast")
        sent = [await publish(node, f"{n} " + "x" * 300) for n in range(40)]

        async with asyncio.timeout(DEADLINE):
            code = await slow_run
        received = [await fast.recv_event("new:msg") for _ in sent]

        assert code == 1008
        assert [f[4]["id"] for f in received] == [m.id for m in sent]
        assert node.metrics.registry.get_sample_value("chat_drops_total") == 1
        assert slow.channels == {}
        assert {ch.socket for ch in node.hub.members[LOBBY]} == {fast.socket}  # type: ignore[attr-defined]


async def test_a_join_into_a_room_whose_list_passes_the_socket_bound_is_taken_whole() -> None:
    """A join's frames are one burst, held to the node's budget only: a presence list
    grows with the room, and a large room must not make every joiner "too slow"."""
    node = await make_node()
    for i in range(60):
        await joined(node, f"user{i:02}")
    await async_wait_until(lambda: LOBBY not in node.tracker._batches, DEADLINE, "the joins' diff sent", 0.005)
    sock = node.new_socket(outbox_limit=4096)

    await sock.handle(text("1", "1", LOBBY, "phx_join", {"user": "late"}))

    assert sock.state is State.NEW and sock.code is None  # not dropped
    frames = take(sock)
    [state] = [f[4] for f in frames if f[3] == "presence_state"]
    assert len(json.dumps(state)) > 4096 and len(state) == 61
    # Past the burst, the socket's own bound holds again.
    await async_wait_until(lambda: LOBBY not in node.hub._events, DEADLINE, "the batch sent", 0.005)
    take(sock)
    for n in range(20):
        await publish(node, f"{n} " + "x" * 300)
    assert sock.state is State.CLOSED and sock.code == 1008


async def test_idle_socket_is_closed_with_1001_once_silent_past_its_timeout() -> None:
    node = await make_node()
    sock = node.new_socket(idle_timeout=10.0)
    silence = asyncio.Event()

    async def receive() -> str:
        await silence.wait()
        raise AssertionError("never sends")

    async def send(frame: str) -> None:
        pass

    run = asyncio.create_task(sock.run(receive, send))
    await asyncio.sleep(0)
    sock.close_if_idle(sock.last_in + 9.9)
    await asyncio.sleep(0.01)
    assert not run.done()  # silent, but not long enough
    sock.close_if_idle(sock.last_in + 10.1)

    async with asyncio.timeout(DEADLINE):
        assert await run == 1001


async def test_binary_frame_closes_with_1007() -> None:
    node = await make_node()
    async with Client(node) as client:
        await client.send_raw(b'["1","1","rooms:lobby","phx_join",{}]')

        assert await client.close_code() == 1007


async def test_unparseable_frame_closes_with_1007() -> None:
    node = await make_node()
    async with Client(node) as client:
        await client.send_raw("hello?")

        assert await client.close_code() == 1007


async def test_frame_over_64_kib_closes_with_1009() -> None:
    node = await make_node()
    async with Client(node) as client:
        await client.send_raw(text("1", "1", LOBBY, "phx_join", {"pad": "x" * MAX_FRAME_BYTES}))

        assert await client.close_code() == 1009


async def test_close_flushes_queued_frames_then_returns_the_code() -> None:
    node = await make_node()
    async with Client(node) as client:
        await client.send(None, "1", "phoenix", "heartbeat")
        assert await client.recv() == [None, "1", "phoenix", "phx_reply", OK]
        client.socket.send(text(None, None, LOBBY, "last", {}))

        client.socket.close(1001)

        assert await client.close_code() == 1001
        assert await client.recv() == [None, None, LOBBY, "last", {}]


async def test_the_first_close_code_wins_and_a_close_after_the_end_changes_nothing() -> None:
    node = await make_node()
    async with Client(node) as client:
        await client.join("alice")
        client.socket.close(1001)
        client.socket.close(1012)

        assert await client.close_code() == 1001
        client.socket.close(1011)
        assert (client.socket.state, client.socket.code) == (State.CLOSED, 1001)


def test_every_state_is_reached_and_closed_is_final() -> None:
    reachable = {State.NEW} | {after for nexts in NEXT.values() for after in nexts}
    assert reachable == set(State)
    assert NEXT[State.CLOSED] == frozenset()
    assert all(State.NEW not in nexts for nexts in NEXT.values())  # no way back


async def test_a_cancellation_from_outside_goes_on_up_and_the_socket_leaves_its_room() -> None:
    """Only the socket's own interruption (entering CLOSED) is taken back; a server
    cancelling the connection's task sees its CancelledError."""
    node = await make_node()
    client = Client(node)
    async with client:
        await client.join("alice")
        await client.recv_event("presence_state")
        assert client.task is not None
        client.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await client.task
    assert LOBBY not in node.hub.members
    assert len(node.tracker.room(LOBBY)) == 0


async def test_a_socket_that_ends_leaves_its_room_and_its_presence_leaves() -> None:
    node = await make_node()
    async with Client(node) as alice, Client(node) as bob:
        await alice.join("alice")
        await bob.join("bob")
        await alice.recv_event("presence_diff", lambda diff: "bob" in diff["joins"])

        await bob.send_raw("garbage")
        assert await bob.close_code() == 1007
        diff = (await alice.recv_event("presence_diff", lambda diff: bool(diff["leaves"])))[4]

        assert list(diff["leaves"]) == ["bob"]
        assert {ch.socket for ch in node.hub.members[LOBBY]} == {alice.socket}  # type: ignore[attr-defined]
        assert list(node.tracker.room(LOBBY).state()) == ["alice"]


# The original's demo timer ---------------------------------------------------------------


async def test_joined_socket_receives_the_system_ping() -> None:
    node = await make_node(ping_interval=0.01)
    async with Client(node) as alice:
        await alice.join("alice")
        pinger = asyncio.create_task(node.ping_forever())
        try:
            ping = await alice.recv_event("new:msg")
        finally:
            pinger.cancel()

    assert ping == [None, None, LOBBY, "new:msg", {"user": "SYSTEM", "body": "ping"}]


async def test_ping_interval_zero_turns_the_ping_off() -> None:
    node = await make_node(ping_interval=0)

    async with asyncio.timeout(DEADLINE):
        assert await node.ping_forever() is None


class CountingTransport:
    """A transport that keeps every write, for counting system calls."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def text_frames(data: bytes) -> list[list[Any]]:
    """The server's text frames in `data`, decoded."""
    reader = FrameProtocol(client=True, extensions=[])
    reader.receive_bytes(data)
    return [json.loads(frame.payload) for frame in reader.received_frames()]


async def test_a_join_with_history_goes_out_in_one_write_in_order() -> None:
    """Reply, own user:entered, join, presence_state and the history: one write, not one per frame."""
    node = await make_node()
    for n in range(5):
        await publish(node, f"m{n}")
    sock, transport = node.new_socket(), CountingTransport()
    incoming: asyncio.Queue[str] = asyncio.Queue()
    run = asyncio.create_task(sock.run(incoming.get, incoming.put, transport))  # type: ignore[arg-type]
    await incoming.put(text("1", "1", LOBBY, "phx_join", {"user": "alice"}))

    await async_wait_until(lambda: len(transport.writes) >= 1, DEADLINE, "the join's write")
    run.cancel()

    joined, *later = (text_frames(data) for data in transport.writes)
    assert all(f[3] == "presence_diff" for frames in later for f in frames)  # on its own timer
    assert [f[3] for f in joined] == ["phx_reply", "user:entered", "join", "presence_state", *["new:msg"] * 5]
    assert [f[4]["body"] for f in joined[4:]] == [f"m{n}" for n in range(5)]
