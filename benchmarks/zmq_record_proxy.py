"""A recording ZeroMQ proxy: engines connect to it, it forwards to a server and logs every frame set.

    python benchmarks/zmq_record_proxy.py --listen tcp://127.0.0.1:23556 \
        --upstream tcp://127.0.0.1:23555 --out capture.jsonl [--protocol 0.5.6]

A ROUTER faces the clients; each client identity gets its own DEALER to the upstream ROUTER, so the
server sees one peer per client exactly as without the proxy. Every frame set, each direction, is
written as one JSON line:

    {"dir": "c2s"|"s2c", "client": "<identity hex>", "op": <decoded op frame>, "type": "<name>",
     "nframes": N, "frames": [{"len": n, "hex_head": "...", "hex": "<whole frame>"?,
     "decoded": <value>}, ...], "t": <seconds since start>}

The identity frame is left out of `frames` (it is the `client` field). `hex` holds the whole frame
when it is at most --full-bytes long (test vectors re-decode it byte for byte); `decoded` renders
msgpack with bin as {"bin": len, "hex_head": ...} and ext types as {"ext": code, "len": n}.
`type` names the op frame with the tables of --protocol (0.5.0 numbers, 0.5.6 numbers or names).
Stops on SIGINT/SIGTERM or after --seconds; bounded: it never buffers more than ZeroMQ's HWMs.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import msgpack
import zmq

# Op names for the `type` field only (the codecs own the real tables).
_V050_NAMES = {
    1: "REGISTER_KV_CACHE", 2: "UNREGISTER_KV_CACHE", 3: "STORE", 4: "RETRIEVE", 5: "LOOKUP",
    6: "QUERY_PREFETCH_STATUS", 7: "WAIT_PREFETCH_STATUS", 8: "QUERY_PREFETCH_LOOKUP_HITS",
    9: "FREE_LOOKUP_LOCKS", 10: "END_SESSION", 11: "REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT",
    12: "UNREGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT", 13: "PREPARE_STORE", 14: "COMMIT_STORE",
    15: "PREPARE_RETRIEVE", 16: "COMMIT_RETRIEVE", 17: "CLEAR", 18: "GET_CHUNK_SIZE", 19: "PING",
    20: "REPORT_BLOCK_ALLOCATION", 21: "NOOP",
}


def _v056_names() -> dict[int, str]:
    from lmcache_frontends.zmq.codec_v056 import LEGACY_OPERATION_IDS  # noqa: PLC0415

    return {number: name for name, number in LEGACY_OPERATION_IDS.items()}


def render(value: Any) -> Any:
    """A msgpack value as JSON: bin and ext types summarised, everything else as is."""
    if isinstance(value, bytes):
        return {"bin": len(value), "hex_head": value[:32].hex()}
    if isinstance(value, msgpack.ExtType):
        return {"ext": value.code, "len": len(value.data)}
    if isinstance(value, dict):
        return {str(k): render(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [render(v) for v in value]
    return value


def describe_frame(frame: bytes, full_bytes: int) -> dict[str, Any]:
    out: dict[str, Any] = {"len": len(frame), "hex_head": frame[:64].hex()}
    if len(frame) <= full_bytes:
        out["hex"] = frame.hex()
    try:
        out["decoded"] = render(msgpack.unpackb(frame, raw=False, strict_map_key=False))
    except Exception as exc:  # a frame that is not msgpack is recorded as such
        out["undecodable"] = str(exc)
    return out


class Recorder:
    """Writes one JSON line per frame set."""

    def __init__(self, out: TextIO, names: dict[int, str], full_bytes: int) -> None:
        self.out = out
        self.names = names
        self.full_bytes = full_bytes
        self.t0 = time.monotonic()
        self.count = 0

    def record(self, direction: str, identity: bytes, frames: list[bytes]) -> None:
        op: Any = None
        if len(frames) >= 2:
            try:
                op = msgpack.unpackb(frames[1], raw=False)
            except Exception:
                op = None
        name = op if isinstance(op, str) else self.names.get(op, str(op)) if isinstance(op, int) else str(op)
        line = {
            "dir": direction,
            "client": identity.hex(),
            "op": op,
            "type": name.upper() if isinstance(name, str) else name,
            "nframes": len(frames),
            "frames": [describe_frame(f, self.full_bytes) for f in frames],
            "t": round(time.monotonic() - self.t0, 4),
        }
        self.out.write(json.dumps(line) + "\n")
        self.out.flush()
        self.count += 1


def run(
    listen: str, upstream: str, recorder: Recorder, seconds: float | None, stop_event: threading.Event | None = None,
    on_bound: Callable[[str], None] | None = None,
) -> None:
    """Forward and record until SIGINT/SIGTERM (main thread), `stop_event`, or `seconds`.
    `listen` may end in `:*` (any free port); `on_bound` gets the endpoint actually bound."""
    ctx = zmq.Context()
    front = ctx.socket(zmq.ROUTER)
    front.setsockopt(zmq.LINGER, 0)
    front.bind(listen)
    if on_bound is not None:
        on_bound(front.getsockopt_string(zmq.LAST_ENDPOINT))
    backs: dict[bytes, zmq.Socket[Any]] = {}
    owner: dict[zmq.Socket[Any], bytes] = {}
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
    deadline = time.monotonic() + seconds if seconds else None
    print(f"proxy {listen} -> {upstream}", file=sys.stderr, flush=True)
    try:
        while not stop and not (stop_event is not None and stop_event.is_set()) and (
            deadline is None or time.monotonic() < deadline
        ):
            for sock, _ in poller.poll(200):
                if sock is front:
                    identity, *frames = front.recv_multipart()
                    back = backs.get(identity)
                    if back is None:
                        back = ctx.socket(zmq.DEALER)
                        back.setsockopt(zmq.LINGER, 0)
                        back.connect(upstream)
                        backs[identity] = back
                        owner[back] = identity
                        poller.register(back, zmq.POLLIN)
                    recorder.record("c2s", identity, frames)
                    back.send_multipart(frames)
                else:
                    frames = sock.recv_multipart()
                    identity = owner[sock]
                    recorder.record("s2c", identity, frames)
                    front.send_multipart([identity, *frames])
    finally:
        for back in backs.values():
            back.close()
        front.close()
        ctx.term()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="endpoint the clients connect to (tcp://127.0.0.1:PORT)")
    parser.add_argument("--upstream", required=True, help="the server's endpoint")
    parser.add_argument("--out", required=True, type=Path, help="JSON-lines file to append to")
    parser.add_argument("--protocol", choices=("0.5.0", "0.5.6"), default="0.5.6", help="tables that name the ops")
    parser.add_argument("--full-bytes", type=int, default=16384, help="record whole frames up to this size")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    args = parser.parse_args(argv)
    names = _V050_NAMES if args.protocol == "0.5.0" else _v056_names()
    with args.out.open("a") as out:
        recorder = Recorder(out, names, args.full_bytes)
        run(args.listen, args.upstream, recorder, args.seconds)
    print(f"recorded {recorder.count} frame sets to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
