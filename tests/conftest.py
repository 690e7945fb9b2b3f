"""Fixtures shared by the tests, and the rule for tests that need more than Python.

Some suites need what a laptop may not have. Mark them, and they skip outside CI with one
line saying what they need; under CI=true a skip is a failure (below), so there they run:

    @pytest.mark.netns    root and iproute2: network namespaces, a bridge, /etc/netns files
    @pytest.mark.docker   the docker CLI with its daemon answering
    @pytest.mark.browser  Chromium (the Debian package, or CHROMIUM=path)
    @pytest.mark.node     Node.js (node on PATH)
    @pytest.mark.multicast  multicast on the loopback interface (gossip on one host)

Mark a module (`pytestmark = pytest.mark.netns`) or single tests; a fixture or a step that
needs one of them calls `require(name)` (tests/requirements.py), as the `browser` fixture
does. Add a requirement with an entry in REQUIREMENTS there; each check runs once a session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.browser import CHROMIUM_ARGS, ChatPages, chromium_path
from tests.requirements import REQUIREMENTS, require
from tests.support import NodeProcess, running_node


def pytest_configure(config: pytest.Config) -> None:
    for name, (_check, needs) in REQUIREMENTS.items():
        config.addinivalue_line("markers", f"{name}: {needs}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for name in REQUIREMENTS:
        if item.get_closest_marker(name) is not None:
            require(name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Under CI=true a skipped test is a failed test: nothing may pass by not running."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true: {report.longrepr}"


@pytest.fixture
def stage1_node() -> Iterator[NodeProcess]:
    """A real `python -m stage1_dev` on a free port, the demo ping timer off."""
    with running_node("stage1_dev", {"PING_INTERVAL": "0"}) as node:
        yield node


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, driven by Playwright: one per test module."""
    require("browser")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def pages(browser: Browser) -> Iterator[ChatPages]:
    """Chat pages opened in `browser`, each context closed after the test."""
    opened = ChatPages(browser)
    try:
        yield opened
    finally:
        opened.close()
