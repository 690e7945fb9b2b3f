"""`chatctl`: the node API from a shell, as the original used `iex` and `Node.list()`.

    chatctl nodes                 # Node.list([:this, :visible])
    chatctl connect b@localhost   # Node.connect(:"b@localhost")
    chatctl disconnect b@localhost
    chatctl drain                 # what the Kubernetes preStop hook calls

The cookie comes from --cookie, else CLUSTER_COOKIE, else the file `make stage2` writes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import httpx

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
    return parser.parse_args(argv)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
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
