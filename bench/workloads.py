"""The workloads, W1-W5: what each does to a running cluster, and the figures it keeps.

Each workload takes a started `systems.Cluster`, drives it with the load generator in
this process and fills an `Outcome`. Sizes and deadlines live in `Sizes`; the full run's
are chosen so that the three systems' worst cases together stay under 8 minutes.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

from bench import loadgen, systems
from bench.loadgen import Generator, JoinTimeout, Traffic

WORKLOADS = ("W1", "W2", "W3", "W4", "W5")


@dataclass(frozen=True)
class FanOut:
    """W1 or W2: subscribers and publishers split over both nodes, messages at a steady rate."""

    subscribers: int
    publishers: int
    rate: float  # messages a second, all publishers together
    seconds: float
    join_cap: float  # seconds for everyone to join


@dataclass(frozen=True)
class Storm:
    """W5: `clients` on node a, publishers on node b; a stops while messages flow."""

    clients: int
    publishers: int
    rate: float  # messages a second: HISTORY_SIZE (100) / rate is the gap ChatLab's catch-up covers
    before: float  # seconds of traffic before node a gets SIGTERM
    after: float  # seconds of traffic after the last client is back
    join_cap: float  # for the first joins, on node a
    rejoin_cap: float  # from SIGTERM until every client must be back, on node b
    stop_grace: float  # SIGTERM, then SIGKILL after this long (an orchestrator's grace period)


@dataclass
class Sizes:
    w1: FanOut = FanOut(subscribers=1000, publishers=4, rate=10.0, seconds=10.0, join_cap=35.0)
    w2: FanOut = FanOut(subscribers=200, publishers=10, rate=50.0, seconds=10.0, join_cap=20.0)
    w3_connections: int = 5000
    w4_steps: tuple[int, ...] = (500, 1000, 2500, 5000, 10000, 15000)
    w4_publishers: int = 4
    w4_rate: float = 10.0
    w4_seconds: float = 5.0
    w5: Storm = Storm(
        clients=2000, publishers=2, rate=2.0, before=2.0, after=2.0, join_cap=40.0, rejoin_cap=60.0, stop_grace=12.0
    )
    drain_seconds: float = 2.0  # after the last send; what has not arrived by then is lost
    late_seconds: float = 10.0  # how much longer a phase waits for what is lost, to count it late
    # Deadlines (seconds). The sum of the worst cases keeps the whole run under 8 minutes.
    budget_seconds: float = 470.0
    w3_join_cap: float = 60.0
    settle_cap: float = 10.0
    w4_min_budget: float = 15.0
    fresh_clusters: bool = True  # a new Redis and new nodes for every workload


SMOKE = Sizes(
    w1=FanOut(subscribers=20, publishers=2, rate=10.0, seconds=1.0, join_cap=10.0),
    w2=FanOut(subscribers=10, publishers=2, rate=20.0, seconds=1.0, join_cap=10.0),
    w3_connections=50,
    w4_steps=(20, 40),
    w4_publishers=2,
    w4_rate=10.0,
    w4_seconds=1.0,
    w5=Storm(
        clients=20, publishers=2, rate=10.0, before=0.5, after=0.5, join_cap=10.0, rejoin_cap=15.0, stop_grace=5.0
    ),
    drain_seconds=2.0,
    late_seconds=2.0,
    budget_seconds=90.0,
    w3_join_cap=10.0,
    settle_cap=3.0,
    w4_min_budget=10.0,
    fresh_clusters=False,
)


@dataclass
class Outcome:
    """One workload on one system: the figures, or why there are none."""

    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None


# Phases ------------------------------------------------------------------------------------


async def settle(gen: Generator, cluster: systems.Cluster, cap: float, window: float = 0.3) -> bool:
    """Wait until the servers are idle: nothing arrives for `window` seconds and the node
    processes used under a fifth of a core meanwhile. False when `cap` passes first."""
    end = time.monotonic() + cap
    while time.monotonic() < end:
        bytes_before, cpu_before = gen.bytes_in, cluster.cpu_seconds()
        await asyncio.sleep(window)
        if gen.bytes_in == bytes_before and cluster.cpu_seconds() - cpu_before < 0.2 * window:
            return True
    return False


async def join_publishers(
    gen: Generator, cluster: systems.Cluster, count: int, targets: list[tuple[str, int]], seconds: float
) -> list[loadgen.Client]:
    """The publishers p0, p1, ..: they join to push, and read only their replies."""
    users = [f"p{i}" for i in range(count)]
    deadline = time.monotonic() + seconds
    return await loadgen.connect_and_join(gen, cluster.protocol, targets, users, subscriber=False, deadline=deadline)


async def join_subscribers(
    gen: Generator, cluster: systems.Cluster, users: range, targets: list[tuple[str, int]], seconds: float
) -> list[loadgen.Client]:
    """The subscribers s<n> for each n of `users`: they count what they receive."""
    names = [f"s{i}" for i in users]
    deadline = time.monotonic() + seconds
    return await loadgen.connect_and_join(gen, cluster.protocol, targets, names, subscriber=True, deadline=deadline)


async def traffic_phase(
    gen: Generator,
    cluster: systems.Cluster,
    subscribers: list[loadgen.Client],
    publishers: list[loadgen.Client],
    *,
    rate: float,
    seconds: float,
    drain: float,
    late: float,
) -> dict[str, Any]:
    """Send rate x seconds messages; count, time and cost what the subscribers receive.

    What has not arrived `drain` seconds after the last send is lost. A saturated server
    may still deliver it: the phase then waits up to `late` seconds more, so that "late"
    and "never" are told apart, and the CPU and latency figures cover the whole backlog."""
    traffic = Traffic(max(1, round(rate * seconds)))
    expected = traffic.messages * len(subscribers)
    dropped_before = gen.dropped
    gen.traffic = traffic
    cpu_before, redis_before = cluster.cpu_seconds(), cluster.redis_cpu_seconds()
    own_before = time.process_time()
    started = time.monotonic()
    await loadgen.send_traffic(publishers, traffic, rate)
    sent_at = time.monotonic()

    def everything() -> bool:
        return traffic.received >= expected and traffic.acks_ok + traffic.acks_error >= traffic.sent

    complete = await loadgen.wait_until(everything, drain)
    on_time = traffic.received
    if not complete:
        await loadgen.wait_until(everything, late)
    finished = time.monotonic()
    cpu = cluster.cpu_seconds() - cpu_before
    redis_cpu = cluster.redis_cpu_seconds() - redis_before
    loadgen_cpu = time.process_time() - own_before
    gen.traffic = None
    latencies = sorted(traffic.latencies)
    delivered = traffic.received

    def ms(q: float) -> float | None:
        value = loadgen.percentile(latencies, q)
        return None if value is None else round(value / 1e6, 2)

    return {
        "messages_sent": traffic.sent,
        "subscribers": len(subscribers),
        "deliveries_expected": expected,
        "deliveries": delivered,
        "lost": expected - on_time,
        "late": delivered - on_time,  # arrived after the drain, within `late` more seconds
        "never": expected - delivered,
        "duplicates": traffic.duplicates,
        "rejected": traffic.acks_error,
        "unanswered": traffic.sent - traffic.acks_ok - traffic.acks_error,
        "dropped_connections": gen.dropped - dropped_before,
        "cpu_us_per_delivery": round(cpu * 1e6 / delivered, 2) if delivered else None,
        "server_cpu_s": round(cpu, 3),
        "redis_cpu_s": round(redis_cpu, 3),
        "loadgen_cpu_s": round(loadgen_cpu, 3),  # this process: shows whether the generator kept up
        "p50_ms": ms(50),
        "p99_ms": ms(99),
        "max_ms": ms(100),
        "send_s": round(sent_at - started, 2),
        "drain_s": round(finished - sent_at, 2),
        "complete": complete,
    }


# Workloads ---------------------------------------------------------------------------------


async def fan_out(cluster: systems.Cluster, out: Outcome, load: FanOut, sizes: Sizes) -> None:
    """W1 and W2: subscribers and publishers split evenly over the two nodes."""
    gen = Generator()
    gen.start()
    try:
        started = time.monotonic()
        try:
            pubs = await join_publishers(gen, cluster, load.publishers, cluster.targets, load.join_cap)
            subs = await join_subscribers(
                gen, cluster, range(load.subscribers), cluster.targets, load.join_cap - (time.monotonic() - started)
            )
        except JoinTimeout as timeout:
            out.error = f"join did not finish: {timeout}"
            return
        out.metrics["join_s"] = round(time.monotonic() - started, 2)
        out.metrics["settled"] = await settle(gen, cluster, sizes.settle_cap)
        if not out.metrics["settled"]:
            out.notes.append(f"servers still busy {sizes.settle_cap:.0f} s after the joins: figures include that work")
        out.metrics.update(
            await traffic_phase(
                gen,
                cluster,
                subs,
                pubs,
                rate=load.rate,
                seconds=load.seconds,
                drain=sizes.drain_seconds,
                late=sizes.late_seconds,
            )
        )
    finally:
        await gen.stop()


async def w1(cluster: systems.Cluster, out: Outcome, sizes: Sizes, budget: float) -> None:
    await fan_out(cluster, out, sizes.w1, sizes)


async def w2(cluster: systems.Cluster, out: Outcome, sizes: Sizes, budget: float) -> None:
    await fan_out(cluster, out, sizes.w2, sizes)


async def w3(cluster: systems.Cluster, out: Outcome, sizes: Sizes, budget: float) -> None:
    """Idle memory: RSS of node a before and after N joined sockets that then sit idle."""
    gen = Generator()
    gen.start()
    node = cluster.nodes[0]
    try:
        await settle(gen, cluster, sizes.settle_cap)
        before = node.rss()
        started = time.monotonic()
        n = sizes.w3_connections
        try:
            await join_subscribers(gen, cluster, range(n), cluster.targets[:1], sizes.w3_join_cap)
        except JoinTimeout as timeout:
            out.error = f"join did not finish: {timeout}"
            return
        out.metrics["join_s"] = round(time.monotonic() - started, 2)
        if not await settle(gen, cluster, sizes.settle_cap):
            out.notes.append(f"node still busy {sizes.settle_cap:.0f} s after the joins")
        after = node.rss()
        held = len(gen.clients)
        out.metrics.update(
            {
                "connections": n,
                "held": held,
                "dropped_connections": gen.dropped,
                "rss_before_mb": round(before / 2**20, 1),
                "rss_after_mb": round(after / 2**20, 1),
                "kb_per_connection": round((after - before) / n / 1024, 2),
            }
        )
    finally:
        await gen.stop()


async def w4(cluster: systems.Cluster, out: Outcome, sizes: Sizes, budget: float) -> None:
    """Scale: grow the sockets on node a step by step, W1-style traffic at each step;
    the answer is the largest step where every message reached every socket."""
    end = time.monotonic() + budget
    reserve = sizes.w4_seconds + sizes.drain_seconds + 3.0  # traffic + drain + settle, at least
    gen = Generator()
    gen.start()
    steps: list[dict[str, Any]] = []
    out.metrics.update({"max_held": 0, "steps": steps})
    try:
        pubs = await join_publishers(
            gen, cluster, sizes.w4_publishers, cluster.targets, max(1.0, end - time.monotonic())
        )
        subs: list[loadgen.Client] = []
        for target in sizes.w4_steps:
            step: dict[str, Any] = {"connections": target}
            steps.append(step)
            join_time = end - time.monotonic() - reserve
            if join_time <= 1.0:
                step["result"] = "skipped: time budget spent"
                break
            started = time.monotonic()
            try:
                subs += await join_subscribers(gen, cluster, range(len(subs), target), cluster.targets[:1], join_time)
            except JoinTimeout as timeout:
                step["result"] = (
                    f"join did not finish within the time budget: {len(subs) + timeout.joined} of {target}"
                    f" joined after {timeout.seconds:.0f} s"
                )
                break
            except RuntimeError as error:
                step["result"] = f"join failed: {error}"
                break
            joined_s = time.monotonic() - started
            step["join_s"] = round(joined_s, 2)
            step["join_ms_per_client"] = round(
                joined_s * 1000 / (target - (steps[-2]["connections"] if len(steps) > 1 else 0)), 2
            )
            settle_cap = min(sizes.settle_cap, max(0.5, end - time.monotonic() - reserve + 3.0))
            if not await settle(gen, cluster, settle_cap):
                step["note"] = "node still busy after the joins"
            figures = await traffic_phase(
                gen,
                cluster,
                subs,
                pubs,
                rate=sizes.w4_rate,
                seconds=sizes.w4_seconds,
                drain=sizes.drain_seconds,
                late=0.0,  # a step that loses ends W4: no need to tell late from never
            )
            step.update(
                {
                    k: figures[k]
                    for k in (
                        "lost",
                        "dropped_connections",
                        "rejected",
                        "p50_ms",
                        "p99_ms",
                        "cpu_us_per_delivery",
                        "server_cpu_s",
                        "loadgen_cpu_s",
                        "send_s",
                    )
                }
            )
            held = figures["lost"] == 0 and figures["dropped_connections"] == 0 and figures["rejected"] == 0
            step["result"] = "held" if held else "failed"
            if not held:
                break
            out.metrics["max_held"] = target
        if steps and steps[-1]["result"].startswith(("skipped", "join did not")):
            out.notes.append(f"stopped at {steps[-1]['connections']}: time budget")
    finally:
        await gen.stop()


# The page's first reconnect delay (shared/static/chat.js RECONNECT_MS), with its jitter,
# then its back-off if a try fails.
RECONNECT_S = (0.5, 1.0, 2.0, 5.0, 10.0)


async def w5(cluster: systems.Cluster, out: Outcome, sizes: Sizes, budget: float) -> None:
    """Reconnect storm: node a stops (SIGTERM, its drain) while messages flow from node b;
    its clients come back on node b, ChatLab's with `last_seen_id` as the page does.

    Lost: acknowledged messages of the phase that a client never received, summed over the
    clients. Published while a client was between the nodes, they reach it only through a
    catch-up from history, which the peers do not have."""
    load = sizes.w5
    node_a = cluster.nodes[0]
    host_b, port_b = cluster.targets[1]
    gen = Generator()
    gen.start()
    sender: asyncio.Task[None] | None = None
    stopping: asyncio.Task[None] | None = None
    back: set[asyncio.Task[None]] = set()
    try:
        started = time.monotonic()
        try:
            pubs = await join_publishers(gen, cluster, load.publishers, [(host_b, port_b)], load.join_cap)
            subs = await join_subscribers(
                gen, cluster, range(load.clients), cluster.targets[:1], load.join_cap - (time.monotonic() - started)
            )
        except JoinTimeout as timeout:
            out.error = f"join did not finish: {timeout}"
            return
        out.metrics["join_s"] = round(time.monotonic() - started, 2)
        for client in subs:
            if isinstance(client, loadgen.PhoenixLoadClient):
                client.track_last_seen = True
        if not await settle(gen, cluster, sizes.settle_cap):
            out.notes.append("servers still busy after the joins")

        capacity = round(load.rate * (load.before + load.rejoin_cap + load.after)) + 1
        traffic = Traffic(capacity, record_latency=False)
        gen.traffic = traffic
        done_sending = asyncio.Event()
        sender = asyncio.ensure_future(_send_until(pubs, traffic, load.rate, done_sending))
        await asyncio.sleep(load.before)

        # Node a stops; every client it closes goes to node b.
        limit = asyncio.Semaphore(64)
        stopped_at = time.monotonic()
        deadline = stopped_at + load.rejoin_cap
        on_a = set(subs)
        latest = {client.user: client for client in subs}  # each user's newest client
        rejoined: list[loadgen.Client] = []
        publishers_dropped: list[str] = []
        back_after: list[float] = []  # per client, seconds from SIGTERM
        failures: list[str] = []
        retries = 0
        last_rejoin = last_drop = stopped_at

        async def come_back(old: loadgen.Client) -> None:
            nonlocal last_rejoin, retries
            tries = [old]  # the page remembers the newest id whichever socket brought it
            for attempt, pause in enumerate(RECONNECT_S * 100):
                await asyncio.sleep(pause * random.uniform(0.75, 1.25))
                try:
                    client = await loadgen.open_and_join(
                        gen,
                        cluster.protocol,
                        host_b,
                        port_b,
                        old.user,
                        subscriber=True,
                        limit=limit,
                        deadline=deadline,
                        opened=tries.append,
                        previous=tries[-1],
                    )
                except TimeoutError:
                    failures.append(f"{old.user}: not back after {load.rejoin_cap:.0f} s ({attempt + 1} tries)")
                    return
                except (OSError, ConnectionError) as error:
                    retries += 1
                    if time.monotonic() >= deadline:
                        failures.append(f"{old.user}: {error}")
                        return
                    continue
                rejoined.append(client)
                if latest[old.user] in on_a:  # the first time back, not a later drop from node b
                    last_rejoin = time.monotonic()
                    back_after.append(last_rejoin - stopped_at)
                latest[old.user] = client
                return

        def dropped(old: loadgen.Client) -> None:
            nonlocal last_drop
            if not old.subscriber:  # node b closed a publisher: its later messages go unanswered
                publishers_dropped.append(old.user)
                return
            if old in on_a:
                last_drop = time.monotonic()
            task = asyncio.ensure_future(come_back(old))
            back.add(task)
            task.add_done_callback(back.discard)

        gen.on_drop = dropped
        stopping = asyncio.ensure_future(_stop(node_a, load.stop_grace))
        everyone = await loadgen.wait_until(
            lambda: len(back_after) + len(failures) >= load.clients, load.rejoin_cap + 1.0
        )
        if failures or not everyone:
            out.notes.append(f"{len(back_after)} of {load.clients} back on node b; e.g. {failures[:1]}")
        else:
            out.metrics["rejoin_s"] = round(last_rejoin - stopped_at, 2)
        out.metrics["closed_s"] = round(last_drop - stopped_at, 2)  # node a's last socket closed
        if back_after:
            out.metrics["rejoin_p50_s"] = round(sorted(back_after)[len(back_after) // 2], 2)
        out.metrics["rejoin_retries"] = retries
        # Caught up: every client holds every acknowledged message sent before the last came back.
        sent_by_then = traffic.sent

        def caught_up() -> bool:
            return all(_missing(c, traffic, sent_by_then) == 0 for c in latest.values())

        if everyone and not failures:
            if await loadgen.wait_until(caught_up, load.after + sizes.drain_seconds, step=0.1):
                out.metrics["caught_up_s"] = round(time.monotonic() - stopped_at, 2)
            else:
                out.metrics["caught_up_s"] = "never"  # what was sent while a client was away never reached it
        await asyncio.sleep(max(0.0, last_rejoin + load.after - time.monotonic()))
        done_sending.set()
        await sender
        if publishers_dropped:
            out.notes.append(
                f"node b closed publishers {', '.join(publishers_dropped)}: what they sent after went unanswered"
            )
        await loadgen.wait_until(lambda: traffic.acks_ok + traffic.acks_error >= traffic.sent, sizes.drain_seconds)
        wanted = traffic.acked.count(1)
        everybody = list(latest.values())  # who never came back counts what it missed too
        await loadgen.wait_until(lambda: _lost(everybody, traffic) == 0, sizes.drain_seconds, step=0.1)
        out.metrics.update(
            {
                "clients": load.clients,
                "rejoined": len(back_after),
                "dropped_by_node_b": len(rejoined) - len(back_after),
                "messages_sent": traffic.sent,
                "acknowledged": wanted,
                "lost": _lost(everybody, traffic),
                "clients_missing_messages": sum(1 for c in everybody if _lost([c], traffic)),
                "duplicates": traffic.duplicates,
                "node_a_exit": node_a.proc.returncode,
            }
        )
    finally:
        gen.on_drop = None
        for task in (sender, stopping, *back):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (sender, stopping, *back) if t is not None), return_exceptions=True)
        await gen.stop()


async def _send_until(publishers: list[loadgen.Client], traffic: Traffic, rate: float, done: asyncio.Event) -> None:
    """`send_traffic`'s fixed schedule, open-ended: until `done` or the traffic is full."""
    start = time.monotonic() + 0.02
    for seq in range(traffic.messages):
        if done.is_set():
            return
        delay = start + seq / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        publishers[seq % len(publishers)].publish(traffic, seq)
        traffic.sent += 1


async def _stop(node: systems.Server, grace: float) -> None:
    await node.terminate(grace)
    if node.proc.poll() is None:
        node.proc.kill()  # what an orchestrator does once the grace period is over


def _missing(client: loadgen.Client, traffic: Traffic, upto: int) -> int:
    """Acknowledged messages among the first `upto` that `client` has not received."""
    acked = int.from_bytes(traffic.acked[:upto], "big")
    seen = int.from_bytes(client.seen[:upto], "big") if client.seen_in is traffic else 0
    return (acked & ~seen).bit_count()


def _lost(clients: list[loadgen.Client], traffic: Traffic) -> int:
    return sum(_missing(c, traffic, traffic.sent) for c in clients)


RUNNERS = {"W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5}
