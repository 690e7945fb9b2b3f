"""The Quart app factory and the chat routes every stage serves; the socket itself is
served in front of them (endpoint.py)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from quart import Blueprint, Quart, Response, current_app, jsonify, render_template
from quart.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from shared import logs
from shared.endpoint import SocketEndpoint
from shared.node import ChatNode

MAX_BODY_BYTES = 64 * 1024
BODY_TIMEOUT = 10.0  # seconds for a request body to arrive (Quart's default, 60, lets a stalled body hold on)

bp = Blueprint("chat", __name__)
log = logs.get("app")
NODE_KEY = "chat"  # app.extensions[NODE_KEY]: the node the app serves


def node() -> ChatNode:
    """The node the current app serves. app.extensions holds anything, so its class is
    checked here, and the type checker can trust what this returns (aiohttp's typed
    `AppKey` does the same)."""
    chat = current_app.extensions[NODE_KEY]
    if not isinstance(chat, ChatNode):
        raise TypeError(f"app.extensions[{NODE_KEY!r}] is a {type(chat).__name__}, not a ChatNode")
    return chat


def error(status: int, message: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response


@bp.get("/")
async def index() -> str:
    chat = node()
    return await render_template("index.html", node=chat.name, nodes=chat.nodes(), redis=chat.broker.status)


@bp.get("/healthz")
async def healthz() -> Response:
    return jsonify({"status": "ok", "node": node().name})


@bp.get("/readyz")
async def readyz() -> Response:
    chat = node()
    response = jsonify({"ready": chat.ready, "draining": chat.draining, "redis": chat.broker.status})
    response.status_code = 200 if chat.ready else 503
    return response


@bp.get("/metrics")
async def metrics() -> Response:
    chat = node()
    chat.metrics.cluster_nodes.set(len(chat.nodes()))
    chat.metrics.redis_up.set(1 if chat.broker.available else 0)
    return Response(chat.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")


@bp.get("/api/nodes")
async def api_nodes() -> Response:
    chat = node()
    return jsonify({"self": chat.name, "nodes": chat.nodes()})


def create_app(chat: ChatNode) -> Quart:
    app = Quart(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT
    provider = DefaultJSONProvider(app)  # app.json, under the class that has the options
    provider.sort_keys = False  # {"self": .., "nodes": ..} reads best in that order
    app.json = provider
    app.extensions[NODE_KEY] = chat
    app.asgi_app = SocketEndpoint(app.asgi_app, chat)  # type: ignore[method-assign]  # Quart's documented middleware hook
    app.register_blueprint(bp)
    for blueprint in chat.blueprints:
        app.register_blueprint(blueprint)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        response = error(exc.code or 500, exc.description or exc.name)
        for name, value in exc.get_headers():  # e.g. the Allow header a 405 must carry
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.while_serving
    async def lifetime() -> AsyncGenerator[None]:
        await chat.start()
        log.info("node ready", port=chat.settings.port, host=chat.settings.host)
        yield
        await chat.stop()
        log.info("node stopped")

    return app
