"""poll_until: the one way tests (ours and the contract suites) wait for another thread or process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(
    check: Callable[[], T],
    *,
    timeout: float = 5.0,
    interval: float = 0.005,
    what: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
    detail: Callable[[], object] | None = None,
) -> T:
    """Call `check` until it returns a truthy value, and return that value.

    Raises AssertionError naming `what` and the last value seen once `timeout` seconds pass (the
    timeout is a bound on a failing test, never a measurement: a passing test returns as soon
    as `check` holds). Exceptions of the `ignore` types count as "not yet" (a server that is
    still starting, say); the last one is shown in the error. `detail`, when given, is called
    once on a timeout and its result added to the error (a server's stderr, the frames a thread
    still holds): what a failing run needs to be read, computed only when it fails."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except ignore as exc:
            last = exc
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout}s waiting for {what}; last: {last!r}"
            if detail is not None:
                message += f"\n{detail()}"
            raise AssertionError(message)
        time.sleep(interval)
