"""Schemathesis over `/openapi.json` of a real server: every operation, with generated inputs,
answers without a 500 and as its declared schema says — on an open server, and on a server with
tokens called with an admin token. Bounded: a few examples per operation, derandomized."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from serverproc import ServerProcess

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

# What the issue asks for: no 500, every response as declared (status, content type, headers,
# body). Not `positive_data_acceptance`: several request schemas are looser than the routes'
# validation (a salt may not contain "\\", a level must be a log level...), so a schema-valid
# request can get a documented 400; tightening those schemas is a separate change.


def not_an_undeclared_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """`not_a_server_error`, except a 501 or 503 the operation declares (LMCache 0.5.6's
    `POST /cache/prefetches` answers 503 for a model no engine registered on the node)."""
    declared = case.operation.definition.raw.get("responses", {})
    if response.status_code in (501, 503) and str(response.status_code) in declared:
        return None
    return not_a_server_error(ctx, response, case)  # type: ignore[no-any-return]


CHECKS = [not_an_undeclared_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]

ADMIN_SECRET = "fuzz-admin-0123456789abcdef"
MAX_EXAMPLES = 8
TIME_BUDGET_S = 120.0
# Operations left out, with the reason: none today. `/run_script` is fuzzed too: it is off
# (403) unless --enable-run-script, which these servers do not pass.
EXCLUDED: set[tuple[str, str]] = set()


def _fuzz(url: str, headers: dict[str, str]) -> tuple[int, list[str]]:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=headers)
    failures: list[str] = []
    calls = 0
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        key = (operation.method.upper(), operation.path)
        if key in EXCLUDED:
            continue
        assert time.monotonic() - started < TIME_BUDGET_S, f"fuzzing ran past {TIME_BUDGET_S} s at {key}"

        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            nonlocal calls
            calls += 1
            response = case.call(base_url=url, headers=headers, timeout=30)
            assert response.status_code < 500 or response.status_code in (501, 503), (
                f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
            )
            case.validate_response(response, checks=CHECKS)

        try:
            run()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # schemathesis raises a BaseExceptionGroup; collect them all
            failures.append(f"{key[0]} {key[1]}: {str(exc)[:800]}")
    return calls, failures


def test_fuzz_an_open_server(server_process: ServerProcess) -> None:
    calls, failures = _fuzz(server_process.url, {})
    assert failures == []
    assert calls > 100


def test_fuzz_a_server_with_tokens_as_admin(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--l2-adapter", '{"type": "mock"}', "--admin-token", ADMIN_SECRET, "--read-token", "fuzz-read-0123456789abcdef")
    calls, failures = _fuzz(server.url, {"Authorization": f"Bearer {ADMIN_SECRET}"})
    assert failures == []
    assert calls > 100
    assert server.proc.poll() is None  # still serving after all that
