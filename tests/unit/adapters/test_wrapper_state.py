"""Tensor-handle wrappers from the wire: only known state keys of known types, names under /dev/shm only."""

from __future__ import annotations

import os
import pickle
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from lmcache_adapters.transfer.tensors import (
    CpuShmTensorWrapper,
    WrapperStateError,
    open_shm_segment,
    shm_segment_name,
)
from lmcache_adapters.transfer.unpickler import UnpicklingRejectedError, load_wrapper
from lmcache_frontends.client import _wrapper_pickle, share_cpu_tensor

MODULE, NAME = "lmcache.v1.platform.cpu.shm", "CpuShmTensorWrapper"


@pytest.fixture
def segment() -> Iterator[tuple[torch.Tensor, bytes, str]]:
    name = f"wrapper_state_{uuid.uuid4().hex[:10]}"
    tensor, wrapper = share_cpu_tensor((2, 4, 16, 2, 32), torch.float16, name)
    yield tensor, wrapper, name
    os.unlink(f"/dev/shm/{name}")


def state(**changes: Any) -> dict[str, Any]:
    base = {
        "shm_name": "/x", "nbytes": 16384, "handle": None, "dtype": torch.float16,
        "shape": [2, 4, 16, 2, 32], "stride": [4096, 1024, 64, 32, 1], "storage_offset": 0, "device_uuid": "cpu",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def test_a_valid_wrapper_maps_its_segment(segment: tuple[torch.Tensor, bytes, str]) -> None:
    tensor, wrapper, _ = segment
    tensor.copy_(torch.randn(tensor.shape).half())
    loaded = load_wrapper(wrapper)
    assert isinstance(loaded, CpuShmTensorWrapper) and loaded.complete
    assert torch.equal(loaded.to_tensor(), tensor)


@pytest.mark.parametrize(
    "bad",
    [
        state(validate=True),  # the reproduction shadowed validate(); any unknown key is refused
        state(__class__="x"),
        state(to_tensor=None),
        state(shm_name=...),  # a required key missing
        state(shm_name=b"/x"),
        state(nbytes=True),
        state(nbytes=-1),
        state(dtype="float16"),
        state(shape=[2, 4, "16", 2, 32]),
        state(stride=[1] * 9, shape=[1] * 9),
        state(storage_offset=-1),
        state(handle=(1, 2)),
        state(nbytes=16),  # the geometry does not fit in the segment
    ],
)
def test_states_outside_the_schema_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(UnpicklingRejectedError):
        load_wrapper(_wrapper_pickle(MODULE, NAME, bad))


def test_an_instance_without_a_valid_state_is_refused() -> None:
    bare = b"\x80\x04\x8c" + bytes([len(MODULE)]) + MODULE.encode() + b"\x8c" + bytes([len(NAME)]) + NAME.encode()
    with pytest.raises(UnpicklingRejectedError, match="without a valid state"):
        load_wrapper(bare + b"\x93)\x81.")  # NEWOBJ, no BUILD
    with pytest.raises(UnpicklingRejectedError):
        load_wrapper(bare + b"\x93)R.")  # REDUCE: the class called with no state
    with pytest.raises(UnpicklingRejectedError):  # a state that is no dict
        load_wrapper(bare + b"\x93)\x81" + pickle.dumps(("a", "b"), protocol=4)[2:-1] + b"b.")


def test_no_state_can_reach_the_instance_dict() -> None:
    wrapper = load_wrapper(_wrapper_pickle(MODULE, NAME, state(shm_name="/seg")))
    assert not hasattr(wrapper, "__dict__")
    with pytest.raises(AttributeError):
        wrapper.validate = None  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("name", "ok"),
    [("/lmcache_kv_1_0_0", "lmcache_kv_1_0_0"), ("seg", "seg"), ("/../etc/passwd", None), ("a/b", None),
     ("..", None), (".", None), ("/", None), ("", None), ("x\x00", None), ("x" * 300, None), ("\n", None)],
)
def test_segment_names_are_one_component_under_dev_shm(name: str, ok: str | None) -> None:
    if ok is None:
        with pytest.raises(WrapperStateError):
            shm_segment_name(name)
    else:
        assert shm_segment_name(name) == ok


def test_symlinks_and_special_files_under_dev_shm_are_not_opened(tmp_path: Any) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"\x00" * 4096)
    link, fifo = f"ws_link_{uuid.uuid4().hex[:8]}", f"ws_fifo_{uuid.uuid4().hex[:8]}"
    os.symlink(target, f"/dev/shm/{link}")
    os.mkfifo(f"/dev/shm/{fifo}")
    try:
        with pytest.raises(OSError):
            open_shm_segment(link)
        with pytest.raises(ValueError, match="not a regular file"):
            open_shm_segment(fifo)
    finally:
        os.unlink(f"/dev/shm/{link}")
        os.unlink(f"/dev/shm/{fifo}")


def test_a_segment_the_server_refuses_is_never_mapped(segment: tuple[torch.Tensor, bytes, str]) -> None:
    _, wrapper, name = segment
    st = os.stat(f"/dev/shm/{name}")
    with pytest.raises(ValueError, match="server itself"):
        load_wrapper(wrapper).map_segment(refuse=[(st.st_dev, st.st_ino)])


def cuda_state(**changes: Any) -> dict[str, Any]:
    handle = (0, b"\x01" * 64, 4096, 0, b"/torch_1_2_3", 0, b"\x02" * 64, True)
    base = {"handle": handle, "dtype": torch.float16, "shape": [2, 4], "stride": [4, 1], "storage_offset": 0,
            "device_uuid": "GPU-1234"}
    base.update(changes)
    return base


def test_cuda_wrappers_carry_only_a_share_cuda_tuple_and_a_segment_name() -> None:
    from lmcache_adapters.transfer.tensors import CudaIPCWrapper

    good = load_wrapper(_wrapper_pickle("lmcache.v1.multiprocess.custom_types", "CudaIPCWrapper", cuda_state()))
    assert isinstance(good, CudaIPCWrapper)
    no_event = (0, b"\x01" * 64, 4096, 0, b"/torch_1_2_3", 0, None, False)
    assert load_wrapper(_wrapper_pickle("lmcache.v1.multiprocess.custom_types", "CudaIPCWrapper",
                                        cuda_state(handle=no_event))).complete
    for bad in (
        (0, b"x", 4096, 0, b"/../../etc/passwd", 0, b"e", True),  # torch would open that name
        (0, b"x", 4096, 0, "/torch_1", 0, b"e", True),
        (0, b"x", -1, 0, b"/torch_1", 0, b"e", True),
        (0, b"x", 4096, 0, b"/torch_1", 0, b"e", 1),
        (0, b"x", 4096, 0, b"/torch_1", 0, b"e"),
    ):
        with pytest.raises(UnpicklingRejectedError):
            load_wrapper(_wrapper_pickle("lmcache.v1.multiprocess.custom_types", "CudaIPCWrapper", cuda_state(handle=bad)))


def test_a_cuda_ref_counter_naming_the_server_segment_is_refused(segment: tuple[torch.Tensor, bytes, str]) -> None:
    from lmcache_adapters.transfer.tensors import CudaIPCWrapper

    _, _, name = segment
    st = os.stat(f"/dev/shm/{name}")
    handle = (0, b"\x01" * 64, 4096, 0, ("/" + name).encode(), 0, None, False)
    wrapper = load_wrapper(_wrapper_pickle("lmcache.v1.multiprocess.custom_types", "CudaIPCWrapper",
                                           cuda_state(handle=handle)))
    assert isinstance(wrapper, CudaIPCWrapper)
    with pytest.raises(ValueError, match="server itself"):
        wrapper.to_tensor(refuse=[(st.st_dev, st.st_ino)])
