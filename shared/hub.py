"""This node's rooms: which local channels are in which topic, and their presence.

The broker hands every broadcast of the cluster to `Hub.deliver`, already encoded;
the hub only appends that one string to each local member's outbox. Nothing here
awaits, so a slow socket can never hold up the others.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

from shared import logs, presence, protocol
from shared.broker import Broker, BrokerUnavailable, Delivery
from shared.metrics import Metrics

if TYPE_CHECKING:
    from shared.settings import Settings

log = logs.get("hub")


class Member(Protocol):
    """A joined channel, as the hub sees it."""

    def deliver(self, delivery: Delivery) -> None: ...


class Hub:
    def __init__(self, settings: Settings, broker: Broker, metrics: Metrics) -> None:
        self.settings = settings
        self.broker = broker
        self.metrics = metrics
        self.members: dict[str, set[Member]] = {}
        self.presences: dict[str, presence.Presence] = {}

    @property
    def node(self) -> str:
        return self.settings.node_name

    def add(self, topic: str, member: Member) -> None:
        self.members.setdefault(topic, set()).add(member)

    def remove(self, topic: str, member: Member) -> None:
        room = self.members.get(topic)
        if room is not None:
            room.discard(member)
            if not room:
                del self.members[topic]

    def deliver(self, delivery: Delivery) -> None:
        room = self.members.get(delivery.topic)
        if not room:
            return
        # A member may leave the set while we iterate (a slow socket is dropped), hence the copy.
        for member in tuple(room):
            member.deliver(delivery)
        self.metrics.messages_out.inc()
        self.metrics.deliveries.inc(len(room))

    # Presence -------------------------------------------------------------------------

    def presence(self, topic: str) -> presence.Presence:
        return self.presences.setdefault(topic, presence.Presence())

    async def track(self, topic: str, key: str, meta: dict[str, Any]) -> presence.Entry:
        entry = self.presence(topic).track(self.node, key, meta)
        await self._announce(topic, presence.diff(joins=[entry]))
        return entry

    async def untrack(self, topic: str, ref: str) -> None:
        entry = self.presence(topic).untrack(ref)
        if entry is not None:
            await self._announce(topic, presence.diff(leaves=[entry]))

    async def _announce(self, topic: str, diff: dict[str, Any]) -> None:
        try:
            await self.broker.broadcast(topic, "presence_diff", diff)
        except BrokerUnavailable:
            log.warning("presence change not announced: broker unavailable", extra={"fields": {"topic": topic}})

    # The original's demo timer ------------------------------------------------------

    async def ping_forever(self) -> None:
        """Every PING_INTERVAL, push `SYSTEM ping` to every joined socket of this node.

        The original ran one timer per channel; one timer per node sends the same
        frames without a timer per socket.
        """
        interval = self.settings.ping_interval
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            for topic in tuple(self.members):
                self.deliver(Delivery(topic, protocol.broadcast(topic, "new:msg", {"user": "SYSTEM", "body": "ping"})))
