"""The step history read model: per instance, one record per step execution
attempt (and per notification sent), in the order the attempts began, stored
as canonical JSON in the field ``steps`` of the instance's view hash. It lives
apart from the instance stream, so it stays queryable after that is retired."""

from __future__ import annotations

from typing import Any

import msgspec

from engine.core.model import (
    ChildStarted,
    NotificationScheduled,
    StepCompleted,
    StepDelayed,
    StepFailed,
    StepIterationCompleted,
    StepScheduled,
    StepSkipped,
    StepWaiting,
    WorkflowCancelled,
)

from .base import Applied, Doc, Projection

OPEN = ("scheduled", "waiting")


def _find(records: list[dict[str, Any]], step: str, attempt: int, iteration: int | None = None) -> int | None:
    """The record of that attempt; of that part, when a validation step's rules share the attempt."""
    for i in range(len(records) - 1, -1, -1):
        r = records[i]
        if r["step"] == step and r["attempt"] == attempt and r["kind"] != "notification" \
                and (iteration is None or r.get("iteration", iteration) == iteration):
            return i
    return None


def _attempt(step: str, attempt: int, kind: str, status: str, ts: int) -> dict[str, Any]:
    return {"step": step, "attempt": attempt, "kind": kind, "status": status, "started_ms": ts,
            "completed_ms": None, "duration_ms": None, "input": None, "output": None, "error": None}


def _finish(records: list[dict[str, Any]], step: str, attempt: int, ts: int, iteration: int | None = None,
            **fields: Any) -> None:
    i = _find(records, step, attempt, iteration)
    # A failure before anything was dispatched (a template error) is an attempt of its own.
    r = dict(records[i]) if i is not None else _attempt(step, attempt, "task", "scheduled", ts)
    r.update(fields, completed_ms=ts, duration_ms=ts - int(r["started_ms"]))
    if i is None:
        records.append(r)
    else:
        records[i] = r


def fold_steps(doc: Doc, iid: str, item: Applied) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = list(doc or [])
    e, ts = item.event, item.ts
    match e:
        case StepScheduled():
            r = _attempt(e.step, e.attempt, "task", "scheduled", ts)
            r.update(task_id=e.task_id, queue=e.queue, endpoint=e.endpoint, input=e.input)
            if e.iteration is not None:
                r["iteration"] = e.iteration
            records.append(r)
        case StepWaiting():
            r = _attempt(e.step, e.attempt, "event_wait", "waiting", ts)
            r.update(event_type=e.event_type, input=e.filter)
            records.append(r)
        case NotificationScheduled():
            r = _attempt(e.step, e.attempt, "notification", "dispatched", ts)
            r.update(task_id=e.task_id, queue=e.queue, endpoint=e.endpoint, input=e.input)
            records.append(r)
        case ChildStarted():
            r = _attempt(e.step, e.attempt, "child", "scheduled", ts)
            r.update(child_id=e.child_id, workflow=e.workflow, input=e.input)
            records.append(r)
        case StepDelayed():
            r = _attempt(e.step, e.attempt, "delay", "waiting", ts)
            r.update(until=e.until)
            records.append(r)
        case StepSkipped():
            r = _attempt(e.step, e.attempt, "skipped", "skipped", ts)
            r.update(reason=e.reason, completed_ms=ts, duration_ms=0)
            records.append(r)
        case StepCompleted():
            extra: dict[str, Any] = {"event_id": e.event_id} if e.event_id else {}
            _finish(records, e.step, e.attempt, ts, status="completed", output=e.output, **extra, **_call(e.call))
        case StepIterationCompleted():
            _finish(records, e.step, e.attempt, ts, e.iteration, status="completed", output=e.output,
                    **_call(e.call))
        case StepFailed():
            _finish(records, e.step, e.attempt, ts, e.iteration, status="failed",
                    error=msgspec.to_builtins(e.error), retry_at=e.retry_at, **_call(e.call))
        case WorkflowCancelled():
            for i, r in enumerate(records):
                if r["status"] in OPEN:
                    records[i] = {**r, "status": "cancelled", "completed_ms": ts,
                                  "duration_ms": ts - int(r["started_ms"])}
    return records


def _call(call: dict[str, Any] | None) -> dict[str, Any]:
    """The HTTP call meta (method, url, status, duration_ms, headers, body) when the result had one."""
    return {"call": call} if call is not None else {}


class Steps(Projection):
    name = "steps"

    def fold(self, doc: Doc, iid: str, item: Applied) -> Doc:
        return fold_steps(doc, iid, item)
