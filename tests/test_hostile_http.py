"""Hostile input over HTTP and WebSocket, against real node processes.

- Every route, sent garbage, bad JSON, wrong JSON types, deep nesting, invalid UTF-8 and
  bodies over the 64 KiB cap: a 4xx JSON error (or the route's normal answer when it
  takes no body), never a 5xx, and the cluster is unchanged.
- Every route with the wrong method: 405 JSON with `Allow`.
- Hypercorn's limits, set deliberately in shared/server.py and shared/app.py: headers
  over 16 KiB get 431; connections that never finish a request are closed after the
  keep-alive timeout and a body that stalls after BODY_TIMEOUT, while the node answers
  everyone else at once.
- Upgrade headers Hypercorn or wsproto would raise on get 400 and one JSON log line a
  second at most; rejoins asking for the whole history again and again are bounded by
  the replay budget; a thousand h2c WebSockets with deflate fit a pod's memory.
- WebSocket frames that break the protocol (invalid UTF-8, unmasked, reserved bits, a
  fragmented message past 64 KiB) close the socket with a code, not the node; upgrades
  from a disallowed Origin get 403 (more Origin cases are in tests/test_server.py and
  tests/test_app.py).
- The cluster: a replayed or stale goodbye changes nothing (cookies, hellos and confirms
  are tests/test_stage2_api.py, forged gossip packets tests/test_gossip.py), and a DNS
  answer listing addresses that are not chat nodes (nothing there, a web server, a liar,
  one that never answers, one that never stops answering, another cookie) joins no one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import socket
import struct
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import websockets

from shared.protocol import MAX_FRAME_BYTES
from tests.helpers.cluster import Cluster
from tests.helpers.dns import HeadlessService, Pod, pod_ip, port_free_on_all
from tests.helpers.metrics import memory_mb, metric
from tests.helpers.node import NodeProcess, running_node
from tests.helpers.phoenix import PhoenixClient
from tests.helpers.raw_websocket import RawWebSocket, client_frame
from tests.helpers.redis_server import RedisServer
from tests.helpers.waits import run_async, wait_until

pytestmark = pytest.mark.slow

A, B = "a@localhost", "b@localhost"
DEADLINE = 15.0


@pytest.fixture(scope="module")
def nodes() -> Iterator[Cluster]:
    """a and b, never connected; NODE_DOWN_AFTER long so that only what a test does changes the views."""
    with RedisServer() as redis_server, Cluster(redis_server, env={"NODE_DOWN_AFTER": "60"}) as cluster:
        cluster.start("a", "b")
        yield cluster


def views(cluster: Cluster) -> tuple[list[str], list[str]]:
    return cluster.nodes_of("a"), cluster.nodes_of("b")


def error_lines(node: NodeProcess) -> list[dict[str, Any]]:
    return [line for line in node.logs() if line.get("level") in ("error", "critical")]


def healthy(cluster: Cluster) -> bool:
    a = cluster.node("a")
    return (
        cluster.http.get(a.url + "/healthz").status_code == 200
        and cluster.http.get(a.url + "/readyz").status_code == 200
    )


def assert_json_error(response: httpx.Response, statuses: range = range(400, 500)) -> None:
    assert response.status_code in statuses, (response.status_code, response.text[:200])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"], body


# Every route, every kind of bad body -------------------------------------------------------------

# (method, path, takes a body): every route the node serves, stage 1's and stage 2's.
ROUTES = [
    ("GET", "/", False),
    ("GET", "/healthz", False),
    ("GET", "/readyz", False),
    ("GET", "/metrics", False),
    ("GET", "/api/nodes", False),
    ("GET", "/static/chat.js", False),
    ("GET", "/socket/websocket?vsn=2.0.0", False),  # the upgrade route, asked without an upgrade
    ("POST", "/api/nodes/connect", True),
    ("DELETE", f"/api/nodes/{B}", True),
    ("POST", "/api/drain", True),
    ("POST", "/cluster/hello", True),
    ("POST", "/cluster/confirm", True),
    ("POST", "/cluster/goodbye", True),
]
ROUTE_IDS = [f"{method} {path.split('?')[0]}" for method, path, _ in ROUTES]
BODIES = {
    "garbage": bytes(range(256)) * 4,
    "bad json": b'{"node": "b@localhost", ',
    "json array": b'["b@localhost"]',
    "json wrong types": b'{"node": 7, "address": [], "challenge": {}, "proof": null, "ts": "x", "peers": 1}',
    "huge number": b'{"node": 1e999, "ts": 123456789012345678901234567890}',
    "deep nesting": b"[" * 5000 + b"]" * 5000,
    "invalid utf-8": b'{"node": "\xff\xfe\xfd"}',
    "over 64 KiB": b'{"node": "' + b"x" * (1024 * 1024) + b'"}',
}


def send_body(url: str, method: str, body: bytes) -> httpx.Response | None:
    """One request on a fresh connection; None when the node closed it before answering (a refused body)."""
    with httpx.Client(timeout=DEADLINE) as http:
        try:
            return http.request(method, url, content=body, headers={"Content-Type": "application/json"})
        except (httpx.RemoteProtocolError, httpx.WriteError, httpx.ReadError):
            return None


@pytest.mark.parametrize(("method", "path", "takes_body"), ROUTES, ids=ROUTE_IDS)
def test_bad_bodies_on_every_route_get_4xx_json_or_the_routes_answer_and_change_nothing(
    nodes: Cluster, method: str, path: str, takes_body: bool
) -> None:
    a = nodes.node("a")
    errors_before = len(error_lines(a))
    statuses = {}
    for name, body in BODIES.items():
        response = send_body(a.url + path, method, body)
        assert response is not None, (name, "connection closed without an answer")
        statuses[name] = response.status_code
        assert response.status_code < 500, (name, response.status_code, response.text[:200])
        if takes_body or response.status_code >= 400:
            assert_json_error(response)
    if path == "/api/nodes/connect" or (path.startswith("/api/nodes/") and method == "DELETE"):
        assert set(statuses.values()) == {401}  # no cookie: refused before the body is read
    assert views(nodes) == ([A], [B])
    assert healthy(nodes)
    assert error_lines(a)[errors_before:] == []


def test_bodies_over_the_cap_are_413_on_routes_that_read_them(nodes: Cluster) -> None:
    for path in ("/cluster/hello", "/cluster/confirm", "/cluster/goodbye"):
        response = send_body(nodes.node("a").url + path, "POST", BODIES["over 64 KiB"])
        assert response is not None and response.status_code == 413, path
        assert_json_error(response)


WRONG_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@pytest.mark.parametrize(("method", "path", "takes_body"), ROUTES, ids=ROUTE_IDS)
def test_wrong_methods_on_every_route_get_405_json_with_allow(
    nodes: Cluster, method: str, path: str, takes_body: bool
) -> None:
    a = nodes.node("a")
    for wrong in WRONG_METHODS:
        if wrong == method or (wrong == "DELETE" and path.startswith("/api/nodes/")):
            continue  # DELETE /api/nodes/<name> is a route of its own, even for <name> = connect
        response = nodes.http.request(wrong, a.url + path, content=b"{}")
        assert response.status_code == 405, (wrong, response.status_code)
        assert_json_error(response)
        assert method in response.headers["allow"], response.headers
    assert views(nodes) == ([A], [B])


# Hypercorn's limits -------------------------------------------------------------------------------


def raw_http(port: int, data: bytes, timeout: float = DEADLINE) -> bytes:
    """Send `data` on a fresh connection and read until the node closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
        return answer


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Many: header\r\n" * 5000 + b"\r\n",
    ],
    ids=["one huge header", "huge request line", "thousands of headers"],
)
def test_headers_over_16_kib_get_431_and_the_connection_closed(nodes: Cluster, request_bytes: bytes) -> None:
    answer = raw_http(nodes.node("a").port, request_bytes)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert healthy(nodes)


def test_garbage_instead_of_http_gets_400_and_the_connection_closed(nodes: Cluster) -> None:
    answer = raw_http(nodes.node("a").port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
    assert healthy(nodes)


# Handshake headers that wsproto or Hypercorn cannot parse: each raised inside the server
# (a traceback on stderr, or two error events) instead of being answered.
MALFORMED_HANDSHAKES = {
    "window bits not a number": b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=x",
    "window bits empty": b"Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=",
    "non-ASCII Connection": b"Connection: Upgrade, \xff\xfe",
    "non-ASCII extensions": b"Sec-WebSocket-Extensions: permessage-deflate; \xe9",
    "non-ASCII protocol": b"Sec-WebSocket-Protocol: chat, \xc3\xa9",
}


def upgrade_with(port: int, header: bytes) -> bytes:
    """The status line and headers answering a WebSocket upgrade that carries `header` (a
    Connection header replaces the usual one); b"" when the node ends the connection instead."""
    lines = [
        b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1",
        f"Host: 127.0.0.1:{port}".encode(),
        b"Upgrade: websocket",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"Sec-WebSocket-Version: 13",
        header,
    ]
    if not header.lower().startswith(b"connection:"):
        lines.append(b"Connection: Upgrade")
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
                answer += chunk
        return answer


def test_malformed_handshake_headers_get_400_and_one_json_line_at_most_a_second() -> None:
    from shared.server import REFUSAL_LOG_EVERY
    from tests.helpers.results import record

    rounds = 20
    with running_node("stage1_dev", {"PING_INTERVAL": "0"}) as node:
        started = time.monotonic()
        statuses = {
            name: [upgrade_with(node.port, header)[:12] for _ in range(rounds)]
            for name, header in MALFORMED_HANDSHAKES.items()
        }
        elapsed = time.monotonic() - started
        assert httpx.get(node.url + "/healthz", timeout=5).status_code == 200
        ws = RawWebSocket.open("127.0.0.1", node.port)  # a well-formed upgrade is still accepted
        ws.close()
    lines = node.lines
    not_json = [line for line in lines if not line.startswith("{") or not isinstance(json.loads(line), dict)]
    refusals = [line for line in node.logs() if line.get("event") == "websocket refused: malformed handshake header"]
    record(
        "malformed_handshake_headers",
        requests=rounds * len(MALFORMED_HANDSHAKES),
        statuses=sorted({s.decode() for codes in statuses.values() for s in codes}),
        log_lines=len(lines),
        log_bytes=sum(len(line) + 1 for line in lines),
        lines_not_json=len(not_json),
        error_lines=len([line for line in node.logs() if line.get("level") in ("error", "critical")]),
        refusal_lines=len(refusals),
    )
    for name, codes in statuses.items():
        assert codes == [b"HTTP/1.1 400"] * rounds, (name, codes[:3])
    assert not_json == [], not_json[:5]
    assert [line for line in node.logs() if line.get("level") in ("error", "critical")] == []
    # Logged, but not once per request: one line per REFUSAL_LOG_EVERY, counting the rest.
    assert 1 <= len(refusals) <= 1 + elapsed / REFUSAL_LOG_EVERY, (len(refusals), elapsed)
    assert sum(int(line["refused"]) for line in refusals) <= rounds * len(MALFORMED_HANDSHAKES)


IDLE_CONNECTIONS = 300
STALLED_BODIES = 50
KEEP_ALIVE_TIMEOUT = 5.0  # shared/server.py
BODY_TIMEOUT = 10.0  # shared/app.py


def test_idle_half_open_connections_and_stalled_bodies_are_cut_while_others_are_served(nodes: Cluster) -> None:
    a = nodes.node("a")
    sockets: list[tuple[str, socket.socket]] = []
    try:
        opened_at = time.monotonic()
        for n in range(IDLE_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", a.port), timeout=DEADLINE)
            sockets.append(("idle", sock))
            if n % 3 == 1:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow")  # slowloris: headers never end
            elif n % 3 == 2:
                sock.sendall(b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nUpgrade: websocket\r\n")
        for _ in range(STALLED_BODIES):
            sock = socket.create_connection(("127.0.0.1", a.port), timeout=DEADLINE)
            sock.sendall(b"POST /cluster/hello HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            sock.sendall(b'Content-Length: 1000\r\n\r\n{"node": ')  # ...and the rest never comes
            sockets.append(("stalled", sock))

        # Meanwhile the node answers others at once.
        started = time.monotonic()
        for _ in range(20):
            assert nodes.http.get(a.url + "/healthz").status_code == 200
        served_in = (time.monotonic() - started) / 20
        assert a.proc is not None and a.proc.poll() is None

        def ended(sock: socket.socket) -> tuple[float, bytes]:
            sock.settimeout(KEEP_ALIVE_TIMEOUT + BODY_TIMEOUT + 10)
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    answer += chunk
            return time.monotonic() - opened_at, answer

        cut = {"idle": [], "stalled": []}
        answers = {"idle": set(), "stalled": set()}
        for kind, sock in sockets:
            at, answer = ended(sock)
            cut[kind].append(at)
            answers[kind].add(answer.split(b"\r\n", 1)[0])
    finally:
        for _, sock in sockets:
            sock.close()
    from tests.helpers.results import record

    record(
        "idle_and_stalled_connections",
        idle_connections=IDLE_CONNECTIONS,
        stalled_bodies=STALLED_BODIES,
        healthz_while_open_ms=round(served_in * 1000, 2),
        idle_cut_after_s=[round(min(cut["idle"]), 2), round(max(cut["idle"]), 2)],
        stalled_cut_after_s=[round(min(cut["stalled"]), 2), round(max(cut["stalled"]), 2)],
        stalled_answer=sorted(a.decode() for a in answers["stalled"]),
    )
    assert answers["idle"] == {b""}  # closed without a word: they never asked anything
    assert answers["stalled"] == {b"HTTP/1.1 408 "}
    assert max(cut["idle"]) < KEEP_ALIVE_TIMEOUT + 10
    assert max(cut["stalled"]) < BODY_TIMEOUT + 10
    assert healthy(nodes)


# WebSocket frames that break the protocol -----------------------------------------------------------

BAD_FRAMES = {
    "invalid utf-8 text": {"payload": b'["1","1","rooms:lobby","phx_join",{"user":"\xff\xfe"}]'},
    "unmasked": {"payload": b'[null,"1","phoenix","heartbeat",{}]', "masked": False},
    "reserved bits": {"payload": b'[null,"1","phoenix","heartbeat",{}]', "rsv": 4},
    "reserved opcode": {"payload": b"x", "opcode": 3},
    "ping over 125 bytes": {"payload": b"x" * 200, "opcode": 9},
}


@pytest.mark.parametrize("frame", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_a_frame_that_breaks_the_websocket_protocol_ends_that_socket_only(
    nodes: Cluster, frame: dict[str, Any]
) -> None:
    a = nodes.node("a")
    bystander = RawWebSocket.open("127.0.0.1", a.port)
    hostile = RawWebSocket.open("127.0.0.1", a.port)
    try:
        assert hostile.status == bystander.status == 101
        hostile.send_frame(**frame)
        # wsproto fails the connection (1002/1007); Hypercorn then ends the TCP connection
        # without sending the close frame, which a client sees as 1006 and reconnects.
        assert hostile.close_code() in (None, 1002, 1007)
        bystander.send_text('[null,"hb","phoenix","heartbeat",{}]')
        assert json.loads(bystander.read_frame()[1])[1] == "hb"
        assert wait_until(
            lambda: metric(nodes.http.get(a.url + "/metrics").text, "chat_connections") == 1,
            5,
            "the hostile socket detached",
        )
    finally:
        hostile.close()
        bystander.close()
    assert error_lines(a) == []


def test_a_fragmented_message_past_64_kib_closes_with_1009(nodes: Cluster) -> None:
    ws = RawWebSocket.open("127.0.0.1", nodes.node("a").port)
    try:
        chunk = b"x" * 4096
        for n in range(MAX_FRAME_BYTES // len(chunk) + 2):
            ws.send_frame(chunk, fin=False, opcode=1 if n == 0 else 0)
        assert ws.close_code() == 1009
    finally:
        ws.close()


def test_a_frame_announcing_an_absurd_length_is_cut_without_reading_it(nodes: Cluster) -> None:
    ws = RawWebSocket.open("127.0.0.1", nodes.node("a").port)
    try:
        ws.sock.sendall(struct.pack("!BBQ", 0x81, 0xFF, 2**62) + os.urandom(4) + b"x" * 100)
        assert ws.close_code() in (None, 1009)
    finally:
        ws.close()
    assert healthy(nodes)


def deflate_bomb(inflated: int) -> bytes:
    """One permessage-deflate payload (raw deflate, sync flush, RFC 7692 §7.2.1) of `inflated` bytes of text."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = b"a" * (1 << 20)
    parts = [compressor.compress(chunk) for _ in range(inflated // len(chunk))]
    data = b"".join(parts) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]  # without the 00 00 ff ff the receiver adds back


def test_a_deflate_bomb_closes_with_1009_and_is_never_inflated_whole(stage1_node: NodeProcess) -> None:
    from tests.helpers.results import record

    bomb = deflate_bomb(200 * 1024 * 1024)
    pid = stage1_node.proc.pid  # type: ignore[union-attr]
    offer = ("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",)
    sockets = [RawWebSocket.open("127.0.0.1", stage1_node.port, headers=offer) for _ in range(4)]
    try:
        assert all(b"permessage-deflate" in ws.head.lower() for ws in sockets), sockets[0].head
        before = memory_mb(pid, "VmHWM")
        for ws in sockets:
            ws.send_frame(bomb, rsv=4)  # RSV1: a compressed message
        codes = [ws.close_code() for ws in sockets]
        after = memory_mb(pid, "VmHWM")
    finally:
        for ws in sockets:
            ws.close()
    record(
        "deflate_bomb",
        clients=len(sockets),
        compressed_kb=round(len(bomb) / 1024),
        inflates_to_mb=200,
        close_codes=codes,
        peak_rss_before_mb=round(before, 1),
        peak_rss_after_mb=round(after, 1),
        peak_rss_growth_mb=round(after - before, 1),
    )
    assert codes == [1009] * 4
    assert after - before < 32, f"peak RSS grew {after - before:.1f} MB: the bomb was inflated"
    assert httpx.get(stage1_node.url + "/healthz", timeout=5).status_code == 200


def test_a_compressed_chat_frame_under_the_limit_is_inflated_and_served(stage1_node: NodeProcess) -> None:
    """The bound costs nothing to honest clients: a compressed join and push are answered as usual."""
    offer = ("Sec-WebSocket-Extensions: permessage-deflate",)
    ws = RawWebSocket.open("127.0.0.1", stage1_node.port, headers=offer)
    try:
        body = "é" * 2000  # 4000 bytes that compress to a few dozen
        for frame in (
            ["1", "1", "rooms:lobby", "phx_join", {"user": "zip"}],
            ["1", "2", "rooms:lobby", "new:msg", {"user": "zip", "body": body}],
        ):
            compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
            data = compressor.compress(json.dumps(frame).encode()) + compressor.flush(zlib.Z_SYNC_FLUSH)
            ws.send_frame(data[:-4], rsv=4)
        replies = {}
        while "2" not in replies:
            opcode, payload = ws.read_frame()
            assert opcode == 1, (opcode, payload[:80])  # the server's own frames are not compressed
            message = json.loads(payload)
            if message[3] == "phx_reply":
                replies[message[1]] = message[4]
    finally:
        ws.close()
    assert replies["1"]["status"] == "ok"
    assert replies["2"] == {"status": "ok", "response": {"msg": body, "id": replies["2"]["response"]["id"]}}


def test_a_thousand_h2c_websockets_with_deflate_stay_inside_the_pods_memory() -> None:
    """10 cleartext HTTP/2 connections of 100 WebSocket streams each, every stream offering
    permessage-deflate as browsers do and joined with a compressed frame: the node holds
    them all inside the 256 MiB a pod is given (docs/protocol.md, the memory arithmetic)."""
    from tests.helpers.h2c import STREAMS_PER_CONNECTION, H2cConnection, wait_joined
    from tests.helpers.results import record

    count, pod = 1000, 256.0
    with running_node("stage1_dev", {"PING_INTERVAL": "0", "MAX_CONNECTIONS": str(count)}) as node:
        pid = node.proc.pid  # type: ignore[union-attr]
        before = memory_mb(pid)
        connections = [
            H2cConnection(node.port, STREAMS_PER_CONNECTION, f"h{n}") for n in range(count // STREAMS_PER_CONNECTION)
        ]
        try:
            # One connection after another: all at once is a join storm (every join a presence
            # diff to every member), which this measures nothing of (docs/reliability.md, limits).
            for started in range(len(connections)):
                connections[started].start()
                wait_joined(connections[: started + 1], 60)
            # Every stream got its join's ok; a few may have been dropped since as slow
            # readers (1008: this one Python client reads a thousand sockets' presence diffs).
            served = metric(httpx.get(node.url + "/metrics", timeout=10).text, "chat_connections")
            rss, peak = memory_mb(pid), memory_mb(pid, "VmHWM")
        finally:
            for connection in connections:
                connection.stop.set()
            for connection in connections:
                connection.join(10)
        offers = {s.extensions for c in connections for s in c.streams.values()}
    record(
        "h2c_deflate_memory",
        streams=count,
        connections=len(connections),
        negotiated=sorted(offers),
        still_connected=served,
        rss_before_mb=round(before, 1),
        rss_joined_mb=round(rss, 1),
        peak_rss_mb=round(peak, 1),
        per_socket_kb=round((rss - before) * 1024 / count, 1),
    )
    assert all(offer.startswith("permessage-deflate") for offer in offers), offers  # compression kept
    assert peak < pod, f"peak RSS {peak:.1f} MB: past a pod's {pod:.0f} MiB"


def test_a_heartbeat_flood_is_rate_limited_like_any_frame(stage1_node: NodeProcess) -> None:
    from tests.helpers.results import record

    ws = RawWebSocket.open("127.0.0.1", stage1_node.port)
    try:
        flood = 500
        ws.sock.sendall(
            b"".join(client_frame(f'[null,"{n}","phoenix","heartbeat",{{}}]'.encode()) for n in range(flood))
        )
        replies: dict[str, int] = {}
        for _ in range(flood):
            status = json.loads(ws.read_frame()[1])[4]
            key = status["response"].get("reason", status["status"])
            replies[key] = replies.get(key, 0) + 1
        ws.send_text('[null,"after","phoenix","heartbeat",{}]')
        after = json.loads(ws.read_frame()[1])[4]["response"].get("reason")
    finally:
        ws.close()
    record("heartbeat_flood", heartbeats=flood, replies=replies, next_frame=after)
    # The burst, and what refilled while the flood was read (the debt is tests/test_channel.py's).
    assert replies["ok"] >= 20 and replies["rate_limited"] == flood - replies["ok"] > 0, replies


# The node's address space is capped in the child before it starts (limits survive exec).
CAPPED = (
    "import os, resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({0}, {0})); os.execv(sys.argv[1], sys.argv[1:])"
)


def test_stalled_sockets_cannot_exhaust_a_memory_capped_node() -> None:
    """40 sockets that never read each ask for the history again and again: every join
    replays 100 messages of 8 KB, framed for that socket alone. The node has 128 MiB of
    address space in all; each stalled socket is dropped, or refused its replays past the
    replay budget, and the node serves on."""
    from tests.helpers.results import record

    stalled_count, rejoins, cap = 40, 20, 128 * 1024 * 1024
    env = {"PING_INTERVAL": "0", "MAX_CONNECTIONS": "64", "RATE_LIMIT": "10000/10000"}
    node = NodeProcess("stage1_dev", env, prefix=[sys.executable, "-c", CAPPED.format(cap)])
    stalled: list[RawWebSocket] = []
    body = "🙂" * 2000  # 8000 bytes of UTF-8, 8 KB in memory

    async def fill_history() -> None:
        async with PhoenixClient(node.ws_url) as writer:
            await writer.join("rooms:lobby", {"user": "writer"})
            for _ in range(100):
                assert (await writer.push("rooms:lobby", "new:msg", {"user": "writer", "body": body})).ok

    async def still_serving() -> tuple[bool, int]:
        async with PhoenixClient(node.ws_url) as late:
            await late.join("rooms:lobby", {"user": "late"})
            reply = await late.push("rooms:lobby", "new:msg", {"user": "late", "body": "still here"})
            await late.wait_for_message("still here")
            return reply.ok, len(late.messages())

    try:
        node.start()
        wait_until(lambda: httpx.get(node.url + "/healthz", timeout=2).status_code == 200, DEADLINE, "node answers")
        pid = node.proc.pid  # type: ignore[union-attr]
        run_async(fill_history)
        before = memory_mb(pid, "VmHWM")
        for n in range(stalled_count):
            ws = RawWebSocket.open("127.0.0.1", node.port, rcvbuf=4096)
            join = client_frame(f'["1","1","rooms:lobby","phx_join",{{"user":"stalled-{n}"}}]'.encode())
            with contextlib.suppress(OSError):  # the node may drop it before the last join is sent
                ws.sock.sendall(join * rejoins)
            stalled.append(ws)

        # Each is either dropped (1008) or refused its replays past the budget (replay_limited):
        # which one depends on how much the kernel's buffers took, so the node's counters tell.
        def settled() -> tuple[float, float] | None:
            text = httpx.get(node.url + "/metrics", timeout=5).text
            drops, joins = metric(text, "chat_drops_total"), metric(text, "chat_joins_total") - 1  # the writer's
            refused = metric(text, "chat_messages_rejected_total", default=0, reason="replay_limited")
            # Every join of a socket not dropped is answered, ok or refused.
            return (drops, refused) if joins + refused + drops * rejoins >= stalled_count * rejoins else None

        drops, replays_refused = wait_until(settled, 60, "every stalled socket dropped or refused its replays")
        after = memory_mb(pid, "VmHWM")
        served, history_replayed = run_async(still_serving)
    finally:
        for ws in stalled:
            ws.close()
        node.stop()
    failures = [line for line in node.logs() if line.get("level") in ("error", "critical")]
    record(
        "stalled_sockets_capped_node",
        stalled=stalled_count,
        joins_each=rejoins,
        replay_kb_per_join=800,
        address_space_cap_mb=cap // (1024 * 1024),
        dropped_1008=drops,
        replays_refused=replays_refused,
        peak_rss_before_mb=round(before, 1),
        peak_rss_after_mb=round(after, 1),
        errors_logged=len(failures),
    )
    assert after - before < 32, (before, after)
    assert served and history_replayed == 101
    assert failures == [], failures[:3]
    assert node.proc.returncode == 0  # type: ignore[union-attr]  # it stopped on SIGTERM, not before


def test_rejoins_asking_for_the_whole_history_again_and_again_are_bounded_per_socket() -> None:
    """20 sockets each join 20 times, 5 a second (half the rate limit), with 100 messages of
    8 KB in history: every join without last_seen_id asks for all of it again."""
    from shared.channel import REPLAY_BUDGET
    from tests.helpers.results import record

    sockets, joins, interval = 20, 20, 0.2
    rate, burst = REPLAY_BUDGET
    body = "🙂" * 2000  # 8000 bytes of UTF-8

    async def attack(url: str) -> tuple[list[int], list[dict[str, int]], float]:
        async with PhoenixClient(url) as writer:
            await writer.join("rooms:lobby", {"user": "writer"})
            for _ in range(100):
                assert (await writer.push("rooms:lobby", "new:msg", {"user": "writer", "body": body})).ok

        async def rejoiner(n: int) -> tuple[int, dict[str, int]]:
            received, replies = 0, {}
            async with websockets.connect(url, compression=None, max_size=None) as ws:

                async def read() -> None:
                    nonlocal received
                    while sum(replies.values()) < joins:
                        text = await ws.recv()
                        received += len(text.encode() if isinstance(text, str) else text)
                        frame = json.loads(text)
                        if frame[3] == "phx_reply":
                            key = frame[4]["response"].get("reason", frame[4]["status"])
                            replies[key] = replies.get(key, 0) + 1

                reading = asyncio.create_task(read())
                for j in range(joins):
                    await ws.send(json.dumps([str(j), str(j), "rooms:lobby", "phx_join", {"user": f"r{n}"}]))
                    await asyncio.sleep(interval)  # the attack's pace, not a wait for anything
                async with asyncio.timeout(60):
                    await reading
            return received, replies

        started = time.monotonic()
        results = await asyncio.gather(*(rejoiner(n) for n in range(sockets)))
        return [r[0] for r in results], [r[1] for r in results], time.monotonic() - started

    # The writer fills history faster than RATE_LIMIT allows; the attack's 5 joins a second are under it.
    with running_node("stage1_dev", {"PING_INTERVAL": "0", "RATE_LIMIT": "10000/10000"}) as node:
        received, replies, elapsed = run_async(lambda: attack(node.ws_url))
        replayed = metric(httpx.get(node.url + "/metrics", timeout=5).text, "chat_replay_bytes_total", default=-1)
    refused = sum(r.get("replay_limited", 0) for r in replies)
    record(
        "replay_budget",
        sockets=sockets,
        joins_each=joins,
        history_kb=round(100 * len(body.encode()) / 1000),
        seconds=round(elapsed, 2),
        bytes_out_per_socket_max_mb=round(max(received) / 1e6, 2),
        bytes_out_total_mb=round(sum(received) / 1e6, 1),
        replayed_bytes_metric_mb=round(replayed / 1e6, 1),
        joins_ok=sum(r.get("ok", 0) for r in replies),
        joins_replay_limited=refused,
    )
    # Bytes of history a socket is sent: the budget, and what refilled while the attack went on.
    bound = burst + rate * elapsed
    assert 0 <= replayed <= sockets * bound, (replayed, sockets * bound)
    frames_and_replies = 64 * 1024  # per socket: the join replies, presence and the writer's entry
    assert max(received) <= bound + frames_and_replies, (max(received), bound)
    assert all(r.get("ok", 0) >= 1 for r in replies) and refused > 0, replies
    assert all(set(r) <= {"ok", "replay_limited"} for r in replies), replies


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "null",
        "http://127.0.0.1:{port}.evil.example",
        "http://127.0.0.1:{port}@evil.example",
        "http://localhost:{port}",
        "file://",
    ],
)
def test_upgrades_from_a_disallowed_origin_get_403(nodes: Cluster, origin: str) -> None:
    a = nodes.node("a")
    ws = RawWebSocket.open("127.0.0.1", a.port, origin=origin.format(port=a.port))
    ws.close()
    assert ws.status == 403
    allowed = RawWebSocket.open("127.0.0.1", a.port, origin=f"http://127.0.0.1:{a.port}")
    allowed.close()
    assert allowed.status == 101


def test_hostile_origins_and_paths_are_logged_escaped_and_truncated(nodes: Cluster) -> None:
    """An Origin of 10 KB with C1 controls (0x9b is the 8-bit ANSI CSI, 0x85 a line break
    to Python), and a path with a newline and an ANSI escape, to routes that log them."""
    from shared.logs import FIELD_LIMIT

    a = nodes.node("a")
    origin = "http://evil.example/\x85fake line\x9b31m" + "x" * 10_000
    sock = socket.create_connection(("127.0.0.1", a.port), timeout=DEADLINE)
    with sock:
        request = (
            f"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {origin}\r\n\r\n"
        )
        sock.sendall(request.encode("latin-1"))
        assert sock.recv(4096).startswith(b"HTTP/1.1 403")
    path = "/api/nodes/b%0A12:00:00%20info%20forged%1B[31m" + "y" * 5000
    assert nodes.http.delete(a.url + path).status_code == 401

    def logged(event: str, field: str, prefix: str) -> list[dict[str, Any]]:
        """This test's lines of `event`: other tests' lines of the same event may come first."""
        return [line for line in a.logs() if line.get("event") == event and str(line.get(field)).startswith(prefix)]

    refused = wait_until(
        lambda: logged("websocket refused: origin not allowed", "origin", "http://evil.example/"), 5, "the refusal"
    )[-1]
    denied = wait_until(
        lambda: logged("node API refused: missing or wrong cookie", "path", "/api/nodes/b"), 5, "the 401 logged"
    )[-1]
    for value, starts in (
        (refused["origin"], "http://evil.example/\\x85fake line\\x9b31m"),
        (denied["path"], "/api/nodes/b\\n12:00:00 info forged\\x1b[31m"),
    ):
        assert value.startswith(starts), value[:80]
        assert value.isprintable() and len(value) <= FIELD_LIMIT + 30
    assert not [line for line in a.lines if line.startswith(("12:00:00", "fake line"))], "a forged log line"


# The cluster: goodbyes ---------------------------------------------------------------------------------


def signed_goodbye(cookie: str, sender: str, receiver: str, stamp: float, nonce: str) -> dict[str, Any]:
    """A goodbye as stage2_cluster/handshake.py signs it: HMAC-SHA256 over the parts, keyed with the cookie."""
    parts = "|".join(["goodbye", sender, receiver, str(stamp), nonce])
    proof = hmac.new(cookie.encode(), parts.encode(), hashlib.sha256).hexdigest()
    return {"node": sender, "ts": stamp, "nonce": nonce, "proof": proof}


def test_a_replayed_stale_or_forged_goodbye_disconnects_no_one(nodes: Cluster) -> None:
    nodes.connected("a", "b")
    try:
        url = nodes.node("a").url + "/cluster/goodbye"
        # A goodbye b really sent (signed with the cookie), as an eavesdropper would capture it.
        captured = signed_goodbye(nodes.cookie, B, A, time.time(), secrets.token_hex(8))
        assert nodes.http.post(url, json=captured).status_code == 200
        nodes.wait_nodes("a", ["a"])
        nodes.connected("a", "b")

        attempts = {
            "replayed": captured,
            "stale": signed_goodbye(nodes.cookie, B, A, time.time() - 120, secrets.token_hex(8)),
            "from the future": signed_goodbye(nodes.cookie, B, A, time.time() + 120, secrets.token_hex(8)),
            "wrong cookie": signed_goodbye("not-the-cookie-0123456789", B, A, time.time(), secrets.token_hex(8)),
            "signed for another node": signed_goodbye(
                nodes.cookie, B, "c@localhost", time.time(), secrets.token_hex(8)
            ),
        }
        for name, body in attempts.items():
            response = nodes.http.post(url, json=body)
            assert response.status_code == 403, name
            assert_json_error(response)
            assert views(nodes) == ([A, B], [B, A]), name
    finally:
        for name, other in (("a", B), ("b", A)):
            nodes.http.delete(f"{nodes.node(name).url}/api/nodes/{other}", headers=nodes.auth())
        nodes.wait_nodes("a", ["a"])
        nodes.wait_nodes("b", ["b"])


# The cluster: a DNS answer listing addresses that are not chat nodes ----------------------------------


class WebServer(BaseHTTPRequestHandler):
    """A web server that is not a chat node: a page for every request."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        page = b"<!doctype html><title>not a chat node</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    do_GET = do_POST

    def log_message(self, *args: object) -> None:
        pass


class Liar(WebServer):
    """Answers a hello like a chat node would, naming itself as DNS does, with a made-up proof."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        host = self.server.server_address[0]
        answer = json.dumps({"node": f"chat@{host}", "challenge": "c" * 32, "proof": "0" * 64, "peers": "all"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


ENDLESS_LIMIT = 64 * 1024 * 1024  # what the endless server sends at most per connection


class Endless(WebServer):
    """Answers 200 with a body that does not end (up to ENDLESS_LIMIT, so a broken node cannot eat the machine)."""

    def do_POST(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(ENDLESS_LIMIT))
        self.end_headers()
        chunk = b"[" * 65536
        with contextlib.suppress(OSError):
            for _ in range(ENDLESS_LIMIT // len(chunk)):
                self.wfile.write(chunk)


class Strangers:
    """Servers on pod addresses that DNS will list: each a different kind of not-a-chat-node."""

    def __init__(self, port: int, addresses: dict[str, str]) -> None:
        self.servers: list[ThreadingHTTPServer] = []
        self.sockets: list[socket.socket] = []
        for kind, ip in addresses.items():
            if kind == "silent":  # accepts connections (the kernel does) and never answers
                sock = socket.socket()
                sock.bind((ip, port))
                sock.listen(64)
                self.sockets.append(sock)
            elif kind in ("web server", "liar", "endless"):
                handler = {"web server": WebServer, "liar": Liar, "endless": Endless}[kind]
                server = ThreadingHTTPServer((ip, port), handler)
                server.daemon_threads = True
                threading.Thread(target=server.serve_forever, daemon=True).start()
                self.servers.append(server)

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()
        for sock in self.sockets:
            sock.close()


def test_a_dns_answer_listing_addresses_that_are_not_chat_nodes_joins_no_one() -> None:
    from stage2_cluster.handshake import HTTP_TIMEOUT
    from tests.helpers.results import record

    strangers = {
        "nothing": pod_ip(2),
        "web server": pod_ip(3),
        "liar": pod_ip(4),
        "silent": pod_ip(5),
        "endless": pod_ip(6),
    }
    other_cookie = pod_ip(7)
    port = port_free_on_all(8)
    dns = HeadlessService()
    dns.server.start_thread()
    fakes = Strangers(port, strangers)
    pods: list[Pod] = []
    try:
        with RedisServer() as redis_server:

            def pod(index: int, cookie: str) -> Pod:
                env = {
                    "REDIS_URL": redis_server.url,
                    "CLUSTER_COOKIE": cookie,
                    "POD_IP": pod_ip(index),
                    "DNS_NAMESERVER": dns.nameserver,
                    "DNS_POLL_INTERVAL": "0.5",
                    "NODE_DOWN_AFTER": "2",
                    "PING_INTERVAL": "0",
                }
                node = Pod("stage3_k8s", env, host=pod_ip(index), port=port)
                pods.append(node)
                return node

            cookie = "stage3-hostile-cookie-" + secrets.token_hex(8)
            dns.publish([pod_ip(n) for n in range(8)])
            ours, peer = pod(0, cookie), pod(1, cookie)
            impostor = pod(7, "another-cookie-" + secrets.token_hex(8))
            for node in pods:
                node.start()
            me, friend = f"chat@{pod_ip(0)}", f"chat@{pod_ip(1)}"
            rss_start = memory_mb(ours.proc.pid)  # type: ignore[union-attr]

            def tried_all(times: int = 2) -> bool:
                failed = [line.get("peer") for line in ours.logs() if line.get("event") == "connect failed"]
                names = [f"chat@{ip}" for ip in [*strangers.values(), other_cookie]]
                return all(failed.count(name) >= times for name in names)

            started = time.monotonic()
            wait_until(tried_all, 4 * HTTP_TIMEOUT + 20, "every stranger tried twice and refused", step=0.2)
            tried_in = time.monotonic() - started
            view = httpx.get(ours.url + "/api/nodes", timeout=5).json()
            peer_view = httpx.get(peer.url + "/api/nodes", timeout=5).json()
            impostor_view = httpx.get(impostor.url + "/api/nodes", timeout=5).json()
            rss_end = memory_mb(ours.proc.pid)  # type: ignore[union-attr]
            kinds = {f"chat@{ip}": kind for kind, ip in strangers.items()} | {f"chat@{other_cookie}": "other cookie"}
            reasons = {
                kinds[line["peer"]]: line.get("reason")
                for line in ours.logs()
                if line.get("event") == "connect failed" and line.get("peer") in kinds
            }
            crashed = [line for line in ours.logs() if line.get("level") in ("error", "critical")]
            for node in pods:
                node.stop()  # before Redis goes
    finally:
        for node in pods:
            node.stop()
        fakes.close()
        dns.server.stop()
        dns.server.server.server_close()
    record(
        "dns_lists_non_chat_addresses",
        strangers=sorted([*strangers, "chat node with another cookie"]),
        joined=sorted(set(view["nodes"]) - {me, friend}),
        refused_reasons={name: (reason or "")[:80] for name, reason in sorted(reasons.items())},
        every_stranger_tried_twice_s=round(tried_in, 2),
        rss_growth_mb=round(rss_end - rss_start, 1),
        errors_logged=len(crashed),
    )
    assert view == {"self": me, "nodes": [me, friend]}
    assert peer_view == {"self": friend, "nodes": [friend, me]}
    assert impostor_view["nodes"] == [f"chat@{other_cookie}"]
    assert crashed == []
    assert rss_end - rss_start < 32, "an endless answer was read into memory"


@pytest.mark.parametrize("handler", [WebServer, Liar, Endless], ids=["web server", "liar", "endless"])
def test_connecting_by_hand_to_an_address_that_is_not_a_chat_node_is_502(nodes: Cluster, handler: type) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        response = nodes.http.post(
            nodes.node("a").url + "/api/nodes/connect",
            json={"node": "chat@127.0.0.1", "address": address},
            headers=nodes.auth(),
        )
    finally:
        server.shutdown()
        server.server_close()
    assert_json_error(response, range(502, 503))
    assert views(nodes) == ([A], [B])
