"""The suite's two tiers, as a pytest plugin (tests/conftest.py loads it).

A test marked `slow` may start processes (a node, redis-server, kubectl, a browser), open
sockets, look up names and run containers. Every other test is the fast tier, `make
test-fast` (`pytest -m "not slow"`): it runs in this process, the Quart test client at most.

The rule holds in every run, `make test` included: a test that is not marked slow and
connects, binds or sends on a socket, looks up a name or starts a process fails, with a
line saying to mark it. So a test cannot sit in the fast tier while it starts something.

A test is slow when its module or itself is marked (`pytestmark = pytest.mark.slow`), when
it carries a requirement marker (netns, docker, browser, node, multicast: all start
something) or the soak marker, or when it uses a fixture of SLOW_FIXTURES. A test that
starts nothing but runs for seconds (the 10 000-frame fuzz run) is marked slow too.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Generator
from typing import NoReturn

import pytest

from tests.helpers.requirements import REQUIREMENTS

# Fixtures that start a process (tests/conftest.py): a test using one is slow.
SLOW_FIXTURES = frozenset({"stage1_node", "redis_server", "cluster", "two_nodes", "browser", "pages", "node_bin"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: starts processes, Redis, containers or a browser, or opens sockets")


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        needs = any(item.get_closest_marker(name) for name in (*REQUIREMENTS, "soak"))
        if needs or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def _guarded(item: pytest.Item) -> Generator[None]:
    """Run one phase of a fast test with sockets and new processes refused. A refusal fails
    the test even when the code under test catches the error it raises."""
    if item.get_closest_marker("slow") is not None:
        yield
        return
    refused: list[str] = []

    def refuse(what: str) -> object:
        def refusal(*_args: object, **_kwargs: object) -> NoReturn:
            refused.append(what)
            raise RuntimeError(f"{what} in a fast test: mark the test or its module `slow`")

        return refusal

    with pytest.MonkeyPatch.context() as patch:
        for method in ("connect", "connect_ex", "bind", "sendto"):
            patch.setattr(socket.socket, method, refuse(f"socket.{method}()"))
        for name in ("getaddrinfo", "gethostbyname"):  # a name lookup may ask a DNS server
            patch.setattr(socket, name, refuse(f"socket.{name}()"))
        patch.setattr(subprocess.Popen, "_execute_child", refuse("a new process"))
        for name in ("fork", "posix_spawn", "posix_spawnp", "system"):
            patch.setattr(os, name, refuse(f"os.{name}()"))
        yield
    if refused:
        pytest.fail(f"{refused[0]} in a fast test: mark the test or its module `slow` (tests/helpers/tiers.py)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None]:
    yield from _guarded(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None]:
    yield from _guarded(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None]:
    yield from _guarded(item)
