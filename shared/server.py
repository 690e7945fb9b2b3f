"""Serve a node with Hypercorn until SIGTERM or Ctrl-C, then drain and exit."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import signal
import socket
import sys
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.protocol import ws_stream

from shared import console, deflate, logs
from shared.app import create_app
from shared.node import ChatNode
from shared.protocol import MAX_FRAME_BYTES
from shared.settings import ConfigError, Settings

log = logs.get("server")

# Headers Hypercorn's handshake and wsproto split and parse, and what they accept without
# raising: printable ASCII only, and a deflate window size of one or two digits.
PARSED_HEADERS = (b"connection", b"sec-websocket-extensions", b"sec-websocket-protocol")
WINDOW_BITS_RE = re.compile(rb"\s*(client|server)_max_window_bits\s*(=\s*[0-9]{1,2}\s*)?")
REFUSAL_LOG_EVERY = 1.0  # seconds: a client repeating a bad upgrade costs one line a second
# Younger collections between two full ones: Python's default is 10 (docs/benchmarks.md, GC).
FULL_COLLECTION_EVERY = 100


def header_problem(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why Hypercorn or wsproto would raise on these upgrade headers, else None.

    Both parse before the app sees the upgrade: Hypercorn decodes the comma lists as ASCII
    (a UnicodeDecodeError reaches the event loop's handler as a traceback), and wsproto
    reads a deflate window size with int() when the app accepts (a ValueError in the
    app's send). Checked here, such an upgrade is answered 400 instead."""
    for name, value in headers:
        name = name.lower()
        if name not in PARSED_HEADERS:
            continue
        if not all(0x20 <= byte < 0x7F or byte == 0x09 for byte in value):
            return f"{name.decode()} is not printable ASCII"
        if name == b"sec-websocket-extensions":
            for offer in value.split(b","):
                extension, *params = offer.split(b";")
                if extension.strip() != b"permessage-deflate":
                    continue
                for param in params:
                    if b"max_window_bits" in param and not WINDOW_BITS_RE.fullmatch(param):
                        return "a permessage-deflate window size is not a number"
    return None


class CheckedHandshake(ws_stream.Handshake):
    """Hypercorn's handshake, answering 400 to headers it would raise on (`header_problem`)."""

    refusals = logs.Every(REFUSAL_LOG_EVERY)

    def __init__(self, headers: list[tuple[bytes, bytes]], http_version: str) -> None:
        self.problem = header_problem(headers)
        super().__init__(headers if self.problem is None else [], http_version)
        if self.problem is not None and (count := self.refusals.due()):
            log.info("websocket refused: malformed handshake header", reason=self.problem, refused=count)

    def is_valid(self) -> bool:
        return self.problem is None and super().is_valid()


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
    ws_stream.Handshake = CheckedHandshake  # type: ignore[misc]  # headers it would raise on get 400
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
    loop.set_exception_handler(logs.loop_exception)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def shutdown_trigger() -> None:
        await stop.wait()
        log.info("shutting down: draining sockets")
        await chat.drain()

    config = hypercorn_config()
    config.bind = [f"fd://{sock.fileno()}"]  # the socket `listen()` bound
    await serve(app, config, shutdown_trigger=shutdown_trigger)


def load_settings(settings_class: type[Settings], env: dict[str, str], **stage_defaults: Any) -> Settings:
    """The node's settings; a REDIS_URL left over for a node that keeps everything in
    memory is refused rather than ignored, so a learner knows which stage they started."""
    if env.get("REDIS_URL", "").strip() and "redis_url" not in settings_class.__dataclass_fields__:
        raise ConfigError("REDIS_URL", "stage 1 keeps everything in memory; unset it or run python -m stage2_cluster")
    return settings_class.from_env(env, **stage_defaults)


def tune_gc() -> None:
    """Fewer full collections. A node's heap is mostly its connections (about 120 objects
    the cyclic collector tracks per socket, most of them Hypercorn's and asyncio's), and a
    full collection walks every one while nothing else runs: 0.6 s at 15,000 sockets.
    Python runs one whenever the oldest generation has grown by a quarter and ten younger
    collections have passed, so a join storm of 10,000 ran about ten; with a hundred it
    runs one or two, and garbage with cycles still goes within a hundred younger
    collections. What was loaded at start-up is never garbage: frozen, no collection
    walks it again."""
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


def main(node_class: type[ChatNode], env: dict[str, str], **stage_defaults: Any) -> None:
    """The `python -m stageN` entry point: settings, logs, uvloop where available, serve."""
    try:
        settings = load_settings(node_class.settings_class, env, **stage_defaults)
    except ConfigError as error:
        sys.stderr.write(f"config error: {error}\n")
        raise SystemExit(2) from None
    logs.configure(settings.node_name)
    tune_gc()
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        sock = listen(settings)
    except OSError as error:
        log.error(f"cannot serve on {settings.host}:{settings.port}: {error.strerror}")
        raise SystemExit(1) from None
    try:
        console_sock = console.listen(settings.console_port)
    except OSError as error:
        sock.close()
        where = f"{console.HOST}:{settings.console_port}"
        log.error(f"cannot serve the console on {where}: {error.strerror}")
        raise SystemExit(1) from None
    # Hypercorn owns `sock` from here and closes it; the console's server closes its own.
    try:
        runner(serve_node(node_class(settings), sock, console_sock))
    except ConfigError as error:  # found out before serving: a name a live node holds
        sys.stderr.write(f"config error: {error}\n")
        raise SystemExit(2) from None
