"""The fast path to the client: a broadcast framed once, its bytes written to every socket.

Every local member of a room gets the same broadcast, so the server's WebSocket frame
(unmasked, RFC 6455 §5.2) is built once per message and the very same bytes are
written to each connection's transport: no per-socket framing, no compression and no
task switch per socket. Frames sent this way are never compressed, which is allowed
even when permessage-deflate was negotiated (RFC 7692 §6: RSV1 clear means an
uncompressed message).

ASGI does not expose the transport under a connection; `find_transport` reaches it
through the pinned Hypercorn's HTTP/1.1 WebSocket stream and returns None for
anything else (HTTP/2, Quart's test client), and then frames take the ASGI path.
tests/test_transport.py fails if a Hypercorn upgrade breaks the way in.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Protocol

# Past this many bytes waiting in the transport, frames queue in the socket's outbox
# instead and go through ASGI, which waits for the client (and drops it if it never reads).
HIGH_WATER = 64 * 1024


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...
    def is_closing(self) -> bool: ...
    def get_write_buffer_size(self) -> int: ...


def text_frame(text: str) -> bytes:
    """One final, unmasked text frame carrying `text`."""
    data = text.encode()
    return _header(len(data)) + data


def _header(size: int) -> bytes:
    if size < 126:
        return struct.pack("!BB", 0x81, size)
    if size < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, size)
    return struct.pack("!BBQ", 0x81, 127, size)


@dataclass(frozen=True, slots=True)
class Spliced:
    """A frame's text as UTF-8 in three parts, the middle one shared by many sockets: a
    room's presence list, the same bytes for every joiner of a presence batch. Past
    HIGH_WATER it is written to each transport on its own, as it is: the event loop keeps
    a reference to it until it is sent, not a copy per socket (uvloop's transports do;
    asyncio's copy what the socket does not take at once)."""

    head: bytes
    shared: bytes
    tail: bytes

    @property
    def own(self) -> int:
        """The bytes this frame holds for its socket alone."""
        return len(self.head) + len(self.tail)

    def wire(self) -> list[bytes]:
        """The frame, framed, in the pieces to write one after the other."""
        header = _header(len(self.head) + len(self.shared) + len(self.tail))
        if len(self.shared) <= HIGH_WATER:  # cheaper copied than written on its own
            return [b"".join((header, self.head, self.shared, self.tail))]
        return [header + self.head, self.shared, self.tail]

    def text(self) -> str:
        return b"".join((self.head, self.shared, self.tail)).decode()


def find_transport(send: Any) -> Transport | None:
    """The transport under an ASGI websocket `send` of Hypercorn over HTTP/1.1, else None."""
    stream = getattr(send, "__self__", None)  # Hypercorn's WSStream.app_send
    if type(stream).__name__ != "WSStream":
        return None
    http = getattr(getattr(stream, "send", None), "__self__", None)  # H11Protocol.stream_send
    if type(http).__name__ != "H11Protocol":
        # Over HTTP/2 (RFC 8441) the same WSStream sits on an H2Protocol: the transport
        # carries h2 frames for many streams, and a WebSocket frame written there breaks them.
        return None
    server = getattr(getattr(http, "send", None), "__self__", None)  # TCPServer.protocol_send
    transport = getattr(getattr(server, "writer", None), "transport", None)
    if all(hasattr(transport, name) for name in ("write", "is_closing", "get_write_buffer_size")):
        return transport
    return None
