"""The scheduler's clock: the time now, and a wait for an event that gives up after a while.

Both come from one injected object, so that tests run keep-alive and backoff on a manual
clock they advance, instead of sleeping for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol

__all__ = ["Clock", "MonotonicClock"]


class Clock(Protocol):
    """Where the scheduler reads the time and waits on it."""

    def now(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        """Wait until ``event`` is set or ``timeout`` seconds pass; True if it is set."""
        ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` and asyncio's timeouts."""

    def now(self) -> float:
        return time.monotonic()

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        return event.is_set()
