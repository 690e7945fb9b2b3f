"""The hub's batching: room events go out one write per socket per batch, in a window that
grows with what a flush costs; stored messages go out at once, unless the room's last
fan-out of messages was slow (SLOW_FAN_OUT)."""

from __future__ import annotations

import asyncio
import functools
import types
from collections.abc import Callable
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


def flushed(member: Recorder, count: int) -> bool:
    return len(member.calls) == count


def fire_at_once(monkeypatch: pytest.MonkeyPatch, timer: Callable[[str], None]) -> list[float]:
    """The hub's `timer` fires on the loop's next turn; returns the delays it was set for."""
    loop = asyncio.get_running_loop()
    real_call_later = loop.call_later
    delays: list[float] = []

    def call_later(delay: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        if callback == timer:
            delays.append(delay)
            delay = 0
        return real_call_later(delay, callback, *args)

    monkeypatch.setattr(loop, "call_later", call_later)
    return delays


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


def message(n: int) -> Delivery:
    return Delivery(LOBBY, f'[null,null,"{LOBBY}","new:msg",{{"body":"m{n}"}}]', message_id=f"{n}-0")


async def test_stored_messages_go_out_at_once_while_fan_outs_are_cheap() -> None:
    hub = make_hub()
    member = Recorder()
    hub.add(LOBBY, member)

    for n in range(3):
        hub.deliver(message(n))

    assert member.calls == [("one", [message(n).frame], text_frame(message(n).frame)) for n in range(3)]


async def test_after_a_slow_fan_out_messages_wait_as_long_and_go_out_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fan-out that took 50 ms makes the next messages wait until 50 ms after it ended,
    then go out in one write per socket."""
    hub = make_hub()
    member = Recorder()
    hub.add(LOBBY, member)
    delays = fire_at_once(monkeypatch, hub._flush_messages)
    # Each message's arrival, then each fan-out's start and end.
    clock = iter([9.99, 10.0, 10.05, 10.06, 10.2, 10.201, 10.3, 10.3, 10.301])
    monkeypatch.setattr(shared.hub, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))

    hub.deliver(message(0))
    hub.deliver(message(1))  # 10 ms after a 50 ms fan-out ended: waits 40 ms
    hub.deliver(message(2))  # joins it, no clock read
    assert member.calls == [("one", [message(0).frame], text_frame(message(0).frame))]
    await async_wait_until(lambda: len(member.calls) == 2, what="the waiting messages")

    assert delays == [pytest.approx(0.04)]
    frames = [message(1).frame, message(2).frame]
    assert member.calls[1] == ("many", frames, b"".join(text_frame(f) for f in frames))
    hub.deliver(message(3))  # that fan-out took 1 ms: the next goes at once
    assert member.calls[2] == ("one", [message(3).frame], text_frame(message(3).frame))


async def test_the_window_grows_to_a_multiple_of_what_the_last_flush_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush that took 50 ms makes the room's next batch wait FLUSH_COST_FACTOR x 50 ms."""
    hub = make_hub()
    member = Recorder()
    hub.add(LOBBY, member)
    delays = fire_at_once(monkeypatch, hub._flush_events)
    clock = iter([10.0, 10.05, 20.0, 20.001, 30.0, 32.0, 40.0, 40.001])  # (start, end) of each flush
    monkeypatch.setattr(shared.hub, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))

    for flushes in range(1, 5):
        hub.deliver(event("x"))
        await async_wait_until(functools.partial(flushed, member, flushes), what="the flush")

    assert delays[0] == shared.hub.EVENT_BATCH_SECONDS  # a room with no flush yet
    assert delays[1] == pytest.approx(shared.hub.FLUSH_COST_FACTOR * 0.05)
    assert delays[2] == shared.hub.EVENT_BATCH_SECONDS  # a cheap flush brings it back down
    assert delays[3] == shared.hub.EVENT_WAIT_LIMIT  # after a 2 s flush: the limit, not 18 s


class Spy(Recorder):
    """A member that, at the first write any member sharing `hooks` gets, has the hook run on
    the loop's next turn: between two chunks of a flush."""

    def __init__(self, hooks: list[Callable[[], None]]) -> None:
        super().__init__()
        self.hooks = hooks

    def deliver_many(self, deliveries: list[Delivery], wires: list[bytes], together: bytes) -> None:
        if self.hooks:
            asyncio.get_running_loop().call_soon(self.hooks.pop())
        super().deliver_many(deliveries, wires, together)


async def test_a_large_room_gets_a_batch_in_chunks_with_the_loop_free_between_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stored messages go out between the chunks; every member gets the batch once, one
    that left meanwhile nothing more, and a batch that came meanwhile only after it, even
    with no wait at all between batches."""
    hub = make_hub()
    loop = asyncio.get_running_loop()
    real_call_later = loop.call_later

    after_first: list[bool] = []  # for the second batch's wait: was the first written to everyone?

    def call_later(delay: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        if callback != hub._flush_events:
            return real_call_later(delay, callback, *args)
        if "early" in seen:
            after_first.append(all(m.calls and m.calls[-1][1] != [message(1).frame] for m in seen["late"]))
        return real_call_later(0, callback, *args)

    monkeypatch.setattr(loop, "call_later", call_later)
    hooks: list[Callable[[], None]] = []
    members = [Spy(hooks) for _ in range(5 * shared.hub.FLUSH_CHUNK)]
    for member in members:
        hub.add(LOBBY, member)
    newcomers = [Spy(hooks) for _ in range(5 * shared.hub.FLUSH_CHUNK)]
    first, second = event("a"), event("b")
    seen: dict[str, list[Spy]] = {}

    def between() -> None:
        seen["early"] = [m for m in members if m.calls]
        late = [m for m in members if not m.calls]
        seen["late"], seen["gone"] = late[:-1], late[-1:]
        hub.remove(LOBBY, late[-1])
        for newcomer in newcomers:  # joins meanwhile: the room's set grows, its order changes
            hub.add(LOBBY, newcomer)
        hub.deliver(message(1))  # to everyone at once
        hub.deliver(second)  # waits until the first batch is written to everyone

    hooks.append(between)
    hub.deliver(first)
    await async_wait_until(lambda: "early" in seen, what="the first chunk")
    early, late, gone = seen["early"], seen["late"], seen["gone"][0]
    await async_wait_until(lambda: all(len(m.calls) == 3 for m in early + late), what="both batches")
    await async_wait_until(lambda: all(len(m.calls) == 2 for m in newcomers), what="the newcomers' two")

    assert len(early) == shared.hub.FLUSH_CHUNK, "the other chunks wait for later turns of the loop"
    for member in early:  # the batch, then the message
        assert [c[1] for c in member.calls] == [[first.frame], [message(1).frame], [second.frame]]
    for member in late:  # the message went first
        assert [c[1] for c in member.calls] == [[message(1).frame], [first.frame], [second.frame]]
    assert gone.calls == []  # it left before its chunk
    assert after_first == [True], "the second batch's wait began only once the first was written"
    for member in newcomers:  # not in the room when the first batch began
        assert [c[1] for c in member.calls] == [[message(1).frame], [second.frame]]
