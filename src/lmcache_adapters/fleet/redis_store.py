"""RedisFleetStore: the fleet's state in Redis (or Valkey), shared by every coordinator.

Key layout (P = --key-prefix, default `lmc`; `{...}` is the Redis Cluster hash tag):

  {P:g}:members            ZSET  instance_id -> lease deadline (ms)
  {P:g}:info               HASH  instance_id -> "<epoch> <registration JSON>"
  {P:g}:epoch              STRING registration counter
  {P:g}:cursor             HASH  instance_id -> "incarnation:seq:gap" (the stream cursor)
  {P:g}:stats              HASH  ingest counters
  {P:g}:shards             HASH  shard tag -> msgpack [model_name, cache_salt, bucket]
  {P:g}:ishards:<inst>     SET   shard tags where <inst> reported L1 placements
  {P:g}:cap:<inst>         HASH  declared capacities ({P:g}:capids: the instances that have some)
  {P:g}:quota / :conf      HASH  quotas per salt / the default limit
  {P:g}:lease:<role>       STRING the holder of a role (the eviction loop), with a TTL
  {P:g}:mounts:<backend>   SET   instances reporting into a shared backend
  {P:g}:flags              HASH  resync state, layout version
  {P:s:<tag>}:dir          HASH  keyid -> cmsgpack record (placements, access count, last access)
  {P:s:<tag>}:lru          ZSET  keyid -> last access (ms), keys holding L2 bytes
  {P:s:<tag>}:u            HASH  usage counters of the shard
  {P:s:<tag>}:cur          HASH  instance_id -> "incarnation:seq" (the shard's own cursor)
  {P:s:<tag>}:l1:<inst>    SET   keyids with an L1 placement of <inst>
  {P:s:<tag>}:pin          HASH  keyid (object group 0) -> pin count
  {P:s:<tag>}:ev           ZSET  keyid -> when its delete was sent (ms)

A shard is (model_name, cache_salt, bucket); tag = xxh3_64(model, salt) + ":" + bucket, bucket =
the chunk hash's first byte mod --shard-buckets. keyid = chunk hash + kv_rank (4 bytes) + object
group (4 bytes). Every script touches one slot: a batch is split per shard, each part applied
atomically and idempotently by the shard's own cursor, and the stream cursor's advance (in the
global slot) decides the batch's verdict. See docs/fleet.md."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import msgpack
import redis
import xxhash
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from lmcache_adapters.fleet import redis_lua as lua
from lmcache_adapters.fleet.memory import filter_keys, filter_pins
from lmcache_core.errors import ConfigError, UnavailableError
from lmcache_core.fleet.gate import plan_batches
from lmcache_core.fleet.model import (
    CapacityDecl,
    Cursor,
    Entry,
    EventBatch,
    EvictionCandidate,
    InstanceRecord,
    KeyRecord,
    Op,
    OwnerSlot,
    Placement,
    Tier,
    UsageSnapshot,
    Verdict,
)
from lmcache_core.fleet.wire import instance_from_json, instance_to_json
from lmcache_core.keys import ObjectKey

log = logging.getLogger(__name__)

LAYOUT_VERSION = "1"
_OPS = {Op.STORE: b"s", Op.DELETE: b"d", Op.ACCESS: b"a"}
_TIERS = {Tier.L1: 1, Tier.L2: 2}
_TIER_OF = {1: Tier.L1, 2: Tier.L2}
_RANK_GROUP = struct.Struct(">II")
_FENCE_STEP = 500
_SEP = lua.SEP


def keyid(key: ObjectKey) -> bytes:
    """The key inside its shard (the shard already names model and salt)."""
    return key.chunk_hash + _RANK_GROUP.pack(key.kv_rank, key.object_group_id)


def pin_keyid(kid: bytes) -> bytes:
    return kid[:-4] + b"\0\0\0\0"


def decode_record(raw: bytes) -> KeyRecord:
    rec = msgpack.unpackb(raw, raw=False)
    tier_of = _TIER_OF
    placements = tuple([Placement(p[0], p[1], tier_of[p[2]], p[3], p[4], p[5] == 1) for p in rec[2:]])
    return KeyRecord(placements, rec[0], rec[1] / 1000.0)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class _Keys:
    """Key names of one store (one prefix)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        g = f"{{{prefix}:g}}"
        self.members, self.info, self.epoch = g + ":members", g + ":info", g + ":epoch"
        self.cursor, self.stats, self.shards = g + ":cursor", g + ":stats", g + ":shards"
        self.quota, self.conf, self.flags = g + ":quota", g + ":conf", g + ":flags"
        self.capids = g + ":capids"
        self._g = g

    def ishards(self, inst: str) -> str:
        return f"{self._g}:ishards:{inst}"

    def cap(self, inst: str) -> str:
        return f"{self._g}:cap:{inst}"

    def lease(self, role: str) -> str:
        return f"{self._g}:lease:{role}"

    def mounts(self, backend: str) -> str:
        return f"{self._g}:mounts:{backend}"

    def shard(self, tag: str, part: str) -> str:
        return f"{{{self.prefix}:s:{tag}}}:{part}"


_T = TypeVar("_T")


def _reloading(method: Callable[..., _T]) -> Callable[..., _T]:
    """Run `method` again once after loading the scripts when a node had lost them (a restarted
    Redis node): every scripted write is idempotent, so a repeat changes nothing twice."""

    @functools.wraps(method)
    def wrapper(self: RedisFleetStore, *args: Any, **kwargs: Any) -> _T:
        try:
            return method(self, *args, **kwargs)
        except redis.exceptions.NoScriptError:
            with self._guard():
                self._load_scripts()
            return method(self, *args, **kwargs)

    return wrapper


class RedisFleetStore:
    """FleetStore on Redis. `client` may be any redis-py client (a RedisCluster too); by
    default one is made from `url` with reconnecting retries."""

    kind = "redis"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "lmc",
        buckets: int = 1,
        client: Any = None,
        socket_timeout: float = 5.0,
    ) -> None:
        if not 1 <= buckets <= 256:
            raise ConfigError(f"--shard-buckets must be in 1..256, got {buckets}")
        if not prefix or any(c in prefix for c in "{}: \t\n"):
            raise ConfigError(f"--key-prefix must be non-empty without braces, colons or spaces, got {prefix!r}")
        self.url = url
        self.buckets = buckets
        self.k = _Keys(prefix)
        if client is None:
            client = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                health_check_interval=15,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), 3),
                retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            )
        self.r = client
        self._apply = client.register_script(lua.APPLY)
        self._fence = client.register_script(lua.FENCE)
        self._coldest = client.register_script(lua.COLDEST)
        self._pin = client.register_script(lua.PIN)
        self._advance = client.register_script(lua.ADVANCE)
        self._capacity = client.register_script(lua.CAPACITY)
        self._register = client.register_script(lua.REGISTER)
        self._heartbeat = client.register_script(lua.HEARTBEAT)
        self._claim = client.register_script(lua.CLAIM_EXPIRED)
        self._lead = client.register_script(lua.LEAD)
        self._resign = client.register_script(lua.RESIGN)
        self._scripts = [
            self._apply, self._fence, self._coldest, self._pin, self._advance, self._capacity,
            self._register, self._heartbeat, self._claim, self._lead, self._resign,
        ]
        self._tags: dict[tuple[str, str], str] = {}
        self._layout_checked = False

    # -- plumbing -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            if not self._layout_checked:
                self._check_layout()
            yield
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            raise UnavailableError(f"fleet store unavailable ({self.describe_address()}): {exc}") from exc

    def _load_scripts(self) -> None:
        # A cluster pipeline does not load scripts before EVALSHA (a standalone one does):
        # load them on every primary up front, and again after a node lost its script cache.
        for script in self._scripts:
            self.r.script_load(script.script)

    def _check_layout(self) -> None:
        self._load_scripts()
        want = f"v{LAYOUT_VERSION} buckets={self.buckets}"
        self.r.hsetnx(self.k.flags, "layout", want)
        have = self.r.hget(self.k.flags, "layout")
        have = have.decode() if isinstance(have, bytes) else have
        if have != want:
            raise ConfigError(f"the fleet store at {self.describe_address()} was laid out as {have!r}; this coordinator wants {want!r} (--shard-buckets must match)")
        self._layout_checked = True

    def describe_address(self) -> str:
        try:
            kwargs = self.r.connection_pool.connection_kwargs
            return f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}/{kwargs.get('db', 0)}"
        except AttributeError:  # a cluster client: name the node it was pointed at
            node = getattr(self.r, "get_default_node", lambda: None)()
            return f"cluster via {node.host}:{node.port}" if node is not None else "redis cluster"

    def tag(self, model_name: str, cache_salt: str, chunk_hash: bytes) -> str:
        base = self._tags.get((model_name, cache_salt))
        if base is None:
            base = xxhash.xxh3_64_hexdigest(model_name.encode() + b"\0" + cache_salt.encode())
            self._tags[(model_name, cache_salt)] = base
        return f"{base}:{chunk_hash[0] % self.buckets if self.buckets > 1 else 0}"

    def _shard_keys(self, tag: str, inst: str = "") -> list[str]:
        s = self.k.shard
        return [s(tag, "dir"), s(tag, "lru"), s(tag, "u"), s(tag, "cur"), s(tag, f"l1:{inst}"), s(tag, "ev")]

    def _shards(self) -> dict[str, tuple[str, str, int]]:
        out = {}
        for tag, raw in self.r.hgetall(self.k.shards).items():
            model, salt, bucket = msgpack.unpackb(raw, raw=False)
            out[tag.decode() if isinstance(tag, bytes) else tag] = (model, salt, int(bucket))
        return out

    @staticmethod
    def _s(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    # -- membership -------------------------------------------------------------------

    def register(self, info: Any, lease_until: float) -> tuple[bool, int]:
        with self._guard():
            existed, epoch = self._register(
                keys=[self.k.members, self.k.info, self.k.epoch],
                args=[info.instance_id, _ms(lease_until), json.dumps(instance_to_json(info))],
            )
            return bool(existed), int(epoch)

    def heartbeat(self, instance_id: str, lease_until: float) -> bool:
        with self._guard():
            return bool(self._heartbeat(keys=[self.k.members], args=[instance_id, _ms(lease_until)]))

    def deregister(self, instance_id: str) -> bool:
        with self._guard():
            pipe = self.r.pipeline(transaction=True)
            pipe.zrem(self.k.members, instance_id)
            pipe.hdel(self.k.info, instance_id)
            removed, _ = pipe.execute()
            return bool(removed)

    def instances(self) -> list[InstanceRecord]:
        with self._guard():
            pipe = self.r.pipeline(transaction=True)
            pipe.zrange(self.k.members, 0, -1, withscores=True)
            pipe.hgetall(self.k.info)
            members, infos = pipe.execute()
        out = []
        for raw_id, score in members:
            raw = infos.get(raw_id)
            if raw is None:
                continue
            out.append(self._record(raw, float(score)))
        return sorted(out, key=lambda r: r.info.instance_id)

    def _record(self, raw: bytes | str, lease_ms: float) -> InstanceRecord:
        text = self._s(raw)
        epoch, _, body = text.partition(" ")
        return InstanceRecord(instance_from_json(json.loads(body)), lease_ms / 1000.0, int(epoch))

    def instance(self, instance_id: str) -> InstanceRecord | None:
        with self._guard():
            pipe = self.r.pipeline(transaction=True)
            pipe.zscore(self.k.members, instance_id)
            pipe.hget(self.k.info, instance_id)
            score, raw = pipe.execute()
        if score is None or raw is None:
            return None
        return self._record(raw, float(score))

    def claim_expired(self, now: float) -> list[str]:
        with self._guard():
            ids = self._claim(keys=[self.k.members, self.k.info], args=[_ms(now)])
        return [self._s(i) for i in ids]

    # -- events -------------------------------------------------------------------------

    def cursors(self, instance_ids: Sequence[str]) -> dict[str, Cursor]:
        if not instance_ids:
            return {}
        with self._guard():
            values = self.r.hmget(self.k.cursor, list(instance_ids))
        out = {}
        for inst, raw in zip(instance_ids, values, strict=True):
            if raw is not None:
                inc, seq, gap = self._s(raw).split(":")
                out[inst] = Cursor(int(inc), int(seq), gap == "1")
        return out

    @_reloading
    def apply(self, batches: Sequence[EventBatch], now: float) -> list[Verdict]:
        verdicts: list[Verdict] = []
        if not batches:
            return verdicts
        # Decide from the cursors first, so a replay or a stale batch never reaches a shard
        # that has no cursor of its own for the instance; the advance script still has the
        # last word when another coordinator moves the cursor in between.
        plans = plan_batches(batches, self.cursors(sorted({b.instance_id for b in batches})))
        with self._guard():
            pipe = self.r.pipeline(transaction=False)
            slots: list[int] = []  # result index of each plan's verdict
            queued = 0
            for plan in plans:
                if plan.fence_below is not None and plan.verdict is None:
                    # Fences run in order with the batches around them.
                    verdicts += self._flush(pipe, slots)
                    slots, queued = [], 0
                    self._fence_all(plan.batch.instance_id, plan.fence_below)
                if plan.verdict is None:
                    queued += self._queue_batch(pipe, plan.batch, now)
                self._advance(
                    keys=[self.k.cursor, self.k.stats],
                    args=[
                        plan.batch.instance_id,
                        plan.batch.incarnation,
                        plan.batch.seq,
                        len(plan.batch.entries),
                        "1" if plan.batch.legacy else "0",
                        plan.verdict.value if plan.verdict is not None else "",
                    ],
                    client=pipe,
                )
                slots.append(queued)
                queued += 1
            verdicts += self._flush(pipe, slots)
        return verdicts

    @staticmethod
    def _flush(pipe: Any, slots: list[int]) -> list[Verdict]:
        if not slots:
            return []
        results = pipe.execute()
        return [Verdict(RedisFleetStore._s(results[i])) for i in slots]

    def _queue_batch(self, pipe: Any, batch: EventBatch, now: float, *, check: bool = True) -> int:
        """Queue one batch's shard parts; returns how many commands were queued."""
        if batch.capacity is not None:
            d = batch.capacity
            self._capacity(
                keys=[self.k.cap(batch.instance_id), self.k.capids],
                args=[batch.instance_id, batch.incarnation, d.revision, d.tier.value, d.backend, int(d.shared), d.capacity_bytes],
                client=pipe,
            )
            return 1
        parts: dict[str, tuple[str, str, int, list[bytes | int]]] = {}
        for entry in batch.entries:
            key = entry.key
            tag = self.tag(key.model_name, key.cache_salt, key.chunk_hash)
            part = parts.get(tag)
            if part is None:
                bucket = int(tag.rsplit(":", 1)[1])
                part = parts[tag] = (key.model_name, key.cache_salt, bucket, [])
            part[3].extend((_OPS[entry.op], keyid(key), entry.size_bytes))
        queued = 0
        head = [
            batch.instance_id,
            batch.incarnation,
            batch.seq,
            _TIERS[batch.tier],
            batch.backend,
            int(batch.shared),
            _ms(now),
            "1" if check else "0",
        ]
        for tag, (model, salt, bucket, args) in parts.items():
            pipe.hsetnx(self.k.shards, tag, msgpack.packb([model, salt, bucket]))
            queued += 1
            if batch.tier == Tier.L1:
                pipe.sadd(self.k.ishards(batch.instance_id), tag)
                queued += 1
            self._apply(keys=self._shard_keys(tag, batch.instance_id), args=head + args, client=pipe)
            queued += 1
        return queued

    def _fence_all(self, instance_id: str, below: int | None) -> int:
        removed = 0
        tags = [self._s(t) for t in self.r.smembers(self.k.ishards(instance_id))]
        for tag in tags:
            cursor: bytes | str = "0"
            while True:
                nxt, n = self._fence(
                    keys=self._shard_keys(tag, instance_id),
                    args=[instance_id, "" if below is None else below, cursor, _FENCE_STEP],
                )
                removed += int(n)
                cursor = nxt
                if self._s(nxt) == "0":
                    break
        if below is None:
            self.r.delete(self.k.ishards(instance_id))
        return removed

    @_reloading
    def fence(self, instance_id: str, below: int | None = None) -> int:
        with self._guard():
            removed = self._fence_all(instance_id, below)
            if below is None:
                pipe = self.r.pipeline(transaction=True)
                pipe.hdel(self.k.cursor, instance_id)
                pipe.delete(self.k.cap(instance_id))
                pipe.srem(self.k.capids, instance_id)
                pipe.execute()
            return removed

    @_reloading
    def resync(
        self, instance_id: str, backend: str, shared: bool, entries: Sequence[tuple[ObjectKey, int]], now: float
    ) -> int:
        batch = EventBatch(instance_id, 0, 1, Tier.L2, backend, shared, tuple(Entry(Op.STORE, k, s) for k, s in entries))
        with self._guard():
            pipe = self.r.pipeline(transaction=False)
            self._queue_batch(pipe, batch, now, check=False)
            pipe.execute()
        return len(entries)

    def capacities(self) -> dict[str, tuple[CapacityDecl, ...]]:
        with self._guard():
            order = sorted(self._s(i) for i in self.r.smembers(self.k.capids))
            pipe = self.r.pipeline(transaction=False)
            for inst in order:
                pipe.hgetall(self.k.cap(inst))
            tables = pipe.execute()
        out: dict[str, tuple[CapacityDecl, ...]] = {}
        for inst, table in zip(order, tables, strict=True):
            stamp = table.get(b"_stamp")
            if not stamp:
                continue
            rev = int(self._s(stamp).split(":")[1])
            decls = []
            for field, value in table.items():
                name = self._s(field)
                if name == "_stamp":
                    continue
                tier, backend = name.split(_SEP, 1)
                shared, capacity = self._s(value).split(":")
                decls.append(CapacityDecl(Tier(tier), backend, shared == "1", int(capacity), rev))
            out[inst] = tuple(sorted(decls, key=lambda d: (d.tier.value, d.backend)))
        return out

    def counters(self) -> dict[str, int]:
        with self._guard():
            return {self._s(k): int(v) for k, v in self.r.hgetall(self.k.stats).items()}

    # -- directory ------------------------------------------------------------------------

    def lookup(self, keys: Sequence[ObjectKey]) -> list[KeyRecord | None]:
        by_tag: dict[str, list[int]] = {}
        kids = [keyid(k) for k in keys]
        for i, key in enumerate(keys):
            by_tag.setdefault(self.tag(key.model_name, key.cache_salt, key.chunk_hash), []).append(i)
        out: list[KeyRecord | None] = [None] * len(keys)
        if not by_tag:
            return out
        with self._guard():
            pipe = self.r.pipeline(transaction=False)
            order = list(by_tag.items())
            for tag, idx in order:
                pipe.hmget(self.k.shard(tag, "dir"), [kids[i] for i in idx])
            results = pipe.execute()
        for (_, idx), values in zip(order, results, strict=True):
            for i, raw in zip(idx, values, strict=True):
                if raw is not None:
                    out[i] = decode_record(raw)
        return out

    def _key_of(self, shard: tuple[str, str, int], kid: bytes) -> ObjectKey:
        model, salt, _ = shard
        rank, group = _RANK_GROUP.unpack(kid[-8:])
        return ObjectKey(kid[:-8], model, rank, group, salt)

    def _scan_dir(self) -> Iterator[tuple[ObjectKey, KeyRecord]]:
        for tag, shard in sorted(self._shards().items()):
            for kid, raw in self.r.hscan_iter(self.k.shard(tag, "dir"), count=1000):
                yield self._key_of(shard, kid), decode_record(raw)

    def list_keys(
        self, tier: Tier | None, instance_id: str, backend: str, offset: int, limit: int
    ) -> tuple[int, list[tuple[ObjectKey, KeyRecord]]]:
        with self._guard():
            return filter_keys(list(self._scan_dir()), tier, instance_id, backend, offset, limit)

    def usage(self) -> UsageSnapshot:
        snapshot = UsageSnapshot()
        with self._guard():
            shards = self._shards()
            pipe = self.r.pipeline(transaction=False)
            order = sorted(shards)
            for tag in order:
                pipe.hgetall(self.k.shard(tag, "u"))
            tables = pipe.execute()
        for tag, table in zip(order, tables, strict=True):
            salt = shards[tag][1]
            for raw_field, raw_value in table.items():
                name, value = self._s(raw_field), int(raw_value)
                if name == "n":
                    snapshot.num_keys += value
                elif name in ("c1", "c2"):
                    snapshot.placements[_TIER_OF[int(name[1])]] += value
                elif name in ("b1", "b2"):
                    tier = _TIER_OF[int(name[1])]
                    snapshot.placement_bytes[tier] += value
                    snapshot.add_salt(tier, salt, value)
                elif name.startswith("o" + _SEP):
                    _, owner, tier_no, backend = name.split(_SEP, 3)
                    slot = OwnerSlot(owner, _TIER_OF[int(tier_no)], backend)
                    if value > 0:
                        snapshot.owner_bytes[slot] = snapshot.owner_bytes.get(slot, 0) + value
                elif name.startswith("k" + _SEP):
                    inst = name.split(_SEP, 1)[1]
                    snapshot.l1_keys_by_instance[inst] = snapshot.l1_keys_by_instance.get(inst, 0) + value
        return snapshot

    # -- quotas and pins ------------------------------------------------------------------

    def set_quota(self, cache_salt: str, limit_bytes: int) -> None:
        with self._guard():
            self.r.hset(self.k.quota, cache_salt, limit_bytes)

    def delete_quota(self, cache_salt: str) -> bool:
        with self._guard():
            return bool(self.r.hdel(self.k.quota, cache_salt))

    def quotas(self) -> dict[str, int]:
        with self._guard():
            return {self._s(k): int(v) for k, v in self.r.hgetall(self.k.quota).items()}

    def set_default_limit(self, limit_bytes: int | None) -> None:
        with self._guard():
            if limit_bytes is None:
                self.r.hdel(self.k.conf, "default_limit")
            else:
                self.r.hset(self.k.conf, "default_limit", limit_bytes)

    def default_limit(self) -> int | None:
        with self._guard():
            raw = self.r.hget(self.k.conf, "default_limit")
        return None if raw is None else int(raw)

    def _by_tag(self, keys: Sequence[ObjectKey]) -> dict[str, list[bytes]]:
        out: dict[str, list[bytes]] = {}
        for key in keys:
            out.setdefault(self.tag(key.model_name, key.cache_salt, key.chunk_hash), []).append(pin_keyid(keyid(key)))
        return out

    def _register_shards(self, pipe: Any, keys: Sequence[ObjectKey]) -> None:
        for key in keys:
            tag = self.tag(key.model_name, key.cache_salt, key.chunk_hash)
            pipe.hsetnx(self.k.shards, tag, msgpack.packb([key.model_name, key.cache_salt, int(tag.rsplit(":", 1)[1])]))

    @_reloading
    def pin(self, keys: Sequence[ObjectKey], delta: int) -> None:
        if not keys:
            return
        with self._guard():
            pipe = self.r.pipeline(transaction=False)
            self._register_shards(pipe, keys)
            for tag, kids in self._by_tag(keys).items():
                self._pin(keys=[self.k.shard(tag, "pin")], args=[delta, *kids], client=pipe)
            pipe.execute()

    def drop_pins(self, keys: Sequence[ObjectKey]) -> None:
        if not keys:
            return
        with self._guard():
            pipe = self.r.pipeline(transaction=False)
            for tag, kids in self._by_tag(keys).items():
                pipe.hdel(self.k.shard(tag, "pin"), *kids)
            pipe.execute()

    def pinned(self, keys: Sequence[ObjectKey]) -> list[int]:
        if not keys:
            return []
        with self._guard():
            pipe = self.r.pipeline(transaction=False)
            for key in keys:
                tag = self.tag(key.model_name, key.cache_salt, key.chunk_hash)
                pipe.hget(self.k.shard(tag, "pin"), pin_keyid(keyid(key)))
            return [int(v or 0) for v in pipe.execute()]

    def list_pins(
        self, cache_salt: str | None, model_name: str | None, offset: int, limit: int
    ) -> tuple[int, list[tuple[ObjectKey, int]]]:
        with self._guard():
            shards = self._shards()
            pins: list[tuple[ObjectKey, int]] = []
            for tag, shard in sorted(shards.items()):
                if (cache_salt is not None and shard[1] != cache_salt) or (model_name is not None and shard[0] != model_name):
                    continue
                table = self.r.hgetall(self.k.shard(tag, "pin"))
                pins += sorted((self._key_of(shard, kid), int(n)) for kid, n in table.items())
        return filter_pins(pins, cache_salt, model_name, offset, limit)

    # -- eviction -------------------------------------------------------------------------

    @_reloading
    def coldest(self, cache_salt: str, limit: int, now: float, retry_after: float) -> tuple[list[EvictionCandidate], int]:
        with self._guard():
            shards = {t: s for t, s in self._shards().items() if s[1] == cache_salt}
            pipe = self.r.pipeline(transaction=False)
            order = sorted(shards)
            for tag in order:
                s = self.k.shard
                self._coldest(
                    keys=[s(tag, "dir"), s(tag, "lru"), s(tag, "pin"), s(tag, "ev")],
                    args=[limit, _ms(now), _ms(retry_after), max(10 * limit, 1024)],
                    client=pipe,
                )
            results = pipe.execute()
        found: list[EvictionCandidate] = []
        in_flight = 0
        for tag, flat in zip(order, results, strict=True):
            in_flight += int(flat[0])
            for j in range(1, len(flat), 3):
                key = self._key_of(shards[tag], flat[j])
                found.append(EvictionCandidate(key, float(flat[j + 1]) / 1000.0, decode_record(flat[j + 2])))
        found.sort(key=lambda c: c.last_access)
        return found[:limit], in_flight

    def mark_evicting(self, keys: Sequence[ObjectKey], now: float) -> None:
        if not keys:
            return
        with self._guard():
            pipe = self.r.pipeline(transaction=False)
            by_tag: dict[str, dict[bytes, int]] = {}
            for key in keys:
                by_tag.setdefault(self.tag(key.model_name, key.cache_salt, key.chunk_hash), {})[keyid(key)] = _ms(now)
            for tag, mapping in by_tag.items():
                pipe.zadd(self.k.shard(tag, "ev"), mapping)
            pipe.execute()

    def try_lead(self, role: str, holder: str, ttl: float) -> bool:
        with self._guard():
            return bool(self._lead(keys=[self.k.lease(role)], args=[holder, max(1, _ms(ttl))]))

    def resign(self, role: str, holder: str) -> None:
        with self._guard():
            self._resign(keys=[self.k.lease(role)], args=[holder])

    def note_shared_mount(self, backend: str, instance_id: str) -> None:
        with self._guard():
            self.r.sadd(self.k.mounts(backend), instance_id)

    def shared_mounts(self, backend: str) -> set[str]:
        with self._guard():
            return {self._s(m) for m in self.r.smembers(self.k.mounts(backend))}

    def get_flag(self, name: str) -> str | None:
        with self._guard():
            raw = self.r.hget(self.k.flags, name)
        return None if raw is None else self._s(raw)

    def set_flag(self, name: str, value: str | None) -> None:
        with self._guard():
            if value is None:
                self.r.hdel(self.k.flags, name)
            else:
                self.r.hset(self.k.flags, name, value)

    # -- operations -------------------------------------------------------------------------

    def ping(self) -> bool:
        try:
            return bool(self.r.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "address": self.describe_address(), "prefix": self.k.prefix, "shard_buckets": self.buckets}
        try:
            info = self.r.info("memory")
            # A cluster client answers per node.
            per_node = [v for v in info.values() if isinstance(v, dict)] or [info]
            out["used_memory_bytes"] = sum(int(n.get("used_memory", 0)) for n in per_node)
            out["shards"] = int(self.r.hlen(self.k.shards))
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            out["error"] = str(exc)
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.r.close()
