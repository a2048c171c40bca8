"""Engine-driven transfers: the engine copies chunks through slots of the shared L1 pool.

PREPARE_STORE reserves slots for the chunks not cached yet, the engine writes them, COMMIT_STORE
publishes them; PREPARE_RETRIEVE hands out the slots of chunks the caller's lookup holds, the
engine reads them, COMMIT_RETRIEVE releases them. Without a shared pool (a pool with no segment
name, or `--supported-transfer-mode lmcache_driven`), the chunks travel pickled inside COMMIT_STORE
and the PREPARE_RETRIEVE reply instead ("pickle mode"), opened only by the allow-list unpickler.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import torch

from lmcache_adapters.transfer.unpickler import dumps_cpu_tensors, load_cpu_tensors
from lmcache_core.clients import ClientId
from lmcache_core.metric_names import (
    RETRIEVE_REQUESTS,
    RETRIEVE_THROUGHPUT_GBPS,
    RETRIEVED_TOKENS,
    STORE_REQUESTS,
    STORE_THROUGHPUT_GBPS,
    STORED_TOKENS,
)
from lmcache_core.ports import MemoryHandle
from lmcache_frontends.zmq.instances import ENGINE_DRIVEN, Instance, InstanceRegistry, RequestFailed
from lmcache_frontends.zmq.requests import (
    CommitRetrieve,
    CommitStore,
    EngineDrivenContext,
    PrepareRetrieve,
    PrepareStore,
    RegisterEngineDrivenContext,
    RetrieveSlots,
    Slot,
    StoreSlots,
)
from lmcache_frontends.zmq.transfers import TransferSupport


def torch_dtype(name: str) -> torch.dtype:
    """A torch dtype by its name (`float16`); RequestFailed for anything else."""
    dtype = getattr(torch, name, None) if not name.startswith("_") else None
    if not isinstance(dtype, torch.dtype):
        raise RequestFailed(f"dtype_str {name!r} is not a torch dtype")
    return dtype


class EngineDrivenHandlers:
    """Registration of engine-driven contexts and the four transfer steps over the shared pool."""

    def __init__(
        self, registry: InstanceRegistry, transfers: TransferSupport, *, shared_pool: EngineDrivenContext | None
    ) -> None:
        self.registry = registry
        self.data_path = registry.data_path
        self.transfers = transfers
        self.chunk_size = transfers.chunk_size
        self.shared_pool = shared_pool
        """The pool engines map (None: pickle mode for everyone)."""

    # -- registration -----------------------------------------------------------------------

    def register(self, client: ClientId, req: RegisterEngineDrivenContext) -> EngineDrivenContext:
        known = self.registry.get(client, req.instance_id)
        if known is not None and known.context is not None:
            known.last_seen = self.registry.clock.monotonic()
            return known.context
        dtype = torch_dtype(req.dtype)
        if not req.model_name or "@" in req.model_name or req.world_size > 255:
            raise RequestFailed("bad model_name or world_size")
        # 0.5.6 says how many KV slots one chunk gathers (blocks per chunk x block size); older
        # clients one per token of the chunk.
        slots = req.num_physical_slots if req.num_physical_slots is not None else self.chunk_size
        layers, hidden = req.num_layers, req.hidden_dim_size
        shape = (layers, slots, hidden) if req.use_mla else (2, layers, slots, hidden)
        object_size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        # Refused before anything is registered: an object that cannot fit in L1 (num_layers
        # = 2**40, say) would only make every store ask the reclaimer to evict everyone.
        self.data_path.check_object_size(object_size)
        context = self.shared_pool if self.shared_pool is not None else EngineDrivenContext("", 0)
        now = self.registry.clock.monotonic()
        self.registry.install(
            Instance(client, req.instance_id, ENGINE_DRIVEN, req.model_name, req.world_size, now, now,
                     object_size=object_size, slot_shape=shape, dtype_str=req.dtype, dtype=dtype, context=context)
        )
        return context

    def _instance(self, client: ClientId, instance_id: int) -> Instance:
        inst = self.registry.instance(client, instance_id)
        if inst.mode != ENGINE_DRIVEN:
            raise RequestFailed(f"instance {instance_id} is not an engine-driven context")
        return inst

    @staticmethod
    def _slot(inst: Instance, handle: MemoryHandle) -> Slot:
        return Slot(handle.offset, inst.object_size, inst.slot_shape, inst.dtype_str)

    # -- store ------------------------------------------------------------------------------

    def prepare_store(self, client: ClientId, req: PrepareStore) -> StoreSlots:
        inst = self._instance(client, req.instance_id)
        transfer = self.transfers.transfer_keys(client, req.key)
        if self.shared_pool is None:
            return StoreSlots(pickle_mode=True)
        self.transfers.count_request(STORE_REQUESTS, req.key)
        reserved = self.data_path.prepare_store(client, inst.instance_id, transfer, inst.object_size, time.perf_counter())
        return StoreSlots(tuple(self._slot(inst, h) for _, h in reserved), tuple(i for i, _ in reserved))

    def commit_store(self, client: ClientId, req: CommitStore) -> bool:
        inst = self._instance(client, req.instance_id)
        transfer = self.transfers.transfer_keys(client, req.key)
        if req.data:
            return self._store_pickled(inst, req, transfer.keys)
        done = self.data_path.commit_store(client, inst.instance_id, transfer.identity)
        if done is None:
            return False
        stored, reserved, started = done
        self.transfers.report_moved(STORED_TOKENS, STORE_THROUGHPUT_GBPS, req.key, stored, inst.object_size, started)
        return stored == reserved

    def _store_pickled(self, inst: Instance, req: CommitStore, keys: list[Any]) -> bool:
        """Pickle mode: the chunks travel in the message (the whole store is this request)."""
        self.transfers.count_request(STORE_REQUESTS, req.key)
        started = time.perf_counter()
        tensors = load_cpu_tensors(req.data)
        reserved = self.data_path.reserve_new(keys, inst.object_size)
        written: list[int] = []
        failed: list[int] = []
        try:
            for i, handle in reserved:
                src = tensors[i] if i < len(tensors) else None
                if src is None or src.numel() * src.element_size() != inst.object_size:
                    failed.append(i)
                    continue
                flat = src.contiguous().view(-1).view(torch.uint8)
                self.registry.copy_guarded(None, functools.partial(self.registry.object_tensor(handle).copy_, flat))
                written.append(i)
        except BaseException:
            self.data_path.abort([keys[i] for i, _ in reserved], [h for _, h in reserved])
            raise
        handles = dict(reserved)
        self.data_path.abort([keys[i] for i in failed], [handles[i] for i in failed])
        stored = self.data_path.commit_count([keys[i] for i in written], [handles[i] for i in written])
        self.transfers.report_moved(STORED_TOKENS, STORE_THROUGHPUT_GBPS, req.key, stored, inst.object_size, started)
        return stored == len(written) and not failed

    # -- retrieve ---------------------------------------------------------------------------

    def prepare_retrieve(self, client: ClientId, req: PrepareRetrieve) -> RetrieveSlots:
        inst = self._instance(client, req.instance_id)
        transfer = self.transfers.transfer_keys(client, req.key)
        self.transfers.count_request(RETRIEVE_REQUESTS, req.key)
        started = time.perf_counter()
        if self.shared_pool is None:
            return self._retrieve_pickled(client, inst, req, transfer.keys, started)
        ticket = self.data_path.prepare_retrieve(
            client, inst.instance_id, transfer, req.key.request_id, inst.object_size, started
        )
        if ticket is None:
            return RetrieveSlots(False)
        return RetrieveSlots(True, tuple(self._slot(inst, h) for h in ticket.handles))

    def _retrieve_pickled(
        self, client: ClientId, inst: Instance, req: PrepareRetrieve, keys: list[Any], started: float
    ) -> RetrieveSlots:
        ticket = self.data_path.acquire_for_read(keys, inst.object_size, request_id=req.key.request_id, client=client)
        if ticket is None:
            return RetrieveSlots(False)
        assert inst.dtype is not None
        dtype, shape = inst.dtype, inst.slot_shape
        try:
            chunks = self.registry.copy_guarded(
                None, lambda: [self.registry.object_tensor(h).view(dtype).view(shape).clone() for h in ticket.handles]
            )
        finally:
            self.data_path.release_read(ticket)
        self.transfers.report_moved(RETRIEVED_TOKENS, RETRIEVE_THROUGHPUT_GBPS, req.key, len(keys), inst.object_size, started)
        return RetrieveSlots(True, data=dumps_cpu_tensors(chunks))

    def commit_retrieve(self, client: ClientId, req: CommitRetrieve) -> bool:
        inst = self._instance(client, req.instance_id)
        transfer = self.transfers.transfer_keys(client, req.key)
        done = self.data_path.commit_retrieve(client, inst.instance_id, transfer.identity)
        if done is None:
            return False  # nothing of this client was pending under that key
        ticket, started = done
        # The engine copied the chunks out between PREPARE and this COMMIT.
        self.transfers.report_moved(
            RETRIEVED_TOKENS, RETRIEVE_THROUGHPUT_GBPS, req.key, len(ticket.keys), inst.object_size, started
        )
        return True
