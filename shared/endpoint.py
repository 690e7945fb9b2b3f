"""The socket endpoint: `/socket/websocket` served as plain ASGI, in front of Quart.

Phoenix declares `socket "/socket", UserSocket` in the Endpoint, before the Router;
here too the socket is taken before Quart's routing. A Quart websocket route would
hold, for every connection, two more tasks, a receive queue, a request context and a
copy of the headers; the socket needs none of them, and a node holding thousands of
idle connections keeps about a quarter less memory without them. Every other request
goes on to Quart.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import orjson

from shared import logs
from shared.transport import find_transport

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from shared.node import ChatNode

    # ASGI's scope and events as plain mappings. Hypercorn types each kind as a TypedDict,
    # whose required keys a plain dict literal here would have to spell out in full.
    Scope = Mapping[str, Any]
    Receive = Callable[[], Awaitable[Mapping[str, Any]]]
    Send = Callable[[Any], Awaitable[None]]
    ASGIApp = Callable[..., Awaitable[None]]

PATH = "/socket/websocket"
CLOSE_SEND_TIMEOUT = 2.0  # a client too slow to take the close frame is simply cut off
log = logs.get("endpoint")


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Browsers always send Origin; other clients (CLIs, tests) may not, as Phoenix allows."""
    if origin is None:
        return True
    if "*" in allowed:
        return True
    if allowed:
        return origin.rstrip("/") in allowed
    return urlsplit(origin).netloc == host


class SocketEndpoint:
    """ASGI middleware: the chat socket, or else the wrapped app."""

    def __init__(self, app: ASGIApp, chat: ChatNode) -> None:
        self.app = app
        self.chat = chat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == PATH:
            await self.serve(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] == PATH:
            await not_an_upgrade(scope, send)
        else:
            await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, reason) when this upgrade must be refused, else None."""
        headers = {name.lower(): value.decode("latin-1") for name, value in scope["headers"]}
        origin = headers.get(b"origin")
        if not origin_allowed(origin, headers.get(b"host"), self.chat.settings.allowed_origins):
            log.info("websocket refused: origin not allowed", origin=origin)
            return 403, "origin not allowed"
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        vsn = query.get("vsn", ["2.0.0"])[-1]
        if not vsn.startswith("2."):
            return 400, f"unsupported protocol version {vsn[:16]!r}; this server speaks vsn=2.0.0"
        if self.chat.draining:
            return 503, "node is draining"
        if len(self.chat.sockets) >= self.chat.settings.max_connections:
            log.info("websocket refused: node full", sockets=len(self.chat.sockets))
            return 503, "node is full: too many connections, try again or another node"
        return None

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = self.refusal(scope)
        if refused is not None:
            await refuse(scope, send, *refused)
            return
        chat = self.chat
        sock = chat.new_socket()
        frames = Frames(receive, send)
        transport = find_transport(send)
        # Counted before the first await, so that upgrades arriving together cannot pass MAX_CONNECTIONS.
        chat.attach(sock, fast=transport is not None)
        try:
            await send({"type": "websocket.accept"})
            code = await sock.run(frames.receive, frames.send, transport)
        except Exception:  # a bug in one socket: it closes with 1011, the node serves on
            log.exception("socket crashed")
            code = 1011
        finally:
            chat.detach(sock, fast=transport is not None)
        if not frames.gone:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_SEND_TIMEOUT):
                    await send({"type": "websocket.close", "code": code})


class Frames:
    """Text frames in and out over ASGI websocket events."""

    __slots__ = ("_receive", "_send", "gone")

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive, self._send = receive, send
        self.gone = False  # the client disconnected: no close frame to send

    async def receive(self) -> str | bytes | None:
        """The next frame's text (or bytes), None once the client has gone."""
        while True:
            event = await self._receive()
            kind = event["type"]
            if kind == "websocket.receive":
                text = event.get("text")
                return text if text is not None else event.get("bytes") or b""
            if kind == "websocket.disconnect":
                self.gone = True
                return None

    async def send(self, text: str) -> None:
        await self._send({"type": "websocket.send", "text": text})


def json_error(reason: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The `{"error": reason}` body every route answers with, and its headers."""
    body = orjson.dumps({"error": reason})
    return body, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


async def not_an_upgrade(scope: Scope, send: Send) -> None:
    """Plain HTTP to the socket's path: 426 for a GET without the upgrade, else 405."""
    if scope["method"] in ("GET", "HEAD"):
        status, reason, extra = (
            426,
            "this is a WebSocket endpoint: connect with a WebSocket upgrade",
            (b"upgrade", b"websocket"),
        )
    else:
        status, reason, extra = 405, "method not allowed", (b"allow", b"GET")
    body, headers = json_error(reason)
    await send({"type": "http.response.start", "status": status, "headers": [*headers, extra]})
    await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})


async def refuse(scope: Scope, send: Send, status: int, reason: str) -> None:
    """Answer the upgrade with an HTTP error and a JSON body, as every other route does.

    A server without the ASGI denial-response extension can only close the handshake,
    which it answers with 403."""
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    body, headers = json_error(reason)
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
