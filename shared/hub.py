"""This node's rooms: which local channels are in which topic, and their presence.

The broker hands every broadcast of the cluster to `Hub.deliver`, already encoded;
the hub only appends that one string to each local member's outbox. Nothing here
awaits, so a slow socket can never hold up the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from shared import presence, protocol
from shared.broker import Broker, Delivery
from shared.messages import SYSTEM
from shared.metrics import Metrics
from shared.presence import Entry  # in Hub, `presence` is the method
from shared.transport import text_frame

if TYPE_CHECKING:
    from shared.settings import Settings


class Member(Protocol):
    """A joined channel, as the hub sees it."""

    def deliver(self, delivery: Delivery, wire: bytes) -> None: ...

    def deliver_many(self, deliveries: list[Delivery], wires: list[bytes], together: bytes) -> None: ...


# Sends a room's presence changes made on this node (topic, joins, leaves) to its peers.
Replicate = Callable[[str, list[presence.Entry], list[presence.Entry]], None]

# Each connection's share of the node's outbox budget: MAX_CONNECTIONS of them bound what
# all slow sockets together may hold queued (docs/protocol.md, Limits).
OUTBOX_SHARE = 32 * 1024

PRESENCE_BATCH_SECONDS = 0.05
EVENT_BATCH_SECONDS = 0.02
# A room's next batch of events waits at least this many times as long as its last flush
# took, so in a large room a join storm spends at most about a fifth of the loop on
# fanning out events, however fast the joins come; a quiet room keeps the 20 ms.
FLUSH_COST_FACTOR = 4.0


class PresenceBatch:
    """Presence changes of one topic waiting to go out together.

    Our sockets get every join and every leave: a socket that joined within the window
    already has the join in its `presence_state`, so a join and leave cancelling out
    would leave it a ghost forever. Both in one diff ends right for every socket, as
    clients apply the joins before the leaves. What goes to peers does cancel out, as
    they apply the leaves first; a peer that synced the join meanwhile is corrected by
    its next full sync."""

    def __init__(self) -> None:
        self.joins: dict[str, presence.Entry] = {}  # phx_ref -> entry, for our sockets
        self.leaves: dict[str, presence.Entry] = {}
        self.local_joins: dict[str, presence.Entry] = {}  # tracked here: sent to peers
        self.local_leaves: dict[str, presence.Entry] = {}

    def add(self, joins: list[presence.Entry], leaves: list[presence.Entry], *, local: bool) -> None:
        for entry in joins:
            self.joins[entry.meta["phx_ref"]] = entry
        for entry in leaves:
            self.leaves[entry.meta["phx_ref"]] = entry
        if not local:
            return
        for entry in joins:
            self.local_joins[entry.meta["phx_ref"]] = entry
        for entry in leaves:
            ref = entry.meta["phx_ref"]
            if self.local_joins.pop(ref, None) is None:
                self.local_leaves[ref] = entry


class Hub:
    def __init__(
        self, settings: Settings, broker: Broker, metrics: Metrics, replicate: Replicate | None = None
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.metrics = metrics
        self.members: dict[str, set[Member]] = {}
        self.presences: dict[str, presence.Presence] = {}
        self._batches: dict[str, PresenceBatch] = {}
        self._events: dict[str, list[Delivery]] = {}  # per topic, events waiting to go out together
        self._flush_cost: dict[str, float] = {}  # per topic, seconds the last flush of events took
        # Stage 2 passes one to send this node's presence changes to its peers.
        self.replicate = replicate
        self.outbox_budget = settings.max_connections * OUTBOX_SHARE
        self.outbox_bytes = 0  # queued in the outboxes of every served socket of this node

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
        """Hand a broadcast to every local member: stored messages at once, events in batches.

        A join storm of N users sends N `user:entered` to each of N sockets; gathered for a
        few milliseconds, each socket gets them in one write instead of one write each."""
        if delivery.message_id is None:
            batch = self._events.get(delivery.topic)
            if batch is None:
                batch = self._events[delivery.topic] = []
                delay = max(EVENT_BATCH_SECONDS, FLUSH_COST_FACTOR * self._flush_cost.get(delivery.topic, 0.0))
                asyncio.get_running_loop().call_later(delay, self._flush_events, delivery.topic)
            batch.append(delivery)
            return
        room = self.members.get(delivery.topic)
        if not room:
            return
        wire = text_frame(delivery.frame)  # framed once, the same bytes for every socket
        # A member may leave the set while we iterate (a slow socket is dropped), hence the copy.
        for member in tuple(room):
            member.deliver(delivery, wire)
        self.metrics.messages_out.inc()
        self.metrics.deliveries.inc(len(room))

    def _flush_events(self, topic: str) -> None:
        started = time.perf_counter()
        deliveries = self._events.pop(topic)
        room = self.members.get(topic)
        if not room:
            self._flush_cost.pop(topic, None)
            return
        wires = [text_frame(delivery.frame) for delivery in deliveries]
        together = b"".join(wires)
        excluded = {delivery.exclude for delivery in deliveries if delivery.exclude is not None}
        for member in tuple(room):
            if member in excluded:
                # A joiner heard its own user:entered already: everything else, still in one write.
                kept = [(d, w) for d, w in zip(deliveries, wires, strict=True) if d.exclude is not member]
                if kept:
                    member.deliver_many([d for d, _ in kept], [w for _, w in kept], b"".join(w for _, w in kept))
            else:
                member.deliver_many(deliveries, wires, together)
        self.metrics.messages_out.inc(len(deliveries))
        self.metrics.deliveries.inc(len(room) * len(deliveries))
        self._flush_cost[topic] = time.perf_counter() - started

    # Presence -------------------------------------------------------------------------

    def presence(self, topic: str) -> presence.Presence:
        return self.presences.setdefault(topic, presence.Presence())

    def track(self, topic: str, key: str, meta: dict[str, Any]) -> None:
        entry = self.presence(topic).track(self.node, key, meta)
        self._presence_changed(topic, [entry], [])

    def untrack(self, topic: str, ref: str) -> None:
        entry = self.presence(topic).untrack(ref)
        if entry is not None:
            self._presence_changed(topic, [], [entry])

    def apply_remote(self, topic: str, joins: list[Entry], leaves: list[Entry]) -> None:
        """A peer's presence change: update our copy and tell our sockets, without echoing it."""
        room = self.presence(topic)
        leaves = [gone for entry in leaves if (gone := room.untrack(entry.meta["phx_ref"])) is not None]
        for entry in joins:
            room.track(entry.node, entry.key, entry.meta)
        if joins or leaves:
            self._send_diff(topic, joins, leaves)

    def sync_node(self, topic: str, node: str, entries: list[Entry]) -> None:
        """Replace everything we hold of `node` in `topic` with its own full list."""
        room = self.presence(topic)
        old = {entry.meta["phx_ref"]: entry for entry in room.of_node(node)}
        new = {entry.meta["phx_ref"]: entry for entry in entries}
        leaves = [entry for ref, entry in old.items() if ref not in new and room.untrack(ref)]
        joins = [room.track(node, entry.key, entry.meta) for ref, entry in new.items() if ref not in old]
        if joins or leaves:
            self._send_diff(topic, joins, leaves)

    def drop_node(self, node: str) -> None:
        """A node went away: every presence it tracked leaves, on every topic."""
        for topic, room in self.presences.items():
            gone = room.drop_node(node)
            if gone:
                self._send_diff(topic, [], gone)

    def _presence_changed(self, topic: str, joins: list[Entry], leaves: list[Entry]) -> None:
        self._batch(topic).add(joins, leaves, local=True)

    def _send_diff(self, topic: str, joins: list[Entry], leaves: list[Entry]) -> None:
        self._batch(topic).add(joins, leaves, local=False)

    def _batch(self, topic: str) -> PresenceBatch:
        # A join storm of N users would otherwise send N diffs to each of N sockets;
        # changes within one window go out as one diff, as Phoenix.Tracker batches deltas.
        batch = self._batches.get(topic)
        if batch is None:
            batch = self._batches[topic] = PresenceBatch()
            asyncio.get_running_loop().call_later(PRESENCE_BATCH_SECONDS, self._flush, topic)
        return batch

    def _flush(self, topic: str) -> None:
        batch = self._batches.pop(topic)
        if batch.joins or batch.leaves:
            diff = presence.diff(list(batch.joins.values()), list(batch.leaves.values()))
            self.deliver(Delivery(topic, protocol.broadcast(topic, "presence_diff", diff)))
        if self.replicate is not None and (batch.local_joins or batch.local_leaves):
            self.replicate(topic, list(batch.local_joins.values()), list(batch.local_leaves.values()))

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
                self.deliver(Delivery(topic, protocol.broadcast(topic, "new:msg", {"user": SYSTEM, "body": "ping"})))
