"""The chat page in a real Chromium against a real `python -m stage1_dev` process.

Playwright's sync API is used: these tests are plain functions, so no asyncio loop is
running in the thread that drives the browser.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Locator, Page, WebSocketRoute, expect

from tests.helpers.browser import ChatPages, screenshot_dir, send, set_username
from tests.helpers.node import NodeProcess, running_node
from tests.helpers.phoenix import LOBBY, PhoenixClient
from tests.helpers.waits import run_async

pytestmark = pytest.mark.browser

TIMES = "\N{MULTIPLICATION SIGN}"  # how the page counts repeats: a name, then TIMES, then 2
RESTART_DEADLINE_MS = 30_000  # the page retries after about 0.5, 1, 2, 5, then every 10 seconds

# Lines that stick out of their list, or a list or the page that scrolls sideways.
OVERFLOWS_JS = """() => {
    const out = [];
    const root = document.documentElement;
    if (root.scrollWidth > root.clientWidth) out.push("page " + root.scrollWidth);
    for (const id of ["messages", "presence"]) {
        const list = document.getElementById(id);
        if (list.scrollWidth > list.clientWidth) out.push(id + " " + list.scrollWidth + " > " + list.clientWidth);
        const box = list.getBoundingClientRect();
        for (const li of list.querySelectorAll("li")) {
            const r = li.getBoundingClientRect();
            if (r.left < box.left - 1 || r.right > box.right + 1) out.push(id + ": " + li.textContent.slice(0, 20));
        }
    }
    return out;
}"""


# The joins the page's "[and N others entered]" lines add up to.
COUNTED_JS = """() => [...document.querySelectorAll("#messages .event")]
    .map((li) => li.textContent.match(/^\\[and (\\d+) others? entered\\]$/))
    .filter(Boolean)
    .reduce((sum, m) => sum + Number(m[1]), 0)"""


def bodies(page: Page, text: str) -> Locator:
    """The message bodies that contain `text`."""
    return page.locator("#messages .body").filter(has_text=text)


def test_a_message_reaches_both_pages_and_presence_lists_both(stage1_node: NodeProcess, pages: ChatPages) -> None:
    alice = pages.open(stage1_node.url, "alice")
    bob = pages.open(stage1_node.url, "bob")

    send(alice, "hello from alice")

    for page in (alice, bob):
        expect(page.locator("#messages")).to_contain_text("[alice] hello from alice")
        expect(bodies(page, "hello from alice")).to_have_count(1)
        expect(page.locator("#presence li")).to_have_text(["alice", "bob"])
        expect(page.locator("#online-count")).to_have_text("2")
    # Only the sender's own line is drawn as its own.
    expect(alice.locator("#messages li.mine")).to_have_count(1)
    expect(bob.locator("#messages li.mine")).to_have_count(0)
    assert pages.errors == []


def test_user_text_is_shown_as_literal_text(stage1_node: NodeProcess, pages: ChatPages) -> None:
    user = "<b>bold</b>"
    body = '<img src=x onerror="window.__xss=1">'
    mallory = pages.open(stage1_node.url, user)
    reader = pages.open(stage1_node.url, "reader")

    send(mallory, body)

    for page in (mallory, reader):
        expect(bodies(page, body)).to_have_count(1)
        expect(page.locator("#messages")).to_contain_text(f"[{user}] {body}")
        expect(page.locator("#presence")).to_contain_text(user)
        expect(page.locator("#messages img, #messages b, #presence b")).to_have_count(0)
        assert page.evaluate("typeof window.__xss") == "undefined"
    assert pages.errors == []


def test_a_new_visitor_joins_only_once_named_and_the_room_hears_only_the_name(
    stage1_node: NodeProcess, pages: ChatPages
) -> None:
    alice = pages.open(stage1_node.url, "alice")
    visitor = pages.visit(stage1_node.url)

    connection = visitor.locator("#connection")
    expect(connection).to_have_attribute("data-state", "nameless")
    expect(connection).to_have_text("type a name to join")
    expect(visitor.locator("#username")).to_be_focused()
    set_username(visitor, "bob")
    expect(connection).to_have_attribute("data-state", "online")

    expect(alice.locator("#messages .event")).to_have_text(["[alice entered]", "[bob entered]"])
    for page in (alice, visitor):
        expect(page.locator("#presence li")).to_have_text(["alice", "bob"])
        expect(page.locator("body")).not_to_contain_text("anonymous")
    assert pages.errors == []


def test_joins_past_the_named_ones_show_as_one_count(pages: ChatPages) -> None:
    """ENTERED_NAMES=0 sums every join of a batch into `users:entered`: however the three
    joins below fall into batches, the page's count lines add up to three."""
    with running_node("stage1_dev", {"PING_INTERVAL": "0", "ENTERED_NAMES": "0"}) as node:
        alice = pages.open(node.url, "alice")
        for name in ("bob", "carol", "dave"):
            pages.open(node.url, name)
        expect(alice.locator("#presence li")).to_have_text(["alice", "bob", "carol", "dave"])
        lines = alice.locator("#messages .event")
        # Every join is counted once, in whichever batch it fell; none by name.
        alice.wait_for_function(f"({COUNTED_JS})() >= 3", timeout=10_000)
        assert alice.evaluate(COUNTED_JS) == 3
        expect(alice.locator("#messages")).not_to_contain_text("[bob entered]")
        # The joiner itself heard its own entry by name, as before.
        expect(lines.first).to_have_text("[alice entered]")
    assert pages.errors == []


def test_a_second_tab_is_the_same_user_and_a_private_window_another(stage1_node: NodeProcess, pages: ChatPages) -> None:
    alice = pages.open(stage1_node.url, "alice")
    second_tab = alice.context.new_page()  # the same browser profile: the name is remembered
    second_tab.goto(stage1_node.url)
    expect(second_tab.locator("#connection")).to_have_attribute("data-state", "online")
    expect(second_tab.locator("#username")).to_have_value("alice")
    expect(alice.locator("#presence li")).to_have_text(["alice" + TIMES + "2"])

    private = pages.visit(stage1_node.url)  # a context of its own, as a private window
    expect(private.locator("#connection")).to_have_attribute("data-state", "nameless")
    set_username(private, "bob")
    expect(alice.locator("#presence li")).to_have_text(["alice" + TIMES + "2", "bob"])
    assert pages.errors == []


def test_the_demo_pings_fold_into_one_line_under_the_conversation(pages: ChatPages) -> None:
    with running_node("stage1_dev", {"PING_INTERVAL": "0.2"}) as node:
        alice = pages.open(node.url, "alice")
        send(alice, "before the pings")
        ping = alice.locator("#ping")
        expect(ping).to_have_text(re.compile(r"^\[SYSTEM\] ping last at .+ · " + TIMES + r"([3-9]|\d\d+)$"))
        send(alice, "after the pings")

        # The conversation holds the join and the two messages, nothing in between.
        expect(alice.locator("#messages li")).to_have_count(3)
        expect(alice.locator("#messages")).not_to_contain_text("[SYSTEM]")
        expect(ping).to_be_visible()
    assert pages.errors == []


def test_users_named_like_object_properties_are_listed_and_leave(stage1_node: NodeProcess, pages: ChatPages) -> None:
    watcher = pages.open(stage1_node.url, "alice")
    named = {name: pages.open(stage1_node.url, name) for name in ("__proto__", "constructor", "toString")}

    expect(watcher.locator("#presence li")).to_have_text(["__proto__", "alice", "constructor", "toString"])
    named["__proto__"].context.close()
    named["constructor"].context.close()
    expect(watcher.locator("#presence li")).to_have_text(["alice", "toString"])
    expect(watcher.locator("#online-count")).to_have_text("2")
    send(named["toString"], "still here")
    expect(watcher.locator("#messages")).to_contain_text("[toString] still here")
    assert pages.errors == []


def test_the_page_reconnects_after_the_server_restarts(pages: ChatPages) -> None:
    with running_node("stage1_dev", {"PING_INTERVAL": "0"}) as first:
        page = pages.open(first.url, "alice")
        send(page, "before the restart")
        page.evaluate("window.__sameDocument = true")
        first.stop()  # SIGTERM: the node drains and closes the socket with 1001
        expect(page.locator("#connection")).not_to_have_attribute("data-state", "online")

    with running_node("stage1_dev", {"PING_INTERVAL": "0"}, port=first.port) as second:
        connection = page.locator("#connection")
        expect(connection).to_have_attribute("data-state", "online", timeout=RESTART_DEADLINE_MS)
        expect(connection).to_have_text("online")
        expect(page.locator("#presence li")).to_have_text(["alice"])

        send(page, "after the restart")

        # Reconnected in place, not reloaded, and nothing shown twice.
        assert page.evaluate("window.__sameDocument") is True
        expect(bodies(page, "before the restart")).to_have_count(1)
        expect(bodies(page, "after the restart")).to_have_count(1)
        # The message really went through the new node: a second page sees it in history.
        newcomer = pages.open(second.url, "bob")
        expect(bodies(newcomer, "after the restart")).to_have_count(1)


def test_a_page_back_after_history_moved_on_says_earlier_messages_are_gone(pages: ChatPages) -> None:
    """The page misses 8 messages (its socket drops them on the way in), then its connection
    drops and it rejoins with last_seen_id, which has left a history of 5 meanwhile."""
    connections: list[WebSocketRoute] = []

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        if not connections:  # the first connection loses what it is sent while "away"
            server.on_message(lambda message: None if "missed " in str(message) else ws.send(message))
        connections.append(ws)

    env = {"PING_INTERVAL": "0", "HISTORY_SIZE": "5", "RATE_LIMIT": "1000/1000"}
    with running_node("stage1_dev", env) as node:
        page = pages.open(node.url, "alice", before_load=lambda p: p.route_web_socket(re.compile("/socket/"), route))
        send(page, "seen before going away")

        async def away() -> None:
            async with PhoenixClient(node.ws_url) as bob:
                await bob.join(LOBBY, {"user": "bob"})
                for n in range(8):
                    assert (await bob.push(LOBBY, "new:msg", {"user": "bob", "body": f"missed {n}"})).ok

        run_async(away)
        expect(bodies(page, "missed")).to_have_count(0)
        connections[0].close()  # the page reconnects by itself and catches up

        expect(page.locator("#messages .event.gap")).to_have_text("some earlier messages are no longer available")
        expect(bodies(page, "missed")).to_have_text([f"missed {n}" for n in range(3, 8)])
        # In order: what the page saw, the notice, then the oldest messages history still had.
        lines = page.locator("#messages li").all_text_contents()
        notice = next(i for i, line in enumerate(lines) if "no longer available" in line)
        assert any("seen before going away" in line for line in lines[:notice]), lines
        assert not any("missed" in line for line in lines[:notice]), lines
        assert len(connections) == 2
    assert pages.errors == []


def test_a_normal_session_shows_and_logs_no_errors(stage1_node: NodeProcess, pages: ChatPages) -> None:
    alice = pages.open(stage1_node.url, "alice")
    with alice.expect_response("**/readyz"):  # one full round of the navbar's polling
        bob = pages.open(stage1_node.url, "bob")
    send(alice, "hi bob")
    send(bob, "hi alice")
    set_username(bob, "robert")
    send(bob, "I go by robert now")

    for page in (alice, bob):
        expect(page.locator("#presence li")).to_have_text(["alice", "robert"])
        expect(page.locator("#messages")).to_contain_text("[robert] I go by robert now")
        expect(page.locator("#connection")).to_have_text("online")
        expect(page.locator("#self")).to_have_text("nonode@nohost")
        expect(page.locator("#nodes")).to_have_text("[nonode@nohost]")
        expect(page.locator("#redis")).to_contain_text("none")
        expect(page.locator("#messages li.error")).to_have_count(0)
    assert pages.errors == []


def test_long_words_rtl_and_zero_width_text_keep_the_layout(stage1_node: NodeProcess, pages: ChatPages) -> None:
    long_name = "x" * 32
    page = pages.open(stage1_node.url, long_name)
    rtl = pages.open(stage1_node.url, "דנה")
    texts = [
        "a" * 600,
        "https://example.com/" + "path/" * 80,
        "مرحبا بالجميع، هذه رسالة باللغة العربية مع كلمة English في الوسط",
        "שלום לכולם, זו הודעה בעברית",
        "zero\u200bwidth\u200c\u200djoiners\ufeff" + "\u200b" * 200 + "end",
    ]
    for text in texts[:2]:
        send(page, text)
    for text in texts[2:]:
        send(rtl, text)

    for text in texts:
        expect(bodies(page, text[:40])).to_have_count(1)
    overflow = page.evaluate(OVERFLOWS_JS)
    assert overflow == []
    # The composer stays on screen however long the messages above it are.
    for selector in ("#message-input", "#username"):
        expect(page.locator(selector)).to_be_in_viewport()
    # Arabic and Hebrew run right to left in their own bubbles.
    for text in texts[2:4]:
        assert bodies(page, text).evaluate("e => getComputedStyle(e).direction") == "rtl"
    assert pages.errors == []


def test_screenshot_of_a_conversation(stage1_node: NodeProcess, pages: ChatPages) -> None:
    # Returning visitors: their names are remembered, so they join under them directly.
    alice = pages.open(stage1_node.url, "alice", remembered=True)
    bob = pages.open(stage1_node.url, "bob", remembered=True)
    carol = pages.open(stage1_node.url, "carol", remembered=True)
    conversation = [
        (alice, "Morning! The stage 1 node is up, come and try it."),
        (bob, "Works here. Is the history replayed if my laptop sleeps?"),
        (alice, "Yes: the page rejoins with last_seen_id and only gets what it missed."),
        (carol, "Joined from a second tab, and the online list shows all three of us."),
        (bob, "And Redis only comes in with stage 2?"),
        (carol, "Right, stage 1 keeps everything in memory, on one node."),
        (alice, "Then stage 2 it is. Let's spin up three nodes after lunch."),
    ]
    for page, body in conversation:
        send(page, body)
    expect(alice.locator("#messages .body")).to_have_count(len(conversation))
    expect(alice.locator("#presence li")).to_have_text(["alice", "bob", "carol"])
    alice.locator("#message-input").focus()

    shot = screenshot_dir() / "stage1.png"
    alice.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    assert pages.errors == []
