"""Many WebSockets over cleartext HTTP/2 (RFC 8441): a few connections, up to 100 streams
each (Hypercorn's default `h2_max_concurrent_streams`), every stream offering
permessage-deflate as browsers do and joining the lobby with a compressed frame.

Each connection is served by a thread of its own that reads, acknowledges every DATA frame
(so flow control never stalls the node) and counts the WebSocket frames of each stream.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
import zlib

import h2.config
import h2.connection
import h2.events
import h2.settings

STREAMS_PER_CONNECTION = 100
OFFER = "permessage-deflate; client_max_window_bits"
WINDOW = 16 * 1024 * 1024


def websocket_request(port: int, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    """The headers of an extended CONNECT that opens a WebSocket on the socket route (RFC 8441)."""
    return [
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "http"),
        (":path", "/socket/websocket?vsn=2.0.0"),
        (":authority", f"127.0.0.1:{port}"),
        ("sec-websocket-version", "13"),
        *extra,
    ]


def compressed_frame(text: str) -> bytes:
    """One masked client text frame, compressed (RSV1) with a fresh raw deflate context."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = (compressor.compress(text.encode()) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    key = os.urandom(4)
    masked = bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))
    size = len(payload)
    header = struct.pack("!BB", 0xC1, 0x80 | size) if size < 126 else struct.pack("!BBH", 0xC1, 0x80 | 126, size)
    return header + key + masked


class Stream:
    """One WebSocket on an h2 stream: its frames, inflated in order with one context (which
    also reads messages sent without context takeover)."""

    def __init__(self) -> None:
        self.accepted = False
        self.extensions = ""
        self.buffer = b""
        self.inflate = zlib.decompressobj(-15)
        self.messages: list[list[object]] = []

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 2:
            first, second = self.buffer[0], self.buffer[1] & 0x7F
            start, size = 2, second
            if second == 126:
                if len(self.buffer) < 4:
                    return
                (size,) = struct.unpack("!H", self.buffer[2:4])
                start = 4
            elif second == 127:
                if len(self.buffer) < 10:
                    return
                (size,) = struct.unpack("!Q", self.buffer[2:10])
                start = 10
            if len(self.buffer) < start + size:
                return
            payload, self.buffer = self.buffer[start : start + size], self.buffer[start + size :]
            if first & 0x40:  # RSV1: compressed
                payload = self.inflate.decompress(payload + b"\x00\x00\xff\xff")
            if first & 0x0F == 1:
                self.messages.append(json.loads(payload))

    @property
    def joined(self) -> bool:
        return any(m[3] == "phx_reply" and m[4] == {"status": "ok", "response": {}} for m in self.messages)  # type: ignore[index]


class H2cConnection(threading.Thread):
    """One h2c connection holding `streams` WebSockets, each joining as `user-<n>`."""

    def __init__(self, port: int, streams: int, label: str) -> None:
        super().__init__(daemon=True)
        self.port, self.count, self.label = port, streams, label
        self.streams: dict[int, Stream] = {}
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._serve()
        except BaseException as error:  # reported by the test, which reads `error`
            self.error = error

    def _serve(self) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.settimeout(0.2)
            conn.initiate_connection()
            # Windows as large as a browser's: the default 64 KiB per connection would make
            # this client, not the node, the bottleneck of a thousand sockets' presence diffs.
            conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW})
            conn.increment_flow_control_window(WINDOW)
            sock.sendall(conn.data_to_send())
            opened = False
            while not self.stop.is_set():
                try:
                    received = sock.recv(1 << 20)
                except TimeoutError:
                    continue
                if not received:
                    raise ConnectionError("the node closed the connection")
                for event in conn.receive_data(received):
                    if isinstance(event, h2.events.RemoteSettingsChanged) and not opened:
                        opened = True
                        for _ in range(self.count):
                            stream_id = conn.get_next_available_stream_id()
                            self.streams[stream_id] = Stream()
                            conn.send_headers(
                                stream_id, websocket_request(self.port, ("sec-websocket-extensions", OFFER))
                            )
                    elif isinstance(event, h2.events.ResponseReceived):
                        stream = self.streams[event.stream_id]
                        headers = dict(event.headers)  # type: ignore[arg-type]
                        stream.accepted = headers.get(":status") == "200"
                        stream.extensions = headers.get("sec-websocket-extensions", "")
                        user = f"{self.label}-{event.stream_id}"
                        join = json.dumps(["1", "1", "rooms:lobby", "phx_join", {"user": user}])
                        conn.send_data(event.stream_id, compressed_frame(join))
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        self.streams[event.stream_id].feed(event.data)
                    elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                        raise ConnectionError(f"the node ended a stream: {event}")
                sock.sendall(conn.data_to_send())


def wait_joined(connections: list[H2cConnection], deadline: float) -> None:
    """Until every stream of every connection is joined; raises on a connection's error or at the deadline."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        for connection in connections:
            if connection.error is not None:
                raise connection.error
        if all(len(c.streams) == c.count and all(s.joined for s in c.streams.values()) for c in connections):
            return
        time.sleep(0.1)
    joined = sum(s.joined for c in connections for s in c.streams.values())
    raise TimeoutError(f"{joined} of {sum(c.count for c in connections)} streams joined after {deadline}s")
