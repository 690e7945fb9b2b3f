"""Serve a node with Hypercorn until SIGTERM or Ctrl-C, then drain and exit."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config

from shared import console, deflate, logs
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


async def serve_node(chat: ChatNode, sock: socket.socket, console_sock: socket.socket | None = None) -> None:
    await chat.claim()
    app = create_app(chat)
    if console_sock is not None:
        chat.spawn(console.serve(chat, console_sock))  # for the node's lifetime: its stop ends it
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


def load_settings(settings_class: type[Settings], env: dict[str, str], **stage_defaults: object) -> Settings:
    """The node's settings; a REDIS_URL left over for a node that keeps everything in
    memory is refused rather than ignored, so a learner knows which stage they started."""
    if env.get("REDIS_URL", "").strip() and "redis_url" not in settings_class.__dataclass_fields__:
        raise ConfigError("REDIS_URL", "stage 1 keeps everything in memory; unset it or run python -m stage2_cluster")
    return settings_class.from_env(env, **stage_defaults)


def main(node_class: type[ChatNode], env: dict[str, str], **stage_defaults: object) -> None:
    """The `python -m stageN` entry point: settings, logs, uvloop where available, serve."""
    try:
        settings = load_settings(node_class.settings_class, env, **stage_defaults)
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
        logs.event(log, f"cannot serve on {settings.host}:{settings.port}: {error.strerror}", level=logging.ERROR)
        raise SystemExit(1) from None
    try:
        console_sock = console.listen(settings.console_port)
    except OSError as error:
        sock.close()
        where = f"{console.HOST}:{settings.console_port}"
        logs.event(log, f"cannot serve the console on {where}: {error.strerror}", level=logging.ERROR)
        raise SystemExit(1) from None
    # Hypercorn owns `sock` from here and closes it; the console's server closes its own.
    try:
        runner(serve_node(node_class(settings), sock, console_sock))
    except ConfigError as error:  # found out before serving: a name a live node holds
        sys.stderr.write(f"config error: {error}\n")
        raise SystemExit(2) from None
