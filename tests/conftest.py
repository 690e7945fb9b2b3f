from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.browser import CHROMIUM_ARGS, ChatPages, chromium_path
from tests.support import NodeProcess, running_node


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
