"""The rule of the two tiers (tests/helpers/tiers.py), on small pytest sessions run in this
process (pytester): a fast test that starts something fails, even when it hides the error;
what is marked slow, needs a requirement or uses a process fixture is left to `make test`."""

from __future__ import annotations

import pytest

# Its sessions' slow tests bind sockets and start processes for real, which the fast tier refuses.
pytestmark = pytest.mark.slow

CONFTEST = """
import pytest

pytest_plugins = ["tests.helpers.skip_rule", "tests.helpers.tiers"]


@pytest.fixture
def redis_server():  # the name of a fixture that starts redis-server
    yield None
"""

TESTS = """
import socket
import subprocess

import pytest


def test_pure():
    assert sorted([2, 1]) == [1, 2]


def test_binds_a_socket():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))


def test_hides_a_process():
    try:
        subprocess.run(["true"], check=True)
    except Exception:
        pass


@pytest.mark.slow
def test_marked_slow_starts_a_process():
    subprocess.run(["true"], check=True)


@pytest.mark.soak
def test_a_soak_run():
    pass


def test_uses_a_process_fixture(redis_server):
    pass
"""


@pytest.fixture
def session(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_tiers_session=TESTS)
    return pytester


def test_the_fast_tier_refuses_a_socket_and_a_process_even_when_the_error_is_caught(session: pytest.Pytester) -> None:
    result = session.runpytest_inprocess("-m", "not slow")

    result.assert_outcomes(passed=1, failed=2, deselected=3)
    result.stdout.fnmatch_lines(
        [
            "E * socket.bind() in a fast test: mark the test or its module `slow`",
            "E * a new process in a fast test: mark the test or its module `slow` (tests/helpers/tiers.py)",
        ]
    )


def test_slow_tests_start_what_they_need(session: pytest.Pytester) -> None:
    result = session.runpytest_inprocess("-m", "slow")

    result.assert_outcomes(passed=3, deselected=3)
