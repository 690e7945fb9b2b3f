"""The official phoenix JS client, both supported lines, on two nodes of a real stage-2 cluster.

Three `python -m stage2_cluster` nodes share one real redis-server and find each other
with DISCOVERY=redis. The `cluster` scenario of `tests/js/conformance.mjs` puts alice's
socket on node a and bob's on node b: messages cross both ways with their ids, presence
is cluster-wide, and once node a is stopped with SIGTERM, bob's presence drops alice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.cluster import Cluster, full_name
from tests.helpers.phoenix_js import CLIENTS, MESSAGE_ID, BackgroundScript, Fact, one, socket_url, steps
from tests.helpers.redis_server import RedisServer

pytestmark = [pytest.mark.node, pytest.mark.parametrize("client", CLIENTS)]

NODES = ("a", "b", "c")
DISCOVERY_DEADLINE = 15.0  # the registry is polled every second; the handshakes follow
STEP_TIMEOUT = 25.0  # up to ready_for_stop: two joins, presence on both, two crossings
STOP_TIMEOUT = 40.0  # the script waits 20 s for alice to leave bob's presence, then fails


@pytest.fixture
def discovered(redis_server: RedisServer) -> Iterator[Cluster]:
    """Nodes a, b and c with DISCOVERY=redis, once every one lists all three; all stopped afterwards."""
    with Cluster(redis_server, discovery="redis") as cluster:
        cluster.start(*NODES)
        for name in NODES:
            cluster.wait_nodes(name, [name, *sorted(set(NODES) - {name})], DISCOVERY_DEADLINE)
        yield cluster


def assert_broadcast(payload: dict[str, Any], *, id: str, user: str, body: str, node: str) -> None:
    """A new:msg as every socket in the room receives it, stamped with the node it was pushed on."""
    assert payload == {"id": id, "user": user, "body": body, "node": full_name(node), "ts": payload["ts"]}
    assert isinstance(payload["ts"], int)


def crossing(facts: list[Fact], sender: str) -> Fact:
    [found] = [fact for fact in steps(facts, "crossed") if fact["from"] == sender]
    return found


def test_sockets_on_two_nodes_share_messages_and_presence(
    node_bin: str, client: str, discovered: Cluster, background_scripts: list[BackgroundScript]
) -> None:
    a, b = discovered.node("a"), discovered.node("b")
    script = BackgroundScript(node_bin, client, socket_url(a), "cluster", socket_url(b))
    background_scripts.append(script)
    script.expect("ready_for_stop", STEP_TIMEOUT)
    discovered.stop("a")  # SIGTERM: node a drains its sockets, says goodbye to b and c, exits
    assert a.proc is not None and a.proc.returncode == 0
    facts = script.finish(STOP_TIMEOUT)
    assert facts[-1] == {"step": "done"}

    ready = facts.index({"step": "ready_for_stop"})
    before, after = facts[:ready], facts[ready + 1 :]
    assert [(fact["user"], fact["response"]) for fact in steps(before, "joined")] == [("alice", {}), ("bob", {})]

    # Presence is cluster-wide: each side lists both users, each meta naming its own node.
    synced = {fact["seen_by"]: fact for fact in steps(before, "presence_sync")}
    assert synced.keys() == {"alice", "bob"}
    refs: dict[str, set[str]] = {}
    for fact in synced.values():
        assert fact["users"] == ["alice", "bob"]
        metas = {entry["name"]: entry["metas"] for entry in fact["metas"]}
        assert [meta["node"] for meta in metas["alice"]] == ["a@localhost"]
        assert [meta["node"] for meta in metas["bob"]] == ["b@localhost"]
        for name, entries in metas.items():
            refs.setdefault(name, set()).update(meta["phx_ref"] for meta in entries)
    assert {name: len(found) for name, found in refs.items()} == {"alice": 1, "bob": 1}, "one presence each, seen alike"

    # a -> b and b -> a: the receiver gets the id of the sender's ok reply, as does the sender's echo.
    for sender, node, body in [("alice", "a", "hello bob, from node a"), ("bob", "b", "hi alice, from node b")]:
        fact = crossing(before, sender)
        assert fact["reply"]["msg"] == body
        assert MESSAGE_ID.match(fact["reply"]["id"])
        assert_broadcast(fact["payload"], id=fact["reply"]["id"], user=sender, body=body, node=node)
        assert fact["echo"] == fact["payload"]
    assert steps(before, "socket_closed") == []

    # Node a stopped: bob (on b) sees alice leave, and only her.
    assert one(after, "presence_after_stop") == {
        "step": "presence_after_stop",
        "seen_by": "bob",
        "users": ["bob"],
        "left": ["alice"],
    }
    closed = steps(after, "socket_closed")
    assert closed, "alice's socket noticed node a going away"
    assert closed[0] == {"step": "socket_closed", "socket": "alice", "code": 1001}, "the draining node says going away"
    assert {fact["socket"] for fact in closed} == {"alice"}, "bob's socket on node b stayed up"
    pushed = one(after, "pushed_after_stop")
    assert_broadcast(pushed["echo"], id=pushed["response"]["id"], user="bob", body="still here on node b", node="b")
    # The survivors dropped node a from their view of the cluster.
    discovered.wait_nodes("b", ["b", "c"])
    discovered.wait_nodes("c", ["c", "b"])
