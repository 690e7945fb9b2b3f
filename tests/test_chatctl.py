"""`chatctl` against real nodes, run as the user runs it: a separate process.

Exit codes: 0 done, 1 refused or unreachable (with one clear line on stderr), 2 usage.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cluster import Cluster, env_without
from tests.helpers.paths import ROOT
from tests.helpers.phoenix import LOBBY, PhoenixClient
from tests.helpers.ports import free_port
from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.slow

A, B = "a@localhost", "b@localhost"


def chatctl(
    *args: str, cwd: Path, env: dict[str, str] | None = None, script: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run chatctl in `cwd` with no cookie in its environment unless `env` gives one."""
    command = [script] if script else [sys.executable, "-m", "stage2_cluster.chatctl"]
    environment = {**env_without("CLUSTER_COOKIE", "CHAT_URL"), "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([*command, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def nodes() -> Iterator[Cluster]:
    with RedisServer() as redis_server, Cluster(redis_server, env={"NODE_DOWN_AFTER": "60"}) as cluster:
        cluster.start("a", "b")
        yield cluster


@pytest.fixture
def apart(nodes: Cluster) -> Cluster:
    for name in ("a", "b"):
        for peer in nodes.nodes_of(name)[1:]:
            nodes.http.delete(f"{nodes.node(name).url}/api/nodes/{peer}", headers=nodes.auth())
        nodes.wait_nodes(name, [name])
    return nodes


def url(cluster: Cluster, name: str = "a") -> str:
    return cluster.node(name).url


def test_nodes_lists_this_node_first(apart: Cluster, tmp_path: Path) -> None:
    apart.connected("a", "b")
    result = chatctl("--url", url(apart), "nodes", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{A} (self)", B]


def test_nodes_json_prints_the_api_answer(apart: Cluster, tmp_path: Path) -> None:
    result = chatctl("--url", url(apart, "b"), "--json", "nodes", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"self": B, "nodes": [B]}


def test_connect_joins_both_nodes(apart: Cluster, tmp_path: Path) -> None:
    result = chatctl("--url", url(apart), "--cookie", apart.cookie, "connect", B, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{A} (self)", B]
    apart.wait_nodes("b", ["b", "a"])


def test_connect_with_an_address_joins_both_nodes(apart: Cluster, tmp_path: Path) -> None:
    address = f"127.0.0.1:{apart.node('a').port}"
    result = chatctl(
        "--url", url(apart, "b"), "--cookie", apart.cookie, "connect", A, "--address", address, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{B} (self)", A]
    apart.wait_nodes("a", ["a", "b"])


def test_disconnect_separates_both_nodes(apart: Cluster, tmp_path: Path) -> None:
    apart.connected("a", "b")
    result = chatctl("--url", url(apart), "--cookie", apart.cookie, "disconnect", B, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{A} (self)"]
    apart.wait_nodes("b", ["b"])


def test_cookie_comes_from_the_environment(apart: Cluster, tmp_path: Path) -> None:
    result = chatctl("--url", url(apart), "connect", B, cwd=tmp_path, env={"CLUSTER_COOKIE": apart.cookie})
    assert result.returncode == 0, result.stderr
    assert apart.nodes_of("a") == [A, B]


def test_cookie_comes_from_the_file_make_stage2_writes(apart: Cluster, tmp_path: Path) -> None:
    (tmp_path / ".stage2").mkdir()
    (tmp_path / ".stage2" / "cookie").write_text(apart.cookie + "\n")
    result = chatctl("--url", url(apart), "connect", B, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert apart.nodes_of("a") == [A, B]


async def test_drain_closes_sockets_with_1001_and_marks_the_node_not_ready(nodes: Cluster, tmp_path: Path) -> None:
    (node,) = await asyncio.to_thread(nodes.start, "d")
    try:
        async with PhoenixClient(node.ws_url) as client:
            await client.join(LOBBY, {"user": "dora"})
            result = await asyncio.to_thread(
                chatctl, "--url", node.url, "--cookie", nodes.cookie, "drain", cwd=tmp_path
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == "draining: closed 1 sockets"
            assert await client.wait_closed() == 1001
        ready = await asyncio.to_thread(nodes.http.get, node.url + "/readyz")
        assert ready.status_code == 503 and ready.json()["draining"] is True
    finally:
        await asyncio.to_thread(nodes.stop, "d")


@pytest.mark.parametrize(
    "command", [["connect", B], ["disconnect", B], ["drain"]], ids=["connect", "disconnect", "drain"]
)
def test_wrong_cookie_exits_1_with_a_clear_message(apart: Cluster, tmp_path: Path, command: list[str]) -> None:
    result = chatctl("--url", url(apart), "--cookie", "wrong-cookie-0123456789abcdef", *command, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("chatctl: 401 ") and "cookie" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert apart.nodes_of("a") == [A] and apart.ready(apart.node("a"))


def test_a_stale_exported_cookie_gets_a_hint_naming_the_file(apart: Cluster, tmp_path: Path) -> None:
    """Stage 2's step 7: the shell exported an older run's cookie; the file holds the running one."""
    (tmp_path / ".stage2").mkdir()
    (tmp_path / ".stage2" / "cookie").write_text(apart.cookie + "\n")
    stale = "an-older-runs-cookie-0123456789abcdef"
    result = chatctl("--url", url(apart), "connect", B, cwd=tmp_path, env={"CLUSTER_COOKIE": stale})
    assert result.returncode == 1
    assert result.stderr.startswith("chatctl: 401 ") and len(result.stderr.strip().splitlines()) == 1
    assert "CLUSTER_COOKIE differs from .stage2/cookie: export CLUSTER_COOKIE=$(cat .stage2/cookie)" in result.stderr
    assert apart.nodes_of("a") == [A]


def test_missing_cookie_exits_1_with_a_clear_message(apart: Cluster, tmp_path: Path) -> None:
    result = chatctl("--url", url(apart), "connect", B, cwd=tmp_path)
    assert result.returncode == 1
    assert "no cluster cookie" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert apart.nodes_of("a") == [A]


def test_unreachable_url_exits_1_with_a_clear_message(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = chatctl("--url", nowhere, "nodes", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"chatctl: cannot reach {nowhere}")
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_node_exits_1_with_the_api_error(apart: Cluster, tmp_path: Path) -> None:
    result = chatctl("--url", url(apart), "--cookie", apart.cookie, "disconnect", "zz@localhost", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("chatctl: 404 ")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["connect"],
        ["disconnect"],
        ["nodes", "extra"],
        ["connect", B, "--address"],
        ["--bogus", "nodes"],
    ],
    ids=[
        "no command",
        "unknown command",
        "connect without node",
        "disconnect without node",
        "extra argument",
        "address without value",
        "unknown option",
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, argv: list[str]) -> None:
    result = chatctl(*argv, cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: chatctl" in result.stderr


def test_console_script_is_installed(apart: Cluster, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "chatctl"
    assert script.is_file(), "pip install -e . installs the chatctl console script"
    result = chatctl("--url", url(apart), "nodes", cwd=tmp_path, script=str(script))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{A} (self)"]
