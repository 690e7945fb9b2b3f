"""Stage 3 on a real cluster, after `make stage3`: what the workflow's kind and minikube jobs
check between its make targets (.github/workflows/chatlab.yml). Nothing here can run
without that cluster, so `make test` leaves these out (the `cluster` marker); the jobs run

    .venv/bin/python -m pytest -m cluster tests/test_stage3_live.py -k <step>   (K8S=kind|minikube)

The browser reaches http://test.com as a learner's does after `<address> test.com` in
/etc/hosts: Chromium maps the name to the entry point's address, and sends `Host: test.com`.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from websockets.exceptions import WebSocketException

from stage3_k8s.deploy.clusters import CLUSTERS, Cluster
from stage3_k8s.deploy.config import HOST_NAME
from stage3_k8s.deploy.pods import chat_pods
from stage3_k8s.deploy.proofs import browser_host, browser_socket
from stage3_k8s.deploy.shell import Shell
from tests.helpers.browser import CHROMIUM_ARGS, ChatPages, chromium_path, send
from tests.helpers.phoenix import LOBBY, JoinError, PhoenixClient

pytestmark = [pytest.mark.cluster, pytest.mark.browser]

DEADLINE = 180.0  # seconds for what a cluster does slowly: pods starting, Redis coming back
NAVBAR_DEADLINE_MS = 60_000


@pytest.fixture(scope="module")
def k8s() -> Cluster:
    return CLUSTERS[os.environ.get("K8S", "kind")](Shell(dry_run=False))


@pytest.fixture(scope="module")
def entry(k8s: Cluster) -> tuple[str, int]:
    return k8s.entry()


@pytest.fixture(scope="module")
def browser(entry: tuple[str, int]) -> Iterator[Browser]:
    """Chromium resolving test.com to the entry point, as /etc/hosts would have it; the
    `pages` fixture (tests/conftest.py) opens its chat pages in this one."""
    rule = f"--host-resolver-rules=MAP {HOST_NAME} {entry[0]}"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=[*CHROMIUM_ARGS, rule])
        try:
            yield chromium
        finally:
            chromium.close()


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


def test_two_tabs_on_different_pods_chat_through_the_entry_point(pages: ChatPages, entry: tuple[str, int]) -> None:
    alice = pages.open(url(entry), "alice")
    expect(alice.locator("#self")).to_contain_text("chat@")
    expect(alice.locator("#nodes")).to_have_text(re.compile(r"^\[chat@[^,]+(, chat@[^,]+){2}\]$"))
    alice_pod = socket_pod(alice, "alice")
    # Each connection may go to any ready pod: open tabs until one's socket is elsewhere.
    for attempt in range(12):
        bob = pages.open(url(entry), f"bob{attempt}")
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
    assert pages.errors == []


def test_the_navbar_lists_ten_nodes_after_scaling(pages: ChatPages, entry: tuple[str, int], k8s: Cluster) -> None:
    """After `make stage3-scale REPLICAS=10`: the page, through the entry point, shows the ten."""
    assert len(chat_pods(k8s)) == 10
    page = pages.open(url(entry), "watcher")
    expect(page.locator("#nodes")).to_have_text(
        re.compile(r"^\[chat@[^,]+(, chat@[^,]+){9}\]$"), timeout=NAVBAR_DEADLINE_MS
    )
    assert pages.errors == []


class Sender:
    """Pushes messages through the entry point, reconnecting (to whichever pod answers) and
    sending again with the same client_msg_id until each is acknowledged."""

    def __init__(self, entry: tuple[str, int]) -> None:
        self.entry = entry
        self.client: PhoenixClient | None = None
        self.acked: dict[str, str] = {}  # id -> body

    async def connect(self) -> PhoenixClient:
        if self.client is None:
            self.client = browser_socket(self.entry, browser_host(self.entry[1]))
            await self.client.open()
            await self.client.join(LOBBY, {"user": "acked"})
        return self.client

    async def send(self, body: str, deadline: float = DEADLINE) -> None:
        push = {"user": "acked", "body": body, "client_msg_id": secrets.token_hex(8)}
        end = time.monotonic() + deadline
        while True:
            try:
                reply = await (await self.connect()).push(LOBBY, "new:msg", push)
                if reply.ok:
                    self.acked[reply.response["id"]] = body
                    return
            # The pod went away, or no pod answered yet (TimeoutError is an OSError).
            except (OSError, WebSocketException, JoinError):
                await self.close()
            if time.monotonic() > end:
                raise AssertionError(f"{body!r} not acknowledged within {deadline:.0f}s")
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None


async def kubectl(k8s: Cluster, *args: str) -> None:
    await asyncio.to_thread(subprocess.run, k8s.kubectl(*args), check=True, timeout=DEADLINE + 60)


async def history(entry: tuple[str, int]) -> list[str]:
    """The ids a new join replays, read until a marker pushed after the join comes back."""
    async with browser_socket(entry, browser_host(entry[1]), deadline=60) as reader:
        await reader.join(LOBBY, {"user": "reader"})
        marker = f"end of history {secrets.token_hex(3)}"
        await reader.send(LOBBY, "new:msg", {"user": "reader", "body": marker})
        await reader.wait_for_message(marker)
        return [message["id"] for message in reader.messages() if message["body"] != marker]


async def test_no_acknowledged_message_is_lost_when_a_pod_is_deleted_and_redis_restarts(
    entry: tuple[str, int], k8s: Cluster
) -> None:
    sender = Sender(entry)
    try:
        for n in range(10):
            await sender.send(f"before {n}")
        victim = chat_pods(k8s)[0]
        await kubectl(k8s, "delete", "pod", victim.name, "--wait=false")
        for n in range(10):
            await sender.send(f"while {victim.name} goes {n}")
        await kubectl(k8s, "rollout", "restart", "statefulset/redis")
        for n in range(10):
            await sender.send(f"while Redis restarts {n}")
        await kubectl(k8s, "rollout", "status", "statefulset/redis", f"--timeout={DEADLINE:.0f}s")
        for n in range(10):
            await sender.send(f"after {n}")
    finally:
        await sender.close()
    kept = set(await history(entry))
    assert len(sender.acked) == 40
    assert set(sender.acked) <= kept, sorted(set(sender.acked) - kept)
