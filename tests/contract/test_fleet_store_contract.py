"""The FleetStore contract over both stores: in-memory, and Redis (a real redis-server) with one
and with several shard buckets; every Redis script is checked to touch one cluster slot only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from lmcache_adapters.fleet.memory import MemoryFleetStore
from lmcache_adapters.fleet.redis_store import RedisFleetStore
from lmcache_adapters.testing.fleet_contract import FleetStoreContract
from redis_server import RedisProcess, redis_cluster, redis_server


class TestMemoryFleetStore(FleetStoreContract):
    @pytest.fixture
    def store(self) -> Iterator[MemoryFleetStore]:
        s = MemoryFleetStore()
        yield s
        s.close()

    @pytest.fixture
    def peer(self, store: MemoryFleetStore) -> MemoryFleetStore:
        return store


@pytest.fixture(scope="module")
def redis_proc() -> Iterator[RedisProcess]:
    with redis_server() as server:
        yield server


class _SlotCheckingRedis(redis.Redis):
    """A client that fails any script call whose keys span two cluster slots."""

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:  # type: ignore[override]
        _check_slots(keys_and_args[:numkeys])
        return super().evalsha(sha, numkeys, *keys_and_args)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        original = pipe.evalsha

        def evalsha(sha: str, numkeys: int, *keys_and_args: Any) -> Any:
            _check_slots(keys_and_args[:numkeys])
            return original(sha, numkeys, *keys_and_args)

        pipe.evalsha = evalsha
        return pipe


def _check_slots(keys: Any) -> None:
    slots = {key_slot(k.encode() if isinstance(k, str) else k) for k in keys}
    assert len(slots) <= 1, f"a script touches keys in several cluster slots: {keys}"


class TestRedisFleetStore(FleetStoreContract):
    buckets = 1

    @pytest.fixture
    def store(self, redis_proc: RedisProcess) -> Iterator[RedisFleetStore]:
        client = _SlotCheckingRedis.from_url(redis_proc.url)
        client.flushall()
        s = RedisFleetStore(redis_proc.url, client=client, buckets=self.buckets)
        yield s
        s.close()

    @pytest.fixture
    def peer(self, redis_proc: RedisProcess) -> Iterator[RedisFleetStore]:
        s = RedisFleetStore(redis_proc.url, buckets=self.buckets)
        yield s
        s.close()


class TestRedisFleetStoreWithBuckets(TestRedisFleetStore):
    buckets = 8


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_cluster(Path(tmp_path_factory.mktemp("cluster"))) as c:
        yield c.url


@pytest.mark.slow
class TestRedisClusterFleetStore(FleetStoreContract):
    """The same contract on a three-node Redis Cluster (a cross-slot script would fail there)."""

    @pytest.fixture
    def store(self, cluster: str) -> Iterator[RedisFleetStore]:
        client = redis.RedisCluster.from_url(cluster)
        client.flushall()
        s = RedisFleetStore(client=client, buckets=4)
        yield s
        s.close()

    @pytest.fixture
    def peer(self, cluster: str) -> Iterator[RedisFleetStore]:
        s = RedisFleetStore(client=redis.RedisCluster.from_url(cluster), buckets=4)
        yield s
        s.close()
