"""The fan-out: which local channels are in which topic, and handing them broadcasts.

The broker hands every broadcast of the cluster to `Hub.deliver`, already encoded;
the hub only writes that one string to each local member. Nothing here awaits, so a
slow socket can never hold up the others. Who is online is the tracker's (tracker.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from shared.broker import Delivery
from shared.metrics import Metrics
from shared.transport import text_frame


class Member(Protocol):
    """A joined channel, as the hub sees it."""

    def deliver(self, delivery: Delivery, wire: bytes) -> None: ...

    def deliver_many(self, deliveries: list[Delivery], wires: list[bytes], together: bytes) -> None: ...


EVENT_BATCH_SECONDS = 0.02
# A room's next batch of events waits this many times as long as its last flush took, so
# in a large room a join storm spends about a tenth of the loop on fanning out events (up
# to a third while the room doubles every batch), however fast the joins come, and the
# joins get the rest; a quiet room keeps the 20 ms. Each flush writes once to every
# member, whatever it carries.
FLUSH_COST_FACTOR = 9.0
EVENT_WAIT_LIMIT = 5.0  # ...but never longer: presence on every page is at most this late
# A flush writes to this many members per turn of the event loop: in a room of 10,000 a
# join storm's batch is hundreds of KB per member, seconds of writing, and stored messages
# and joins go between the chunks instead of waiting for all of it.
FLUSH_CHUNK = 500


# A room's stored messages go out the moment they arrive, unless its last fan-out of messages
# took longer than SLOW_FAN_OUT: then the next waits until as long again has passed since that
# one ended, and whatever arrives meanwhile goes out with it, in one write per socket. So a
# room too large for one core to write each message to every socket on its own (15,000
# sockets at 10 messages a second) spends about half the loop on its messages and sends
# two or more per write, each waiting at most as long as one fan-out took; a smaller room
# never waits (W1's 500 sockets a node take about 3 ms).
SLOW_FAN_OUT = 0.005


# Rewrites one batch of a room's events before it goes out (channel.coalesce_entered).
Coalesce = Callable[[str, list[Delivery]], list[Delivery]]


def _excluded(delivery: Delivery, member: Member) -> bool:
    """`exclude` names one member (Phoenix's broadcast_from) or a frozenset of them."""
    exclude = delivery.exclude
    return exclude is member or (type(exclude) is frozenset and member in exclude)


class Hub:
    def __init__(self, metrics: Metrics, coalesce: Coalesce | None = None) -> None:
        self.metrics = metrics
        self.coalesce = coalesce
        self.members: dict[str, set[Member]] = {}
        self._events: dict[str, list[Delivery]] = {}  # per topic, events waiting to go out together
        self._flush_cost: dict[str, float] = {}  # per topic, seconds the last flush of events took
        self._flushing: set[str] = set()  # topics whose events are being written, chunk by chunk
        self._messages: dict[str, list[Delivery]] = {}  # per topic, stored messages waiting (SLOW_FAN_OUT)
        self._messages_at: dict[str, float] = {}  # per topic, when (perf_counter) messages may go again

    def add(self, topic: str, member: Member) -> None:
        self.members.setdefault(topic, set()).add(member)

    def remove(self, topic: str, member: Member) -> None:
        room = self.members.get(topic)
        if room is not None:
            room.discard(member)
            if not room:
                del self.members[topic]

    def deliver(self, delivery: Delivery) -> None:
        """Hand a broadcast to every local member: stored messages at once (but see
        SLOW_FAN_OUT), events in batches.

        A join storm of N users sends N `user:entered` to each of N sockets; gathered for a
        few milliseconds, each socket gets them in one write instead of one write each."""
        if delivery.message_id is None:
            batch = self._events.get(delivery.topic)
            if batch is None:
                batch = self._events[delivery.topic] = []
                if delivery.topic not in self._flushing:  # else its end starts the wait
                    self._wait_for_events(delivery.topic)
            batch.append(delivery)
            return
        topic = delivery.topic
        waiting = self._messages.get(topic)
        if waiting is not None:
            waiting.append(delivery)
            return
        if topic not in self.members:
            return
        wait = self._messages_at.get(topic, 0.0) - time.perf_counter()
        if wait > 0:
            self._messages[topic] = [delivery]
            asyncio.get_running_loop().call_later(wait, self._flush_messages, topic)
            return
        self._fan_out_messages(topic, [delivery])

    def _flush_messages(self, topic: str) -> None:
        self._fan_out_messages(topic, self._messages.pop(topic))

    def _fan_out_messages(self, topic: str, deliveries: list[Delivery]) -> None:
        room = self.members.get(topic)
        if not room:
            self._messages_at.pop(topic, None)
            return
        started = time.perf_counter()
        # Framed once, the same bytes for every socket. A member may leave the set while we
        # iterate (a slow socket is dropped), hence the copy.
        if len(deliveries) == 1:
            delivery, wire = deliveries[0], text_frame(deliveries[0].frame)
            for member in tuple(room):
                member.deliver(delivery, wire)
        else:
            wires = [text_frame(d.frame) for d in deliveries]
            together = b"".join(wires)
            for member in tuple(room):
                member.deliver_many(deliveries, wires, together)
        self.metrics.messages_out.inc(len(deliveries))
        self.metrics.deliveries.inc(len(room) * len(deliveries))
        ended = time.perf_counter()
        cost = ended - started
        self._messages_at[topic] = ended + cost if cost > SLOW_FAN_OUT else 0.0

    def _wait_for_events(self, topic: str) -> None:
        delay = min(EVENT_WAIT_LIMIT, max(EVENT_BATCH_SECONDS, FLUSH_COST_FACTOR * self._flush_cost.get(topic, 0.0)))
        asyncio.get_running_loop().call_later(delay, self._flush_events, topic)

    def _flush_events(self, topic: str) -> None:
        deliveries = self._events.pop(topic)
        room = self.members.get(topic)
        if not room:
            self._flush_cost.pop(topic, None)
            return
        if self.coalesce is not None:
            deliveries = self.coalesce(topic, deliveries)
        wires = [text_frame(delivery.frame) for delivery in deliveries]
        excluded: set[object] = set()
        for delivery in deliveries:
            if type(delivery.exclude) is frozenset:
                excluded |= delivery.exclude
            elif delivery.exclude is not None:
                excluded.add(delivery.exclude)
        self._flushing.add(topic)
        self.metrics.messages_out.inc(len(deliveries))
        batch = EventBatch(topic, deliveries, wires, b"".join(wires), excluded, tuple(room))
        self._write_events(batch)

    def _write_events(self, batch: EventBatch) -> None:
        """One chunk of a batch's members, then the next chunk on the loop's next turn."""
        started = time.perf_counter()
        room = self.members.get(batch.topic, ())
        end = batch.next + FLUSH_CHUNK
        written = 0
        for member in batch.members[batch.next : end]:
            if member not in room:  # left since the batch began
                continue
            written += 1
            if member in batch.excluded:
                # A joiner heard its own user:entered already: everything else, still in one write.
                kept = [(d, w) for d, w in zip(batch.deliveries, batch.wires, strict=True) if not _excluded(d, member)]
                if kept:
                    member.deliver_many([d for d, _ in kept], [w for _, w in kept], b"".join(w for _, w in kept))
            else:
                member.deliver_many(batch.deliveries, batch.wires, batch.together)
        self.metrics.deliveries.inc(written * len(batch.deliveries))
        batch.next, batch.spent = end, batch.spent + time.perf_counter() - started
        if end < len(batch.members):
            asyncio.get_running_loop().call_soon(self._write_events, batch)
            return
        self._flushing.discard(batch.topic)
        self._flush_cost[batch.topic] = batch.spent
        if batch.topic in self._events:  # what arrived while this batch was written waits its turn
            self._wait_for_events(batch.topic)


@dataclass(slots=True)
class EventBatch:
    """A batch of a room's events being written, FLUSH_CHUNK members at a time."""

    topic: str
    deliveries: list[Delivery]
    wires: list[bytes]
    together: bytes
    excluded: set[object]
    members: tuple[Member, ...]  # the room when the batch began
    next: int = 0  # the first member of the next chunk
    spent: float = 0.0  # seconds its chunks took, together
