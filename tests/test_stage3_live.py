"""Stage 3 on a real cluster, after `make stage3`: what the workflow's kind and minikube jobs
check between its make targets (.github/workflows/chatlab.yml). Nothing here can run
without that cluster, so `make test` leaves these out (the `cluster` marker); the jobs run

    .venv/bin/python -m pytest -m cluster tests/test_stage3_live.py -k <step>   (K8S=kind|minikube)

The browser reaches http://test.com as a learner's does after `<address> test.com` in
/etc/hosts: Chromium maps the name to the entry point's address, and sends `Host: test.com`.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from stage3_k8s.deploy.clusters import CLUSTERS, Cluster
from stage3_k8s.deploy.config import HOST_NAME
from stage3_k8s.deploy.pods import chat_pods
from stage3_k8s.deploy.proofs import ProofSocket, browser_host
from stage3_k8s.deploy.shell import Shell, StepFailed
from tests.helpers.browser import CHROMIUM_ARGS, ChatPages, chromium_path, send

pytestmark = [pytest.mark.cluster, pytest.mark.browser]

LOBBY = "rooms:lobby"
DEADLINE = 180.0  # seconds for what a cluster does slowly: pods starting, Redis coming back
NAVBAR_DEADLINE_MS = 60_000


@pytest.fixture(scope="module")
def k8s() -> Cluster:
    return CLUSTERS[os.environ.get("K8S", "kind")](Shell(dry_run=False))


@pytest.fixture(scope="module")
def entry(k8s: Cluster) -> tuple[str, int]:
    return k8s.entry()


@pytest.fixture(scope="module")
def mapped_browser(entry: tuple[str, int]) -> Iterator[Browser]:
    """Chromium resolving test.com to the entry point, as /etc/hosts would have it."""
    rule = f"--host-resolver-rules=MAP {HOST_NAME} {entry[0]}"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=[*CHROMIUM_ARGS, rule])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def tabs(mapped_browser: Browser) -> Iterator[ChatPages]:
    opened = ChatPages(mapped_browser)
    try:
        yield opened
    finally:
        opened.close()


def url(entry: tuple[str, int]) -> str:
    return f"http://{browser_host(entry[1])}/"


def socket_pod(page: Page, user: str) -> str:
    """The pod a tab's socket is on: the node its own message was pushed on."""
    body = f"where am I? {user} {secrets.token_hex(3)}"
    send(page, body)
    line = page.locator("#messages li.msg").filter(has=page.locator(".body", has_text=body))
    expect(line.locator(".meta")).to_contain_text("chat@")
    found = re.search(r"chat@[0-9a-f.:]+", line.locator(".meta").inner_text())
    assert found, line.inner_text()
    return found[0]


def test_two_tabs_on_different_pods_chat_through_the_entry_point(tabs: ChatPages, entry: tuple[str, int]) -> None:
    alice = tabs.open(url(entry), "alice")
    expect(alice.locator("#self")).to_contain_text("chat@")
    expect(alice.locator("#nodes")).to_have_text(re.compile(r"^\[chat@[^,]+(, chat@[^,]+){2}\]$"))
    alice_pod = socket_pod(alice, "alice")
    # Each connection may go to any ready pod: open tabs until one's socket is elsewhere.
    for attempt in range(12):
        bob = tabs.open(url(entry), f"bob{attempt}")
        if socket_pod(bob, f"bob{attempt}") != alice_pod:
            break
        bob.context.close()
    else:
        pytest.fail(f"twelve tabs all landed on {alice_pod}")
    send(alice, "hello from one pod")
    send(bob, "and back from another")
    for page in (alice, bob):
        for body in ("hello from one pod", "and back from another"):
            expect(page.locator("#messages li.msg .body", has_text=body)).to_have_count(1)
    assert tabs.errors == []


def test_the_navbar_lists_ten_nodes_after_scaling(tabs: ChatPages, entry: tuple[str, int], k8s: Cluster) -> None:
    """After `make stage3-scale REPLICAS=10`: the page, through the entry point, shows the ten."""
    assert len(chat_pods(k8s)) == 10
    page = tabs.open(url(entry), "watcher")
    expect(page.locator("#nodes")).to_have_text(
        re.compile(r"^\[chat@[^,]+(, chat@[^,]+){9}\]$"), timeout=NAVBAR_DEADLINE_MS
    )
    assert tabs.errors == []


class Sender:
    """Pushes messages through the entry point, reconnecting (to whichever pod answers) and
    sending again with the same client_msg_id until each is acknowledged."""

    def __init__(self, entry: tuple[str, int]) -> None:
        self.entry = entry
        self.sock: ProofSocket | None = None
        self.acked: dict[str, str] = {}  # id -> body

    def connect(self) -> ProofSocket:
        if self.sock is None:
            self.sock = ProofSocket(self.entry, browser_host(self.entry[1]))
            self.sock.join(LOBBY, "acked")
        return self.sock

    def send(self, body: str, deadline: float = DEADLINE) -> None:
        push = {"user": "acked", "body": body, "client_msg_id": secrets.token_hex(8)}
        end = time.monotonic() + deadline
        while True:
            try:
                sock = self.connect()
                ref = sock.push(LOBBY, "new:msg", push)
                reply: list[Any] = sock.frame(lambda f, ref=ref: f[1] == ref and f[3] == "phx_reply")
                if reply[4].get("status") == "ok":
                    self.acked[reply[4]["response"]["id"]] = body
                    return
            except (StepFailed, OSError):  # the pod went away, or no pod answered yet
                self.close()
            if time.monotonic() > end:
                raise AssertionError(f"{body!r} not acknowledged within {deadline:.0f}s")
            time.sleep(1.0)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def kubectl(k8s: Cluster, *args: str) -> None:
    subprocess.run(k8s.kubectl(*args), check=True, timeout=DEADLINE + 60)


def history(entry: tuple[str, int]) -> list[str]:
    """The ids a new join replays, read until a marker pushed after the join comes back."""
    sock = ProofSocket(entry, browser_host(entry[1]), deadline=60)
    try:
        sock.join(LOBBY, "reader")
        marker = f"end of history {secrets.token_hex(3)}"
        sock.push(LOBBY, "new:msg", {"user": "reader", "body": marker})
        ids = []
        while True:
            frame = sock.frame(lambda f: f[3] == "new:msg")
            if frame[4].get("body") == marker:
                return ids
            ids.append(frame[4].get("id"))
    finally:
        sock.close()


def test_no_acknowledged_message_is_lost_when_a_pod_is_deleted_and_redis_restarts(
    entry: tuple[str, int], k8s: Cluster
) -> None:
    sender = Sender(entry)
    try:
        for n in range(10):
            sender.send(f"before {n}")
        victim = chat_pods(k8s)[0]
        kubectl(k8s, "delete", "pod", victim.name, "--wait=false")
        for n in range(10):
            sender.send(f"while {victim.name} goes {n}")
        kubectl(k8s, "rollout", "restart", "statefulset/redis")
        for n in range(10):
            sender.send(f"while Redis restarts {n}")
        kubectl(k8s, "rollout", "status", "statefulset/redis", f"--timeout={DEADLINE:.0f}s")
        for n in range(10):
            sender.send(f"after {n}")
    finally:
        sender.close()
    kept = set(history(entry))
    assert len(sender.acked) == 40
    assert set(sender.acked) <= kept, sorted(set(sender.acked) - kept)
