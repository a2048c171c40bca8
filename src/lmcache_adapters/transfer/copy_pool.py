"""CopyPool: splits one gather/scatter into per-layer copies run on a few threads at once."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch

__all__ = ["CopyPool", "default_copy_threads"]

# Memory bandwidth is what the copies share: past a few threads per transfer more only adds
# contention with the other workers' transfers.
_MAX_DEFAULT_THREADS = 4


def default_copy_threads() -> int:
    """The CPUs this process may run on, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(_MAX_DEFAULT_THREADS, cpus))


def _single_threaded_torch() -> None:
    torch.set_num_threads(1)


class CopyPool:
    """Runs the independent copies of one transfer (one per layer, say) on `threads` threads:
    the calling thread and `threads - 1` shared helpers, each copy with one torch thread.

    Copies are handed out one at a time from a shared iterator, so a thread that is slowed
    down (a busy host) simply takes fewer of them; there is no barrier inside a copy, which is
    what makes torch's own multi-threaded copy slow on a loaded machine (a copy of ~1 MiB waits
    for its slowest thread). The caller always works through the list itself, so a transfer
    completes even when every helper is busy with another worker's transfer. Torch releases the
    GIL inside each copy, so the threads copy in parallel. Thread-safe."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, int(threads))
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _helpers(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("copy pool is closed")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self.threads - 1,
                    thread_name_prefix="lmcache-copy",
                    initializer=_single_threaded_torch,
                )
            return self._executor

    def run(self, copies: Sequence[Callable[[], None]]) -> None:
        """Run every copy; returns when all are done. The first exception raised by a copy is
        re-raised here (after every started copy has finished, so no copy outlives the call)."""
        if self.threads <= 1 or len(copies) <= 1:
            for copy in copies:
                copy()
            return
        pending = iter(copies)
        errors: list[BaseException] = []

        def drain() -> None:
            # next() on a list iterator is atomic under the GIL: each copy runs exactly once.
            for copy in pending:
                if errors:
                    return
                try:
                    copy()
                except BaseException as exc:
                    errors.append(exc)
                    return

        helpers = self._helpers()
        futures: list[Future[None]] = [helpers.submit(drain) for _ in range(min(self.threads, len(copies)) - 1)]
        drain()
        # Helpers that have not started (busy with another transfer) are not waited for: the
        # list is done. The ones running finish their current copy and find nothing left.
        for future in futures:
            if not future.cancel():
                future.result()
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Stop the helper threads (after the copies they run). Idempotent."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
