"""Bodies of the routes the web UI needs beyond the executions and definitions
routes: signals, workers and dead letters (the OpenAPI schema is generated from them)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

SignalName = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$",
                                 description="what templates read as signals.<name>")]


class SignalRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: SignalName
    payload: Any = None


class SignalResult(msgspec.Struct, kw_only=True):
    execution_id: str
    name: str
    command_id: str
    applied: bool
    """true: the engine has recorded it (200); false: sent, not applied within wait_ms (202)."""
    status: str


class Worker(msgspec.Struct, kw_only=True):
    """One live worker process, as its heartbeat has it (streams.md, "Worker heartbeats")."""

    consumer: str
    role: str
    host: str
    pid: int
    version: str
    started_ms: int
    last_beat_ms: int
    age_ms: int
    """How long ago it last beat."""
    partitions: list[int]
    services: list[str]
    http: list[str]
    counters: dict[str, Any]


class Lag(msgspec.Struct, kw_only=True):
    """A consumer group on one stream: entries not yet delivered (lag, -1: unknown) and not yet acked."""

    group: str
    partition: str | None
    queue: str | None
    lag: int
    pending: int


class WorkersView(msgspec.Struct, kw_only=True):
    workers: list[Worker]
    partitions: int
    lag: list[Lag]
    dead_letters: dict[str, int]
    """Entries in each dead-letter stream, by partition ("events": the external events' one)."""
    now_ms: int


class DeadLetterView(msgspec.Struct, kw_only=True):
    ref: str
    """<partition>/<id>: what the routes below take."""
    id: str
    dlq: str
    partition: str
    reason: str
    source: str
    entry_id: str
    group: str | None
    ts: int | None
    deliveries: int | None
    fields: Any
    replayable: bool
    refusal: str | None


class DeadLetterPage(msgspec.Struct, kw_only=True):
    items: list[DeadLetterView]
    """Oldest first."""


class Replayed(msgspec.Struct, kw_only=True):
    ref: str
    source: str
    new_id: str
    """The new entry's id on its source stream."""
