"""Bodies of the events routes: seed 000's event envelope (`id`, `type`, `source`,
`timestamp`, `correlation_id`, `data`) in and out, and the lifecycle events of the
read models served in that same envelope."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import msgspec

from engine.core.codec import MAX_CORRELATION_ID_CHARS, MAX_TYPE_CHARS
from engine.store.published import EVENT_ID_PATTERN, MAX_SOURCE_CHARS


class EventIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """An external event to publish. With an `id`, publishing it again is a no-op while the
    first is remembered (FOLDFLOW_EVENT_RETENTION_MS); with none, its stream entry id is its id."""

    type: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TYPE_CHARS,
                                      description="e.g. agent.task_completed; event_wait steps wait for a type")]
    data: Annotated[dict[str, Any], msgspec.Meta(description="a JSON object; waits filter on its fields")] = {}
    id: Annotated[str, msgspec.Meta(pattern=EVENT_ID_PATTERN,
                                    description="the publisher's id of the event: the dedupe key")] | None = None
    source: Annotated[str, msgspec.Meta(max_length=MAX_SOURCE_CHARS, description="who publishes it")] | None = None
    timestamp: Annotated[dt.datetime, msgspec.Meta(description="when it happened (RFC 3339), as the publisher "
                                                               "says; default: when it is added")] | None = None
    correlation_id: Annotated[str, msgspec.Meta(max_length=MAX_CORRELATION_ID_CHARS)] | None = None


class EventAccepted(msgspec.Struct, kw_only=True):
    """The answer to a publish: the event's id, its entry in the events stream, and whether
    this id had been published before (then nothing was added and entry_id is the first's)."""

    id: str
    entry_id: str
    duplicate: bool


class Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An event in the seed's envelope. External events also carry `entry_id` (their entry in
    the events stream); lifecycle events have `id` = `<execution_id>:<version>` and none."""

    id: str
    type: str
    source: str
    timestamp: str
    correlation_id: str | None
    data: Any
    entry_id: str | None = None


class EventPage(msgspec.Struct, kw_only=True):
    """One page, newest first; follow `next_cursor` (null: nothing older matches)."""

    items: list[Event]
    next_cursor: str | None


class CorrelationEvents(msgspec.Struct, kw_only=True):
    """Every lifecycle event of the executions under a correlation id and every external event
    that carried it, oldest first."""

    correlation_id: str
    events: list[Event]


def lifecycle_envelope(event: dict[str, Any], workflow_id: str | None,
                       context: dict[str, Any] | None) -> dict[str, Any]:
    """A read model's lifecycle event as the seed shows it: `data` also names the workflow
    (`workflow_id`, its UUID; `workflow_type`, its name) and, on `workflow.started`, the
    execution's `context`."""
    data = dict(event.get("data") or {})
    data.setdefault("workflow_type", data.get("workflow"))
    if workflow_id is not None:
        data.setdefault("workflow_id", workflow_id)
    if event.get("type") == "workflow.started" and context is not None:
        data.setdefault("context", context)
    return {**event, "data": data}


__all__ = ["CorrelationEvents", "Event", "EventAccepted", "EventIn", "EventPage", "lifecycle_envelope"]
