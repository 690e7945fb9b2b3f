"""Proving knowledge of the cluster cookie without sending it, like Erlang's handshake.

    A -> B  hello   {node: A, address, challenge: Na}
    B -> A          {node: B, challenge: Nb, proof: H("hello", B, A, A's address, Na)}
    A -> B  confirm {node: A, challenge: Nb, proof: H("confirm", A, B, Nb)}

H is HMAC-SHA256 keyed with the cookie. Each side checks the other's proof over a
challenge it chose itself, so neither learns the cookie and an old exchange cannot be
replayed: B's challenges are single-use and expire. The words "hello"/"confirm" keep a
node from being used as an oracle that answers one step with the other's proof.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

CHALLENGE_TTL = 10.0  # seconds a hello's challenge stays valid
MAX_OPEN_CHALLENGES = 1024  # anyone may say hello: past this, the oldest challenge is forgotten


def new_challenge() -> str:
    return secrets.token_hex(16)


def proof(cookie: str, *parts: str) -> str:
    return hmac.new(cookie.encode(), "|".join(parts).encode(), hashlib.sha256).hexdigest()


def valid(cookie: str, given: object, *parts: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given, proof(cookie, *parts))


class Challenges:
    """Challenges this node handed out and not yet seen confirmed."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[str, str, float]] = {}  # challenge -> (node, address, expiry)

    def issue(self, node: str, address: str) -> str:
        now = time.monotonic()
        self._open = {c: v for c, v in self._open.items() if v[2] > now}
        while len(self._open) >= MAX_OPEN_CHALLENGES:
            del self._open[next(iter(self._open))]
        challenge = new_challenge()
        self._open[challenge] = (node, address, now + CHALLENGE_TTL)
        return challenge

    def redeem(self, challenge: object, node: str) -> str | None:
        """The address given in the hello, if `challenge` was issued to `node` and is still open."""
        if not isinstance(challenge, str):
            return None
        entry = self._open.pop(challenge, None)
        if entry is None or entry[0] != node or entry[2] < time.monotonic():
            return None
        return entry[1]
