"""Pure view building for /executions: folded states, read-model records and
stream entries into the response Structs, plus the rules that need no I/O
(idempotency ids, whether a repeated start matches, correlation pages)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import orjson

from engine.api.models.executions import (
    Attempt,
    Execution,
    ExecutionStarted,
    ExecutionSummary,
    HistoryEvent,
    Rewind,
    StartExecution,
    StepHistory,
    StepStatus,
)
from engine.api.problems import ProblemItem
from engine.api.workflow_ids import step_uuid, workflow_uuid
from engine.core.model import (
    STEP_CHILD,
    STEP_DELAYED,
    STEP_RETRYING,
    STEP_SCHEDULED,
    STEP_WAITING,
    Event,
    State,
    WorkflowCreated,
    WorkflowRetried,
    encode,
)
from engine.store.events import event_type
from projections.lifecycle import iso
from projections.queries import decode_cursor, encode_cursor

_IDEMPOTENCY = uuid.UUID("6f1d3f0e-2b7c-5a8e-9c1d-f01df10f0001")
ACTIVE_STEPS = frozenset({STEP_SCHEDULED, STEP_WAITING, STEP_RETRYING, STEP_DELAYED, STEP_CHILD})


def at(ms: int | None) -> str | None:
    return None if ms is None else iso(ms)


def idempotent_id(prefix: str, key: str) -> str:
    """The execution id an Idempotency-Key stands for: derived, so every API process
    maps one key to one execution with no state of its own."""
    return str(uuid.uuid5(_IDEMPOTENCY, ":".join((prefix, "idempotency", key))))  # a name, not a Redis key


def _step_id(prefix: str, workflow: str | None, name: str) -> str | None:
    return step_uuid(workflow_uuid(prefix, workflow), name) if workflow else None


def _builtins(value: Any) -> Any:
    return None if value is None else orjson.loads(encode(value))


def active(state: State, names: Sequence[str]) -> list[str]:
    ordered = list(names) + [n for n in state.steps if n not in names]
    return [n for n in ordered if state.step(n).status in ACTIVE_STEPS]


def step_statuses(state: State, names: Sequence[str], prefix: str) -> list[StepStatus]:
    out = []
    for name in list(names) + [n for n in state.steps if n not in names]:
        st = state.step(name)
        wait = {"event_type": st.wait.event_type, "filter": st.wait.filter} if st.wait is not None else None
        out.append(StepStatus(step_id=_step_id(prefix, state.workflow, name), name=name, status=st.status,
                              attempt=st.attempt, output=st.output, error=_builtins(st.error),
                              retry_at=at(st.retry_at), retry_ms=st.retry_at, waiting_for=wait))
    return out


def from_state(state: State, names: Sequence[str], prefix: str) -> Execution:
    running = active(state, names)
    return Execution(
        execution_id=state.id, workflow_id=workflow_uuid(prefix, state.workflow) if state.workflow else None,
        workflow=state.workflow, version=state.def_version, status=state.status,
        correlation_id=state.correlation_id, context=state.context, current_step=running[0] if running else None,
        current_steps=running, steps=step_statuses(state, names, prefix), output=state.output,
        error=_builtins(state.error), failed_step=state.failed_step, created_at=at(state.created_ms),
        created_ms=state.created_ms, updated_at=at(state.updated_ms), updated_ms=state.updated_ms,
        finished_at=at(state.finished_ms), finished_ms=state.finished_ms, events=state.version, source="stream")


def from_record(record: dict[str, Any], attempts: list[dict[str, Any]], prefix: str) -> Execution:
    """An execution whose stream has been retired, from its read models."""
    workflow = record.get("workflow")
    steps = [StepStatus(step_id=h.step_id, name=h.name, status=h.status,
                        attempt=h.attempts[-1].attempt if h.attempts else 0,
                        output=h.attempts[-1].output if h.attempts else None,
                        error=h.attempts[-1].error if h.attempts else None)
             for h in group_steps(attempts, [], workflow, prefix)]
    current = list(record.get("current_steps") or [])
    return Execution(
        execution_id=record["id"], workflow_id=workflow_uuid(prefix, workflow) if workflow else None,
        workflow=workflow, version=record.get("workflow_version"), status=record["status"],
        correlation_id=record.get("correlation_id"), context=record.get("context") or {},
        current_step=current[0] if current else None, current_steps=current, steps=steps,
        output=record.get("output"), error=record.get("error"), failed_step=record.get("failed_step"),
        created_at=at(record.get("created_ms")), created_ms=record.get("created_ms"),
        updated_at=at(record.get("updated_ms")), updated_ms=record.get("updated_ms"),
        finished_at=at(record.get("finished_ms")), finished_ms=record.get("finished_ms"),
        events=int(record.get("version") or 0), source="read_model")


def started(state: State, names: Sequence[str], prefix: str) -> ExecutionStarted:
    assert state.workflow is not None
    running = active(state, names)
    return ExecutionStarted(
        execution_id=state.id, workflow_id=workflow_uuid(prefix, state.workflow), workflow=state.workflow,
        version=state.def_version, correlation_id=state.correlation_id, status="started",
        started_at=at(state.created_ms), started_ms=state.created_ms,
        current_step=running[0] if running else None, current_steps=running, context=state.context)


def pending(execution_id: str, workflow: str, body: StartExecution, prefix: str) -> ExecutionStarted:
    return ExecutionStarted(
        execution_id=execution_id, workflow_id=workflow_uuid(prefix, workflow), workflow=workflow,
        version=body.version, correlation_id=body.correlation_id, status="pending", started_at=None,
        started_ms=None, current_step=None, current_steps=[], context=body.context)


def summary(record: dict[str, Any], prefix: str) -> ExecutionSummary:
    workflow = record.get("workflow")
    return ExecutionSummary(
        execution_id=record["id"], workflow_id=workflow_uuid(prefix, workflow) if workflow else None,
        workflow=workflow, version=record.get("workflow_version"), status=record["status"],
        correlation_id=record.get("correlation_id"), current_steps=list(record.get("current_steps") or []),
        attempts_total=int(record.get("attempts_total") or 0), error=record.get("error"),
        failed_step=record.get("failed_step"), reason=record.get("reason"),
        created_at=at(record.get("created_ms")), created_ms=record.get("created_ms"),
        started_at=at(record.get("started_ms")), started_ms=record.get("started_ms"),
        updated_at=at(record.get("updated_ms")), updated_ms=record.get("updated_ms"),
        finished_at=at(record.get("finished_ms")), finished_ms=record.get("finished_ms"))


def mismatch(created: WorkflowCreated | dict[str, Any], workflow: str, body: StartExecution) -> list[str]:
    """How a repeated start differs from the one that created the execution (empty: the same);
    `created` is its workflow.created event, or a dict of the same fields (workflow, version,
    correlation_id, context)."""
    seen = msgspec.to_builtins(created) if isinstance(created, WorkflowCreated) else created
    was = {"workflow": seen.get("workflow"), "correlation_id": seen.get("correlation_id"),
           "context": seen.get("context") or {}, "version": seen.get("version")}
    now = {"workflow": workflow, "correlation_id": body.correlation_id, "context": body.context,
           "version": body.version if body.version is not None else was["version"]}
    return [f"{field}: the execution has {was[field]!r}, this request {now[field]!r}"
            for field in ("workflow", "version", "correlation_id", "context") if was[field] != now[field]]


def schema_items(problems: Iterable[str]) -> list[ProblemItem]:
    """Input-schema violations ("a/b: message") as problem items with JSON paths under `context`."""
    items = []
    for problem in problems:
        where, _, message = problem.partition(": ")
        parts = [] if where == "(root)" else where.split("/")
        path = "context" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in parts)
        items.append(ProblemItem(path=path, message=message or problem))
    return items


def attempt(record: dict[str, Any]) -> Attempt:
    extra = {k: record.get(k) for k in ("task_id", "queue", "endpoint", "event_type", "event_id", "child_id",
                                         "reason", "iteration", "call")}
    return Attempt(attempt=int(record["attempt"]), kind=str(record["kind"]), status=str(record["status"]),
                   input=record.get("input"), output=record.get("output"), error=record.get("error"),
                   started_at=at(record.get("started_ms")), started_ms=record.get("started_ms"),
                   completed_at=at(record.get("completed_ms")), completed_ms=record.get("completed_ms"),
                   duration_ms=record.get("duration_ms"), retry_at=at(record.get("retry_at")),
                   retry_ms=record.get("retry_at"), **extra)


def group_steps(records: list[dict[str, Any]], names: Sequence[str], workflow: str | None,
                prefix: str) -> list[StepHistory]:
    """The steps read model (one record per attempt) grouped per step: definition order
    first, then any other step in the order its first attempt began."""
    grouped: dict[str, list[Attempt]] = {name: [] for name in names}
    for record in records:
        grouped.setdefault(str(record["step"]), []).append(attempt(record))
    out = []
    for name, attempts in grouped.items():
        runs = [a for a in attempts if a.kind != "notification"]
        status = runs[-1].status if runs else ("pending" if not attempts else attempts[-1].status)
        out.append(StepHistory(step_id=_step_id(prefix, workflow, name), name=name, status=status,
                               attempts=attempts))
    return out


def history_event(entry_id: str, version: int, event: Event, ts: int) -> HistoryEvent:
    data: dict[str, Any] = orjson.loads(encode(event))
    data.pop("type", None)
    return HistoryEvent(version=version, type=event_type(event), entry_id=entry_id, at=iso(ts), ts=ts, data=data)


def rewinds(events: Iterable[tuple[str, Event, int]], step: str) -> list[Rewind]:
    return [Rewind(entry_id=eid, at=iso(ts), ts=ts, from_step=e.from_step,
                   input=e.input if e.from_step == step else None)
            for eid, e, ts in events if isinstance(e, WorkflowRetried) and step in e.steps]


def correlated_page(records: list[dict[str, Any]], *, status: str | None, workflow: str | None,
                    since: int | None, until: int | None, limit: int, cursor: str | None) -> dict[str, Any]:
    """One page of the executions under a correlation id, filtered and ordered as
    Queries.executions orders (newest first, by created ms then id), with the same cursors."""
    def keep(r: dict[str, Any]) -> bool:
        created = r.get("created_ms")
        return (created is not None and (status is None or r.get("status") == status)
                and (workflow is None or r.get("workflow") == workflow)
                and (since is None or created >= since) and (until is None or created <= until))

    matching = sorted((r for r in records if keep(r)), key=lambda r: (int(r["created_ms"]), str(r["id"])),
                      reverse=True)
    after = decode_cursor(cursor) if cursor else None
    rest = [r for r in matching if after is None or (int(r["created_ms"]), str(r["id"])) < after]
    page = rest[:limit]
    more = len(rest) > limit
    return {"items": page, "count": len(matching),
            "next_cursor": encode_cursor(int(page[-1]["created_ms"]), str(page[-1]["id"])) if more else None}
