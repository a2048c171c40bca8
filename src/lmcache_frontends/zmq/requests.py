"""Typed data-path requests and results: what engines ask for, independent of any wire version.

A codec (`codec_v050`, `codec_v056`) turns frames into one of these requests and a handler's typed
result back into frames; handlers see named fields only, never wire numbers or payload positions.
Every request that has a failure answer says so in `failure()` (the value a client learns "this
did not work" from without waiting out its timeout).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lmcache_core.lookup import RequestKey

# -- values inside requests ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PickledTensorHandle:
    """A 0.5.0 tensor handle: the Ext-1 body, a pickled wrapper that only the allow-list
    unpickler (`lmcache_adapters.transfer.unpickler.load_wrapper`) may open."""

    data: bytes


@dataclass(frozen=True, slots=True)
class TensorDescriptor:
    """A 0.5.6 tensor handle: a data-only descriptor (msgpack, no pickle) of a shared tensor.

    `kind` is the descriptor's tag: `cpu_shm` (a POSIX shared-memory segment `shm_name` of
    `nbytes`), `cuda` (torch's shared CUDA storage, `cuda_handle` as `storage._share_cuda_()`
    returns it), `cuda_raw` (a 64-byte driver IPC handle + `alloc_offset`/`nbytes`), or another
    tag the server does not open (`cuda_vmm`, `musa`, `npu`), kept in `extra`."""

    kind: str
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage_offset: int
    device_uuid: str
    shm_name: str = ""
    nbytes: int = 0
    cuda_handle: tuple[Any, ...] | None = None
    ipc_handle: bytes = b""
    alloc_offset: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)


TensorHandle = PickledTensorHandle | TensorDescriptor


@dataclass(frozen=True, slots=True)
class EngineGroup:
    """One KV-cache group of a registration (`EngineGroupInfo`); 0.5.0 sends the first four."""

    engine_group_id: int
    layer_indices: tuple[int, ...]
    tokens_per_block: int = 0
    sw_size_tokens: int = -1
    extra_object_group_tag: int = 0
    recurrent_state: bool = False

    def as_map(self) -> dict[str, Any]:
        """The fields as the layout code reads them (a plain map)."""
        return {
            "engine_group_id": self.engine_group_id, "layer_indices": list(self.layer_indices),
            "tokens_per_block": self.tokens_per_block, "sw_size_tokens": self.sw_size_tokens,
            "extra_object_group_tag": self.extra_object_group_tag, "recurrent_state": self.recurrent_state,
        }


@dataclass(frozen=True, slots=True)
class BlockAllocation:
    """One request's newly allocated engine blocks (REPORT_BLOCK_ALLOCATION)."""

    req_id: str
    new_block_ids: tuple[int, ...]
    new_token_ids: tuple[int, ...]


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Slot:
    """Where one chunk lives in the shared L1 pool (engine-driven transfers)."""

    offset: int
    length: int
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True, slots=True)
class EngineDrivenContext:
    """Answer to an engine-driven registration: the pool to map ("" and 0: pickle mode)."""

    shm_name: str
    pool_size: int


@dataclass(frozen=True, slots=True)
class StoreSlots:
    """Answer to PREPARE_STORE: slots to write and the chunk index (from `start`) of each.
    `pickle_mode` (no shared pool): the chunks travel in COMMIT_STORE instead."""

    slots: tuple[Slot, ...] = ()
    chunk_indices: tuple[int, ...] = ()
    pickle_mode: bool = False


@dataclass(frozen=True, slots=True)
class RetrieveSlots:
    """Answer to PREPARE_RETRIEVE: one slot per chunk (shared pool), or the pickled chunks in
    `data` (pickle mode); `success` false when the chunks are not all held for this client."""

    success: bool
    slots: tuple[Slot, ...] = ()
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class TransferDone:
    """Answer to a server-driven STORE/RETRIEVE: the server's completion event handle and
    whether every chunk was moved."""

    event_handle: bytes
    ok: bool


@dataclass(frozen=True, slots=True)
class NoReply:
    """A result that sends nothing back (e.g. a stream-control message)."""


# -- requests -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """Base of every typed request; `failure()` is None when the operation has no failure value."""

    def failure(self) -> Any:
        return None


@dataclass(frozen=True, slots=True)
class GetChunkSize(Request):
    """Ask for the server's chunk size (tokens). Result: int."""


@dataclass(frozen=True, slots=True)
class Noop(Request):
    """Liveness round trip. Result: str."""


@dataclass(frozen=True, slots=True)
class Ping(Request):
    """Heartbeat; a non-null instance id refreshes that registration. Result: bool."""

    instance_id: int | None

    def failure(self) -> Any:
        return False


@dataclass(frozen=True, slots=True)
class GetCapabilities(Request):
    """0.5.6 `get_experimental`: the optional features the server offers. Result: tuple[str, ...]."""

    def failure(self) -> Any:
        return ()


@dataclass(frozen=True, slots=True)
class RegisterKVCache(Request):
    """Server-driven registration: the engine's KV tensors, shared with the server. Result: None."""

    instance_id: int
    kv_caches: tuple[TensorHandle, ...]
    model_name: str
    world_size: int
    engine_type: str
    layout_hints: Mapping[str, Any]
    engine_groups: tuple[EngineGroup, ...]


@dataclass(frozen=True, slots=True)
class UnregisterKVCache(Request):
    """Drop a server-driven registration. Result: None."""

    instance_id: int


@dataclass(frozen=True, slots=True)
class RegisterEngineDrivenContext(Request):
    """Engine-driven registration: the geometry of one chunk object. Result: EngineDrivenContext.
    `num_physical_slots` (0.5.6) is the KV slots per chunk; None when the client did not say."""

    instance_id: int
    model_name: str
    world_size: int
    block_size: int
    num_layers: int
    hidden_dim_size: int
    dtype: str
    use_mla: bool
    num_physical_slots: int | None = None

    def failure(self) -> Any:
        # No pool offered: nothing is registered, and every later request of the instance is
        # answered with its own failure value (the client learns it at once, not by a timeout).
        return EngineDrivenContext("", 0)


@dataclass(frozen=True, slots=True)
class UnregisterEngineDrivenContext(Request):
    """Drop an engine-driven registration. Result: None."""

    instance_id: int


@dataclass(frozen=True, slots=True)
class KeyRequest(Request):
    """A request about the chunks of one key. `readers` is 0.5.6's `num_kv_readers` (how many
    workers will retrieve each object; 0 when the client does not send it)."""

    key: RequestKey
    readers: int


@dataclass(frozen=True, slots=True)
class Lookup(KeyRequest):
    """Find the cached prefix and hold it for the retrieves to come. Result: None."""

    tp_size: int


@dataclass(frozen=True, slots=True)
class FreeLookupLocks(KeyRequest):
    """Release what a Lookup held over the key's range. Result: None."""

    tp_size: int


@dataclass(frozen=True, slots=True)
class Store(KeyRequest):
    """Server-driven store from the engine's blocks. Result: TransferDone."""

    instance_id: int
    block_ids: tuple[tuple[int, ...], ...]
    event_handle: bytes

    def failure(self) -> Any:
        return TransferDone(self.event_handle, False)


@dataclass(frozen=True, slots=True)
class Retrieve(KeyRequest):
    """Server-driven retrieve into the engine's blocks. Result: TransferDone."""

    instance_id: int
    block_ids: tuple[tuple[int, ...], ...]
    event_handle: bytes
    skip_first_n_tokens: int

    def failure(self) -> Any:
        return TransferDone(self.event_handle, False)


@dataclass(frozen=True, slots=True)
class PrepareStore(KeyRequest):
    """Engine-driven store, step 1: reserve slots. Result: StoreSlots."""

    instance_id: int

    def failure(self) -> Any:
        return StoreSlots()


@dataclass(frozen=True, slots=True)
class CommitStore(KeyRequest):
    """Engine-driven store, step 2: publish what was written (`data`: pickle-mode chunks, or
    empty after writing the slots). Result: bool."""

    instance_id: int
    data: bytes

    def failure(self) -> Any:
        return False


@dataclass(frozen=True, slots=True)
class PrepareRetrieve(KeyRequest):
    """Engine-driven retrieve, step 1: the slots to read. Result: RetrieveSlots."""

    instance_id: int

    def failure(self) -> Any:
        return RetrieveSlots(False)


@dataclass(frozen=True, slots=True)
class CommitRetrieve(KeyRequest):
    """Engine-driven retrieve, step 2: done reading. Result: bool (false: nothing of this
    client was pending under the key; clients only log it)."""

    instance_id: int

    def failure(self) -> Any:
        return False


@dataclass(frozen=True, slots=True)
class QueryPrefetchStatus(Request):
    """The hit count of a Lookup once known (None while running). Result: int | None."""

    request_id: str

    def failure(self) -> Any:
        return 0


@dataclass(frozen=True, slots=True)
class WaitPrefetchStatus(Request):
    """QueryPrefetchStatus that waits up to `timeout` seconds. Result: int | None."""

    request_id: str
    timeout: float

    def failure(self) -> Any:
        return 0


@dataclass(frozen=True, slots=True)
class QueryPrefetchLookupHits(Request):
    """0.5.0 only: L1 prefix plus L2 hits of a Lookup, without consuming it. Result: int | None."""

    request_id: str

    def failure(self) -> Any:
        return 0


@dataclass(frozen=True, slots=True)
class EndSession(Request):
    """The engine is done with a request id. Result: None."""

    request_id: str


@dataclass(frozen=True, slots=True)
class Clear(Request):
    """Empty L1 (0.5.0 always forces; 0.5.6 says). Result: None."""

    force: bool


@dataclass(frozen=True, slots=True)
class ReportBlockAllocation(Request):
    """vLLM's per-step block allocations (observability only). Result: None."""

    instance_id: int
    model_name: str
    records: tuple[BlockAllocation, ...]


@dataclass(frozen=True, slots=True)
class StreamControl(Request):
    """0.5.6 stream credit (`ack`) or `cancel` for a subscription; never answered."""

    action: str

    def failure(self) -> Any:
        return NoReply()


@dataclass(frozen=True, slots=True)
class NotSupported(Request):
    """An operation this server does not implement (CacheBlend, P2P, query transfer, KV-event
    streams, server modules). The codec answers it with what the client reads as "not
    supported"; `detail` keeps what that answer needs (an event handle, a key count)."""

    operation: str
    feature: str
    detail: Mapping[str, Any] = field(default_factory=dict)


KEY_REQUESTS: tuple[type[KeyRequest], ...] = (
    Lookup, FreeLookupLocks, Store, Retrieve, PrepareStore, CommitStore, PrepareRetrieve, CommitRetrieve,
)
TRANSFER_REQUESTS: tuple[type[Request], ...] = (
    Store, Retrieve, PrepareStore, CommitStore, PrepareRetrieve, CommitRetrieve,
)
"""Requests that move KV data: run on worker threads, FIFO per client."""
