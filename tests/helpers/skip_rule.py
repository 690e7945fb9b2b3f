"""The rule for suites marked with a requirement (tests/conftest.py explains it), as a pytest
plugin: a marked test skips outside CI when this machine lacks what it needs, and under
CI=true a skip is a failure. A plugin of its own, so that a bare session can load it
without the rest of the toolkit (tests/test_skip_rules.py does)."""

from __future__ import annotations

import os

import pytest

from tests.helpers.requirements import REQUIREMENTS, require


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
