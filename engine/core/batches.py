"""Batch operations (issue 16): what a batch asks for, which executions it selects
and which statuses accept its command. Pure: the store keeps batches, the runner
(`foldflow batches`, engine/ops/batch_runner.py) carries them out.

A batch selects executions from the read models by ``BatchQuery`` (status,
workflow and version, correlation id, creation time range, error text), then
sends one control command to each, with the command id
``batch:<batch_id>:<execution_id>`` so that a resumed batch resending an item
changes nothing in the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from engine.core.decide import _CANCELLABLE, _SIGNALLABLE
from engine.core.model import STATUS_FAILED, STATUS_PAUSED, STATUS_RUNNING

Operation = Literal["cancel", "pause", "resume", "retry", "signal", "terminate"]
OPERATIONS: tuple[str, ...] = ("cancel", "pause", "resume", "retry", "signal", "terminate")
Status = Literal["created", "queued", "running", "paused", "failed", "completed", "cancelled", "compensating",
                 "compensated"]
STATES = ("matching", "running", "completed", "failed", "cancelled")
ACTIVE_STATES = frozenset({"matching", "running"})

DEFAULT_RATE = 500
MAX_RATE = 5000
MAX_TEXT = 1000

# The statuses each operation's command is accepted in: the engine's rules (decide.py).
ACCEPTS: dict[str, frozenset[str]] = {
    "cancel": _CANCELLABLE,
    "terminate": _CANCELLABLE,
    "pause": frozenset({STATUS_RUNNING}),
    "resume": frozenset({STATUS_PAUSED}),
    "retry": frozenset({STATUS_FAILED}),
    "signal": _SIGNALLABLE,
}
# The engine command each operation sends (terminate: a cancel whose reason names the batch).
COMMAND = {"cancel": "cancel", "terminate": "cancel", "pause": "pause", "resume": "resume", "retry": "retry",
           "signal": "signal"}

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Time = Annotated[str | int, msgspec.Meta(description="ms since epoch, ISO-8601, or an age such as 15m, 2d")]


class BatchQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Which executions: every filter given must hold (statuses: any of them)."""

    status: Annotated[list[Status], msgspec.Meta(max_length=9)] = []
    workflow: Text | None = None
    version: Text | None = None
    correlation_id: Text | None = None
    started_after: Time | None = None
    """Created at or after (the listing indexes' time)."""
    started_before: Time | None = None
    error_contains: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)] | None = None
    """Text in the execution's error or last step error (case-insensitive)."""


class BatchSignal(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    payload: Any = None


class BatchSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A batch as asked for (POST /batches, `foldflow batch start`)."""

    operation: Operation
    query: BatchQuery = msgspec.field(default_factory=BatchQuery)
    reason: Annotated[str, msgspec.Meta(max_length=MAX_TEXT)] | None = None
    signal: BatchSignal | None = None
    from_step: Text | None = None
    rate: Annotated[int, msgspec.Meta(ge=1, le=MAX_RATE)] = DEFAULT_RATE
    """Items per second at most, so a large batch does not starve the engine."""


def spec_problems(spec: BatchSpec) -> list[tuple[str, str]]:
    """(field, problem) for what the types cannot say; empty when the spec is sound."""
    problems: list[tuple[str, str]] = []
    if spec.operation == "signal" and spec.signal is None:
        problems.append(("signal", "a signal batch needs signal {name, payload}"))
    if spec.operation != "signal" and spec.signal is not None:
        problems.append(("signal", f"only a signal batch takes a signal, not {spec.operation}"))
    if spec.from_step is not None and spec.operation != "retry":
        problems.append(("from_step", f"only a retry batch takes from_step, not {spec.operation}"))
    if spec.reason is not None and spec.operation not in ("cancel", "pause", "terminate"):
        problems.append(("reason", f"only cancel, pause and terminate take a reason, not {spec.operation}"))
    if not 1 <= spec.rate <= MAX_RATE:
        problems.append(("rate", f"rate must be 1..{MAX_RATE} items per second, got {spec.rate}"))
    if spec.query == BatchQuery():
        problems.append(("query", "give at least one filter (e.g. status): a batch over every execution is refused"))
    if spec.query.version is not None and spec.query.workflow is None:
        problems.append(("query.version", "a version filter needs query.workflow"))
    return problems


def cmd_id(batch_id: str, execution_id: str) -> str:
    """The command id of one item: the same on every resend, so the engine applies it once."""
    return f"batch:{batch_id}:{execution_id}"


def refusal(operation: str, status: str) -> str | None:
    """Why an execution in this status cannot take the operation (None: it can)."""
    if status in ACCEPTS[operation]:
        return None
    return f"{status}: cannot {operation} (accepted when {' or '.join(sorted(ACCEPTS[operation]))})"


def command_data(spec: BatchSpec, batch_id: str) -> dict[str, Any]:
    """The data of the command sent to each item."""
    op = spec.operation
    if op == "terminate":
        return {"reason": f"terminated by batch {batch_id}" + (f": {spec.reason}" if spec.reason else "")}
    if op in ("cancel", "pause"):
        return {"reason": spec.reason} if spec.reason else {}
    if op == "retry":
        return {"from_step": spec.from_step} if spec.from_step else {}
    if op == "signal":
        assert spec.signal is not None
        return {"name": spec.signal.name, "payload": spec.signal.payload}
    return {}


def record_matches(record: Mapping[str, Any], query: BatchQuery) -> bool:
    """The filters a listing index cannot apply, on an executions read-model record."""
    if query.workflow is not None and record.get("workflow") != query.workflow:
        return False
    if query.version is not None and record.get("workflow_version") != query.version:
        return False
    if query.status and record.get("status") not in query.status:
        return False
    if query.correlation_id is not None and record.get("correlation_id") != query.correlation_id:
        return False
    created = record.get("created_ms")
    if isinstance(query.started_after, int) and (created is None or created < query.started_after):
        return False
    if isinstance(query.started_before, int) and (created is None or created > query.started_before):
        return False
    if query.error_contains is not None:
        wanted = query.error_contains.casefold()
        return any(wanted in t.casefold() for t in _texts([record.get("error"), record.get("last_error")]))
    return True


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _texts(v)]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    return []
