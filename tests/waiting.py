"""The one way tests wait for something that happens in another thread or process: poll a check against a
deadline. Never a bare sleep as the success criterion."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(check: Callable[[], T], timeout: float, every: float = 0.05) -> T | None:
    """The first truthy value `check` returns within `timeout` seconds (checked once more at the end), or
    None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    return check() or None


def wait_for(check: Callable[[], T], what: str = "the condition", timeout: float = 30.0, every: float = 0.05) -> T:
    """As `poll`, but a test failure naming `what` (and the last value seen) when the deadline passes."""
    value = poll(check, timeout, every)
    if not value:
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {check()!r})")
    return value
