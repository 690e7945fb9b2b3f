"""Serve a node with Hypercorn until SIGTERM or Ctrl-C, then drain and exit."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable

from hypercorn.asyncio import serve
from hypercorn.config import Config

from shared import deflate, logs
from shared.app import create_app
from shared.node import ChatNode
from shared.protocol import MAX_FRAME_BYTES
from shared.settings import ConfigError, Settings

log = logs.get("server")


def listen(settings: Settings) -> socket.socket:
    """Bind and listen before the app starts, so a busy port fails first and "node ready"
    is only logged once connections are accepted (Hypercorn binds after startup)."""
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def hypercorn_config() -> Config:
    deflate.install()  # a compressed message is bounded while it inflates
    config = Config()
    config.backlog = 1024
    config.websocket_max_message_size = MAX_FRAME_BYTES  # Hypercorn closes with 1009 past it
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # our handler and format
    config.graceful_timeout = 5
    config.h11_max_incomplete_size = 16 * 1024  # request line + headers
    config.keep_alive_timeout = 5
    return config


async def serve_node(chat: ChatNode, sock: socket.socket) -> None:
    app = create_app(chat)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def shutdown_trigger() -> None:
        await stop.wait()
        logs.event(log, "shutting down: draining sockets")
        await chat.drain()

    config = hypercorn_config()
    config.bind = [f"fd://{sock.fileno()}"]  # the socket `listen()` bound
    await serve(app, config, shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type]


def load_settings(env: dict[str, str], *, clustered: bool, **stage_defaults: object) -> Settings:
    """Settings for a stage: stage 1 runs alone in memory, stages 2 and 3 need Redis."""
    if not clustered:  # before the full parse, whose first complaint would be a missing cookie
        if env.get("REDIS_URL", "").strip():
            raise ConfigError(
                "REDIS_URL", "stage 1 keeps everything in memory; unset it or run python -m stage2_cluster"
            )
        if env.get("DISCOVERY", "").strip() not in ("", "none"):
            raise ConfigError("DISCOVERY", "stage 1 is a single node; unset it or run python -m stage2_cluster")
    settings = Settings.from_env(env, **stage_defaults)
    if clustered and settings.redis_url is None:
        raise ConfigError("REDIS_URL", "required for a clustered node, e.g. redis://127.0.0.1:6379/0")
    return settings


def main(
    make_node: Callable[[Settings], ChatNode], env: dict[str, str], *, clustered: bool, **stage_defaults: object
) -> None:
    """The `python -m stageN` entry point: settings, logs, uvloop where available, serve."""
    try:
        settings = load_settings(env, clustered=clustered, **stage_defaults)
    except ConfigError as error:
        sys.stderr.write(f"config error: {error}\n")
        raise SystemExit(2) from None
    logs.configure(settings.node_name)
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        sock = listen(settings)
    except OSError as error:
        logs.event(log, f"cannot serve on {settings.host}:{settings.port}: {error.strerror}", level=40)
        raise SystemExit(1) from None
    runner(serve_node(make_node(settings), sock))  # Hypercorn owns the socket from here and closes it
