"""pytest plugin: the run fails when it leaves new `lmcache_*` segments in /dev/shm.

A leaked L1 pool is 32 MiB to 1 GiB of RAM that stays until reboot, on a developer's machine
and on CI alike. At session start the plugin notes what /dev/shm holds, and while the tests run
it looks at each new `lmcache_*` entry once, noting who holds it (its flock, open file or
mapping). At the end, every new entry still there is a leak when it is held by this test
process or one of its descendants (a pool never closed, a server left running), or by nobody
at all (a server killed without cleaning up). Orphans are removed after being reported, so one
bad run does not eat memory for the next. Entries first seen held only by processes outside
this run (another session's server on a shared machine) are not this run's doing and are left
alone, even when their owner has died since.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import pytest

SHM_DIR = "/dev/shm"
PREFIX = "lmcache_"


def snapshot(shm_dir: str = SHM_DIR) -> dict[str, int]:
    """`lmcache_*` entries of `shm_dir` by name, with their inode (a reused name is new)."""
    out: dict[str, int] = {}
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return out
    for name in names:
        if name.startswith(PREFIX):
            try:
                out[name] = os.stat(os.path.join(shm_dir, name)).st_ino
            except FileNotFoundError:
                continue
    return out


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


def is_descendant(pid: int, ancestor: int) -> bool:
    """Whether `pid` is `ancestor` or runs below it."""
    seen = 0
    while pid > 1 and seen < 1000:
        if pid == ancestor:
            return True
        parent = _parent(pid)
        if parent is None:
            return False
        pid, seen = parent, seen + 1
    return pid == ancestor


def _flock_holders() -> dict[int, set[int]]:
    """inode -> pids holding a flock on it (from /proc/locks; our servers flock their segment)."""
    out: dict[int, set[int]] = {}
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[4].lstrip("-").isdigit():
                    inode = int(parts[5].rsplit(":", 1)[-1])
                    out.setdefault(inode, set()).add(int(parts[4]))
    except OSError:
        pass
    return out


def holders(paths: set[str]) -> dict[str, set[int]]:
    """For each path, the live pids that hold its flock, or else have it open or mapped."""
    found: dict[str, set[int]] = {p: set() for p in paths}
    if not paths:
        return found
    locks = _flock_holders()
    for path in paths:
        try:
            found[path] |= {pid for pid in locks.get(os.stat(path).st_ino, ()) if pid > 0}
        except OSError:
            pass
    rest = {p for p, pids in found.items() if not pids}
    if not rest:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target in rest:
                    found[target].add(pid)
        except OSError:
            pass
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
                for line in f:
                    path = line.rstrip("\n").partition("/")[2]
                    if path and "/" + path in rest:
                        found["/" + path].add(pid)
        except OSError:
            pass
    return found


class Watcher:
    """Remembers, for each `lmcache_*` entry that appears after `before`, whether the first
    process seen holding it belonged to this run (see the module doc)."""

    def __init__(self, before: dict[str, int], *, me: int | None = None, shm_dir: str = SHM_DIR) -> None:
        self.before = before
        self.me = os.getpid() if me is None else me
        self.shm_dir = shm_dir
        self.foreign: set[tuple[str, int]] = set()
        self.seen: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> None:
        """Look at entries not seen before: note those that only other process trees hold."""
        with self._lock:
            fresh = {
                (name, ino) for name, ino in snapshot(self.shm_dir).items()
                if self.before.get(name) != ino and (name, ino) not in self.seen
            }
            if not fresh:
                return
            paths = {os.path.join(self.shm_dir, name): (name, ino) for name, ino in fresh}
            for path, pids in holders(set(paths)).items():
                if pids:  # an entry nobody holds yet is looked at again next time
                    self.seen.add(paths[path])
                    if not any(is_descendant(pid, self.me) for pid in pids):
                        self.foreign.add(paths[path])

    def start(self, interval_s: float = 0.25) -> None:
        def run() -> None:
            while not self._stop.wait(interval_s):
                self.poll()

        self._thread = threading.Thread(target=run, name="shm-guard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


@dataclass
class Leak:
    """One segment this run left behind, and the live processes of this run that hold it."""

    name: str
    size: int
    held_by: set[int] = field(default_factory=set)
    removed: bool = False

    def describe(self) -> str:
        what = f"{self.name} ({self.size / (1 << 20):.1f} MiB)"
        if self.held_by:
            return f"{what}: still held by pid(s) {', '.join(map(str, sorted(self.held_by)))} of this run"
        return f"{what}: nobody holds it{' (removed now)' if self.removed else ''}"


def find_leaks(watcher: Watcher, *, remove: bool = True) -> list[Leak]:
    """New `lmcache_*` entries since the watcher's start that this process tree leaked."""
    watcher.poll()
    after = snapshot(watcher.shm_dir)
    new = {
        name: ino for name, ino in after.items()
        if watcher.before.get(name) != ino and (name, ino) not in watcher.foreign
    }
    paths = {os.path.join(watcher.shm_dir, name): name for name in new}
    leaks: list[Leak] = []
    for path, pids in holders(set(paths)).items():
        ours = {pid for pid in pids if is_descendant(pid, watcher.me)}
        if pids and not ours:
            continue  # another session's live server
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            continue  # removed meanwhile
        leak = Leak(paths[path], size, ours)
        if remove and not ours:
            try:
                os.unlink(path)
                leak.removed = True
            except OSError:
                pass
        leaks.append(leak)
    return sorted(leaks, key=lambda leak: leak.name)


_WATCHER = pytest.StashKey[Watcher]()


def pytest_sessionstart(session: pytest.Session) -> None:
    watcher = Watcher(snapshot())
    watcher.start()
    session.config.stash[_WATCHER] = watcher


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    watcher = session.config.stash.get(_WATCHER, None)
    if watcher is None:
        return
    watcher.stop()
    leaks = find_leaks(watcher)
    if not leaks:
        return
    lines = [f"this test run left {len(leaks)} new segment(s) in {SHM_DIR}:"]
    lines += [f"  {leak.describe()}" for leak in leaks]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "shared-memory leak", red=True)
        for line in lines:
            reporter.write_line(line)
    else:
        print("\n".join(lines))
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
