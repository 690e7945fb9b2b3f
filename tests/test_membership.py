"""Membership in one process: two nodes' memberships and hubs, their Redis channels replaced
by a wire that parses each line and hands it to the other (stage2_cluster/membership.py).

What a real cluster shows in tests/test_stage2_presence_heal.py, here without processes,
with a send that fails once: the next full sync heals it; a full sync empties the topics
it leaves out; a new incarnation's handshake or heartbeat drops what the old one left, and
a late line of the old one changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest

from shared.broker import BrokerUnavailable
from shared.hub import Hub
from shared.metrics import Metrics
from shared.presence import Entry
from shared.tracker import PresenceTracker
from stage2_cluster import lines, membership
from stage2_cluster.membership import Membership
from stage2_cluster.registry import Holder
from stage2_cluster.settings import ClusterSettings
from tests.helpers.waits import async_wait_until

LOBBY = "rooms:lobby"
A, B = "a@x", "b@x"
OTHER_BOOT = "f" * 16


class Wire:
    """The nodes' channels: `send` parses a line and hands it to each node it is for."""

    def __init__(self) -> None:
        self.nodes: dict[str, Membership] = {}
        self.lose: set[lines.Kind] = set()  # the next line of each of these kinds fails to send
        self.lost: list[str] = []

    async def send(self, nodes: list[str], line: str) -> None:
        kind = lines.Kind(line[0])
        if kind in self.lose:
            self.lose.discard(kind)
            self.lost.append(line)
            raise BrokerUnavailable("the test lost this line")
        parsed = lines.parse(line)
        assert not isinstance(parsed, (lines.Stored, lines.Broadcast))
        for name in nodes:
            if name in self.nodes:
                self.nodes[name].on_control(parsed)


class Broker:
    """What membership asks of the broker, over the wire."""

    heard_at = 0.0

    def __init__(self, wire: Wire) -> None:
        self.send = wire.send

    async def catch_up(self) -> int:
        return 0


class Registry:
    """A registry whose claims always succeed."""

    async def claim(self, name: str, boot: str, address: str, ttl: float) -> Holder | None:
        return None

    async def prune(self, keep: float, besides: str) -> list[str]:
        return []


class Node:
    def __init__(self, name: str, wire: Wire) -> None:
        settings = ClusterSettings(node_name=name, redis_url="redis://127.0.0.1:1/0", cluster_cookie="c" * 16)
        metrics = Metrics()
        self.membership = Membership(settings, metrics)
        self.tracker = PresenceTracker(name, Hub(metrics).deliver, self.membership.replicate_presence)
        self.tasks: set[asyncio.Task[None]] = set()
        self.membership.attach(Broker(wire), self.tracker, Registry(), self.spawn)  # type: ignore[arg-type]
        wire.nodes[name] = self.membership

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def users(self, topic: str = LOBBY) -> set[str]:
        room = self.tracker.rooms.get(topic)
        return {key for key in room.state()} if room is not None else set()


@pytest.fixture
def wire() -> Wire:
    return Wire()


async def connected(wire: Wire) -> tuple[Node, Node]:
    a, b = Node(A, wire), Node(B, wire)
    await a.membership.add(B, "127.0.0.1:2", b.membership.boot)
    await b.membership.add(A, "127.0.0.1:1", a.membership.boot)
    return a, b


@contextlib.contextmanager
def beating(node: Node, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`node`'s heartbeat loop, beating fast and sending a full sync at every beat."""
    monkeypatch.setattr(membership, "HEARTBEAT_INTERVAL", 0.01)
    monkeypatch.setattr(membership, "SYNC_INTERVAL", 0.0)
    task = node.spawn(node.membership.heartbeat_forever())
    try:
        yield
    finally:
        task.cancel()


async def test_a_presence_line_that_failed_to_send_is_healed_by_the_next_full_sync(
    wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await connected(wire)
    wire.lose.add(lines.Kind.PRESENCE)
    a.tracker.track(LOBBY, "alice", {"phx_ref": "r1"})
    await async_wait_until(lambda: wire.lost, what="alice's join sent, and lost")
    assert a.users() == {"alice"} and b.users() == set()
    with beating(a, monkeypatch):
        await async_wait_until(lambda: b.users() == {"alice"}, what="b has alice after a's full sync")


async def test_a_full_sync_empties_the_topics_it_leaves_out(wire: Wire) -> None:
    a, b = await connected(wire)
    ghost = Entry(A, "mallory", {"phx_ref": "ghost"})
    b.membership.on_control(lines.PresenceChange(A, a.membership.boot, LOBBY, [ghost], []))
    assert b.users() == {"mallory"}
    b.membership.on_control(lines.Sync(A, a.membership.boot, {}, want_reply=False))
    assert b.users() == set()


@pytest.mark.parametrize("meets", ["handshake", "heartbeat"])
async def test_a_new_incarnation_drops_what_the_old_one_left_and_its_late_lines_change_nothing(
    wire: Wire, meets: str
) -> None:
    a, b = await connected(wire)
    old_boot = a.membership.boot
    a.tracker.track(LOBBY, "alice", {"phx_ref": "r1"})
    await async_wait_until(lambda: b.users() == {"alice"}, what="alice replicated to b")
    if meets == "handshake":
        await b.membership.add(A, "127.0.0.1:1", OTHER_BOOT)
    else:
        b.membership.on_control(lines.Heartbeat(A, OTHER_BOOT))
    assert b.users() == set()
    assert b.membership.peers[A].boot == OTHER_BOOT
    late = Entry(A, "alice", {"phx_ref": "r1"})
    b.membership.on_control(lines.PresenceChange(A, old_boot, LOBBY, [late], []))
    b.membership.on_control(lines.Sync(A, old_boot, {LOBBY: [late]}, want_reply=False))
    assert b.users() == set()
