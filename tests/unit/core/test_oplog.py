"""The data path's per-operation DEBUG lines: off by default, one line per operation when on."""

from __future__ import annotations

import logging

import pytest

from lmcache_core.oplog import LOGGER_NAME, OperationLog


def test_off_at_info_and_one_line_per_operation_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    ops = OperationLog()
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        assert not ops.enabled
        ops.record("STORE", client="c1", keys=4, duration_s=0.001)
    assert caplog.records == []
    with caplog.at_level(logging.DEBUG, logger=LOGGER_NAME):
        assert ops.enabled
        ops.record("RETRIEVE", client="c1", keys=4, duration_s=0.0012345, ok=False, request_id="req-7", model_name="m")
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == "op=RETRIEVE client=c1 keys=4 duration_ms=1.234 ok=false model_name=m request_id=req-7"


def test_disabled_record_formats_nothing() -> None:
    class Loud:
        def __str__(self) -> str:
            raise AssertionError("formatted while disabled")

    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    try:
        OperationLog().record("LOOKUP", client="c", keys=1, duration_s=0.0, odd=Loud())
    finally:
        logger.setLevel(logging.NOTSET)
