"""Presence that heals: a node's name, its incarnations, and a full sync now and then.

- A node SIGKILLed and started again at once under its own name is a new incarnation
  (a new boot id, in its handshake and heartbeats): its peer drops what the old one left
  as soon as it meets the new one, not after NODE_DOWN_AFTER of silence (the peer here
  waits a minute for silence, so only the incarnation can explain the drop).
- A second node started under a live node's name refuses to start, with one line.
- A presence line lost on the way is corrected by the sender's next full sync, within
  SYNC_INTERVAL (+ a heartbeat); a topic the sync leaves out holds nothing of the sender.
  What a lost line leaves behind is made by publishing the opposite change in the
  sender's name, as anyone with the Redis password can.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Coroutine
from typing import Any

from shared.presence import Entry
from stage2_cluster.lines import presence_change
from stage2_cluster.membership import HEARTBEAT_INTERVAL, SYNC_INTERVAL
from tests.helpers.cluster import Cluster, full_name
from tests.helpers.node import NodeProcess
from tests.helpers.paths import ROOT
from tests.helpers.phoenix import LOBBY, PhoenixClient
from tests.helpers.ports import free_port
from tests.helpers.results import record

A, B = full_name("a"), full_name("b")


async def online(node: NodeProcess, topic: str = LOBBY) -> dict[str, list[dict[str, Any]]]:
    """The presence_state a joiner of `topic` on `node` gets: user -> metas (the joiner left out)."""
    async with PhoenixClient(node.ws_url) as observer:
        await observer.join(topic, {"user": "observer"})
        state = await observer.wait_for(lambda f: f.event == "presence_state", what="presence_state")
    return {user: value["metas"] for user, value in state.payload.items() if user != "observer"}


async def users_on(node: NodeProcess, topic: str = LOBBY) -> set[str]:
    return set(await online(node, topic))


async def test_a_node_restarted_at_once_under_its_name_leaves_no_ghost_on_its_peer(cluster: Cluster) -> None:
    cluster.start("a", DISCOVERY="redis", NODE_DOWN_AFTER="1")
    cluster.start("b", DISCOVERY="redis", NODE_DOWN_AFTER="60")  # silence alone would take a minute
    cluster.wait_nodes("b", ["b", "a"])
    a, b = cluster.node("a"), cluster.node("b")
    async with PhoenixClient(a.ws_url) as alice:
        await alice.join(LOBBY, {"user": "alice"})
        await wait_users(b, {"alice"})
        cluster.kill("a")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.to_thread(cluster.restart, "a")  # waits for the old claim to expire, then serves
    ready_after = loop.time() - started
    gone_after = await time_to(wait_users(b, set(), deadline=15))
    events = [e for e in b.logs() if e.get("peer") == A]
    assert any(e.get("event") == "node restarted" for e in events)
    assert not any(e.get("event") == "node disconnected" for e in events)  # not dropped for silence
    waited = any(
        e.get("event") == "waiting for an earlier node of this name to expire" for e in cluster.node("a").logs()
    )
    record(
        "fast restart under the same name",
        ready_after_s=round(ready_after, 2),
        waited_for_claim=waited,
        ghost_gone_after_ready_s=gone_after,
    )


async def wait_users(node: NodeProcess, users: set[str], deadline: float = 10.0) -> None:
    """Look at `node`'s presence_state again and again until it lists exactly `users`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        seen = await users_on(node)
        if seen == users:
            return
        if loop.time() > end:
            raise TimeoutError(f"{node.env['NODE_NAME']} lists {sorted(seen)}, not {sorted(users)}, after {deadline}s")
        await asyncio.sleep(0.1)


def test_a_second_node_under_a_live_nodes_name_refuses_to_start(cluster: Cluster) -> None:
    (a,) = cluster.start("a")
    env = {**cluster.node_env("a"), "PORT": str(free_port()), "HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "stage2_cluster"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"config error: NODE_NAME: {A} is taken by a live node (its claim chat:alive:{A} was renewed while "
        "we waited): stop that node or choose another name"
    ]
    assert "node ready" not in result.stdout
    with cluster.redis.client() as client:
        assert client.hget("chat:registry", A) == f"127.0.0.1:{a.port}"  # the live node's entry is left alone
    assert cluster.ready(a)
    record("duplicate NODE_NAME", exit_code=result.returncode, stderr=result.stderr.strip())


async def test_a_lost_presence_line_heals_within_the_sync_interval(cluster: Cluster) -> None:
    cluster.start("a", "b")
    cluster.connected("a", "b")
    a, b = cluster.node("a"), cluster.node("b")
    bound = SYNC_INTERVAL + HEARTBEAT_INTERVAL
    deadline = bound + 10  # generous: the bound is reported, not asserted
    async with PhoenixClient(b.ws_url) as watcher:
        # b's presence_diffs, as its sockets see them: every change, however quickly undone.
        seen = await watcher.join(LOBBY, {"user": "watcher"})
        with cluster.redis.client() as client:
            boot = client.get(f"chat:alive:{A}")

            def lose(line: str) -> None:
                """What b holds after a's line was lost: published in a's name, the opposite change."""
                client.publish(f"chat:node:{B}", line)

            # Nobody is on a, so a's full sync names no topic: the lobby must hold nothing of a.
            lose(presence_change(A, boot, LOBBY, [Entry(A, "mallory", {"phx_ref": "ghost-ref", "node": A})], []))
            seen, _ = await diff(watcher, "joins", "mallory", seen)
            ghost_healed = await time_to(diff(watcher, "leaves", "mallory", seen, deadline))
            async with PhoenixClient(a.ws_url) as alice:
                await alice.join(LOBBY, {"user": "alice"})
                seen, (meta,) = await diff(watcher, "joins", "alice", seen)
                lose(presence_change(A, boot, LOBBY, [], [Entry(A, "alice", meta)]))
                seen, _ = await diff(watcher, "leaves", "alice", seen)
                join_healed = await time_to(diff(watcher, "joins", "alice", seen, deadline))
                assert await users_on(b) == {"alice", "watcher"}
    record("lost presence line", ghost_gone_after_s=ghost_healed, join_back_after_s=join_healed, bound_s=bound)


async def diff(
    client: PhoenixClient, side: str, user: str, since: int, deadline: float = 10.0
) -> tuple[int, list[dict[str, Any]]]:
    """The first presence_diff from `since` whose `side` (joins/leaves) has `user`: its index and the metas."""
    frame = await client.wait_for(
        lambda f: f.event == "presence_diff" and user in f.payload[side],
        deadline,
        since=since,
        what=f"presence_diff {side} {user}",
    )
    return client.frames.index(frame, since), frame.payload[side][user]["metas"]


async def time_to(wait: Coroutine[Any, Any, object]) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    await wait
    return round(loop.time() - started, 2)
