"""Status composition: nesting, health propagation, broken reporters."""

from __future__ import annotations

from typing import Any

from lmcache_core.status import compose_status, safe_report, unhealthy_paths


class Reporter:
    def __init__(self, report: Any = None, exc: Exception | None = None) -> None:
        self.report, self.exc = report, exc

    def report_status(self) -> Any:
        if self.exc:
            raise self.exc
        return self.report


def test_parent_is_healthy_only_when_every_child_is() -> None:
    ok = Reporter({"is_healthy": True, "n": 1})
    bad = Reporter({"is_healthy": False})
    assert compose_status({"x": 1}, {"a": ok})["is_healthy"] is True
    tree = compose_status({"x": 1}, {"a": ok, "b": bad})
    assert tree["is_healthy"] is False
    assert tree["a"] == {"is_healthy": True, "n": 1}
    assert list(tree)[0] == "is_healthy"


def test_own_health_flag_counts() -> None:
    assert compose_status({}, {}, healthy=False)["is_healthy"] is False


def test_a_raising_reporter_becomes_an_unhealthy_node() -> None:
    report = safe_report(Reporter(exc=RuntimeError("disk gone")))
    assert report["is_healthy"] is False and "disk gone" in report["error"]


def test_a_report_without_health_is_unhealthy() -> None:
    assert safe_report(Reporter({"n": 1}))["is_healthy"] is False
    assert safe_report(Reporter([1, 2]))["is_healthy"] is False


def test_unhealthy_paths_point_at_the_deepest_failing_nodes() -> None:
    inner = Reporter(compose_status({}, {"leaf": Reporter({"is_healthy": False})}))
    tree = compose_status({}, {"mid": inner, "ok": Reporter({"is_healthy": True})})
    assert unhealthy_paths(tree) == ["mid.leaf"]
