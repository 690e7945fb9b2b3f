"""One socket's way out: frames straight to the transport when the client keeps up, else
a bounded queue that a writer task sends through ASGI.

A writer task exists only while frames wait, so an idle socket holds no task of its own.
What every served socket of a node queues together is bounded too, by the node's
`Budget` (docs/protocol.md, Limits).
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from shared.transport import HIGH_WATER, Spliced, Transport, text_frame

Send = Callable[[str], Awaitable[None]]


class Budget:
    """The bytes every served socket of one node may hold queued, all together.

    A broadcast queued for many slow sockets is one string that every queue refers to, so
    it is counted once, while any queue holds it: the budget is the memory the queues
    take, and a room a slow client falls behind in together does not pass it N times."""

    __slots__ = ("_held", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._held: dict[int, int] = {}  # id() of a queued frame -> how many queues hold it

    def take(self, frame: str, size: int, *, force: bool = False) -> bool:
        """Count one more queue holding `frame` of `size` bytes; False, and nothing counted,
        when its bytes are new and would pass the limit (unless `force`)."""
        key = id(frame)
        held = self._held.get(key, 0)
        if not held:
            if self.used + size > self.limit and not force:
                return False
            self.used += size
        self._held[key] = held + 1
        return True

    def give(self, frame: str, size: int) -> None:
        """One queue let go of `frame`: its bytes leave the budget with the last."""
        key = id(frame)
        held = self._held[key] - 1
        if held:
            self._held[key] = held
        else:
            del self._held[key]
            self.used -= size


class Outbox:
    # Thousands per node: slots keep each one small.
    __slots__ = (
        "_on_error",
        "_on_flushed",
        "_send",
        "_sending",
        "_writer",
        "budget",
        "bytes",
        "frames",
        "limit",
        "transport",
    )

    def __init__(
        self, budget: Budget, limit: int, on_flushed: Callable[[], None], on_error: Callable[[BaseException], None]
    ) -> None:
        self.frames: list[str] = []  # taken whole by the writer: an empty list costs next to nothing
        self.bytes = 0  # the memory the queued strings take (sys.getsizeof)
        self.limit = limit
        self.transport: Transport | None = None  # the fast path, when the server offers one
        self.budget = budget
        self._on_flushed = on_flushed  # the writer found the queue empty
        self._on_error = on_error  # the writer broke
        self._send: Send | None = None  # the ASGI way out, once served
        self._writer: asyncio.Task[None] | None = None  # while the queue is being sent
        self._sending: deque[str] = deque()  # taken from the queue by the writer, until each is sent

    def serve(self, send: Send, transport: Transport | None) -> None:
        """Start sending; from here on the node's budget counts this queue."""
        self._send, self.transport = send, transport
        for frame in self.frames:
            self.budget.take(frame, sys.getsizeof(frame), force=True)
        self.flush_soon()

    def put(self, frame: str, wire: bytes | None = None, *, burst: bool = False) -> bool:
        """Send a frame: straight to the transport when it keeps up (`wire` is the frame
        already framed, shared by every socket of a broadcast), else queued behind what
        waits. False, and nothing queued, when a bound would be passed; a `burst` frame
        (see put_all) is held to the node's budget only."""
        if self.transport is not None and (wire is not None or len(frame) <= HIGH_WATER):
            if self.write_now(wire if wire is not None else text_frame(frame)):
                return True
        size = sys.getsizeof(frame)
        if self.bytes + size > self.limit and not burst:
            return False
        if self._send is not None and not self.budget.take(frame, size):
            return False
        self.bytes += size
        self.frames.append(frame)
        self.flush_soon()
        return True

    def put_all(self, frames: Sequence[str | Spliced]) -> bool:
        """Send frames in order, in one write when the client keeps up (a join's replies,
        state and history: one system call instead of a hundred), a large shared part of a
        `Spliced` frame (the room's presence list) written on its own, uncopied.

        They are one honest burst, bounded by what a join sends (its replies, the room's
        presence list, at most HISTORY_SIZE messages): taken whole however large, as the
        list grows with the room, and held to the node's budget like any queued frame.
        The transport takes them when the bytes that are this socket's own (not the
        shared list) stay within HIGH_WATER, as write_now does."""
        if self._write_burst(frames):
            return True
        return all(self.put(frame if isinstance(frame, str) else frame.text(), burst=True) for frame in frames)

    def _write_burst(self, frames: Sequence[str | Spliced]) -> bool:
        transport = self.transport
        if transport is None or self.frames or self._sending or transport.is_closing():
            return False
        # Pieces to write in order: this socket's own bytes joined, a shared part alone.
        pieces: list[bytes] = []
        shared: list[bytes] = []
        chunk: list[bytes] = []
        for frame in frames:
            if isinstance(frame, str):
                chunk.append(text_frame(frame))
                continue
            first, *rest = frame.wire()
            chunk.append(first)
            if rest:
                pieces += [b"".join(chunk), rest[0]]
                shared.append(rest[0])
                chunk = [rest[1]]
        pieces.append(b"".join(chunk))
        own = sum(map(len, pieces)) - sum(map(len, shared))
        if transport.get_write_buffer_size() + own > HIGH_WATER:
            return False
        for piece in pieces:
            transport.write(piece)
        return True

    def write_now(self, wire: bytes) -> bool:
        """Write framed bytes straight to the transport if nothing waits before them and the
        client keeps up; False when they must take the queue instead. The transport never
        holds more than HIGH_WATER bytes written this way: what it cannot take is queued,
        where the bounds count it."""
        transport = self.transport
        if (
            transport is not None
            and not self.frames
            and not self._sending
            and transport.get_write_buffer_size() + len(wire) <= HIGH_WATER
            and not transport.is_closing()
        ):
            transport.write(wire)
            return True
        return False

    def flush_soon(self) -> None:
        """Start the writer, unless it runs already, nothing waits or the socket is not served."""
        if self._writer is None and self._send is not None and self.frames:
            self._writer = asyncio.get_running_loop().create_task(self._write_loop(self._send))
            self._writer.add_done_callback(self._writer_ended)

    @property
    def idle(self) -> bool:
        """Nothing queued and no frame on its way through ASGI."""
        return self._writer is None and not self.frames

    async def flushed(self) -> None:
        """Until the writer has sent what is queued (at once if nothing is)."""
        if self._writer is not None:
            await self._writer

    def stop(self) -> None:
        """No more writing: the writer is cancelled, and what was never sent is let go and
        given back to the node's budget."""
        self.transport = None
        if self._writer is not None:
            self._writer.cancel()
        if self._send is not None:
            for frame in (*self._sending, *self.frames):
                self.budget.give(frame, sys.getsizeof(frame))
        self.frames, self.bytes = [], 0
        self._sending.clear()

    async def _write_loop(self, send: Send) -> None:
        sending = self._sending
        while self.frames:
            sending.extend(self.frames)
            self.frames = []
            while sending:
                frame = sending[0]
                await send(frame)  # returns once Hypercorn's transport has drained below its mark
                sending.popleft()
                size = sys.getsizeof(frame)  # counted until then: a stalled client's frame is still here
                self.bytes -= size
                self.budget.give(frame, size)
        self._writer = None  # from here on, a new frame starts a new writer
        self._on_flushed()

    def _writer_ended(self, task: asyncio.Task[None]) -> None:
        if self._writer is task:
            self._writer = None
        if not task.cancelled() and (error := task.exception()) is not None:
            self._on_error(error)
