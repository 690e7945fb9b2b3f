"""Proving knowledge of the cluster cookie without sending it, like Erlang's handshake.

    A -> B  hello   {node: A, address, challenge: Na}
    B -> A          {node: B, challenge: Nb, proof: H("hello", B, A, A's address, Na, Nb)}
    A -> B  confirm {node: A, challenge: Nb, peers: PA, proof: H("confirm", A, B, Nb, #PA)}
    B -> A          {node: B, peers: PB, proof: H("peers", B, A, Na, Nb, #PB)}

H is HMAC-SHA256 keyed with the cookie; #P is the SHA-256 of a peer list in one canonical
JSON form. Each side checks the other's proof over a challenge it chose itself, so neither
learns the cookie and an old exchange cannot be replayed: B's challenges are single-use
and expire. B's first proof also covers Nb, so a challenge swapped on the way (for one B
issued in another exchange) is refused by A. The peer lists are signed as well, since each
side connects to every node the other lists. The words "hello"/"confirm"/"peers" keep a
node from being used as an oracle that answers one step with another step's proof.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import TypeGuard

import orjson

CHALLENGE_TTL = 10.0  # seconds a hello's challenge stays valid
MAX_OPEN_CHALLENGES = 1024  # anyone may say hello: past this, the oldest challenge is forgotten
MAX_PEERS = 1024  # entries in a peer list
CHALLENGE_RE = re.compile(r"[0-9a-f]{16,128}")
PROOF_RE = re.compile(r"[0-9a-f]{64}")  # a hex HMAC-SHA256


def new_challenge() -> str:
    return secrets.token_hex(16)


def proof(cookie: str, *parts: str) -> str:
    return hmac.new(cookie.encode(), "|".join(parts).encode(), hashlib.sha256).hexdigest()


def well_formed(given: object) -> TypeGuard[str]:
    """Whether `given` looks like a proof at all (anything else is answered 401, not compared)."""
    return isinstance(given, str) and PROOF_RE.fullmatch(given) is not None


def valid(cookie: str, given: object, *parts: str) -> bool:
    # compare_digest takes str of ASCII only: anything else was refused by well_formed.
    return well_formed(given) and hmac.compare_digest(given, proof(cookie, *parts))


def peer_list(value: object) -> list[dict[str, str]] | None:
    """A peer list as exchanged (`[{"node": .., "address": ..}, ...]`), or None if it is not one."""
    if not isinstance(value, list) or len(value) > MAX_PEERS:
        return None
    for item in value:
        if not (
            isinstance(item, dict)
            and item.keys() == {"node", "address"}
            and isinstance(item["node"], str)
            and isinstance(item["address"], str)
        ):
            return None
    return value


def digest(peers: list[dict[str, str]]) -> str:
    return hashlib.sha256(orjson.dumps(peers, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Challenges:
    """Challenges this node handed out and not yet seen confirmed."""

    def __init__(self) -> None:
        # challenge -> (node, address, the node's own challenge, expiry)
        self._open: dict[str, tuple[str, str, str, float]] = {}

    def issue(self, node: str, address: str, theirs: str) -> str:
        now = time.monotonic()
        self._open = {c: v for c, v in self._open.items() if v[3] > now}
        while len(self._open) >= MAX_OPEN_CHALLENGES:
            del self._open[next(iter(self._open))]
        challenge = new_challenge()
        self._open[challenge] = (node, address, theirs, now + CHALLENGE_TTL)
        return challenge

    def redeem(self, challenge: object, node: str) -> tuple[str, str] | None:
        """(address, their challenge) given in the hello, if `challenge` was issued to `node` and is still open."""
        if not isinstance(challenge, str):
            return None
        entry = self._open.pop(challenge, None)
        if entry is None or entry[0] != node or entry[3] < time.monotonic():
            return None
        return entry[1], entry[2]
