"""A job is seed 001's word for an execution: same id (`job_id` = `run_id` =
the execution id), statuses in its five words."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

Level = Literal["info", "warning", "error"]
JobStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,199}$"


class ExecuteRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`input_data` (seed 001 and 003) or `input` (the same thing); not both."""

    input_data: dict[str, Any] | None = None
    input: dict[str, Any] | None = None
    run_id: Annotated[str, Meta(pattern=RUN_ID_PATTERN, description="chosen by the caller; a repeat "
                                "starts nothing twice")] | None = None
    version: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    triggered_by: Annotated[str, Meta(max_length=200)] | None = None


class JobCreated(msgspec.Struct, kw_only=True):
    job_id: str
    run_id: str
    workflow_id: str
    workflow_name: str
    version: str | None
    status: JobStatus
    input_data: dict[str, Any]
    created_at: str


class NodeResult(msgspec.Struct, kw_only=True):
    node_id: str
    status: str
    """The step's status as the engine has it (pending, scheduled, completed, failed, skipped, ...)."""
    attempts: int
    output: Any = None
    """The node's output (for nodes and edges workflows, the `output` of the step's answer)."""
    error: Any = None


class Job(msgspec.Struct, kw_only=True):
    job_id: str
    run_id: str
    workflow_id: str | None
    workflow_name: str | None
    version: str | None
    status: JobStatus
    instance_status: str
    """The engine's own status (created, running, paused, compensating, compensated, ...)."""
    input_data: dict[str, Any]
    output: Any
    error: Any
    node_results: list[NodeResult]
    created_at: str | None
    started_at: str | None
    updated_at: str | None
    completed_at: str | None


class JobSummary(msgspec.Struct, kw_only=True):
    job_id: str
    workflow_id: str | None
    workflow_name: str | None
    status: JobStatus
    instance_status: str
    error: Any
    created_at: str | None
    updated_at: str | None
    completed_at: str | None


class JobPage(msgspec.Struct, kw_only=True):
    """Newest first; `next_cursor` as `cursor` gives the next page (absent on the last)."""

    items: list[JobSummary]
    total: int
    limit: int
    next_cursor: str | None = None


class CancelResult(msgspec.Struct, kw_only=True):
    job_id: str
    applied: bool
    """false: sent, not applied within the wait (GET the job to see it land)."""
    status: JobStatus


class LogLine(msgspec.Struct, kw_only=True):
    seq: int
    entry_id: str
    timestamp: str
    level: Level
    event: str
    node_id: str | None = None
    attempt: int | None = None
    message: str


class LogPage(msgspec.Struct, kw_only=True):
    """In order; pass `next_cursor` as `cursor` for the lines after these."""

    job_id: str
    lines: list[LogLine]
    next_cursor: str | None = None
