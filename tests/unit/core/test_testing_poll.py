"""poll_until: returns the first truthy value, and a failing wait names what it waited for."""

from __future__ import annotations

import itertools

import pytest

from lmcache_core.testing import poll_until


def test_returns_the_first_truthy_value_without_waiting_out_the_timeout() -> None:
    calls = itertools.count()
    # A 600 s timeout: a poll that waited it out instead of returning would hang the run.
    assert poll_until(lambda: next(calls) >= 3 and "done", timeout=600, interval=0) == "done"
    assert next(calls) == 4


def test_a_timeout_names_what_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"^timed out after 0\.02s waiting for the queue to drain; last: \[\]$"):
        poll_until(lambda: [], timeout=0.02, what="the queue to drain")


def test_ignored_errors_count_as_not_yet_and_the_last_one_is_shown() -> None:
    calls = itertools.count()

    def starting() -> bool:
        if next(calls) < 2:
            raise ConnectionRefusedError("still starting")
        return True

    def down() -> bool:
        raise ConnectionRefusedError("down")

    assert poll_until(starting, interval=0, ignore=(OSError,)) is True
    with pytest.raises(AssertionError, match=r"last: ConnectionRefusedError\('down'\)"):
        poll_until(down, timeout=0.02, ignore=(OSError,))


def test_other_errors_fail_at_once() -> None:
    calls = itertools.count()

    def exited() -> bool:
        next(calls)
        raise RuntimeError("the server exited with 1")

    with pytest.raises(RuntimeError, match="exited with 1"):
        poll_until(exited, timeout=600, ignore=(OSError,))
    assert next(calls) == 1


def test_detail_is_added_to_a_timeout_and_computed_only_then() -> None:
    asked: list[str] = []

    def stderr() -> str:
        asked.append("stderr")
        return "Traceback: boom"

    assert poll_until(lambda: True, detail=stderr) is True
    assert asked == []
    with pytest.raises(AssertionError, match=r"waiting for the server; last: False\nTraceback: boom$"):
        poll_until(lambda: False, timeout=0.02, what="the server", detail=stderr)
    assert asked == ["stderr"]
