"""The checks `up` ends with: pods that talk to each other, and http://test.com through the entry point."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import secrets
import socket
import subprocess
import tempfile
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from websockets.exceptions import InvalidStatus, WebSocketException

from shared.client import LOBBY, JoinError, PhoenixClient
from shared.endpoint import PATH
from stage3_k8s.deploy.clusters import Cluster
from stage3_k8s.deploy.config import ENTRY_DEADLINE, HOST_NAME, MESSAGE_DEADLINE, NAMESPACE, PORT
from stage3_k8s.deploy.pods import Pod
from stage3_k8s.deploy.shell import StepFailed, say, shown, wait_until

T = TypeVar("T")


def browser_host(port: int, name: str = HOST_NAME) -> str:
    """The Host header a browser sends for http://name:port/: the port only when it is not 80."""
    return name if port == 80 else f"{name}:{port}"


def browser_socket(address: tuple[str, int], host: str, deadline: float = MESSAGE_DEADLINE) -> PhoenixClient:
    """A client that sends what a browser's page at http://host/ sends: that Host (reached at
    `address`), and the page's Origin."""
    return PhoenixClient(f"ws://{host}{PATH}?vsn=2.0.0", timeout=deadline, origin=f"http://{host}", address=address)


def over_websocket(host: str, exchange: Coroutine[Any, Any, T], deadline: float = MESSAGE_DEADLINE) -> T:
    """Run one check's WebSocket exchange to its end, within `deadline` seconds; what goes wrong
    on the way is a StepFailed that says what."""
    try:
        return asyncio.run(asyncio.wait_for(exchange, deadline))
    except InvalidStatus as refused:
        status = refused.response.status_code
        raise StepFailed(f"the WebSocket upgrade via {host} was refused with HTTP {status}") from refused
    except JoinError as refused:
        raise StepFailed(f"via {host}: {refused}") from refused
    except TimeoutError as late:
        raise StepFailed(f"no answer on the WebSocket via {host} in time") from late
    except (OSError, WebSocketException) as failed:  # refused, cut, or closed before the answer
        raise StepFailed(f"the WebSocket via {host} failed: {failed}") from failed


def exchange_message(sender: tuple[str, int], receiver: tuple[str, int], body: str) -> dict[str, Any]:
    """Join rooms:lobby on both, push new:msg on the sender, return it as the receiver got it."""

    async def exchange() -> dict[str, Any]:
        async with (
            browser_socket(sender, f"127.0.0.1:{sender[1]}") as a,
            browser_socket(receiver, f"127.0.0.1:{receiver[1]}") as b,
        ):
            await a.join(LOBBY, {"user": "make stage3"})
            await b.join(LOBBY, {"user": "make stage3 (listening)"})
            await a.send(LOBBY, "new:msg", {"user": "make stage3", "body": body})
            return (await b.wait_for_message(body)).payload

    return over_websocket(f"127.0.0.1:{sender[1]} and 127.0.0.1:{receiver[1]}", exchange())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def port_forward(
    cluster: Cluster, target: str, remote: int = PORT, namespace: str = NAMESPACE, deadline: float = 20.0
) -> Iterator[int]:
    """`kubectl port-forward` to `target` (pod/NAME, service/NAME) on a free local port, ended (by its
    PID) on the way out. A dry run prints it and gives port 0."""
    port = 0 if cluster.shell.dry_run else free_port()
    cmd = cluster.kubectl(
        "port-forward", "--address", "127.0.0.1", target, f"{port or '<port>'}:{remote}", namespace=namespace
    )
    say("+ " + shown(cmd) + "  # in the background, until the check ends")
    if cluster.shell.dry_run:
        yield port
        return
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            end = time.monotonic() + deadline
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise StepFailed(f"kubectl port-forward to {target} ended: {log.read().strip()}")
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
                if time.monotonic() > end:
                    raise StepFailed(f"kubectl port-forward to {target}: no listener after {deadline:.0f}s")
                time.sleep(0.2)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def prove_message_crosses(cluster: Cluster, pods: list[Pod]) -> None:
    if cluster.shell.dry_run:
        with port_forward(cluster, "pod/<pod-1>"), port_forward(cluster, "pod/<pod-2>"):
            say("  # then over WebSocket: both join rooms:lobby, pod 1 gets new:msg, pod 2 must deliver it")
        return
    if len(pods) < 2:
        raise StepFailed(f"need two chat pods to prove they talk, found {len(pods)}")
    first, second = pods[0], pods[1]
    with port_forward(cluster, f"pod/{first.name}") as port_a, port_forward(cluster, f"pod/{second.name}") as port_b:
        body = f"hello from {first.node} to {second.node} ({secrets.token_hex(3)})"
        got = exchange_message(("127.0.0.1", port_a), ("127.0.0.1", port_b), body)
    if got.get("node") != first.node:
        raise StepFailed(f"the message came back from {got.get('node')}, expected {first.node}")
    say(f"    {first.name} ({first.node}) -> {second.name} ({second.node}): {body!r} delivered")


def http_get(address: tuple[str, int], path: str, host: str = HOST_NAME, method: str = "GET") -> tuple[int, bytes]:
    """`method path` as a browser's address bar or fetch() sends it: Host as typed (port included), no Origin."""
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request(method, path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def http_status(address: tuple[str, int], path: str, host: str = HOST_NAME, method: str = "GET") -> int:
    return http_get(address, path, host, method)[0]


# What the entry point must not pass on: the node API's state-changing calls, the node-to-node
# handshake and the metrics (each would answer 401, 405 or 200 if it reached a node).
PRIVATE = (("POST", "/api/drain"), ("POST", "/api/nodes/connect"), ("POST", "/cluster/hello"), ("GET", "/metrics"))


def prove_entry(cluster: Cluster) -> tuple[str, int]:
    """What a learner's browser does at http://test.com[:port]: the page, the live navbar's
    GET /api/nodes and /readyz, then a WebSocket join, each with the Host the browser sends
    (the port included when it is not 80) and, for the socket, the page's Origin. The rest
    of the node API and /metrics are not routed from outside: 404 there.

    Where this machine cannot reach the entry point without help (minikube off Linux, whose
    tunnel asks for a password), the check goes through a port-forward to the entry point's
    controller, and then says whether the learner's tunnel answers."""
    forward = cluster.entry_forward()
    if forward is None:
        address = cluster.entry()
        check_entry(cluster, address)
        return address
    namespace, target, remote = forward
    with port_forward(cluster, target, remote, namespace) as port:
        check_entry(cluster, ("127.0.0.1", port))
    address = cluster.entry()
    if cluster.shell.dry_run:
        return address
    try:
        tunnel = f"answers {http_status(address, '/', browser_host(address[1]))}"
    except OSError as error:
        tunnel = f"does not answer ({error})"
    say(f"    http://{browser_host(address[1])} through the tunnel on {address[0]}:{address[1]}: {tunnel}")
    return address


def check_entry(cluster: Cluster, address: tuple[str, int]) -> None:
    where = f"{address[0]}:{address[1] or '<port>'}"
    host = browser_host(address[1]) if address[1] else f"{HOST_NAME}:<port>"
    say(
        f"  # GET http://{where}/, /api/nodes and /readyz with Host: {host}; then a WebSocket join on"
        f" /socket/websocket; {', '.join(f'{m} {p}' for m, p in PRIVATE)} must answer 404"
    )
    if cluster.shell.dry_run:
        return
    seen = ""

    def page() -> tuple[bool, str]:
        nonlocal seen
        try:
            seen = f"GET / answered {http_status(address, '/', host)}"
        except OSError as error:
            seen = f"GET / failed: {error}"
        return seen.endswith(" 200"), seen

    try:
        wait_until(f"http://{host} via {where}", page, ENTRY_DEADLINE)
    except StepFailed:
        cluster.diagnose_entry()
        raise
    status, body = http_get(address, "/api/nodes", host)
    nodes = json.loads(body).get("nodes") if status == 200 else None
    if not isinstance(nodes, list) or not nodes:
        raise StepFailed(f"GET /api/nodes answered {status} through the entry point: the navbar's `nodes:` stays stale")
    ready = http_status(address, "/readyz", host)
    if ready != 200:
        raise StepFailed(f"GET /readyz answered {ready} through the entry point: the navbar's `redis:` stays stale")
    for method, path in PRIVATE:
        answer = http_status(address, path, host, method)
        if answer != 404:
            raise StepFailed(f"{method} {path} answered {answer} through the entry point: it must not be routed")

    async def join() -> None:
        async with browser_socket(address, host) as client:
            await client.join(LOBBY, {"user": "make stage3 (entry point)"})

    over_websocket(host, join())
    say(
        f"    http://{host} via {where}: page 200, /api/nodes lists {len(nodes)}, /readyz 200,"
        " the node API's calls 404, WebSocket joined rooms:lobby"
    )
