"""The ingest gate as a pure decision: given the stream cursors, which batches to apply, which
are replays or stale, and where a restart must fence the old incarnation first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lmcache_core.fleet.model import BatchPlan, Cursor, EventBatch, Verdict, first_cursor


def plan_batches(batches: Sequence[EventBatch], cursors: Mapping[str, Cursor]) -> list[BatchPlan]:
    """One plan per batch, in order, simulating each instance's cursor through the list."""
    current = dict(cursors)
    plans = []
    for batch in batches:
        cursor = current.get(batch.instance_id)
        if cursor is None:
            current[batch.instance_id] = first_cursor(batch.incarnation, batch.seq)
            plans.append(BatchPlan(batch))
            continue
        verdict = cursor.verdict(batch.incarnation, batch.seq)
        if verdict is not Verdict.APPLIED:
            plans.append(BatchPlan(batch, verdict=verdict))
            continue
        fence_below = batch.incarnation if batch.incarnation > cursor.incarnation else None
        current[batch.instance_id] = cursor.advanced(batch.incarnation, batch.seq)
        plans.append(BatchPlan(batch, fence_below))
    return plans
