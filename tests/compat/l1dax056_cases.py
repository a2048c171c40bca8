"""LMCache 0.5.6's L1-on-Device-DAX routes, replayed in order on a server whose L1 is a 64 MiB
regular file standing in for a Device-DAX device: adds (good, duplicate, alias, missing, empty,
too small, not a device), status, removes (unknown, primary, alias, empty arena, arena with live
objects) and bad bodies. The answers of the 0.5.6 reference were recorded by
`record_l1dax056.py` into `l1dax056_vectors.json`; `test_l1dax056_vectors.py` replays the same
steps on our server and compares.

Paths hold `{dax}`, the directory of the device files (made by `prepare_devices`). The step
`STORE` puts four 32 MiB objects into L1 (the reference: its own bench, two engine-driven
requests of 512 tokens in pickle mode; ours: the same objects written into L1), so that two land
in the primary arena and two in `second.img`.

`deviation` marks a step answered differently on purpose: our status, and why."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

PRIMARY_BYTES = 64 << 20
"""The reference runs with `--l1-size-gb 0.0625`."""
OBJECT_BYTES = 32 << 20
"""One chunk of the reference bench's default KV shape (2 x 32 layers x 256 tokens x 8 x 128 fp16)."""
STORE = "store"

DEVICE_FILES = {"primary.img": 256 << 20, "second.img": 256 << 20, "third.img": 256 << 20, "fourth.img": 64 << 20, "empty.img": 0}


def prepare_devices(directory: str) -> None:
    """The device files (sparse), a symbolic link to third.img and a directory, in `directory`."""
    for name, size in DEVICE_FILES.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.truncate(size)
    link = os.path.join(directory, "third-link.img")
    if not os.path.lexists(link):
        os.symlink(os.path.join(directory, "third.img"), link)
    os.makedirs(os.path.join(directory, "a-directory"), exist_ok=True)


@dataclass(frozen=True)
class Step:
    """One request of the scenario (or the STORE action, `method` == STORE)."""

    name: str
    method: str
    path: str = ""
    json: Any = None
    deviation: dict[str, Any] = field(default_factory=dict)

    def body(self, dax_dir: str) -> Any:
        """The JSON body with `{dax}` replaced by `dax_dir`."""
        if self.json is None:
            return None
        return {k: v.replace("{dax}", dax_dir) if isinstance(v, str) else v for k, v in self.json.items()}


ADD, REMOVE, STATUS = "/reconfigure/dax/l1/add", "/reconfigure/dax/l1/remove", "/reconfigure/dax/l1/status"

STEPS: tuple[Step, ...] = (
    Step("status-primary-only", "GET", STATUS),
    Step("add-second", "POST", ADD, {"device_path": "{dax}/second.img", "size": "128MiB"}),
    Step("add-second-again", "POST", ADD, {"device_path": "{dax}/second.img", "size": "64MiB"}),
    Step("add-third-one-page", "POST", ADD, {"device_path": "{dax}/third.img", "size": 4096}),
    Step("add-third-through-a-symlink", "POST", ADD, {"device_path": "{dax}/third-link.img", "size": 4096}),
    Step("add-primary", "POST", ADD, {"device_path": "{dax}/primary.img", "size": 4096}),
    Step("add-missing-file", "POST", ADD, {"device_path": "{dax}/nope.img", "size": 4096}),
    Step("add-a-directory", "POST", ADD, {"device_path": "{dax}/a-directory", "size": 4096}),
    Step("add-empty-file", "POST", ADD, {"device_path": "{dax}/empty.img", "size": 4096}),
    Step("add-empty-path", "POST", ADD, {"device_path": "", "size": 4096}),
    Step("add-a-character-device", "POST", ADD, {"device_path": "/dev/null", "size": 4096}),
    Step("add-larger-than-the-file", "POST", ADD, {"device_path": "{dax}/fourth.img", "size": "1GiB"}),
    Step("add-bad-size", "POST", ADD, {"device_path": "{dax}/fourth.img", "size": "bogus"}),
    Step("add-zero-size", "POST", ADD, {"device_path": "{dax}/fourth.img", "size": 0}),
    Step("status-three-arenas", "GET", STATUS),
    Step("remove-unknown", "POST", REMOVE, {"device_path": "{dax}/nope.img"}),
    Step("remove-primary", "POST", REMOVE, {"device_path": "{dax}/primary.img"}),
    Step("remove-through-a-symlink", "POST", REMOVE, {"device_path": "{dax}/third-link.img"}),
    Step("remove-empty-arena", "POST", REMOVE, {"device_path": "{dax}/third.img", "mode": "drain"}),
    Step("remove-removed-arena", "POST", REMOVE, {"device_path": "{dax}/third.img"}),
    Step(
        "remove-with-force",
        "POST",
        REMOVE,
        {"device_path": "{dax}/nope.img", "force": True},
        deviation={"status": 404, "why": "force is accepted here (0.5.6 forbids the field: 422); the path is unknown"},
    ),
    Step("remove-mode-evict", "POST", REMOVE, {"device_path": "{dax}/second.img", "mode": "evict"}),
    Step(STORE, STORE),
    Step("status-with-objects", "GET", STATUS),
    # 0.5.6 leaves the arena draining until its objects happen to be evicted; here its unlocked
    # objects leave L1 at once and the arena is unmapped: same status code and body shape, but
    # `state` is "removed" and the arena is gone from the next status.
    Step("remove-arena-with-live-objects", "POST", REMOVE, {"device_path": "{dax}/second.img"}),
    Step("status-after-removing-it", "GET", STATUS),
    Step(
        "remove-it-again",
        "POST",
        REMOVE,
        {"device_path": "{dax}/second.img"},
        deviation={"status": 404, "why": "its objects left at once and the arena is unmapped (0.5.6 still drains it: 200)"},
    ),
)
