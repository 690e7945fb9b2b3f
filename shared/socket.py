"""One client connection: routes Phoenix frames to channels and owns the outgoing buffer.

Transport-agnostic: `run()` takes `receive`/`send` coroutines, so the ASGI endpoint, a
test or a benchmark can drive it. Reading happens in the task that calls `run()`.
Frames mostly go straight to the transport (transport.py); a writer task exists only
while frames wait in the outbox, so an idle socket holds no task of its own.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from shared import logs, protocol
from shared.channel import REPLAY_BUDGET, JoinRefused, RoomChannel, authorize, join_params
from shared.transport import HIGH_WATER, Transport, text_frame

if TYPE_CHECKING:
    from shared.hub import Hub

IDLE_TIMEOUT = 60.0  # seconds without any frame; phoenix.js heartbeats every 30 s
# Bytes queued for one socket before it counts as too slow: the largest honest burst is a
# join's replay, HISTORY_SIZE (100) messages of up to 8 KB of UTF-8 each. All sockets
# together are bounded tighter, by the hub's outbox budget (docs/protocol.md, Limits).
OUTBOX_LIMIT = 1024 * 1024

log = logs.get("socket")


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up.

    Every frame takes a token, a refused one too: a flood runs the bucket into debt (at
    most `burst` deep), so a sender that keeps flooding gets nothing through until it
    has been quiet long enough to pay it back, instead of one frame per refill."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self) -> bool:
        self._refill()
        self.tokens -= 1
        if self.tokens >= 0:
            return True
        self.tokens = max(self.tokens, -self.burst)
        return False

    def spend(self, cost: float) -> bool:
        """Take `cost` tokens if there are that many, else none (a history replay: refusing
        one sends nothing, so it costs nothing). A cost over the burst is let through when the
        bucket is full, and paid off before the next."""
        self._refill()
        if self.tokens < min(cost, self.burst):
            return False
        self.tokens -= cost
        return True


class PhoenixSocket:
    # Thousands per node: slots keep each one small.
    __slots__ = (
        "_closing",
        "_code",
        "_error",
        "_handling",
        "_interrupted",
        "_send",
        "_sending",
        "_task",
        "_waiting",
        "_writer",
        "bucket",
        "channels",
        "hub",
        "idle_timeout",
        "last_in",
        "outbox",
        "outbox_bytes",
        "outbox_limit",
        "replay_budget",
        "transport",
    )

    def __init__(self, hub: Hub, *, outbox_limit: int = OUTBOX_LIMIT, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.hub = hub
        self.channels: dict[str, RoomChannel] = {}
        self.outbox: list[str] = []  # taken whole by the writer: an empty list costs next to nothing
        self.outbox_bytes = 0  # the memory the queued strings take (sys.getsizeof)
        self.outbox_limit = outbox_limit
        self.idle_timeout = idle_timeout  # the node's sweep closes a socket silent this long
        self.last_in = time.monotonic()  # when the last frame came in
        self.bucket = TokenBucket(*hub.settings.rate_limit)
        self.replay_budget = TokenBucket(*REPLAY_BUDGET)  # bytes of history replayed to it
        self._send: Callable[[str], Awaitable[None]] | None = None  # the ASGI way out, once running
        self._writer: asyncio.Task[None] | None = None  # while the outbox is being sent
        self._task: asyncio.Task[object] | None = None  # the task in run(), once running
        self._code: int | None = None  # the close code, once finished
        self._error: BaseException | None = None  # what broke the writer
        self._waiting = False  # run() waits on the client or the writer: _finish may interrupt it
        self._interrupted = False  # _finish cancelled run()'s task
        self._closing: int | None = None  # close after the outbox is flushed
        self._sending = False  # a frame from the outbox is on its way through ASGI
        self._handling = False  # a frame is being handled: a close waits for its reply
        self.transport: Transport | None = None  # the fast path, when the server offers one

    # Outgoing --------------------------------------------------------------------------

    def send(self, frame: str, wire: bytes | None = None) -> None:
        """Send a frame: straight to the transport when it keeps up (`wire` is the frame
        already framed, shared by every socket of a broadcast), else queued behind what
        is waiting. A socket whose queue passes the bound is dropped, never waited for."""
        if self._code is not None:
            return
        if self.transport is not None and self.write_now(wire if wire is not None else text_frame(frame)):
            return
        size = sys.getsizeof(frame)
        hub = self.hub
        if self.outbox_bytes + size > self.outbox_limit or (
            self._send is not None and hub.outbox_bytes + size > hub.outbox_budget
        ):
            hub.metrics.drops.inc()
            log.warning(
                "socket dropped: outgoing buffer full",
                extra={"fields": {"queued": len(self.outbox), "node_queued": hub.outbox_bytes}},
            )
            self._finish(protocol.CLOSE_POLICY)
            return
        self.outbox_bytes += size
        if self._send is not None:  # a served socket: its queue counts against the node's budget
            hub.outbox_bytes += size
        self.outbox.append(frame)
        self._write_soon()

    def send_all(self, frames: list[str]) -> None:
        """Send frames in order, in one write when the client keeps up (a join's replies,
        state and history: one system call instead of a hundred)."""
        if self._code is None and self.transport is not None and self.write_now(b"".join(map(text_frame, frames))):
            return
        for frame in frames:
            self.send(frame)

    def write_now(self, wire: bytes) -> bool:
        """Write framed bytes straight to the transport if nothing waits before them and the
        client keeps up; False when they must take the queue instead. The transport never
        holds more than HIGH_WATER bytes written this way: what it cannot take is queued,
        where the outbox bounds count it."""
        transport = self.transport
        if (
            transport is not None
            and not self.outbox
            and not self._sending
            and transport.get_write_buffer_size() + len(wire) <= HIGH_WATER
            and not transport.is_closing()
        ):
            transport.write(wire)
            return True
        return False

    def close(self, code: int) -> None:
        """Stop reading, flush what is queued, then close with `code` (drain, shutdown)."""
        self._closing = code
        self._write_soon()

    def close_if_idle(self, now: float) -> None:
        """Close with 1001 if no frame came in for `idle_timeout` seconds (phoenix.js sends
        a heartbeat every 30 s). One sweep per node does this, not a timer per socket."""
        if now - self.last_in > self.idle_timeout and self._task is not None and self._code is None:
            log.info("socket idle, closing", extra={"fields": {"after_s": self.idle_timeout}})
            self._finish(protocol.CLOSE_GOING_AWAY)

    def _finish(self, code: int) -> None:
        """End the socket with `code`; run() returns it as soon as it can."""
        self.transport = None  # nothing more goes around ASGI once we are closing
        if self._code is not None:
            return
        self._code = code
        task = self._task
        if self._waiting and task is not None and task is not asyncio.current_task():
            self._interrupted = True
            task.cancel()  # stops the wait; a push in hand is never cut off midway

    def _write_soon(self) -> None:
        """Start the writer, unless it runs already or the socket is not being served."""
        if self._writer is None and self._send is not None and self._code is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_loop(self._send))
            self._writer.add_done_callback(self._writer_ended)

    async def _write_loop(self, send: Callable[[str], Awaitable[None]]) -> None:
        """Send what the outbox holds, then end; a close waits for the outbox and the push in hand."""
        while self.outbox:
            frames, self.outbox = self.outbox, []
            self._sending = True
            for frame in frames:
                await send(frame)  # returns once Hypercorn's transport has drained below its mark
                size = sys.getsizeof(frame)  # counted until then: a stalled client's frame is still here
                self.outbox_bytes -= size
                self.hub.outbox_bytes -= size
            self._sending = False
        self._writer = None  # from here on, a new frame starts a new writer
        if self._closing is not None and not self._handling:
            self._finish(self._closing)

    # Incoming --------------------------------------------------------------------------

    async def _read_loop(self, receive: Callable[[], Awaitable[str | bytes | None]]) -> None:
        try:
            while self._closing is None and self._code is None:
                self._waiting = True
                try:
                    data = await receive()
                finally:
                    self._waiting = False
                self.last_in = time.monotonic()
                if data is None:  # the client has gone
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
                        self._write_soon()
        except protocol.ProtocolError as error:
            log.info("socket closed: bad frame", extra={"fields": {"reason": str(error), "code": error.code}})
            self._finish(error.code)

    async def handle(self, data: str | bytes) -> None:
        """Route one incoming frame; raises ProtocolError when the socket must close."""
        if isinstance(data, bytes):
            raise protocol.ProtocolError("binary frames are not accepted; send JSON text")
        frame = protocol.decode(data)
        # Heartbeats count too: past the limit one is answered `rate_limited` like any frame
        # (phoenix.js takes any reply to its heartbeat as a sign of life).
        if not self.bucket.take():
            self.hub.metrics.messages_rejected.labels("rate_limited").inc()
            self.send(protocol.reply(frame, "error", {"reason": "rate_limited"}))
            return
        if frame.topic == protocol.PHOENIX_TOPIC and frame.event == protocol.HEARTBEAT:
            self.send(protocol.reply(frame, "ok"))
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
        receive: Callable[[], Awaitable[str | bytes | None]],
        send: Callable[[str], Awaitable[None]],
        transport: Transport | None = None,
    ) -> int:
        """Serve until the client goes, a limit is hit or `close()` is called; returns the close code.

        `receive` returns None once the client has gone. `send` is the ASGI way out;
        `transport`, when given, is the fast path (transport.py)."""
        self.transport = transport
        self._send = send
        self.hub.outbox_bytes += self.outbox_bytes  # from here on the node's budget counts this queue
        self.last_in = time.monotonic()
        self._task = asyncio.current_task()
        try:
            await self._read_loop(receive)
            if self._code is None:  # closing: the writer sends what is queued, then finishes
                self._write_soon()
                if self._writer is not None:
                    self._waiting = True
                    await self._writer
                self._finish(self._closing or protocol.CLOSE_GOING_AWAY)
        except asyncio.CancelledError:
            # Our own interruption ends the socket; any other cancellation goes on up.
            if not self._interrupted or self._task.uncancel() > 0:
                raise
        finally:
            self._waiting = False
            if self._writer is not None:
                self._writer.cancel()
            # What was never sent is let go, and given back to the node's budget.
            self.hub.outbox_bytes -= self.outbox_bytes
            self.outbox, self.outbox_bytes = [], 0
            for channel in list(self.channels.values()):
                self._leave(channel)
        if self._error is not None:
            raise self._error
        assert self._code is not None
        return self._code

    def _writer_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._error = task.exception()
            self._finish(1011)
