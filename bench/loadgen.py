"""The load generator: thousands of real WebSocket clients in one asyncio process.

Each client is a bare RFC 6455 client on an `asyncio.Protocol` (no per-message task,
no JSON decoding): it speaks Phoenix Channels V2 to ChatLab, Engine.IO 4 / Socket.IO 5
to the python-socketio peer and plain JSON frames to the Django Channels peer. The
project's Phoenix client (shared/client.py) decodes every frame; at thousands of sockets
that would measure the generator instead of the server. A frame is looked at only as
far as needed: a subscriber searches it for the marker of the current traffic phase,
and reads the sequence number and the publisher's send time out of the body that
follows it.

A message body is `<run>:<seq>:<send time ns>`, so latency is receive time minus send
time on the same host clock, and every delivery is counted per subscriber: loss is
what was expected minus what arrived, never assumed to be zero.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import resource
import time
from array import array
from collections.abc import Callable, Iterable
from typing import cast

HANDSHAKE_LIMIT = 16 * 1024
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
PHOENIX_HEARTBEAT_S = 30.0  # as phoenix.js: the server closes a socket silent for 60 s


def raise_fd_limit() -> int:
    """Lift the soft limit on open files to the hard one; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (clients must mask, RFC 6455 section 5.3)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    key = random.getrandbits(32).to_bytes(4, "big")
    if not n:
        return head + key
    mask = (key * ((n >> 2) + 1))[:n]
    return head + key + (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")


def _resolve(future: asyncio.Future[None], error: BaseException | None = None) -> None:
    """Settle a future unless it already is (a cancelled wait cancels what it awaited)."""
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
        future.exception()  # marked as retrieved: nobody may be waiting any more


def _succeeded(future: asyncio.Future[None]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


class Traffic:
    """One traffic phase: its marker, and what each subscriber received of it."""

    def __init__(self, messages: int, *, record_latency: bool = True) -> None:
        self.run = base64.b32encode(os.urandom(5)).decode().lower()  # 8 characters
        self.marker = (self.run + ":").encode()
        self.messages = messages
        self.record_latency = record_latency
        self.latencies = array("q")  # nanoseconds
        self.received = 0  # unique (subscriber, seq) pairs
        self.duplicates = 0
        self.sent = 0
        self.acks_ok = 0
        self.acks_error = 0
        self.acked = bytearray(messages)  # seq -> 1 once the server acknowledged it

    def ack(self, seq: int, ok: bool) -> None:
        if ok:
            self.acks_ok += 1
            self.acked[seq] = 1
        else:
            self.acks_error += 1

    def body(self, seq: int) -> str:
        return f"{self.run}:{seq}:{time.time_ns()}"

    def seen(self, payload: bytes, start: int, now_ns: int, client: Client) -> None:
        """A subscriber got the frame `payload`; the marker starts at `start`."""
        j = start + len(self.marker)
        k = payload.index(b":", j)
        end = payload.index(b'"', k)
        seq = int(payload[j:k])
        if client.seen_in is not self:
            client.seen_in, client.seen = self, bytearray(self.messages)
        box = client.seen
        if box[seq]:
            self.duplicates += 1
            return
        box[seq] = 1
        self.received += 1
        if self.record_latency:
            self.latencies.append(now_ns - int(payload[k + 1 : end]))


class Generator:
    """Everything the clients share: counters, the current traffic phase, heartbeats."""

    def __init__(self) -> None:
        self.traffic: Traffic | None = None
        self.bytes_in = 0
        self.clients: set[Client] = set()
        self.dropped = 0  # connections the server closed while we wanted them open
        self.on_drop: Callable[[Client], None] | None = None  # W5: reconnect elsewhere
        self._heartbeat: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._heartbeat is None:
            self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_forever())

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        self.close_all(list(self.clients))

    def close_all(self, clients: Iterable[Client]) -> None:
        for client in clients:
            client.shutdown()

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for client in tuple(self.clients):
                client.keepalive(now)


class Client(asyncio.Protocol):
    """A bare WebSocket client; subclasses give the path and read the text frames."""

    path = "/"

    def __init__(self, gen: Generator, host: str, port: int, user: str, *, subscriber: bool) -> None:
        self.gen = gen
        self.host, self.port, self.user = host, port, user
        self.subscriber = subscriber
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.buf = bytearray()  # the HTTP answer, then only an incomplete frame
        self.need = 0  # bytes `buf` must hold before it is worth parsing again
        self.fragments: list[bytes] = []
        self.seen = bytearray()  # seq -> 1 once received, for the traffic phase `seen_in`
        self.seen_in: Traffic | None = None
        self.last_sent = time.monotonic()
        self.pending: dict[bytes, tuple[Traffic, int]] = {}  # a push's ref -> its message
        self.closing = False
        self.closed = False
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.joined: asyncio.Future[None] = loop.create_future()

    # Transport -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP connection's transport, which writes: uvloop's (bench/runner.py) has asyncio's
        # methods without subclassing it, so no isinstance check would pass.
        self.transport = cast("asyncio.Transport", transport)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.transport.write(request.encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gen.clients.discard(self)
        if not self.closing:
            self.gen.dropped += 1
            if self.gen.on_drop is not None and _succeeded(self.joined):
                self.gen.on_drop(self)
        error = ConnectionError(f"connection closed{': ' + str(exc) if exc else ''}")
        _resolve(self.opened, error)
        _resolve(self.joined, error)

    def data_received(self, data: bytes) -> None:
        gen = self.gen
        gen.bytes_in += len(data)
        buf = self.buf
        if buf or not self.upgraded:
            # Only a partial frame (or the HTTP answer) is ever kept between reads; wait
            # until the frame is complete before copying it out.
            buf += data
            if len(buf) < self.need:
                return
            if not self.upgraded and not self._upgrade():
                return
            data = bytes(buf)
            buf.clear()
        now = time.time_ns()
        pos, size = 0, len(data)
        while size - pos >= 2:
            b0, length = data[pos], data[pos + 1] & 0x7F
            if length < 126:
                head = 2
            elif length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
            else:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
            if size - pos < head + length:
                break
            payload = data[pos + head : pos + head + length]
            pos += head + length
            opcode = b0 & 0x0F
            if opcode == OP_TEXT or opcode == OP_BINARY or opcode == OP_CONT:
                if not b0 & 0x80:
                    self.fragments.append(payload)
                    continue
                if self.fragments:
                    payload = b"".join([*self.fragments, payload])
                    self.fragments.clear()
                self.on_text(payload, now)
            elif opcode == OP_PING:
                self._write(ws_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                self.closing_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                self._write(ws_frame(OP_CLOSE, payload[:2]))
                if self.transport is not None:
                    self.transport.close()
                return
        if pos < size:
            buf += data[pos:]
            # The bytes the partial frame needs at least: its header, and its payload once known.
            rest = size - pos
            length = data[pos + 1] & 0x7F if rest >= 2 else 0
            if rest < 2:
                self.need = 2
            elif length < 126:
                self.need = 2 + length
            elif length == 126:
                self.need = 4 + int.from_bytes(data[pos + 2 : pos + 4], "big") if rest >= 4 else 4
            else:
                self.need = 10 + int.from_bytes(data[pos + 2 : pos + 10], "big") if rest >= 10 else 10
        else:
            self.need = 0

    def _upgrade(self) -> bool:
        """Read the HTTP answer to the upgrade request out of `buf`; True once switched."""
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > HANDSHAKE_LIMIT:
                self._fail("handshake response too large")
            return False
        status = bytes(buf[: buf.find(b"\r\n")])
        if not status.startswith(b"HTTP/1.1 101"):
            self._fail(f"upgrade refused: {status.decode(errors='replace')}")
            return False
        del buf[: end + 4]
        self.upgraded = True
        self.gen.clients.add(self)
        self.on_upgrade()
        return True

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_text(self, text: str) -> None:
        self.last_sent = time.monotonic()
        self._write(ws_frame(OP_TEXT, text.encode()))

    def _fail(self, reason: str) -> None:
        _resolve(self.opened, ConnectionError(reason))
        _resolve(self.joined, ConnectionError(reason))
        if self.transport is not None:
            self.transport.close()

    def shutdown(self) -> None:
        """Close on purpose: not counted as dropped."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    # Protocol, per subclass ------------------------------------------------------------

    def on_upgrade(self) -> None:
        raise NotImplementedError

    def on_text(self, payload: bytes, now_ns: int) -> None:
        raise NotImplementedError

    def join(self) -> None:
        raise NotImplementedError

    def publish(self, traffic: Traffic, seq: int) -> None:
        raise NotImplementedError

    def keepalive(self, now: float) -> None:
        """Called every second; send whatever keeps an idle connection open."""

    def _subscriber_frame(self, payload: bytes, now_ns: int) -> None:
        traffic = self.gen.traffic
        if traffic is not None:
            i = payload.find(traffic.marker)
            if i >= 0:
                traffic.seen(payload, i, now_ns, self)

    def _sent(self, ref: str, traffic: Traffic, seq: int) -> None:
        self.pending[ref.encode()] = (traffic, seq)

    def _ack(self, ref: bytes, ok: bool) -> None:
        sent = self.pending.pop(ref, None)
        if sent is not None:
            sent[0].ack(sent[1], ok)

    def inherit(self, old: Client) -> None:
        """A reconnect: carry over what the client had received."""
        self.seen, self.seen_in = old.seen, old.seen_in


class PhoenixLoadClient(Client):
    """Phoenix Channels V2 on `rooms:lobby`, as phoenix.js speaks it. With `track_last_seen`
    (W5) it remembers the newest message id, and rejoins with it as `last_seen_id`, as the
    page does."""

    path = "/socket/websocket?vsn=2.0.0"
    TOPIC = "rooms:lobby"
    ID_AT = b'"new:msg",{"id":"'

    def __init__(self, gen: Generator, host: str, port: int, user: str, *, subscriber: bool) -> None:
        super().__init__(gen, host, port, user, subscriber=subscriber)
        self.ref = 1
        self.track_last_seen = False
        self.last_seen: tuple[int, int] | None = None

    def on_upgrade(self) -> None:
        _resolve(self.opened)

    def join(self) -> None:
        since = ""
        if self.last_seen is not None:
            since = f',"last_seen_id":"{self.last_seen[0]}-{self.last_seen[1]}"'
        self.send_text(f'["1","1","{self.TOPIC}","phx_join",{{"user":"{self.user}"{since}}}]')

    def publish(self, traffic: Traffic, seq: int) -> None:
        self.ref += 1
        self._sent(str(self.ref), traffic, seq)
        body = traffic.body(seq)
        self.send_text(f'["1","{self.ref}","{self.TOPIC}","new:msg",{{"user":"{self.user}","body":"{body}"}}]')

    def keepalive(self, now: float) -> None:
        if now - self.last_sent >= PHOENIX_HEARTBEAT_S:
            self.send_text('[null,"hb","phoenix","heartbeat",{}]')

    def inherit(self, old: Client) -> None:
        super().inherit(old)
        if isinstance(old, PhoenixLoadClient):
            self.track_last_seen, self.last_seen = old.track_last_seen, old.last_seen

    def on_text(self, payload: bytes, now_ns: int) -> None:
        if payload.startswith(b'["1","'):
            # A reply to one of ours: the join ("1") or a push.
            if payload.find(b'"phx_reply"', 0, 80) < 0:
                return
            ok = payload.find(b'"status":"ok"') >= 0
            if payload.startswith(b'["1","1",'):
                _resolve(self.joined, None if ok else ConnectionError(f"join refused: {payload[:200]!r}"))
            else:
                self._ack(payload[6 : payload.index(b'"', 6)], ok)
        # A broadcast, or what the join pushes (stored messages, presence) under its join_ref.
        elif self.subscriber and (payload.startswith(b"[null,null,") or payload.startswith(b'["1",null,')):
            self._subscriber_frame(payload, now_ns)
            if self.track_last_seen:
                self._note_id(payload)

    def _note_id(self, payload: bytes) -> None:
        i = payload.find(self.ID_AT)
        if i >= 0:
            i += len(self.ID_AT)
            ms, _, n = payload[i : payload.index(b'"', i)].partition(b"-")
            seen = (int(ms), int(n))
            if self.last_seen is None or seen > self.last_seen:
                self.last_seen = seen


class SocketIOClient(Client):
    """Engine.IO 4 over a WebSocket from the start, Socket.IO 5 on the default namespace."""

    path = "/socket.io/?EIO=4&transport=websocket"

    def __init__(self, gen: Generator, host: str, port: int, user: str, *, subscriber: bool) -> None:
        super().__init__(gen, host, port, user, subscriber=subscriber)
        self.ack_id = 0

    def on_upgrade(self) -> None:
        pass  # the server speaks first: 0{"sid":...}

    def join(self) -> None:
        self.send_text(f'420["join",{{"user":"{self.user}"}}]')

    def publish(self, traffic: Traffic, seq: int) -> None:
        self.ack_id += 1
        self._sent(str(self.ack_id), traffic, seq)
        body = traffic.body(seq)
        self.send_text(f'42{self.ack_id}["new:msg",{{"user":"{self.user}","body":"{body}"}}]')

    def on_text(self, payload: bytes, now_ns: int) -> None:
        if payload.startswith(b"42"):
            if self.subscriber:
                self._subscriber_frame(payload, now_ns)
        elif payload == b"2":
            self.send_text("3")  # Engine.IO ping -> pong
        elif payload.startswith(b"43"):
            bracket = payload.index(b"[")
            ok = payload[bracket:] == b'["ok"]'
            if payload[2:bracket] == b"0":
                _resolve(self.joined, None if ok else ConnectionError(f"join refused: {payload[:200]!r}"))
            else:
                self._ack(payload[2:bracket], ok)
        elif payload.startswith(b"0{"):
            self.send_text("40")  # connect to the default namespace
        elif payload.startswith(b"40"):
            _resolve(self.opened)
        elif payload.startswith(b"44"):
            self._fail(f"namespace connect refused: {payload[:200]!r}")
        elif payload == b"1":
            self.shutdown()


class ChannelsClient(Client):
    """The Django Channels peer's plain JSON frames (bench/peer_channels.py); its
    consumer writes them with `json.dumps`, so `": "` and `", "` separate the fields."""

    path = "/ws/chat/"
    ACK = b'{"ref": '

    def __init__(self, gen: Generator, host: str, port: int, user: str, *, subscriber: bool) -> None:
        super().__init__(gen, host, port, user, subscriber=subscriber)
        self.ref = 0  # 0 is the join

    def on_upgrade(self) -> None:
        _resolve(self.opened)

    def join(self) -> None:
        self.send_text(f'{{"event":"join","ref":0,"payload":{{"user":"{self.user}"}}}}')

    def publish(self, traffic: Traffic, seq: int) -> None:
        self.ref += 1
        self._sent(str(self.ref), traffic, seq)
        body = traffic.body(seq)
        self.send_text(f'{{"event":"new:msg","ref":{self.ref},"payload":{{"user":"{self.user}","body":"{body}"}}}}')

    def on_text(self, payload: bytes, now_ns: int) -> None:
        if payload.startswith(b'{"event": "new:msg"'):
            if self.subscriber:
                self._subscriber_frame(payload, now_ns)
        elif payload.startswith(self.ACK):
            ref = payload[len(self.ACK) : payload.index(b",")]
            ok = payload.endswith(b'"status": "ok"}')
            if ref == b"0":
                _resolve(self.joined, None if ok else ConnectionError(f"join refused: {payload[:200]!r}"))
            else:
                self._ack(ref, ok)


PROTOCOLS: dict[str, type[Client]] = {
    "phoenix": PhoenixLoadClient,
    "socketio": SocketIOClient,
    "channels": ChannelsClient,
}


class JoinTimeout(Exception):
    def __init__(self, joined: int, wanted: int, seconds: float) -> None:
        super().__init__(f"joined {joined} of {wanted} in {seconds:.0f} s")
        self.joined, self.wanted, self.seconds = joined, wanted, seconds


async def connect_and_join(
    gen: Generator,
    protocol: str,
    targets: list[tuple[str, int]],
    users: list[str],
    *,
    subscriber: bool,
    deadline: float,
    concurrency: int = 64,
) -> list[Client]:
    """Open one client per user, spread round-robin over `targets`, each joined to the lobby.

    At most `concurrency` clients are between connecting and having their join answered,
    so a listen backlog never overflows. Raises JoinTimeout past `deadline` (monotonic).
    """
    limit = asyncio.Semaphore(concurrency)
    clients: list[Client] = []
    started = time.monotonic()

    async def one(index: int, user: str) -> None:
        host, port = targets[index % len(targets)]
        await open_and_join(
            gen,
            protocol,
            host,
            port,
            user,
            subscriber=subscriber,
            limit=limit,
            deadline=deadline,
            opened=clients.append,
        )

    tasks = [asyncio.ensure_future(one(i, user)) for i, user in enumerate(users)]
    try:
        results = await asyncio.gather(*tasks, return_exceptions=True)
    except BaseException:
        for task in tasks:
            task.cancel()
        gen.close_all(clients)
        raise
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        joined = sum(1 for c in clients if _succeeded(c.joined))
        gen.close_all(clients)
        if all(isinstance(e, TimeoutError) for e in errors):
            raise JoinTimeout(joined, len(users), time.monotonic() - started)
        first = next(e for e in errors if not isinstance(e, TimeoutError))
        raise RuntimeError(f"{len(errors)} of {len(users)} clients failed to join, e.g.: {first!r}") from first
    return clients


async def open_and_join(
    gen: Generator,
    protocol: str,
    host: str,
    port: int,
    user: str,
    *,
    subscriber: bool,
    limit: asyncio.Semaphore,
    deadline: float,
    opened: Callable[[Client], None],
    previous: Client | None = None,
) -> Client:
    """One client, connected and joined; `opened` gets it as soon as it exists. A client
    that fails to join is closed: it must not go on receiving. `previous` is the client
    this one replaces after a reconnect."""
    client: Client | None = None
    async with limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        try:
            async with asyncio.timeout(remaining):
                _, client = await asyncio.get_running_loop().create_connection(
                    lambda: PROTOCOLS[protocol](gen, host, port, user, subscriber=subscriber), host, port
                )
                opened(client)
                if previous is not None:
                    client.inherit(previous)
                await client.opened
                client.join()
                await client.joined
                return client
        except BaseException:
            if client is not None:
                client.shutdown()
            raise


async def send_traffic(publishers: list[Client], traffic: Traffic, rate: float) -> None:
    """Send `traffic.messages` messages at `rate` a second in total, round-robin over the
    publishers, on a fixed schedule (open loop: never waiting for an answer)."""
    start = time.monotonic() + 0.02
    for seq in range(traffic.messages):
        delay = start + seq / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        publishers[seq % len(publishers)].publish(traffic, seq)
        traffic.sent += 1


async def wait_until(condition: Callable[[], bool], seconds: float, step: float = 0.02) -> bool:
    """Poll `condition` until it holds (True) or `seconds` pass (False)."""
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= end:
            return False
        await asyncio.sleep(step)
    return True


def percentile(sorted_values: array[int] | list[int], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return float(sorted_values[index])
