"""Cluster membership: who this node is connected to, and keeping that true.

The lesson of the original's stage 2, in Python:

- the registry in Redis plays epmd: node name -> HTTP address (`chat:registry`);
- `connect()` is `Node.connect/1`: a cookie handshake over HTTP (handshake.py), then
  both sides add each other and connect to each other's peers, as Erlang does;
- each node sends a heartbeat to its peers every second over its Redis channel; a peer
  silent for NODE_DOWN_AFTER seconds is dropped with its users' presences
  (net_ticktime);
- presence changes go to peers as control messages, so every node holds the whole
  room's presence, like Phoenix.Tracker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from shared import logs
from shared.broker import BrokerUnavailable
from shared.presence import Entry
from shared.settings import NODE_NAME_RE
from stage2_cluster import handshake
from stage2_cluster.broker import BadLine, node_channel

if TYPE_CHECKING:
    from shared.hub import Hub
    from shared.metrics import Metrics
    from stage2_cluster.broker import RedisBroker
    from stage2_cluster.settings import ClusterSettings

log = logs.get("cluster")

REGISTRY = "chat:registry"
HEARTBEAT_INTERVAL = 1.0
HTTP_TIMEOUT = 3.0
MAX_ANSWER = 256 * 1024  # bytes of a peer's answer; a handshake's is a few hundred
GOODBYE_WINDOW = 30.0  # seconds a signed goodbye stays acceptable
MAX_ADDRESS = 259  # a 253-character host name, ":" and a port
HOST_RE = re.compile(r"[A-Za-z0-9_\-.]{1,253}")
PORT_RE = re.compile(r"[0-9]{1,5}")
REGISTRY_KEEP = 10  # a registry entry outlives its node's alive key by this many NODE_DOWN_AFTER
# ...and a peer dropped for silence is still sent our messages as long (see targets()).
MAX_WARNED_ADDRESSES = 64  # bad addresses whose first refusal is logged at warning


class ConnectError(Exception):
    """Connecting failed; `status` is the HTTP status the node API answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def alive_key(node: str) -> str:
    return f"chat:alive:{node}"


def valid_address(address: object) -> bool:
    """`host:port` or `[ipv6]:port`, as `Cluster.address` writes it: nothing else (no scheme,
    path, query or user), since it becomes the `http://{address}/cluster/...` we POST to."""
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


@dataclass
class Peer:
    name: str
    address: str
    last_heard: float = field(default_factory=time.monotonic)


class Cluster:
    """A node's membership: who its peers are, how it joins and leaves them, and what the
    broker asks of it (`broker.Membership`)."""

    def __init__(self, settings: ClusterSettings, broker: RedisBroker, metrics: Metrics, hub: Hub) -> None:
        self.settings = settings
        self.name = settings.node_name
        self.cookie: str = settings.cluster_cookie or ""
        self.broker = broker
        self.metrics = metrics
        self.hub = hub
        self.peers: dict[str, Peer] = {}
        # Peers dropped for silence -> when: still sent our messages for LOST_KEEP seconds.
        self.lost: dict[str, float] = {}
        self.challenges = handshake.Challenges()
        self._goodbyes: dict[str, float] = {}  # nonce -> expiry, so a goodbye cannot be replayed
        self._connecting: dict[str, asyncio.Task[None]] = {}
        self._healthy_since: float | None = None
        self._warned_addresses: set[str] = set()
        self._gone_since: dict[str, float] = {}  # registry entries without an alive key: since when
        self.http = httpx.AsyncClient(timeout=HTTP_TIMEOUT)
        self._bad_lines = metrics.bad_peer_lines.labels(channel=node_channel(self.name))

    @property
    def address(self) -> str:
        """The HTTP address peers reach this node at."""
        host = self.settings.host
        if host in ("0.0.0.0", "::"):
            host = self.settings.own_ip or "127.0.0.1"
        return f"[{host}]:{self.settings.port}" if ":" in host else f"{host}:{self.settings.port}"

    def targets(self) -> list[str]:
        """Where our messages go: ourselves, our peers, and the peers we dropped for silence.

        A peer we stopped hearing may still hear us, or hear again before we connect again
        (a partition heals on its side first). Publishing to it until then keeps its
        sockets' view gap-free and in order; it costs a PUBLISH nobody may receive."""
        return [self.name, *self.peers, *self.lost]

    def nodes(self) -> list[str]:
        return [self.name, *sorted(self.peers)]

    # Lifetime ----------------------------------------------------------------------

    async def heartbeat_forever(self) -> None:
        """Announce ourselves in the registry, beat to peers, drop the silent ones."""
        while True:
            with contextlib.suppress(BrokerUnavailable):
                await self._register()
                await self._prune_registry()
                if self.peers:
                    await self.broker.send(list(self.peers), f"h {self.name}")
            self._drop_silent()
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    async def _register(self) -> None:
        ttl_ms = int(self.settings.node_down_after * 1000)
        try:
            async with self.broker.client.pipeline(transaction=False) as pipe:
                pipe.hset(REGISTRY, self.name, self.address)
                pipe.set(alive_key(self.name), self.address, px=ttl_ms)
                await pipe.execute()
        except Exception as error:  # redis-py raises several kinds; all mean "not now"
            raise BrokerUnavailable(str(error)) from None

    async def _prune_registry(self) -> None:
        """Forget the registry entries of nodes whose alive key has been gone for REGISTRY_KEEP
        times NODE_DOWN_AFTER, so that the hash does not grow with every node that ever ran.
        Every node does it; a node that comes back registers again within a heartbeat."""
        keep = REGISTRY_KEEP * self.settings.node_down_after
        client = self.broker.client
        try:
            names = [name for name in await client.hkeys(REGISTRY) if name != self.name]
            alive = await client.mget([alive_key(name) for name in names]) if names else []
            now = time.monotonic()
            dead = [name for name, value in zip(names, alive, strict=True) if value is None]
            gone = {name: self._gone_since.get(name, now) for name in dead}
            expired = [name for name, since in gone.items() if now - since > keep]
            if expired:
                await client.hdel(REGISTRY, *expired)
        except Exception as error:  # redis-py raises several kinds; all mean "not now"
            raise BrokerUnavailable(str(error)) from None
        self._gone_since = {name: since for name, since in gone.items() if name not in expired}
        for name in expired:
            logs.event(log, "registry entry expired", peer=name, gone_s=round(now - gone[name], 1))

    async def close(self) -> None:
        for task in self._connecting.values():
            task.cancel()
        # All goodbyes at once: a peer that is stopping too (a scale-down) may never answer,
        # and one by one each such peer would cost the whole HTTP timeout.
        await asyncio.gather(*(self.disconnect(name, reason="shutting down") for name in list(self.peers)))
        with contextlib.suppress(Exception):
            await self.broker.client.delete(alive_key(self.name))
        await self.http.aclose()

    def on_health(self, healthy: bool) -> None:
        # While our own Redis link is down we hear no one, which says nothing about them.
        self._healthy_since = time.monotonic() if healthy else None

    def on_bad_line(self) -> None:
        self._bad_lines.inc()

    def _drop_silent(self) -> None:
        now = time.monotonic()
        keep = REGISTRY_KEEP * self.settings.node_down_after
        self.lost = {name: since for name, since in self.lost.items() if now - since <= keep}
        if self._healthy_since is None or now - self._healthy_since < self.settings.node_down_after:
            return
        # Silence counts only up to the last time Redis answered us: a Redis that stopped
        # answering (paused, half-open) is noticed by the watchdog after a few seconds,
        # possibly later than NODE_DOWN_AFTER, and says nothing about the peers.
        heard = min(now, self.broker.heard_at)
        for peer in list(self.peers.values()):
            if heard - peer.last_heard > self.settings.node_down_after:
                self._remove(peer.name, "no heartbeat", silence_s=round(now - peer.last_heard, 2))
                self.lost[peer.name] = now

    # Connecting --------------------------------------------------------------------

    async def lookup(self, name: str) -> str | None:
        """epmd's job: a node name to the address it serves on."""
        try:
            return await self.broker.client.hget(REGISTRY, name)
        except Exception as error:
            raise ConnectError(503, f"registry unavailable: {error}") from None

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

    async def connect(
        self, name: str, address: str | None = None, *, source: str = "api", transitive: bool = True
    ) -> None:
        """Node.connect/1: handshake with `name`, then with its peers."""
        if name == self.name or name in self.peers:
            return
        if address is None:
            address, source = await self.lookup(name), "registry"
            if address is None:
                raise ConnectError(404, f"unknown node {name}: not in the registry and no address given")
        if not self.accept_address(address, source):
            raise ConnectError(400 if source == "api" else 502, f'bad address for {name} ({source}): not "host:port"')
        peer_list = await self._handshake(name, address)
        if transitive:
            # Wait for the peer's peers too, so the caller's view of the cluster is whole.
            await asyncio.gather(*self._connect_all(peer_list), return_exceptions=True)

    async def _handshake(self, name: str, address: str) -> list[dict[str, str]]:
        mine = handshake.new_challenge()
        try:
            hello = await self._post(
                address, "/cluster/hello", {"node": self.name, "address": self.address, "challenge": mine}
            )
            if hello.get("node") != name:
                raise ConnectError(502, f"{address} is {logs.clean(str(hello.get('node')), 120)!r}, not {name}")
            theirs, given = hello.get("challenge"), hello.get("proof")
            if not (
                isinstance(theirs, str)
                and handshake.CHALLENGE_RE.fullmatch(theirs)
                and handshake.valid(self.cookie, given, "hello", name, self.name, self.address, mine, theirs)
            ):
                raise ConnectError(502, f"{name} does not share our cluster cookie (or its challenge was swapped)")
            peers = self._peer_list()
            answer = handshake.proof(self.cookie, "confirm", self.name, name, theirs, handshake.digest(peers))
            confirm = await self._post(
                address, "/cluster/confirm", {"node": self.name, "challenge": theirs, "proof": answer, "peers": peers}
            )
        except httpx.HTTPError as error:
            raise ConnectError(502, f"{name} at {address} unreachable: {type(error).__name__}") from None
        their_peers = handshake.peer_list(confirm.get("peers"))
        if their_peers is None or not handshake.valid(
            self.cookie, confirm.get("proof"), "peers", name, self.name, mine, theirs, handshake.digest(their_peers)
        ):
            raise ConnectError(502, f"{name} answered a peer list without a valid proof")
        await self._add(name, address)
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
        if name == self.name or name in self.peers:
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

        task = self._connecting[name] = asyncio.create_task(attempt())
        return task

    def _peer_list(self) -> list[dict[str, str]]:
        return [{"node": peer.name, "address": peer.address} for peer in self.peers.values()]

    # The other side of the handshake (called by the /cluster routes) ----------------

    def on_hello(self, body: dict[str, Any]) -> dict[str, Any]:
        name, address, challenge = body.get("node"), body.get("address"), body.get("challenge")
        if not (isinstance(name, str) and NODE_NAME_RE.fullmatch(name)):
            raise ConnectError(400, "hello needs node: name@host")
        if not (isinstance(challenge, str) and handshake.CHALLENGE_RE.fullmatch(challenge)):
            raise ConnectError(400, "hello needs a challenge: 16 to 128 hex digits")
        if not self.accept_address(address, "hello"):
            raise ConnectError(400, 'hello needs address: "host:port"')
        mine = self.challenges.issue(name, address, challenge)
        return {
            "node": self.name,
            "challenge": mine,
            "proof": handshake.proof(self.cookie, "hello", self.name, name, address, challenge, mine),
        }

    async def on_confirm(self, body: dict[str, Any]) -> dict[str, Any]:
        name, challenge, given = body.get("node"), body.get("challenge"), body.get("proof")
        if not isinstance(name, str):
            raise ConnectError(400, "confirm needs node")
        if not handshake.well_formed(given):
            raise ConnectError(401, "confirm needs a proof: 64 hex digits")
        theirs = handshake.peer_list(body.get("peers"))
        if theirs is None:
            raise ConnectError(400, 'confirm needs peers: [{"node": .., "address": ..}]')
        redeemed = self.challenges.redeem(challenge, name)
        if redeemed is None or not handshake.valid(
            self.cookie, given, "confirm", name, self.name, str(challenge), handshake.digest(theirs)
        ):
            logs.event(log, "handshake refused", level=30, peer=name)
            raise ConnectError(403, "handshake failed: wrong cookie, unknown or reused challenge")
        address, their_challenge = redeemed
        peers = self._peer_list()
        await self._add(name, address)
        self._connect_all(theirs)  # in the background: the caller waits for our answer
        proof = handshake.proof(
            self.cookie, "peers", self.name, name, their_challenge, str(challenge), handshake.digest(peers)
        )
        return {"node": self.name, "peers": peers, "proof": proof}

    async def on_goodbye(self, body: dict[str, Any]) -> None:
        name, stamp, nonce = body.get("node"), body.get("ts"), body.get("nonce")
        if "proof" in body and not handshake.well_formed(body["proof"]):
            raise ConnectError(401, "goodbye needs a proof: 64 hex digits")
        now = time.time()
        self._goodbyes = {n: t for n, t in self._goodbyes.items() if t > now}
        if (
            not isinstance(name, str)
            or not isinstance(stamp, (int, float))
            or not isinstance(nonce, str)
            or abs(now - stamp) > GOODBYE_WINDOW
            or nonce in self._goodbyes
            or not handshake.valid(self.cookie, body.get("proof"), "goodbye", name, self.name, str(stamp), nonce)
        ):
            raise ConnectError(403, "goodbye refused: bad signature, stale or replayed")
        self._goodbyes[nonce] = now + 2 * GOODBYE_WINDOW
        self._remove(name, "peer disconnected us")

    # Membership --------------------------------------------------------------------

    async def _add(self, name: str, address: str) -> None:
        if name in self.peers:
            # It handshakes although we list it: it had dropped us, and may have stopped
            # sending us its messages (past LOST_KEEP) before it came back.
            self.peers[name].address = address
            await self._catch_up(name)
            return
        regained = self.lost.pop(name, None) is not None
        self.peers[name] = Peer(name, address)
        self.metrics.cluster_nodes.set(len(self.peers) + 1)
        logs.event(log, "node connected", peer=name, address=address, nodes=len(self.peers) + 1)
        await self._send_sync(name, want_reply=True)
        if regained:
            await self._catch_up(name)

    async def _catch_up(self, name: str) -> None:
        """Deliver to our sockets what the stream holds past the last message they got."""
        try:
            delivered = await self.broker.catch_up()
        except BrokerUnavailable as error:
            # Our subscription is down too: it catches up by itself when it is back.
            logs.event(log, "catch-up after reconnecting skipped", level=30, peer=name, reason=str(error))
            return
        logs.event(log, "caught up after reconnecting", peer=name, messages=delivered)

    def _remove(self, name: str, reason: str, **fields: object) -> None:
        self.lost.pop(name, None)  # removed on purpose: it stays out
        if self.peers.pop(name, None) is None:
            return
        self.metrics.cluster_nodes.set(len(self.peers) + 1)
        self.hub.drop_node(name)
        logs.event(log, "node disconnected", peer=name, reason=reason, nodes=len(self.peers) + 1, **fields)

    async def disconnect(self, name: str, reason: str = "disconnected by request") -> bool:
        """Node.disconnect/1: drop `name` here and tell it to drop us."""
        peer = self.peers.get(name)
        if peer is None:
            return False
        self._remove(name, reason)
        stamp, nonce = time.time(), secrets.token_hex(8)
        body = {
            "node": self.name,
            "ts": stamp,
            "nonce": nonce,
            "proof": handshake.proof(self.cookie, "goodbye", self.name, name, str(stamp), nonce),
        }
        try:
            await self._post(peer.address, "/cluster/goodbye", body)
        except (httpx.HTTPError, ConnectError) as error:
            # It will drop us anyway when our heartbeats stop reaching it.
            logs.event(log, "goodbye not delivered", level=30, peer=name, reason=str(error))
        return True

    # Control traffic on our Redis channel --------------------------------------------

    def on_control(self, kind: str, data: str) -> None:
        """A control line from our channel; BadLine (dropped and counted by the broker) if malformed."""
        if kind == "h":
            if not NODE_NAME_RE.fullmatch(data):
                raise BadLine("heartbeat without a node name")
            peer = self.peers.get(data)
            if peer is not None:
                peer.last_heard = time.monotonic()
            return
        if kind not in ("p", "s"):
            raise BadLine("unknown kind")
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise BadLine("not JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("node"), str):
            raise BadLine("not a JSON object with a node")
        sender = message["node"]
        if sender not in self.peers:
            return  # only connected nodes may change what we know
        if kind == "p":
            topic = message.get("topic")
            if not isinstance(topic, str):
                raise BadLine("presence without a topic")
            joins, leaves = _entries(sender, message.get("joins")), _entries(sender, message.get("leaves"))
            self.peers[sender].last_heard = time.monotonic()
            self.hub.apply_remote(topic, joins, leaves)
        else:
            topics = message.get("topics")
            if not isinstance(topics, dict):
                raise BadLine("sync without topics")
            entries = {topic: _entries(sender, items) for topic, items in topics.items()}
            self.peers[sender].last_heard = time.monotonic()
            for topic, items in entries.items():
                self.hub.sync_node(topic, sender, items)
            if message.get("want_reply") is True:
                asyncio.get_running_loop().create_task(self._send_sync(sender, want_reply=False))

    def replicate_presence(self, topic: str, joins: list[Entry], leaves: list[Entry]) -> None:
        if not self.peers:
            return
        line = (
            "p "
            + orjson.dumps(
                {"node": self.name, "topic": topic, "joins": _items(joins), "leaves": _items(leaves)}
            ).decode()
        )
        asyncio.get_running_loop().create_task(self._send_quietly(list(self.peers), line))

    async def _send_sync(self, name: str, *, want_reply: bool) -> None:
        topics = {topic: _items(room.of_node(self.name)) for topic, room in self.hub.presences.items()}
        line = "s " + orjson.dumps({"node": self.name, "topics": topics, "want_reply": want_reply}).decode()
        await self._send_quietly([name], line)

    async def _send_quietly(self, nodes: list[str], line: str) -> None:
        try:
            await self.broker.send(nodes, line)
        except BrokerUnavailable:
            logs.event(log, "cluster message not sent: redis unavailable", level=30)


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
