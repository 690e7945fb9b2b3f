"""The official phoenix JS client, unmodified, against a real node: both supported lines.

Each test runs `tests/js/conformance.mjs` under Node.js for one scenario against a node
process on a real port, and asserts on the facts the client printed, one JSON object a line.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.helpers.node import NodeProcess, running_node
from tests.helpers.phoenix_js import (
    CLIENTS,
    JS_DIR,
    MESSAGE_ID,
    SCRIPT,
    BackgroundScript,
    Fact,
    one,
    socket_url,
    steps,
)

NODE_ENV = {"PING_INTERVAL": "0"}  # no SYSTEM pings among the messages asserted on
RUN_TIMEOUT = 75.0  # the script gives up by itself after 60 s
STEP_TIMEOUT = 20.0  # up to ready_for_restart: a join and a push
REJOIN_TIMEOUT = 45.0  # the script waits 30 s for the rejoin, then fails by itself

pytestmark = [pytest.mark.node, pytest.mark.parametrize("client", CLIENTS)]


def run_scenario(node_bin: str, client: str, node: NodeProcess, scenario: str) -> list[Fact]:
    """Run one scenario to its end; subprocess.run kills the script if it overruns."""
    try:
        done = subprocess.run(
            [node_bin, str(SCRIPT), client, socket_url(node), scenario],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
    except subprocess.TimeoutExpired as timeout:
        pytest.fail(f"{scenario} ({client}) still running after {RUN_TIMEOUT} s:\n{timeout.stdout}\n{timeout.stderr}")
    assert done.returncode == 0, f"{scenario} ({client}) exited {done.returncode}:\n{done.stderr}\n{done.stdout}"
    facts = [json.loads(line) for line in done.stdout.splitlines()]
    assert facts[-1] == {"step": "done"}, facts
    return facts


def assert_message(payload: dict[str, Any], *, id: str, user: str, body: str) -> None:
    """A broadcast new:msg has exactly these fields."""
    assert payload == {"id": id, "user": user, "body": body, "node": "nonode@nohost", "ts": payload["ts"]}
    assert isinstance(payload["ts"], int)


def test_join_and_push_with_reply(node_bin: str, client: str, stage1_node: NodeProcess) -> None:
    facts = run_scenario(node_bin, client, stage1_node, "push")

    assert one(facts, "joined")["response"] == {}
    received = [(fact["event"], fact["payload"]) for fact in steps(facts, "received")]
    # What the server pushes after the join reply, in this order; presence_diff follows later.
    # The joiner is tracked before presence_state goes out, as Phoenix's after_join does.
    state = received[2][1]
    assert received[:3] == [
        ("user:entered", {"user": "alice"}),
        ("join", {"status": "connected"}),
        ("presence_state", {"alice": {"metas": state["alice"]["metas"]}}),
    ]
    [meta] = state["alice"]["metas"]
    assert meta["node"] == "nonode@nohost" and meta["phx_ref"]
    reply = one(facts, "reply")
    assert reply["status"] == "ok"
    assert reply["response"]["msg"] == "hello"
    assert MESSAGE_ID.match(reply["response"]["id"])
    # The sender gets its own broadcast too.
    assert_message(one(facts, "echo")["payload"], id=reply["response"]["id"], user="alice", body="hello")


def test_broadcast_reaches_another_socket(node_bin: str, client: str, stage1_node: NodeProcess) -> None:
    facts = run_scenario(node_bin, client, stage1_node, "broadcast")

    assert [fact["user"] for fact in steps(facts, "joined")] == ["alice", "bob"]
    reply = one(facts, "reply")["response"]
    assert reply["msg"] == "hi bob"
    delivered = one(facts, "broadcast")
    assert delivered["to"] == "bob"
    assert_message(delivered["payload"], id=reply["id"], user="alice", body="hi bob")


def test_heartbeat_replies_keep_the_connection(node_bin: str, client: str, stage1_node: NodeProcess) -> None:
    facts = run_scenario(node_bin, client, stage1_node, "heartbeat")

    replies = steps(facts, "heartbeat_reply")
    assert len(replies) == 3
    assert all(fact["payload"] == {"status": "ok", "response": {}} and fact["join_ref"] is None for fact in replies)
    assert len({fact["ref"] for fact in replies}) == 3, "each heartbeat is answered with its own ref"
    assert one(facts, "ping")["rtt_ms"] >= 0
    # A reply the client did not match to its heartbeat would have made it reconnect.
    assert one(facts, "connection") == {"step": "connection", "state": "open", "connections": 1}
    assert steps(facts, "socket_closed") == []


def test_leave(node_bin: str, client: str, stage1_node: NodeProcess) -> None:
    facts = run_scenario(node_bin, client, stage1_node, "leave")

    reply = one(facts, "leave_reply")
    assert reply["payload"] == {"status": "ok", "response": {}}
    assert reply["join_ref"] == reply["joined_as"]
    close = one(facts, "server_close")
    assert (close["topic"], close["join_ref"]) == ("rooms:lobby", close["joined_as"])
    assert one(facts, "channel_closed") == {"step": "channel_closed", "state": "closed", "still_listed": False}
    # Bob sees her go, also when she joined and left within one presence batch window (as here, mostly).
    left = one(facts, "presence_leave")
    assert left == {"step": "presence_leave", "user": "alice", "seen_by": "bob", "users": ["bob"]}


def test_presence_lists_both_users(node_bin: str, client: str, stage1_node: NodeProcess) -> None:
    facts = run_scenario(node_bin, client, stage1_node, "presence")

    synced = {fact["seen_by"]: fact for fact in steps(facts, "presence_sync")}
    assert synced.keys() == {"alice", "bob"}
    refs = set()
    for fact in synced.values():
        assert fact["users"] == ["alice", "bob"]
        for entry in fact["metas"]:
            [meta] = entry["metas"]  # one socket each
            assert meta["node"] == "nonode@nohost"
            refs.add(meta["phx_ref"])
    assert len(refs) == 2, "both sockets see the same two presences"


def test_join_errors(node_bin: str, client: str, stage1_node: NodeProcess) -> None:
    facts = run_scenario(node_bin, client, stage1_node, "join_errors")

    errors = {fact["topic"]: (fact["response"], fact["state"]) for fact in steps(facts, "join_error")}
    assert errors == {
        "rooms:secret": ({"reason": "unauthorized"}, "errored"),
        "other:topic": ({"reason": "unmatched topic"}, "errored"),
    }


def test_rejoin_after_node_restart(node_bin: str, client: str, background_scripts: list[BackgroundScript]) -> None:
    with running_node("stage1_dev", NODE_ENV) as first:
        script = BackgroundScript(node_bin, client, socket_url(first), "restart")
        background_scripts.append(script)
        script.expect("ready_for_restart", STEP_TIMEOUT)
        first.stop()  # SIGTERM: the node drains its sockets and exits
    # A fresh process on the same port, which the client finds again on its own.
    with running_node("stage1_dev", NODE_ENV, port=first.port):
        facts = script.finish(REJOIN_TIMEOUT)

    ready = facts.index({"step": "ready_for_restart"})
    before, after = facts[:ready], facts[ready + 1 :]
    pushed = one(before, "pushed")["response"]
    assert pushed["msg"] == "before restart"
    assert one(before, "joined") == {"step": "joined", "count": 1, "params": {"user": "carol"}}

    # The rejoin asks for what was missed since the last message it saw.
    rejoin = one(after, "joined")
    assert rejoin == {"step": "joined", "count": 2, "params": {"user": "carol", "last_seen_id": pushed["id"]}}
    outage = after[: after.index(rejoin)]
    # The draining node closes with 1001 ("going away"), which both client lines reconnect after.
    assert steps(outage, "socket_closed")[0]["code"] == 1001
    assert steps(outage, "channel_errored"), "the channel noticed the lost connection"
    assert steps(outage, "socket_open"), "the client reconnected by itself"
    assert one(after, "rejoined")["count"] == 2
    again = one(after, "pushed_after_rejoin")["response"]
    assert again["msg"] == "after restart"
    assert MESSAGE_ID.match(again["id"])
