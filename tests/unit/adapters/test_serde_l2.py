"""The serde wrapper beyond the contract: fp8 accuracy, compression, restart over fs, config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmcache_adapters.l2.fs import FSL2Adapter
from lmcache_adapters.l2.mock import MockL2Adapter
from lmcache_adapters.l2.serde import SERDE_HEADER_SIZE, wrap_with_serde
from lmcache_adapters.testing import make_key, tensor_payload
from lmcache_core.errors import ConfigError

TIMEOUT = 10


def _round_trip(adapter, payload: memoryview) -> tuple[bool, bytearray]:  # type: ignore[no-untyped-def]
    key = make_key(1)
    assert adapter.submit_store([key], [payload]).result(timeout=TIMEOUT) == [True]
    buf = bytearray(payload.nbytes)
    ok = adapter.submit_load([key], [memoryview(buf)]).result(timeout=TIMEOUT)[0]
    return ok, buf


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_fp8_round_trip_within_tolerance_and_half_the_bytes(dtype: torch.dtype) -> None:
    name = str(dtype).removeprefix("torch.")
    inner = MockL2Adapter()
    adapter = wrap_with_serde(inner, {"type": "fp8", "dtype": name})
    values = torch.randn(64 * 1024, generator=torch.Generator().manual_seed(3)).to(dtype) * 3
    payload = memoryview(values.view(torch.uint8).numpy().tobytes())
    ok, buf = _round_trip(adapter, payload)
    assert ok
    got = torch.frombuffer(buf, dtype=dtype).float()
    want = values.float()
    assert not torch.equal(got, want), "fp8 is lossy: identical output means no down-cast happened"
    amax = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=0.07, atol=amax * 2e-5)
    assert float((got - want).abs().mean()) < 0.035 * float(
        want.abs().mean()
    )  # e4m3: ~2-3% mean relative error
    assert inner.usage().used_bytes == payload.nbytes // 2 + 4 + SERDE_HEADER_SIZE
    status = adapter.report_status()
    assert status["serde"]["lossless"] is False and status["serde"]["codec"] == "fp8"
    adapter.close()


def test_fp8_refuses_payloads_it_cannot_represent() -> None:
    adapter = wrap_with_serde(MockL2Adapter(), {"type": "fp8", "dtype": "bfloat16"})
    odd = memoryview(b"\x00" * 7)
    inf = memoryview(
        torch.tensor([1.0, float("inf")], dtype=torch.bfloat16).view(torch.uint8).numpy().tobytes()
    )
    good = tensor_payload(64)
    keys = [make_key(1), make_key(2), make_key(3)]
    assert adapter.submit_store(keys, [odd, inf, good]).result(timeout=TIMEOUT) == [
        False,
        False,
        True,
    ]
    assert adapter.report_status()["serde"]["encode_failures"] == 2
    adapter.close()


def test_zstd_shrinks_compressible_kv_and_status_nests_the_inner_report() -> None:
    inner = MockL2Adapter()
    adapter = wrap_with_serde(inner, {"type": "zstd", "level": 3})
    # KV with many repeated values (e.g. padding) compresses well
    values = torch.zeros(256 * 1024, dtype=torch.bfloat16)
    values[::16] = torch.randn(values[::16].shape, dtype=torch.bfloat16)
    payload = memoryview(values.view(torch.uint8).numpy().tobytes())
    ok, buf = _round_trip(adapter, payload)
    assert ok and bytes(buf) == bytes(payload)
    assert inner.usage().used_bytes < payload.nbytes // 4
    status = adapter.report_status()
    json.dumps(status)
    assert status["is_healthy"] is True
    assert status["serde"]["codec"] == "zstd" and status["serde"]["lossless"] is True
    assert status["serde"]["ratio"] > 4
    assert status["inner"]["kind"] == "mock" and status["inner"]["stored_object_count"] == 1
    adapter.close()
    assert adapter.report_status()["is_healthy"] is False


def test_serde_over_fs_serves_objects_stored_before_a_restart(tmp_path: Path) -> None:
    base = str(tmp_path / "l2")
    first = wrap_with_serde(FSL2Adapter(base), {"type": "zstd"})
    keys = [make_key(i) for i in range(3)]
    payloads = [tensor_payload(1000 * (i + 1), seed=i) for i in range(3)]
    assert first.submit_store(keys, payloads).result(timeout=TIMEOUT) == [True] * 3
    first.close()
    second = wrap_with_serde(FSL2Adapter(base), {"type": "zstd"})
    assert second.submit_lookup_and_lock(keys).result(timeout=TIMEOUT) == [True] * 3
    second.unlock(keys)
    bufs = [bytearray(p.nbytes) for p in payloads]
    assert (
        second.submit_load(keys, [memoryview(b) for b in bufs]).result(timeout=TIMEOUT)
        == [True] * 3
    )
    assert [bytes(b) for b in bufs] == [bytes(p) for p in payloads]
    second.close()


def test_an_object_written_by_another_codec_is_a_miss_not_garbage(tmp_path: Path) -> None:
    base = str(tmp_path / "l2")
    payload = tensor_payload(500)
    zlib_side = wrap_with_serde(FSL2Adapter(base), {"type": "zlib"})
    assert zlib_side.submit_store([make_key(1)], [payload]).result(timeout=TIMEOUT) == [True]
    zlib_side.close()
    zstd_side = wrap_with_serde(FSL2Adapter(base), {"type": "zstd"})
    buf = bytearray(payload.nbytes)
    assert zstd_side.submit_load([make_key(1)], [memoryview(buf)]).result(timeout=TIMEOUT) == [
        False
    ]
    assert zstd_side.report_status()["serde"]["decode_failures"] == 1
    zstd_side.close()


def test_a_key_whose_stored_length_is_unknown_is_a_miss_and_not_left_locked() -> None:
    inner = MockL2Adapter()
    adapter = wrap_with_serde(inner, {"type": "zstd"})
    key = make_key(1)
    # written to the inner adapter directly (not through this wrapper): its blob length is unknown
    assert inner.submit_store([key], [tensor_payload(64)]).result(timeout=TIMEOUT) == [True]
    assert adapter.submit_lookup_and_lock([key]).result(timeout=TIMEOUT) == [False]
    assert inner.delete([key]) == [True], (
        "the wrapper must release the inner lock of a key it reports missing"
    )
    adapter.close()


def test_after_close_submits_fail_and_the_inner_adapter_is_closed() -> None:
    inner = MockL2Adapter()
    adapter = wrap_with_serde(inner, {"type": "zstd"})
    adapter.close()
    adapter.close()
    with pytest.raises(Exception):  # noqa: B017 - any failure is fine, a hang or success is not
        adapter.submit_store([make_key(1)], [tensor_payload(8)]).result(timeout=TIMEOUT)
    assert inner.report_status()["closed"] is True


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"type": "lz77"}, "fp8, zlib, zstd"),
        ({}, "serde.type"),
        ({"type": "zstd", "level": 0}, "serde.level"),
        ({"type": "zstd", "level": True}, "serde.level"),
        ({"type": "zlib", "level": 10}, "serde.level"),
        ({"type": "fp8"}, "serde.dtype"),
        ({"type": "fp8", "dtype": "float32"}, "serde.dtype"),
        ({"type": "zstd", "dtype": "bfloat16"}, "dtype"),
        ({"type": "zstd", "max_workers": 0}, "serde.max_workers"),
    ],
)
def test_bad_serde_config_is_rejected_naming_the_field(config: dict, needle: str) -> None:
    inner = MockL2Adapter()
    with pytest.raises(ConfigError, match=needle):
        wrap_with_serde(inner, config)
    inner.close()


_NO_TORCH_SCRIPT = """
import sys

import lmcache_adapters.testing.backend_contract
import lmcache_adapters.testing.l2_contract
from lmcache_adapters.l2.mock import MockL2Adapter
from lmcache_adapters.l2.serde import make_codec, wrap_with_serde
from lmcache_adapters.testing import make_key

for codec in ("zlib", "zstd"):
    adapter = wrap_with_serde(MockL2Adapter(), {"type": codec})
    payload = bytes(range(256)) * 64
    assert adapter.submit_store([make_key(1)], [memoryview(payload)]).result(timeout=10) == [True]
    out = bytearray(len(payload))
    assert adapter.submit_load([make_key(1)], [memoryview(out)]).result(timeout=10) == [True]
    assert out == payload
    adapter.close()
print(sorted(name for name in sys.modules if name.split(".")[0] == "torch"))
make_codec({"type": "fp8", "dtype": "bfloat16"})
print("torch" in sys.modules)
"""


def test_the_stack_lossless_codecs_and_contract_suites_never_load_torch() -> None:
    """A third party's backend and its contract suite run without torch; only building an fp8
    codec imports it (so the first check can fail)."""
    result = subprocess.run(
        [sys.executable, "-c", _NO_TORCH_SCRIPT], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["[]", "True"], result.stdout
