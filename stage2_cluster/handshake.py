"""Proving knowledge of the cluster cookie without sending it, like Erlang's handshake.

    A -> B  hello   {node: A, address, challenge: Na, boot: Ia}
    B -> A          {node: B, challenge: Nb, boot: Ib, proof: H("hello", B, A, A's address, Na, Nb, Ib)}
    A -> B  confirm {node: A, challenge: Nb, peers: PA, proof: H("confirm", A, B, Nb, Ia, #PA)}
    B -> A          {node: B, peers: PB, proof: H("peers", B, A, Na, Nb, #PB)}

H is HMAC-SHA256 keyed with the cookie; #P is the SHA-256 of a peer list in one canonical
JSON form. Each side checks the other's proof over a challenge it chose itself, so neither
learns the cookie and an old exchange cannot be replayed: B's challenges are single-use
and expire. B's first proof also covers Nb, so a challenge swapped on the way (for one B
issued in another exchange) is refused by A. The peer lists are signed as well, since each
side connects to every node the other lists. The words "hello"/"confirm"/"peers" keep a
node from being used as an oracle that answers one step with another step's proof.
Ia and Ib are the two nodes' boot ids (lines.py): each learns, signed, which incarnation
of the other it met, so that a node restarted under its name is told from the old one.

Both sides live here: `Handshake.connect` is `Node.connect/1` (hello, confirm, then the
peer's peers), `on_hello`/`on_confirm`/`on_goodbye` answer the `/cluster/...` routes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

import httpx
import orjson

from shared import logs
from shared.broker import BrokerUnavailable
from shared.settings import NODE_NAME_RE
from stage2_cluster.lines import BOOT_RE

if TYPE_CHECKING:
    from shared.metrics import Metrics
    from stage2_cluster.membership import Membership, Spawn
    from stage2_cluster.registry import Registry
    from stage2_cluster.settings import ClusterSettings

log = logs.get("cluster")

CHALLENGE_TTL = 10.0  # seconds a hello's challenge stays valid
MAX_OPEN_CHALLENGES = 1024  # anyone may say hello: past this, the oldest challenge is forgotten
MAX_PEERS = 1024  # entries in a peer list
CHALLENGE_RE = re.compile(r"[0-9a-f]{16,128}")
PROOF_RE = re.compile(r"[0-9a-f]{64}")  # a hex HMAC-SHA256
HTTP_TIMEOUT = 3.0
MAX_ANSWER = 256 * 1024  # bytes of a peer's answer; a handshake's is a few hundred
GOODBYE_WINDOW = 30.0  # seconds a signed goodbye stays acceptable
MAX_ADDRESS = 259  # a 253-character host name, ":" and a port
HOST_RE = re.compile(r"[A-Za-z0-9_\-.]{1,253}")
PORT_RE = re.compile(r"[0-9]{1,5}")
MAX_WARNED_ADDRESSES = 64  # bad addresses whose first refusal is logged at warning


class ConnectError(Exception):
    """Connecting failed; `status` is the HTTP status the node API answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def valid_address(address: object) -> bool:
    """`host:port` or `[ipv6]:port`, as `ClusterSettings.address` writes it: nothing else (no
    scheme, path, query or user), since it becomes the `http://{address}/cluster/...` we POST to."""
    if not isinstance(address, str) or len(address) > MAX_ADDRESS:
        return False
    host, sep, port = address.rpartition(":")
    if not sep or not PORT_RE.fullmatch(port) or not 1 <= int(port) <= 65535:
        return False
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            return False
    return HOST_RE.fullmatch(host) is not None


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


@dataclass(frozen=True, slots=True)
class Hello:
    """What a hello said, kept with the challenge that answered it."""

    node: str
    address: str
    challenge: str  # the node's own
    boot: str
    expires: float = field(default_factory=lambda: time.monotonic() + CHALLENGE_TTL)


class Challenges:
    """Challenges this node handed out and not yet seen confirmed."""

    def __init__(self) -> None:
        self._open: dict[str, Hello] = {}  # challenge -> the hello it answered

    def issue(self, hello: Hello) -> str:
        now = time.monotonic()
        self._open = {c: v for c, v in self._open.items() if v.expires > now}
        while len(self._open) >= MAX_OPEN_CHALLENGES:
            del self._open[next(iter(self._open))]
        challenge = new_challenge()
        self._open[challenge] = hello
        return challenge

    def redeem(self, challenge: object, node: str) -> Hello | None:
        """The hello `challenge` answered, if it was issued to `node` and is still open."""
        if not isinstance(challenge, str):
            return None
        hello = self._open.pop(challenge, None)
        if hello is None or hello.node != node or hello.expires < time.monotonic():
            return None
        return hello


class Handshake:
    """Both sides of connecting: `connect` (and `disconnect`) here, `on_*` for the routes."""

    def __init__(
        self, settings: ClusterSettings, metrics: Metrics, membership: Membership, registry: Registry, spawn: Spawn
    ) -> None:
        self.name = settings.node_name
        self.address = settings.address
        self.cookie: str = settings.cluster_cookie or ""
        self.metrics = metrics
        self.membership = membership
        self.registry = registry
        self.spawn = spawn
        self.challenges = Challenges()
        self.http = httpx.AsyncClient(timeout=HTTP_TIMEOUT)
        self._goodbyes: dict[str, float] = {}  # nonce -> expiry, so a goodbye cannot be replayed
        self._connecting: dict[str, asyncio.Task[None]] = {}
        self._warned_addresses: set[str] = set()

    @property
    def boot(self) -> str:
        return self.membership.boot

    def accept_address(self, address: object, source: str) -> bool:
        """Every peer address goes through here, wherever it comes from (`source`: hello, peers,
        registry, api, dns, gossip); a bad one is counted, logged and refused."""
        if valid_address(address):
            return True
        self.metrics.bad_peer_addresses.labels(source=source).inc()
        shown = logs.clean(str(address), 120)  # also the key of the warned-once set
        first = shown not in self._warned_addresses and len(self._warned_addresses) < MAX_WARNED_ADDRESSES
        self._warned_addresses.add(shown)
        level = logging.WARNING if first else logging.DEBUG  # a registry entry is seen every second
        logs.event(log, "bad peer address refused", level=level, source=source, address=shown)
        return False

    # Our side ------------------------------------------------------------------------

    async def connect(
        self, name: str, address: str | None = None, *, source: str = "api", transitive: bool = True
    ) -> None:
        """Node.connect/1: handshake with `name`, then with its peers."""
        if name == self.name or name in self.membership.peers:
            return
        if address is None:
            try:
                address, source = await self.registry.lookup(name), "registry"
            except BrokerUnavailable as error:
                raise ConnectError(503, f"registry unavailable: {error}") from None
            if address is None:
                raise ConnectError(404, f"unknown node {name}: not in the registry and no address given")
        if not self.accept_address(address, source):
            raise ConnectError(400 if source == "api" else 502, f'bad address for {name} ({source}): not "host:port"')
        peer_list = await self._greet(name, address)
        if transitive:
            # Wait for the peer's peers too, so the caller's view of the cluster is whole.
            await asyncio.gather(*self._connect_all(peer_list), return_exceptions=True)

    async def _greet(self, name: str, address: str) -> list[dict[str, str]]:
        mine = new_challenge()
        try:
            hello = await self._post(
                address,
                "/cluster/hello",
                {"node": self.name, "address": self.address, "challenge": mine, "boot": self.boot},
            )
            if hello.get("node") != name:
                raise ConnectError(502, f"{address} is {logs.clean(str(hello.get('node')), 120)!r}, not {name}")
            theirs, boot, given = hello.get("challenge"), hello.get("boot"), hello.get("proof")
            if not (
                isinstance(theirs, str)
                and CHALLENGE_RE.fullmatch(theirs)
                and isinstance(boot, str)
                and BOOT_RE.fullmatch(boot)
                and valid(self.cookie, given, "hello", name, self.name, self.address, mine, theirs, boot)
            ):
                raise ConnectError(502, f"{name} does not share our cluster cookie (or its challenge was swapped)")
            peers = self.membership.peer_list()
            answer = proof(self.cookie, "confirm", self.name, name, theirs, self.boot, digest(peers))
            confirm = await self._post(
                address, "/cluster/confirm", {"node": self.name, "challenge": theirs, "proof": answer, "peers": peers}
            )
        except httpx.HTTPError as error:
            raise ConnectError(502, f"{name} at {address} unreachable: {type(error).__name__}") from None
        their_peers = peer_list(confirm.get("peers"))
        if their_peers is None or not valid(
            self.cookie, confirm.get("proof"), "peers", name, self.name, mine, theirs, digest(their_peers)
        ):
            raise ConnectError(502, f"{name} answered a peer list without a valid proof")
        await self.membership.add(name, address, boot)
        return their_peers

    async def _post(self, address: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to a peer and read its JSON answer. Whatever answers at an address (DNS, gossip
        and the API can name any) may not be a chat node: a page, a lie, an answer that never
        ends or never comes are all refused, within HTTP_TIMEOUT and MAX_ANSWER bytes."""
        try:
            async with asyncio.timeout(HTTP_TIMEOUT):
                async with self.http.stream("POST", f"http://{address}{path}", json=body) as response:
                    content = bytearray()
                    async for chunk in response.aiter_bytes():
                        content += chunk
                        if len(content) > MAX_ANSWER:
                            raise ConnectError(502, f"{address} answered over {MAX_ANSWER} bytes: not a chat node")
        except TimeoutError:
            raise ConnectError(502, f"{address} did not answer within {HTTP_TIMEOUT:g}s") from None
        try:
            data = orjson.loads(content) if content else None
        except orjson.JSONDecodeError:
            data = None
        if response.status_code != 200:
            reason = data.get("error") if isinstance(data, dict) else None
            raise ConnectError(502, f"handshake refused by {address}: {reason or response.reason_phrase}")
        if not isinstance(data, dict):
            raise ConnectError(502, f"{address} is not a chat node: its answer is not a JSON object")
        return data

    def _connect_all(self, peers: list[dict[str, str]]) -> list[asyncio.Task[None]]:
        tasks = []
        for item in peers:
            if NODE_NAME_RE.fullmatch(item["node"]):
                task = self.connect_soon(item["node"], item["address"], source="peers")
                if task is not None:
                    tasks.append(task)
        return tasks

    def connect_soon(self, name: str, address: str, *, source: str, quiet: bool = False) -> asyncio.Task[None] | None:
        """Connect in the background (discovery, transitive connects); failures are logged,
        at debug when `quiet` (a retry whose failure was already logged)."""
        if name == self.name or name in self.membership.peers:
            return None
        if name in self._connecting:
            return self._connecting[name]
        if not self.accept_address(address, source):
            return None

        async def attempt() -> None:
            try:
                await self.connect(name, address, source=source)
            except ConnectError as error:
                level = logging.DEBUG if quiet else logging.WARNING
                logs.event(log, "connect failed", level=level, peer=name, reason=str(error))
            finally:
                self._connecting.pop(name, None)

        task = self._connecting[name] = self.spawn(attempt())
        return task

    async def disconnect(self, name: str, reason: str = "disconnected by request") -> bool:
        """Node.disconnect/1: drop `name` here and tell it to drop us."""
        peer = self.membership.peers.get(name)
        if peer is None:
            return False
        self.membership.remove(name, reason)
        stamp, nonce = time.time(), secrets.token_hex(8)
        body = {
            "node": self.name,
            "ts": stamp,
            "nonce": nonce,
            "proof": proof(self.cookie, "goodbye", self.name, name, str(stamp), nonce),
        }
        try:
            await self._post(peer.address, "/cluster/goodbye", body)
        except (httpx.HTTPError, ConnectError) as error:
            # It will drop us anyway when our heartbeats stop reaching it.
            logs.event(log, "goodbye not delivered", level=logging.WARNING, peer=name, reason=str(error))
        return True

    async def close(self) -> None:
        for task in self._connecting.values():
            task.cancel()
        # All goodbyes at once: a peer that is stopping too (a scale-down) may never answer,
        # and one by one each such peer would cost the whole HTTP timeout.
        peers = list(self.membership.peers)
        await asyncio.gather(*(self.disconnect(name, reason="shutting down") for name in peers))
        await self.http.aclose()

    # Their side (the /cluster routes) --------------------------------------------------

    def on_hello(self, body: dict[str, Any]) -> dict[str, Any]:
        name, address, challenge, boot = body.get("node"), body.get("address"), body.get("challenge"), body.get("boot")
        if not (isinstance(name, str) and NODE_NAME_RE.fullmatch(name)):
            raise ConnectError(400, "hello needs node: name@host")
        if not (isinstance(challenge, str) and CHALLENGE_RE.fullmatch(challenge)):
            raise ConnectError(400, "hello needs a challenge: 16 to 128 hex digits")
        if not (isinstance(boot, str) and BOOT_RE.fullmatch(boot)):
            raise ConnectError(400, "hello needs a boot id: 16 hex digits")
        if not self.accept_address(address, "hello"):
            raise ConnectError(400, 'hello needs address: "host:port"')
        assert isinstance(address, str)  # accept_address said so
        mine = self.challenges.issue(Hello(name, address, challenge, boot))
        return {
            "node": self.name,
            "challenge": mine,
            "boot": self.boot,
            "proof": proof(self.cookie, "hello", self.name, name, address, challenge, mine, self.boot),
        }

    async def on_confirm(self, body: dict[str, Any]) -> dict[str, Any]:
        name, challenge, given = body.get("node"), body.get("challenge"), body.get("proof")
        if not isinstance(name, str):
            raise ConnectError(400, "confirm needs node")
        if not well_formed(given):
            raise ConnectError(401, "confirm needs a proof: 64 hex digits")
        theirs = peer_list(body.get("peers"))
        if theirs is None:
            raise ConnectError(400, 'confirm needs peers: [{"node": .., "address": ..}]')
        hello = self.challenges.redeem(challenge, name)
        if hello is None or not valid(
            self.cookie, given, "confirm", name, self.name, str(challenge), hello.boot, digest(theirs)
        ):
            logs.event(log, "handshake refused", level=logging.WARNING, peer=name)
            raise ConnectError(403, "handshake failed: wrong cookie, unknown or reused challenge")
        peers = self.membership.peer_list()
        await self.membership.add(name, hello.address, hello.boot)
        self._connect_all(theirs)  # in the background: the caller waits for our answer
        signed = proof(self.cookie, "peers", self.name, name, hello.challenge, str(challenge), digest(peers))
        return {"node": self.name, "peers": peers, "proof": signed}

    async def on_goodbye(self, body: dict[str, Any]) -> None:
        name, stamp, nonce = body.get("node"), body.get("ts"), body.get("nonce")
        if "proof" in body and not well_formed(body["proof"]):
            raise ConnectError(401, "goodbye needs a proof: 64 hex digits")
        now = time.time()
        self._goodbyes = {n: t for n, t in self._goodbyes.items() if t > now}
        if (
            not isinstance(name, str)
            or not isinstance(stamp, (int, float))
            or not isinstance(nonce, str)
            or abs(now - stamp) > GOODBYE_WINDOW
            or nonce in self._goodbyes
            or not valid(self.cookie, body.get("proof"), "goodbye", name, self.name, str(stamp), nonce)
        ):
            raise ConnectError(403, "goodbye refused: bad signature, stale or replayed")
        self._goodbyes[nonce] = now + 2 * GOODBYE_WINDOW
        self.membership.remove(name, "peer disconnected us")
