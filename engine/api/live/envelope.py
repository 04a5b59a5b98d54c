"""The seed's envelope for every event of an instance: `id`, `type`, `source`,
`timestamp`, `correlation_id`, `data` (with `workflow_id`, `workflow_type`,
`context`). Lifecycle events keep the names and the fields of
projections/lifecycle.py, so a live subscriber and GET /correlations/... see the
same document; every other engine event gets the same shape under its engine
type (`workflow.created`, `workflow.step_skipped`, ...). Pure: no I/O."""

from __future__ import annotations

from typing import Any

import msgspec

from engine.api.workflow_ids import workflow_uuid
from engine.core.model import Event, WorkflowCreated
from engine.store.events import event_type
from projections.base import Applied
from projections.lifecycle import NAMES, iso, lifecycle_event

Context = dict[str, Any]
"""What every envelope of one instance repeats: workflow, workflow_version, correlation_id, context."""


def context_of(event: Event) -> Context | None:
    """The instance's context, from its first event (workflow.created); None from any other."""
    if not isinstance(event, WorkflowCreated):
        return None
    return {"workflow": event.workflow, "workflow_version": event.version,
            "correlation_id": event.correlation_id, "context": event.context}


def is_lifecycle(event: Event) -> bool:
    return type(event) in NAMES


def lifecycle_type(event: Event) -> str:
    """The name a subscriber sees: the lifecycle name where there is one, else the engine's type."""
    return NAMES.get(type(event)) or event_type(event)


def envelope(prefix: str, iid: str, ctx: Context | None, version: int, ts: int, event: Event) -> dict[str, Any]:
    """One event in the seed's envelope; `ctx` None (the instance's first event is gone) leaves its fields null."""
    ctx = ctx or {}
    doc = lifecycle_event(ctx, iid, Applied(version, ts, event)) or _engine_event(ctx, iid, version, ts, event)
    workflow = ctx.get("workflow")
    doc["data"].update(workflow_id=workflow_uuid(prefix, workflow) if workflow else None,
                       workflow_type=workflow, context=ctx.get("context"))
    return doc


def _engine_event(ctx: Context, iid: str, version: int, ts: int, event: Event) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(event)
    data.pop("type", None)
    data.pop("cmd", None)
    data.update(execution_id=iid, workflow=ctx.get("workflow"), workflow_version=ctx.get("workflow_version"))
    return {"id": f"{iid}:{version}", "type": event_type(event), "source": f"foldflow/{ctx.get('workflow')}",
            "timestamp": iso(ts), "correlation_id": ctx.get("correlation_id"), "data": data}


def matches(doc: dict[str, Any], *, correlation_id: str | None, workflow: str | None,
            types: frozenset[str]) -> bool:
    """The filters of GET /events/stream: every one given must hold (workflow: its name or its id)."""
    if correlation_id is not None and doc["correlation_id"] != correlation_id:
        return False
    if workflow is not None and workflow not in (doc["data"].get("workflow"), doc["data"].get("workflow_id")):
        return False
    return not types or doc["type"] in types
