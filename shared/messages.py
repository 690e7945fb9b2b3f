"""Chat messages: what a client may send, and what the room stores and broadcasts."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MAX_USER_CHARS = 32
MAX_BODY_CHARS = 2000
MAX_CLIENT_MSG_ID_CHARS = 64
ANONYMOUS = "anonymous"
SYSTEM = "SYSTEM"  # the server's own notices (the demo ping): no client may speak as it


class InvalidMessage(ValueError):
    """str() is the `reason` sent back to the client."""


@dataclass(frozen=True, slots=True)
class Draft:
    """A validated `new:msg` from a client, before the broker gives it an id."""

    user: str
    body: str
    # The client's own id for this push: a retry with the same one, by the same user, while
    # the first is still in history, is stored once (an idempotent push).
    client_msg_id: str | None = None


@dataclass(frozen=True, slots=True)
class ChatMessage:
    id: str
    user: str
    body: str
    node: str
    ts: int  # milliseconds since the epoch, taken when the broker stored it

    def payload(self) -> dict[str, Any]:
        return asdict(self)


def validate_user(value: Any) -> str:
    """A user name from a join or a message: a string of at most 32 characters, not SYSTEM."""
    if not isinstance(value, str):
        raise InvalidMessage("user must be a string")
    user = value.strip()
    if len(user) > MAX_USER_CHARS:
        raise InvalidMessage(f"user must be at most {MAX_USER_CHARS} characters")
    if user.casefold() == SYSTEM.casefold():
        raise InvalidMessage(f"user {SYSTEM} is reserved for the server")
    return user or ANONYMOUS


def validate_draft(payload: dict[str, Any]) -> Draft:
    if "user" not in payload:
        raise InvalidMessage("user is required")
    user = validate_user(payload["user"])
    body = payload.get("body")
    if not isinstance(body, str):
        raise InvalidMessage("body must be a string")
    body = body.strip()
    if not body:
        raise InvalidMessage("body must not be empty")
    if len(body) > MAX_BODY_CHARS:
        raise InvalidMessage(f"body must be at most {MAX_BODY_CHARS} characters")
    client_msg_id = payload.get("client_msg_id")
    if client_msg_id is not None and not (
        isinstance(client_msg_id, str) and 1 <= len(client_msg_id) <= MAX_CLIENT_MSG_ID_CHARS
    ):
        raise InvalidMessage(f"client_msg_id must be a string of 1 to {MAX_CLIENT_MSG_ID_CHARS} characters")
    return Draft(user, body, client_msg_id)
