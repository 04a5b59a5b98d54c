"""Request and response bodies of the test-run routes (`POST /workflows/test`,
`POST /workflows/{workflow_id}/test`); the mocks document is engine.core.simulate.mocks."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from engine.api.models.executions import EXECUTION_ID_PATTERN, CorrelationId, HistoryEvent
from engine.core.simulate import MAX_START_MS

Json = Any
ROUTE_MAX_EVENTS = 100_000
ROUTE_DEFAULT_EVENTS = 10_000  # an answer of this many events is a few MB; ask for more when a run needs it

_MOCKS = ('{"steps": {"<step>": [{"output": ...} | {"error": "text", "retryable"?, "status"?}, ...]}, '
          '"events": [{"type", "data", "at_ms" | "after_step"}], "signals": [{"name", "payload", ...}], '
          '"strict": false}; every answer may carry "delay_ms"')


class WorkflowTest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A test run of a registered workflow: its mocks and its start input."""

    mocks: Annotated[Json, Meta(description=_MOCKS)] = None
    context: dict[str, Json] | None = None
    input: dict[str, Json] | None = None
    """The same as context (seed 001's word); give one of them."""
    correlation_id: CorrelationId | None = None
    execution_id: Annotated[str, Meta(pattern=EXECUTION_ID_PATTERN)] | None = None
    """The simulated instance's id, as templates read it (default test-run)."""
    start_ms: Annotated[int, Meta(ge=0, le=MAX_START_MS)] | None = None
    """Where the simulated clock starts (ms since the epoch; default 2026-01-01T00:00:00Z)."""
    max_events: Annotated[int, Meta(ge=1, le=ROUTE_MAX_EVENTS)] = ROUTE_DEFAULT_EVENTS
    """The run stops with status aborted when its history reaches this many events."""


class DefinitionTest(WorkflowTest, kw_only=True, forbid_unknown_fields=True):
    """A test run of a definition that need not be registered."""

    definition: Annotated[dict[str, Json] | str, Meta(description="the definition document in any accepted "
                                                                   "form, as an object or as YAML/JSON text")]
    name: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    """Names a bare definition (one with no name of its own)."""
    version: Annotated[str, Meta(min_length=1, max_length=64)] | None = None


class TestRun(msgspec.Struct, kw_only=True):
    """What the run did: the instance's final status (or stalled/aborted, with the reason), its
    folded state, every event, and per step each attempt with the mock that answered it."""

    __test__ = False  # a response body, not a pytest class

    status: str
    """completed, failed, compensated or cancelled; stalled (nothing more can happen, e.g. a wait
    no mocked event satisfies); aborted (max_events or the simulated-time limit reached)."""
    reason: str | None = None
    state: dict[str, Json]
    """The instance as the engine folds it (as GET /executions/{id}/state shows it)."""
    output: Json = None
    history: list[HistoryEvent]
    steps: dict[str, list[dict[str, Json]]]
    """Per step, each attempt: kind, status, input, output or error, mock (the index of the mocked
    answer used; null: no mock, the default output {})."""
    simulated_ms: int
    """Simulated time from the start to the last thing that happened."""
    events: list[dict[str, Json]] = []
    """The mocked events as published: entry_id, type, data, at_ms."""
