"""Waiting for a condition, always with a deadline; and one async scenario run from sync code."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

WAIT_DEADLINE = 10.0  # default seconds for a wait
T = TypeVar("T")


def wait_until(
    condition: Callable[[], Any], deadline: float = WAIT_DEADLINE, what: str = "condition", step: float = 0.05
) -> Any:
    """Poll `condition` until it returns something truthy (returned) or `deadline` seconds pass."""
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: not true after {deadline}s")
        time.sleep(step)


async def async_wait_until(
    condition: Callable[[], Any], deadline: float = WAIT_DEADLINE, what: str = "condition", step: float = 0.05
) -> Any:
    """`wait_until` for async tests: the event loop keeps running while we poll."""
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: not true after {deadline}s")
        await asyncio.sleep(step)


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a fresh event loop in a worker thread.

    For module-scoped (sync) fixtures that play one async scenario which several tests
    then examine, without touching the event loop pytest-asyncio gives each test.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()
