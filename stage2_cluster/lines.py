"""The lines on a node's Redis channel `chat:node:<name>`: one kind each, parsed here only.

Every line is `<kind> <rest>`:

    m <topic> <id> <frame>    a stored message, published by the broker's Lua script
    b <topic> <frame>         a broadcast that is not stored (user:entered, presence_diff..)
    h <node> <boot>           a heartbeat
    p {node, boot, topic, joins, leaves}      presence changes on the sender, one topic
    s {node, boot, topics, want_reply}        the sender's full presence, every topic

`boot` is the sender's incarnation: a new id each time a node starts, so that its peers
can tell a restarted node from the one they knew (membership.py). Anyone who can reach
Redis can PUBLISH on a channel, so whatever does not parse is a `BadLine`, dropped and
counted by the broker, never an exception in the subscription.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

import orjson

from shared.presence import Entry
from shared.settings import NODE_NAME_RE

MESSAGE_ID_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
BOOT_RE = re.compile(r"[0-9a-f]{16}")


class BadLine(ValueError):
    """A line on our channel that is not one of ours: anyone who can reach Redis can PUBLISH."""


class Kind(enum.StrEnum):
    MESSAGE = "m"
    BROADCAST = "b"
    HEARTBEAT = "h"
    PRESENCE = "p"
    SYNC = "s"


@dataclass(frozen=True, slots=True)
class Stored:
    topic: str
    message_id: str
    frame: str


@dataclass(frozen=True, slots=True)
class Broadcast:
    topic: str
    frame: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    node: str
    boot: str


@dataclass(frozen=True, slots=True)
class PresenceChange:
    node: str
    boot: str
    topic: str
    joins: list[Entry]
    leaves: list[Entry]


@dataclass(frozen=True, slots=True)
class Sync:
    """Everything `node` tracks: a topic it leaves out holds nothing of it."""

    node: str
    boot: str
    topics: dict[str, list[Entry]]
    want_reply: bool


Control = Heartbeat | PresenceChange | Sync
Line = Stored | Broadcast | Control


def parse(line: str) -> Line:
    """One line of our channel, typed; BadLine for anything we would never send."""
    head, _, rest = line.partition(" ")
    try:
        kind = Kind(head)
    except ValueError:
        raise BadLine("unknown kind") from None
    if kind is Kind.MESSAGE:
        topic, message_id, frame = _split(rest, 3)
        if not MESSAGE_ID_RE.fullmatch(message_id):
            raise BadLine("message id is not <ms>-<seq>")
        return Stored(topic, message_id, _frame(frame))
    if kind is Kind.BROADCAST:
        topic, frame = _split(rest, 2)
        return Broadcast(topic, _frame(frame))
    if kind is Kind.HEARTBEAT:
        node, boot = _split(rest, 2)
        return Heartbeat(_node(node), _boot(boot))
    message = _object(rest)
    node, boot = _node(message.get("node")), _boot(message.get("boot"))
    if kind is Kind.PRESENCE:
        room = message.get("topic")
        if not isinstance(room, str):
            raise BadLine("presence without a topic")
        return PresenceChange(
            node, boot, room, _entries(node, message.get("joins")), _entries(node, message.get("leaves"))
        )
    topics = message.get("topics")
    if not isinstance(topics, dict):
        raise BadLine("sync without topics")
    entries = {topic: _entries(node, items) for topic, items in topics.items()}
    return Sync(node, boot, entries, message.get("want_reply") is True)


def heartbeat(node: str, boot: str) -> str:
    return f"{Kind.HEARTBEAT} {node} {boot}"


def presence_change(node: str, boot: str, topic: str, joins: list[Entry], leaves: list[Entry]) -> str:
    body = {"node": node, "boot": boot, "topic": topic, "joins": _items(joins), "leaves": _items(leaves)}
    return f"{Kind.PRESENCE} " + orjson.dumps(body).decode()


def sync(node: str, boot: str, topics: dict[str, list[Entry]], *, want_reply: bool) -> str:
    body = {
        "node": node,
        "boot": boot,
        "topics": {topic: _items(entries) for topic, entries in topics.items()},
        "want_reply": want_reply,
    }
    return f"{Kind.SYNC} " + orjson.dumps(body).decode()


def broadcast(topic: str, frame: str) -> str:
    return f"{Kind.BROADCAST} {topic} {frame}"


def _split(rest: str, parts: int) -> list[str]:
    fields = rest.split(" ", parts - 1)
    if len(fields) != parts or not all(fields):
        raise BadLine(f"expected {parts} fields")
    return fields


def _frame(frame: str) -> str:
    # What we publish is an encoded Phoenix frame; sockets get it as is, so at least its shape
    # is checked here (a full JSON parse per message would cost the hot path).
    if not (frame.startswith("[") and frame.endswith("]")):
        raise BadLine("frame is not a JSON array")
    return frame


def _node(value: object) -> str:
    if not (isinstance(value, str) and NODE_NAME_RE.fullmatch(value)):
        raise BadLine("no node name")
    return value


def _boot(value: object) -> str:
    if not (isinstance(value, str) and BOOT_RE.fullmatch(value)):
        raise BadLine("no boot id: 16 hex digits")
    return value


def _object(rest: str) -> dict[str, Any]:
    try:
        message = orjson.loads(rest)
    except orjson.JSONDecodeError:
        raise BadLine("not JSON") from None
    if not isinstance(message, dict):
        raise BadLine("not a JSON object")
    return message


def _items(entries: list[Entry]) -> list[list[Any]]:
    return [[entry.key, entry.meta] for entry in entries]


def _entries(node: str, items: object) -> list[Entry]:
    """Presence entries from a peer's `[[key, meta], ...]`, each meta with its `phx_ref`."""
    if not isinstance(items, list):
        raise BadLine("presence entries are not a list")
    entries = []
    for item in items:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], dict)
            and isinstance(item[1].get("phx_ref"), str)
        ):
            raise BadLine("presence entry is not [key, {phx_ref, ...}]")
        entries.append(Entry(node, item[0], item[1]))
    return entries
