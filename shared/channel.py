"""The room channel: ChatLv's `RoomChannel`, one instance per joined socket and topic.

    join("rooms:lobby", ...)   -> ok, broadcast user:entered, push join
    join("rooms:" <> _, ...)   -> error unauthorized
    handle_in("new:msg", ...)  -> broadcast new:msg, reply ok %{msg: body}

plus what the original did not have: presence, history replay and catch-up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared import logs, presence, protocol
from shared.broker import Broker, BrokerUnavailable, Delivery
from shared.history import parse_id
from shared.messages import ChatMessage, InvalidMessage, validate_draft, validate_user
from shared.transport import Spliced

if TYPE_CHECKING:
    from shared.hub import Hub
    from shared.metrics import Metrics
    from shared.socket import PhoenixSocket
    from shared.tracker import PresenceTracker

LOBBY = "rooms:lobby"
# Bytes of history one socket may be replayed: a burst of 2 MiB (two full replays of the
# default history, 100 messages of up to 8 KB), refilled at 64 KiB a second. A join that
# asks for more is refused `replay_limited` (docs/protocol.md); a catch-up with
# `last_seen_id` costs only what it missed.
REPLAY_BUDGET = (64 * 1024, 2 * 1024 * 1024)
log = logs.get("channel")


def coalesce_entered(topic: str, deliveries: list[Delivery], named: int) -> list[Delivery]:
    """One batch of a room's events with at most `named` `user:entered` kept by name; the
    others become one `users:entered` with their count, after the rest (docs/protocol.md,
    Join storms). A local joiner summed in it is not sent the count: it heard its own
    `user:entered` when it joined, and the online list shows the others."""
    prefix = protocol.broadcast(topic, "user:entered", None)[:-5]  # '[null,null,"<topic>","user:entered",'
    kept: list[Delivery] = []
    summed = 0
    joiners: list[object] = []  # local joiners summed in the count
    for delivery in deliveries:
        if delivery.frame.startswith(prefix) and delivery.message_id is None:
            if named > 0:
                named -= 1
            else:
                summed += 1
                if delivery.exclude is not None:
                    joiners.append(delivery.exclude)
                continue
        kept.append(delivery)
    if summed:
        frame = protocol.broadcast(topic, "users:entered", {"count": summed})
        kept.append(Delivery(topic, frame, exclude=frozenset(joiners) if joiners else None))
    return kept


class JoinRefused(Exception):
    """str() is the `reason` of the error reply."""


def authorize(topic: str) -> None:
    if topic == LOBBY:
        return
    if topic.startswith("rooms:"):
        raise JoinRefused("unauthorized")
    raise JoinRefused("unmatched topic")


def join_params(payload: dict[str, Any]) -> tuple[str | None, str | None]:
    """The join's `user` (None when not given) and `last_seen_id`."""
    user = payload.get("user")
    if user is not None:
        try:
            user = validate_user(user)
        except InvalidMessage as error:
            raise JoinRefused(str(error)) from None
    last_seen_id = payload.get("last_seen_id")
    if last_seen_id is not None:
        try:
            parse_id(last_seen_id)
        except ValueError:
            raise JoinRefused("last_seen_id must be a message id such as 1700000000000-0") from None
    return user, last_seen_id


@dataclass(frozen=True, slots=True)
class Rooms:
    """What the room channels of one node use, built once by the node."""

    node: str  # this node's name, in presence metas and stored messages
    hub: Hub  # the fan-out: a channel joins and leaves its topic there
    tracker: PresenceTracker
    broker: Broker
    metrics: Metrics


class RoomChannel:
    __slots__ = (
        "_answered",
        "_held",
        "_replayed",
        "join_ref",
        "outbox",
        "presence_ref",
        "rooms",
        "socket",
        "topic",
        "user",
    )

    def __init__(self, rooms: Rooms, socket: PhoenixSocket, topic: str, join_ref: str | None, user: str | None) -> None:
        self.rooms = rooms
        self.socket = socket
        self.outbox = socket.outbox  # a live broadcast's fast path: one call per socket
        self.topic = topic
        self.join_ref = join_ref
        self.user = user
        self.presence_ref = presence.new_ref()
        # Until the join is answered every broadcast waits here; after that, until history
        # is replayed, only stored messages wait, so none is sent twice or out of order.
        self._held: list[Delivery] | None = []
        self._answered = False
        # After the join, the newest id it replayed, until a newer live message passes it.
        # In a cluster a message is in the stream before the bus brings it to this node,
        # so its live copy can arrive after the replay that already sent it. A room's
        # messages arrive in id order, so once one is newer, every later one is too.
        self._replayed: tuple[int, int] | None = None

    def deliver_many(self, deliveries: list[Delivery], wires: list[bytes], together: bytes) -> None:
        if self._held is None and self._replayed is None and self.outbox.write_now(together):
            return
        for delivery, wire in zip(deliveries, wires, strict=True):
            self.deliver(delivery, wire)

    def deliver(self, delivery: Delivery, wire: bytes) -> None:
        if self._held is None:
            if self._replayed is not None and delivery.message_id is not None:
                if parse_id(delivery.message_id) <= self._replayed:
                    return  # the replay sent it already
                self._replayed = None
            if not self.outbox.write_now(wire):  # the common case first
                self.socket.send(delivery.frame, wire)
        elif delivery.message_id is not None or not self._answered:
            self._held.append(delivery)
        else:
            self.socket.send(delivery.frame, wire)

    async def join(self, frame: protocol.Frame, last_seen_id: str | None) -> None:
        """Subscribe, replay history after `last_seen_id`, then go live without gaps."""
        rooms = self.rooms
        rooms.hub.add(self.topic, self)
        try:
            replay = await rooms.broker.history(self.topic, last_seen_id)
        except BrokerUnavailable:
            rooms.hub.remove(self.topic, self)
            rooms.metrics.joins_refused.labels("unavailable").inc()
            raise JoinRefused("unavailable") from None
        if not self.socket.replay_budget.spend(replay.size):
            rooms.hub.remove(self.topic, self)
            rooms.metrics.messages_rejected.labels("replay_limited").inc()
            raise JoinRefused("replay_limited")
        # The room hears the entry in a batch; the joiner at once, in order, after its reply.
        entered = {"user": self.user}
        await self._broadcast("user:entered", entered, exclude=self)
        # What a join sends goes out in one write: until then every broadcast waited in _held.
        out: list[str | Spliced] = [
            protocol.reply(frame, "ok", {"history_truncated": True} if replay.truncated else None)
        ]
        self._answered = True
        out += [delivery.frame for delivery in self._held or [] if delivery.message_id is None]
        self._held = [d for d in self._held or [] if d.message_id is not None]
        out.append(protocol.broadcast(self.topic, "user:entered", entered))
        # Phoenix's after_join idiom: track, then push the list, so the joiner is in it.
        meta = {"phx_ref": self.presence_ref, "node": rooms.node, "online_at": int(time.time())}
        key = self.user or "anonymous"
        rooms.tracker.track(self.topic, key, meta)
        state = rooms.tracker.room(self.topic).joiner_state(key, meta)
        out += [
            protocol.encode(self.join_ref, None, self.topic, "join", {"status": "connected"}),
            protocol.encode_spliced(self.join_ref, None, self.topic, "presence_state", state),
        ]
        # Each payload as the room encoded it once, behind this join's refs.
        out += [protocol.encode_raw(self.join_ref, None, self.topic, "new:msg", p) for p in replay.payloads]
        rooms.metrics.replay_bytes.inc(replay.size)
        last = replay.messages[-1].id if replay.messages else last_seen_id
        # Since the answer only stored messages wait here (see deliver); each id is parsed once.
        held = [(parse_id(d.message_id), d.frame) for d in self._held or [] if d.message_id is not None]
        self._held = None
        newest = parse_id(last) if last else (-1, -1)
        out += [frame for message_id, frame in held if message_id > newest]
        if held:
            newest = max(newest, held[-1][0])
        self._replayed = newest if newest != (-1, -1) else None
        self.socket.send_all(out)

    async def handle_in(self, frame: protocol.Frame) -> None:
        if frame.event != "new:msg":
            self.socket.send(protocol.reply(frame, "error", {"reason": f"unknown event {frame.event[:64]!r}"}))
            return
        try:
            draft = validate_draft(frame.payload)
        except InvalidMessage as error:
            self.rooms.metrics.messages_rejected.labels("invalid").inc()
            self.socket.send(protocol.reply(frame, "error", {"reason": str(error)}))
            return
        try:
            message: ChatMessage = await self.rooms.broker.publish(self.topic, draft, self.rooms.node)
        except BrokerUnavailable:
            self.rooms.metrics.messages_rejected.labels("unavailable").inc()
            self.socket.send(protocol.reply(frame, "error", {"reason": "unavailable"}))
            return
        self.rooms.metrics.messages_in.inc()
        self.user = draft.user
        self.socket.send(protocol.reply(frame, "ok", {"msg": message.body, "id": message.id}))

    def leave(self) -> None:
        """Stop receiving and drop this socket's presence."""
        self.rooms.hub.remove(self.topic, self)
        self.rooms.tracker.untrack(self.topic, self.presence_ref)

    async def _broadcast(self, event: str, payload: dict[str, Any], *, exclude: object = None) -> None:
        try:
            await self.rooms.broker.broadcast(self.topic, event, payload, exclude=exclude)
        except BrokerUnavailable:
            log.warning("broadcast dropped: broker unavailable", extra={"fields": {"event": event}})
