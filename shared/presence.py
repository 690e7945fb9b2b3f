"""Who is online in a topic, in the format of Phoenix.Presence.

State is `{key: {"metas": [meta, ...]}}`, each meta carrying a unique `phx_ref`;
changes are `{"joins": state, "leaves": state}`. The official JS client's
`Presence.syncState`/`syncDiff` consume exactly these shapes.

Every entry remembers the node that tracks it, so a cluster can drop all of a dead
node's presences at once (Phoenix.Tracker does the same per node).
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

Meta = dict[str, Any]
State = dict[str, dict[str, list[Meta]]]


@dataclass(frozen=True, slots=True)
class Entry:
    node: str
    key: str
    meta: Meta  # includes "phx_ref"


# A presence's phx_ref: unique in the cluster, not a secret (every member of the room sees
# it), so a random prefix per process and a counter, not a random draw (a syscall) per join.
_REF_PREFIX = secrets.token_urlsafe(6)
_ref_counter = itertools.count(1)


def new_ref() -> str:
    return f"{_REF_PREFIX}{next(_ref_counter)}"


def diff(joins: list[Entry], leaves: list[Entry]) -> dict[str, State]:
    return {"joins": _group(joins), "leaves": _group(leaves)}


def _group(entries: list[Entry]) -> State:
    state: State = {}
    for entry in entries:
        state.setdefault(entry.key, {"metas": []})["metas"].append(entry.meta)
    return state


class Presence:
    """The presences of one topic across the cluster.

    The `state()` a joiner is sent is kept up to date as presences come and go, rather
    than rebuilt for every join: in a room of N users a join storm would otherwise cost
    N rebuilds of N entries. Its JSON is kept too, one piece per key, so an encoding
    re-encodes only the keys that changed and joins the other pieces as they are (in
    whatever order: a JSON object's keys have none). A joiner is sent the last encoding
    with its own entry added (`joiner_state`), so a storm of joins within one presence
    batch shares one encoding, the same bytes object, instead of making one each."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}  # phx_ref -> entry
        self._state: State = {}
        self._pieces: dict[str, bytes] = {}  # key -> '"key":{"metas":[...]}'
        self._stale: set[str] = set()  # keys changed since their piece was encoded
        self._opened: bytes | None = None  # the state when last encoded, less its "}", until `expire`

    def track(self, node: str, key: str, meta: Meta) -> Entry:
        """Add a presence; `meta` must carry a `phx_ref` unique in the cluster."""
        self.untrack(meta["phx_ref"])  # tracked again (a peer's sync): replaced, not doubled
        entry = Entry(node, key, meta)
        self._entries[meta["phx_ref"]] = entry
        self._state.setdefault(key, {"metas": []})["metas"].append(meta)
        self._changed(key)
        return entry

    def untrack(self, ref: str) -> Entry | None:
        entry = self._entries.pop(ref, None)
        if entry is not None:
            metas = self._state[entry.key]["metas"]
            metas.remove(entry.meta)
            if not metas:
                del self._state[entry.key]
            self._changed(entry.key)
        return entry

    def _changed(self, key: str) -> None:
        self._stale.add(key)

    def expire(self) -> None:
        """The changes since the last encoding went out to every member (the batch's
        `presence_diff`): a joiner from now on needs a newer encoding."""
        self._opened = None

    def drop_node(self, node: str) -> list[Entry]:
        gone = self.of_node(node)
        for entry in gone:
            self.untrack(entry.meta["phx_ref"])
        return gone

    def of_node(self, node: str) -> list[Entry]:
        return [entry for entry in self._entries.values() if entry.node == node]

    def state(self) -> State:
        """The current state, shared: encode it, don't change it."""
        return self._state

    def joiner_state(self, key: str, meta: Meta) -> tuple[bytes, bytes]:
        """The JSON `presence_state` for a joiner that has just tracked (key, meta), in two
        parts to be sent one after the other: the last encoding without its closing brace,
        the very same bytes for every joiner until `expire` (written as they are, never
        copied per joiner), then the joiner's own entry and the brace.

        Every change since that encoding is in the presence batch not yet sent, whose diff
        the joiner will get as a member, since the tracker calls `expire` when it sends a
        batch. Clients merge a diff's joins by `phx_ref`, so one they already hold costs
        nothing. A key already in that encoding (a second tab) takes a fresh encoding."""
        opened = self._opened
        if opened is None or key in self._pieces:
            return self._encode(), b"}"
        own = orjson.dumps({key: {"metas": [meta]}})[1:-1]
        return opened, b"".join((b"," if len(opened) > 1 else b"", own, b"}"))

    def encoded_state(self) -> bytes:
        """`state()` as JSON, as it is now."""
        return self._encode() + b"}"

    def _encode(self) -> bytes:
        """`state()` as JSON without its closing brace, encoded again where it changed."""
        if self._opened is None or self._stale:
            pieces = self._pieces
            for key in self._stale:
                value = self._state.get(key)
                if value is None:
                    pieces.pop(key, None)
                else:
                    pieces[key] = orjson.dumps({key: value})[1:-1]
            self._stale.clear()
            self._opened = b"{" + b",".join(pieces.values())
        return self._opened

    def __len__(self) -> int:
        return len(self._entries)
