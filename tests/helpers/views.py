"""Steady publishing, and what clients saw checked against the room's stream in Redis.

A fault scenario pushes with `publish_until`, then compares: `lost` (acknowledged pushes
missing from the stream) and `check_view` (one client's ids against the stream: gaps,
duplicates, order).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from websockets.exceptions import ConnectionClosed

from tests.helpers.phoenix import LOBBY, PhoenixClient, Push, unique
from tests.helpers.redis_server import RedisServer

DEADLINE = 20.0  # any single reply


def stream_of(redis: RedisServer) -> dict[str, str]:
    """The room's stored messages, id -> body, in stream order."""
    with redis.client() as client:
        return {entry_id: fields["body"] for entry_id, fields in client.xrange(f"chat:room:{LOBBY}")}


@dataclass
class ViewCheck:
    """One client's message ids compared with the stream, from its first id to its last."""

    seen: int
    gaps: list[str]
    duplicates: list[str]
    out_of_order: bool
    unknown: list[str]  # ids the stream does not have

    @property
    def clean(self) -> bool:
        return not (self.gaps or self.duplicates or self.out_of_order or self.unknown)


def check_view(ids: list[str], stream: list[str], *, from_start: bool = True) -> ViewCheck:
    """`from_start`: the client joined before the first message, so its view must begin with the stream's."""
    position = {message_id: n for n, message_id in enumerate(stream)}
    unknown = [i for i in ids if i not in position]
    known = [position[i] for i in ids if i in position]
    duplicates = sorted({stream[n] for n in known if known.count(n) > 1})
    if not known:
        return ViewCheck(0, list(stream) if from_start else [], duplicates, False, unknown)
    first = 0 if from_start else min(known)
    gaps = [stream[n] for n in range(first, len(stream)) if n not in set(known)]
    return ViewCheck(len(ids), gaps, duplicates, known != sorted(known), unknown)


def message_ids(*clients: PhoenixClient) -> list[str]:
    """The ids of every chat message the clients received, in order, one client after the other."""
    return [payload["id"] for client in clients for payload in client.messages()]


async def pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


async def publish_until(
    client: PhoenixClient, user: str, pushes: list[Push], stop: asyncio.Event, every: float = 0.12
) -> None:
    """Push `new:msg` every `every` seconds (under the rate limit) until `stop`, or until the socket dies."""
    while not stop.is_set():
        push = Push(f"{user} {len(pushes)} {unique()}", time.monotonic())
        pushes.append(push)
        try:
            reply = await client.message(push.body, user, deadline=DEADLINE)
        except (ConnectionError, ConnectionClosed, TimeoutError):
            return  # the node went away with this push in flight: its fate is unknown to the client
        push.replied, push.status, push.response = reply.at, reply.status, reply.response
        await pause(stop, every)


def acked(pushes: list[Push]) -> list[Push]:
    return [p for p in pushes if p.status == "ok"]


def lost(pushes: list[Push], stream: dict[str, str]) -> list[Push]:
    """Acknowledged pushes whose id is not in the stream with the same body."""
    return [p for p in acked(pushes) if stream.get(p.response["id"]) != p.body]
