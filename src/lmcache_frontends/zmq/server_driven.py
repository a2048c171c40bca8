"""Server-driven transfers: the engine shares its KV tensors once, the server gathers and scatters.

REGISTER_KV_CACHE hands over the engine's KV tensors as handles (0.5.0: pickled wrappers, opened
only by the allow-list unpickler; 0.5.6: data-only descriptors); the server maps them (CPU: the
engine's /dev/shm segments, checked and watched for truncation; CUDA: IPC memory) and from then
on STORE gathers chunks from the engine's blocks into L1 and RETRIEVE scatters them back.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import torch

from lmcache_adapters.memory.faultguard import GuardedRange
from lmcache_adapters.transfer.copy_pool import CopyPool
from lmcache_adapters.transfer.layout import KVCacheLayout
from lmcache_adapters.transfer.tensors import (
    CpuShmTensorWrapper,
    CudaIPCWrapper,
    WrapperStateError,
    open_shared_tensor,
    wrapper_from_descriptor,
)
from lmcache_adapters.transfer.unpickler import load_wrapper
from lmcache_core.clients import ClientId
from lmcache_core.metric_names import (
    RETRIEVE_REQUESTS,
    RETRIEVE_THROUGHPUT_GBPS,
    RETRIEVED_TOKENS,
    STORE_REQUESTS,
    STORE_THROUGHPUT_GBPS,
    STORED_TOKENS,
)
from lmcache_frontends.zmq.instances import SERVER_DRIVEN, Instance, InstanceRegistry, RequestFailed
from lmcache_frontends.zmq.requests import (
    PickledTensorHandle,
    RegisterKVCache,
    Retrieve,
    Store,
    TensorHandle,
    TransferDone,
)
from lmcache_frontends.zmq.transfers import TransferSupport

log = logging.getLogger(__name__)

MAX_KV_TENSORS = 4096
EXPORTED_EVENTS = 1024
"""CUDA events the server keeps alive after exporting them in STORE/RETRIEVE replies."""


def open_handle(handle: TensorHandle) -> CpuShmTensorWrapper | CudaIPCWrapper:
    """The wrapper of one tensor handle from the wire, whichever protocol sent it."""
    if isinstance(handle, PickledTensorHandle):
        return load_wrapper(handle.data)
    try:
        return wrapper_from_descriptor(
            handle.kind, dtype=handle.dtype, shape=handle.shape, stride=handle.stride,
            storage_offset=handle.storage_offset, device_uuid=handle.device_uuid, shm_name=handle.shm_name,
            nbytes=handle.nbytes, cuda_handle=handle.cuda_handle, ipc_handle=handle.ipc_handle,
        )
    except WrapperStateError as exc:
        raise RequestFailed(f"tensor descriptor refused: {exc}") from None


class ServerDrivenHandlers:
    """REGISTER_KV_CACHE, STORE and RETRIEVE over the engine's own shared KV tensors."""

    def __init__(self, registry: InstanceRegistry, transfers: TransferSupport, copy_pool: CopyPool) -> None:
        self.registry = registry
        self.data_path = registry.data_path
        self.transfers = transfers
        self.copy_pool = copy_pool
        self._exported: deque[Any] = deque(maxlen=EXPORTED_EVENTS)

    # -- registration -----------------------------------------------------------------------

    def register(self, client: ClientId, req: RegisterKVCache) -> None:
        known = self.registry.get(client, req.instance_id)
        if known is not None:
            known.last_seen = self.registry.clock.monotonic()
            return None
        if len(req.kv_caches) > MAX_KV_TENSORS:
            raise RequestFailed(f"kv_caches must hold 1..{MAX_KV_TENSORS} tensor handles")
        if not req.model_name or "@" in req.model_name or not 1 <= req.world_size <= 255:
            raise RequestFailed("bad model_name or world_size")
        identity = self.registry.pool_identity
        refuse = [identity] if identity is not None else []
        tensors: list[torch.Tensor] = []
        guards: list[GuardedRange] = []
        try:
            for handle in req.kv_caches:
                try:
                    tensor, guard = open_shared_tensor(open_handle(handle), refuse)
                except OSError as exc:  # no such segment, a symbolic link, no permission
                    raise RequestFailed(f"cannot open the shared KV segment: {exc}") from None
                except RuntimeError as exc:  # CUDA: no such GPU, a forged or stale IPC handle
                    raise RequestFailed(f"cannot open the shared KV tensor: {exc}") from None
                tensors.append(tensor)
                if guard is not None:
                    guards.append(guard)
            layout = KVCacheLayout(
                tensors, self.transfers.chunk_size, layout_hints=dict(req.layout_hints),
                engine_group_infos=[g.as_map() for g in req.engine_groups],
            )
        except BaseException:
            for guard in guards:
                guard.close()
            raise
        now = self.registry.clock.monotonic()
        self.registry.install(
            Instance(client, req.instance_id, SERVER_DRIVEN, req.model_name, req.world_size, now, now,
                     object_size=layout.object_size, layout=layout, engine_type=req.engine_type, guards=guards)
        )
        log.info("registered KV cache of instance %d (client %s): %s", req.instance_id, client.hex() or "-",
                 layout.describe())
        return None

    def _layout_of(self, client: ClientId, instance_id: int) -> tuple[Instance, KVCacheLayout]:
        inst = self.registry.instance(client, instance_id)
        if inst.layout is None:
            raise RequestFailed(f"instance {instance_id} registered no KV tensors")
        return inst, inst.layout

    # -- CUDA events (the CPU path echoes the client's stub handle) -------------------------

    @staticmethod
    def _wait_client_event(layout: KVCacheLayout, handle: bytes) -> None:
        if layout.device.type == "cuda" and len(handle) == 64:
            try:
                event = torch.cuda.Event.from_ipc_handle(layout.device, handle)
            except RuntimeError as exc:  # a forged handle, or the engine destroyed its event
                raise RequestFailed(f"cannot open the engine's CUDA event: {exc}") from None
            event.wait(torch.cuda.current_stream(layout.device))

    def _server_event(self, layout: KVCacheLayout, client_handle: bytes) -> bytes:
        if layout.device.type != "cuda":
            return client_handle  # the CPU stub: both sides ignore its content
        event = torch.cuda.Event(interprocess=True)
        event.record(torch.cuda.current_stream(layout.device))
        # CUDA leaves an imported event undefined once its exporter destroyed it, and the engine
        # opens this one after the reply: keep the last EXPORTED_EVENTS alive (an engine waits on
        # its reply's event at once; this bounds the memory, not correctness in practice).
        self._exported.append(event)
        return bytes(event.ipc_handle())

    # -- transfers --------------------------------------------------------------------------

    def store(self, client: ClientId, req: Store) -> TransferDone:
        inst, layout = self._layout_of(client, req.instance_id)
        keys = self.transfers.transfer_keys(client, req.key).keys
        self.transfers.count_request(STORE_REQUESTS, req.key)
        if not layout.check_block_ids(req.block_ids, len(keys)):
            return TransferDone(req.event_handle, False)
        self._wait_client_event(layout, req.event_handle)
        started = time.perf_counter()
        reserved = self.data_path.reserve_new(keys, inst.object_size)
        done = [keys[i] for i, _ in reserved]
        handles = [h for _, h in reserved]
        try:
            self.registry.copy_guarded(inst, lambda: layout.gather(
                req.block_ids, [i for i, _ in reserved], [self.registry.object_tensor(h) for h in handles],
                self.copy_pool,
            ))
        except BaseException:
            self.data_path.abort(done, handles)
            raise
        stored = self.data_path.commit_count(done, handles)
        self.transfers.report_moved(STORED_TOKENS, STORE_THROUGHPUT_GBPS, req.key, stored, inst.object_size, started)
        return TransferDone(self._server_event(layout, req.event_handle), True)

    def retrieve(self, client: ClientId, req: Retrieve) -> TransferDone:
        inst, layout = self._layout_of(client, req.instance_id)
        keys = self.transfers.transfer_keys(client, req.key).keys
        self.transfers.count_request(RETRIEVE_REQUESTS, req.key)
        if not layout.check_block_ids(req.block_ids, len(keys)):
            return TransferDone(req.event_handle, False)
        ticket = self.data_path.acquire_for_read(keys, inst.object_size, request_id=req.key.request_id, client=client)
        if ticket is None:
            return TransferDone(req.event_handle, False)
        started = time.perf_counter()
        try:
            self._wait_client_event(layout, req.event_handle)
            self.registry.copy_guarded(inst, lambda: layout.scatter(
                req.block_ids, list(range(len(keys))), [self.registry.object_tensor(h) for h in ticket.handles],
                req.skip_first_n_tokens, self.copy_pool,
            ))
        finally:
            self.data_path.release_read(ticket)
        self.transfers.report_moved(
            RETRIEVED_TOKENS, RETRIEVE_THROUGHPUT_GBPS, req.key, len(keys), inst.object_size, started
        )
        return TransferDone(self._server_event(layout, req.event_handle), True)

    def checksums(self, inst: Instance, block_ids: list[int], chunk_size: int, *, layerwise: bool) -> Any:
        """/kvcache/check over `inst`'s registered tensors (a truncated segment fails it)."""
        assert inst.layout is not None
        layout = inst.layout
        return self.registry.copy_guarded(inst, lambda: layout.checksums(block_ids, chunk_size, layerwise=layerwise))
