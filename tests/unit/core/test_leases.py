"""Lookup leases and the client-owned transfer ledger of the DataPath (issue 19's rules, in core terms)."""

from __future__ import annotations

import pytest

from lmcache_core.clients import ClientId, ClientLimits, Registrations
from lmcache_core.clock import ManualClock
from lmcache_core.hashing import TokenHasher
from lmcache_core.keys import ObjectKey
from lmcache_core.l1.manager import L1Manager
from lmcache_core.l1.results import OpResult, WriteMode
from lmcache_core.leases import LeaseTable
from lmcache_core.lookup import DataPath, RequestKey
from lmcache_core.sessions import SessionManager
from lmcache_core.testing.memory import BytearrayMemoryPool

C = 4
OBJ = 4096
READ_TTL = 300.0
A, B, V = ClientId(b"a"), ClientId(b"b"), ClientId(b"victim")


def key(i: int) -> ObjectKey:
    return ObjectKey(i.to_bytes(32, "big"), "m", 0x01000100)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def l1(clock: ManualClock) -> L1Manager:
    return L1Manager(BytearrayMemoryPool(64 * OBJ), clock=clock, read_ttl_seconds=READ_TTL)


def stored(l1: L1Manager, n: int, first: int = 0) -> list[ObjectKey]:
    keys = [key(first + i) for i in range(n)]
    results = l1.reserve_write(keys, [OBJ] * n, WriteMode.NEW)
    assert all(r is OpResult.SUCCESS for r, _ in results)
    l1.finish_write(keys)
    return keys


def lookup(l1: L1Manager, leases: LeaseTable, clock: ManualClock, owner: ClientId, rid: str,
           keys: list[ObjectKey], extra: int = 0) -> None:
    now = clock.monotonic()
    handles = l1.lock_read_prefix(keys, extra, promise=True)
    leases.grant(owner, rid, keys[: len(handles)], handles, 1 + extra, locked_since=now)


def locks(l1: L1Manager, keys: list[ObjectKey]) -> list[int]:
    return [i.read_lock_count if i is not None else -1 for i in l1.inspect(keys)]


def table(l1: L1Manager, clock: ManualClock, per_client: int = 100, total: int = 1000) -> LeaseTable:
    return LeaseTable(l1, clock=clock, max_per_client=per_client, max_total=total)


def test_free_releases_only_the_callers_own_lease(l1: L1Manager, clock: ManualClock) -> None:
    leases = table(l1, clock)
    keys = stored(l1, 2)
    lookup(l1, leases, clock, A, "r", keys)
    assert leases.release(B, "r", keys, 1) == 0  # same request id, another client: nothing
    assert leases.release(B, "r", keys, 1) == 0
    assert locks(l1, keys) == [1, 1]
    assert leases.release(A, "r", keys, 5) == 2  # never more than the lease holds
    assert locks(l1, keys) == [0, 0]
    assert leases.release(A, "r", keys, 1) == 0


def test_a_retrieve_consumes_from_the_named_requests_lease(l1: L1Manager, clock: ManualClock) -> None:
    leases = table(l1, clock)
    keys = stored(l1, 2)
    lookup(l1, leases, clock, A, "req", keys)  # vLLM: the scheduler looks up...
    ticket = leases.take(B, "req", keys, OBJ)  # ...a worker on another socket retrieves
    assert ticket is not None and ticket.handles == [h for _, h in l1.reserve_read(keys, promise=True)]
    l1.finish_read(keys, promise=True)
    assert leases.take(B, "req", keys) is None  # one lock per key, spent
    assert leases.take(B, "other", keys) is None  # no lease of that request: nothing touched
    leases.release_ticket(ticket)
    assert locks(l1, keys) == [0, 0]


def test_a_partial_lease_fails_and_gives_back_only_its_own_locks(l1: L1Manager, clock: ManualClock) -> None:
    leases = table(l1, clock)
    keys = stored(l1, 3)
    lookup(l1, leases, clock, A, "r", keys[:2])
    lookup(l1, leases, clock, V, "victim", keys)
    assert leases.take(A, "r", keys) is None  # key 2 holds no lock of request r
    # r's two locks went back (0.5.0: the engine will not retrieve them); the victim's stay.
    assert locks(l1, keys) == [1, 1, 1]
    assert leases.take(V, "victim", keys) is not None


def test_own_lease_is_preferred_over_another_clients_lease_of_the_same_id(l1: L1Manager, clock: ManualClock) -> None:
    leases = table(l1, clock)
    keys = stored(l1, 1)
    lookup(l1, leases, clock, A, "req-0-warm", keys)  # two bench processes, same request ids
    lookup(l1, leases, clock, B, "req-0-warm", keys)
    ticket = leases.take(A, "req-0-warm", keys)
    assert ticket is not None
    assert leases.get(A, "req-0-warm") is None and leases.get(B, "req-0-warm") is not None


def test_caps_release_the_oldest_lease_of_that_client(l1: L1Manager, clock: ManualClock) -> None:
    leases = table(l1, clock, per_client=3)
    keys = stored(l1, 1)
    lookup(l1, leases, clock, V, "v", keys)
    for i in range(10):
        lookup(l1, leases, clock, A, f"a{i}", keys)
    assert leases.count(A) == 3 and leases.count(V) == 1
    assert locks(l1, keys) == [4]  # the flood's three newest and the victim's one
    assert leases.released_over_cap_total == 7


def test_a_lapsed_lease_never_releases_a_newer_lock(l1: L1Manager, clock: ManualClock) -> None:
    leases = table(l1, clock)
    keys = stored(l1, 1)
    lookup(l1, leases, clock, A, "old", keys)
    clock.advance(READ_TTL + 1)  # the L1 lock lapsed with its TTL
    lookup(l1, leases, clock, B, "new", keys)
    assert leases.release(A, "old", keys, 1) == 0
    assert leases.take(A, "old", keys) is None
    assert locks(l1, keys) == [1]  # B's lock is intact
    assert leases.count() == 1 and leases.get(A, "old") is None  # spent: forgotten


def test_cleared_objects_void_the_lease(l1: L1Manager, clock: ManualClock) -> None:
    leases = table(l1, clock)
    keys = stored(l1, 2)
    lookup(l1, leases, clock, A, "r", keys)
    l1.clear(force=True)
    newer = stored(l1, 2)
    assert leases.take(A, "r", newer) is None  # the promises died with the old objects
    assert locks(l1, newer) == [0, 0]
    assert l1.report_status()["pending_free_count"] == 0


def test_prefetched_locks_join_a_live_lease_or_are_released(l1: L1Manager, clock: ManualClock) -> None:
    leases = table(l1, clock)
    keys = stored(l1, 2)
    now = clock.monotonic()
    live = leases.grant(A, "live", [], [], 1, locked_since=now, prefetching=True)
    dead = leases.grant(A, "dead", [], [], 1, locked_since=now, prefetching=True)
    assert live is not None and dead is not None
    assert leases.end(A, "dead") == 0
    handles = l1.lock_read_prefix(keys, promise=True)
    leases.attach_prefetch(live, keys, handles, 1, locked_since=now)
    handles = l1.lock_read_prefix(keys, promise=True)
    leases.attach_prefetch(dead, keys, handles, 1, locked_since=now)  # released at once
    assert locks(l1, keys) == [1, 1]
    assert leases.take(B, "live", keys) is not None


# --------------------------------------------------------------------------- DataPath ledger


def make_dp(clock: ManualClock, limits: ClientLimits | None = None, objects: int = 64) -> DataPath:
    l1 = L1Manager(BytearrayMemoryPool(objects * OBJ), clock=clock)
    sessions = SessionManager(TokenHasher("blake3", chunk_size=C), clock=clock)
    dp = DataPath(l1, sessions, clock=clock, limits=limits)
    dp.register_layout("m", 1, OBJ)
    return dp


def rk(chunks: int, rid: str, seed: int = 1, worker: int | None = 0) -> RequestKey:
    tokens = [seed * 1000 + i for i in range(chunks * C + 1)]
    return RequestKey("m", 1, worker, tokens, 0, chunks * C, rid)


def test_pending_writes_belong_to_their_client_and_instance(clock: ManualClock) -> None:
    dp = make_dp(clock)
    t = dp.transfer_keys(rk(2, "w"), A)
    assert len(dp.prepare_store(A, 0, t, OBJ)) == 2
    assert dp.prepare_store(B, 0, t, OBJ) == []  # the keys are being written: no second writer
    assert dp.commit_store(B, 0, t.identity) is None
    assert dp.drop_instance(B, 0) == (0, 0)  # B's unregister touches nothing of A's
    assert dp.commit_store(A, 0, t.identity) == (2, 2, None)
    assert dp.lookup(rk(2, "r", worker=None), client=V).l1_chunks == 2


def test_the_pending_write_cap_counts_per_client(clock: ManualClock) -> None:
    dp = make_dp(clock, ClientLimits(max_pending_write_bytes_per_client=4 * OBJ))
    got = [len(dp.prepare_store(A, 0, dp.transfer_keys(rk(3, f"w{i}", seed=i), A), OBJ)) for i in range(4)]
    assert got == [3, 1, 0, 0]  # the first is never cut; then up to the cap
    assert len(dp.prepare_store(B, 0, dp.transfer_keys(rk(3, "b", seed=9), B), OBJ)) == 3
    dp.drop_instance(A, 0)
    assert dp.pending_write_bytes(A) == 0 and dp.l1.object_count() == 3


def test_registration_must_fit_in_l1(clock: ManualClock) -> None:
    from lmcache_core.errors import RegistrationError

    dp = make_dp(clock, objects=4)
    with pytest.raises(RegistrationError, match="more than the whole L1 pool"):
        dp.register_layout("big", 1, 5 * OBJ)
    with pytest.raises(RegistrationError):
        dp.check_object_size(2**120)


def test_a_key_over_the_token_cap_is_refused_before_hashing(clock: ManualClock) -> None:
    from lmcache_core.errors import InvalidKeyError

    dp = make_dp(clock, ClientLimits(max_tokens_per_key=100))
    with pytest.raises(InvalidKeyError, match="max-tokens-per-key"):
        dp.lookup(rk(100, "big", worker=None), client=A)
    assert dp.sessions.active_count() == 0


def test_jobs_are_per_client_and_capped(clock: ManualClock) -> None:
    dp = make_dp(clock, ClientLimits(max_lookups_per_client=5))
    for i in range(20):
        dp.lookup(rk(1, f"r{i}", worker=None), client=A)
    dp.lookup(rk(1, "mine", worker=None), client=B)
    assert dp.active_job_count(A) == 5 and dp.active_job_count(B) == 1
    assert dp.query("mine", A) == (False, 0)  # another client's job is not A's to consume
    assert dp.query("mine", B) == (True, 0)


def test_registrations_are_per_client() -> None:
    regs: Registrations[str] = Registrations()
    regs.put(A, 0, "a0")
    regs.put(B, 0, "b0")
    assert regs.of_instance(0) == ["b0", "a0"]
    assert regs.pop(B, 0, "not b0") is None and regs.pop(B, 0) == "b0"
    assert regs.get(A, 0) == "a0" and len(regs) == 1


def test_jobs_of_all_clients_together_are_capped(clock: ManualClock) -> None:
    dp = make_dp(clock, ClientLimits(max_sessions=10))
    for i in range(25):
        dp.lookup(rk(1, "same-id", worker=None), client=ClientId(bytes([i])))
    assert dp.active_job_count() == 10
    assert dp.query("same-id", ClientId(bytes([24]))) == (True, 0)  # the newest stay
    assert dp.query("same-id", ClientId(bytes([0]))) == (False, 0)
