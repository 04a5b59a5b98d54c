"""What a run's events say in seed 003's words: the run status (PENDING, RUNNING,
COMPLETED, FAILED, CANCELLED), the step statuses (RUNNING, COMPLETED, FAILED), and
the ``status_update`` messages of workflow.monitoring.updates. Pure: the time of
each message is its event's append time, so a replay says the same thing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.core.model import (
    ChildStarted,
    Event,
    StepCompleted,
    StepFailed,
    StepScheduled,
    StepWaiting,
    WorkflowCancelled,
    WorkflowCompensated,
    WorkflowCompleted,
    WorkflowCreated,
    WorkflowFailed,
    WorkflowResumed,
    WorkflowRetried,
    WorkflowStarted,
)
from engine.core.runs import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING, iso, step_execution_id

STATUS_UPDATE = "status_update"


def run_status(event: Event, current: str) -> str | None:
    """The run's status after this event, when the event changes it; else None."""
    match event:
        case WorkflowCreated():
            new = PENDING
        case WorkflowStarted() | WorkflowRetried() | WorkflowResumed():
            new = RUNNING
        case WorkflowCompleted():
            new = COMPLETED
        case WorkflowFailed() | WorkflowCompensated():
            new = FAILED
        case WorkflowCancelled():
            new = CANCELLED
        case _:
            return None
    return new if new != current else None


def _error_message(event: Event) -> str | None:
    error = getattr(event, "error", None)
    return None if error is None else str(error.message)


def step_update(event: Event) -> tuple[str, str, dict[str, Any]] | None:
    """(step, seed 003 step status, details) for an event that starts or ends a step attempt."""
    match event:
        case StepScheduled():
            return event.step, RUNNING, {"attempt": event.attempt, "agent_name": event.queue,
                                         "iteration": event.iteration}
        case StepWaiting() | ChildStarted():
            return event.step, RUNNING, {"attempt": event.attempt}
        case StepCompleted():
            return event.step, COMPLETED, {"attempt": event.attempt}
        case StepFailed():
            return event.step, FAILED, {"attempt": event.attempt, "error_message": event.error.message,
                                        "will_retry": event.retry_at is not None, "iteration": event.iteration}
    return None


def message(run_id: str, version: int, ts: int, status: str, event: Event, *, step: str | None = None,
            details: dict[str, Any] | None = None) -> dict[str, Any]:
    """One status_update. ``update_id`` (run id and event version) is the same every time this
    change is described, so a consumer can drop a repeat."""
    extra = {k: v for k, v in (details or {}).items() if v is not None}
    attempt = extra.pop("attempt", None)
    out: dict[str, Any] = {
        "message_type": STATUS_UPDATE, "update_id": f"{run_id}:{version}", "run_id": run_id, "status": status,
        "step_id": step, "step_name": step, "timestamp": iso(ts),
        "metadata": {"event": type(event).__struct_config__.tag, "version": version, **extra},
    }
    if step is not None:
        out["step_execution_id"] = step_execution_id(run_id, step, attempt, extra.get("iteration"))
        out["agent_name"] = extra.get("agent_name")
    elif (error := _error_message(event)) is not None:
        out["error_message"] = error
    return out


def updates(run_id: str, current: str, events: Sequence[tuple[int, int, Event]]) -> tuple[list[dict[str, Any]], str]:
    """The messages (in version order) of (version, ts, event) and the run status after them."""
    out: list[dict[str, Any]] = []
    for version, ts, event in events:
        new = run_status(event, current)
        if new is not None:
            current = new
            out.append(message(run_id, version, ts, new, event))
            continue
        step = step_update(event)
        if step is not None:
            out.append(message(run_id, version, ts, step[1], event, step=step[0], details=step[2]))
    return out, current
