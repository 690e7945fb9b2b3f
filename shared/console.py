"""The remote console: this port's `iex --remsh`.

With CONSOLE_PORT set, a node serves a Python REPL inside its own process, on 127.0.0.1
only: `chatctl console` attaches to it. What is typed there runs in the node's event loop,
beside the sockets it serves, so `await` works at the prompt and the live objects are at
hand (`ChatNode.console_namespace`: node, hub, cluster, node_list(), ...). The REPL is
aioconsole's (its AsynchronousConsole, served on our own socket); aiomonitor, the other
well-kept choice, runs that same console behind a telnet server and a web UI (aiohttp).

Anyone on the machine can reach 127.0.0.1, so a node with a cluster cookie (stages 2 and
3) first asks for it: the session opens with the prompt `cookie: `, and a wrong, late or
overlong answer closes it with one line, having evaluated nothing.

Every prompt comes wrapped in PROMPT_MARK (aioconsole's `prompt_control`), so that a client
tells prompts from replies: `chatctl console` shows them at a terminal and leaves them out
when its input is piped.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import socket
import sys
from typing import TYPE_CHECKING

from aioconsole import AsynchronousConsole

from shared import logs

if TYPE_CHECKING:
    from shared.node import ChatNode

HOST = "127.0.0.1"  # whatever HOST the node serves HTTP on
PROMPT_MARK = "\x01"
COOKIE_PROMPT = "cookie: "
GATE_SECONDS = 10.0  # to answer `cookie: `
LINE_LIMIT = 64 * 1024  # bytes of one line typed (or pasted) at a prompt
LINGER_SECONDS = 1.0  # reading what a refused client still sends (refuse)
MAX_SESSIONS = 4  # open at once; more are refused, so idle connections cannot pile up

log = logs.get("console")


def listen(port: int | None) -> socket.socket | None:
    """Bind 127.0.0.1:`port` now, as `server.listen` binds the HTTP port, so that a busy
    port stops the node at start; None without a port (no console)."""
    if port is None:
        return None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
        sock.listen(MAX_SESSIONS)
    except OSError:
        sock.close()
        raise
    return sock


async def serve(node: ChatNode, sock: socket.socket) -> None:
    """Serve console sessions on `sock` until cancelled (the node's stop), then end every open one."""
    sessions: set[asyncio.Task[object]] = set()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            if len(sessions) >= MAX_SESSIONS:
                await refuse(reader, writer, f"{MAX_SESSIONS} console sessions are open already")
                return
            sessions.add(task)
            await session(node, reader, writer)
        finally:
            sessions.discard(task)
            writer.close()

    server = await asyncio.start_server(accepted, sock=sock, limit=LINE_LIMIT)
    log.info("console listening", address=f"{HOST}:{sock.getsockname()[1]}")
    try:
        await asyncio.Future()  # until cancelled
    finally:
        server.close()
        for task in sessions:
            task.cancel()
        await asyncio.gather(*sessions, return_exceptions=True)
        await server.wait_closed()


async def session(node: ChatNode, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Stages 2 and 3 have a cluster cookie; stage 1 has none to ask for.
    cookie: str | None = getattr(node.settings, "cluster_cookie", None)
    if cookie is not None:
        refused = await gate(reader, writer, cookie)
        if refused is not None:
            log.warning("console refused", reason=refused)
            await refuse(reader, writer, refused)
            return
    namespace = node.console_namespace()
    shown = banner(node, namespace)  # before aioconsole adds its own names (print, ainput, ...)
    console = AsynchronousConsole(streams=(reader, writer), locals=namespace, prompt_control=PROMPT_MARK)
    log.info("console session opened")
    try:
        await console.interact(banner=shown, stop=False, handle_sigint=False)
    except UnicodeDecodeError:
        await refuse(reader, writer, "input is not UTF-8")
    except ValueError:  # the StreamReader's: a line past LINE_LIMIT
        await refuse(reader, writer, f"line longer than {LINE_LIMIT} bytes")
    except ConnectionError:
        pass
    log.info("console session closed")


async def gate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cookie: str) -> str | None:
    """Ask for the cookie; None when it was given, else why the session is refused."""
    writer.write(f"{PROMPT_MARK}{COOKIE_PROMPT}{PROMPT_MARK}".encode())
    try:
        async with asyncio.timeout(GATE_SECONDS):
            line = await reader.readline()
    except TimeoutError:
        return f"no cookie within {GATE_SECONDS:g}s"
    except ValueError:
        return f"line longer than {LINE_LIMIT} bytes"
    except ConnectionError:
        return "connection lost"
    # Constant time, like the node API's check: how long a wrong guess took says nothing.
    if not hmac.compare_digest(line.rstrip(b"\r\n"), cookie.encode()):
        return "wrong cluster cookie"
    return None


async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reason: str) -> None:
    """One line saying why, then the connection closes (the caller's `finally`).

    What the client sent and we did not read is read and dropped first, for a moment:
    closing a socket with unread input resets the connection, and the reset can overtake
    the line on its way."""
    try:
        writer.write(f"console: {reason}\n".encode())
        writer.write_eof()
        await writer.drain()
        async with asyncio.timeout(LINGER_SECONDS):
            while await reader.read(LINE_LIMIT):
                pass
    except (ConnectionError, TimeoutError):
        pass


def banner(node: ChatNode, namespace: dict[str, object]) -> str:
    at_hand = ", ".join(_usage(name, value) for name, value in namespace.items())
    version = ".".join(map(str, sys.version_info[:3]))
    return (
        f"{node.name}: Python {version} inside the node; `await` works at the prompt.\n"
        f"At hand: {at_hand}.\n"
        "Ctrl-D leaves; the node runs on. A blocking call here blocks the node."
    )


def _usage(name: str, value: object) -> str:
    """`node`, `node_list()`, `await node_connect(name)`: how the banner shows a name."""
    if not inspect.isfunction(value):
        return name
    params = ", ".join(p.name for p in inspect.signature(value).parameters.values() if p.default is p.empty)
    return f"{'await ' if inspect.iscoroutinefunction(value) else ''}{name}({params})"
