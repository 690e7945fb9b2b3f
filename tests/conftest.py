"""Fixtures shared by the tests (built on the toolkit in tests/helpers/), and the rule for
tests that need more than Python (tests/helpers/skip_rule.py, a plugin loaded here):

Some suites need what a laptop may not have. Mark them, and they skip outside CI with one
line saying what they need; under CI=true a skip is a failure, so there they run:

    @pytest.mark.netns    root and iproute2: network namespaces, a bridge, /etc/netns files
    @pytest.mark.docker   the docker CLI with its daemon answering
    @pytest.mark.browser  Chromium (the Debian package, or CHROMIUM=path)
    @pytest.mark.node     Node.js (node on PATH)
    @pytest.mark.multicast  multicast on the loopback interface (gossip on one host)

Mark a module (`pytestmark = pytest.mark.netns`) or single tests; a fixture or a step that
needs one of them calls `require(name)`, as the `browser` fixture does. Add a requirement
with an entry in REQUIREMENTS there; each check runs once a session.

The suite has two tiers (tests/helpers/tiers.py, another plugin): a test that starts a
process, Redis or a browser, or opens a socket, is marked `slow` (any test above is);
the rest is `make test-fast`, and fails if it starts anything.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.helpers.browser import CHROMIUM_ARGS, ChatPages, chromium_path
from tests.helpers.cluster import Cluster
from tests.helpers.node import NodeProcess, running_node
from tests.helpers.phoenix_js import CLIENTS, JS_DIR, BackgroundScript
from tests.helpers.redis_server import RedisServer
from tests.helpers.requirements import require

pytest_plugins = ["pytester", "tests.helpers.skip_rule", "tests.helpers.tiers"]


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


# Stage 2: a real redis-server and real nodes ---------------------------------------------------


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server on a free port for one test."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def cluster(redis_server: RedisServer) -> Iterator[Cluster]:
    """No node started yet: `cluster.start("a", "b")`; every node is stopped afterwards."""
    with Cluster(redis_server) as nodes:
        yield nodes


@pytest.fixture
def two_nodes(cluster: Cluster) -> Cluster:
    """Nodes a@localhost and b@localhost, connected to each other."""
    cluster.start("a", "b")
    cluster.connected("a", "b")
    return cluster


# The official phoenix JS client under Node.js ---------------------------------------------------


@pytest.fixture(scope="module")
def node_bin() -> str:
    """Node.js (without it, the `node` marker skips) and the pinned client packages, which
    `make test` installs: missing ones fail the tests."""
    node = shutil.which("node")
    assert node is not None, "the node marker skips these tests without Node.js"
    missing = [name for name in [*CLIENTS, "ws"] if not (JS_DIR / "node_modules" / name / "package.json").is_file()]
    if missing:
        pytest.fail(f"{missing} not installed in tests/js: run `make tests/js/node_modules/.installed`")
    return node


@pytest.fixture
def background_scripts() -> Iterator[list[BackgroundScript]]:
    """Scripts appended here are killed at teardown, whatever the test's outcome."""
    scripts: list[BackgroundScript] = []
    yield scripts
    for script in scripts:
        script.stop()
