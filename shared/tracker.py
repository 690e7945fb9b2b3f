"""Who is online in each topic on this node's view of the cluster, and telling the room.

The tracker keeps one `presence.Presence` per topic, takes this node's joins and leaves
and a peer's replicated ones, and hands the room's changes to the fan-out as one
`presence_diff` per window, as Phoenix.Tracker batches its deltas.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shared import presence, protocol
from shared.broker import Deliver, Delivery

# Sends a room's presence changes made on this node (topic, joins, leaves) to its peers.
Replicate = Callable[[str, list[presence.Entry], list[presence.Entry]], None]

PRESENCE_BATCH_SECONDS = 0.05


class PresenceBatch:
    """Presence changes of one topic waiting to go out together.

    Our sockets get every join and every leave: a socket that joined within the window
    already has the join in its `presence_state`, so a join and leave cancelling out
    would leave it a ghost forever. Both in one diff ends right for every socket, as
    clients apply the joins before the leaves; for the same reason a leave followed by
    a join of the same presence goes out as the join alone. What goes to peers does cancel out, as
    they apply the leaves first; a peer that synced the join meanwhile is corrected by
    its next full sync."""

    def __init__(self) -> None:
        self.joins: dict[str, presence.Entry] = {}  # phx_ref -> entry, for our sockets
        self.leaves: dict[str, presence.Entry] = {}
        self.local_joins: dict[str, presence.Entry] = {}  # tracked here: sent to peers
        self.local_leaves: dict[str, presence.Entry] = {}

    def add(self, joins: list[presence.Entry], leaves: list[presence.Entry], *, local: bool) -> None:
        for entry in joins:
            ref = entry.meta["phx_ref"]
            self.joins[ref] = entry
            # Back after leaving within the window: only the join, or the leave applied
            # after it would take it off every page.
            self.leaves.pop(ref, None)
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


class PresenceTracker:
    def __init__(self, node: str, deliver: Deliver, replicate: Replicate | None = None) -> None:
        self.node = node
        self.rooms: dict[str, presence.Presence] = {}
        self._deliver = deliver  # the fan-out: a diff goes to every local member
        self._replicate = replicate  # stage 2: this node's changes to its peers
        self._batches: dict[str, PresenceBatch] = {}

    def room(self, topic: str) -> presence.Presence:
        return self.rooms.setdefault(topic, presence.Presence())

    def track(self, topic: str, key: str, meta: presence.Meta) -> None:
        entry = self.room(topic).track(self.node, key, meta)
        self._batch(topic).add([entry], [], local=True)

    def untrack(self, topic: str, ref: str) -> None:
        entry = self.room(topic).untrack(ref)
        if entry is not None:
            self._batch(topic).add([], [entry], local=True)

    def apply_remote(self, topic: str, joins: list[presence.Entry], leaves: list[presence.Entry]) -> None:
        """A peer's presence change: update our copy and tell our sockets, without echoing it."""
        room = self.room(topic)
        leaves = [gone for entry in leaves if (gone := room.untrack(entry.meta["phx_ref"])) is not None]
        for entry in joins:
            room.track(entry.node, entry.key, entry.meta)
        if joins or leaves:
            self._batch(topic).add(joins, leaves, local=False)

    def sync_node(self, topic: str, node: str, entries: list[presence.Entry]) -> None:
        """Replace everything we hold of `node` in `topic` with its own full list."""
        room = self.room(topic)
        old = {entry.meta["phx_ref"]: entry for entry in room.of_node(node)}
        new = {entry.meta["phx_ref"]: entry for entry in entries}
        leaves = [entry for ref, entry in old.items() if ref not in new and room.untrack(ref)]
        joins = [room.track(node, entry.key, entry.meta) for ref, entry in new.items() if ref not in old]
        if joins or leaves:
            self._batch(topic).add(joins, leaves, local=False)

    def drop_node(self, node: str) -> None:
        """A node went away: every presence it tracked leaves, on every topic."""
        for topic, room in self.rooms.items():
            gone = room.drop_node(node)
            if gone:
                self._batch(topic).add([], gone, local=False)

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
        self.room(topic).expire()  # joiners from now on need the changes this batch sends
        if batch.joins or batch.leaves:
            diff = presence.diff(list(batch.joins.values()), list(batch.leaves.values()))
            self._deliver(Delivery(topic, protocol.broadcast(topic, "presence_diff", diff)))
        if self._replicate is not None and (batch.local_joins or batch.local_leaves):
            self._replicate(topic, list(batch.local_joins.values()), list(batch.local_leaves.values()))
