"""Settings section: The ZeroMQ data path: its socket, chunking and hashing, workers, per-client caps."""

from __future__ import annotations

from dataclasses import dataclass

from lmcache_frontends.options import (
    check_count,
    check_non_empty,
    check_port,
    check_positive,
    choices_metavar,
    one_of,
    option,
)
from lmcache_frontends.settings.values import (
    HASH_ALGORITHMS,
    PROTOCOLS,
    TRANSFER_MODES,
    check_bytes_or_auto,
    check_copy_threads,
    check_file_mode,
    check_frame_bytes,
    check_ipc_path,
    check_nt_threshold,
    check_tokens_per_key,
)


@dataclass(frozen=True)
class DataPathSettings:
    """The ZeroMQ data path: its socket, chunking and hashing, workers, per-client caps."""

    host: str = option("127.0.0.1", "Address the ZeroMQ data-path socket binds.", check=check_non_empty)
    port: int = option(5555, "Port of the ZeroMQ data-path socket (0 = pick a free port).", check=check_port)
    ipc_path: str | None = option(
        None,
        "Also serve the ZeroMQ data path on this Unix-domain socket (engines on this host connect to "
        "ipc://PATH, a shorter round trip than tcp loopback). A stale socket file is replaced; a live one "
        "or any other file is refused.",
        check=check_ipc_path,
    )
    ipc_mode: str = option(
        "0600", "Permissions (octal) of the --ipc-path socket file, e.g. 0660 for engines in the file's group.",
        check=check_file_mode,
    )
    chunk_size: int = option(256, "Tokens per KV chunk; only full chunks are cached.", check=check_positive)
    hash_algorithm: str = option(
        "blake3",
        "Chunk hash chain: blake3 (LMCache 0.5.0 compatible), xxh3 (faster, not shared with reference "
        "servers), sha256, builtin (needs a fixed PYTHONHASHSEED).",
        metavar=choices_metavar(HASH_ALGORITHMS),
        check=one_of(HASH_ALGORITHMS, ignore_case=True),
    )
    max_workers: int = option(
        4, "Worker threads of the ZeroMQ data path (STORE/RETRIEVE/PREPARE/COMMIT, per-client affinity).", check=check_positive
    )
    worker_reap_timeout_seconds: float = option(
        120.0, "Drop an engine worker's registrations when it has not pinged for this long.", check=check_positive
    )
    supported_transfer_mode: str = option(
        "auto",
        "Transfer modes offered to engines: auto (both), engine_driven (shared-memory slots only), "
        "lmcache_driven (server gathers/scatters the engine's shared KV tensors only).",
        metavar=choices_metavar(TRANSFER_MODES),
        check=one_of(TRANSFER_MODES),
    )
    protocol: str = option(
        "auto",
        "LMCache wire protocol of the data path: auto (each client recognised from its own messages, "
        "0.5.0 and 0.5.6 at once), or 0.5.0 / 0.5.6 for every client.",
        metavar=choices_metavar(PROTOCOLS),
        check=one_of(PROTOCOLS),
    )
    transfer_threads: int = option(
        0,
        "Threads that copy one server-driven gather/scatter in parallel, whole layers each, one torch "
        "thread apiece (0 = the CPUs available, at most 4; 1 = the data-path worker copies alone).",
        check=check_copy_threads,
    )
    nt_copy_threshold: int = option(
        262144,
        "Bytes from which a server-driven transfer copies a contiguous piece with glibc's memmove using "
        "non-temporal stores (glibc.cpu.x86_non_temporal_threshold, set by re-executing the server once at "
        "startup; x86-64 glibc Linux only). 0 = leave glibc's default and copy with torch.",
        check=check_nt_threshold,
    )
    session_ttl_seconds: float = option(
        600.0, "A request's session (tokens, chunk hashes) expires after this long without END_SESSION.", check=check_positive
    )
    max_frame_bytes: int = option(
        256 << 20,
        "Largest ZeroMQ frame the data path accepts (ZeroMQ's MAXMSGSIZE: a bigger one drops the sender's "
        "connection before it is buffered).",
        check=check_frame_bytes,
    )
    max_tokens_per_key: int = option(
        1 << 20, "Token ids one request key may hold; a longer key is refused before it is hashed.",
        check=check_tokens_per_key,
    )
    max_sessions: int = option(
        65536, "Live sessions (and LOOKUP lock leases) of all clients; past it the least recently used goes.",
        check=check_count,
    )
    max_sessions_per_client: int = option(
        8192, "Live sessions one data-path client created; past it that client's least recently used goes.",
        check=check_count,
    )
    max_lookups_per_client: int = option(
        4096, "Live LOOKUPs (unqueried jobs, and leases of unretrieved locks) of one data-path client; past it "
        "its oldest is released.",
        check=check_count,
    )
    max_pending_write_bytes_per_client: int = option(
        0, "Bytes of uncommitted PREPARE_STORE slots one data-path client may hold (0 = a quarter of L1).",
        check=check_bytes_or_auto,
    )
