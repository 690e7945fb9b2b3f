"""`chatctl`: the node API from a shell, as the original used `iex` and `Node.list()`.

    chatctl nodes                 # Node.list([:this, :visible])
    chatctl connect b@localhost   # Node.connect(:"b@localhost")
    chatctl disconnect b@localhost
    chatctl drain                 # what the Kubernetes preStop hook calls
    chatctl console --port 4100   # iex --remsh: a Python prompt inside the node (CONSOLE_PORT)

The cookie comes from --cookie, else CLUSTER_COOKIE, else the file `make stage2` writes.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from shared import console as node_console

COOKIE_FILE = Path(".stage2/cookie")


def options(defaults: bool) -> argparse.ArgumentParser:
    """--url, --cookie and --json, taken before or after the command. After it, they
    default to SUPPRESS so that they don't overwrite what was given before it."""
    unset = argparse.SUPPRESS
    parser = argparse.ArgumentParser(add_help=False)
    url = os.environ.get("CHAT_URL", "http://localhost:4000") if defaults else unset
    parser.add_argument("--url", default=url, help="node to ask (env CHAT_URL)")
    parser.add_argument(
        "--cookie", default=None if defaults else unset, help="cluster cookie (default: CLUSTER_COOKIE, .stage2/cookie)"
    )
    parser.add_argument("--json", action="store_true", default=False if defaults else unset, help="print the JSON")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="chatctl", description="Talk to a chat node's API.", parents=[options(True)])
    after = [options(False)]
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("nodes", parents=after, help="this node and the nodes it is connected to")
    connect = commands.add_parser("connect", parents=after, help="connect to NODE (and to its peers)")
    connect.add_argument("node")
    connect.add_argument("--address", help="host:port, when NODE is not in the registry")
    disconnect = commands.add_parser("disconnect", parents=after, help="disconnect NODE, both ways")
    disconnect.add_argument("node")
    commands.add_parser("drain", parents=after, help="stop taking sockets and close open ones with 1001")
    console = commands.add_parser("console", parents=after, help="a Python prompt inside the node (CONSOLE_PORT)")
    console.add_argument("--port", type=int, default=console_port(), help="the node's CONSOLE_PORT (default: env)")
    return parser.parse_args(argv)


def console_port() -> int | None:
    raw = os.environ.get("CONSOLE_PORT", "").strip()
    return int(raw) if raw.isdigit() else None


def find_cookie(given: str | None) -> str | None:
    if given:
        return given
    if os.environ.get("CLUSTER_COOKIE"):
        return os.environ["CLUSTER_COOKIE"]
    if COOKIE_FILE.is_file():
        return COOKIE_FILE.read_text().strip()
    return None


def stale_cookie_hint(args: argparse.Namespace) -> str:
    """Why a 401 may have come: an exported CLUSTER_COOKIE older than the one `make stage2` wrote."""
    exported = os.environ.get("CLUSTER_COOKIE")
    if args.cookie or not exported or not COOKIE_FILE.is_file():
        return ""
    if exported == COOKIE_FILE.read_text().strip():
        return ""
    return f"; CLUSTER_COOKIE differs from {COOKIE_FILE}: export CLUSTER_COOKIE=$(cat {COOKIE_FILE})"


def request(args: argparse.Namespace) -> httpx.Response:
    base = args.url.rstrip("/")
    if args.command == "nodes":
        return httpx.get(f"{base}/api/nodes", timeout=10)
    cookie = find_cookie(args.cookie)
    if cookie is None:
        raise SystemExit(
            "chatctl: no cluster cookie: pass --cookie, set CLUSTER_COOKIE, or run from the folder of make stage2"
        )
    headers = {"Authorization": f"Bearer {cookie}"}
    if args.command == "connect":
        body = {"node": args.node, **({"address": args.address} if args.address else {})}
        return httpx.post(f"{base}/api/nodes/connect", json=body, headers=headers, timeout=15)
    if args.command == "disconnect":
        return httpx.delete(f"{base}/api/nodes/{args.node}", headers=headers, timeout=15)
    return httpx.post(f"{base}/api/drain", headers=headers, timeout=30)


class ConsoleStream:
    """What a node's console sends, split into replies and prompts (each wrapped in PROMPT_MARK)."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""

    def next_prompt(self, reply: Callable[[str], object]) -> str | None:
        """Hand the text before the next prompt to `reply`; the prompt, or None once the node closed."""
        mark = node_console.PROMPT_MARK
        while True:
            start = self.pending.find(mark)
            end = self.pending.find(mark, start + 1) if start >= 0 else -1
            if end >= 0:
                reply(self.pending[:start])
                prompt, self.pending = self.pending[start + 1 : end], self.pending[end + 1 :]
                return prompt
            if start < 0:
                reply(self.pending)
                self.pending = ""
            data = self.conn.recv(65536)
            if not data:
                reply(self.pending + self.decoder.decode(b"", final=True))
                self.pending = ""
                return None
            self.pending += self.decoder.decode(data)


def console(args: argparse.Namespace) -> int:
    """A line client: each prompt of the node's console is answered with one line of stdin.

    At a terminal it shows the banner and the prompts, with line editing (readline); with
    stdin piped it prints the replies alone, so `echo 'node_list()' | chatctl console`
    prints what `Node.list()` would."""
    if args.port is None or not 1 <= args.port <= 65535:
        print("chatctl: no console port: pass --port N or set CONSOLE_PORT (the node's)", file=sys.stderr)
        return 1
    where = f"{node_console.HOST}:{args.port}"
    try:
        conn = socket.create_connection((node_console.HOST, args.port), timeout=5)
    except OSError as error:
        reason = error.strerror or str(error)
        print(f"chatctl: no console on {where} ({reason}); a node serves one with CONSOLE_PORT set", file=sys.stderr)
        return 1
    interactive = sys.stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401 - line editing and history for input()
    with conn:
        conn.settimeout(None)  # a reply takes what the code typed takes
        try:
            return attach(conn, args, interactive)
        except KeyboardInterrupt:
            print("\nchatctl: left the console; what was running goes on in the node", file=sys.stderr)
            return 130
        except ConnectionError as error:
            print(f"chatctl: the console on {where} went away ({error.strerror})", file=sys.stderr)
            return 1


def attach(conn: socket.socket, args: argparse.Namespace, interactive: bool) -> int:
    """Past the cookie prompt (if the node asks), then relay lines until the end of input."""
    stream = ConsoleStream(conn)
    before: list[str] = []  # the banner, or the one line of a refusal
    prompt = stream.next_prompt(before.append)
    if prompt == node_console.COOKIE_PROMPT:
        cookie = find_cookie(args.cookie)
        if cookie is None:
            print(
                "chatctl: the console asks for the cluster cookie: pass --cookie, set CLUSTER_COOKIE", file=sys.stderr
            )
            return 1
        conn.sendall(cookie.encode() + b"\n")
        prompt = stream.next_prompt(before.append)
    if prompt is None:
        refusal = "".join(before).strip() or "closed by the node"
        print(f"chatctl: {refusal}{stale_cookie_hint(args)}", file=sys.stderr)
        return 1
    if interactive:
        print("".join(before), end="", flush=True)
    return relay(conn, stream, prompt, interactive)


def relay(conn: socket.socket, stream: ConsoleStream, prompt: str | None, interactive: bool) -> int:
    def reply(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    while prompt is not None:
        line = read_line(prompt, interactive)
        if line is None:
            conn.shutdown(socket.SHUT_WR)  # the console's EOF: it answers with a newline and closes
            rest: list[str] = []
            stream.next_prompt(rest.append)
            text = "".join(rest)
            reply(text if interactive or text != "\n" else "")
            break
        conn.sendall(line.encode() + b"\n")
        prompt = stream.next_prompt(reply)
    return 0


def read_line(prompt: str, interactive: bool) -> str | None:
    """The next line typed at `prompt`, None at the end of input (Ctrl-D)."""
    if not interactive:
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None
    while True:
        try:
            return input(prompt)
        except EOFError:
            return None
        except KeyboardInterrupt:  # as at Python's prompt: drop the line, ask again
            print("\nKeyboardInterrupt")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "console":
        return console(args)
    try:
        response = request(args)
    except httpx.HTTPError as error:
        print(f"chatctl: cannot reach {args.url}: {error}", file=sys.stderr)
        return 1
    try:
        data = response.json()
    except ValueError:
        data = {"error": response.text.strip() or response.reason_phrase}
    if response.status_code != 200:
        print(f"chatctl: {response.status_code} {data.get('error', data)}{stale_cookie_hint(args)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data))
    elif "nodes" in data:
        for name in data["nodes"]:
            print(f"{name} (self)" if name == data["self"] else name)
    else:
        print(f"draining: closed {data['closed_sockets']} sockets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
