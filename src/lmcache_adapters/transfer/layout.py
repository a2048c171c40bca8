"""Paged KV layouts: format detection, the KV_2LTD object layout, batched gather/scatter and checksums."""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch

from lmcache_adapters.transfer.copy_pool import CopyPool
from lmcache_adapters.transfer.ntcopy import copy_rows


class KVFormat(StrEnum):
    """Per-layer tensor formats (vLLM's names)."""

    TWO_NB_BS_NH_HS = "NL_X_TWO_NB_BS_NH_HS"
    TWO_NB_NH_BS_HS = "NL_X_TWO_NB_NH_BS_HS"
    NB_TWO_BS_NH_HS = "NL_X_NB_TWO_BS_NH_HS"
    NB_TWO_NH_BS_HS = "NL_X_NB_TWO_NH_BS_HS"
    NB_BS_HS = "NL_X_NB_BS_HS"


class UnsupportedLayoutError(ValueError):
    """The KV tensors have a format this server cannot gather/scatter (HTTP 501 for checks)."""


def detect_format(t: torch.Tensor, kv_layout: str = "NHD") -> KVFormat:
    """The format of one layer's KV tensor; `kv_layout` (NHD/HND) decides the 5-D inner order."""
    hnd = str(kv_layout).upper() == "HND"
    if t.dim() == 5:
        if t.shape[0] == 2:
            return KVFormat.TWO_NB_NH_BS_HS if hnd else KVFormat.TWO_NB_BS_NH_HS
        if t.shape[1] == 2:
            return KVFormat.NB_TWO_NH_BS_HS if hnd else KVFormat.NB_TWO_BS_NH_HS
    if t.dim() == 3:
        return KVFormat.NB_BS_HS
    raise UnsupportedLayoutError(f"unsupported per-layer KV tensor shape {tuple(t.shape)}")


def block_axis(fmt: KVFormat) -> int:
    """The axis that indexes blocks (what /kvcache/check selects on)."""
    return 1 if fmt in (KVFormat.TWO_NB_BS_NH_HS, KVFormat.TWO_NB_NH_BS_HS) else 0


def _normalize(t: torch.Tensor, fmt: KVFormat) -> tuple[torch.Tensor, bool]:
    """A zero-copy view `[kv, NB, BS, NH, HS]` (or `[kv, NB, NH, BS, HS]` with True for HND)."""
    if fmt is KVFormat.TWO_NB_BS_NH_HS:
        return t, False
    if fmt is KVFormat.TWO_NB_NH_BS_HS:
        return t, True
    if fmt is KVFormat.NB_TWO_BS_NH_HS:
        return t.transpose(0, 1), False
    if fmt is KVFormat.NB_TWO_NH_BS_HS:
        return t.transpose(0, 1), True
    nb, bs, hs = t.shape
    return t.unsqueeze(2).unsqueeze(0), False


@dataclass
class KVGroup:
    """Layers sharing one shape; one `[kv, L, C, NH*HS]` region of every object."""

    layers: list[int]
    views: list[torch.Tensor]
    hnd: bool
    kv: int
    block_size: int
    num_heads: int
    head_size: int
    dtype: torch.dtype
    byte_offset: int
    nbytes: int
    chunk_size: int

    @property
    def blocks_per_chunk(self) -> int:
        return self.chunk_size // self.block_size

    @functools.cached_property
    def num_blocks(self) -> int:
        """Blocks every layer of the group has (the valid block ids are below it)."""
        return min(int(v.shape[1]) for v in self.views)

    def region(self, obj: torch.Tensor) -> torch.Tensor:
        raw = obj[self.byte_offset : self.byte_offset + self.nbytes]
        return raw.view(self.dtype).view(self.kv, len(self.layers), self.chunk_size, self.num_heads * self.head_size)

    def chunk_views(self, obj: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per layer, the object's `[kv, bpc, BS, NH, HS]` view of one chunk of blocks
        (token-major in every format; HND tensors are transposed to it)."""
        bpc = self.blocks_per_chunk
        region = self.region(obj).view(self.kv, len(self.layers), bpc, self.block_size, self.num_heads, self.head_size)
        return region.unbind(1)


class KVCacheLayout:
    """An engine's registered paged KV cache (one tensor per layer) and its L1 object layout
    (KV_2LTD: per group a C-contiguous `[kv, L_g, C, NH*HS]`, groups concatenated).

    Gather and scatter work a whole chunk of blocks per torch call (index_select /
    index_copy_ over the block ids of the chunk), never one Python step per block."""

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        chunk_size: int,
        *,
        layout_hints: Mapping[str, Any] | None = None,
        engine_group_infos: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        if not tensors:
            raise UnsupportedLayoutError("no KV tensors were registered")
        hints = dict(layout_hints or {})
        kv_layout = str(hints.get("kv_layout", "NHD"))
        self.tensors = list(tensors)
        self.chunk_size = chunk_size
        self.formats = [detect_format(t, kv_layout) for t in self.tensors]
        self.device = self.tensors[0].device
        engine_groups: list[tuple[list[int], int]] = []
        if engine_group_infos:
            for info in engine_group_infos:
                layers = [int(i) for i in info.get("layer_indices", [])]
                if any(not 0 <= i < len(self.tensors) for i in layers):
                    raise UnsupportedLayoutError(f"engine group layer indices {layers} out of range")
                engine_groups.append((layers, int(info.get("tokens_per_block", 0) or 0)))
        else:
            engine_groups.append((list(range(len(self.tensors))), 0))
        # LMCache groups: engine groups split by shape and dtype, ordered by first layer.
        specs: dict[tuple[Any, ...], list[int]] = {}
        for gid, (layers, tpb) in enumerate(engine_groups):
            for layer in layers:
                view, hnd = _normalize(self.tensors[layer], self.formats[layer])
                kv, _nb = view.shape[0], view.shape[1]
                bs, nh = (view.shape[3], view.shape[2]) if hnd else (view.shape[2], view.shape[3])
                if tpb and tpb != bs:
                    raise UnsupportedLayoutError(f"tokens_per_block {tpb} differs from the block size {bs}")
                specs.setdefault((gid, kv, bs, nh, view.shape[4], view.dtype, hnd), []).append(layer)
        self.groups: list[KVGroup] = []
        offset = 0
        for (_gid, kv, bs, nh, hs, dtype, hnd), layers in sorted(specs.items(), key=lambda item: min(item[1])):
            if chunk_size % bs:
                raise UnsupportedLayoutError(f"chunk size {chunk_size} is not a multiple of the block size {bs}")
            itemsize = torch.empty((), dtype=dtype).element_size()
            nbytes = kv * len(layers) * chunk_size * nh * hs * itemsize
            views = [_normalize(self.tensors[i], self.formats[i])[0] for i in layers]
            self.groups.append(KVGroup(layers, views, hnd, kv, bs, nh, hs, dtype, offset, nbytes, chunk_size))
            offset += nbytes
        self.object_size = offset

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    def describe(self) -> dict[str, Any]:
        """For /status `cache_context_meta`."""
        return {
            "num_layers": len(self.tensors),
            "device": str(self.device),
            "object_size": self.object_size,
            "groups": [
                {
                    "layers": g.layers,
                    "kv_size": g.kv,
                    "block_size": g.block_size,
                    "num_heads": g.num_heads,
                    "head_size": g.head_size,
                    "dtype": str(g.dtype).removeprefix("torch."),
                    "layout": "HND" if g.hnd else "NHD",
                }
                for g in self.groups
            ],
            "formats": sorted({f.value for f in self.formats}),
        }

    def check_block_ids(self, block_ids: Sequence[Sequence[int]], num_chunks: int) -> bool:
        """True when every group got at least the blocks of `num_chunks` chunks, each an index of
        a block its tensors have. Checked before any copy: on a GPU an index out of range is a
        device-side assert that leaves the server's CUDA context unusable for every client."""
        if len(block_ids) != len(self.groups):
            return False
        for g, ids in zip(self.groups, block_ids, strict=True):
            used = ids[: num_chunks * g.blocks_per_chunk]
            if len(used) < num_chunks * g.blocks_per_chunk:
                return False
            if used and (min(used) < 0 or max(used) >= g.num_blocks):
                return False
        return True

    def _index(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.as_tensor(ids, dtype=torch.long, device=self.device)

    def gather(
        self,
        block_ids: Sequence[Sequence[int]],
        chunk_positions: Sequence[int],
        objects: Sequence[torch.Tensor],
        pool: CopyPool | None = None,
    ) -> None:
        """Copy the blocks of chunk `chunk_positions[j]` (position in the request's block lists)
        into `objects[j]` (uint8 tensors of `object_size` bytes). One torch call per layer and
        chunk, K and V together; on CPU the layers are copied in parallel on `pool`."""
        on_cpu = self.device.type == "cpu"
        copies: list[Callable[[], None]] = []
        for g, ids in zip(self.groups, block_ids, strict=True):
            bpc = g.blocks_per_chunk
            index: torch.Tensor | None = None
            # Per chunk: runs of consecutive block ids (plain strided copies, the fastest on
            # CPU) or, when fragmented, the chunk's index for one index_select.
            indices: list[Any] = []
            for pos in chunk_positions:
                runs = _runs(ids, pos * bpc, (pos + 1) * bpc) if on_cpu else None
                if runs is None:
                    if index is None:
                        index = self._index(ids)
                    indices.append(index[pos * bpc : (pos + 1) * bpc])
                else:
                    indices.append(runs)
            outs = [g.chunk_views(obj) for obj in objects]
            for layer, view in enumerate(g.views):
                pairs = [(out[layer], idx) for out, idx in zip(outs, indices, strict=True)]
                copies.append(functools.partial(_gather_layer, view, pairs, g.hnd, on_cpu))
        self._run(copies, pool, on_cpu)

    def scatter(
        self,
        block_ids: Sequence[Sequence[int]],
        chunk_positions: Sequence[int],
        objects: Sequence[torch.Tensor],
        skip_tokens: int = 0,
        pool: CopyPool | None = None,
    ) -> None:
        """Copy `objects[j]` into the blocks of chunk `chunk_positions[j]`, leaving the first
        `skip_tokens // block_size` blocks of the request untouched. On CPU the layers are
        copied in parallel on `pool`."""
        on_cpu = self.device.type == "cpu"
        copies: list[Callable[[], None]] = []
        for g, ids in zip(self.groups, block_ids, strict=True):
            bpc = g.blocks_per_chunk
            skip_blocks = max(0, skip_tokens) // g.block_size
            index: torch.Tensor | None = None
            # Per chunk: (its object views, first block to write, runs or an index).
            plans: list[tuple[tuple[torch.Tensor, ...], int, list[tuple[int, int, int]] | None, Any]] = []
            for pos, obj in zip(chunk_positions, objects, strict=True):
                first = max(0, skip_blocks - pos * bpc)
                if first >= bpc:
                    continue
                lo, hi = pos * bpc + first, (pos + 1) * bpc
                runs = _runs(ids, lo, hi)
                idx = None
                if runs is None:
                    if index is None:
                        index = self._index(ids)
                    idx = index[lo:hi]
                plans.append((g.chunk_views(obj), first, runs, idx))
            if not plans:
                continue
            for layer, view in enumerate(g.views):
                parts = [(srcs[layer], first, runs, idx) for srcs, first, runs, idx in plans]
                copies.append(functools.partial(_scatter_layer, view, parts, g.hnd, on_cpu, self.device))
        self._run(copies, pool, on_cpu)

    def _run(self, copies: list[Callable[[], None]], pool: CopyPool | None, on_cpu: bool) -> None:
        if on_cpu and pool is not None:
            pool.run(copies)
            return
        # GPU copies are asynchronous on one stream already: issue them in order, then wait.
        for copy in copies:
            copy()
        if not on_cpu:
            torch.cuda.current_stream(self.device).synchronize()

    def checksums(self, block_ids: Sequence[int], chunk_blocks: int, *, layerwise: bool = False) -> Any:
        """/kvcache/check: per chunk of `chunk_blocks` blocks, the MD5 of every layer's selected
        blocks (bf16 widened to fp32, C-contiguous), layers concatenated in registration order;
        with `layerwise`, `{"layer_<i>": [md5 per chunk]}`."""
        n = len(block_ids)
        num_chunks = math.ceil(n / chunk_blocks) if n else 0
        per_layer: list[list[bytes]] = []
        for t, fmt in zip(self.tensors, self.formats, strict=True):
            axis = block_axis(fmt)
            sel = t.index_select(axis, self._index(block_ids))
            if sel.dtype == torch.bfloat16:
                sel = sel.float()
            sel = sel.cpu()
            chunks = []
            for c in range(num_chunks):
                lo = c * chunk_blocks
                part = sel.narrow(axis, lo, min(n, lo + chunk_blocks) - lo).contiguous()
                chunks.append(part.view(torch.uint8).numpy().tobytes() if part.numel() else b"")
            per_layer.append(chunks)
        if layerwise:
            return {f"layer_{i}": [hashlib.md5(c).hexdigest() for c in chunks] for i, chunks in enumerate(per_layer)}
        out = []
        for c in range(num_chunks):
            h = hashlib.md5()
            for chunks in per_layer:
                h.update(chunks[c])
            out.append(h.hexdigest())
        return out


def _gather_layer(view: torch.Tensor, pairs: Sequence[tuple[torch.Tensor, Any]], hnd: bool, on_cpu: bool) -> None:
    """One layer's blocks into each chunk's object view (`pairs`: (object view, block index
    tensor or runs of consecutive block ids))."""
    for out, idx in pairs:
        if isinstance(idx, list):
            for at, start, n in idx:
                part = out if n == out.shape[1] else out.narrow(1, at, n)
                blocks = view.narrow(1, start, n)
                if hnd:
                    # HND blocks are transposed to token-major in the same strided copy.
                    part.copy_(blocks.transpose(2, 3))
                elif not copy_rows(part, blocks):
                    part.copy_(blocks)
        elif hnd:
            out.copy_(view.index_select(1, idx).transpose(2, 3), non_blocking=not on_cpu)
        elif on_cpu:
            # Whole blocks at memcpy speed, straight into the L1 object.
            torch.index_select(view, 1, idx, out=out)
        else:
            out.copy_(view.index_select(1, idx), non_blocking=True)


def _scatter_layer(
    view: torch.Tensor,
    parts: Sequence[tuple[torch.Tensor, int, list[tuple[int, int, int]] | None, Any]],
    hnd: bool,
    on_cpu: bool,
    device: torch.device,
) -> None:
    """Each chunk's object view into one layer's blocks (`parts`: (object view, first block of
    the chunk to write, runs of consecutive block ids or None, else the block index))."""
    for src, first, runs, idx in parts:
        if first:
            src = src[:, first:]
        if hnd:
            src = src.transpose(2, 3)
        if idx is None:
            # index_copy_ runs far below memcpy speed on CPU; runs of consecutive blocks are
            # plain copies instead.
            for at, start, n in runs or ():
                part = src if n == src.shape[1] else src.narrow(1, at, n)
                blocks = view.narrow(1, start, n)
                if hnd or not on_cpu or not copy_rows(blocks, part):
                    blocks.copy_(part, non_blocking=not on_cpu)
            continue
        if not on_cpu:
            src = src.to(device, non_blocking=True)
        view.index_copy_(1, idx, src)


# More runs than this per chunk: one indexed copy beats many small strided ones.
_MAX_RUNS_PER_CHUNK = 4


def _runs(ids: Sequence[int], lo: int, hi: int) -> list[tuple[int, int, int]] | None:
    """`ids[lo:hi]` as (offset, first block id, count) runs of consecutive ids, or None when
    they are too fragmented (the caller then uses one indexed copy)."""
    part = ids[lo:hi]
    if not part:
        return []
    first = part[0]
    # Compared in C (list equality), not a per-block Python loop.
    if list(part) == list(range(first, first + len(part))):
        return [(0, first, len(part))]
    t = torch.as_tensor(part, dtype=torch.long)
    breaks = ((t[1:] - t[:-1]) != 1).nonzero().flatten().add_(1).tolist()
    if len(breaks) + 1 > _MAX_RUNS_PER_CHUNK:
        return None
    edges = [0, *breaks, len(part)]
    return [(a, int(part[a]), b - a) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def parse_block_ids(text: str) -> tuple[list[int], list[Any]]:
    """`/kvcache/check`'s mixed form (`0,[2,5],8`; brackets may come unencoded): scalars are single
    ids, `[a,b]` inclusive ranges. Returns (ids, the parsed ranges). ValueError when malformed."""
    import json

    items = json.loads("[" + text + "]")
    if not isinstance(items, list) or not items:
        raise ValueError("empty block_ids")
    ids: list[int] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            ids.append(item)
        elif (
            isinstance(item, list)
            and len(item) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in item)
            and item[0] <= item[1]
        ):
            if item[1] - item[0] + len(ids) > 10_000_000:
                raise ValueError("too many block ids")
            ids.extend(range(item[0], item[1] + 1))
        else:
            raise ValueError(f"bad block id item {item!r}")
    return ids, items
