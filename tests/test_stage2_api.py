"""The node API and the node-to-node handshake, against real nodes.

`/api/nodes/connect`, `DELETE /api/nodes/<name>` and `/api/drain` need
`Authorization: Bearer <cookie>`: without it they answer 401 and nothing changes.
Bad requests get a JSON `{"error": ...}` with a fitting status. `/cluster/hello` and
`/cluster/confirm` need no header but a proof of the cookie over a fresh challenge:
a wrong proof or a replayed confirm is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.helpers.cluster import Cluster, full_name
from tests.helpers.metrics import metric
from tests.helpers.ports import free_port
from tests.helpers.redis_server import RedisServer
from tests.helpers.results import record
from tests.helpers.waits import wait_until

pytestmark = pytest.mark.slow

A, B = "a@localhost", "b@localhost"
FAKE = "x@localhost"  # a node the test plays itself
FAKE_BOOT = "0123456789abcdef"  # its incarnation (stage2_cluster/lines.py)


@pytest.fixture(scope="module")
def nodes() -> Iterator[Cluster]:
    """a and b for the whole module; NODE_DOWN_AFTER is long so a node the test plays stays listed."""
    with RedisServer() as redis_server, Cluster(redis_server, env={"NODE_DOWN_AFTER": "60"}) as cluster:
        cluster.start("a", "b")
        yield cluster


def separate(cluster: Cluster) -> None:
    """Every node back to itself alone."""
    for name in ("a", "b"):
        for peer in cluster.nodes_of(name)[1:]:
            cluster.http.delete(f"{cluster.node(name).url}/api/nodes/{peer}", headers=cluster.auth())
        cluster.wait_nodes(name, [name])


@pytest.fixture
def apart(nodes: Cluster) -> Cluster:
    separate(nodes)
    return nodes


@pytest.fixture
def together(nodes: Cluster) -> Cluster:
    if views(nodes) != ([A, B], [B, A]):
        separate(nodes)
        nodes.connected("a", "b")
    return nodes


def call(
    cluster: Cluster, method: str, path: str, *, node: str = "a", auth: str | None = "cookie", **kwargs: Any
) -> httpx.Response:
    headers = dict(kwargs.pop("headers", {}))
    if auth == "cookie":
        headers.update(cluster.auth())
    elif auth is not None:
        headers["Authorization"] = auth.format(cookie=cluster.cookie)
    return cluster.http.request(method, cluster.node(node).url + path, headers=headers, **kwargs)


def assert_json_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    return body["error"]


def views(cluster: Cluster) -> tuple[list[str], list[str]]:
    return cluster.nodes_of("a"), cluster.nodes_of("b")


# The cookie ------------------------------------------------------------------------------

BAD_AUTH = {
    "no header": None,
    "wrong cookie": "Bearer wrong-cookie-0123456789abcdef",
    "not bearer": "Basic {cookie}",
    "bearer without token": "Bearer",
}
BAD_AUTH_IDS = list(BAD_AUTH)


def assert_refused(response: httpx.Response) -> None:
    assert "cookie" in assert_json_error(response, 401)


@pytest.mark.parametrize("auth", BAD_AUTH.values(), ids=BAD_AUTH_IDS)
def test_connect_without_the_cookie_is_401_and_connects_nothing(apart: Cluster, auth: str | None) -> None:
    assert_refused(call(apart, "POST", "/api/nodes/connect", auth=auth, json={"node": B}))
    assert views(apart) == ([A], [B])


@pytest.mark.parametrize("auth", BAD_AUTH.values(), ids=BAD_AUTH_IDS)
def test_disconnect_without_the_cookie_is_401_and_disconnects_nothing(together: Cluster, auth: str | None) -> None:
    assert_refused(call(together, "DELETE", f"/api/nodes/{B}", auth=auth))
    assert views(together) == ([A, B], [B, A])


@pytest.mark.parametrize("auth", BAD_AUTH.values(), ids=BAD_AUTH_IDS)
def test_drain_without_the_cookie_is_401_and_drains_nothing(together: Cluster, auth: str | None) -> None:
    assert_refused(call(together, "POST", "/api/drain", auth=auth))
    ready = together.http.get(together.node("a").url + "/readyz")
    assert ready.status_code == 200 and ready.json()["draining"] is False
    assert views(together) == ([A, B], [B, A])


# Bad requests ----------------------------------------------------------------------------

BAD_BODIES = {
    "not json": ({"content": b"node=b@localhost", "headers": {"Content-Type": "application/json"}}, 400),
    "json array": ({"json": [B]}, 400),
    "json string": ({"json": B}, 400),
    "missing node": ({"json": {"address": "127.0.0.1:1"}}, 400),
    "node not a string": ({"json": {"node": 7}}, 400),
    "node without host": ({"json": {"node": "b"}}, 400),
    "node with a space": ({"json": {"node": "b c@localhost"}}, 400),
    "address not a string": ({"json": {"node": B, "address": 4001}}, 400),
    "address without port": ({"json": {"node": B, "address": "localhost"}}, 400),
    "address with a path and a query": ({"json": {"node": B, "address": "127.0.0.1:1/x?y"}}, 400),
    "address with a user": ({"json": {"node": B, "address": "me@127.0.0.1:1"}}, 400),
    "body over 64 KiB": ({"json": {"node": B, "pad": "x" * (65 * 1024)}}, 413),
}


@pytest.mark.parametrize("request_kwargs,status", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_connect_with_a_bad_body_answers_a_json_error(
    apart: Cluster, request_kwargs: dict[str, Any], status: int
) -> None:
    assert_json_error(call(apart, "POST", "/api/nodes/connect", **request_kwargs), status)
    assert views(apart) == ([A], [B])


@pytest.mark.parametrize("path", ["/cluster/hello", "/cluster/confirm", "/cluster/goodbye"])
@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe not json", b"[]", b"{}", json.dumps({"node": 1, "challenge": 2}).encode()],
    ids=["binary", "array", "empty", "wrong types"],
)
def test_handshake_with_a_bad_body_answers_a_json_error(apart: Cluster, path: str, body: bytes) -> None:
    response = call(apart, "POST", path, auth=None, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 403)
    assert_json_error(response, response.status_code)
    assert views(apart) == ([A], [B])


def test_disconnecting_an_unknown_node_is_404(apart: Cluster) -> None:
    assert_json_error(call(apart, "DELETE", "/api/nodes/zz@localhost"), 404)


def test_connecting_a_node_not_in_the_registry_without_address_is_404(apart: Cluster) -> None:
    assert_json_error(call(apart, "POST", "/api/nodes/connect", json={"node": "zz@localhost"}), 404)
    assert views(apart) == ([A], [B])


def test_connecting_an_unreachable_address_is_502(apart: Cluster) -> None:
    body = {"node": "zz@localhost", "address": f"127.0.0.1:{free_port()}"}
    assert "unreachable" in assert_json_error(call(apart, "POST", "/api/nodes/connect", json=body), 502)
    assert views(apart) == ([A], [B])


def test_connect_with_the_cookie_answers_the_new_view(apart: Cluster) -> None:
    response = call(apart, "POST", "/api/nodes/connect", json={"node": B})
    assert response.status_code == 200
    assert response.json() == {"self": A, "nodes": [A, B]}
    apart.wait_nodes("b", ["b", "a"])


# The handshake, played by the test as node x ---------------------------------------------


def proof(cookie: str, *parts: str) -> str:
    """HMAC-SHA256 of the parts joined with `|`, keyed with the cookie (stage2_cluster/handshake.py)."""
    return hmac.new(cookie.encode(), "|".join(parts).encode(), hashlib.sha256).hexdigest()


def digest(peers: list[dict[str, str]]) -> str:
    """SHA-256 of a peer list as canonical JSON (keys sorted, no spaces)."""
    return hashlib.sha256(
        json.dumps(peers, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()


def hello(cluster: Cluster, address: str) -> dict[str, Any]:
    """Send x's hello to a, check a's proof of the cookie, and return a's answer (with x's challenge)."""
    challenge = secrets.token_hex(16)
    body = {"node": FAKE, "address": address, "challenge": challenge, "boot": FAKE_BOOT}
    response = call(cluster, "POST", "/cluster/hello", auth=None, json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["node"] == A
    signed = proof(cluster.cookie, "hello", A, FAKE, address, challenge, answer["challenge"], answer["boot"])
    assert answer["proof"] == signed
    return {**answer, "mine": challenge}


def confirm_body(answer: dict[str, Any], cookie: str, peers: list[dict[str, str]] | None = None) -> dict[str, Any]:
    peers = peers or []
    return {
        "node": FAKE,
        "challenge": answer["challenge"],
        "proof": proof(cookie, "confirm", FAKE, A, answer["challenge"], FAKE_BOOT, digest(peers)),
        "peers": peers,
    }


def test_replayed_confirm_is_refused_and_changes_nothing(apart: Cluster) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens: x's goodbye fails fast
    answer = hello(apart, address)
    confirm = confirm_body(answer, apart.cookie)
    first = call(apart, "POST", "/cluster/confirm", auth=None, json=confirm)
    assert first.status_code == 200 and first.json()["node"] == A
    signed = proof(apart.cookie, "peers", A, FAKE, answer["mine"], answer["challenge"], digest(first.json()["peers"]))
    assert first.json()["proof"] == signed
    assert apart.nodes_of("a") == [A, FAKE]
    assert call(apart, "DELETE", f"/api/nodes/{FAKE}").json()["nodes"] == [A]

    replayed = call(apart, "POST", "/cluster/confirm", auth=None, json=confirm)
    assert_json_error(replayed, 403)
    assert views(apart) == ([A], [B])
    # The node logs before it answers; the line reaches the test through a reader thread.
    wait_until(
        lambda: any(e.get("event") == "handshake refused" and e.get("peer") == FAKE for e in apart.node("a").logs()),
        what="a logs the refusal",
    )


def test_confirm_with_a_wrong_cookie_proof_is_refused(apart: Cluster) -> None:
    answer = hello(apart, f"127.0.0.1:{free_port()}")
    forged = confirm_body(answer, "not-the-cluster-cookie-0123456789")
    assert_json_error(call(apart, "POST", "/cluster/confirm", auth=None, json=forged), 403)
    assert views(apart) == ([A], [B])
    # The challenge was used up by the failed attempt: the right proof is now too late.
    assert_json_error(call(apart, "POST", "/cluster/confirm", auth=None, json=confirm_body(answer, apart.cookie)), 403)
    assert views(apart) == ([A], [B])


def test_nodes_with_different_cookies_refuse_each_other(apart: Cluster) -> None:
    """c answers a's hello with a proof made with another cookie: a refuses it (502), and c the other way."""
    apart.start("c", CLUSTER_COOKIE="a-different-cookie-" + secrets.token_hex(8))
    try:
        c = full_name("c")
        assert "cookie" in assert_json_error(call(apart, "POST", "/api/nodes/connect", json={"node": c}), 502)
        other = apart.nodes["c"].env["CLUSTER_COOKIE"]
        refused = call(apart, "POST", "/api/nodes/connect", node="c", auth=f"Bearer {other}", json={"node": A})
        assert "cookie" in assert_json_error(refused, 502)
        assert apart.nodes_of("a") == [A] and apart.nodes_of("c") == [c]
    finally:
        apart.stop("c")


@pytest.mark.parametrize("path", ["/cluster/confirm", "/cluster/goodbye"])
def test_a_proof_that_is_not_ascii_is_401_not_500(apart: Cluster, path: str) -> None:
    body = confirm_body(hello(apart, f"127.0.0.1:{free_port()}"), apart.cookie)
    if path == "/cluster/goodbye":
        body = {"node": B, "ts": 0, "nonce": "n"}
    body["proof"] = "é" * 64
    error = assert_json_error(call(apart, "POST", path, auth=None, json=body), 401)
    assert views(apart) == ([A], [B])
    record(f"non-ASCII proof to {path}", status=401, error=error)


# A man in the middle of a handshake: real node a connects to real node b through a relay ---------


EVIL = {"node": "evil@localhost", "address": "127.0.0.1:9"}


class Relay(BaseHTTPRequestHandler):
    """Passes a's handshake on to b, changing one thing on the way (`tamper`)."""

    target = ""
    tamper = ""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        if self.path == "/cluster/confirm" and self.tamper == "peers in the confirm":
            body["peers"] = [*body["peers"], EVIL]
        with httpx.Client(timeout=5) as http:
            response = http.post(self.target + self.path, json=body)
            answer = response.json()
            if self.path == "/cluster/hello" and self.tamper == "swapped challenge":
                # A challenge b issued to "a" in another hello: b would redeem it from a's confirm.
                other = {**body, "challenge": secrets.token_hex(16)}
                answer["challenge"] = http.post(self.target + self.path, json=other).json()["challenge"]
            if self.path == "/cluster/confirm" and self.tamper == "peers in the answer":
                answer["peers"] = [*answer.get("peers", []), EVIL]
        data = json.dumps(answer).encode()
        self.send_response(response.status_code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("tamper", ["swapped challenge", "peers in the confirm", "peers in the answer"])
def test_a_handshake_changed_on_the_way_is_refused(apart: Cluster, tamper: str) -> None:
    handler = type("Tampering", (Relay,), {"target": apart.node("b").url, "tamper": tamper})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        body = {"node": B, "address": f"127.0.0.1:{server.server_address[1]}"}
        error = assert_json_error(call(apart, "POST", "/api/nodes/connect", json=body), 502)
    finally:
        server.shutdown()
        server.server_close()
    assert apart.nodes_of("a") == [A], error
    assert not any("evil" in line for line in apart.node("a").lines + apart.node("b").lines)
    if tamper != "peers in the answer":  # there b accepted a's (intact) confirm before the answer was changed
        assert apart.nodes_of("b") == [B]
    record(f"handshake {tamper}", status=502, error=error)


def bad_addresses(cluster: Cluster, source: str) -> float:
    text = cluster.http.get(cluster.node("a").url + "/metrics").text
    return metric(text, "chat_bad_peer_addresses_total", default=0.0, source=source)


def test_a_bad_address_in_a_hello_or_a_peer_list_is_refused_and_counted(apart: Cluster) -> None:
    hellos, peer_lists = bad_addresses(apart, "hello"), bad_addresses(apart, "peers")
    body = {"node": FAKE, "address": "127.0.0.1:1/x?y", "challenge": secrets.token_hex(16), "boot": FAKE_BOOT}
    assert_json_error(call(apart, "POST", "/cluster/hello", auth=None, json=body), 400)
    assert bad_addresses(apart, "hello") == hellos + 1

    answer = hello(apart, f"127.0.0.1:{free_port()}")
    peers = [{"node": "y@localhost", "address": "127.0.0.1:1/cluster/goodbye?"}]
    assert call(apart, "POST", "/cluster/confirm", auth=None, json=confirm_body(answer, apart.cookie, peers)).is_success
    try:
        assert bad_addresses(apart, "peers") == peer_lists + 1
        assert apart.nodes_of("a") == [A, FAKE]  # x is in, the peer it named with a bad address is not tried
        assert not any("connect failed" in line and "y@localhost" in line for line in apart.node("a").lines)
    finally:
        call(apart, "DELETE", f"/api/nodes/{FAKE}")
    record("bad peer addresses", hello=400, peer_list="ignored and counted", api=400)
