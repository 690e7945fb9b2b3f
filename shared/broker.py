"""The broker: where messages are stored and how they reach every node.

A small interface in the manner of encode/broadcaster, chosen by URL: the in-memory
broker below serves one process (stage 1); stage 2 puts Redis behind the same
interface. The same test scenarios run against every implementation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from shared import protocol
from shared.history import IdClock, Replay, RoomHistory
from shared.messages import ChatMessage, Draft


class BrokerUnavailable(RuntimeError):
    """The backing store cannot be reached; the client is told `unavailable`."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """A broadcast frame, encoded once, for every local member of `topic`.

    `message_id` is set for stored messages so that a socket still replaying history
    can tell which live messages it has already sent.
    """

    topic: str
    frame: str
    message_id: str | None = None
    exclude: object = None  # a local member that must not get it (Phoenix's broadcast_from)


Deliver = Callable[[Delivery], None]


class Broker(Protocol):
    @property
    def status(self) -> str:
        """One word or phrase for the page's `redis:` line."""

    @property
    def available(self) -> bool:
        """False while the backing store is unreachable."""

    async def start(self, deliver: Deliver) -> None:
        """Begin handing every broadcast of the cluster to `deliver`."""

    async def stop(self) -> None: ...

    async def publish(self, topic: str, draft: Draft, node: str) -> ChatMessage:
        """Store `draft` and broadcast it as `new:msg` in one step; raises BrokerUnavailable.

        When the same user's message with the draft's `client_msg_id` is still in history,
        that message is returned instead, and nothing is stored or broadcast."""

    async def broadcast(self, topic: str, event: str, payload: dict[str, Any], *, exclude: object = None) -> None:
        """Send an event to every member but `exclude` without storing it; raises BrokerUnavailable.
        Other nodes' copies may go later, together with others (stage 2's RedisBroker)."""

    async def history(self, topic: str, after: str | None) -> Replay:
        """Stored messages newer than `after` (all kept ones when None), oldest first, with
        their payloads encoded; raises BrokerUnavailable."""


class MemoryBroker:
    """One process, no persistence: history lives as long as the node does."""

    status = "none (in-memory core, single node)"
    available = True

    def __init__(self, history_size: int) -> None:
        self._history_size = history_size
        self._rooms: dict[str, RoomHistory] = {}
        self._clock = IdClock()
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def stop(self) -> None:
        self._deliver = None

    async def publish(self, topic: str, draft: Draft, node: str) -> ChatMessage:
        room = self._rooms.setdefault(topic, RoomHistory(self._history_size))
        if draft.client_msg_id is not None and (stored := room.find(draft.user, draft.client_msg_id)):
            return stored
        now_ms = int(time.time() * 1000)
        message = ChatMessage(self._clock.next(now_ms), draft.user, draft.body, node, now_ms)
        room.append(message, draft.client_msg_id)
        self._send(Delivery(topic, protocol.broadcast(topic, "new:msg", message.payload()), message.id))
        return message

    async def broadcast(self, topic: str, event: str, payload: dict[str, Any], *, exclude: object = None) -> None:
        self._send(Delivery(topic, protocol.broadcast(topic, event, payload), exclude=exclude))

    async def history(self, topic: str, after: str | None) -> Replay:
        room = self._rooms.get(topic)
        return room.after(after) if room else Replay([], [])

    def _send(self, delivery: Delivery) -> None:
        if self._deliver is not None:
            self._deliver(delivery)
