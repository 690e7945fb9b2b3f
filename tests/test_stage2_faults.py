"""Stage 2 under Redis faults: Redis stopped and restarted, Redis paused.

Each fault is played once by a module-scoped fixture (real nodes, a real redis-server,
real sockets) that records what happened; the tests then check one behaviour each
against that record. Times are measured and reported (`TIMING ...` lines, and
test-results/stage2-timings.json; what happened to each push around a pause in
test-results/reliability.json), with only generous deadlines asserted. A node killed
with SIGKILL is tests/test_reliability_faults.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from stage2_cluster.broker import WATCHDOG_DEADLINE, WATCHDOG_INTERVAL
from tests.helpers.cluster import Cluster, poll_readyz
from tests.helpers.phoenix import LOBBY, Frame, PhoenixClient, Push, unique
from tests.helpers.redis_server import RedisServer
from tests.helpers.results import record, report_timing
from tests.helpers.views import acked, lost, stream_of
from tests.helpers.waits import async_wait_until, run_async

pytestmark = pytest.mark.slow

NODE_DOWN_AFTER = 2.0
FAST = {"NODE_DOWN_AFTER": str(NODE_DOWN_AFTER), "HISTORY_SIZE": "10000"}


# Redis stopped and started again, mid-traffic ----------------------------------------------


@dataclass
class Traffic:
    """A steady publisher on node a, a receiver on node b, and both nodes' /readyz, over time."""

    pushes: list[Push] = field(default_factory=list)
    readyz: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: {"a": [], "b": []})
    received: list[Frame] = field(default_factory=list)

    def acked(self) -> list[Push]:
        return [p for p in self.pushes if p.status == "ok"]

    def delivered(self, push: Push) -> bool:
        return any(f.payload.get("body") == push.body for f in self.received)


@dataclass
class Outage:
    signal: str
    traffic: Traffic
    down_at: float  # the redis-server process is gone
    restart_at: float  # a new redis-server started on the same port
    back_at: float  # ...and answers PING
    first_delivery: Frame
    stream: dict[str, str]  # id -> body, XRANGE of the room's stream afterwards


@contextlib.asynccontextmanager
async def steady_traffic(cluster: Cluster, every: float = 0.12) -> Any:
    """Publish on a every `every` seconds (under the rate limit) and watch b receive, until the block ends."""
    a, b = cluster.node("a"), cluster.node("b")
    traffic = Traffic()
    stop = asyncio.Event()
    run = unique("steady")
    async with PhoenixClient(a.ws_url) as sender, PhoenixClient(b.ws_url) as receiver:
        await sender.join(LOBBY, {"user": "sender"})
        since = await receiver.join(LOBBY, {"user": "receiver"})

        async def publish() -> None:
            for n in range(100_000):
                if stop.is_set():
                    return
                push = Push(f"{run} {n}", time.monotonic())
                traffic.pushes.append(push)
                with contextlib.suppress(TimeoutError):
                    reply = await sender.message(push.body, "sender", deadline=60)
                    push.replied, push.status, push.response = reply.at, reply.status, reply.response
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(every):
                        await stop.wait()

        async def receive() -> None:
            index = since
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await receiver.wait_for(lambda f: f.event == "new:msg", deadline=0.2, since=index)
                fresh = receiver.frames[index:]
                index += len(fresh)
                traffic.received += [f for f in fresh if f.event == "new:msg" and f.payload["body"].startswith(run)]

        tasks = [
            asyncio.create_task(publish()),
            asyncio.create_task(receive()),
            *(
                asyncio.create_task(poll_readyz(node.url, traffic.readyz[name], stop))
                for name, node in (("a", a), ("b", b))
            ),
        ]
        try:
            yield traffic
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            # What was acknowledged last still reaches b (after the loops, so nothing is missed).
            acked = traffic.acked()
            if acked:
                with contextlib.suppress(TimeoutError):
                    await receiver.wait_for_message(acked[-1].body, deadline=5, since=since)
            traffic.received = [
                f for f in receiver.frames[since:] if f.event == "new:msg" and f.payload["body"].startswith(run)
            ]


def ready_states(traffic: Traffic, node: str, start: float, end: float = float("inf")) -> list[int]:
    return [status for at, status in traffic.readyz[node] if start <= at <= end]


async def play_outage(cluster: Cluster, redis_server: RedisServer, sig: signal.Signals) -> Outage:
    async with steady_traffic(cluster) as traffic:
        await async_wait_until(
            lambda: sum(traffic.delivered(p) for p in traffic.acked()) >= 5,
            15,
            "5 messages delivered before the outage",
        )
        await asyncio.to_thread(redis_server.stop, sig)
        down_at = time.monotonic()
        await async_wait_until(
            lambda: (
                sum(1 for p in traffic.pushes if p.sent > down_at and p.replied) >= 3
                and all(503 in ready_states(traffic, name, down_at) for name in ("a", "b"))
            ),
            20,
            "3 replies and /readyz 503 on both nodes during the outage",
        )
        restart_at = time.monotonic()
        await asyncio.to_thread(redis_server.start)
        back_at = time.monotonic()
        first = await async_wait_until(
            lambda: next((f for f in traffic.received if f.at > back_at), None), 30, "a delivery after the restart"
        )
        await async_wait_until(
            lambda: all(ready_states(traffic, name, back_at)[-1:] == [200] for name in ("a", "b")),
            20,
            "/readyz 200 on both nodes",
        )
        await async_wait_until(
            lambda: sum(1 for p in traffic.acked() if p.sent > back_at) >= 3,
            20,
            "3 acknowledged pushes after the restart",
        )
    with redis_server.client() as client:
        stream = {entry_id: fields["body"] for entry_id, fields in client.xrange(f"chat:room:{LOBBY}")}
    return Outage(sig.name, traffic, down_at, restart_at, back_at, first, stream)


@pytest.fixture(scope="module", params=[signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def redis_outage(request: pytest.FixtureRequest) -> Iterator[Outage]:
    with RedisServer(persistent=True) as redis_server, Cluster(redis_server, env=FAST) as cluster:
        cluster.start("a", "b")
        cluster.connected("a", "b")
        yield run_async(lambda: play_outage(cluster, redis_server, request.param))


def test_pushes_during_redis_outage_reply_unavailable(redis_outage: Outage) -> None:
    pushes = redis_outage.traffic.pushes
    during = [p for p in pushes if p.sent > redis_outage.down_at and p.replied and p.replied < redis_outage.restart_at]
    assert during, "no push was answered while Redis was down"
    assert all(p.unavailable for p in during), [p for p in during if not p.unavailable][:3]
    # Nothing else either: every answer is ok or unavailable, and every push was answered.
    assert all(p.status == "ok" or p.unavailable for p in pushes), [p for p in pushes if p.status != "ok"][:3]
    print(f"{redis_outage.signal}: {len(during)} pushes answered unavailable during the outage, {len(pushes)} in all")


def test_readyz_is_503_during_redis_outage_and_200_after(redis_outage: Outage) -> None:
    traffic = redis_outage.traffic
    for name in ("a", "b"):
        during = ready_states(traffic, name, redis_outage.down_at, redis_outage.restart_at)
        assert 503 in during, (name, during)
        assert 200 not in during[during.index(503) :], (name, during)  # not ready until Redis is back
        assert ready_states(traffic, name, redis_outage.back_at)[-1] == 200
        noticed = next(at for at, status in traffic.readyz[name] if at > redis_outage.down_at and status == 503)
        report_timing(f"redis_{redis_outage.signal}_to_readyz_503_{name}", noticed - redis_outage.down_at)


def test_every_acknowledged_push_is_in_the_stream_after_redis_restart(redis_outage: Outage) -> None:
    acked = redis_outage.traffic.acked()
    lost = [p for p in acked if redis_outage.stream.get(p.response["id"]) != p.body]
    print(f"{redis_outage.signal}: acknowledged {len(acked)}, in the stream {len(acked) - len(lost)}, lost {len(lost)}")
    assert acked and not lost


def test_delivery_resumes_by_itself_after_redis_restart(redis_outage: Outage) -> None:
    traffic = redis_outage.traffic
    report_timing(
        f"redis_{redis_outage.signal}_restart_to_first_delivery",
        redis_outage.first_delivery.at - redis_outage.back_at,
        from_process_start_s=round(redis_outage.first_delivery.at - redis_outage.restart_at, 3),
        outage_s=round(redis_outage.back_at - redis_outage.down_at, 3),
    )
    after = [p for p in traffic.acked() if p.sent > redis_outage.back_at]
    assert after
    bodies = [f.payload["body"] for f in traffic.received]
    assert [b for b in bodies if b in {p.body for p in after}] == [p.body for p in after]
    missed_live = [p for p in traffic.acked() if not traffic.delivered(p)]
    print(f"{redis_outage.signal}: acknowledged pushes not delivered live to b: {len(missed_live)}")


# Redis paused with SIGSTOP (half-open), then SIGCONT ----------------------------------------


@dataclass
class Pause:
    traffic: Traffic
    paused_at: float
    resumed_at: float
    unreachable_logged: dict[str, bool]
    first_delivery: Frame  # the first message b received after SIGCONT (it may have been pushed during the pause)
    first_new_delivery: Frame  # the first message b received that was pushed after SIGCONT
    stream: dict[str, str]  # id -> body, XRANGE of the room's stream afterwards


async def play_pause(cluster: Cluster, redis_server: RedisServer) -> Pause:
    async with steady_traffic(cluster) as traffic:
        await async_wait_until(
            lambda: sum(traffic.delivered(p) for p in traffic.acked()) >= 5, 15, "5 messages delivered before the pause"
        )
        redis_server.pause()
        paused_at = time.monotonic()
        try:
            await async_wait_until(
                lambda: (
                    all(503 in ready_states(traffic, name, paused_at) for name in ("a", "b"))
                    and sum(1 for p in traffic.pushes if p.sent > paused_at and p.status == "error") >= 2
                ),
                20,
                "/readyz 503 on both nodes and 2 pushes answered while Redis is paused",
            )
            logged = {
                name: any(entry.get("event") == "redis unreachable" for entry in cluster.node(name).logs())
                for name in ("a", "b")
            }
        finally:
            redis_server.resume()
        resumed_at = time.monotonic()
        first = await async_wait_until(
            lambda: next((f for f in traffic.received if f.at > resumed_at), None), 30, "a delivery after SIGCONT"
        )

        def pushed_after_resume() -> set[str]:
            return {p.body for p in traffic.pushes if p.sent > resumed_at}

        first_new = await async_wait_until(
            lambda: next((f for f in traffic.received if f.payload["body"] in pushed_after_resume()), None),
            30,
            "delivery of a message pushed after SIGCONT",
        )
        await async_wait_until(
            lambda: all(ready_states(traffic, name, resumed_at)[-1:] == [200] for name in ("a", "b")),
            20,
            "/readyz 200 on both nodes after SIGCONT",
        )
        await async_wait_until(
            lambda: sum(1 for p in traffic.acked() if p.sent > resumed_at) >= 5,
            20,
            "5 acknowledged pushes after SIGCONT",
        )
    return Pause(traffic, paused_at, resumed_at, logged, first, first_new, stream_of(redis_server))


@pytest.fixture(scope="module")
def redis_pause() -> Iterator[Pause]:
    with RedisServer() as redis_server, Cluster(redis_server, env=FAST) as cluster:
        cluster.start("a", "b")
        cluster.connected("a", "b")
        result = run_async(lambda: play_pause(cluster, redis_server))
    pushes = result.traffic.pushes
    unavailable = [p for p in pushes if p.status == "error"]
    record(
        "redis_sigstop_accounting",
        pause_s=round(result.resumed_at - result.paused_at, 3),
        pushes=len(pushes),
        acked=len(acked(pushes)),
        found_in_history=len(acked(pushes)) - len(lost(pushes, result.stream)),
        lost=len(lost(pushes, result.stream)),
        answered_unavailable=len(unavailable),
        unavailable_but_stored=sum(1 for p in unavailable if p.body in result.stream.values()),
    )
    yield result


def test_watchdog_notices_a_paused_redis(redis_pause: Pause) -> None:
    for name in ("a", "b"):
        noticed = next(
            at for at, status in redis_pause.traffic.readyz[name] if at > redis_pause.paused_at and status == 503
        )
        report_timing(f"redis_sigstop_to_readyz_503_{name}", noticed - redis_pause.paused_at)
    assert redis_pause.unreachable_logged == {"a": True, "b": True}


def test_delivery_resumes_after_sigcont(redis_pause: Pause) -> None:
    report_timing(
        "redis_sigcont_to_first_delivery",
        redis_pause.first_delivery.at - redis_pause.resumed_at,
        of_a_push_sent_after_sigcont_s=round(redis_pause.first_new_delivery.at - redis_pause.resumed_at, 3),
    )
    traffic = redis_pause.traffic
    assert all(p.status == "ok" or p.unavailable for p in traffic.pushes), [
        p for p in traffic.pushes if p.status != "ok"
    ][:3]
    after = [p for p in traffic.acked() if p.sent > redis_pause.resumed_at]
    assert after and all(traffic.delivered(p) for p in after)


def test_every_push_acknowledged_around_a_paused_redis_is_stored(redis_pause: Pause) -> None:
    """Acknowledged means stored; `unavailable` is uncertain (docs/reliability.md, Known limits)."""
    pushes = redis_pause.traffic.pushes
    assert len(acked(pushes)) >= 10
    assert lost(pushes, redis_pause.stream) == []
    answers = {(p.status, p.response.get("reason")) for p in pushes}
    assert answers <= {("ok", None), ("error", "unavailable")}, answers


# The watchdog must not mistake quiet for death -------------------------------------------


def test_watchdog_keeps_an_idle_lone_node_ready(cluster: Cluster) -> None:
    """No peers and no traffic: only the watchdog's own PONGs come back, and they count."""
    (node,) = cluster.start("a")
    watch = WATCHDOG_DEADLINE + 2 * WATCHDOG_INTERVAL  # a false alarm came 3 s after each (re)subscribe
    states = []
    end = time.monotonic() + watch
    while time.monotonic() < end:  # polling a condition over a window: absence can only be watched
        states.append(cluster.http.get(node.url + "/readyz").status_code)
        time.sleep(0.2)
    assert set(states) == {200}
    assert not [e for e in node.logs() if e.get("event") in ("redis unreachable", "subscription lost")]
