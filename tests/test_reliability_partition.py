"""A network partition between two nodes, for real, between network namespaces.

The simulated fault: nodes a and b each run in a namespace of their own, linked to a
bridge whose namespace also holds Redis (tests/helpers/netns.py). The partition takes b's link
down on the bridge side (`ip -n <hub> link set v2 down`): b's cable is pulled. No
packet then goes between b and anything else, Redis included, while b's own address
keeps answering b's own clients. In this design live delivery and heartbeats flow
through Redis, so this is what "b is cut off from a" means. Healing sets the link up.

What each side must do:
- a still reaches Redis: it stops hearing b's heartbeats, drops b within NODE_DOWN_AFTER
  (plus one heartbeat) and b's users leave a's presence; a keeps serving.
- b hears no one: its subscriber watchdog calls Redis dead, `/readyz` answers 503 and
  pushes are answered `unavailable`; it cannot tell whether a is gone, so it keeps it
  listed until it can ask again.
- healed: b's subscriber reconnects by itself, b learns that a dropped it and drops a,
  discovery (DISCOVERY=redis) connects them again, both deliver one total order, and
  every acknowledged message is in history; since a kept publishing to b after dropping
  it for silence, no client missed a message.

The test process stays in its own namespace and reaches the nodes through worker
threads that entered theirs (`InNamespace`): a socket belongs to the namespace of the
thread that made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from tests.helpers.netns import Network
from tests.helpers.node import NodeProcess
from tests.helpers.phoenix import LOBBY, PhoenixClient, Push
from tests.helpers.redis_server import redis_server_binary
from tests.helpers.results import record
from tests.helpers.views import acked, check_view, lost, message_ids, publish_until
from tests.helpers.waits import async_wait_until, run_async

NODE_DOWN_AFTER = 2.0
NODE_PORT = 4000
REDIS_PORT = 6379
COOKIE = "partition-test-cookie-" + secrets.token_hex(8)
DEADLINE = 30.0
CLONE_NEWNET = 0x40000000

pytestmark = [pytest.mark.timeout(120), pytest.mark.netns]


# Reaching into a namespace from the test process ----------------------------------------------


class InNamespace:
    """Worker threads that entered the network namespace `ns` (setns); sockets made there live there."""

    _libc = ctypes.CDLL(None, use_errno=True)

    def __init__(self, ns: str, workers: int = 6) -> None:
        self.ns = ns
        self.pool = ThreadPoolExecutor(max_workers=workers, initializer=self._enter, thread_name_prefix=ns)

    def _enter(self) -> None:
        fd = os.open(f"/run/netns/{self.ns}", os.O_RDONLY)
        try:
            if self._libc.setns(fd, CLONE_NEWNET) != 0:
                error = ctypes.get_errno()
                raise OSError(error, f"setns into {self.ns}: {os.strerror(error)}")
        finally:
            os.close(fd)

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, function, *args)

    async def dial(self, host: str, port: int) -> socket.socket:
        sock = await self.run(socket.create_connection, (host, port), 5)
        sock.setblocking(False)
        return sock

    async def get(self, url: str) -> tuple[int | None, Any]:
        """(status, JSON body) of GET `url`; (None, error) when it cannot be reached within 1 s."""

        def fetch() -> tuple[int | None, Any]:
            try:
                response = httpx.get(url, timeout=1.0)
                return response.status_code, response.json()
            except (httpx.HTTPError, ValueError) as error:
                return None, type(error).__name__

        return await self.run(fetch)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class NsClient(PhoenixClient):
    """tests.helpers's Phoenix client, its TCP connection made inside a namespace."""

    def __init__(self, url: str, ns: InNamespace) -> None:
        super().__init__(url, timeout=DEADLINE)
        self.ns = ns

    async def open(self, sock: socket.socket | None = None) -> Self:
        parts = urlsplit(self.url)
        assert parts.hostname and parts.port
        return await super().open(sock or await self.ns.dial(parts.hostname, parts.port))


# The scenario ---------------------------------------------------------------------------------------


@dataclass
class Timeline:
    """What was polled, over time: (time.monotonic(), value)."""

    readyz: dict[str, list[tuple[float, int | None]]] = field(default_factory=lambda: {"a": [], "b": []})
    views: dict[str, list[tuple[float, list[str] | None]]] = field(default_factory=lambda: {"a": [], "b": []})


@dataclass
class Partition:
    names: dict[str, str]
    cut_at: float
    healed_at: float
    a_dropped_b_at: float
    b_not_ready_at: float
    leave_seen_at: float
    b_ready_again_at: float
    rejoined_at: float
    timeline: Timeline
    pushes: dict[str, list[Push]]
    stream: dict[str, str]
    views: dict[str, list[str]]  # watcher -> ids received live
    caught_up: dict[str, list[str]]  # watcher -> ids received live, then after a rejoin with last_seen_id
    after_rejoin: list[str]  # stream ids from the first message published after the rejoin


def first(series: list[tuple[float, Any]], after: float, test: Callable[[Any], bool]) -> float | None:
    return next((at for at, value in series if at > after and test(value)), None)


async def play_partition(net: Network, nodes: dict[str, NodeProcess], hold: float = 0.0) -> Partition:
    names = {key: node.env["NODE_NAME"] for key, node in nodes.items()}
    ns = {"a": InNamespace(net.hosts[0].ns), "b": InNamespace(net.hosts[1].ns), "hub": InNamespace(net.hub)}
    timeline = Timeline()
    stop_polling, stop_publishing = asyncio.Event(), asyncio.Event()
    clients: list[PhoenixClient] = []
    try:

        async def poll(key: str) -> None:
            url = nodes[key].url
            while not stop_polling.is_set():
                (status, _), (ok, body) = await asyncio.gather(
                    ns[key].get(url + "/readyz"), ns[key].get(url + "/api/nodes")
                )
                now = time.monotonic()
                timeline.readyz[key].append((now, status))
                timeline.views[key].append((now, body["nodes"] if ok == 200 else None))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await stop_polling.wait()

        pollers = [asyncio.create_task(poll(key)) for key in ("a", "b")]

        def both_see_both(after: float = 0.0) -> float | None:
            together = {"a": [names["a"], names["b"]], "b": [names["b"], names["a"]]}
            times = [first(timeline.views[key], after, lambda v, key=key: v == together[key]) for key in ("a", "b")]
            return max(times) if all(t is not None for t in times) else None  # type: ignore[type-var]

        await async_wait_until(lambda: both_see_both(), DEADLINE, "a and b connected by discovery")

        async def client(key: str, user: str) -> PhoenixClient:
            c = await NsClient(nodes[key].ws_url, ns[key]).open()
            clients.append(c)
            await c.join(LOBBY, {"user": user})
            return c

        watch = {key: await client(key, f"watch-{key}") for key in ("a", "b")}
        pub = {key: await client(key, f"pub-{key}") for key in ("a", "b")}
        await watch["a"].wait_for(
            lambda f: (
                f.event in ("presence_state", "presence_diff")
                and "pub-b" in (f.payload if f.event == "presence_state" else f.payload["joins"])
            ),
            what="pub-b's presence on a",
        )
        pushes: dict[str, list[Push]] = {"pub-a": [], "pub-b": []}
        publishers = [
            asyncio.create_task(publish_until(pub[key], f"pub-{key}", pushes[f"pub-{key}"], stop_publishing, 0.15))
            for key in ("a", "b")
        ]
        await async_wait_until(
            lambda: all(len(acked(p)) >= 5 for p in pushes.values()), DEADLINE, "5 acks each before the cut"
        )

        # The cut -------------------------------------------------------------------------
        mark = len(watch["a"].frames)
        cut_at = time.monotonic()
        await asyncio.to_thread(link, net.hub, "v2", "down")
        a_dropped_b_at = await async_wait_until(
            lambda: first(timeline.views["a"], cut_at, lambda v: v == [names["a"]]), DEADLINE, "a drops b"
        )
        b_not_ready_at = await async_wait_until(
            lambda: first(timeline.readyz["b"], cut_at, lambda s: s == 503), DEADLINE, "b not ready"
        )
        await async_wait_until(
            lambda: any(p.replied and p.sent > cut_at and p.status == "error" for p in pushes["pub-b"]),
            DEADLINE,
            "a push on b answered unavailable",
        )
        leave = await watch["a"].wait_for(
            lambda f: f.event == "presence_diff" and "pub-b" in f.payload["leaves"], DEADLINE, since=mark
        )
        await async_wait_until(
            lambda: sum(1 for p in acked(pushes["pub-a"]) if p.sent > a_dropped_b_at) >= 3, DEADLINE, "a serves on"
        )
        await asyncio.sleep(hold)  # a longer partition (soak): nothing to wait for, the cut simply lasts

        # Healed --------------------------------------------------------------------------
        healed_at = time.monotonic()
        await asyncio.to_thread(link, net.hub, "v2", "up")
        b_ready_again_at = await async_wait_until(
            lambda: first(timeline.readyz["b"], healed_at, lambda s: s == 200), DEADLINE, "b ready again"
        )
        rejoined_at = await async_wait_until(lambda: both_see_both(healed_at), DEADLINE, "a and b connected again")
        after = {name: len(acked(p)) for name, p in pushes.items()}
        await async_wait_until(
            lambda: all(len(acked(p)) >= after[n] + 5 for n, p in pushes.items()), DEADLINE, "5 more acks each"
        )
        stop_publishing.set()
        await asyncio.gather(*publishers)
        for watcher in watch.values():
            for p in pushes.values():
                await watcher.wait_for_message(acked(p)[-1].body, DEADLINE)

        stream = await ns["hub"].run(read_stream, net.hub_ip)
        published_after = {p.body for ps in pushes.values() for p in acked(ps) if p.sent > rejoined_at}
        ids = list(stream)
        start = next((n for n, i in enumerate(ids) if stream[i] in published_after), len(ids))
        after_rejoin = ids[start:]
        # Each watcher rejoins its own node with last_seen_id: what does catch-up repair?
        rejoined = {}
        for key, watcher in watch.items():
            params: dict[str, Any] = {"user": f"watch-{key}", "last_seen_id": message_ids(watcher)[-1]}
            again = await NsClient(nodes[key].ws_url, ns[key]).open()
            clients.append(again)
            await again.join(LOBBY, params)
            await again.push("phoenix", "heartbeat", {})  # everything the join sent comes before this reply
            rejoined[key] = message_ids(watcher, again)
        return Partition(
            names,
            cut_at,
            healed_at,
            a_dropped_b_at,
            b_not_ready_at,
            leave.at,
            b_ready_again_at,
            rejoined_at,
            timeline,
            pushes,
            stream,
            {f"watch-{key}": message_ids(w) for key, w in watch.items()},
            {f"watch-{key}": ids for key, ids in rejoined.items()},
            after_rejoin,
        )
    finally:
        stop_publishing.set()
        stop_polling.set()
        for c in clients:
            await c.close()
        with contextlib.suppress(Exception):
            await asyncio.gather(*pollers)
        for worker in ns.values():
            worker.close()


def last_event(lines: list[dict[str, Any]], event: str) -> float:
    return max(float(line["ts"]) for line in lines if line.get("event") == event)


def link(ns: str, device: str, state: str) -> None:
    subprocess.run(["ip", "-n", ns, "link", "set", device, state], check=True, capture_output=True, timeout=10)


def read_stream(host: str) -> dict[str, str]:
    with redis.Redis(host=host, port=REDIS_PORT, decode_responses=True, socket_timeout=5) as client:
        return {entry_id: fields["body"] for entry_id, fields in client.xrange(f"chat:room:{LOBBY}")}


def run_partition(row: str, hold: float = 0.0) -> Partition:
    with Network(hosts=2) as net:
        command = [redis_server_binary(), "--port", str(REDIS_PORT), "--bind", net.hub_ip]
        net.spawn(
            net.hub, [*command, "--save", "", "--appendonly", "no", "--protected-mode", "no"], ready="Ready to accept"
        )
        nodes = {}
        for key, host in zip("ab", net.hosts, strict=True):
            env = {
                "NODE_NAME": f"{key}@{host.ip}",
                "REDIS_URL": f"redis://{net.hub_ip}:{REDIS_PORT}/0",
                "CLUSTER_COOKIE": COOKIE,
                "DISCOVERY": "redis",
                "NODE_DOWN_AFTER": str(NODE_DOWN_AFTER),
                "HISTORY_SIZE": "10000",
                "PING_INTERVAL": "0",
                "NO_PROXY": "*",
            }
            nodes[key] = NodeProcess("stage2_cluster", env, host=host.ip, port=NODE_PORT, prefix=net.prefix(host.ns))
        try:
            with ThreadPoolExecutor(2) as pool:
                for started in [pool.submit(node.start) for node in nodes.values()]:
                    started.result()
            result = run_async(lambda: play_partition(net, nodes, hold))
        finally:
            for node in nodes.values():
                node.stop()
        result_logs = {key: node.logs() for key, node in nodes.items()}
    every = [p for ps in result.pushes.values() for p in ps]
    stream = list(result.stream)
    b_kept_a = [
        v for at, v in result.timeline.views["b"] if result.cut_at < at < result.healed_at and v and len(v) == 2
    ]
    record(
        row,
        simulated="b's link to the bridge set down (b cut off from a and from Redis), then up",
        node_down_after_s=NODE_DOWN_AFTER,
        a_dropped_b_s=round(result.a_dropped_b_at - result.cut_at, 3),
        b_users_left_on_a_s=round(result.leave_seen_at - result.cut_at, 3),
        b_readyz_503_s=round(result.b_not_ready_at - result.cut_at, 3),
        b_listed_a_while_cut=bool(b_kept_a),
        b_pushes_unavailable=sum(1 for p in result.pushes["pub-b"] if p.status == "error"),
        partition_s=round(result.healed_at - result.cut_at, 3),
        heal_to_b_ready_s=round(result.b_ready_again_at - result.healed_at, 3),
        heal_to_reconnected_s=round(result.rejoined_at - result.healed_at, 3),
        acked=len(acked(every)),
        found_in_history=len(acked(every)) - len(lost(every, result.stream)),
        lost=len(lost(every, result.stream)),
        live_gaps={w: len(check_view(ids, stream).gaps) for w, ids in result.views.items()},
        duplicates={w: len(check_view(ids, stream).duplicates) for w, ids in result.views.items()},
        gaps_after_last_seen_id_catch_up={w: len(check_view(ids, stream).gaps) for w, ids in result.caught_up.items()},
        messages_after_reconnect=len(result.after_rejoin),
        b_dropped_a_for_silence=any(
            line.get("event") == "node disconnected" and line.get("reason") == "no heartbeat"
            for line in result_logs["b"]
        ),
        # From b's subscription coming back (its catch-up reads the stream up to then) until a
        # connects b again: before a kept publishing to a peer dropped for silence, b's clients
        # missed a's messages of this window.
        resubscribed_to_reconnected_s=round(
            last_event(result_logs["a"], "node connected") - last_event(result_logs["b"], "redis reachable"), 3
        ),
    )
    return result


@pytest.fixture(scope="module")
def partition() -> Iterator[Partition]:
    yield run_partition("partition")


def test_a_drops_b_and_b_users_leave(partition: Partition) -> None:
    assert partition.a_dropped_b_at > partition.cut_at
    assert partition.leave_seen_at > partition.cut_at


def test_b_cut_off_is_not_ready_and_answers_unavailable(partition: Partition) -> None:
    during = [s for at, s in partition.timeline.readyz["b"] if partition.b_not_ready_at <= at < partition.healed_at]
    assert during and set(during) == {503}
    replies = [p for p in partition.pushes["pub-b"] if p.replied]
    assert all(p.status == "ok" or p.response == {"reason": "unavailable"} for p in replies)
    assert any(p.response == {"reason": "unavailable"} for p in replies)


def test_a_keeps_serving_during_the_partition(partition: Partition) -> None:
    during = [p for p in partition.pushes["pub-a"] if partition.cut_at < p.sent < partition.healed_at]
    assert during and all(p.status == "ok" for p in during)
    assert {s for at, s in partition.timeline.readyz["a"] if partition.cut_at < at < partition.healed_at} == {200}


def test_after_healing_they_reconnect_and_nothing_acknowledged_is_lost(partition: Partition) -> None:
    every = [p for ps in partition.pushes.values() for p in ps]
    assert lost(every, partition.stream) == []
    assert partition.rejoined_at > partition.healed_at


def test_after_healing_both_nodes_deliver_one_total_order(partition: Partition) -> None:
    tail = partition.after_rejoin
    assert len(tail) >= 5
    for watcher, ids in partition.views.items():
        assert ids[-len(tail) :] == tail, watcher
        assert check_view(ids, list(partition.stream)).duplicates == [], watcher


def test_after_healing_no_client_missed_a_message_or_saw_one_twice(partition: Partition) -> None:
    """Each watcher's live view, from its join to the end, is the room's stream: a kept
    publishing to b while b was dropped for silence, so b's clients lost nothing between
    b's subscription coming back and a connecting b again."""
    for watcher, ids in partition.views.items():
        view = check_view(ids, list(partition.stream))
        assert view.clean, (watcher, view)


@pytest.mark.soak
def test_soak_a_partition_of_20_seconds_heals_the_same_way() -> None:
    result = run_partition("soak_partition_20s", hold=20.0)
    every = [p for ps in result.pushes.values() for p in ps]
    assert lost(every, result.stream) == []
    tail = result.after_rejoin
    assert len(tail) >= 5 and all(ids[-len(tail) :] == tail for ids in result.views.values())
