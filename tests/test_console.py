"""The remote console (CONSOLE_PORT): a Python prompt inside a running node, `iex --remsh`'s part.

Real nodes and `chatctl console` as a learner runs it, piped and at a terminal (a pty);
the cookie gate and the console's own input limits against a raw socket, in this process;
and where the console does not listen: on any address but 127.0.0.1, or at all without
CONSOLE_PORT. The container case is in test_stage3_compose.py, on its Compose project.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import select
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from shared import console
from shared.node import ChatNode
from shared.settings import Settings
from stage2_cluster.settings import ClusterSettings
from tests.helpers.cluster import Cluster, env_without
from tests.helpers.node import NodeProcess, running_node
from tests.helpers.phoenix import LOBBY, PhoenixClient, unique
from tests.helpers.ports import free_port, port_open
from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.slow

CHATCTL = str(Path(sys.executable).parent / "chatctl")  # the console script `pip install` makes
COOKIE = "console-test-cookie-0123456789"
DEADLINE = 10.0


def chatctl_console(
    port: int, stdin: str, *, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`echo ... | chatctl console --port N`, with no cookie from our environment unless `env` gives one."""
    environment = {**env_without("CLUSTER_COOKIE", "CONSOLE_PORT"), **(env or {})}
    return subprocess.run(
        [CHATCTL, "console", "--port", str(port)],
        input=stdin,
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def listening_ports(pid: int) -> set[tuple[str, int]]:
    """The (address, port) pairs process `pid` listens on for TCP."""
    return {
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.Process(pid).net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN
    }


# A stage 2 node with a peer -------------------------------------------------------------------


@pytest.fixture(scope="module")
def console_cluster() -> Iterator[Cluster]:
    """a (with a console), b and c: a connected to b only (a test that changes it puts it back)."""
    with RedisServer() as redis_server, Cluster(redis_server) as cluster:
        cluster.start("a", CONSOLE_PORT=str(free_port()))
        cluster.start("b", "c")
        cluster.connected("a", "b")
        yield cluster


def console_port(cluster: Cluster, name: str = "a") -> int:
    return int(cluster.node(name).env["CONSOLE_PORT"])


def test_chatctl_console_lists_the_peers_of_a_running_stage2_node(console_cluster: Cluster, tmp_path: Path) -> None:
    result = chatctl_console(
        console_port(console_cluster),
        "node_list()\nnode_self()\n",
        cwd=tmp_path,
        env={"CLUSTER_COOKIE": console_cluster.cookie},
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["['b@localhost']", "'a@localhost'"]
    assert result.stderr == ""


def test_await_works_at_the_prompt_and_reads_the_clusters_history(console_cluster: Cluster, tmp_path: Path) -> None:
    body = unique("seen-from-the-console")

    async def send_on_b() -> None:
        async with PhoenixClient(console_cluster.node("b").ws_url) as bob:
            await bob.join(LOBBY, {"user": "bob"})
            assert (await bob.message(body, user="bob")).ok

    asyncio.run(send_on_b())
    result = chatctl_console(
        console_port(console_cluster),
        '[(m.body, m.node) for m in await node.broker.history("rooms:lobby", None)]\n',
        cwd=tmp_path,
        env={"CLUSTER_COOKIE": console_cluster.cookie},
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [repr([(body, "b@localhost")])]


def test_node_connect_at_the_console_connects_like_node_connect(console_cluster: Cluster, tmp_path: Path) -> None:
    result = chatctl_console(
        console_port(console_cluster),
        "await node_connect('c@localhost')\nsorted(node_list())\ncluster.name\n",
        cwd=tmp_path,
        env={"CLUSTER_COOKIE": console_cluster.cookie},
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["True", "['b@localhost', 'c@localhost']", "'a@localhost'"]
    console_cluster.wait_nodes("c", ["c", "a", "b"])
    for name in ("a", "b"):
        console_cluster.disconnect(name, "c")
    console_cluster.wait_nodes("a", ["a", "b"])


def test_the_cookie_file_of_make_stage2_opens_the_console(console_cluster: Cluster, tmp_path: Path) -> None:
    (tmp_path / ".stage2").mkdir()
    (tmp_path / ".stage2" / "cookie").write_text(console_cluster.cookie + "\n")

    result = chatctl_console(console_port(console_cluster), "node_self()\n", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "'a@localhost'\n"


def test_a_wrong_cookie_is_refused_with_one_line_and_nothing_is_evaluated(
    console_cluster: Cluster, tmp_path: Path
) -> None:
    port = console_port(console_cluster)
    refused = chatctl_console(port, "node.probe = 1\n", cwd=tmp_path, env={"CLUSTER_COOKIE": "not-the-cookie-0123"})

    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.splitlines() == ["chatctl: console: wrong cluster cookie"]
    checked = chatctl_console(
        port, "hasattr(node, 'probe')\n", cwd=tmp_path, env={"CLUSTER_COOKIE": console_cluster.cookie}
    )
    assert checked.stdout == "False\n"


def test_without_a_cookie_chatctl_says_the_console_asks_for_one(console_cluster: Cluster, tmp_path: Path) -> None:
    result = chatctl_console(console_port(console_cluster), "node_list()\n", cwd=tmp_path)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "chatctl: the console asks for the cluster cookie: pass --cookie, set CLUSTER_COOKIE"
    ]


# Stage 1: at a terminal, and where the console is not -------------------------------------------


@pytest.fixture
def stage1_console() -> Iterator[NodeProcess]:
    """A stage 1 node listening on every address (HOST=0.0.0.0), with a console."""
    env = {"PING_INTERVAL": "0", "NODE_NAME": "a@localhost", "CONSOLE_PORT": str(free_port())}
    with running_node("stage1_dev", env, host="0.0.0.0") as node:
        yield node


class Terminal:
    """A process on a pseudo-terminal, read with a deadline for what it should show."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.fd, child = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, env=env, cwd=cwd)
        os.close(child)
        self.seen = b""

    def expect(self, text: str, deadline: float = DEADLINE) -> str:
        """Everything shown up to and including `text`."""
        end = time.monotonic() + deadline
        while text.encode() not in self.seen:
            left = end - time.monotonic()
            assert left > 0, f"{text!r} not shown within {deadline}s: {self.seen!r}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    self.seen += os.read(self.fd, 4096)
                except OSError:  # EIO: the process ended and closed the terminal
                    break
        assert text.encode() in self.seen, f"{text!r} not shown: {self.seen!r}"
        shown, _, self.seen = self.seen.partition(text.encode())
        return (shown + text.encode()).decode()

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        os.close(self.fd)


def test_at_a_terminal_chatctl_console_shows_the_banner_and_prompts(
    stage1_console: NodeProcess, tmp_path: Path
) -> None:
    env = {**env_without("CLUSTER_COOKIE", "CONSOLE_PORT"), "CONSOLE_PORT": stage1_console.env["CONSOLE_PORT"]}
    terminal = Terminal([CHATCTL, "console"], env, tmp_path)
    try:
        banner = terminal.expect(">>> ")
        assert banner.startswith("a@localhost: Python ")
        assert "At hand: node, hub, cluster, node_self(), node_list()." in banner
        terminal.type("for n in range(2):\n")
        terminal.expect("... ")
        terminal.type("    print(n * 10)\n")
        terminal.expect("... ")
        terminal.type("\n")
        assert terminal.expect(">>> ").split("\r\n")[-3:] == ["0", "10", ">>> "]
        terminal.type("node_self()\n")
        assert "'a@localhost'" in terminal.expect(">>> ")
        terminal.type("\x04")  # Ctrl-D
        assert terminal.proc.wait(DEADLINE) == 0
    finally:
        terminal.close()


def test_exit_at_the_console_ends_the_session_not_the_node(stage1_console: NodeProcess, tmp_path: Path) -> None:
    port = int(stage1_console.env["CONSOLE_PORT"])
    left = chatctl_console(port, "exit()\nnode_self()\n", cwd=tmp_path)

    assert left.returncode == 0, left.stderr
    assert left.stdout == ""  # the session ended before the second line
    again = chatctl_console(port, "node_self()\n", cwd=tmp_path)
    assert again.stdout == "'a@localhost'\n"
    assert stage1_console.proc is not None and stage1_console.proc.poll() is None


def test_the_console_listens_on_127_0_0_1_only_whatever_host_the_node_serves_on(stage1_console: NodeProcess) -> None:
    assert stage1_console.proc is not None
    console_port, http_port = int(stage1_console.env["CONSOLE_PORT"]), stage1_console.port
    assert listening_ports(stage1_console.proc.pid) == {("0.0.0.0", http_port), ("127.0.0.1", console_port)}
    # Every other address of this machine: the rest of 127.0.0.0/8, and each interface's.
    others = ["127.0.0.2"] + [
        address.address
        for addresses in psutil.net_if_addrs().values()
        for address in addresses
        if address.family == socket.AF_INET and not address.address.startswith("127.")
    ]
    for address in others:
        assert port_open(http_port, address), f"the node's HTTP port answers on {address}"  # the address works
        assert not port_open(console_port, address), f"the console answers on {address}"
    assert port_open(console_port, "127.0.0.1")


def test_a_node_without_console_port_has_no_console(stage1_node: NodeProcess, tmp_path: Path) -> None:
    assert stage1_node.proc is not None
    assert listening_ports(stage1_node.proc.pid) == {("127.0.0.1", stage1_node.port)}
    port = free_port()

    result = chatctl_console(port, "node_list()\n", cwd=tmp_path)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"chatctl: no console on 127.0.0.1:{port} (Connection refused); a node serves one with CONSOLE_PORT set"
    ]


def test_chatctl_console_without_a_port_says_which_one_to_give(tmp_path: Path) -> None:
    result = subprocess.run(
        [CHATCTL, "console"],
        input="",
        cwd=tmp_path,
        env=env_without("CONSOLE_PORT", "CLUSTER_COOKIE"),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert result.stderr.splitlines() == ["chatctl: no console port: pass --port N or set CONSOLE_PORT (the node's)"]


def test_a_busy_console_port_stops_the_node_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**env_without("CLUSTER_COOKIE"), "PORT": str(free_port()), "CONSOLE_PORT": str(port)}
        result = subprocess.run(
            [sys.executable, "-m", "stage1_dev"], env=env, capture_output=True, text=True, timeout=30
        )

    assert result.returncode == 1
    (line,) = (result.stdout + result.stderr).splitlines()
    assert f"cannot serve the console on 127.0.0.1:{port}: Address already in use" in line


# The console's own input: the cookie gate and its limits, in this process ------------------------


@pytest.fixture
async def served(request: pytest.FixtureRequest) -> AsyncIterator[int]:
    """A console served on a free port for a node (not started: the console needs none of it)
    with a cluster cookie, as stages 2 and 3 have; its port. Cancelled as a node's stop does."""
    settings = ClusterSettings(node_name="a@localhost", cluster_cookie=COOKIE)
    sock = console.listen(free_port())
    assert sock is not None
    task = asyncio.create_task(console.serve(ChatNode(settings), sock))
    try:
        yield sock.getsockname()[1]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Session:
    """A raw connection to a console, the bytes it receives kept in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Session:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def until(self, text: bytes) -> bytes:
        async with asyncio.timeout(DEADLINE):
            return await self.reader.readuntil(text)

    async def rest(self) -> bytes:
        """All it receives until the console closes the connection."""
        async with asyncio.timeout(DEADLINE):
            return await self.reader.read()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


PROMPT = f"{console.PROMPT_MARK}>>> {console.PROMPT_MARK}".encode()
COOKIE_PROMPT = f"{console.PROMPT_MARK}cookie: {console.PROMPT_MARK}".encode()


@contextlib.asynccontextmanager
async def session(port: int, cookie: str | None = COOKIE) -> AsyncIterator[Session]:
    """A session past the cookie prompt (answered with `cookie` unless None)."""
    opened = await Session.open(port)
    try:
        assert await opened.until(COOKIE_PROMPT) == COOKIE_PROMPT
        if cookie is not None:
            await opened.send(cookie.encode() + b"\n")
        yield opened
    finally:
        await opened.close()


async def test_the_right_cookie_opens_the_console(served: int) -> None:
    async with session(served) as opened:
        banner = await opened.until(PROMPT)
        assert b"At hand: node, hub, cluster, node_self(), node_list()." in banner
        await opened.send(b"node_self(), node_list()\n")
        assert await opened.until(PROMPT) == b"('a@localhost', [])\n" + PROMPT


@pytest.mark.parametrize(
    "first_line",
    [b"\xff\xfe\x00garbage\n", COOKIE.encode() + b"x\n", COOKIE.encode()[:-1] + b"\n", b"\n", b""],
    ids=["garbage", "longer", "shorter", "empty", "eof"],
)
async def test_a_wrong_first_line_closes_with_one_line(served: int, first_line: bytes) -> None:
    async with session(served, cookie=None) as opened:
        await opened.send(first_line)
        if not first_line:
            opened.writer.write_eof()
        assert await opened.rest() == b"console: wrong cluster cookie\n"


async def test_an_oversize_first_line_closes_with_one_line(served: int) -> None:
    async with session(served, cookie=None) as opened:
        await opened.send(b"x" * (console.LINE_LIMIT * 4) + b"\n")
        assert await opened.rest() == f"console: line longer than {console.LINE_LIMIT} bytes\n".encode()


async def test_no_answer_to_the_cookie_prompt_closes_with_one_line(
    served: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "GATE_SECONDS", 0.1)
    async with session(served, cookie=None) as opened:
        assert await opened.rest() == b"console: no cookie within 0.1s\n"


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"'\xff'\n", b"console: input is not UTF-8\n"),
        (b"x" * (console.LINE_LIMIT + 1) + b"\n", f"console: line longer than {console.LINE_LIMIT} bytes\n".encode()),
    ],
    ids=["not-utf8", "oversize"],
)
async def test_bad_input_at_the_prompt_ends_the_session_with_one_line(served: int, line: bytes, reply: bytes) -> None:
    async with session(served) as opened:
        await opened.until(PROMPT)
        await opened.send(line)
        assert await opened.rest() == reply
    async with session(served) as again:  # the console itself goes on
        await again.until(PROMPT)


async def test_sessions_past_the_limit_are_refused_with_one_line(served: int) -> None:
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(console.MAX_SESSIONS):
            opened = await stack.enter_async_context(session(served))
            await opened.until(PROMPT)
        extra = await Session.open(served)
        try:
            assert await extra.rest() == f"console: {console.MAX_SESSIONS} console sessions are open already\n".encode()
        finally:
            await extra.close()


async def test_the_nodes_stop_ends_open_sessions_and_the_listener() -> None:
    node = ChatNode(Settings(node_name="a@localhost"))
    sock = console.listen(free_port())
    assert sock is not None
    port = sock.getsockname()[1]
    node.spawn(console.serve(node, sock))
    opened = await Session.open(port)
    try:
        assert (await opened.until(PROMPT)).endswith(PROMPT)  # stage 1: no cookie to ask for
        await opened.send(b"await asyncio.sleep(3600)\n")
        await node.stop()
        assert await opened.rest() == b""
    finally:
        await opened.close()
    assert not port_open(port)
