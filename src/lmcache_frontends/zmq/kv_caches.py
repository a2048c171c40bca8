"""The data path's registrations as a KVCacheSource of the engine: what the admin operations
(checksums, warm prefetch) need to know of the KV caches engines registered; and the status
fields of a registration that LMCache 0.5.6's `lmcache describe kvcache` reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lmcache_adapters.memory.faultguard import SegmentFaultError
from lmcache_adapters.transfer.layout import (
    KVCacheLayout,
    KVFormat,
    UnsupportedLayoutError,
    block_axis,
)
from lmcache_core.errors import ConflictError, InvalidRequestError, NotSupportedError
from lmcache_core.kv_caches import Checksums


class ServerDrivenKVCache:
    """One server-driven registration's KV tensors (RegisteredKVCache)."""

    def __init__(self, server: Any, registration: Any) -> None:
        self._server = server
        self._registration = registration

    def checksums(self, block_ids: Sequence[int], chunk_blocks: int, *, layerwise: bool) -> Checksums:
        try:
            sums: Checksums = self._server.kv_checksums(
                self._registration, list(block_ids), chunk_blocks, layerwise=layerwise
            )
        except UnsupportedLayoutError as exc:
            raise NotSupportedError(str(exc)) from None
        except SegmentFaultError as exc:  # the client truncated its segment under the check
            raise ConflictError(f"instance_id {self._registration.instance_id}: {exc}") from None
        except (IndexError, RuntimeError) as exc:  # a block id past the registered blocks
            raise InvalidRequestError(f"Invalid block_ids format: {exc}") from None
        return sums


class DataPathKVCaches:
    """A KVCacheSource over one running ZeroMQ data-path server."""

    def __init__(self, server: Any) -> None:
        self._server = server

    def object_size(self, model_name: str, world_size: int) -> int | None:
        size: int | None = self._server.data_path.object_size(model_name, world_size)
        return size

    def kv_cache(self, instance_id: int) -> ServerDrivenKVCache | None:
        """The one server-driven registration of `instance_id`. Registrations belong to (client,
        instance id) and an admin call names no client: when several clients registered the id
        (several `lmcache bench` runs, all with 0), ConflictError, never a silent pick of
        somebody else's tensors."""
        found = [i for i in self._server.registrations(instance_id) if i.layout is not None]
        if not found:  # engine-driven registrations share no tensors
            return None
        if len(found) > 1:
            raise ConflictError(
                f"instance_id {instance_id} is registered by {len(found)} clients; checksums would be "
                "ambiguous (give each engine its own instance id)"
            )
        return ServerDrivenKVCache(self._server, found[0])


# Which engines' attention backends produce each per-layer format (what 0.5.6 reports).
_ATTENTION_BACKENDS = {
    KVFormat.TWO_NB_BS_NH_HS: "vLLM non-MLA flash attention",
    KVFormat.TWO_NB_NH_BS_HS: "vLLM non-MLA flash attention (HND layout)",
    KVFormat.NB_TWO_BS_NH_HS: "vLLM non-MLA flash infer",
    KVFormat.NB_TWO_NH_BS_HS: "vLLM non-MLA flash infer (HND layout)",
    KVFormat.NB_BS_HS: "vLLM MLA / SGLang MLA (MP)",
}


def _shape_name(fmt: KVFormat) -> str:
    # "NL_X_TWO_NB_BS_NH_HS" -> "NL x [2, NB, BS, NH, HS]", as LMCache 0.5.6 writes it.
    dims = str(fmt.value).removeprefix("NL_X_").split("_")
    return "NL x [" + ", ".join("2" if d == "TWO" else d for d in dims) + "]"


def registration_report(model_name: str, world_size: int, layout: KVCacheLayout) -> dict[str, Any]:
    """The `cache_context_meta` fields LMCache 0.5.6 reports for a server-driven registration
    (`model_name`, `world_size`, `kv_cache_layout` with its kernel groups), which its
    `lmcache describe kvcache` reads."""
    first = layout.tensors[0]
    num_blocks = int(first.shape[block_axis(layout.formats[0])])
    groups = []
    per_token = 0
    for index, group in enumerate(layout.groups):
        fmt = layout.formats[group.layers[0]]
        element = torch.tensor([], dtype=group.dtype).element_size()
        per_token += group.kv * group.num_heads * group.head_size * element * len(group.layers)
        shape = list(layout.tensors[group.layers[0]].shape)
        groups.append(
            {
                "kernel_group_idx": index,
                "engine_group_idx": index,
                "object_group_idx": 0,
                "num_layers": len(group.layers),
                "layer_indices": list(group.layers),
                "tokens_per_block": group.block_size,
                "slots_per_block": group.block_size,
                "dtype": str(group.dtype),
                "engine_kv_concrete_shape": f"{len(group.layers)} x {shape}",
                "is_mla": group.kv == 1,
                "engine_kv_format": str(fmt.value),
                "engine_kv_shape": _shape_name(fmt),
                "attention_backend": _ATTENTION_BACKENDS.get(fmt, "unknown"),
            }
        )
    return {
        "model_name": model_name,
        "world_size": world_size,
        "kv_cache_layout": {
            "num_layers": len(layout.tensors),
            "num_blocks": num_blocks,
            "cache_size_per_token": per_token,
            "kernel_groups": groups,
        },
    }
