"""One client connection: routes Phoenix frames to channels and owns the outgoing buffer.

Transport-agnostic: `run()` takes `receive`/`send` coroutines, so the Quart route, a
test or a benchmark can drive it. Reading and writing run as two tasks that are both
cancelled when the socket ends, as in Quart's own chat example.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from shared import logs, protocol
from shared.channel import JoinRefused, RoomChannel, authorize, join_params
from shared.transport import HIGH_WATER, Transport, text_frame

if TYPE_CHECKING:
    from shared.hub import Hub

IDLE_TIMEOUT = 60.0  # seconds without any frame; phoenix.js heartbeats every 30 s
OUTBOX_LIMIT = 4 * 1024 * 1024  # bytes queued for one socket before it counts as too slow

log = logs.get("socket")


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class PhoenixSocket:
    def __init__(self, hub: Hub, *, outbox_limit: int = OUTBOX_LIMIT, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.hub = hub
        self.channels: dict[str, RoomChannel] = {}
        self.outbox: deque[str] = deque()
        self.outbox_bytes = 0  # characters, in fact: frames are mostly ASCII and this is a bound, not a meter
        self.outbox_limit = outbox_limit
        self.idle_timeout = idle_timeout
        self.bucket = TokenBucket(*hub.settings.rate_limit)
        self._wakeup = asyncio.Event()
        self._done: asyncio.Future[int] | None = None
        self._closing: int | None = None  # close after the outbox is flushed
        self._sending = False  # a frame from the outbox is on its way through ASGI
        self._handling = False  # a frame is being handled: a close waits for its reply
        self.transport: Transport | None = None  # the fast path, when the server offers one

    # Outgoing --------------------------------------------------------------------------

    def send(self, frame: str, wire: bytes | None = None) -> None:
        """Send a frame: straight to the transport when it keeps up (`wire` is the frame
        already framed, shared by every socket of a broadcast), else queued behind what
        is waiting. A socket whose queue passes the bound is dropped, never waited for."""
        if self._done is not None and self._done.done():
            return
        if self.transport is not None and self.write_now(wire if wire is not None else text_frame(frame)):
            return
        self.outbox_bytes += len(frame)
        if self.outbox_bytes > self.outbox_limit:
            self.hub.metrics.drops.inc()
            log.warning("socket dropped: outgoing buffer full", extra={"fields": {"queued": len(self.outbox)}})
            self._finish(protocol.CLOSE_POLICY)
            return
        self.outbox.append(frame)
        self._wakeup.set()

    def write_now(self, wire: bytes) -> bool:
        """Write framed bytes straight to the transport if nothing waits before them and the
        client keeps up; False when they must take the queue instead."""
        transport = self.transport
        if (
            transport is not None
            and not self.outbox
            and not self._sending
            and transport.get_write_buffer_size() < HIGH_WATER
            and not transport.is_closing()
        ):
            transport.write(wire)
            return True
        return False

    def close(self, code: int) -> None:
        """Stop reading, flush what is queued, then close with `code` (drain, shutdown)."""
        self._closing = code
        self._wakeup.set()

    def _finish(self, code: int) -> None:
        self.transport = None  # nothing more goes around ASGI once we are closing
        if self._done is not None and not self._done.done():
            self._done.set_result(code)

    async def _write_loop(self, send: Callable[[str], Awaitable[None]]) -> None:
        outbox = self.outbox
        while True:
            while outbox:
                frame = outbox.popleft()
                self.outbox_bytes -= len(frame)
                self._sending = True
                await send(frame)
                self._sending = False
            if self._closing is not None and not self._handling:
                self._finish(self._closing)
                return
            self._wakeup.clear()
            await self._wakeup.wait()

    # Incoming --------------------------------------------------------------------------

    async def _read_loop(self, receive: Callable[[], Awaitable[str | bytes]]) -> None:
        try:
            while self._closing is None:
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        data = await receive()
                except TimeoutError:
                    log.info("socket idle, closing", extra={"fields": {"after_s": self.idle_timeout}})
                    self._finish(protocol.CLOSE_GOING_AWAY)
                    return
                # A push taken in is answered even if a drain starts meanwhile: the writer
                # waits for it, as cancelling it could store a message the client never
                # hears about (and would send again).
                self._handling = True
                try:
                    await self.handle(data)
                finally:
                    self._handling = False
                    if self._closing is not None:
                        self._wakeup.set()
        except protocol.ProtocolError as error:
            log.info("socket closed: bad frame", extra={"fields": {"reason": str(error), "code": error.code}})
            self._finish(error.code)

    async def handle(self, data: str | bytes) -> None:
        """Route one incoming frame; raises ProtocolError when the socket must close."""
        if isinstance(data, bytes):
            raise protocol.ProtocolError("binary frames are not accepted; send JSON text")
        frame = protocol.decode(data)
        if frame.topic == protocol.PHOENIX_TOPIC and frame.event == protocol.HEARTBEAT:
            self.send(protocol.reply(frame, "ok"))
            return
        if not self.bucket.take():
            self.hub.metrics.messages_rejected.labels("rate_limited").inc()
            self.send(protocol.reply(frame, "error", {"reason": "rate_limited"}))
            return
        channel = self.channels.get(frame.topic)
        if frame.event == protocol.JOIN:
            await self._join(frame, channel)
        elif channel is None:
            self.send(protocol.reply(frame, "error", {"reason": "unmatched topic"}))
        elif frame.join_ref != channel.join_ref:
            return  # a frame for an earlier join of this topic: ignored, as Phoenix does
        elif frame.event == protocol.LEAVE:
            self._leave(channel)
            self.send(protocol.reply(frame, "ok"))
            self.send(protocol.encode(channel.join_ref, channel.join_ref, channel.topic, protocol.CLOSE, {}))
        else:
            await channel.handle_in(frame)

    async def _join(self, frame: protocol.Frame, existing: RoomChannel | None) -> None:
        if existing is not None:
            # A duplicate join replaces the old one, which is closed first.
            self._leave(existing)
            self.send(protocol.encode(existing.join_ref, existing.join_ref, existing.topic, protocol.CLOSE, {}))
        try:
            authorize(frame.topic)
            user, last_seen_id = join_params(frame.payload)
            channel = RoomChannel(self, frame.topic, frame.join_ref, user)
            self.channels[frame.topic] = channel
            await channel.join(frame, last_seen_id)
        except JoinRefused as refused:
            self.channels.pop(frame.topic, None)
            self.send(protocol.reply(frame, "error", {"reason": str(refused)}))
            return
        self.hub.metrics.joins.inc()

    def _leave(self, channel: RoomChannel) -> None:
        if self.channels.get(channel.topic) is channel:
            del self.channels[channel.topic]
        channel.leave()

    # Lifetime --------------------------------------------------------------------------

    async def run(
        self,
        receive: Callable[[], Awaitable[str | bytes]],
        send: Callable[[str], Awaitable[None]],
        transport: Transport | None = None,
    ) -> int:
        """Serve until the client goes, a limit is hit or `close()` is called; returns the close code.

        `send` is the ASGI way out; `transport`, when given, is the fast path (transport.py)."""
        self.transport = transport
        self._done = asyncio.get_running_loop().create_future()
        reader = asyncio.create_task(self._read_loop(receive))
        writer = asyncio.create_task(self._write_loop(send))
        reader.add_done_callback(self._task_ended)
        writer.add_done_callback(self._task_ended)
        try:
            return await self._done
        finally:
            reader.cancel()
            writer.cancel()
            for channel in list(self.channels.values()):
                self._leave(channel)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and self._done is not None and not self._done.done():
            self._done.set_exception(error)
