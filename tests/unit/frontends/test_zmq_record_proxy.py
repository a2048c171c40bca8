"""benchmarks/zmq_record_proxy.py records real frame sets in both directions over real sockets."""

from __future__ import annotations

import importlib.util
import io
import json
import threading
from pathlib import Path
from typing import Any

import msgpack
import zmq

PROXY = Path(__file__).resolve().parents[3] / "benchmarks" / "zmq_record_proxy.py"


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("zmq_record_proxy", PROXY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_proxy_forwards_and_records_each_client_and_direction() -> None:
    proxy = _load()
    ctx = zmq.Context()
    upstream = ctx.socket(zmq.ROUTER)
    up_port = upstream.bind_to_random_port("tcp://127.0.0.1")
    out = io.StringIO()
    recorder = proxy.Recorder(out, proxy._v056_names(), full_bytes=64)
    stop, bound = threading.Event(), threading.Event()
    endpoint: list[str] = []

    def on_bound(where: str) -> None:
        endpoint.append(where)
        bound.set()

    thread = threading.Thread(
        target=proxy.run, args=("tcp://127.0.0.1:*", f"tcp://127.0.0.1:{up_port}", recorder, 20.0, stop, on_bound)
    )
    thread.start()
    assert bound.wait(10)
    client = ctx.socket(zmq.DEALER)
    client.connect(endpoint[0])
    try:
        big = msgpack.packb(b"x" * 100, use_bin_type=True)
        client.send_multipart([b"\x00", msgpack.packb(22), msgpack.packb(None), big])
        assert upstream.poll(10_000)
        ident, *frames = upstream.recv_multipart()
        assert frames == [b"\x00", msgpack.packb(22), msgpack.packb(None), big]  # forwarded unchanged
        upstream.send_multipart([ident, b"\x00", msgpack.packb(22), b"\xc3"])
        assert client.poll(10_000)
        assert client.recv_multipart() == [b"\x00", msgpack.packb(22), b"\xc3"]
    finally:
        stop.set()
        thread.join(10)
        client.close(0)
        upstream.close(0)
        ctx.term()
    c2s, s2c = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (c2s["dir"], c2s["type"], c2s["op"], c2s["nframes"]) == ("c2s", "PING", 22, 4)
    assert c2s["frames"][2]["decoded"] is None and c2s["frames"][2]["hex"] == "c0"
    assert "hex" not in c2s["frames"][3] and c2s["frames"][3]["decoded"] == {"bin": 100, "hex_head": "78" * 32}
    assert (s2c["dir"], s2c["client"], s2c["frames"][2]["decoded"]) == ("s2c", c2s["client"], True)
