"""Per-room history with ids that sort in publish order.

Ids have the shape of Redis Stream ids, `<milliseconds>-<sequence>`, so the in-memory
core and the Redis broker of stage 2 hand out the same kind of id and a client's
`last_seen_id` means the same thing on both.
"""

from __future__ import annotations

import re
import time
from collections import deque

from shared.messages import ChatMessage

# ASCII digits only: \d would also match other scripts' digits, which Redis refuses.
ID_RE = re.compile(r"^[0-9]{1,15}-[0-9]{1,15}$")


def parse_id(value: str) -> tuple[int, int]:
    """The sortable form of a message id; raises ValueError for anything else."""
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise ValueError(f"not a message id: {value!r}")
    ms, seq = value.split("-")
    return int(ms), int(seq)


class IdClock:
    """Hands out strictly increasing ids, like XADD's `*`."""

    def __init__(self) -> None:
        self._last = (0, 0)

    def next(self, now_ms: int | None = None) -> str:
        ms = int(time.time() * 1000) if now_ms is None else now_ms
        last_ms, last_seq = self._last
        self._last = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        return f"{self._last[0]}-{self._last[1]}"


class RoomHistory:
    """The last `size` messages of one room, oldest first, and which of them each user's
    `client_msg_id` names."""

    def __init__(self, size: int) -> None:
        self._messages: deque[ChatMessage] = deque(maxlen=size)
        self._keys: deque[tuple[str, str] | None] = deque(maxlen=size)  # each message's (user, client_msg_id)
        self._client_ids: dict[tuple[str, str], ChatMessage] = {}

    def append(self, message: ChatMessage, client_msg_id: str | None = None) -> None:
        if not self._messages.maxlen:
            return
        if len(self._messages) == self._messages.maxlen:  # the oldest leaves history, and its id with it
            key = self._keys[0]
            if key is not None and self._client_ids.get(key) is self._messages[0]:
                del self._client_ids[key]
        key = None if client_msg_id is None else (message.user, client_msg_id)
        self._messages.append(message)
        self._keys.append(key)
        if key is not None:
            self._client_ids[key] = message

    def find(self, user: str, client_msg_id: str) -> ChatMessage | None:
        """The message `user` pushed with `client_msg_id`, while it is still in history."""
        return self._client_ids.get((user, client_msg_id))

    def after(self, last_seen_id: str | None) -> list[ChatMessage]:
        """Everything newer than `last_seen_id`, or everything kept when it is None."""
        if last_seen_id is None:
            return list(self._messages)
        seen = parse_id(last_seen_id)
        return [m for m in self._messages if parse_id(m.id) > seen]
