"""The protocol from the client's side: a small Phoenix Channels V2 client over `websockets`.

It is what a browser's phoenix.js does, without the reconnecting: open the socket, join a
topic, push events and wait for their replies, and keep every frame the server sends, so
that a script can look at them afterwards. From a script (or `python -m asyncio`, where
`await` works at the prompt), against a node on port 4000:

    async with PhoenixClient("ws://localhost:4000/socket/websocket?vsn=2.0.0") as alice:
        await alice.join(LOBBY, {"user": "alice"})
        reply = await alice.message("hi", user="alice")
        print(reply.status, reply.response)

Every wait has a deadline (the client's `timeout`, or a `deadline` in seconds): it raises
TimeoutError naming what did not come, or ConnectionError when the socket closed first.

It lives in `shared/` because every stage's users speak this protocol: the tests, stage
3's deploy tool (whose final checks join a room through the entry point, stage 3 -> shared)
and a learner's scripts. `bench/loadgen.py` keeps a raw client of its own, for speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Self

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from shared.channel import LOBBY
from shared.messages import SYSTEM

__all__ = ["DEADLINE", "LOBBY", "Frame", "JoinError", "PhoenixClient", "Reply"]

DEADLINE = 10.0  # default seconds for any wait of a client
FRAME_LIMIT = 2**20  # bytes of one frame received; larger ones close the socket (1009)


class Frame(NamedTuple):
    """One frame as the server sent it: `[join_ref, ref, topic, event, payload]`."""

    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: dict[str, Any]
    at: float  # time.monotonic() when it arrived


class Reply(NamedTuple):
    """The `phx_reply` to a push: `status` "ok" or "error", and its `response`."""

    status: str
    response: dict[str, Any]
    at: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class JoinError(Exception):
    """The server answered a `phx_join` with an error; the message holds its reason."""


class PhoenixClient:
    """One WebSocket speaking Phoenix V2 JSON; every frame received is appended to `frames`.

    `origin` is sent as the Origin header, as a browser's page sends its own. `address`
    (host, port) is where to connect when the URL's host name does not lead there (a
    port-forward, or an entry point a browser reaches by name): the URL's host and port
    still make the Host header, as they do for a browser.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEADLINE,
        origin: str | None = None,
        address: tuple[str, int] | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.origin = origin
        self.address = address
        self.frames: list[Frame] = []
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self.join_refs: dict[str, str] = {}
        self._refs = itertools.count(1)
        self._arrived = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self, sock: socket.socket | None = None) -> Self:
        """Connect (over `sock` when given: a connection already made, say in a test's network
        namespace) and start reading; raises what `websockets.connect` raises when refused."""
        route: dict[str, Any] = {"sock": sock} if sock is not None else {}
        if self.address is not None and sock is None:
            route = {"host": self.address[0], "port": self.address[1]}
        self._ws = await connect(
            self.url,
            origin=None if self.origin is None else Origin(self.origin),
            proxy=None,  # a loopback node or a port-forward: never through the environment's proxy
            open_timeout=self.timeout,
            max_size=FRAME_LIMIT,
            **route,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(OSError, TimeoutError, ConnectionClosed):
                async with asyncio.timeout(5):
                    await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                join_ref, ref, topic, event, payload = json.loads(raw)
                self.frames.append(Frame(join_ref, ref, topic, event, payload, time.monotonic()))
                self._arrived.set()
        except ConnectionClosed as closed:
            self.close_code = closed.rcvd.code if closed.rcvd else None
        finally:
            if self.close_code is None and self._ws.close_code is not None:
                self.close_code = self._ws.close_code
            self.closed.set()
            self._arrived.set()

    # Sending

    async def send(
        self, topic: str, event: str, payload: dict[str, Any] | None = None, *, join_ref: str | None = None
    ) -> str:
        """Send one frame without waiting; returns its ref (await `reply(ref)` for the answer)."""
        assert self._ws is not None, "open() first"
        ref = str(next(self._refs))
        if join_ref is None:
            join_ref = ref if event == "phx_join" else self.join_refs.get(topic)
        if event == "phx_join" and join_ref is not None:
            self.join_refs[topic] = join_ref
        await self._ws.send(json.dumps([join_ref, ref, topic, event, payload or {}]))
        return ref

    async def reply(self, ref: str, deadline: float | None = None) -> Reply:
        frame = await self.wait_for(
            lambda f: f.event == "phx_reply" and f.ref == ref, deadline, what=f"reply to ref {ref}"
        )
        return Reply(frame.payload["status"], frame.payload.get("response", {}), frame.at)

    async def push(
        self, topic: str, event: str, payload: dict[str, Any] | None = None, deadline: float | None = None
    ) -> Reply:
        return await self.reply(await self.send(topic, event, payload), deadline)

    async def join(
        self, topic: str = LOBBY, payload: dict[str, Any] | None = None, deadline: float | None = None
    ) -> int:
        """Join and wait for an ok reply (JoinError otherwise); returns the index in `frames` of that reply,
        so that `wait_for(..., since=index)` looks only at what came after it."""
        ref = await self.send(topic, "phx_join", payload)
        reply = await self.reply(ref, deadline)
        if not reply.ok:
            raise JoinError(f"join {topic} refused: {reply.response}")
        return next(i for i, f in enumerate(self.frames) if f.event == "phx_reply" and f.ref == ref)

    async def message(
        self, body: str, user: str = "tester", topic: str = LOBBY, deadline: float | None = None
    ) -> Reply:
        """Push `new:msg` and wait for the reply."""
        return await self.push(topic, "new:msg", {"user": user, "body": body}, deadline)

    # Receiving

    async def wait_for(
        self, predicate: Callable[[Frame], bool], deadline: float | None = None, *, since: int = 0, what: str = "frame"
    ) -> Frame:
        """The first frame at index >= `since` for which `predicate` holds, waiting up to `deadline` seconds."""
        seconds = self.timeout if deadline is None else deadline
        end = time.monotonic() + seconds
        index = since
        while True:
            while index < len(self.frames):
                frame = self.frames[index]
                index += 1
                if predicate(frame):
                    return frame
            if self.closed.is_set():
                raise ConnectionError(f"socket closed ({self.close_code}) before {what} arrived")
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {what} within {seconds}s; last frames: {self.frames[-5:]}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()

    async def collect_until(
        self, predicate: Callable[[Frame], bool], deadline: float | None = None, *, since: int = 0, what: str = "frame"
    ) -> list[Frame]:
        """Every frame from `since` up to and including the first that matches `predicate`."""
        last = await self.wait_for(predicate, deadline, since=since, what=what)
        return self.frames[since : self.frames.index(last, since) + 1]

    async def wait_for_message(self, body: str, deadline: float | None = None, *, since: int = 0) -> Frame:
        return await self.wait_for(
            lambda f: f.event == "new:msg" and f.payload.get("body") == body,
            deadline,
            since=since,
            what=f"new:msg {body!r}",
        )

    async def wait_closed(self, deadline: float | None = None) -> int | None:
        async with asyncio.timeout(self.timeout if deadline is None else deadline):
            await self.closed.wait()
        return self.close_code

    def messages(self, topic: str = LOBBY, *, since: int = 0) -> list[dict[str, Any]]:
        """Payloads of the chat messages received (the server's own notices, the demo ping, left out)."""
        return [
            f.payload
            for f in self.frames[since:]
            if f.topic == topic and f.event == "new:msg" and f.payload.get("user") != SYSTEM
        ]
