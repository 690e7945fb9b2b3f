"""What some suites need beyond Python, how to tell whether this machine has it, and the
one line a test skips with when it does not (the rule is tests/helpers/skip_rule.py)."""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable

import pytest

from tests.helpers.browser import chromium_path

PROBE_DEADLINE = 2.0


def _root_with_iproute2() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _multicast_on_loopback() -> bool:
    """Two gossip sockets on 127.0.0.1, as two nodes of `make stage2 DISCOVERY=gossip` open
    them: does one hear what the other sends? Others may use the group, hence the token."""
    from stage2_cluster.gossip import GROUP, PORT, open_socket

    token = secrets.token_bytes(16)
    try:
        with open_socket("127.0.0.1") as sender, open_socket("127.0.0.1") as receiver:
            receiver.settimeout(PROBE_DEADLINE)
            sender.sendto(token, (GROUP, PORT))
            while receiver.recv(2048) != token:
                pass
        return True
    except OSError:  # no route for the group, or nothing heard before the deadline
        return False


# name (a marker, see tests/conftest.py) -> (the check, what is missing when it fails)
REQUIREMENTS: dict[str, tuple[Callable[[], bool], str]] = {
    "netns": (
        _root_with_iproute2,
        "needs root and iproute2 (it creates network namespaces, a bridge and files under /etc/netns)",
    ),
    "docker": (_docker_answers, "needs Docker with its daemon running (it builds and runs containers named chatlab)"),
    "browser": (lambda: chromium_path() is not None, "needs Chromium (the chromium package, or CHROMIUM=path)"),
    "node": (lambda: shutil.which("node") is not None, "needs Node.js (node on PATH)"),
    "multicast": (_multicast_on_loopback, "needs multicast on the loopback interface (DISCOVERY=gossip on one host)"),
}


@functools.cache
def available(name: str) -> bool:
    return REQUIREMENTS[name][0]()


def require(name: str) -> None:
    """Skip the current test, with one line, when what `name` stands for is missing."""
    if not available(name):
        pytest.skip(REQUIREMENTS[name][1])  # a failure under CI=true (skip_rule.py)
