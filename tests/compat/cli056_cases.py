"""LMCache 0.5.6's own CLI (`lmcache describe|ping|kvcache|quota`), run against a server: the
commands, run in this order, and how two runs' outputs are compared.

`record_cli056.py` records what the commands print against the 0.5.6 reference (in
`cli056_outputs.json`); `tests/e2e/test_cli056_e2e.py` runs them against our real server and
compares: the same exit code, the same title, and every field the reference filled filled here
too (we may fill more: `Eviction policy`, which 0.5.6's own server leaves N/A). Commands marked
`exact` must also print the same values."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

DOWN_URL = "http://127.0.0.1:9"  # nothing listens on the discard port


@dataclass(frozen=True)
class CLICase:
    """One invocation: `argv` with `{url}` standing for the server's admin URL."""

    name: str
    argv: tuple[str, ...]
    json_output: bool = False
    exact: tuple[str, ...] = ()
    down: bool = False
    needs_registration: bool = False

    def command(self, url: str) -> list[str]:
        return [a.replace("{url}", DOWN_URL if self.down else url) for a in self.argv]


def _both(name: str, *argv: str, exact: tuple[str, ...] = (), json_at: int | None = None, **kw: Any) -> list[CLICase]:
    # `--format json` goes after the subcommand's own arguments, or (kvcache) before its action.
    json_argv = list(argv)
    if json_at is None:
        json_argv += ["--format", "json"]
    else:
        json_argv[json_at:json_at] = ["--format", "json"]
    return [CLICase(name, argv, exact=exact, **kw), CLICase(f"{name}-json", tuple(json_argv), json_output=True, exact=exact, **kw)]


CLI_CASES: tuple[CLICase, ...] = (
    *_both("ping", "ping", "kvcache", "--url", "{url}", exact=("status",)),
    *_both("kvcache-clear", "kvcache", "clear", "--url", "{url}", exact=("status",), json_at=1),
    *_both("quota-set", "quota", "set", "alice", "--limit-gb", "1.5", "--url", "{url}", exact=("cache_salt", "limit_gb", "status")),
    *_both("quota-get", "quota", "get", "alice", "--url", "{url}", exact=("cache_salt", "limit_gb", "exists")),
    *_both("quota-list", "quota", "list", "--url", "{url}", exact=("quotas",)),
    *_both("quota-delete", "quota", "delete", "alice", "--url", "{url}", exact=("cache_salt", "status")),
    CLICase("quota-delete-again-json", ("quota", "delete", "alice", "--url", "{url}", "--format", "json"), json_output=True, exact=("cache_salt", "status")),
    CLICase("quota-list-empty-json", ("quota", "list", "--url", "{url}", "--format", "json"), json_output=True, exact=("info",)),
    CLICase("quota-get-default-json", ("quota", "get", "_default", "--url", "{url}", "--format", "json"), json_output=True, exact=("cache_salt", "limit_gb", "exists")),
    CLICase("quota-set-negative", ("quota", "set", "alice", "--limit-gb", "-1", "--url", "{url}")),
    *_both("describe", "describe", "kvcache", "--url", "{url}", exact=("health", "engine_type", "chunk_size", "models", "kernel_groups"), needs_registration=True),
    CLICase("ping-down", ("ping", "kvcache", "--url", "{url}"), down=True),
    CLICase("describe-down", ("describe", "kvcache", "--url", "{url}"), down=True),
    CLICase("kvcache-clear-down", ("kvcache", "clear", "--url", "{url}"), down=True),
    CLICase("quota-list-down", ("quota", "list", "--url", "{url}"), down=True),
)


def fields(case: CLICase, stdout: str) -> dict[str, Any]:
    """What a command printed, as {field: value}: the JSON document's metrics flattened
    (list sections as `section[i].field`), or the terminal's `Label: value` lines (section
    headers as `--- <title>`); `title` is the title either way."""
    if case.json_output:
        try:
            doc = json.loads(stdout)
        except ValueError:
            return {"unparsed": stdout}
        out: dict[str, Any] = {"title": doc.get("title")}
        for key, value in (doc.get("metrics") or {}).items():
            if isinstance(value, list) and all(isinstance(v, dict) for v in value):
                for i, item in enumerate(value):
                    out.update({f"{key}[{i}].{k}": v for k, v in item.items()})
            else:
                out[key] = value
        return out
    out = {}
    for line in stdout.splitlines():
        stripped = line.strip()
        if stripped.startswith("=") and stripped.endswith("="):
            title = stripped.strip("=").strip()
            if title:
                out["title"] = title
        elif stripped.startswith("-") and stripped.endswith("-"):
            out["--- " + stripped.strip("-").strip()] = True
        elif ":" in stripped:
            label, _, value = stripped.partition(":")
            out[label.strip()] = value.strip()
    return out


def filled(values: dict[str, Any]) -> set[str]:
    """The fields with a value (N/A and null are not filled)."""
    return {k for k, v in values.items() if v not in (None, "N/A", "")}
