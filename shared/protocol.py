"""Phoenix Channels V2 JSON serializer: frames in, frames out, nothing else.

A frame is `[join_ref, ref, topic, event, payload]`; refs are strings or null and the
payload is an object. This module only encodes and decodes; routing lives in
`socket.py`, room logic in `channel.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from shared.transport import Spliced

MAX_FRAME_BYTES = 64 * 1024

# Close codes. Never 1000 when the client should come back: phoenix.js 1.7 then gives up.
CLOSE_GOING_AWAY = 1001  # drain, shutdown, idle timeout: reconnect (elsewhere)
CLOSE_INVALID_DATA = 1007  # unparseable or wrongly shaped frame
CLOSE_POLICY = 1008  # too slow to read what it is sent
CLOSE_TOO_BIG = 1009  # frame over MAX_FRAME_BYTES

# Phoenix's reserved events.
JOIN, LEAVE, REPLY, CLOSE, ERROR, HEARTBEAT = (
    "phx_join",
    "phx_leave",
    "phx_reply",
    "phx_close",
    "phx_error",
    "heartbeat",
)
PHOENIX_TOPIC = "phoenix"


class ProtocolError(ValueError):
    """A frame this server cannot accept; the socket closes with `code`."""

    def __init__(self, reason: str, code: int = CLOSE_INVALID_DATA) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True, slots=True)
class Frame:
    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: dict[str, Any]


def decode(data: str | bytes) -> Frame:
    """Parse one text frame, or raise ProtocolError naming what is wrong."""
    size = len(data)
    if isinstance(data, str) and size * 4 > MAX_FRAME_BYTES:
        # The limit is in bytes as on the wire; Hypercorn's own check counts a text frame's characters.
        size = len(data.encode("utf-8", "surrogatepass"))
    if size > MAX_FRAME_BYTES:
        raise ProtocolError("frame too large", CLOSE_TOO_BIG)
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ProtocolError("frame is not valid JSON") from None
    if not isinstance(value, list) or len(value) != 5:
        raise ProtocolError("frame must be a JSON array of 5 elements")
    join_ref, ref, topic, event, payload = value
    for name, item in (("join_ref", join_ref), ("ref", ref)):
        if item is not None and not isinstance(item, str):
            raise ProtocolError(f"{name} must be a string or null")
    if not isinstance(topic, str) or not topic:
        raise ProtocolError("topic must be a non-empty string")
    if not isinstance(event, str) or not event:
        raise ProtocolError("event must be a non-empty string")
    if not isinstance(payload, dict):
        raise ProtocolError("payload must be an object")
    return Frame(join_ref, ref, topic, event, payload)


def encode(join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any) -> str:
    return orjson.dumps([join_ref, ref, topic, event, payload]).decode()


def encode_raw(join_ref: str | None, ref: str | None, topic: str, event: str, payload: bytes) -> str:
    """`encode` for a payload that is JSON already (a stored message, encoded once)."""
    return b"".join((_head(join_ref, ref, topic, event), payload, b"]")).decode()


def encode_spliced(
    join_ref: str | None, ref: str | None, topic: str, event: str, payload: tuple[bytes, bytes]
) -> Spliced:
    """`encode_raw` for a JSON payload in two parts, the first shared by many frames (a
    room's presence list, transport.Spliced)."""
    shared, tail = payload
    return Spliced(_head(join_ref, ref, topic, event), shared, tail + b"]")


def _head(join_ref: str | None, ref: str | None, topic: str, event: str) -> bytes:
    """A frame's JSON up to its payload: '[join_ref,ref,"topic","event",'."""
    return orjson.dumps([join_ref, ref, topic, event])[:-1] + b","


def reply(frame: Frame, status: str, response: dict[str, Any] | None = None) -> str:
    """The `phx_reply` that answers `frame`."""
    return encode(frame.join_ref, frame.ref, frame.topic, REPLY, {"status": status, "response": response or {}})


def broadcast(topic: str, event: str, payload: Any) -> str:
    """A broadcast carries no refs, so one encoding serves every socket on every node."""
    return encode(None, None, topic, event, payload)
