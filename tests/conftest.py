"""Fixtures shared by the tests, and the rule for tests that need more than Python.

Some suites need what a laptop may not have. Mark them, and they skip outside CI with one
line saying what they need; under CI=true a skip is a failure (below), so there they run:

    @pytest.mark.netns    root and iproute2: network namespaces, a bridge, /etc/netns files
    @pytest.mark.docker   the docker CLI with its daemon answering
    @pytest.mark.browser  Chromium (the Debian package, or CHROMIUM=path)
    @pytest.mark.node     Node.js (node on PATH)

Mark a module (`pytestmark = pytest.mark.netns`) or single tests; a fixture that needs one
of them calls `require(name)`, as the `browser` fixture does. Add a requirement by adding
an entry to REQUIREMENTS; the check runs once per session.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.browser import CHROMIUM_ARGS, ChatPages, chromium_path
from tests.support import NodeProcess, running_node


def _root_with_iproute2() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


# marker -> (the check, what is missing when it fails)
REQUIREMENTS: dict[str, tuple[Callable[[], bool], str]] = {
    "netns": (
        _root_with_iproute2,
        "needs root and iproute2 (it creates network namespaces, a bridge and files under /etc/netns)",
    ),
    "docker": (_docker_answers, "needs Docker with its daemon running (it builds and runs containers named chatlab)"),
    "browser": (lambda: chromium_path() is not None, "needs Chromium (the chromium package, or CHROMIUM=path)"),
    "node": (lambda: shutil.which("node") is not None, "needs Node.js (node on PATH)"),
}


@functools.cache
def _available(name: str) -> bool:
    return REQUIREMENTS[name][0]()


def require(name: str) -> None:
    """Skip the current test, with one line, when what `name` stands for is missing."""
    if not _available(name):
        pytest.skip(REQUIREMENTS[name][1])


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
