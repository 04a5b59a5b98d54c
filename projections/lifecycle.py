"""Lifecycle events: the engine's events under the names services know
(``workflow.started``, ``workflow.step_started``, ``workflow.step_completed``,
``workflow.step_failed``, ``workflow.paused``, ``workflow.resumed``,
``workflow.completed``, ``workflow.failed``, ``workflow.cancelled``), each
``{id, type, source, timestamp, correlation_id, data}``, appended to the list
``{ff:p}:x:l:<instance_id>``. Per correlation id they are read through the
correlation index. The document kept in the view hash is the little context
they need (workflow, version, correlation id)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import msgspec

from engine.core.model import (
    ChildStarted,
    StepCompleted,
    StepFailed,
    StepScheduled,
    StepWaiting,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowCreated,
    WorkflowFailed,
    WorkflowPaused,
    WorkflowResumed,
    WorkflowStarted,
)

from .base import Applied, Doc, Ops, Projection, dumps
from .keys import ViewKeys

NAMES: dict[type, str] = {
    WorkflowStarted: "workflow.started",
    StepScheduled: "workflow.step_started",
    StepWaiting: "workflow.step_started",
    ChildStarted: "workflow.step_started",
    StepCompleted: "workflow.step_completed",
    StepFailed: "workflow.step_failed",
    WorkflowPaused: "workflow.paused",
    WorkflowResumed: "workflow.resumed",
    WorkflowCompleted: "workflow.completed",
    WorkflowFailed: "workflow.failed",
    WorkflowCancelled: "workflow.cancelled",
}


def iso(ts: int) -> str:
    stamp = dt.datetime.fromtimestamp(ts / 1000, tz=dt.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fold_context(doc: Doc, iid: str, item: Applied) -> Doc:
    e = item.event
    if isinstance(e, WorkflowCreated):
        return {"workflow": e.workflow, "workflow_version": e.version, "correlation_id": e.correlation_id}
    return doc


def lifecycle_event(ctx: Doc, iid: str, item: Applied) -> dict[str, Any] | None:
    name = NAMES.get(type(item.event))
    if name is None:
        return None
    ctx = ctx or {}
    data: dict[str, Any] = msgspec.to_builtins(item.event)
    data.pop("type", None)
    data.pop("cmd", None)
    if isinstance(item.event, (StepScheduled, StepWaiting)):
        data["kind"] = "task" if isinstance(item.event, StepScheduled) else "event_wait"
    if isinstance(item.event, ChildStarted):
        data["kind"] = "child"
    if isinstance(item.event, StepFailed):
        data["will_retry"] = item.event.retry_at is not None
    data.update(execution_id=iid, workflow=ctx.get("workflow"), workflow_version=ctx.get("workflow_version"))
    return {
        "id": f"{iid}:{item.version}",
        "type": name,
        "source": f"foldflow/{ctx.get('workflow')}",
        "timestamp": iso(item.ts),
        "correlation_id": ctx.get("correlation_id"),
        "data": data,
    }


class Lifecycle(Projection):
    name = "lifecycle"

    def fold(self, doc: Doc, iid: str, item: Applied) -> Doc:
        return fold_context(doc, iid, item)

    def writes(self, ops: Ops, vk: ViewKeys, p: int, iid: str, old: Doc, new: Doc,
               applied: Sequence[Applied], rebuild: bool) -> None:
        key = vk.lifecycle(p, iid)
        ctx = None if rebuild else old
        if rebuild:
            ops.delete(key)
        for item in applied:
            ctx = fold_context(ctx, iid, item)
            event = lifecycle_event(ctx, iid, item)
            if event is not None:
                ops.rpush(key, dumps(event))
