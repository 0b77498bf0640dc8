"""Polling instead of fixed sleeps: wait until a condition holds, or fail saying which."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(
    check: Callable[[], bool], within_s: float = 20.0, what: str = "condition"
) -> None:
    """Waits until `check()` holds (state another task or thread changes), or fails."""
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"{what} not reached in {within_s:.0f}s"
        await asyncio.sleep(0.01)


async def eventually_equal(
    read: Callable[[], Awaitable[float]], value: float, within_s: float = 20.0, what: str = ""
) -> None:
    """Waits until the awaited `read()` returns `value` (a metric scraped over HTTP, say)."""
    deadline = time.monotonic() + within_s
    while (current := await read()) != value:
        assert time.monotonic() < deadline, f"{what}={current}, expected {value}"
        await asyncio.sleep(0.05)


def until(check: Callable[[], bool], within_s: float = 60.0, what: str = "condition") -> None:
    """The blocking form of `eventually`, for tests that drive processes from threads."""
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"{what} not reached in {within_s:.0f}s"
        time.sleep(0.05)
