"""Cluster membership: who this node's peers are, and keeping that true.

The lesson of the original's stage 2, in Python:

- each node claims its name in the registry (registry.py, epmd's job) and announces
  its address there; a second node under a live node's name is refused;
- each node sends a heartbeat to its peers every second over its Redis channel; a peer
  silent for NODE_DOWN_AFTER seconds is dropped with its users' presences
  (net_ticktime);
- presence changes go to peers as control lines, so every node holds the whole room's
  presence, like Phoenix.Tracker; every SYNC_INTERVAL each peer also gets this node's
  full presence, so that a line lost on the way heals within that time;
- each start of a node is a new incarnation with a boot id of its own, in its handshake
  and heartbeats: when a peer meets a new one under a known name, it drops what the old
  one left at once.

Connecting (both sides of the handshake) is handshake.py; the lines are lines.py.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from shared import logs
from shared.broker import BrokerUnavailable
from shared.presence import Entry, Presence
from shared.settings import ConfigError
from stage2_cluster import lines
from stage2_cluster.broker import node_channel

if TYPE_CHECKING:
    from shared.metrics import Metrics
    from stage2_cluster.broker import RedisBroker
    from stage2_cluster.registry import Registry
    from stage2_cluster.settings import ClusterSettings

log = logs.get("cluster")

HEARTBEAT_INTERVAL = 1.0
# Every peer gets our full presence this often, so a presence line lost on the way (a
# failed send, a lost connection) is corrected within it. A sync is about 100 bytes per
# user tracked here, to each peer.
SYNC_INTERVAL = 5.0
REGISTRY_KEEP = 10  # a registry entry outlives its node's claim by this many NODE_DOWN_AFTER
# ...and a peer dropped for silence is still sent our messages as long (see targets()).
CLAIM_POLL = 0.25  # seconds between looks at an earlier incarnation's claim on our name


class Presences(Protocol):
    """What membership asks of the presence tracker: the cluster-wide presence of every topic."""

    rooms: dict[str, Presence]

    def apply_remote(self, topic: str, joins: list[Entry], leaves: list[Entry]) -> None: ...

    def sync_node(self, topic: str, node: str, entries: list[Entry]) -> None: ...

    def drop_node(self, node: str) -> None: ...


Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


@dataclass
class Peer:
    name: str
    address: str
    boot: str  # its incarnation, as its handshake said
    last_heard: float = field(default_factory=time.monotonic)


class Membership:
    """A node's peers: who they are, which incarnation, whether they still beat, what they
    track; and what the broker asks of it (`broker.Membership`)."""

    def __init__(self, settings: ClusterSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.name = settings.node_name
        self.boot = secrets.token_hex(8)
        self.metrics = metrics
        self.peers: dict[str, Peer] = {}
        # Peers dropped for silence -> when: still sent our messages for a while (targets()).
        self.lost: dict[str, float] = {}
        self._healthy_since: float | None = None
        self._claimed = False  # whether the registry holds our claim; a refusal is logged once
        self._bad_lines = metrics.bad_peer_lines.labels(channel=node_channel(self.name))

    def attach(self, broker: RedisBroker, tracker: Presences, registry: Registry, spawn: Spawn) -> None:
        """The broker and the tracker report to us, so they are built after us and attached here."""
        self.broker = broker
        self.tracker = tracker
        self.registry = registry
        self.spawn = spawn

    def targets(self) -> list[str]:
        """Where our messages go: ourselves, our peers, and the peers we dropped for silence.

        A peer we stopped hearing may still hear us, or hear again before we connect again
        (a partition heals on its side first). Publishing to it until then keeps its
        sockets' view gap-free and in order; it costs a PUBLISH nobody may receive."""
        return [self.name, *self.peers, *self.lost]

    def nodes(self) -> list[str]:
        return [self.name, *sorted(self.peers)]

    def peer_list(self) -> list[dict[str, str]]:
        return [{"node": peer.name, "address": peer.address} for peer in self.peers.values()]

    # Our name --------------------------------------------------------------------------

    async def claim_name(self) -> None:
        """Take our name in the registry before serving; ConfigError if a live node holds it.

        A claim lasts NODE_DOWN_AFTER (2 s at least) unless its holder renews it, which it does every
        heartbeat. So an earlier incarnation's claim (the node was killed, and started
        again at once) runs out within that time, and we wait for it; a claim
        that is renewed while we wait belongs to a live node. Without Redis the
        heartbeat claims the name once Redis is back."""
        waited = False
        expires = None
        while True:
            try:
                holder = await self.registry.claim(self.name, self.boot, self.settings.address, self._ttl)
            except BrokerUnavailable as error:
                log.warning("name not claimed yet: redis unavailable", error=str(error))
                return
            if holder is None:
                self._claimed = True
                return
            deadline = time.monotonic() + holder.expires_in
            if expires is not None and deadline > expires + CLAIM_POLL:
                raise ConfigError(
                    "NODE_NAME",
                    f"{self.name} is taken by a live node (its claim chat:alive:{self.name} was renewed "
                    "while we waited): stop that node or choose another name",
                )
            expires = deadline if expires is None else min(expires, deadline)
            if not waited:
                waited = True
                log.info(
                    "waiting for an earlier node of this name to expire",
                    claim=f"chat:alive:{self.name}",
                    expires_in_s=round(holder.expires_in, 2),
                )
            await asyncio.sleep(CLAIM_POLL)

    @property
    def _ttl(self) -> float:
        # NODE_DOWN_AFTER, but never so short that a heartbeat a little late loses the claim.
        return max(self.settings.node_down_after, 2 * HEARTBEAT_INTERVAL)

    async def release_name(self) -> None:
        try:
            await self.registry.release(self.name, self.boot)
        except BrokerUnavailable:
            pass  # it expires by itself within NODE_DOWN_AFTER

    # Lifetime ----------------------------------------------------------------------

    async def heartbeat_forever(self) -> None:
        """Renew our claim, beat to peers, drop the silent ones, send peers our full presence."""
        next_sync = time.monotonic() + SYNC_INTERVAL
        while True:
            try:
                await self._renew()
                expired = await self.registry.prune(REGISTRY_KEEP * self.settings.node_down_after, self.name)
                for name in expired:
                    log.info("registry entry expired", peer=name)
                if self.peers:
                    await self.broker.send(list(self.peers), lines.heartbeat(self.name, self.boot))
                    if time.monotonic() >= next_sync:
                        next_sync = time.monotonic() + SYNC_INTERVAL
                        await self.broker.send(list(self.peers), self._sync_line(want_reply=False))
            except BrokerUnavailable:
                pass  # the subscription reports Redis away; try again next beat
            self._drop_silent()
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    async def _renew(self) -> None:
        holder = await self.registry.claim(self.name, self.boot, self.settings.address, self._ttl)
        if (holder is None) != self._claimed:
            self._claimed = holder is None
            if holder is None:
                log.info("name claimed", claim=f"chat:alive:{self.name}")
            else:
                # Redis was away when we started, or longer than our claim lasts: an earlier
                # incarnation's claim (it runs out) or a live node that took the name meanwhile.
                log.warning(
                    "name held by another node: not registered until its claim runs out",
                    holder_boot=holder.boot,
                    expires_in_s=round(holder.expires_in, 2),
                )

    def on_health(self, healthy: bool) -> None:
        # While our own Redis link is down we hear no one, which says nothing about them.
        self._healthy_since = time.monotonic() if healthy else None

    def on_bad_line(self) -> None:
        self._bad_lines.inc()

    def _drop_silent(self) -> None:
        now = time.monotonic()
        keep = REGISTRY_KEEP * self.settings.node_down_after
        self.lost = {name: since for name, since in self.lost.items() if now - since <= keep}
        if self._healthy_since is None or now - self._healthy_since < self.settings.node_down_after:
            return
        # Silence counts only up to the last time Redis answered us: a Redis that stopped
        # answering (paused, half-open) is noticed by the watchdog after a few seconds,
        # possibly later than NODE_DOWN_AFTER, and says nothing about the peers.
        heard = min(now, self.broker.heard_at)
        for peer in list(self.peers.values()):
            if heard - peer.last_heard > self.settings.node_down_after:
                self.remove(peer.name, "no heartbeat", silence_s=round(now - peer.last_heard, 2))
                self.lost[peer.name] = now

    # Peers come and go ----------------------------------------------------------------

    async def add(self, name: str, address: str, boot: str) -> None:
        """A handshake with `name` (incarnation `boot`) succeeded."""
        peer = self.peers.get(name)
        if peer is not None:
            if peer.boot != boot:
                self._restarted(peer, boot)
            # It handshakes although we list it: it had dropped us, or it started again,
            # and may have missed our messages meanwhile.
            peer.address = address
            await self._catch_up(name)
            return
        regained = self.lost.pop(name, None) is not None
        self.peers[name] = Peer(name, address, boot)
        self.metrics.cluster_nodes.set(len(self.peers) + 1)
        log.info("node connected", peer=name, address=address, nodes=len(self.peers) + 1)
        await self._send([name], self._sync_line(want_reply=True))
        if regained:
            await self._catch_up(name)

    def _restarted(self, peer: Peer, boot: str) -> None:
        """`peer` is a new incarnation: whatever the old one tracked is gone with it."""
        log.info("node restarted", peer=peer.name, old_boot=peer.boot, boot=boot)
        peer.boot = boot
        peer.last_heard = time.monotonic()
        self.tracker.drop_node(peer.name)

    async def _catch_up(self, name: str) -> None:
        """Deliver to our sockets what the stream holds past the last message they got."""
        try:
            delivered = await self.broker.catch_up()
        except BrokerUnavailable as error:
            # Our subscription is down too: it catches up by itself when it is back.
            log.warning("catch-up after reconnecting skipped", peer=name, reason=str(error))
            return
        log.info("caught up after reconnecting", peer=name, messages=delivered)

    def remove(self, name: str, reason: str, **fields: Any) -> None:
        self.lost.pop(name, None)  # removed on purpose: it stays out
        if self.peers.pop(name, None) is None:
            return
        self.metrics.cluster_nodes.set(len(self.peers) + 1)
        self.tracker.drop_node(name)
        log.info("node disconnected", peer=name, reason=reason, nodes=len(self.peers) + 1, **fields)

    # Control lines on our Redis channel -------------------------------------------------

    def on_control(self, line: lines.Control) -> None:
        peer = self.peers.get(line.node)
        if peer is None:
            return  # only connected nodes may change what we know
        if line.boot != peer.boot:
            if isinstance(line, lines.Heartbeat):
                self._restarted(peer, line.boot)  # it beats to us, so it met us: ask for its presence
                self.spawn(self._send([peer.name], self._sync_line(want_reply=True)))
            return  # a late line of an earlier incarnation: what it says is gone
        peer.last_heard = time.monotonic()
        if isinstance(line, lines.PresenceChange):
            self.tracker.apply_remote(line.topic, line.joins, line.leaves)
        elif isinstance(line, lines.Sync):
            # A full sync: a topic it leaves out holds nothing of the sender.
            for topic in list(self.tracker.rooms):
                if topic not in line.topics:
                    self.tracker.sync_node(topic, line.node, [])
            for topic, entries in line.topics.items():
                self.tracker.sync_node(topic, line.node, entries)
            if line.want_reply:
                self.spawn(self._send([line.node], self._sync_line(want_reply=False)))

    def replicate_presence(self, topic: str, joins: list[Entry], leaves: list[Entry]) -> None:
        if self.peers:
            line = lines.presence_change(self.name, self.boot, topic, joins, leaves)
            self.spawn(self._send(list(self.peers), line))

    def _sync_line(self, *, want_reply: bool) -> str:
        topics = {topic: room.of_node(self.name) for topic, room in self.tracker.rooms.items()}
        return lines.sync(self.name, self.boot, topics, want_reply=want_reply)

    async def _send(self, nodes: list[str], line: str) -> None:
        try:
            await self.broker.send(nodes, line)
        except BrokerUnavailable:
            # The next full sync (SYNC_INTERVAL) carries what this one would have.
            log.warning("cluster message not sent: redis unavailable")
