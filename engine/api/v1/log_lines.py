"""An execution's log, derived from its history without I/O: one line per event
that a person reading a job's log wants (transitions, step attempts, errors), in
the order the engine wrote them. Events that only move bookkeeping (a history
that grew large) still get a line, at info, so nothing is hidden."""

from __future__ import annotations

from typing import Any

from engine.api.executions.views import at
from engine.api.v1.models.jobs import Level, LogLine
from engine.core.model import (
    ChildStarted,
    CommandRejected,
    CompensationStarted,
    Event,
    NotificationScheduled,
    SignalReceived,
    StepCompleted,
    StepDelayed,
    StepError,
    StepFailed,
    StepIterationCompleted,
    StepScheduled,
    StepSkipped,
    StepWaiting,
    WorkflowCancelled,
    WorkflowCompensated,
    WorkflowCompleted,
    WorkflowCreated,
    WorkflowFailed,
    WorkflowPaused,
    WorkflowResumed,
    WorkflowRetried,
    WorkflowStarted,
)
from engine.store.events import event_type


def _error(error: StepError | None) -> str:
    if error is None:
        return "no error recorded"
    status = f" (HTTP {error.status})" if error.status is not None else ""
    kind = f"{error.kind}: " if error.kind else ""
    return f"{kind}{error.message}{status}"


def _reason(reason: str | None) -> str:
    return f": {reason}" if reason else ""


def _step_message(event: Event) -> tuple[Level, str] | None:
    match event:
        case StepScheduled():
            where = f" to {event.queue}" + (f" {event.endpoint}" if event.endpoint else "")
            return "info", f"node {event.step} attempt {event.attempt} dispatched{where}"
        case StepWaiting():
            return "info", f"node {event.step} waiting for event {event.event_type}"
        case StepCompleted() | StepIterationCompleted():
            return "info", f"node {event.step} attempt {event.attempt} completed"
        case StepFailed():
            then = (" (will retry)" if event.retry_at is not None
                    else " (the workflow goes on)" if event.continued else "")
            level: Level = "warning" if event.retry_at is not None or event.continued else "error"
            return level, f"node {event.step} attempt {event.attempt} failed{then}: {_error(event.error)}"
        case StepSkipped():
            return "info", f"node {event.step} skipped: {event.reason}"
        case StepDelayed():
            return "info", f"node {event.step} delayed until {at(event.until)}"
        case ChildStarted():
            return "info", f"node {event.step} started child {event.child_id} ({event.workflow})"
        case NotificationScheduled():
            return "info", f"node {event.step} notification sent to {event.queue}"
    return None


def _workflow_message(event: Event) -> tuple[Level, str]:
    match event:
        case WorkflowCreated():
            return "info", f"job created: workflow {event.workflow} version {event.version}"
        case WorkflowStarted():
            return "info", "job running"
        case WorkflowCompleted():
            return "info", "job completed"
        case WorkflowFailed():
            node = f" at node {event.step}" if event.step else ""
            return "error", f"job failed{node}: {_error(event.error)}"
        case WorkflowCancelled():
            return "warning", f"job cancelled{_reason(event.reason)}"
        case WorkflowPaused():
            return "info", f"job paused{_reason(event.reason)}"
        case WorkflowResumed():
            return "info", "job resumed"
        case WorkflowRetried():
            return "info", "job retried" + (f" from node {event.from_step}" if event.from_step else "")
        case CompensationStarted():
            return "warning", f"compensating after node {event.step}: {_error(event.error)}"
        case WorkflowCompensated():
            return "warning", "compensation finished"
        case SignalReceived():
            return "info", f"signal {event.name} received"
        case CommandRejected():
            return "warning", f"command {event.command} refused: {event.reason}"
    return "info", event_type(event)


def log_line(entry_id: str, version: int, event: Event, ts: int) -> LogLine:
    found = _step_message(event)
    level, message = found if found is not None else _workflow_message(event)
    step: Any = getattr(event, "step", None)
    attempt: Any = getattr(event, "attempt", None)
    return LogLine(seq=version, entry_id=entry_id, timestamp=at(ts) or "", level=level,
                   event=event_type(event), node_id=step if isinstance(step, str) else None,
                   attempt=attempt if isinstance(attempt, int) else None, message=message)


# The lifecycle read model's names (projections/lifecycle.py) of the events a log shows.
_LIFECYCLE: dict[str, tuple[Level, str]] = {
    "workflow.started": ("info", "job running"), "workflow.paused": ("info", "job paused"),
    "workflow.resumed": ("info", "job resumed"), "workflow.completed": ("info", "job completed"),
    "workflow.cancelled": ("warning", "job cancelled"),
}


def _lifecycle_message(kind: str, data: dict[str, Any]) -> tuple[Level, str]:
    step, attempt = data.get("step"), data.get("attempt")
    if kind == "workflow.step_started":
        return "info", f"node {step} attempt {attempt} dispatched" + (f" to {data['queue']}" if data.get("queue") else "")
    if kind == "workflow.step_completed":
        return "info", f"node {step} attempt {attempt} completed"
    found = data.get("error")
    error: dict[str, Any] = found if isinstance(found, dict) else {}
    reason = f"{error.get('kind')}: " if error.get("kind") else ""
    reason += str(error.get("message") or "no error recorded")
    if kind == "workflow.step_failed":
        retry = bool(data.get("will_retry"))
        return ("warning" if retry else "error"), (f"node {step} attempt {attempt} failed"
                                                   f"{' (will retry)' if retry else ''}: {reason}")
    if kind == "workflow.failed":
        return "error", f"job failed{f' at node {step}' if step else ''}: {reason}"
    return _LIFECYCLE.get(kind, ("info", kind))


def lifecycle_line(entry: dict[str, Any]) -> LogLine:
    """A line from the lifecycle read model, for a job whose stream was retired: `seq` is the
    event's place in the history (the id's suffix) and `entry_id` is `0-<seq>`."""
    raw = entry.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    version = int(str(entry.get("id", "0")).rsplit(":", 1)[-1] or 0)
    level, message = _lifecycle_message(str(entry.get("type")), data)
    step, attempt = data.get("step"), data.get("attempt")
    return LogLine(seq=version, entry_id=f"0-{version}", timestamp=str(entry.get("timestamp") or ""), level=level,
                   event=str(entry.get("type")), node_id=step if isinstance(step, str) else None,
                   attempt=attempt if isinstance(attempt, int) else None, message=message)
