"""A WebSocket client on a plain socket, for frames no library would send: unmasked,
reserved bits, reserved opcodes, fragments, a tiny receive buffer that is never read."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct

DEADLINE = 15.0  # seconds for a connect or a read


def _mask(data: bytes, key: bytes) -> bytes:
    if not data:
        return data
    repeated = (key * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(data), "big")


def client_frame(payload: bytes, opcode: int = 1, *, fin: bool = True, rsv: int = 0, masked: bool = True) -> bytes:
    """One client frame on the wire."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        header = struct.pack("!BB", first, mask_bit | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + _mask(payload, key)


class RawWebSocket:
    """A WebSocket client that sends any bytes as frames and reads only when asked to.

    For what a well-behaved library will not do: invalid UTF-8, unmasked or reserved-bit
    frames, and never reading (a slow consumer, with a small receive buffer)."""

    def __init__(self, sock: socket.socket, head: bytes, rest: bytes) -> None:
        self.sock = sock
        self.head = head  # the response's status line and headers
        self.status = int(head.split()[1])
        self.buffer = rest

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        *,
        path: str = "/socket/websocket?vsn=2.0.0",
        origin: str | None = None,
        rcvbuf: int | None = None,
        timeout: float = DEADLINE,
        headers: tuple[str, ...] = (),
    ) -> RawWebSocket:
        sock = socket.socket()
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
            sock.settimeout(timeout)
            sock.connect((host, port))
            key = base64.b64encode(os.urandom(16)).decode()
            lines = [
                f"GET {path} HTTP/1.1",
                f"Host: {host}:{port}",
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {key}",
                "Sec-WebSocket-Version: 13",
            ]
            if origin is not None:
                lines.append(f"Origin: {origin}")
            lines += headers
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            response = b""
            while b"\r\n\r\n" not in response:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError(f"closed during the upgrade: {response!r}")
                response += chunk
        except BaseException:
            sock.close()
            raise
        head, _, rest = response.partition(b"\r\n\r\n")
        return cls(sock, head, rest)

    def send_frame(
        self, payload: bytes, *, opcode: int = 1, fin: bool = True, rsv: int = 0, masked: bool = True
    ) -> None:
        self.sock.sendall(client_frame(payload, opcode, fin=fin, rsv=rsv, masked=masked))

    def send_text(self, text: str) -> None:
        self.send_frame(text.encode())

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def read_frame(self) -> tuple[int, bytes]:
        first, second = self._read(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", self._read(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", self._read(8))
        return first & 0x0F, self._read(size)

    def close_code(self) -> int | None:
        """Read until the server's close frame: its code; None when the connection just ends."""
        try:
            while True:
                opcode, payload = self.read_frame()
                if opcode == 8:
                    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        except (EOFError, OSError):
            return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# One stage-2 node to attack, and a second one it must never connect to ----------------------------
