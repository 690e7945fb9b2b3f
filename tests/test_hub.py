"""The hub's batching of room events: one write per socket per batch, and a window that
grows with what a flush costs."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest

import shared.hub
from shared.broker import Delivery
from shared.hub import Hub
from shared.metrics import Metrics
from shared.transport import text_frame
from tests.helpers.waits import async_wait_until

LOBBY = "rooms:lobby"


class Recorder:
    """A member that records each call the hub makes on it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], bytes]] = []

    def deliver(self, delivery: Delivery, wire: bytes) -> None:
        self.calls.append(("one", [delivery.frame], wire))

    def deliver_many(self, deliveries: list[Delivery], wires: list[bytes], together: bytes) -> None:
        self.calls.append(("many", [d.frame for d in deliveries], together))


def make_hub() -> Hub:
    return Hub(Metrics())


def event(user: str, exclude: object = None) -> Delivery:
    return Delivery(LOBBY, f'[null,null,"{LOBBY}","user:entered",{{"user":"{user}"}}]', exclude=exclude)


async def test_a_join_storm_reaches_every_member_in_one_write_joiners_included() -> None:
    hub = make_hub()
    members = [Recorder() for _ in range(4)]
    for member in members:
        hub.add(LOBBY, member)
    joiner_a, joiner_b = members[0], members[1]
    events = [event("a", exclude=joiner_a), event("b", exclude=joiner_b), event("c")]

    for delivery in events:
        hub.deliver(delivery)
    assert all(not member.calls for member in members)  # nothing yet: the batch waits
    await async_wait_until(lambda: all(member.calls for member in members), what="the batch flushed")

    frames = [d.frame for d in events]
    for member in members[2:]:
        assert member.calls == [("many", frames, b"".join(text_frame(f) for f in frames))]
    # Each joiner already heard its own user:entered: the rest, still in one write.
    assert joiner_a.calls == [("many", frames[1:], b"".join(text_frame(f) for f in frames[1:]))]
    assert joiner_b.calls == [("many", [frames[0], frames[2]], text_frame(frames[0]) + text_frame(frames[2]))]


async def test_stored_messages_go_out_at_once() -> None:
    hub = make_hub()
    member = Recorder()
    hub.add(LOBBY, member)
    message = Delivery(LOBBY, f'[null,null,"{LOBBY}","new:msg",{{}}]', message_id="1-0")

    hub.deliver(message)

    assert member.calls == [("one", [message.frame], text_frame(message.frame))]


async def test_the_window_grows_to_a_multiple_of_what_the_last_flush_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush that took 50 ms makes the room's next batch wait FLUSH_COST_FACTOR x 50 ms."""
    hub = make_hub()
    member = Recorder()
    hub.add(LOBBY, member)
    loop = asyncio.get_running_loop()
    delays: list[float] = []
    real_call_later = loop.call_later

    def call_later(delay: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        if callback == hub._flush_events:
            delays.append(delay)
            delay = 0
        return real_call_later(delay, callback, *args)

    clock = iter([10.0, 10.05, 20.0, 20.001, 30.0, 30.001])  # (start, end) of each flush
    monkeypatch.setattr(loop, "call_later", call_later)
    monkeypatch.setattr(shared.hub, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))

    for flushes in range(1, 4):
        hub.deliver(event("x"))
        await async_wait_until(lambda n=flushes: len(member.calls) == n, what="the flush")

    assert delays[0] == shared.hub.EVENT_BATCH_SECONDS  # a room with no flush yet
    assert delays[1] == pytest.approx(shared.hub.FLUSH_COST_FACTOR * 0.05)
    assert delays[2] == shared.hub.EVENT_BATCH_SECONDS  # a cheap flush brings it back down
