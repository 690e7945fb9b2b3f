"""Who is online in a topic, in the format of Phoenix.Presence.

State is `{key: {"metas": [meta, ...]}}`, each meta carrying a unique `phx_ref`;
changes are `{"joins": state, "leaves": state}`. The official JS client's
`Presence.syncState`/`syncDiff` consume exactly these shapes.

Every entry remembers the node that tracks it, so a cluster can drop all of a dead
node's presences at once (Phoenix.Tracker does the same per node).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

Meta = dict[str, Any]
State = dict[str, dict[str, list[Meta]]]


@dataclass(frozen=True, slots=True)
class Entry:
    node: str
    key: str
    meta: Meta  # includes "phx_ref"


def new_ref() -> str:
    return secrets.token_urlsafe(9)


def diff(joins: list[Entry], leaves: list[Entry]) -> dict[str, State]:
    return {"joins": _group(joins), "leaves": _group(leaves)}


def _group(entries: list[Entry]) -> State:
    state: State = {}
    for entry in entries:
        state.setdefault(entry.key, {"metas": []})["metas"].append(entry.meta)
    return state


class Presence:
    """The presences of one topic across the cluster."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}  # phx_ref -> entry

    def track(self, node: str, key: str, meta: Meta) -> Entry:
        """Add a presence; `meta` must carry a `phx_ref` unique in the cluster."""
        entry = Entry(node, key, meta)
        self._entries[meta["phx_ref"]] = entry
        return entry

    def untrack(self, ref: str) -> Entry | None:
        return self._entries.pop(ref, None)

    def drop_node(self, node: str) -> list[Entry]:
        gone = [entry for entry in self._entries.values() if entry.node == node]
        for entry in gone:
            del self._entries[entry.meta["phx_ref"]]
        return gone

    def of_node(self, node: str) -> list[Entry]:
        return [entry for entry in self._entries.values() if entry.node == node]

    def state(self) -> State:
        return _group(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)
