"""The executions read model: one record per instance (workflow and version,
status, correlation id, running steps, timestamps, attempt counts, errors,
output), stored as canonical JSON in the field ``executions`` of the
instance's view hash, with the listing indexes (``listings.py``) kept in the
same script call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from engine.core.model import (
    ChildStarted,
    CommandRejected,
    CompensationStarted,
    StepCompleted,
    StepDelayed,
    StepFailed,
    StepScheduled,
    StepSkipped,
    StepWaiting,
    WorkflowCancelled,
    WorkflowCompensated,
    WorkflowCompleted,
    WorkflowCreated,
    WorkflowFailed,
    WorkflowPaused,
    WorkflowQueued,
    WorkflowResumed,
    WorkflowRetried,
    WorkflowStarted,
)

from .base import Applied, Doc, Ops, Projection
from .keys import ViewKeys
from .listings import index_writes


def _error(step: str | None, attempt: int | None, error: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"step": step}
    if attempt is not None:
        out["attempt"] = attempt
    if error is not None:
        out.update(msgspec.to_builtins(error))
    return out


def new_record(iid: str) -> dict[str, Any]:
    return {
        "id": iid, "workflow": None, "workflow_version": None, "status": "created", "correlation_id": None,
        "context": {}, "current_steps": [], "attempts": {}, "attempts_total": 0, "created_ms": None,
        "started_ms": None, "updated_ms": None, "completed_ms": None, "finished_ms": None, "error": None,
        "last_error": None, "failed_step": None, "reason": None, "output": None, "version": 0,
    }


def fold_record(doc: Doc, iid: str, item: Applied) -> dict[str, Any]:
    d: dict[str, Any] = dict(doc) if doc else new_record(iid)
    e, ts = item.event, item.ts
    d["version"] = item.version
    d["updated_ms"] = ts
    current = list(d["current_steps"])
    match e:
        case WorkflowCreated():
            d.update(workflow=e.workflow, workflow_version=e.version, status="created",
                     correlation_id=e.correlation_id, context=e.context, created_ms=ts)
        case WorkflowQueued():  # waiting for a concurrency slot (engine/workers/admission.py)
            d.update(status="queued", queued_key=e.key, priority=e.priority)
        case WorkflowStarted():
            d["status"] = "running"
            if d["started_ms"] is None:
                d["started_ms"] = ts
        case StepScheduled() | StepWaiting() | ChildStarted() | StepDelayed():
            if e.step not in current:
                current.append(e.step)
            attempts = dict(d["attempts"])
            attempts[e.step] = max(attempts.get(e.step, 0), e.attempt)
            d["attempts"] = attempts
            d["attempts_total"] += 1
        case StepCompleted() | StepSkipped():
            current = [s for s in current if s != e.step]
        case StepFailed():
            if e.retry_at is None:
                current = [s for s in current if s != e.step]
            d["last_error"] = _error(e.step, e.attempt, e.error)
        case WorkflowPaused():
            d.update(status="paused", reason=e.reason)
        case WorkflowResumed():
            d.update(status="running", reason=None)
        case WorkflowRetried():
            d.update(status="running", error=None, failed_step=None, finished_ms=None)
        case WorkflowCompleted():
            d.update(status="completed", output=e.output, completed_ms=ts, finished_ms=ts)
            current = []
        case WorkflowFailed():
            d.update(status="failed", error=_error(e.step, None, e.error), failed_step=e.step, finished_ms=ts)
        case WorkflowCancelled():
            d.update(status="cancelled", reason=e.reason, finished_ms=ts)
            current = []
        case CompensationStarted():
            d.update(status="compensating", error=_error(e.step, None, e.error), failed_step=e.step)
        case WorkflowCompensated():
            d.update(status="compensated", finished_ms=ts)
            current = []
        case CommandRejected():
            pass
    d["current_steps"] = current
    return d


class Executions(Projection):
    name = "executions"

    def fold(self, doc: Doc, iid: str, item: Applied) -> Doc:
        return fold_record(doc, iid, item)

    def writes(self, ops: Ops, vk: ViewKeys, p: int, iid: str, old: Doc, new: Doc,
               applied: Sequence[Applied], rebuild: bool) -> None:
        index_writes(ops, vk, p, iid, old, new, rebuild)
