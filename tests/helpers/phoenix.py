"""The Phoenix client the tests use is the project's own, `shared/client.py` (imported from
here, so that a test names one module for it); beside it, what only tests need: a steady
publisher's `Push`, message ids in sortable form, and bodies no other run sends.

    async with PhoenixClient(node.ws_url) as alice:
        await alice.join(LOBBY, {"user": "alice"})
        reply = await alice.push(LOBBY, "new:msg", {"user": "alice", "body": unique()})
        assert reply.ok
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.client import LOBBY, Frame, JoinError, PhoenixClient, Reply

__all__ = ["LOBBY", "Frame", "JoinError", "PhoenixClient", "Push", "Reply", "parse_ids", "unique"]


@dataclass
class Push:
    """One push of a steady publisher: when it went, when and how it was answered."""

    body: str
    sent: float
    replied: float | None = None
    status: str = "no reply"
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def unavailable(self) -> bool:
        return self.status == "error" and self.response == {"reason": "unavailable"}


def parse_ids(ids: Sequence[str]) -> list[tuple[int, int]]:
    """Message ids (`<ms>-<seq>`, as Redis Streams) in their sortable form."""
    return [(int(ms), int(seq)) for ms, _, seq in (i.partition("-") for i in ids)]


def unique(prefix: str = "m") -> str:
    """A message body no other test run sends."""
    return f"{prefix}-{secrets.token_hex(4)}"
