"""The SPEC's guarantees under node faults, with real processes and a real Redis.

- A node killed with SIGKILL while every node carries traffic: its peers drop it and its
  users' presences leave within a generous deadline, its clients reconnect to another node with `last_seen_id`,
  nothing acknowledged is missing from history, and every client's view of the room
  (history replay, live messages, catch-up) is the room's stream: no gap, no duplicate.
- A node stopped with SIGTERM while its clients push as fast as they can: sockets close
  with 1001, `/readyz` answers 503 from the moment the drain starts, every push the node
  took in is answered (and one it did not answer is not stored), clients go elsewhere.
- A slow consumer (a client that stops reading) is dropped at its buffer bound while a
  reader next to it gets every message with its latency unchanged.

Redis killed, restarted and paused mid-traffic (and what happened to each push meanwhile)
is tests/test_stage2_faults.py; partitions
are tests/test_reliability_partition.py. Each scenario is played once by a module fixture
and examined by several tests. Measured numbers go to test-results/reliability.json
(`record`), which docs/reliability.md is written from; timings are reported, not asserted.
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.helpers.cluster import Cluster, full_name
from tests.helpers.metrics import metric
from tests.helpers.node import running_node
from tests.helpers.phoenix import LOBBY, Frame, PhoenixClient, Push, parse_ids, unique
from tests.helpers.raw_websocket import RawWebSocket
from tests.helpers.redis_server import RedisServer
from tests.helpers.results import record, report_timing
from tests.helpers.views import acked, check_view, lost, message_ids, pause, publish_until, stream_of
from tests.helpers.waits import async_wait_until, run_async, wait_until

pytestmark = pytest.mark.slow

NODE_DOWN_AFTER = 2.0
FAST = {"NODE_DOWN_AFTER": str(NODE_DOWN_AFTER), "HISTORY_SIZE": "10000"}
DEADLINE = 20.0  # any single wait in a scenario
DROP_DEADLINE = NODE_DOWN_AFTER + 6.0  # generous: heartbeat period, a loaded CI machine


async def last_id(client: PhoenixClient) -> str | None:
    ids = message_ids(client)
    return ids[-1] if ids else None


async def rejoin(url: str, user: str, previous: PhoenixClient) -> PhoenixClient:
    """Reconnect as `user` on `url`, catching up after the last message `previous` received."""
    client = await PhoenixClient(url).open()
    params: dict[str, Any] = {"user": user}
    if (seen := await last_id(previous)) is not None:
        params["last_seen_id"] = seen
    await client.join(LOBBY, params)
    return client


async def nodes_of(http: httpx.AsyncClient, url: str) -> list[str]:
    return (await http.get(url + "/api/nodes")).json()["nodes"]


# A node killed with SIGKILL mid-traffic ------------------------------------------------------------


@dataclass
class Kill:
    stream: dict[str, str]
    pushes: dict[str, list[Push]]  # publisher -> its pushes (the killed node's publisher: before and after)
    views: dict[str, list[str]]  # client -> every message id it received, reconnects included
    in_flight: list[Push]  # pushes sent to the node just before SIGKILL, never answered
    dropped_after: dict[str, float]  # surviving node -> seconds from SIGKILL until it no longer lists the dead one
    leave: Frame  # the presence_diff that told a client on a survivor that the dead node's users left
    leave_after: float
    reconnected_after: float  # SIGKILL until the killed node's watcher had rejoined node a and caught up


async def play_kill(cluster: Cluster) -> Kill:
    urls = {name: cluster.node(name).url for name in "abc"}
    ws = {name: cluster.node(name).ws_url for name in "abc"}
    stop = asyncio.Event()
    pushes: dict[str, list[Push]] = {f"pub-{n}": [] for n in "abc"}
    watchers = {n: await PhoenixClient(ws[n]).open() for n in "abc"}
    publishers = {n: await PhoenixClient(ws[n]).open() for n in "abc"}
    extra: list[PhoenixClient] = []
    try:
        for n in "abc":
            await watchers[n].join(LOBBY, {"user": f"watch-{n}"})
            await publishers[n].join(LOBBY, {"user": f"pub-{n}"})
        await watchers["a"].wait_for(
            lambda f: (
                (f.event == "presence_state" and {"watch-c", "pub-c"} <= set(f.payload))
                or (f.event == "presence_diff" and "pub-c" in f.payload["joins"])
            ),
            what="pub-c's presence on a",
        )
        mark = len(watchers["a"].frames)
        tasks = {
            n: asyncio.create_task(publish_until(publishers[n], f"pub-{n}", pushes[f"pub-{n}"], stop)) for n in "abc"
        }
        await async_wait_until(lambda: all(len(acked(p)) >= 5 for p in pushes.values()), DEADLINE, "5 acks each")

        # A few pushes sent to c without waiting, then SIGKILL: they are in flight when it dies.
        in_flight = [Push(f"pub-c in flight {k} {unique()}", time.monotonic()) for k in range(3)]
        for push in in_flight:
            await publishers["c"].send(LOBBY, "new:msg", {"user": "pub-c", "body": push.body})
        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.kill, "c")

        # The killed node's clients notice and go to another node, catching up with last_seen_id.
        await watchers["c"].wait_closed(DEADLINE)
        moved_watcher = await rejoin(ws["a"], "watch-c", watchers["c"])
        extra.append(moved_watcher)
        await tasks["c"]
        await publishers["c"].wait_closed(DEADLINE)
        moved_publisher = await rejoin(ws["b"], "pub-c", publishers["c"])
        extra.append(moved_publisher)
        reconnected_after = time.monotonic() - killed_at
        tasks["c"] = asyncio.create_task(publish_until(moved_publisher, "pub-c", pushes["pub-c"], stop))

        async with httpx.AsyncClient(timeout=2.0) as http:

            async def dropped_by(name: str) -> float:
                while full_name("c") in await nodes_of(http, urls[name]):
                    if time.monotonic() > killed_at + DEADLINE:
                        raise TimeoutError(f"{name} still lists c")
                    await asyncio.sleep(0.05)
                return time.monotonic() - killed_at

            dropped = dict(zip("ab", await asyncio.gather(dropped_by("a"), dropped_by("b")), strict=True))
        leave = await watchers["a"].wait_for(
            lambda f: f.event == "presence_diff" and "pub-c" in f.payload["leaves"],
            DEADLINE,
            since=mark,
            what="pub-c leaving on a",
        )
        # Traffic goes on after the drop: every publisher, the moved one included, gets 5 more acks.
        after = {name: len(acked(p)) for name, p in pushes.items()}
        await async_wait_until(
            lambda: all(len(acked(p)) >= after[name] + 5 for name, p in pushes.items()), DEADLINE, "5 more acks each"
        )
        stop.set()
        await asyncio.gather(*tasks.values())
        # Every client has received the last acknowledged message of every publisher.
        readers = [watchers["a"], watchers["b"], moved_watcher, publishers["a"], publishers["b"], moved_publisher]
        for client in readers:
            for p in pushes.values():
                if acked(p):
                    await client.wait_for_message(acked(p)[-1].body, DEADLINE)
        views = {
            "watch-a": message_ids(watchers["a"]),
            "watch-b": message_ids(watchers["b"]),
            "watch-c (c, then a)": message_ids(watchers["c"], moved_watcher),
            "pub-a": message_ids(publishers["a"]),
            "pub-b": message_ids(publishers["b"]),
            "pub-c (c, then b)": message_ids(publishers["c"], moved_publisher),
        }
        return Kill(
            stream_of(cluster.redis), pushes, views, in_flight, dropped, leave, leave.at - killed_at, reconnected_after
        )
    finally:
        stop.set()
        for client in [*watchers.values(), *publishers.values(), *extra]:
            await client.close()


@pytest.fixture(scope="module")
def killed() -> Iterator[Kill]:
    with RedisServer() as redis, Cluster(redis, env=FAST) as nodes:
        nodes.start("a", "b", "c")
        nodes.connected("a", "b", "c")
        result = run_async(lambda: play_kill(nodes))
    yield result
    all_pushes = [p for ps in result.pushes.values() for p in ps]
    stored_in_flight = [p for p in result.in_flight if p.body in result.stream.values()]
    record(
        "node_sigkill_mid_traffic",
        nodes=3,
        node_down_after_s=NODE_DOWN_AFTER,
        dropped_by_a_s=round(result.dropped_after["a"], 3),
        dropped_by_b_s=round(result.dropped_after["b"], 3),
        presence_leave_s=round(result.leave_after, 3),
        clients_reconnected_s=round(result.reconnected_after, 3),
        acked=len(acked(all_pushes)),
        found_in_history=len(acked(all_pushes)) - len(lost(all_pushes, result.stream)),
        lost=len(lost(all_pushes, result.stream)),
        in_flight_unanswered=len(result.in_flight),
        in_flight_stored_anyway=len(stored_in_flight),
        views_checked=len(result.views),
        gaps=sum(len(check_view(v, list(result.stream)).gaps) for v in result.views.values()),
        duplicates=sum(len(check_view(v, list(result.stream)).duplicates) for v in result.views.values()),
    )


def test_killed_node_is_dropped_by_every_peer(killed: Kill) -> None:
    assert set(killed.dropped_after) == {"a", "b"}
    for name, seconds in killed.dropped_after.items():
        report_timing(f"sigkill_to_drop_by_{name}", seconds, node_down_after=NODE_DOWN_AFTER)
        assert seconds <= DROP_DEADLINE


def test_killed_node_users_presences_leave_on_surviving_nodes(killed: Kill) -> None:
    report_timing("sigkill_to_presence_leave", killed.leave_after, node_down_after=NODE_DOWN_AFTER)
    leaves = killed.leave.payload["leaves"]
    # Only what lived on c leaves: pub-c's meta there, not the one it has since on b.
    assert [meta["node"] for meta in leaves["pub-c"]["metas"]] == ["c@localhost"]
    assert all(meta["node"] == "c@localhost" for user in leaves.values() for meta in user["metas"]), leaves
    assert not {"watch-a", "pub-a", "watch-b", "pub-b"} & set(leaves)
    assert 0 < killed.leave_after <= DROP_DEADLINE


def test_nothing_acknowledged_is_missing_from_history_after_a_sigkill(killed: Kill) -> None:
    every = [p for pushes in killed.pushes.values() for p in pushes]
    assert len(acked(every)) >= 30
    assert lost(every, killed.stream) == []
    # Pushes answered with anything but ok (none are expected here) are not in the stream.
    refused = [p for p in every if p.status == "error"]
    assert not [p for p in refused if p.body in killed.stream.values()]


def test_every_clients_view_is_the_stream_without_gaps_or_duplicates_after_catch_up(killed: Kill) -> None:
    stream = list(killed.stream)
    for client, ids in killed.views.items():
        check = check_view(ids, stream)
        assert check.clean, (client, check)
        assert check.seen == len(stream), client


def test_every_node_delivered_the_same_order(killed: Kill) -> None:
    assert killed.views["watch-a"] == killed.views["watch-b"] == list(killed.stream)


# A node stopped with SIGTERM: drain -----------------------------------------------------------------


class ReadyzProbe:
    """Ask /readyz back to back on one keep-alive connection, from a thread: (sent, answered, status)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[float, float, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ReadyzProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(DEADLINE)

    def _run(self) -> None:
        with httpx.Client(timeout=1.0) as http:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    status: int | None = http.get(self.url + "/readyz").status_code
                except httpx.HTTPError:
                    status = None
                self.answers.append((sent, time.monotonic(), status))
                if status is None:
                    self._stop.wait(0.01)  # the node has stopped listening: no busy loop


@dataclass
class Drain:
    close_codes: list[int | None]
    closed_at: list[float]
    signalled_at: float
    exit_code: int
    readyz: list[tuple[float, float, int | None]]
    pushes: list[Push]
    stream: dict[str, str]
    views: dict[str, list[str]]
    dropped_by_a_after: float


async def play_drain(cluster: Cluster) -> Drain:
    a, b = cluster.node("a"), cluster.node("b")
    clients = [await PhoenixClient(b.ws_url).open() for _ in range(3)]
    moved: list[PhoenixClient] = []
    watcher = await PhoenixClient(a.ws_url).open()
    pushes: list[Push] = []
    try:
        await watcher.join(LOBBY, {"user": "watch-a"})
        for n, client in enumerate(clients):
            await client.join(LOBBY, {"user": f"user-{n}"})

        async def push_fast(client: PhoenixClient, n: int) -> None:
            """Pushes as fast as they can be sent, without waiting for replies: always some in flight."""
            mine: list[tuple[Push, str]] = []
            while not client.closed.is_set() and len(mine) < 5000:
                push = Push(f"user-{n} {len(mine)} {unique()}", time.monotonic())
                try:
                    ref = await client.send(LOBBY, "new:msg", {"user": f"user-{n}", "body": push.body})
                except ConnectionClosed:
                    break
                pushes.append(push)
                mine.append((push, ref))
                await asyncio.sleep(0.002)
            for push, ref in mine:
                reply = next((f for f in client.frames if f.event == "phx_reply" and f.ref == ref), None)
                if reply is not None:
                    push.replied, push.status = reply.at, reply.payload["status"]
                    push.response = reply.payload.get("response", {})

        with ReadyzProbe(b.url) as probe:
            senders = [asyncio.create_task(push_fast(client, n)) for n, client in enumerate(clients)]
            await async_wait_until(lambda: len(pushes) >= 150, DEADLINE, "150 pushes sent")
            await async_wait_until(lambda: len(probe.answers) >= 3, DEADLINE, "/readyz answered")

            async def closed_time(client: PhoenixClient) -> float:
                await client.closed.wait()
                return time.monotonic()

            closers = [asyncio.create_task(closed_time(client)) for client in clients]
            signalled_at = time.monotonic()
            b.signal(signal.SIGTERM)
            codes = [await client.wait_closed(DEADLINE) for client in clients]
            closed_at = [await closer for closer in closers]
            await asyncio.gather(*senders)
            exit_code = await asyncio.to_thread(b.wait, DEADLINE)
        async with httpx.AsyncClient(timeout=2.0) as http:
            while full_name("b") in await nodes_of(http, a.url):
                if time.monotonic() > signalled_at + DEADLINE:
                    raise TimeoutError("a still lists b")
                await asyncio.sleep(0.05)
            dropped_after = time.monotonic() - signalled_at
        # The drained node's clients reconnect to a, catching up after what they saw.
        for n, client in enumerate(clients):
            moved.append(await rejoin(a.ws_url, f"user-{n}", client))
        last = max(acked(pushes), key=lambda p: parse_ids([p.response["id"]])[0])
        await watcher.wait_for_message(last.body, DEADLINE)
        for old, new in zip(clients, moved, strict=True):
            if not any(m["body"] == last.body for m in old.messages()):
                await new.wait_for_message(last.body, DEADLINE)
        views = {
            f"user-{n} (b, then a)": message_ids(old, new)
            for n, (old, new) in enumerate(zip(clients, moved, strict=True))
        }
        views["watch-a"] = message_ids(watcher)
        return Drain(
            codes,
            closed_at,
            signalled_at,
            exit_code,
            probe.answers,
            pushes,
            stream_of(cluster.redis),
            views,
            dropped_after,
        )
    finally:
        for client in [*clients, *moved, watcher]:
            await client.close()


@pytest.fixture(scope="module")
def drained() -> Iterator[Drain]:
    with RedisServer() as redis, Cluster(redis, env=FAST) as nodes:
        nodes.start("a")
        nodes.start("b", RATE_LIMIT="1000/1000")  # the pushers are not to be rate limited: every push is real work
        nodes.connected("a", "b")
        result = run_async(lambda: play_drain(nodes))
    yield result
    first_close = min(result.closed_at)
    not_ready = [answered for sent, answered, status in result.readyz if sent >= result.signalled_at and status != 200]
    unanswered = [p for p in result.pushes if p.status == "no reply"]
    record(
        "node_sigterm_drain",
        sockets=len(result.close_codes),
        close_codes=sorted({c for c in result.close_codes if c is not None}),
        exit_code=result.exit_code,
        readyz_not_ready_after_sigterm_s=round(min(not_ready) - result.signalled_at, 4) if not_ready else None,
        first_socket_closed_after_sigterm_s=round(first_close - result.signalled_at, 4),
        readyz_200_after_first_close=sum(
            1 for sent, _answered, status in result.readyz if sent > first_close and status == 200
        ),
        dropped_by_peer_s=round(result.dropped_by_a_after, 3),
        pushes_sent=len(result.pushes),
        acked=len(acked(result.pushes)),
        found_in_history=len(acked(result.pushes)) - len(lost(result.pushes, result.stream)),
        lost=len(lost(result.pushes, result.stream)),
        never_read_so_unanswered=len(unanswered),
        unanswered_but_stored=sum(1 for p in unanswered if p.body in result.stream.values()),
        gaps=sum(len(check_view(v, list(result.stream)).gaps) for v in result.views.values()),
        duplicates=sum(len(check_view(v, list(result.stream)).duplicates) for v in result.views.values()),
    )


def test_sigterm_closes_every_socket_with_1001_and_exits_0(drained: Drain) -> None:
    assert drained.close_codes == [1001, 1001, 1001]
    assert drained.exit_code == 0


def test_readyz_is_never_200_once_sockets_start_closing(drained: Drain) -> None:
    first_close = min(drained.closed_at)
    late = [(sent, status) for sent, _answered, status in drained.readyz if sent > first_close and status == 200]
    assert late == []
    before = [status for _sent, answered, status in drained.readyz if answered < drained.signalled_at]
    assert before and set(before) == {200}


def test_every_push_the_draining_node_took_in_is_answered(drained: Drain) -> None:
    """Answered ok means stored; no answer means never taken in, so not stored (a resend is safe)."""
    assert len(acked(drained.pushes)) >= 30
    assert lost(drained.pushes, drained.stream) == []
    bodies = set(drained.stream.values())
    unanswered_but_stored = [p.body for p in drained.pushes if p.status == "no reply" and p.body in bodies]
    assert unanswered_but_stored == []
    assert all(p.status in ("ok", "no reply") for p in drained.pushes), {p.status for p in drained.pushes}


def test_drained_clients_reconnect_elsewhere_without_gaps_or_duplicates(drained: Drain) -> None:
    stream = list(drained.stream)
    for client, ids in drained.views.items():
        check = check_view(ids, stream)
        assert check.clean and check.seen == len(stream), (client, check)


# A slow consumer ---------------------------------------------------------------------------------


@dataclass
class SlowConsumer:
    dropped: bool
    drop_after: float  # from the first flood message until the node counted the drop
    sent: int
    received_by_reader: list[str]
    published: list[str]
    latency: dict[str, list[float]]  # phase -> probe latencies, ms
    bytes_sent_before_drop: int


async def play_slow_consumer(url: str, ws_url: str, port: int) -> SlowConsumer:

    body = "x" * 1900
    # Probe latency while idle, while a flood fills the slow consumer's buffers ("stuck"), and
    # while the same flood goes on after it was dropped: the two flood phases differ only by it.
    latency: dict[str, list[float]] = {"idle": [], "stuck": [], "after_drop": []}
    phase = "idle"
    stop = asyncio.Event()
    published: list[str] = []
    async with (
        PhoenixClient(ws_url) as reader,
        PhoenixClient(ws_url) as probe,
        PhoenixClient(ws_url) as flooder,
        httpx.AsyncClient(base_url=url, timeout=5) as http,
    ):
        await reader.join(LOBBY, {"user": "reader"})
        await probe.join(LOBBY, {"user": "probe"})
        await flooder.join(LOBBY, {"user": "flooder"})

        async def measure() -> None:
            """A small message every 50 ms; its latency is send -> arrival at the reader."""
            n = 0
            while not stop.is_set():
                text = f"probe {n} {unique()}"
                n += 1
                sent, at = time.monotonic(), phase
                await probe.send(LOBBY, "new:msg", {"user": "probe", "body": text})
                frame = await reader.wait_for_message(text, DEADLINE)
                latency[at].append((frame.at - sent) * 1000)
                await pause(stop, 0.05)

        measuring = asyncio.create_task(measure())
        await async_wait_until(lambda: len(latency["idle"]) >= 20, DEADLINE, "20 probe round trips")
        # The slow consumer: joins, then never reads again, with a small receive buffer.
        slow = await asyncio.to_thread(RawWebSocket.open, "127.0.0.1", port, rcvbuf=4096)
        dropped_at = None
        try:
            await asyncio.to_thread(slow.send_text, json.dumps(["1", "1", LOBBY, "phx_join", {"user": "slow"}]))
            drops_before = metric((await http.get("/metrics")).text, "chat_drops_total")
            phase = "stuck"
            flood_started = time.monotonic()
            while time.monotonic() < flood_started + 2 * DEADLINE:
                refs = []
                for _ in range(50):
                    text = f"flood {len(published)} {body}"
                    refs.append(await flooder.send(LOBBY, "new:msg", {"user": "flooder", "body": text}))
                    published.append(text)
                for ref in refs:
                    assert (await flooder.reply(ref, DEADLINE)).ok
                # Paced by the reader, so that no backlog of its own builds up from phase to phase.
                await reader.wait_for_message(published[-1], DEADLINE)
                drops = metric((await http.get("/metrics")).text, "chat_drops_total")  # in both phases: same pace
                if dropped_at is None:
                    if drops > drops_before:
                        dropped_at = time.monotonic()
                        flood_at_drop = len(published)
                        phase = "after_drop"
                elif len(latency[phase]) >= 20:
                    break
        finally:
            stop.set()
            await measuring
            slow.close()
        await reader.wait_for_message(published[-1], DEADLINE)
        received = [p["body"] for p in reader.messages() if p["body"].startswith("flood ")]
    return SlowConsumer(
        dropped_at is not None,
        (dropped_at or time.monotonic()) - flood_started,
        flood_at_drop if dropped_at else len(published),
        received,
        published,
        latency,
        (flood_at_drop if dropped_at else len(published)) * (len(body) + 120),
    )


@pytest.fixture(scope="module")
def slow_consumer() -> Iterator[SlowConsumer]:
    env = {"PING_INTERVAL": "0", "RATE_LIMIT": "100000/100000"}
    with running_node("stage1_dev", env) as node:
        result = run_async(lambda: play_slow_consumer(node.url, node.ws_url, node.port))
        assert wait_until(lambda: any("outgoing buffer full" in line for line in node.lines), 5, "the drop logged")

    def p(values: list[float], q: float) -> float:
        return round(statistics.quantiles(values, n=100)[q - 1], 2) if len(values) >= 2 else float("nan")

    yield result
    record(
        "slow_consumer",
        dropped=result.dropped,
        drop_after_s=round(result.drop_after, 3),
        flood_messages=result.sent,
        flood_mb=round(result.bytes_sent_before_drop / 2**20, 1),
        reader_received=len(result.received_by_reader),
        reader_missing=len(set(result.published) - set(result.received_by_reader)),
        **{f"probe_{phase}_p50_ms": p(values, 50) for phase, values in result.latency.items()},
        **{f"probe_{phase}_p99_ms": p(values, 99) for phase, values in result.latency.items()},
    )


def test_a_client_that_stops_reading_is_dropped_at_its_buffer_bound(slow_consumer: SlowConsumer) -> None:
    assert slow_consumer.dropped


def test_the_reader_next_to_it_gets_every_message_in_order(slow_consumer: SlowConsumer) -> None:
    assert slow_consumer.received_by_reader == slow_consumer.published


def test_the_probe_kept_flowing_through_the_slow_consumers_drop(slow_consumer: SlowConsumer) -> None:
    # Latencies are reported (docs/reliability.md), not asserted; they must exist in every phase.
    assert all(len(values) >= 1 for values in slow_consumer.latency.values()), slow_consumer.latency


# Soak (`make soak`): the same scenarios, again and again ---------------------------------------------

SOAK_ROUNDS = 5


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_soak_repeated_sigkills_and_drains_lose_nothing() -> None:
    kills: list[Kill] = []
    drains: list[Drain] = []
    for _ in range(SOAK_ROUNDS):
        with RedisServer() as redis, Cluster(redis, env=FAST) as nodes:
            nodes.start("a", "b", "c")
            nodes.connected("a", "b", "c")
            kills.append(run_async(lambda: play_kill(nodes)))
        with RedisServer() as redis, Cluster(redis, env=FAST) as nodes:
            nodes.start("a")
            nodes.start("b", RATE_LIMIT="1000/1000")
            nodes.connected("a", "b")
            drains.append(run_async(lambda: play_drain(nodes)))
    kill_pushes = [p for k in kills for ps in k.pushes.values() for p in ps]
    kill_lost = sum(len(lost([p for ps in k.pushes.values() for p in ps], k.stream)) for k in kills)
    kill_checks = [check_view(v, list(k.stream)) for k in kills for v in k.views.values()]
    drain_checks = [check_view(v, list(d.stream)) for d in drains for v in d.views.values()]
    unanswered_stored = sum(
        1 for d in drains for p in d.pushes if p.status == "no reply" and p.body in set(d.stream.values())
    )
    record(
        "soak_sigkill_and_drain",
        rounds=SOAK_ROUNDS,
        sigkill_acked=len(acked(kill_pushes)),
        sigkill_lost=kill_lost,
        sigkill_dropped_max_s=round(max(max(k.dropped_after.values()) for k in kills), 3),
        drain_acked=sum(len(acked(d.pushes)) for d in drains),
        drain_lost=sum(len(lost(d.pushes, d.stream)) for d in drains),
        drain_unanswered_but_stored=unanswered_stored,
        drain_close_codes=sorted({c for d in drains for c in d.close_codes if c is not None}),
        views_checked=len(kill_checks) + len(drain_checks),
        gaps=sum(len(c.gaps) for c in kill_checks + drain_checks),
        duplicates=sum(len(c.duplicates) for c in kill_checks + drain_checks),
    )
    assert kill_lost == 0 and all(c.clean for c in kill_checks + drain_checks)
    assert unanswered_stored == 0
    assert all(d.close_codes == [1001, 1001, 1001] for d in drains)
