"""The checks `up` ends with: pods that talk to each other, and http://test.com through the entry point."""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import secrets
import shlex
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import wsproto
import wsproto.events as ws_events
import wsproto.utilities

from stage3_k8s.deploy.clusters import Cluster
from stage3_k8s.deploy.config import ENTRY_DEADLINE, HOST_NAME, MESSAGE_DEADLINE, PORT
from stage3_k8s.deploy.pods import Pod
from stage3_k8s.deploy.shell import StepFailed, say, wait_until


def browser_host(port: int, name: str = HOST_NAME) -> str:
    """The Host header a browser sends for http://name:port/: the port only when it is not 80."""
    return name if port == 80 else f"{name}:{port}"


class ProofSocket:
    """The deploy tool's own Phoenix client: one TCP connection spoken with wsproto (from the
    runtime dependencies, which Hypercorn brings), enough to join a room and send and read
    frames. It sends what a browser's page sends: the Host it was opened with, and the Origin."""

    def __init__(self, address: tuple[str, int], host: str, deadline: float = MESSAGE_DEADLINE) -> None:
        self.end = time.monotonic() + deadline
        self.sock = socket.create_connection(address, timeout=deadline)
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.events: collections.deque[ws_events.Event] = collections.deque()
        self.refs = 0
        request = ws_events.Request(
            host=host, target="/socket/websocket?vsn=2.0.0", extra_headers=[(b"origin", f"http://{host}".encode())]
        )
        self.sock.sendall(self.ws.send(request))
        while True:
            event = self.next_event()
            if isinstance(event, ws_events.AcceptConnection):
                return
            if isinstance(event, ws_events.RejectConnection):
                raise StepFailed(f"the WebSocket upgrade via {host} was refused with HTTP {event.status_code}")

    def next_event(self) -> ws_events.Event:
        while not self.events:
            left = self.end - time.monotonic()
            if left <= 0:
                raise StepFailed("no answer on the WebSocket in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError as error:
                raise StepFailed("no answer on the WebSocket in time") from error
            if not data:
                raise StepFailed("the WebSocket connection was closed")
            self.ws.receive_data(data)
            self.events.extend(self.ws.events())
        return self.events.popleft()

    def push(self, topic: str, event: str, payload: dict[str, Any]) -> str:
        self.refs += 1
        ref = str(self.refs)
        frame = json.dumps(["1", ref, topic, event, payload])
        self.sock.sendall(self.ws.send(ws_events.Message(data=frame)))
        return ref

    def frame(self, match: Callable[[list[Any]], bool]) -> list[Any]:
        text = ""
        while True:
            event = self.next_event()
            if isinstance(event, ws_events.TextMessage):
                text += event.data
                if event.message_finished:
                    item, text = json.loads(text), ""
                    if match(item):
                        return item
            elif isinstance(event, ws_events.Ping):
                self.sock.sendall(self.ws.send(event.response()))
            elif isinstance(event, ws_events.CloseConnection):
                raise StepFailed(f"the WebSocket was closed with {event.code}: {event.reason}")

    def join(self, topic: str, user: str) -> None:
        ref = self.push(topic, "phx_join", {"user": user})
        reply = self.frame(lambda f: f[1] == ref and f[3] == "phx_reply")
        if reply[4].get("status") != "ok":
            raise StepFailed(f"joining {topic} failed: {reply[4]}")

    def close(self) -> None:
        with contextlib.suppress(OSError, wsproto.utilities.LocalProtocolError):
            self.sock.sendall(self.ws.send(ws_events.CloseConnection(code=1000)))
        self.sock.close()


def exchange_message(sender: tuple[str, int], receiver: tuple[str, int], body: str) -> dict[str, Any]:
    """Join rooms:lobby on both, push new:msg on the sender, return it as the receiver got it."""
    a = ProofSocket(sender, f"127.0.0.1:{sender[1]}")
    try:
        b = ProofSocket(receiver, f"127.0.0.1:{receiver[1]}")
        try:
            a.join("rooms:lobby", "make stage3")
            b.join("rooms:lobby", "make stage3 (listening)")
            a.push("rooms:lobby", "new:msg", {"user": "make stage3", "body": body})
            return b.frame(lambda f: f[3] == "new:msg" and f[4].get("body") == body)[4]
        finally:
            b.close()
    finally:
        a.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def port_forward(cluster: Cluster, pod: Pod, deadline: float = 20.0) -> Iterator[int]:
    """`kubectl port-forward` to one pod on a free local port, ended (by its PID) on the way out."""
    port = free_port()
    cmd = cluster.kubectl("port-forward", "--address", "127.0.0.1", f"pod/{pod.name}", f"{port}:{PORT}")
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            end = time.monotonic() + deadline
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise StepFailed(f"kubectl port-forward to {pod.name} ended: {log.read().strip()}")
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
                if time.monotonic() > end:
                    raise StepFailed(f"kubectl port-forward to {pod.name}: no listener after {deadline:.0f}s")
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
        for index in (1, 2):
            forward = cluster.kubectl("port-forward", "--address", "127.0.0.1", f"pod/<pod-{index}>", f"<port>:{PORT}")
            say("+ " + shlex.join(forward))
        say("  # then over WebSocket: both join rooms:lobby, pod 1 gets new:msg, pod 2 must deliver it")
        return
    if len(pods) < 2:
        raise StepFailed(f"need two chat pods to prove they talk, found {len(pods)}")
    first, second = pods[0], pods[1]
    with port_forward(cluster, first) as port_a, port_forward(cluster, second) as port_b:
        body = f"hello from {first.node} to {second.node} ({secrets.token_hex(3)})"
        got = exchange_message(("127.0.0.1", port_a), ("127.0.0.1", port_b), body)
    if got.get("node") != first.node:
        raise StepFailed(f"the message came back from {got.get('node')}, expected {first.node}")
    say(f"    {first.name} ({first.node}) -> {second.name} ({second.node}): {body!r} delivered")


def http_status(address: tuple[str, int], path: str, host: str = HOST_NAME) -> int:
    """GET `path` as a browser's address bar does: Host as typed (port included), no Origin."""
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": host})
        return connection.getresponse().status
    finally:
        connection.close()


def prove_entry(cluster: Cluster) -> tuple[str, int]:
    """What a learner's browser does at http://test.com[:port]: the page, then a WebSocket join, each
    with the Host the browser sends (the port included when it is not 80) and, for the socket, the
    page's Origin. The node API is not routed from outside: /api/nodes answers 404 there."""
    address = cluster.entry()
    where = f"{address[0]}:{address[1]}"
    host = browser_host(address[1])
    say(f"  # GET http://{where}/ and /api/nodes with Host: {host}; then a WebSocket join on /socket/websocket")
    if cluster.shell.dry_run:
        return address
    seen = ""

    def page() -> tuple[bool, str]:
        nonlocal seen
        try:
            seen = f"GET / answered {http_status(address, '/', host)}"
        except OSError as error:
            seen = f"GET / failed: {error}"
        return seen.endswith(" 200"), seen

    wait_until(f"http://{host} via {where}", page, ENTRY_DEADLINE)
    hidden = http_status(address, "/api/nodes", host)
    if hidden != 404:
        raise StepFailed(f"/api/nodes answered {hidden} through the entry point: the node API must not be routed")
    joined = ProofSocket(address, host)
    try:
        joined.join("rooms:lobby", "make stage3 (entry point)")
    finally:
        joined.close()
    say(f"    http://{host} via {where}: page 200, /api/nodes 404, WebSocket joined rooms:lobby")
    return address
