"""DISCOVERY=gossip: find peers by UDP multicast, like libcluster's Cluster.Strategy.Gossip.

libcluster's Gossip strategy has every node join the multicast group 233.252.1.32 on
port 45892 and send a small heartbeat naming itself at random intervals of up to five
seconds. A node that hears a heartbeat from a node it is not connected to calls
`Node.connect/1`, and the Erlang cookie then decides: a heartbeat only ever makes a
node *try*. With a `secret`, libcluster encrypts the packets (AES-256-CBC keyed by the
secret's SHA-256), so several clusters can share a network without meeting.

Here the heartbeat is `{"node": name, "address": "host:port"}` and hearing one calls
`Handshake.connect_soon`, whose cookie handshake plays the Erlang cookie's part. With
GOSSIP_SECRET set the packets are AES-GCM, which also authenticates them: a packet
that does not decrypt, or does not parse as a valid heartbeat, is dropped and counted.

The TTL is 1 because discovery by multicast is meant for one network segment: routers
drop a packet whose TTL runs out, so heartbeats never leave the local network, and a
node only learns of neighbours that can normally reach its HTTP address directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import random
import socket
from typing import TYPE_CHECKING, Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared import logs
from shared.settings import NODE_NAME_RE
from stage2_cluster.handshake import valid_address
from stage2_cluster.settings import ClusterSettings

if TYPE_CHECKING:
    from stage2_cluster.handshake import Handshake

log = logs.get("gossip")

GROUP = "233.252.1.32"
PORT = 45892
TTL = 1
MAX_PACKET = 1024  # a heartbeat is ~100 bytes; anything much larger is not ours
INTERVAL = (1.0, 5.0)  # seconds between heartbeats, at random, as libcluster's stutter
MAX_PENDING = 16  # connect attempts in flight from gossip: a flood of forged names stays cheap
MAX_WARNED = 64  # senders whose first dropped packet is logged at warning
NONCE_BYTES = 12
AAD = b"chatlab gossip v1"  # binds a ciphertext to this protocol, not just to the key


class Codec:
    """Heartbeats to bytes and back: JSON, or AES-GCM(JSON) when there is a secret."""

    def __init__(self, secret: str | None) -> None:
        # SHA-256 as libcluster does, with a prefix so this key is used for nothing else.
        self.aead = AESGCM(hashlib.sha256(AAD + b"\0" + secret.encode()).digest()) if secret else None

    def encode(self, name: str, address: str) -> bytes:
        plain = orjson.dumps({"node": name, "address": address})
        if self.aead is None:
            return plain
        nonce = os.urandom(NONCE_BYTES)  # random per packet: GCM must never reuse one
        return nonce + self.aead.encrypt(nonce, plain, AAD)

    def decode(self, packet: bytes) -> tuple[str, str] | None:
        """(name, address) of a valid heartbeat, or None for anything else."""
        if len(packet) > MAX_PACKET:
            return None
        if self.aead is not None:
            try:
                packet = self.aead.decrypt(packet[:NONCE_BYTES], packet[NONCE_BYTES:], AAD)
            except (InvalidTag, ValueError):
                return None
        try:
            message = orjson.loads(packet)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(message, dict):
            return None
        name, address = message.get("node"), message.get("address")
        if not (isinstance(name, str) and NODE_NAME_RE.fullmatch(name)):
            return None
        if not (isinstance(address, str) and valid_address(address)):
            return None
        return name, address


def interface_address(settings: ClusterSettings) -> str:
    """The IPv4 address whose interface joins the group: HOST, else POD_IP, else any."""
    for candidate in (settings.host, settings.own_ip):
        with contextlib.suppress(ValueError):
            ip = ipaddress.ip_address(candidate or "")
            if ip.version == 4 and not ip.is_unspecified:
                return str(ip)
    return "0.0.0.0"  # the kernel picks the interface by its routes


def open_socket(interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        # Several nodes on one host all listen on the same port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Bound to the group address, the socket gets this group's datagrams only, not
        # every multicast that some other program on the host joined on this port.
        sock.bind((GROUP, PORT))
        iface = socket.inet_aton(interface)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(GROUP) + iface)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, iface)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, TTL)
        # Loop on: nodes on the same host hear each other (and we hear, and skip, ourselves).
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Listener(asyncio.DatagramProtocol):
    def __init__(self, handshake: Handshake, codec: Codec) -> None:
        self.handshake = handshake
        self.codec = codec
        self.dropped = 0
        self.warned: set[str] = set()
        self.pending: dict[str, asyncio.Task[None]] = {}
        # Nodes whose last attempt did not connect (another cookie, say): a heartbeat every
        # few seconds retries them, as libcluster does, but only the first failure is logged
        # at warning, so the log says it once instead of every round.
        self.refused: set[str] = set()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        heartbeat = self.codec.decode(data)
        if heartbeat is None:
            self.dropped += 1
            # A sender's first at warning, so that a node with another GOSSIP_SECRET shows up
            # in the logs at all; the rest at debug, so that a noisy network cannot flood them.
            sender = str(addr[0])
            level = logging.DEBUG
            if sender not in self.warned and len(self.warned) < MAX_WARNED:
                self.warned.add(sender)
                level = logging.WARNING
            log.log(level, "gossip packet dropped", sender=sender, size=len(data), dropped=self.dropped)
            return
        name, address = heartbeat
        handshake = self.handshake
        if name == handshake.name or name in handshake.membership.peers or name in self.pending:
            return
        if len(self.pending) >= MAX_PENDING:
            return  # the next heartbeat from a real node comes within seconds
        retry = name in self.refused
        task = handshake.connect_soon(name, address, source="gossip", quiet=retry)
        if task is not None:
            self.pending[name] = task
            task.add_done_callback(lambda _task: self.settled(name))
            if not retry:
                log.info("gossip discovered node", peer=name, address=address, sender=addr[0])

    def settled(self, name: str) -> None:
        """An attempt ended: remember whether it connected."""
        self.pending.pop(name, None)
        if name in self.handshake.membership.peers:
            self.refused.discard(name)
        elif len(self.refused) < MAX_WARNED:  # bounded, as the senders warned of above
            self.refused.add(name)

    def error_received(self, exc: Exception) -> None:
        log.warning("gossip send failed", error=str(exc))


async def gossip(settings: ClusterSettings, handshake: Handshake) -> None:
    """Heartbeat to the group and connect to every node heard, for the node's lifetime."""
    codec = Codec(settings.gossip_secret)
    interface = interface_address(settings)
    try:
        sock = open_socket(interface)
    except OSError as error:
        log.error("gossip unavailable", interface=interface, error=str(error))
        return
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: Listener(handshake, codec), sock=sock)
    log.info("gossip started", group=f"{GROUP}:{PORT}", interface=interface, encrypted=codec.aead is not None)
    try:
        while True:
            # A random pause first, so nodes started together do not all announce at once.
            # (The HTTP socket already listens: shared/server.py binds it before startup.)
            await asyncio.sleep(random.uniform(*INTERVAL))
            transport.sendto(codec.encode(handshake.name, handshake.address), (GROUP, PORT))
    finally:
        transport.close()
