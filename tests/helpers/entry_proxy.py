"""A stand-in for stage 3's public entry point on loopback: a reverse proxy in front of
nodes that routes as the cluster's Gateway does, from the rendered manifests.

cloud-provider-kind (v0.11.1, pkg/gateway) turns a Gateway and its HTTPRoute into Envoy
configuration: the virtual host's domains are the intersection of the listener's and the
route's hostnames (`*` when neither names one), and Envoy matches the Host header against
them as it is, port included (Envoy's FAQ, "Why is my route not found?"). A request whose
Host, method or path matches nothing gets 404. This proxy does the same, then passes the request,
WebSocket upgrades included, to the next node in turn:

    with EntryProxy.for_route(gateway, route, backends) as proxy:
        urlopen(f"http://127.0.0.1:{proxy.port}/")  # Host 127.0.0.1:<port>: 404 unless the domain is `*`

Every request is checked, not only a connection's first: the proxy asks the node to close
each connection after its answer (`Connection: close`), so a browser opens a new one for
the next request. `requests` records what came in (method, path, headers), as sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stage3_k8s.deploy.config import OVERLAYS
from stage3_k8s.deploy.resources import tagged_overlay

HEAD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    status: int  # 0: passed to a node; else what the proxy answered itself


def kind_route(patches: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Gateway and HTTPRoute `make stage3` applies on kind with these run-time patches,
    rendered by the virtualenv's kubectl (the kustomize `up` uses)."""
    with tagged_overlay(OVERLAYS / "kind", "0.1.0-0123456789ab", patches=patches) as workdir:
        text = subprocess.run(
            [Path(sys.executable).parent / "kubectl", "kustomize", workdir],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all(text) if doc}
    return docs["Gateway"], docs["HTTPRoute"]


def envoy_domains(gateway: dict[str, Any], route: dict[str, Any]) -> list[str]:
    """cloud-provider-kind's getIntersectingHostnames for the route's listener (exact names only)."""
    (listener,) = [
        listener
        for listener in gateway["spec"]["listeners"]
        if listener["name"] in {parent.get("sectionName", listener["name"]) for parent in route["spec"]["parentRefs"]}
    ]
    listening, hostnames = listener.get("hostname"), route["spec"].get("hostnames", [])
    if not listening:
        return list(hostnames) or ["*"]
    if not hostnames:
        return [listening]
    return [name for name in hostnames if name == listening]


def route_matches(route: dict[str, Any]) -> list[tuple[str | None, str, str]]:
    """(method or None for any, path match type, path) of every match of the route's rules."""
    return [
        (match.get("method"), match["path"]["type"], match["path"]["value"])
        for rule in route["spec"]["rules"]
        for match in rule["matches"]
    ]


def request_matches(method: str, target: str, matches: Sequence[tuple[str | None, str, str]]) -> bool:
    """Gateway API matching: the method when one is named; the path Exact, or PathPrefix by whole
    path elements; the query is not part of the path."""
    path = target.split("?", 1)[0]
    for wanted, kind, value in matches:
        if wanted is not None and wanted != method:
            continue
        if kind == "Exact" and path == value:
            return True
        if kind == "PathPrefix" and (path == value or path.startswith(value.rstrip("/") + "/")):
            return True
    return False


@dataclass
class EntryProxy:
    backends: Sequence[tuple[str, int]]
    domains: Sequence[str]
    matches: Sequence[tuple[str | None, str, str]]
    port: int = 0
    requests: list[Seen] = field(default_factory=list)

    @classmethod
    def for_route(
        cls, gateway: dict[str, Any], route: dict[str, Any], backends: Sequence[tuple[str, int]]
    ) -> EntryProxy:
        return cls(backends, envoy_domains(gateway, route), route_matches(route))

    def __post_init__(self) -> None:
        self._next = itertools.cycle(range(len(self.backends)))
        self._open: set[asyncio.StreamWriter] = set()  # both ends of every connection in progress

    def __enter__(self) -> EntryProxy:
        """Serve on a free port of 127.0.0.1, from a thread of its own, until the block ends."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="entry-proxy", daemon=True)
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop)
        self._server = future.result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            # Closing both ends of every open connection ends its handler by itself.
            self._server.close()
            for writer in tuple(self._open):
                writer.close()
            handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if handlers:
                await asyncio.wait(handlers, timeout=5)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def host_matches(self, host: str) -> bool:
        return "*" in self.domains or host.lower() in self.domains

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = [*lines[0].split(" ", 2), "", ""][:3]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            allowed = self.host_matches(headers.get("host", "")) and request_matches(method, path, self.matches)
            self.requests.append(Seen(method, path, headers, 0 if allowed else 404))
            if not allowed:
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                await writer.drain()
                return
            await self._pass(head, headers, reader, writer)
        finally:
            self._open.discard(writer)
            with contextlib.suppress(OSError):
                writer.close()

    async def _pass(
        self, head: bytes, headers: dict[str, str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if headers.get("upgrade", "").lower() != "websocket":
            kept = [line for line in head.split(b"\r\n")[:-2] if not line.lower().startswith(b"connection:")]
            head = b"\r\n".join([*kept, b"Connection: close", b"", b""])
        backend = self.backends[next(self._next)]
        try:
            up_reader, up_writer = await asyncio.open_connection(*backend)
        except OSError:
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            return
        self._open.add(up_writer)
        up_writer.write(head)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            with contextlib.suppress(OSError):
                sink.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._open.discard(up_writer)
            with contextlib.suppress(OSError):
                up_writer.close()
