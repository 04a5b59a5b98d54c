"""Seed 003's words for runs and steps, shared by the bridge (monitoring updates)
and the runs API: the engine's statuses (streams.md, "Instance status") as
PENDING/RUNNING/COMPLETED/FAILED/CANCELLED, and its timestamps as seed 003 writes
them. Pure."""

from __future__ import annotations

import datetime
from typing import Final

PENDING: Final = "PENDING"
RUNNING: Final = "RUNNING"
COMPLETED: Final = "COMPLETED"
FAILED: Final = "FAILED"
CANCELLED: Final = "CANCELLED"
# Queued runs (waiting for a concurrency slot) are pending, paused and compensating runs still running
# to a seed 003 client; a compensated one has failed.
RUN_STATUS: Final = {
    "created": PENDING, "queued": PENDING, "running": RUNNING, "paused": RUNNING, "compensating": RUNNING, "failed": FAILED,
    "compensated": FAILED, "completed": COMPLETED, "cancelled": CANCELLED,
}
FINAL_RUN_STATUSES: Final = frozenset({COMPLETED, FAILED, CANCELLED})
# A step attempt's status in the steps read model; a skipped step never ran and has no row.
STEP_STATUS: Final = {
    "scheduled": RUNNING, "waiting": RUNNING, "dispatched": RUNNING, "completed": COMPLETED, "failed": FAILED,
    "cancelled": CANCELLED,
}


def iso(ms: int | None) -> str | None:
    """ISO-8601 UTC with milliseconds (``2026-01-02T03:04:05.678Z``), as seed 003's timestamps."""
    if ms is None:
        return None
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def step_execution_id(run_id: str, step: str, attempt: int | None, iteration: int | None = None) -> str:
    """One attempt of one step of one run (and one loop item, for a loop)."""
    base = f"{run_id}:{step}:{attempt}"
    return base if iteration is None else f"{base}:{iteration}"
