"""One client connection: routes Phoenix frames to channels, through one lifetime.

Transport-agnostic: `run()` takes `receive`/`send` coroutines, so the ASGI endpoint, a
test or a benchmark can drive it. Reading happens in the task that calls `run()`;
writing is the outbox's (outbox.py). The socket's lifetime is a `State`, and every
change of it goes through `_enter`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from enum import Enum

from shared import logs, protocol
from shared.channel import REPLAY_BUDGET, JoinRefused, RoomChannel, Rooms, authorize, join_params
from shared.outbox import Budget, Outbox, Send
from shared.transport import Spliced, Transport

IDLE_TIMEOUT = 60.0  # seconds without any frame; phoenix.js heartbeats every 30 s
# Bytes queued for one socket before it counts as too slow: the largest honest burst is a
# join's replay, HISTORY_SIZE (100) messages of up to 8 KB of UTF-8 each. All sockets
# together are bounded tighter, by the node's outbox budget (docs/protocol.md, Limits).
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


class State(Enum):
    NEW = "new"  # accepted, not yet served: frames wait in the outbox
    OPEN = "open"  # reading frames, writing
    CLOSING = "closing"  # reading no more: the outbox is flushed, then CLOSED
    CLOSED = "closed"  # finished with `code`: nothing more is read or written


# Where each state may go. CLOSED is final; a state not listed here is never entered.
NEXT: dict[State, frozenset[State]] = {
    State.NEW: frozenset({State.OPEN, State.CLOSING, State.CLOSED}),
    State.OPEN: frozenset({State.CLOSING, State.CLOSED}),
    State.CLOSING: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}


class PhoenixSocket:
    # Thousands per node: slots keep each one small.
    __slots__ = (
        "_handling",
        "_interrupted",
        "_task",
        "_waiting",
        "bucket",
        "channels",
        "code",
        "error",
        "idle_timeout",
        "last_in",
        "metrics",
        "outbox",
        "replay_budget",
        "rooms",
        "state",
    )

    def __init__(
        self,
        rooms: Rooms,
        budget: Budget,
        rate_limit: tuple[float, int],
        *,
        outbox_limit: int = OUTBOX_LIMIT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.rooms = rooms  # what the channels this socket joins need
        self.metrics = rooms.metrics
        self.channels: dict[str, RoomChannel] = {}
        self.outbox = Outbox(budget, outbox_limit, self._flushed, self._writer_failed)
        self.bucket = TokenBucket(*rate_limit)
        self.idle_timeout = idle_timeout  # the node's sweep closes a socket silent this long
        self.last_in = time.monotonic()  # when the last frame came in
        self.replay_budget = TokenBucket(*REPLAY_BUDGET)  # bytes of history replayed to it
        self.state = State.NEW
        self.code: int | None = None  # CLOSING: the code to close with once flushed; CLOSED: the close code
        self.error: BaseException | None = None  # what broke the writer
        self._task: asyncio.Task[object] | None = None  # the task in run(), once running
        self._waiting = False  # run() waits on the client or the writer: entering CLOSED interrupts it
        self._interrupted = False  # entering CLOSED cancelled run()'s task
        self._handling = False  # a frame is being handled: CLOSING waits for its reply

    # The lifetime -----------------------------------------------------------------------

    def _enter(self, state: State, code: int | None = None) -> bool:
        """The one place the state changes; False, and nothing changed, where `state` may
        not follow the current one (a second close, a close after the end)."""
        if state not in NEXT[self.state]:
            return False
        self.state, self.code = state, code
        if state is State.CLOSING:
            self.outbox.flush_soon()
            self._flushed()  # nothing queued: closed at once
        elif state is State.CLOSED:
            self.outbox.transport = None  # nothing more goes around ASGI
            task = self._task
            if self._waiting and task is not None and task is not asyncio.current_task():
                # Stops the wait on the client or the writer; a push in hand is never cut off
                # midway, as `_waiting` is False while one is handled. run() takes this
                # cancellation back (uncancel) and lets any other go on up.
                self._interrupted = True
                task.cancel()
        return True

    def close(self, code: int) -> None:
        """Stop reading, flush what is queued, then close with `code` (drain, shutdown)."""
        self._enter(State.CLOSING, code)

    def close_if_idle(self, now: float) -> None:
        """Close with 1001 if no frame came in for `idle_timeout` seconds (phoenix.js sends
        a heartbeat every 30 s). One sweep per node does this, not a timer per socket."""
        if (
            now - self.last_in > self.idle_timeout
            and self._task is not None
            and self._enter(State.CLOSED, protocol.CLOSE_GOING_AWAY)
        ):
            log.info("socket idle, closing", extra={"fields": {"after_s": self.idle_timeout}})

    def _flushed(self) -> None:
        """The outbox is empty: a CLOSING socket is done, unless a frame's reply is still to come."""
        closing = self.state is State.CLOSING and self._task is not None and not self._handling
        if closing and self.outbox.idle:
            self._enter(State.CLOSED, self.code)

    def _writer_failed(self, error: BaseException) -> None:
        self.error = error
        self._enter(State.CLOSED, 1011)

    # Outgoing ---------------------------------------------------------------------------

    def send(self, frame: str, wire: bytes | None = None) -> None:
        """Send a frame (outbox.py). A socket whose queue passes a bound is dropped, never waited for."""
        if self.state is State.CLOSED:
            return
        if not self.outbox.put(frame, wire):
            self._drop()

    def send_all(self, frames: Sequence[str | Spliced]) -> None:
        """Send a join's frames in order, in one write when the client keeps up (outbox.py:
        one burst, held to the node's budget only)."""
        if self.state is not State.CLOSED and not self.outbox.put_all(frames):
            self._drop()

    def _drop(self) -> None:
        self.metrics.drops.inc()
        log.warning(
            "socket dropped: outgoing buffer full",
            extra={"fields": {"queued": len(self.outbox.frames), "node_queued": self.outbox.budget.used}},
        )
        self._enter(State.CLOSED, protocol.CLOSE_POLICY)

    # Incoming ---------------------------------------------------------------------------

    async def _read_loop(self, receive: Callable[[], Awaitable[str | bytes | None]]) -> None:
        try:
            while self.state is State.OPEN:
                self._waiting = True
                try:
                    data = await receive()
                finally:
                    self._waiting = False
                self.last_in = time.monotonic()
                if data is None:  # the client has gone
                    self._enter(State.CLOSED, protocol.CLOSE_GOING_AWAY)
                    return
                # A push taken in is answered even if a drain starts meanwhile: CLOSING
                # waits for it, as cancelling it could store a message the client never
                # hears about (and would send again).
                self._handling = True
                try:
                    await self.handle(data)
                finally:
                    self._handling = False
                    self._flushed()
        except protocol.ProtocolError as error:
            log.info("socket closed: bad frame", extra={"fields": {"reason": str(error), "code": error.code}})
            self._enter(State.CLOSED, error.code)

    async def handle(self, data: str | bytes) -> None:
        """Route one incoming frame; raises ProtocolError when the socket must close."""
        if isinstance(data, bytes):
            raise protocol.ProtocolError("binary frames are not accepted; send JSON text")
        frame = protocol.decode(data)
        # Heartbeats count too: past the limit one is answered `rate_limited` like any frame
        # (phoenix.js takes any reply to its heartbeat as a sign of life).
        if not self.bucket.take():
            self.metrics.messages_rejected.labels("rate_limited").inc()
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
            channel = RoomChannel(self.rooms, self, frame.topic, frame.join_ref, user)
            self.channels[frame.topic] = channel
            await channel.join(frame, last_seen_id)
        except JoinRefused as refused:
            self.channels.pop(frame.topic, None)
            self.send(protocol.reply(frame, "error", {"reason": str(refused)}))
            return
        self.metrics.joins.inc()

    def _leave(self, channel: RoomChannel) -> None:
        if self.channels.get(channel.topic) is channel:
            del self.channels[channel.topic]
        channel.leave()

    # Serving ----------------------------------------------------------------------------

    async def run(
        self,
        receive: Callable[[], Awaitable[str | bytes | None]],
        send: Send,
        transport: Transport | None = None,
    ) -> int:
        """Serve until the client goes, a limit is hit or `close()` is called; returns the close code.

        `receive` returns None once the client has gone. `send` is the ASGI way out;
        `transport`, when given, is the fast path (transport.py)."""
        task = self._task = asyncio.current_task()
        assert task is not None, "run() runs in a task"
        self.last_in = time.monotonic()
        self._enter(State.OPEN)
        self.outbox.serve(send, transport if self.state is not State.CLOSED else None)
        try:
            await self._read_loop(receive)
            if self.state is State.OPEN:  # the read loop ended without a close: a drain came
                self._enter(State.CLOSING, protocol.CLOSE_GOING_AWAY)
            if self.state is State.CLOSING:  # the writer sends what is queued, then CLOSED
                self._waiting = True
                await self.outbox.flushed()
                self._enter(State.CLOSED, self.code if self.code is not None else protocol.CLOSE_GOING_AWAY)
        except asyncio.CancelledError:
            # Our own interruption ends the socket; any other cancellation goes on up.
            if not self._interrupted or task.uncancel() > 0:
                raise
        finally:
            self._waiting = False
            self.outbox.stop()
            for channel in list(self.channels.values()):
                self._leave(channel)
        if self.error is not None:
            raise self.error
        assert self.state is State.CLOSED and self.code is not None
        return self.code
