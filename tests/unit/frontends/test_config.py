"""ServerConfig: defaults, precedence (flag > env > file > default), validation messages, /conf form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmcache_core.errors import ConfigError
from lmcache_frontends.config import OPTIONS, OPTIONS_BY_NAME, ServerConfig, load_config

DOCS = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def test_a_bare_start_gets_the_documented_defaults() -> None:
    config = load_config([], env={})
    assert config == ServerConfig()
    assert (config.host, config.port, config.http_host, config.http_port) == ("127.0.0.1", 5555, "127.0.0.1", 8080)
    assert (config.chunk_size, config.hash_algorithm, config.l1_size_gb) == (256, "blake3", 1.0)
    assert (config.eviction_policy, config.eviction_trigger_watermark, config.eviction_ratio) == ("LRU", 0.8, 0.2)
    assert (config.l1_write_ttl_seconds, config.l1_read_ttl_seconds) == (600.0, 300.0)
    assert (config.l2_adapters, config.l2_store_policy, config.l2_prefetch_max_in_flight) == ((), "default", 8)
    assert (config.worker_reap_timeout_seconds, config.state_dir, config.log_level) == (120.0, None, "INFO")


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_flag_beats_env_beats_file_beats_default(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"server{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"http-port": 1111, "eviction_ratio": 0.5, "chunk-size": 64}))
    else:
        path.write_text('http-port = 1111\neviction_ratio = 0.5\n"chunk-size" = 64\n')
    env = {"LMCACHE_CONFIG": str(path), "LMCACHE_HTTP_PORT": "2222", "LMCACHE_EVICTION_RATIO": "0.25"}

    config = load_config(["--http-port", "3333"], env=env)
    assert config.http_port == 3333  # flag
    assert config.eviction_ratio == 0.25  # env over file
    assert config.chunk_size == 64  # file over default
    assert config.eviction_trigger_watermark == 0.8  # default

    assert load_config([], env=env).http_port == 2222
    assert load_config(["--config", str(path)], env={}).http_port == 1111
    assert load_config([], env={}).http_port == 8080


def test_the_config_flag_beats_the_config_env_var(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"http_port": 1}')
    (tmp_path / "b.json").write_text('{"http_port": 2}')
    config = load_config(["--config", str(tmp_path / "b.json")], env={"LMCACHE_CONFIG": str(tmp_path / "a.json")})
    assert config.http_port == 2


def test_repeatable_l2_adapter_from_flags_env_and_file(tmp_path: Path) -> None:
    mock = {"type": "mock"}
    fs = {"type": "fs", "base_path": "/data"}
    flags = ["--l2-adapter", json.dumps(mock), "--l2-adapter", json.dumps(fs)]
    assert [json.loads(a) for a in load_config(flags, env={}).l2_adapters] == [mock, fs]

    env_list = {"LMCACHE_L2_ADAPTER": json.dumps([fs, mock])}
    assert [json.loads(a) for a in load_config([], env=env_list).l2_adapters] == [fs, mock]
    env_one = {"LMCACHE_L2_ADAPTER": json.dumps(mock)}
    assert [json.loads(a) for a in load_config([], env=env_one).l2_adapters] == [mock]

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"l2-adapter": [mock, fs]}))
    assert [json.loads(a) for a in load_config(["--config", str(path)], env={}).l2_adapters] == [mock, fs]
    # Flags replace the whole list from lower-precedence sources, they do not append to it.
    from_flag = load_config(["--l2-adapter", json.dumps(fs), "--config", str(path)], env=env_list)
    assert [json.loads(a) for a in from_flag.l2_adapters] == [fs]


def test_choices_are_case_insensitive_and_normalised() -> None:
    config = load_config(["--eviction-policy", "isolatedlru", "--log-level", "debug", "--hash-algorithm", "XXH3"], env={})
    assert (config.eviction_policy, config.log_level, config.hash_algorithm) == ("IsolatedLRU", "DEBUG", "xxh3")


def test_port_zero_means_pick_a_free_port() -> None:
    config = load_config(["--http-port", "0", "--port", "0"], env={})
    assert (config.http_port, config.port) == (0, 0)


BAD_FLAGS = [
    ("--port", "70000"),
    ("--port", "abc"),
    ("--http-port", "-1"),
    ("--chunk-size", "0"),
    ("--chunk-size", "1.5"),
    ("--hash-algorithm", "md5"),
    ("--max-workers", "0"),
    ("--worker-reap-timeout-seconds", "0"),
    ("--l1-size-gb", "0"),
    ("--l1-size-gb", "nan"),
    ("--eviction-policy", "FIFO"),
    ("--eviction-trigger-watermark", "0"),
    ("--eviction-trigger-watermark", "1.5"),
    ("--eviction-ratio", "0"),
    ("--eviction-ratio", "2"),
    ("--eviction-interval-seconds", "-1"),
    ("--l1-write-ttl-seconds", "0"),
    ("--l1-read-ttl-seconds", "-5"),
    ("--l2-adapter", "{not json"),
    ("--l2-adapter", "[1, 2]"),
    ("--l2-adapter", '{"base_path": "/x"}'),
    ("--l2-store-policy", "always"),
    ("--l2-prefetch-max-in-flight", "0"),
    ("--log-level", "LOUD"),
    ("--shm-name", "a/b"),
    ("--state-dir", ""),
    ("--ipc-path", "relative/lmcache.sock"),
    ("--ipc-path", "/run/" + "x" * 120),
    ("--ipc-path", "/run/lmcache/"),
    ("--ipc-mode", "rw"),
    ("--ipc-mode", "0400"),
    ("--ipc-mode", "1777"),
    ("--nt-copy-threshold", "4096"),
    ("--nt-copy-threshold", "-1"),
]


@pytest.mark.parametrize(("flag", "value"), BAD_FLAGS)
def test_every_bad_flag_value_is_refused_naming_the_flag(flag: str, value: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config([flag, value], env={})
    assert str(excinfo.value).startswith(flag)


@pytest.mark.parametrize(("flag", "value"), BAD_FLAGS)
def test_every_bad_env_value_is_refused_naming_the_variable_and_flag(flag: str, value: str) -> None:
    spec = next(s for s in OPTIONS if s.flag == flag)
    with pytest.raises(ConfigError) as excinfo:
        load_config([], env={spec.env_var: value})
    assert spec.env_var in str(excinfo.value) and flag in str(excinfo.value)


def test_bad_file_values_and_unknown_keys_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"http_port": true}')
    with pytest.raises(ConfigError, match=r"bad\.json.*http_port \(--http-port\) must be an integer"):
        load_config(["--config", str(path)], env={})
    path.write_text('{"http_prot": 1}')
    with pytest.raises(ConfigError, match=r"bad\.json.*unknown option 'http_prot'"):
        load_config(["--config", str(path)], env={})
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"--config .*bad\.json.*not valid JSON"):
        load_config(["--config", str(path)], env={})
    with pytest.raises(ConfigError, match=r"--config cannot read"):
        load_config(["--config", str(tmp_path / "missing.toml")], env={})


def test_unknown_flags_and_missing_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="--bogus"):
        load_config(["--bogus"], env={})
    with pytest.raises(ConfigError, match="--http-port"):
        load_config(["--http-port"], env={})


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigError, match="^--eviction-ratio must be in"):
        ServerConfig(eviction_ratio=0.0)
    with pytest.raises(ConfigError, match="^--http-port"):
        ServerConfig(http_port=65536)


def test_unrelated_lmcache_env_vars_are_ignored() -> None:
    assert load_config([], env={"LMCACHE_COMMIT_ID": "abc", "LMCACHE_SOMETHING_ELSE": "x"}) == ServerConfig()


def test_public_dict_is_grouped_like_the_reference_and_hides_secrets() -> None:
    adapter = {"type": "s3", "bucket": "kv", "aws_secret_access_key": "hunter2", "nested": {"token": "t"}}
    config = ServerConfig(http_port=9000, l2_adapters=(json.dumps(adapter),))
    public = config.to_public_dict()
    assert set(public) == {"mp", "storage_manager", "observability", "coordinator"}  # 0.5.6's sections
    assert public["mp"]["http_port"] == 9000 and public["mp"]["http_host"] == "127.0.0.1"
    assert public["storage_manager"]["l1_size_gb"] == 1.0
    assert public["observability"]["log_level"] == "INFO"
    shown = public["storage_manager"]["l2_adapters"][0]
    assert shown == {"type": "s3", "bucket": "kv", "aws_secret_access_key": "***", "nested": {"token": "***"}}
    assert "hunter2" not in json.dumps(public)
    # Every option appears exactly once.
    assert sorted(k for section in public.values() for k in section) == sorted(OPTIONS_BY_NAME)


def test_every_option_is_documented_with_its_env_var() -> None:
    text = DOCS.read_text()
    missing = [s.flag for s in OPTIONS if f"`{s.flag}`" not in text or f"`{s.env_var}`" not in text]
    assert missing == []


def test_options_marked_secret_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from lmcache_frontends import config as config_module

    secret = dataclasses.replace(OPTIONS_BY_NAME["state_dir"], secret=True)
    monkeypatch.setattr(config_module, "OPTIONS", tuple(secret if s.name == "state_dir" else s for s in OPTIONS))
    assert ServerConfig(state_dir="/srv/hunter2").to_public_dict()["mp"]["state_dir"] == "***"
    assert ServerConfig().to_public_dict()["mp"]["state_dir"] is None  # unset stays visible as unset


def test_the_server_re_executes_itself_once_with_the_copy_tunable(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmcache_adapters.transfer import ntcopy
    from lmcache_frontends import server

    calls: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(server.os, "execve", lambda exe, args, env: calls.append((exe, list(args), dict(env))))
    monkeypatch.setattr(ntcopy, "supported", lambda: True)
    monkeypatch.delenv("_LMCACHE_SERVER_REEXECUTED", raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    config = load_config(["--port", "0"], env={})
    server.reexec_with_copy_tunables(config, ["-m", "lmcache_frontends.server", "--port", "0"])
    (exe, args, env), = calls
    assert args[1:] == ["-m", "lmcache_frontends.server", "--port", "0"]
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.cpu.x86_non_temporal_threshold=0x40000"
    # Not again: the tunable is in effect, the re-executed process says so, or it is turned off.
    monkeypatch.setenv("GLIBC_TUNABLES", env["GLIBC_TUNABLES"])
    server.reexec_with_copy_tunables(config, ["x"])
    monkeypatch.setenv("GLIBC_TUNABLES", "")
    monkeypatch.setenv("_LMCACHE_SERVER_REEXECUTED", "1")
    server.reexec_with_copy_tunables(config, ["x"])
    monkeypatch.delenv("_LMCACHE_SERVER_REEXECUTED")
    server.reexec_with_copy_tunables(load_config(["--nt-copy-threshold", "0"], env={}), ["x"])
    monkeypatch.setattr(ntcopy, "supported", lambda: False)
    server.reexec_with_copy_tunables(config, ["x"])
    assert len(calls) == 1


# --------------------------------------------------------------------------- L1 on Device-DAX


DEVDAX = {"type": "DEVDAX", "tag": "dax0", "size_gb": 0.5, "path": "/dev/dax0.0"}


def test_l1_devdax_path_takes_the_size_of_l1_size_gb_and_refuses_a_shm_name() -> None:
    config = load_config(["--l1-devdax-path", "/dev/dax0.0", "--l1-size-gb", "64"], env={})
    assert (config.l1_devdax_path, config.l1_size_gb) == ("/dev/dax0.0", 64.0)
    assert load_config(["--l1-devdax-path", "/dev/dax0.0", "--shm-name", ""], env={}).shm_name == ""
    # LMCache 0.5.6's Device-DAX command line, unchanged:
    assert load_config(["--l1-devdax-path", "/dev/dax0.0", "--no-l1-use-lazy", "--shm-name", ""], env={}).no_l1_use_lazy
    with pytest.raises(ConfigError, match="--l1-devdax-path cannot be combined with --shm-name 'node0'"):
        load_config(["--l1-devdax-path", "/dev/dax0.0", "--shm-name", "node0"], env={})
    assert load_config([], env={"LMCACHE_L1_DEVDAX_PATH": "/data/l1.img"}).l1_devdax_path == "/data/l1.img"


def test_a_devdax_l1_manager_sets_the_l1_fields_it_stands_for() -> None:
    raw = {**DEVDAX, "eviction": {"eviction_policy": "noop", "eviction_ratio": 0.5}, "read_ttl_seconds": 7}
    config = load_config(["--l1-manager", json.dumps(raw)], env={})
    assert (config.l1_devdax_path, config.l1_size_gb) == ("/dev/dax0.0", 0.5)
    assert (config.eviction_policy, config.eviction_ratio, config.l1_read_ttl_seconds) == ("noop", 0.5, 7.0)
    assert ServerConfig(**{o.name: getattr(config, o.name) for o in OPTIONS}) == config  # folding is idempotent
    assert config.to_public_dict()["storage_manager"]["l1_devdax_path"] == "/dev/dax0.0"
    dram = load_config(["--l1-manager", '{"type": "DRAM", "tag": "_default", "size_gb": 2, "shm_name": "n0"}'], env={})
    assert (dram.l1_devdax_path, dram.l1_size_gb, dram.shm_name) == (None, 2.0, "n0")
    from_env = load_config([], env={"LMCACHE_L1_MANAGER": json.dumps(DEVDAX)})
    assert from_env.l1_devdax_path == "/dev/dax0.0"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--l1-manager", json.dumps({**DEVDAX, "type": "GDS"})], "GDS .* is not supported by this server"),
        (["--l1-manager", json.dumps({**DEVDAX, "type": "NVME"})], "requires type DRAM, DEVDAX or GDS"),
        (["--l1-manager", json.dumps({**DEVDAX, "tag": "_default"})], "only DRAM can use the _default tag"),
        (["--l1-manager", json.dumps({k: v for k, v in DEVDAX.items() if k != "path"})], "path must be a non-empty string"),
        (["--l1-manager", json.dumps({**DEVDAX, "colour": 1})], r"unknown L1 fields for type DEVDAX: \['colour'\]"),
        (["--l1-manager", json.dumps({**DEVDAX, "size_gb": 0})], "size_gb must be a number > 0"),
        (["--l1-manager", json.dumps({**DEVDAX, "align_bytes": 8192})], "align_bytes must be a power of two up to 4096"),
        (["--l1-manager", json.dumps({**DEVDAX, "eviction": {"eviction_policy": "ARC"}})], "eviction_policy must be one of"),
        (["--l1-manager", json.dumps({**DEVDAX, "eviction": {"policy": "LRU"}})], "eviction must contain"),
        (["--l1-manager", '{"type": "DRAM", "tag": "t", "size_gb": 1, "use_hugepages": true}'], "use_hugepages is not supported"),
        (["--l1-manager", "[1]"], 'must be a JSON object with a string "type"'),
        (["--l1-manager", json.dumps(DEVDAX), "--l1-manager", json.dumps({**DEVDAX, "tag": "b"})], "may be given once"),
        (["--l1-manager", json.dumps(DEVDAX), "--l1-size-gb", "2"], r"use either --l1-manager or the legacy L1 flags \(--l1-size-gb\)"),
        (["--l1-manager", json.dumps(DEVDAX), "--l1-devdax-path", "/dev/dax1.0"], r"legacy L1 flags \(--l1-devdax-path\)"),
    ],
)
def test_bad_l1_managers_stop_the_start_naming_the_problem(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(argv, env={})


def test_coordinator_flags_of_both_lmcache_generations() -> None:
    v050 = load_config(["--coordinator-url", "http://coord:9300/", "--coordinator-l2-event-reporting",
                        "--coordinator-l2-event-flush-interval", "0.3"], env={"LMCACHE_COORDINATOR_EVENT_REPORTING": "false"})
    assert (v050.coordinator_url, v050.coordinator_event_reporting, v050.coordinator_event_flush_interval) == (
        "http://coord:9300", True, 0.3)
    v056 = load_config([], env={"LMCACHE_COORDINATOR_URL": "http://c:1", "LMCACHE_COORDINATOR_ADVERTISE_IP": "10.0.0.5",
                                "LMCACHE_COORDINATOR_HEARTBEAT_INTERVAL": "2", "LMCACHE_INSTANCE_ID": "node-7"})
    assert (v056.coordinator_advertise_ip, v056.coordinator_heartbeat_interval, v056.instance_id) == ("10.0.0.5", 2.0, "node-7")
    assert v056.coordinator_event_reporting is True  # on by default here
    assert load_config([], env={"LMCACHE_COORDINATOR_EVENT_REPORTING": "0"}).coordinator_event_reporting is False
    # The new spelling wins over the old one.
    both = load_config(["--coordinator-event-flush-interval", "2", "--coordinator-l2-event-flush-interval", "0.3"], env={})
    assert both.coordinator_event_flush_interval == 2.0
    assert ServerConfig(coordinator_token="s3cr3t-t0ken").to_public_dict()["coordinator"]["coordinator_token"] == "***"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--coordinator-url", "coord:9300"], "--coordinator-url must be an http:// or https:// URL"),
        (["--coordinator-heartbeat-interval", "0"], "--coordinator-heartbeat-interval must be > 0"),
        (["--coordinator-event-transport", "kafka"], "--coordinator-event-transport kafka is not supported"),
        (["--coordinator-max-buffered-events", "0"], "--coordinator-max-buffered-events must be an integer >= 1"),
        (["--instance-id", "a/b"], "--instance-id must be 1-256 characters"),
    ],
)
def test_bad_coordinator_values_stop_the_start_naming_the_flag(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from lmcache_frontends.server import main

    assert main(argv) == 1
    assert message in capsys.readouterr().err
