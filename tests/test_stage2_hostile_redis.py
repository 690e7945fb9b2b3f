"""Stage 2 against what anyone who can reach Redis may write: garbage on a node's channel,
bad addresses in the registry, and the registry entries dead nodes leave behind; and the
Redis password, which keeps them out and must never reach a log line.

Real nodes and a real redis-server; the in-process broker test drives `RedisBroker` against
the real server too, to make its subscription task fail on purpose.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time

import pytest

from shared.broker import Delivery
from stage2_cluster.broker import Alone, RedisBroker, node_channel
from stage2_cluster.handshake import valid_address
from stage2_cluster.lines import Control, heartbeat
from stage2_cluster.membership import REGISTRY_KEEP
from stage2_cluster.settings import ClusterSettings, redact_url
from tests.helpers.cluster import Cluster, env_without, full_name, poll_readyz
from tests.helpers.metrics import metric
from tests.helpers.node import running_node
from tests.helpers.paths import ROOT
from tests.helpers.phoenix import LOBBY, PhoenixClient, unique
from tests.helpers.redis_server import RedisServer
from tests.helpers.results import record
from tests.helpers.waits import async_wait_until, wait_until

pytestmark = pytest.mark.slow

# Lines no node ever publishes: each must be dropped and counted, none may stop the node.
GARBAGE = [
    "m x",
    "p 1",
    "m",
    "b",
    "",
    "m rooms:lobby not-an-id [1]",
    "m rooms:lobby 1-1 not-a-frame",
    "b rooms:lobby {}",
    "h not a name",
    "s {}",
    "s []",
    "p [1, 2]",
    'p {"node": 5}',
    "zz whatever",
    "\x1b[31mred\x1b[0m\nforged log line " + "x" * 5000,
]
GARBAGE_BYTES = [b"m \xff\xfe\xfd", b"\xc3"]  # not UTF-8


def bad_lines_of(cluster: Cluster, name: str) -> float:
    text = cluster.http.get(cluster.node(name).url + "/metrics").text
    return metric(text, "chat_bad_peer_lines_total", default=0.0, channel=node_channel(full_name(name)))


ATTACK_POLLS = 20  # /readyz answers per node seen during the attack, at least


def publish_garbage(cluster: Cluster) -> int:
    """One round of every garbage line to every node's channel; the lines sent per node."""
    with cluster.redis.client() as client, cluster.redis.client() as raw:
        raw.connection_pool.connection_kwargs["decode_responses"] = False
        for name in cluster.nodes:
            channel = node_channel(full_name(name))
            for line in GARBAGE:
                assert client.publish(channel, line) == 1  # the node is subscribed
            for data in GARBAGE_BYTES:
                raw.publish(channel, data)
    return len(GARBAGE) + len(GARBAGE_BYTES)


async def test_garbage_on_every_node_channel_is_dropped_and_counted_while_messages_still_cross(
    two_nodes: Cluster,
) -> None:
    a, b = two_nodes.node("a"), two_nodes.node("b")
    readyz: dict[str, list[tuple[float, int]]] = {"a": [], "b": []}
    stop_polling, stop_attack = asyncio.Event(), asyncio.Event()
    sent = 0

    async def attack() -> None:
        nonlocal sent
        while not stop_attack.is_set():
            sent += await asyncio.to_thread(publish_garbage, two_nodes)

    pollers = [
        asyncio.create_task(poll_readyz(node.url, readyz[name], stop_polling, every=0.05))
        for name, node in (("a", a), ("b", b))
    ]
    attacker = asyncio.create_task(attack())
    try:
        async with PhoenixClient(a.ws_url) as alice, PhoenixClient(b.ws_url) as bob:
            await alice.join(LOBBY, {"user": "alice"})
            since = await bob.join(LOBBY, {"user": "bob"})
            for body, sender, receiver in ((unique("a2b"), alice, bob), (unique("b2a"), bob, alice)):
                assert (await sender.message(body)).ok
                await receiver.wait_for_message(body, since=since if receiver is bob else 0)
            await async_wait_until(
                lambda: all(len(r) >= ATTACK_POLLS for r in readyz.values()), what="readyz polled during the attack"
            )
            stop_attack.set()
            await attacker
            for name in ("a", "b"):
                await async_wait_until(lambda n=name: bad_lines_of(two_nodes, n) == sent, what=f"{name} counted all")
            last = unique("after")
            assert (await alice.message(last)).ok
            await bob.wait_for_message(last, since=since)
    finally:
        stop_attack.set()
        stop_polling.set()
        await asyncio.gather(attacker, *pollers, return_exceptions=True)
    for name in ("a", "b"):
        statuses = {status for _, status in readyz[name]}
        assert statuses == {200}, f"{name}: the subscription never stopped, so /readyz must say 200: {statuses}"
        warnings = [e for e in two_nodes.node(name).logs() if e.get("event") == "bad line on our channel dropped"]
        assert warnings, "the first bad line is logged"
        assert all(len(str(e["line"])) <= 130 and "\n" not in str(e["line"]) for e in warnings)
    record(
        "bad_peer_lines",
        lines_per_node=sent,
        counted={name: bad_lines_of(two_nodes, name) for name in ("a", "b")},
        warnings_logged={
            name: sum(1 for e in two_nodes.node(name).logs() if e.get("event") == "bad line on our channel dropped")
            for name in ("a", "b")
        },
        readyz_polls={name: len(readyz[name]) for name in ("a", "b")},
        readyz_non_200=sum(1 for name in ("a", "b") for _, s in readyz[name] if s != 200),
    )


async def test_a_crashed_subscription_is_restarted_and_reported_not_ready_meanwhile(
    redis_server: RedisServer,
) -> None:
    delivered: list[Delivery] = []
    crashed = asyncio.Event()
    health: list[bool] = []

    class Buggy(Alone):
        def on_control(self, line: Control) -> None:
            crashed.set()
            raise RuntimeError("a bug in a control handler")

        def on_health(self, healthy: bool) -> None:
            health.append(healthy)

    broker = RedisBroker(redis_server.url, "x@localhost", 100, membership=Buggy("x@localhost"))
    await broker.start(delivered.append)
    try:
        await async_wait_until(lambda: broker.available, what="subscribed")
        await broker.send(["x@localhost"], heartbeat("y@localhost", "0123456789abcdef"))
        async with asyncio.timeout(10):
            await crashed.wait()
        await async_wait_until(lambda: health[-2:] == [False, True], what="down, then subscribed again")
        assert broker.available
        await broker.send(["x@localhost"], "b rooms:lobby [1]")
        await async_wait_until(lambda: delivered, what="delivery after the restart")
        assert delivered[0].frame == "[1]"
    finally:
        await broker.stop()


def test_no_log_line_of_a_node_shows_the_redis_password() -> None:
    password = "pw-" + secrets.token_hex(12)
    with RedisServer(password=password) as redis, Cluster(redis) as nodes:
        nodes.start("a", "b")
        nodes.connected("a", "b")
        redis.stop()  # "redis unreachable url=...", "subscription lost error=..." at each retry
        wait_until(lambda: not nodes.ready(nodes.node("a")), what="a not ready without Redis")
        redis.start()
        wait_until(lambda: nodes.ready(nodes.node("a")), what="a ready again")
        with running_node("stage2_cluster", nodes.node_env("c", REDIS_URL=redis.url.replace(password, "x"))) as c:
            wait_until(lambda: any("subscription lost" in line for line in c.lines), what="c refused by Redis")
        lines = [line for node in (*nodes.nodes.values(), c) for line in node.lines]
    assert any("redis unreachable" in line and ":***@127.0.0.1" in line for line in lines)
    assert [line for line in lines if password in line] == []


def test_a_bad_redis_url_is_refused_without_showing_its_password() -> None:
    password = "pw-" + secrets.token_hex(12)
    env = {**env_without("REDIS_URL"), "REDIS_URL": f"http://:{password}@127.0.0.1:1/0", "CLUSTER_COOKIE": "c" * 16}
    result = subprocess.run(
        [sys.executable, "-m", "stage2_cluster"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "REDIS_URL" in result.stdout + result.stderr
    assert password not in result.stdout + result.stderr
    settings = ClusterSettings.from_env({"REDIS_URL": f"redis://:{password}@h:1/0", "CLUSTER_COOKIE": "c" * 16})
    assert password not in repr(settings)
    assert redact_url(f"redis://user:{password}@h:1/0") == "redis://user:***@h:1/0"


VALID_ADDRESSES = ["10.0.0.1:4000", "localhost:1", "[::1]:4000", "chat-0.chat-nodes:65535", "h" * 253 + ":1"]
BAD_ADDRESSES = [
    "127.0.0.1:1/x?y",
    "127.0.0.1:1/",
    "user:pw@127.0.0.1:1",
    "http://127.0.0.1:1",
    "127.0.0.1",
    "127.0.0.1:0",
    "127.0.0.1:65536",
    "127.0.0.1:\u0661",  # an Arabic-Indic digit: str.isdigit() says yes
    "h" * 254 + ":1",
    "[not-ipv6]:1",
    "[10.0.0.1]:1",
    "127.0.0.1:1#x",
    "a b:1",
    "",
]


def test_the_one_address_validator_takes_host_port_only() -> None:
    assert [address for address in VALID_ADDRESSES if not valid_address(address)] == []
    assert [address for address in BAD_ADDRESSES if valid_address(address)] == []
    assert not valid_address(None)


def test_a_registry_entry_with_a_bad_address_is_ignored_counted_and_logged(cluster: Cluster) -> None:
    (a,) = cluster.start("a", DISCOVERY="redis")
    ghost, address = "ghost@localhost", "127.0.0.1:1/x?y"
    with cluster.redis.client() as client:
        client.hset("chat:registry", ghost, address)
        client.set(f"chat:alive:{ghost}", address, px=60_000)

    def counted() -> float:
        text = cluster.http.get(a.url + "/metrics").text
        return metric(text, "chat_bad_peer_addresses_total", default=0.0, source="registry")

    wait_until(lambda: counted() >= 2, what="the entry refused on two polls")
    refusals = [e for e in a.logs() if e.get("event") == "bad peer address refused"]
    assert [(e["level"], e["source"], e["address"]) for e in refusals[:1]] == [("warning", "registry", address)]
    assert len(refusals) == 1  # one warning, not one a second
    assert not any(e.get("peer") == ghost for e in a.logs())  # never tried
    assert cluster.nodes_of("a") == [full_name("a")]
    record("bad registry address", refused_polls=counted(), warnings=1)


def test_registry_entries_of_dead_nodes_expire(cluster: Cluster) -> None:
    down_after = 0.5
    keep = REGISTRY_KEEP * down_after
    cluster.start("a", "b", NODE_DOWN_AFTER=str(down_after))
    with cluster.redis.client() as client:
        client.hset("chat:registry", "ghost@localhost", "127.0.0.1:1")  # never had an alive key
        wait_until(lambda: client.hlen("chat:registry") == 3, what="a, b and the ghost registered")
        cluster.kill("b")
        killed = time.monotonic()
        wait_until(
            lambda: sorted(client.hkeys("chat:registry")) == [full_name("a")],
            deadline=keep + 15,
            what="b's and the ghost's entries gone, a's kept",
        )
        took = time.monotonic() - killed
    expired = {e["peer"] for e in cluster.node("a").logs() if e.get("event") == "registry entry expired"}
    assert expired == {full_name("b"), "ghost@localhost"}
    assert took > keep  # not before its bound: a node that is only slow keeps its entry
    record("registry expiry", node_down_after=down_after, bound_s=keep, gone_after_s=round(took, 2))
