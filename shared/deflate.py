"""permessage-deflate with the inflated size bounded while it inflates.

Hypercorn accepts permessage-deflate (RFC 7692) and wsproto inflates every chunk of a
compressed message whole, before any size check: a 200 KB message that inflates to
200 MB is 200 MB in memory before the 64 KiB limit is looked at. Here a message is
inflated at most `MAX_FRAME_BYTES + MARGIN` bytes (zlib's `max_length`); past that, the
rest of it is read and thrown away without inflating, and what was handed on is already
over the limit, so the socket closes with 1009 as any frame over 64 KiB does.

Why bound and not refuse the extension: refusing also takes patching Hypercorn (it offers
deflate unconditionally), and a bound keeps compression for the clients that use it
(browsers all offer it) for what they send; what the server sends goes out uncompressed
(below, BoundedDeflate's memory). `install()` swaps the class Hypercorn's handshake instantiates;
tests/test_hostile_http.py (the bomb) fails if a Hypercorn upgrade changes that.
"""

from __future__ import annotations

import zlib

from hypercorn.protocol import ws_stream
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

from shared.protocol import MAX_FRAME_BYTES

# Up to 3 bytes past the cut may be the rest of a UTF-8 character that is trimmed off
# again, so what is handed on stays over MAX_FRAME_BYTES and valid UTF-8.
MARGIN = 4


# A zlib context kept for a socket's lifetime costs about 300 KB (a compressor with a
# 15-bit window is 256 KB, an inflater 40 KB): 1000 h2c sockets that negotiated the
# extension took a node from 43 to 343 MB. So, as RFC 7692 allows:
# - the server sends every message uncompressed (RSV1 unset), as the fast path already
#   does for broadcasts (transport.py): no compressor ever exists, neither kept nor made
#   afresh for each frame (a compressor's tables are set up anew every time);
# - the answer to every offer adds client_no_context_takeover (unasked, which the RFC lets
#   a server do): each incoming message is inflated with a fresh context, freed when the
#   message ends, so an idle socket holds none; and server_no_context_takeover, so the
#   client need not keep one either;
# - a 1 KiB window for the client's messages when its offer leaves the size to the server
#   (browsers do), so the inflater of a message on its way is 8 KB, not 40.
WINDOW_BITS = 10  # 1 KiB; wsproto accepts 9..15


class BoundedDeflate(PerMessageDeflate):
    """wsproto's PerMessageDeflate that inflates what clients send, at most `limit` bytes of
    a message and without context takeover, and compresses nothing it sends."""

    def __init__(self, limit: int = MAX_FRAME_BYTES + MARGIN) -> None:
        super().__init__(client_no_context_takeover=True, server_no_context_takeover=True)
        self.limit = limit
        self._inflated = 0  # bytes of the current message handed on so far
        self._over = False  # the current message passed the limit: discard the rest
        self._text = False

    def accept(self, offer: str) -> bool | str | None:
        # A bare client_max_window_bits lets the server pick the client's window; without
        # the parameter the client may use 15 bits, and the inflater must too.
        if any(param.strip() == "client_max_window_bits" for param in offer.split(";")[1:]):
            self.client_max_window_bits = WINDOW_BITS
        return super().accept(offer)

    def frame_outbound(
        self, proto: FrameDecoder | FrameProtocol, opcode: Opcode, rsv: RsvBits, data: bytes, fin: bool
    ) -> tuple[RsvBits, bytes]:
        return rsv, data  # sent as it is: see above

    def frame_inbound_header(
        self, proto: FrameDecoder | FrameProtocol, opcode: Opcode, rsv: RsvBits, payload_length: int
    ) -> CloseReason | RsvBits:
        if opcode is not Opcode.CONTINUATION:
            self._text = opcode is Opcode.TEXT
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(self, proto: FrameDecoder | FrameProtocol, data: bytes) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        if self._over:
            return b""
        assert self._decompressor is not None
        room = self.limit - self._inflated
        try:
            out = self._decompressor.decompress(bytes(data), room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        if len(out) > room:
            # Over the limit: keep what came out (trimmed to whole characters) and inflate
            # nothing more of this message; the context is lost, and so is the socket.
            self._over = True
            self._decompressor = None
            out = _whole_characters(out) if self._text else out
        self._inflated += len(out)
        return out

    def frame_inbound_complete(self, proto: FrameDecoder | FrameProtocol, fin: bool) -> bytes | CloseReason | None:
        if not fin:
            return None
        if self._over:
            self._over, self._inflated, self._inbound_compressed = False, 0, None
            return b""
        room = self.limit - self._inflated
        self._inflated = 0
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return super().frame_inbound_complete(proto, fin)
        assert self._decompressor is not None
        try:
            # The final flush, bounded too: the message's last bytes may be the bomb.
            data = self._decompressor.decompress(b"\x00\x00\xff\xff", room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        if len(data) > room:
            self._decompressor = None
            self._inbound_compressed = None
            return _whole_characters(data) if self._text else data
        no_context_takeover = self.server_no_context_takeover if proto.client else self.client_no_context_takeover
        if no_context_takeover:
            self._decompressor = None
        self._inbound_compressed = None
        return data


def _whole_characters(data: bytes) -> bytes:
    """`data` without a UTF-8 character cut short at its end."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # the last character's first byte
            length = 1 if byte < 0x80 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return data[:-back] if length > back else data
    return data


def install() -> None:
    """Make Hypercorn's WebSocket handshake offer BoundedDeflate instead of wsproto's."""
    # A patch by design: Hypercorn looks the class up in this module, which does not export it,
    # and calls it with no arguments, which both classes take (their other arguments differ).
    ws_stream.PerMessageDeflate = BoundedDeflate  # type: ignore[attr-defined,assignment]  # unexported; no-arg call
