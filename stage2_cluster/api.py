"""The node API: `Node.list`, `Node.connect`, `Node.disconnect` and drain over HTTP.

`/api/...` is for people and `chatctl`, and needs `Authorization: Bearer <cookie>`
(except the read-only node list). `/cluster/...` is the node-to-node handshake; it
needs no header because each step carries a proof of the cookie (handshake.py).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, Protocol, runtime_checkable

import orjson
from quart import Blueprint, Response, jsonify, request

from shared import app, logs
from shared.app import error
from shared.settings import NODE_NAME_RE
from stage2_cluster.handshake import ConnectError, Handshake
from stage2_cluster.settings import ClusterSettings

bp = Blueprint("cluster", __name__)
log = logs.get("api")


@runtime_checkable
class ClusteredNode(Protocol):
    """What the node API uses of the node it serves: stage2_cluster/node.py's ClusterNode,
    which imports this module for its blueprint, so this module names its needs instead."""

    @property
    def settings(self) -> ClusterSettings: ...

    @property
    def handshake(self) -> Handshake: ...

    @property
    def name(self) -> str: ...

    def nodes(self) -> list[str]: ...

    async def drain(self) -> int: ...


def node() -> ClusteredNode:
    """The node the current app serves, checked to be a clustered one."""
    # Typed `object`: a ChatNode's `settings` can be set to any Settings, so mypy would
    # deem a ChatNode that matches ClusteredNode impossible.
    chat: object = app.node()
    if not isinstance(chat, ClusteredNode):
        raise TypeError(f"the node API is served by a {type(chat).__name__}, not a clustered node")
    return chat


def needs_cookie(view: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    @wraps(view)
    async def guarded(*args: Any, **kwargs: Any) -> Response:
        cookie = node().settings.cluster_cookie or ""
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not token or not hmac.compare_digest(token.encode(), cookie.encode()):
            log.warning("node API refused: missing or wrong cookie", path=request.path)
            return error(401, "missing or wrong cluster cookie (Authorization: Bearer <CLUSTER_COOKIE>)")
        return await view(*args, **kwargs)

    return guarded


async def json_body() -> dict[str, Any]:
    # Parsed here rather than by request.get_json(silent=True), which still raises (a 500)
    # on a body that is not UTF-8.
    try:
        body = orjson.loads(await request.get_data(cache=True))
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise ConnectError(400, "body must be a JSON object")
    return body


def view_of_nodes() -> Response:
    chat = node()
    return jsonify({"self": chat.name, "nodes": chat.nodes()})


@bp.errorhandler(ConnectError)
async def connect_error(exc: ConnectError) -> Response:
    return error(exc.status, str(exc))


@bp.post("/api/nodes/connect")
@needs_cookie
async def connect() -> Response:
    body = await json_body()
    name, address = body.get("node"), body.get("address")
    if not isinstance(name, str) or not NODE_NAME_RE.fullmatch(name):
        raise ConnectError(400, 'body needs "node": "name@host"')
    if address is not None and not node().handshake.accept_address(address, "api"):
        raise ConnectError(400, '"address" must be "host:port"')
    await node().handshake.connect(name, address)
    return view_of_nodes()


@bp.delete("/api/nodes/<name>")
@needs_cookie
async def disconnect(name: str) -> Response:
    if not await node().handshake.disconnect(name):
        raise ConnectError(404, f"not connected to {name[:100]}")
    return view_of_nodes()


@bp.post("/api/drain")
@needs_cookie
async def drain() -> Response:
    closed = await node().drain()
    return jsonify({"draining": True, "closed_sockets": closed})


@bp.post("/cluster/hello")
async def hello() -> Response:
    return jsonify(node().handshake.on_hello(await json_body()))


@bp.post("/cluster/confirm")
async def confirm() -> Response:
    return jsonify(await node().handshake.on_confirm(await json_body()))


@bp.post("/cluster/goodbye")
async def goodbye() -> Response:
    await node().handshake.on_goodbye(await json_body())
    return jsonify({"ok": True})
