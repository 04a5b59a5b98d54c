"""Request and response bodies of /executions (the OpenAPI schema is generated from them).

Times are ISO-8601 UTC strings (`..._at`) with the same instant in ms since the
epoch beside them (`..._ms`), for clients that compute with them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from engine.core.codec import MAX_CORRELATION_ID_CHARS

# The instance id rule of engine.core.ids.INSTANCE_ID_RE, as the spec states it.
EXECUTION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,199}$"
ExecutionId = Annotated[str, Meta(pattern=EXECUTION_ID_PATTERN, description="1-200 of A-Z a-z 0-9 _ . : @ + - "
                                  "(starting alphanumeric)", examples=["exec-7f3a"])]
CorrelationId = Annotated[str, Meta(min_length=1, max_length=MAX_CORRELATION_ID_CHARS, examples=["project-123"])]
Json = Any


class StartExecution(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Seed 000's start request."""

    workflow_id: Annotated[str, Meta(min_length=1, max_length=200,
                                     description="the workflow's id (UUID) or its name")]
    correlation_id: CorrelationId | None = None
    context: dict[str, Json] = {}
    version: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    """The definition version to run (the latest when omitted)."""
    execution_id: ExecutionId | None = None
    """Chosen by the client; a repeat with the same body returns the same execution."""
    priority: Annotated[int, Meta(ge=0, le=9)] = 0
    """0-9, higher is more urgent: the order queued starts of one concurrency key are admitted in."""
    tenant: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    """Whose start this is; a definition's concurrency key may be `{{ tenant }}` (fairness between tenants)."""


class ExecutionStarted(msgspec.Struct, kw_only=True):
    execution_id: str
    workflow_id: str
    workflow: str
    version: str | None
    correlation_id: str | None
    status: Literal["started", "pending"]
    """started: the engine has applied the start; pending: not yet within wait_ms (poll GET)."""
    started_at: str | None
    started_ms: int | None
    current_step: str | None
    current_steps: list[str]
    context: dict[str, Json]


class StepStatus(msgspec.Struct, kw_only=True):
    step_id: str | None
    name: str
    status: str
    attempt: int
    output: Json = None
    error: dict[str, Json] | None = None
    retry_at: str | None = None
    retry_ms: int | None = None
    waiting_for: dict[str, Json] | None = None


class Execution(msgspec.Struct, kw_only=True):
    execution_id: str
    workflow_id: str | None
    workflow: str | None
    version: str | None
    status: str
    correlation_id: str | None
    context: dict[str, Json]
    current_step: str | None
    current_steps: list[str]
    steps: list[StepStatus]
    output: Json
    error: dict[str, Json] | None
    failed_step: str | None
    created_at: str | None
    created_ms: int | None
    updated_at: str | None
    updated_ms: int | None
    finished_at: str | None
    finished_ms: int | None
    events: int
    source: Literal["stream", "read_model"]
    """stream: folded from the instance stream now; read_model: the stream has been retired."""


class ExecutionSummary(msgspec.Struct, kw_only=True):
    execution_id: str
    workflow_id: str | None
    workflow: str | None
    version: str | None
    status: str
    correlation_id: str | None
    current_steps: list[str]
    attempts_total: int
    error: dict[str, Json] | None
    failed_step: str | None
    reason: str | None
    created_at: str | None
    created_ms: int | None
    started_at: str | None
    started_ms: int | None
    updated_at: str | None
    updated_ms: int | None
    finished_at: str | None
    finished_ms: int | None


class ExecutionPage(msgspec.Struct, kw_only=True):
    items: list[ExecutionSummary]
    count: int
    """How many executions match the filters (all pages)."""
    next_cursor: str | None
    """Pass as ?cursor= for the next page; null on the last page."""


class ControlRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, Meta(max_length=1000)] | None = None


class RetryRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    input: Json = None
    """The step's input for this run, replacing the one its templates resolve to (null: unchanged)."""


class ControlResult(msgspec.Struct, kw_only=True):
    execution_id: str
    command: Literal["cancel", "pause", "resume", "retry"]
    command_id: str
    applied: bool
    """true: the engine has applied it (200); false: sent, not applied within wait_ms (202)."""
    status: str
    """The execution's status after the command (applied), else as it was when sent."""


class HistoryEvent(msgspec.Struct, kw_only=True):
    version: int
    type: str
    entry_id: str
    """The instance stream entry id: pass the last one as ?after= for the next page."""
    at: str
    ts: int
    data: dict[str, Json]


class HistoryPage(msgspec.Struct, kw_only=True):
    execution_id: str
    events: list[HistoryEvent]
    next_after: str | None
    """?after= of the next page; null when this page reached the end of the history."""


class StateView(msgspec.Struct, kw_only=True):
    execution_id: str
    version: int
    last_entry_id: str | None
    state: dict[str, Json]
    """The instance as the engine folds it from its events (engine.core.model.State)."""


class Attempt(msgspec.Struct, kw_only=True):
    attempt: int
    kind: str
    """task, event_wait, child, delay, skipped or notification."""
    status: str
    input: Json = None
    output: Json = None
    error: dict[str, Json] | None = None
    started_at: str | None = None
    started_ms: int | None = None
    completed_at: str | None = None
    completed_ms: int | None = None
    duration_ms: int | None = None
    retry_at: str | None = None
    retry_ms: int | None = None
    task_id: str | None = None
    queue: str | None = None
    endpoint: str | None = None
    event_type: str | None = None
    event_id: str | None = None
    child_id: str | None = None
    reason: str | None = None
    iteration: int | None = None
    """The loop item or validation rule, by position."""
    call: dict[str, Json] | None = None
    """The HTTP call that answered: method, url, status, duration_ms, headers, body (cut at 2048 characters)."""


class StepHistory(msgspec.Struct, kw_only=True):
    step_id: str | None
    name: str
    status: str
    """The latest attempt's status (pending: none yet)."""
    attempts: list[Attempt]


class StepsView(msgspec.Struct, kw_only=True):
    execution_id: str
    steps: list[StepHistory]


class Rewind(msgspec.Struct, kw_only=True):
    """A retry that ran this step again (workflow.retried), with the edited input if any."""

    entry_id: str
    at: str
    ts: int
    from_step: str | None
    input: Json = None


class RetriesView(msgspec.Struct, kw_only=True):
    execution_id: str
    step_id: str | None
    name: str
    retries: int
    """Attempts after the first (policy retries, handler retries and manual retries)."""
    attempts: list[Attempt]
    rewinds: list[Rewind]
