"""Per-room history with ids that sort in publish order.

Ids have the shape of Redis Stream ids, `<milliseconds>-<sequence>`, so the in-memory
core and the Redis broker of stage 2 hand out the same kind of id and a client's
`last_seen_id` means the same thing on both.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

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


@dataclass(frozen=True, slots=True)
class Replay:
    """What a join replays: the messages after its `last_seen_id`, oldest first, with each
    one's `new:msg` payload as JSON (encoded once, when the room's history got it), and
    whether history had already let go of messages the joiner has not seen."""

    messages: list[ChatMessage]
    payloads: list[bytes]
    truncated: bool = False

    def __iter__(self) -> Iterator[ChatMessage]:
        """A replay reads as its messages (`for m in await broker.history(...)`, in the console too)."""
        return iter(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    @property
    def size(self) -> int:
        """The payloads' bytes: what the replay costs on the wire, but for each frame's head."""
        return sum(map(len, self.payloads))


class RoomHistory:
    """The last `size` messages of one room, oldest first, each with its payload encoded,
    and which of them each user's `client_msg_id` names.

    The memory broker keeps the room's history in one; the Redis broker keeps the last copy
    it read of each room's stream in one, so a join is not read from Redis and encoded again
    while the stream is unchanged."""

    def __init__(self, size: int) -> None:
        self._messages: deque[ChatMessage] = deque(maxlen=size)
        self._payloads: deque[bytes] = deque(maxlen=size)
        self._ids: deque[tuple[int, int]] = deque(maxlen=size)
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
        self._payloads.append(orjson.dumps(message.payload()))
        self._ids.append(parse_id(message.id))
        self._keys.append(key)
        if key is not None:
            self._client_ids[key] = message

    def copy(self) -> RoomHistory:
        """Another history holding the same messages, payloads shared, not encoded again."""
        other = RoomHistory(self._messages.maxlen or 0)
        other._messages, other._payloads = self._messages.copy(), self._payloads.copy()
        other._ids, other._keys = self._ids.copy(), self._keys.copy()
        other._client_ids = dict(self._client_ids)
        return other

    def span(self) -> str:
        """`<count> <oldest id> <newest id>`, `0` when empty: what tells two states of an
        append-only history apart (stage2_cluster/broker.py compares it with the stream's)."""
        if not self._messages:
            return "0"
        return f"{len(self._messages)} {self._messages[0].id} {self._messages[-1].id}"

    def find(self, user: str, client_msg_id: str) -> ChatMessage | None:
        """The message `user` pushed with `client_msg_id`, while it is still in history."""
        return self._client_ids.get((user, client_msg_id))

    def after(self, last_seen_id: str | None) -> Replay:
        """Everything newer than `last_seen_id`, or everything kept when it is None.

        Truncated when history is full and `last_seen_id` is older than all of it: messages
        between the two have left history. (A client whose last seen message was the very
        last to leave is told so too, though it missed nothing; ids alone cannot tell.)"""
        start = 0
        if last_seen_id is not None:
            seen = parse_id(last_seen_id)
            start = len(self._ids)
            while start and self._ids[start - 1] > seen:  # from the newest: a catch-up is short
                start -= 1
        truncated = last_seen_id is not None and start == 0 and 0 < len(self._ids) == self._ids.maxlen
        return Replay(
            list(itertools.islice(self._messages, start, None)),
            list(itertools.islice(self._payloads, start, None)),
            truncated,
        )
