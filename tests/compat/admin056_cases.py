"""Requests to LMCache 0.5.6's admin routes, good and bad, whose answers (status code and body)
were recorded from the 0.5.6 reference server (`record_admin056.py`) into
`admin056_vectors.json`; `test_admin056_vectors.py` asks our server the same and compares.

States a case needs the server in:
- `bare`: an `fs` L2 adapter, no engine registered;
- `registered`: the same, while an engine has a server-driven KV cache registered as
  instance 1000 of model `test-model`, world size 1 (the reference's `lmcache bench server
  --transfer-mode lmcache_driven` registers exactly that);
- `no_l2`: no L2 adapter.

`deviation` marks a case where we answer differently on purpose; it names our status and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KEY = {"chunk_hash_hex": "ab12", "model_name": "m", "kv_rank": 16777472}
BENCH_TOKENS = [3] + [9906] * 512  # the reference bench's sequence 3: two full chunks


@dataclass(frozen=True)
class Case:
    """One request and the state it needs."""

    name: str
    method: str
    path: str
    json: Any = None
    raw: str | None = None
    content_type: str | None = None
    state: str = "bare"
    deviation: dict[str, Any] = field(default_factory=dict)

    def request_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a Flask test client / the recorder."""
        if self.raw is not None:
            return {"data": self.raw, "content_type": self.content_type or "application/json"}
        if self.json is not None:
            return {"json": self.json}
        return {}


def _key(**changes: Any) -> dict[str, Any]:
    return {**KEY, **changes}


CASES: tuple[Case, ...] = (
    # -- basic info (both generations) --------------------------------------------------------
    Case("root", "GET", "/"),
    Case("healthcheck", "GET", "/healthcheck"),
    Case("config-adapters", "GET", "/config/adapters"),
    Case("config-adapters-no-l2", "GET", "/config/adapters", state="no_l2"),
    # -- GET /cache/objects ----------------------------------------------------------------------
    Case(
        "objects-list-fs",
        "GET",
        "/cache/objects",
        deviation={"status": 200, "why": "every built-in adapter lists its keys; 0.5.6's fs adapter cannot (503)"},
    ),
    Case("objects-list-tier-l1", "GET", "/cache/objects?tier=l1"),
    Case("objects-list-tier-all", "GET", "/cache/objects?tier=all"),
    Case("objects-list-tier-bogus", "GET", "/cache/objects?tier=bogus"),
    Case("objects-list-adapter-unknown", "GET", "/cache/objects?adapter=nope"),
    Case("objects-list-page-size-0", "GET", "/cache/objects?page_size=0"),
    Case("objects-list-page-size-big", "GET", "/cache/objects?page_size=5001"),
    Case("objects-list-page-size-abc", "GET", "/cache/objects?page_size=abc"),
    Case("objects-list-no-l2", "GET", "/cache/objects", state="no_l2"),
    # -- DELETE /cache/objects -------------------------------------------------------------------
    Case("objects-delete-l2", "DELETE", "/cache/objects", json={"keys": [KEY]}),
    Case("objects-delete-l1", "DELETE", "/cache/objects", json={"keys": [KEY], "tier": "l1"}),
    Case("objects-delete-all", "DELETE", "/cache/objects", json={"keys": [KEY], "tier": "all"}),
    Case("objects-delete-all-force", "DELETE", "/cache/objects", json={"keys": [KEY], "tier": "all", "force": True}),
    Case("objects-delete-empty-keys", "DELETE", "/cache/objects", json={"keys": []}),
    Case("objects-delete-uppercase-hex", "DELETE", "/cache/objects", json={"keys": [_key(chunk_hash_hex="ABCD")]}),
    Case("objects-delete-extra-field", "DELETE", "/cache/objects", json={"keys": [KEY], "extra": 1}),
    Case("objects-delete-key-extra-field", "DELETE", "/cache/objects", json={"keys": [_key(foo=2)]}),
    Case("objects-delete-kv-rank-string", "DELETE", "/cache/objects", json={"keys": [_key(kv_rank="16777472")]}),
    Case("objects-delete-force-string", "DELETE", "/cache/objects", json={"keys": [KEY], "force": "yes"}),
    Case("objects-delete-adapter-null", "DELETE", "/cache/objects", json={"keys": [], "adapter": None}),
    Case("objects-delete-tier-bogus", "DELETE", "/cache/objects", json={"keys": [KEY], "tier": "x"}),
    Case("objects-delete-adapter-unknown", "DELETE", "/cache/objects", json={"keys": [KEY], "adapter": "nope"}),
    Case(
        "objects-delete-adapter-unknown-l1",
        "DELETE",
        "/cache/objects",
        json={"keys": [KEY], "adapter": "nope", "tier": "l1"},
    ),
    Case("objects-delete-adapter-int", "DELETE", "/cache/objects", json={"keys": [], "adapter": 5}),
    Case("objects-delete-no-keys", "DELETE", "/cache/objects", json={}),
    Case("objects-delete-keys-null", "DELETE", "/cache/objects", json={"keys": None}),
    Case("objects-delete-keys-string", "DELETE", "/cache/objects", json={"keys": "x"}),
    Case("objects-delete-key-int", "DELETE", "/cache/objects", json={"keys": [1]}),
    Case("objects-delete-no-body", "DELETE", "/cache/objects"),
    Case("objects-delete-not-json", "DELETE", "/cache/objects", raw="not json"),
    Case("objects-delete-list-body", "DELETE", "/cache/objects", json=[]),
    Case("objects-delete-text-content-type", "DELETE", "/cache/objects", raw='{"keys": []}', content_type="text/plain"),
    Case("objects-delete-bad-hex", "DELETE", "/cache/objects", json={"keys": [_key(chunk_hash_hex="zz")]}),
    Case("objects-delete-model-at", "DELETE", "/cache/objects", json={"keys": [_key(model_name="m@x")]}),
    Case("objects-delete-salt-slash", "DELETE", "/cache/objects", json={"keys": [_key(cache_salt="a/b")]}),
    Case("objects-delete-group-negative", "DELETE", "/cache/objects", json={"keys": [_key(object_group_id=-1)]}),
    Case("objects-delete-kv-rank-float", "DELETE", "/cache/objects", json={"keys": [_key(kv_rank=1.5)]}),
    Case("objects-delete-hash-int", "DELETE", "/cache/objects", json={"keys": [_key(chunk_hash_hex=5)]}),
    Case("objects-delete-missing-kv-rank", "DELETE", "/cache/objects", json={"keys": [{"chunk_hash_hex": "ab", "model_name": "m"}]}),
    Case("objects-delete-too-many", "DELETE", "/cache/objects", json={"keys": [KEY] * 10001}),
    Case(
        "objects-delete-empty-model",
        "DELETE",
        "/cache/objects",
        json={"keys": [_key(model_name="")]},
        deviation={"status": 400, "why": "an empty model_name breaks an ObjectKey rule here (0.5.6 deletes nothing and says 200)"},
    ),
    Case(
        "objects-delete-empty-hash",
        "DELETE",
        "/cache/objects",
        json={"keys": [_key(chunk_hash_hex="")]},
        deviation={"status": 400, "why": "an empty chunk hash breaks an ObjectKey rule here"},
    ),
    Case(
        "objects-delete-negative-rank",
        "DELETE",
        "/cache/objects",
        json={"keys": [_key(kv_rank=-1)]},
        deviation={"status": 400, "why": "a kv_rank that does not unpack breaks an ObjectKey rule here"},
    ),
    Case("objects-delete-no-l2", "DELETE", "/cache/objects", json={"keys": [KEY]}, state="no_l2"),
    Case("objects-delete-no-l2-tier-l1", "DELETE", "/cache/objects", json={"keys": [KEY], "tier": "l1"}, state="no_l2"),
    # -- POST /cache/clear -----------------------------------------------------------------------
    Case("clear-no-body", "POST", "/cache/clear"),
    Case("clear-empty-object", "POST", "/cache/clear", json={}),
    Case("clear-null", "POST", "/cache/clear", raw="null"),
    Case("clear-force", "POST", "/cache/clear", json={"force": True}),
    Case("clear-force-string-1", "POST", "/cache/clear", json={"force": "1"}),
    Case("clear-force-2", "POST", "/cache/clear", json={"force": 2}),
    Case("clear-force-null", "POST", "/cache/clear", json={"force": None}),
    Case("clear-force-maybe", "POST", "/cache/clear", json={"force": "maybe"}),
    Case("clear-tier-l2", "POST", "/cache/clear", json={"tier": "l2"}),
    Case("clear-tier-all", "POST", "/cache/clear", json={"tier": "all"}),
    Case("clear-tier-upper", "POST", "/cache/clear", json={"tier": "L1"}),
    Case("clear-tier-bogus", "POST", "/cache/clear", json={"tier": "bogus"}),
    Case("clear-garbage", "POST", "/cache/clear", raw="garbage"),
    Case("clear-list", "POST", "/cache/clear", json=[]),
    Case("clear-text-content-type", "POST", "/cache/clear", raw='{"force": true}', content_type="text/plain"),
    # -- POST /cache/checksums -------------------------------------------------------------------
    Case("checksums-no-body", "POST", "/cache/checksums"),
    Case("checksums-empty-object", "POST", "/cache/checksums", json={}),
    Case("checksums-unregistered", "POST", "/cache/checksums", json={"block_ids": [1, 2], "chunk_size": 2, "instance_id": 5}),
    Case("checksums-bad-types", "POST", "/cache/checksums", json={"block_ids": [1, "a"], "chunk_size": "x", "layerwise": "z", "instance_id": None}),
    Case("checksums-block-ids-string", "POST", "/cache/checksums", json={"block_ids": "x"}),
    Case("checksums-ok", "POST", "/cache/checksums", json={"block_ids": [0, 1, 2, 3, 5], "chunk_size": 2, "instance_id": 1000}, state="registered"),
    Case("checksums-layerwise", "POST", "/cache/checksums", json={"block_ids": [1, 2], "chunk_size": 1, "instance_id": 1000, "layerwise": True}, state="registered"),
    Case("checksums-no-block-ids", "POST", "/cache/checksums", json={"block_ids": [], "chunk_size": 2, "instance_id": 1000}, state="registered"),
    Case("checksums-chunk-size-0", "POST", "/cache/checksums", json={"block_ids": [1], "chunk_size": 0, "instance_id": 1000}, state="registered"),
    Case(
        "checksums-block-out-of-range",
        "POST",
        "/cache/checksums",
        json={"block_ids": [0, 1, 9999], "chunk_size": 2, "instance_id": 1000},
        state="registered",
        deviation={"status": 400, "why": "a block id past the cache is a bad request here (0.5.6 fails with a 500)"},
    ),
    Case(
        "checksums-negative-block",
        "POST",
        "/cache/checksums",
        json={"block_ids": [-1], "chunk_size": 1, "instance_id": 1000},
        state="registered",
        deviation={"status": 400, "why": "a negative block id is a bad request here (0.5.6 fails with a 500)"},
    ),
    # -- POST /cache/prefetches ------------------------------------------------------------------
    Case("prefetch-unregistered", "POST", "/cache/prefetches", json={"model_name": "m", "world_size": 1, "token_ids": [1, 2, 3]}),
    Case("prefetch-unregistered-bad-salt", "POST", "/cache/prefetches", json={"model_name": "m", "world_size": 1, "token_ids": [1], "cache_salt": "a/b"}),
    Case("prefetch-world-size-0", "POST", "/cache/prefetches", json={"model_name": "m", "world_size": 0, "token_ids": [1]}),
    Case("prefetch-world-size-true", "POST", "/cache/prefetches", json={"model_name": "m", "world_size": True, "token_ids": [1]}),
    Case("prefetch-world-size-float", "POST", "/cache/prefetches", json={"model_name": "m", "world_size": 1.0, "token_ids": [1]}),
    Case("prefetch-world-size-string", "POST", "/cache/prefetches", json={"model_name": "m", "world_size": "x", "token_ids": [1]}),
    Case("prefetch-missing-tokens", "POST", "/cache/prefetches", json={"model_name": "m", "world_size": 1}),
    Case("prefetch-empty-object", "POST", "/cache/prefetches", json={}),
    Case("prefetch-no-body", "POST", "/cache/prefetches"),
    Case("prefetch-tokens-null", "POST", "/cache/prefetches", json={"model_name": "m", "world_size": "2", "token_ids": None}),
    Case("prefetch-token-string", "POST", "/cache/prefetches", json={"model_name": "m", "world_size": 1, "token_ids": ["a"]}),
    Case("prefetch-model-int", "POST", "/cache/prefetches", json={"model_name": 5, "world_size": 1, "token_ids": [True]}),
    Case("prefetch-salt-null", "POST", "/cache/prefetches", json={"model_name": "m", "world_size": 1, "token_ids": [1], "cache_salt": None}),
    Case("prefetch-source-l1", "POST", "/cache/prefetches", json={"model_name": "m", "world_size": 1, "token_ids": [1], "source_tier": "l1"}),
    Case("prefetch-target-l2", "POST", "/cache/prefetches", json={"model_name": "m", "world_size": 1, "token_ids": [1], "target_tier": "l2"}),
    Case("prefetch-submit", "POST", "/cache/prefetches", json={"model_name": "test-model", "world_size": 1, "token_ids": BENCH_TOKENS}, state="registered"),
    Case("prefetch-noop", "POST", "/cache/prefetches", json={"model_name": "test-model", "world_size": 1, "token_ids": [1, 2, 3]}, state="registered"),
    Case("prefetch-bad-salt", "POST", "/cache/prefetches", json={"model_name": "test-model", "world_size": 1, "token_ids": [1, 2, 3], "cache_salt": "a/b"}, state="registered"),
    Case("prefetch-salt-at", "POST", "/cache/prefetches", json={"model_name": "test-model", "world_size": 1, "token_ids": BENCH_TOKENS, "cache_salt": "a@b"}, state="registered"),
    Case("prefetch-other-world-size", "POST", "/cache/prefetches", json={"model_name": "test-model", "world_size": 2, "token_ids": [1]}, state="registered"),
    Case(
        "prefetch-negative-token",
        "POST",
        "/cache/prefetches",
        json={"model_name": "test-model", "world_size": 1, "token_ids": [-5] + [9906] * 300},
        state="registered",
        deviation={"status": 400, "why": "a token id outside [0, 2^32) is a bad request here (0.5.6 fails with a 500)"},
    ),
    Case("prefetch-poll-unknown", "GET", "/cache/prefetches/abc"),
    # -- /reconfigure/<backend>/l2 ---------------------------------------------------------------
    Case("reconfigure-l2-status-fs", "GET", "/reconfigure/fs/l2/status"),
    Case("reconfigure-l2-status-dax", "GET", "/reconfigure/dax/l2/status"),
    Case("reconfigure-l2-status-upper", "GET", "/reconfigure/FS/l2/status"),
    Case("reconfigure-l2-status-blank", "GET", "/reconfigure/%20/l2/status"),
    Case("reconfigure-l2-dax-add-no-adapter", "POST", "/reconfigure/dax/l2/add", json={"device_path": "/dev/dax0.0", "size": "1GiB"}),
    Case("reconfigure-l2-dax-add-bad-size", "POST", "/reconfigure/dax/l2/add", json={"device_path": "/dev/dax0.0", "size": "bad"}),
    Case("reconfigure-l2-dax-add-missing-size", "POST", "/reconfigure/dax/l2/add", json={"device_path": "/dev/dax0.0"}),
    Case("reconfigure-l2-dax-add-extra", "POST", "/reconfigure/dax/l2/add", json={"device_path": "/x", "size": "1GiB", "bogus": 1, "mode": "drain"}),
    Case("reconfigure-l2-dax-add-index", "POST", "/reconfigure/dax/l2/add", json={"device_path": "/dev/dax0.0", "size": 1, "adapter_index": 3}),
    Case("reconfigure-l2-dax-remove-no-adapter", "POST", "/reconfigure/dax/l2/remove", json={"device_path": "/x"}),
    Case("reconfigure-l2-dax-remove-bad-mode", "POST", "/reconfigure/dax/l2/remove", json={"device_path": "/x", "mode": "bad", "force": "q"}),
    Case("reconfigure-l2-dax-unknown-op", "POST", "/reconfigure/dax/l2/frob", json={}),
    Case("reconfigure-l2-dax-status-op", "POST", "/reconfigure/dax/l2/status", json={}),
    Case("reconfigure-l2-dax-list-body", "POST", "/reconfigure/dax/l2/add", json=[]),
    Case("reconfigure-l2-dax-null-body", "POST", "/reconfigure/dax/l2/add", raw="null"),
    Case("reconfigure-l2-fs-op", "POST", "/reconfigure/fs/l2/frob", json={}),
    Case("reconfigure-l2-fs-bad-index", "POST", "/reconfigure/fs/l2/frob", json={"adapter_index": "x"}),
    Case("reconfigure-l2-fs-no-body", "POST", "/reconfigure/fs/l2/frob"),
    Case("reconfigure-l2-fs-list-body", "POST", "/reconfigure/fs/l2/frob", json=[]),
    Case("reconfigure-l2-blank-backend", "POST", "/reconfigure/%20/l2/frob", json={}),
    # -- /reconfigure/dax/l1 ---------------------------------------------------------------------
    Case("l1-dax-status", "GET", "/reconfigure/dax/l1/status"),
    Case("l1-dax-add", "POST", "/reconfigure/dax/l1/add", json={"device_path": "/dev/dax0.0", "size": "1GiB"}),
    Case("l1-dax-add-decimal-size", "POST", "/reconfigure/dax/l1/add", json={"device_path": "x", "size": "1.5GiB"}),
    Case("l1-dax-add-bad-size", "POST", "/reconfigure/dax/l1/add", json={"device_path": "/dev/dax0.0", "size": "bogus"}),
    Case("l1-dax-add-zero-size", "POST", "/reconfigure/dax/l1/add", json={"device_path": "/dev/dax0.0", "size": 0}),
    Case("l1-dax-add-negative-size", "POST", "/reconfigure/dax/l1/add", json={"device_path": "x", "size": -5}),
    Case("l1-dax-add-bool-size", "POST", "/reconfigure/dax/l1/add", json={"device_path": "/dev/dax0.0", "size": True}),
    Case("l1-dax-add-float-size", "POST", "/reconfigure/dax/l1/add", json={"device_path": "x", "size": 1.0}),
    Case("l1-dax-add-path-int", "POST", "/reconfigure/dax/l1/add", json={"device_path": 5, "size": "1GiB"}),
    Case("l1-dax-add-missing-size", "POST", "/reconfigure/dax/l1/add", json={"device_path": "/dev/dax0.0"}),
    Case("l1-dax-add-extra", "POST", "/reconfigure/dax/l1/add", json={"device_path": "/dev/dax0.0", "size": 1, "x": 1}),
    Case("l1-dax-add-no-body", "POST", "/reconfigure/dax/l1/add"),
    Case("l1-dax-add-list-body", "POST", "/reconfigure/dax/l1/add", json=[]),
    Case("l1-dax-add-null-body", "POST", "/reconfigure/dax/l1/add", raw="null"),
    Case("l1-dax-remove", "POST", "/reconfigure/dax/l1/remove", json={"device_path": "/dev/dax0.0"}),
    Case("l1-dax-remove-drain", "POST", "/reconfigure/dax/l1/remove", json={"device_path": "/dev/dax0.0", "mode": "drain"}),
    Case("l1-dax-remove-evict", "POST", "/reconfigure/dax/l1/remove", json={"device_path": "/dev/dax0.0", "mode": "evict"}),
    Case("l1-dax-remove-empty", "POST", "/reconfigure/dax/l1/remove", json={}),
    Case("l1-dax-wrong-method", "GET", "/reconfigure/dax/l1/add"),
    Case("l1-dax-status-post", "POST", "/reconfigure/dax/l1/status"),
    Case("l1-dax-unknown-op", "POST", "/reconfigure/dax/l1/resize", json={}),
)
