"""A test run as the API shows things: the folded state as GET
/executions/{id}/state has it, the history as GET /executions/{id}/history
pages it, and per step the attempts with the mock that answered each."""

from __future__ import annotations

import datetime
from typing import Any

import msgspec
import orjson

from engine.core.definition import Definition
from engine.core.model import (
    ChildStarted,
    Event,
    NotificationScheduled,
    StepCompleted,
    StepDelayed,
    StepFailed,
    StepIterationCompleted,
    StepScheduled,
    StepSkipped,
    StepWaiting,
    encode,
)
from engine.core.simulate.driver import Outcome, Used

_OPEN = frozenset({"scheduled", "waiting", "child_running", "delayed"})


def report(outcome: Outcome, definition: Definition, start_ms: int, simulated_ms: int) -> dict[str, Any]:
    out: dict[str, Any] = {"status": outcome.status}
    reason = outcome.reason or _failure(outcome)
    if reason is not None:
        out["reason"] = reason
    out.update(state=msgspec.to_builtins(outcome.state), output=outcome.state.output,
               history=[_history(i, e, ts) for i, (e, ts) in enumerate(outcome.history, 1)],
               steps=attempts(outcome, definition), simulated_ms=simulated_ms,
               events=[_clean({"entry_id": eid, "type": a.name, "data": a.data, "id": a.event_id,
                               "at_ms": ts - start_ms}) for eid, a, ts in outcome.events])
    return out


def _failure(outcome: Outcome) -> str | None:
    """Why a failed or compensated run ended: the step and its error, in one line."""
    error, step = outcome.state.error, outcome.state.failed_step
    if error is None:
        return None
    return f"step {step!r} failed: {error.message}" if step else error.message


def _history(version: int, event: Event, ts: int) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(encode(event))
    kind = data.pop("type", None)
    # Entry ids as a stream would give them: the event's ms, then its place in the history.
    return {"version": version, "type": kind, "entry_id": f"{ts}-{version}", "at": iso(ts), "ts": ts, "data": data}


def iso(ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def attempts(outcome: Outcome, definition: Definition) -> dict[str, list[dict[str, Any]]]:
    """Every step in definition order (compensation last), each with its attempts in order."""
    steps: dict[str, list[dict[str, Any]]] = {s.name: [] for s in definition.steps + definition.compensation}
    mocks = {(u.step, u.attempt, u.iteration): u for u in outcome.used}
    for event, ts in outcome.history:
        name = getattr(event, "step", None)
        if isinstance(name, str) and name:
            _attempt(steps.setdefault(name, []), event, ts, mocks, definition)
    return steps


def _attempt(records: list[dict[str, Any]], e: Event, ts: int, mocks: dict[tuple[str, int, int | None], Used],
             definition: Definition) -> None:
    begun = _begun(e, ts, mocks)
    if begun is not None:
        records.append(begun)
    else:
        _ended(records, e, ts, definition)


def _begun(e: Event, ts: int, mocks: dict[tuple[str, int, int | None], Used]) -> dict[str, Any] | None:
    """The attempt an event starts (a skip and a notification start and end at once)."""
    match e:
        case StepScheduled():
            used = mocks.get((e.step, e.attempt, e.iteration))
            return _clean({"attempt": e.attempt, "kind": "task", "status": "scheduled", "iteration": e.iteration,
                           "queue": e.queue, "endpoint": e.endpoint, "input": e.input, "started_ms": ts,
                           "mock": used.answer if used else None}, keep=("mock",))
        case StepWaiting():
            return {"attempt": e.attempt, "kind": "event_wait", "status": "waiting", "event_type": e.event_type,
                    "filter": e.filter, "started_ms": ts}
        case ChildStarted():
            used = mocks.get((e.step, e.attempt, None))
            return {"attempt": e.attempt, "kind": "child", "status": "child_running", "child_id": e.child_id,
                    "workflow": e.workflow, "input": e.input, "started_ms": ts, "mock": used.answer if used else None}
        case StepDelayed():
            return {"attempt": e.attempt, "kind": "delay", "status": "delayed", "until_ms": e.until, "started_ms": ts}
        case StepSkipped():
            return {"attempt": e.attempt, "kind": "skipped", "status": "skipped", "reason": e.reason,
                    "completed_ms": ts}
        case NotificationScheduled():
            return {"attempt": e.attempt, "kind": "notification", "status": "sent", "queue": e.queue,
                    "endpoint": e.endpoint, "input": e.input, "started_ms": ts}
    return None


def _ended(records: list[dict[str, Any]], e: Event, ts: int, definition: Definition) -> None:
    """An attempt's end, on the open attempt it ends (or a record of its own when none is open:
    a conditional's decision, a loop's or validation's result, a failure before dispatch)."""
    match e:
        case StepCompleted():
            kind = "decision" if definition.step(e.step).type == "conditional" else "result"
            _closing(records, e.attempt, None, kind, ts).update(_clean(
                {"status": "completed", "output": e.output, "event_id": e.event_id, "completed_ms": ts},
                keep=("output",)))
        case StepIterationCompleted():
            _closing(records, e.attempt, e.iteration, "task", ts).update(
                status="completed", output=e.output, completed_ms=ts)
        case StepFailed():
            _closing(records, e.attempt, e.iteration, "task", ts).update(_clean(
                {"status": "retrying" if e.retry_at is not None else "failed", "error": msgspec.to_builtins(e.error),
                 "retry_at_ms": e.retry_at, "continued": e.continued or None, "completed_ms": ts}))


def _closing(records: list[dict[str, Any]], attempt: int, iteration: int | None, kind: str,
             ts: int) -> dict[str, Any]:
    record = _open(records, attempt, iteration)
    if record is None:
        record = {"attempt": attempt, "kind": kind, "started_ms": ts}
        records.append(record)
    return record


def _open(records: list[dict[str, Any]], attempt: int, iteration: int | None) -> dict[str, Any] | None:
    for i in range(len(records) - 1, -1, -1):
        record = records[i]
        if record.get("status") in _OPEN and record.get("attempt") == attempt \
                and (iteration is None or record.get("iteration") == iteration):
            return records[i]
    return None


def _clean(record: dict[str, Any], keep: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k: v for k, v in record.items() if v is not None or k in keep}
