"""The chat page in a real Chromium against real stage-2 nodes sharing a real redis-server.

Each page talks to its own node; what one page shows of another node's users and
messages came through the cluster. Playwright's sync API, as in test_browser.py.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.helpers.browser import VIEWPORT, ChatPages, screenshot_dir, send
from tests.helpers.cluster import Cluster, full_name
from tests.helpers.metrics import metric
from tests.helpers.waits import wait_until

pytestmark = pytest.mark.browser

# Fixtures shared with the other cluster tests (pytest finds them by these names).

NODES_POLL_DEADLINE_MS = 10_000  # the navbar polls /api/nodes every 3 s


def nodes_line(*names: str) -> str:
    """The navbar's `nodes:` text: the page's own node first, then its peers, sorted."""
    first, *rest = (full_name(name) for name in names)
    return "[" + ", ".join([first, *sorted(rest)]) + "]"


def redis_line(cluster: Cluster) -> str:
    return f"connected (127.0.0.1:{cluster.redis.port})"


def message(page: Page, body: str) -> Locator:
    """The one message line whose body is exactly `body`."""
    return page.locator("#messages li.msg").filter(has=page.locator(".body", has_text=body))


def test_pages_on_two_nodes_follow_the_cluster_live(cluster: Cluster, pages: ChatPages) -> None:
    a, b = cluster.start("a", "b")  # DISCOVERY=manual: two lone nodes until told otherwise
    alice = pages.open(a.url, "alice")
    bob = pages.open(b.url, "bob")
    for page, node in ((alice, "a"), (bob, "b")):
        expect(page.locator("#self")).to_have_text(full_name(node))
        expect(page.locator("#nodes")).to_have_text(nodes_line(node))
        expect(page.locator("#presence li")).to_have_text([{"a": "alice", "b": "bob"}[node]])
        page.evaluate("window.__sameDocument = true")

    # Node.connect over the node API, as an operator would; the open pages must notice.
    assert cluster.connect("a", "b") == ["a@localhost", "b@localhost"]

    expect(alice.locator("#nodes")).to_have_text(nodes_line("a", "b"), timeout=NODES_POLL_DEADLINE_MS)
    expect(bob.locator("#nodes")).to_have_text(nodes_line("b", "a"), timeout=NODES_POLL_DEADLINE_MS)
    for page in (alice, bob):
        # Presence is cluster-wide once the nodes are connected: both users on both pages.
        expect(page.locator("#presence li")).to_have_text(["alice", "bob"])
        expect(page.locator("#online-count")).to_have_text("2")
        expect(page.locator("#redis")).to_have_text(redis_line(cluster))
        assert page.evaluate("window.__sameDocument") is True, "updated in place, not reloaded"
    expect(alice.locator("#self")).to_have_text("a@localhost")
    expect(bob.locator("#self")).to_have_text("b@localhost")

    send(alice, "hello from node a")
    send(bob, "and hello back from node b")

    for page in (alice, bob):
        for body, user, node in (("hello from node a", "alice", "a"), ("and hello back from node b", "bob", "b")):
            line = message(page, body)
            expect(line).to_have_count(1)
            expect(line.locator(".user")).to_have_text(f"[{user}]")
            expect(line.locator(".meta")).to_contain_text(full_name(node))  # the node it was pushed on
    expect(alice.locator("#messages li.mine")).to_have_count(1)
    expect(bob.locator("#messages li.mine")).to_have_count(1)
    for page in (alice, bob):
        expect(page.locator("#connection")).to_have_attribute("data-state", "online")
        expect(page.locator("#messages li.error")).to_have_count(0)
    assert pages.errors == []


def test_a_run_of_one_users_messages_breaks_where_the_node_changes(cluster: Cluster, pages: ChatPages) -> None:
    a, b = cluster.start("a", "b")
    cluster.connect("a", "b")
    on_a = pages.open(a.url, "alice")
    on_b = pages.open(b.url, "alice")  # the same user in a second window, on the other node
    send(on_a, "first, typed on a")
    send(on_a, "second, typed on a")
    expect(message(on_b, "second, typed on a")).to_have_count(1)
    send(on_b, "third, typed on b")

    for page in (on_a, on_b):
        expect(message(page, "third, typed on b")).to_have_count(1)
        # The second line continues the first: same user, same node, so its header is hidden.
        expect(message(page, "second, typed on a")).to_have_class(re.compile(r"\bcont\b"))
        # The third came through another node: a new block whose header names that node.
        third = message(page, "third, typed on b")
        expect(third).not_to_have_class(re.compile(r"\bcont\b"))
        expect(third.locator(".meta")).to_be_visible()
        expect(third.locator(".meta")).to_contain_text(full_name("b"))
    assert pages.errors == []


def test_screenshot_of_a_conversation_across_three_nodes(cluster: Cluster, pages: ChatPages) -> None:
    a, b, c = cluster.start("a", "b", "c")
    cluster.connected("a", "b", "c")
    # Returning visitors: their names are remembered, so they join under them directly.
    alice = pages.open(a.url, "alice", remembered=True)
    bob = pages.open(b.url, "bob", remembered=True)
    carol = pages.open(c.url, "carol", remembered=True)
    for page in (alice, bob, carol):
        expect(page.locator("#presence li")).to_have_text(["alice", "bob", "carol"])
    conversation = [
        (alice, "Stage 2 is up: three nodes, one Redis. I'm on a."),
        (bob, "Here from b, and I see a@localhost next to your message."),
        (carol, "Same on c. The online list has all three of us."),
        (alice, "Presence is copied between the nodes, so every page sees everyone."),
        (bob, "And if a node goes down?"),
        (carol, "Its peers drop it and its users leave the list; the history stays in Redis."),
        (alice, "Then let's stop node a after lunch and watch."),
    ]
    for page, body in conversation:
        send(page, body)
    for page in (alice, bob, carol):
        expect(page.locator("#messages .body")).to_have_count(len(conversation))
    expect(bob.locator("#self")).to_have_text("b@localhost")
    expect(bob.locator("#nodes")).to_have_text(nodes_line("b", "a", "c"))
    expect(bob.locator("#redis")).to_have_text(redis_line(cluster))
    expect(bob.locator("#connection")).to_have_text("online")
    bob.locator("#message-input").focus()

    assert bob.viewport_size == VIEWPORT == {"width": 1200, "height": 720}
    shot = screenshot_dir() / "stage2.png"
    bob.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    assert pages.errors == []


def rejected_unavailable(cluster: Cluster, name: str) -> float:
    text = cluster.http.get(cluster.node(name).url + "/metrics").text
    return metric(text, "chat_messages_rejected_total", default=0.0, reason="unavailable")


def test_a_message_sent_while_redis_is_down_is_retried_by_the_page_and_shown_once(
    cluster: Cluster, pages: ChatPages
) -> None:
    (a,) = cluster.start("a")
    alice = pages.open(a.url, "alice")
    expect(alice.locator("#connection")).to_have_attribute("data-state", "online")
    cluster.redis.stop()
    wait_until(lambda: not cluster.ready(a), what="the node notices Redis is gone")

    alice.fill("#message-input", "sent while redis was down")
    alice.press("#message-input", "Enter")
    wait_until(lambda: rejected_unavailable(cluster, "a") >= 1, what="the push answered unavailable")
    cluster.redis.start()

    # The page sends it again (every 2 s, 5 times) under the same client_msg_id.
    expect(message(alice, "sent while redis was down")).to_have_count(1, timeout=15_000)
    expect(alice.locator("#messages li.error")).to_have_count(0)
    with cluster.redis.client() as client:
        assert client.hkeys("chat:client-ids:rooms:lobby") != []  # the page sent a client_msg_id
    assert pages.errors == []
