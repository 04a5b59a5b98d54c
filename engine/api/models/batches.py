"""Bodies of the batch operations' routes (`/batches`). The request is the core's
BatchSpec itself (engine/core/batches.py), so the API, the CLI and the runner read
one definition of it."""

from __future__ import annotations

import msgspec

from engine.core.batches import BatchQuery, BatchSignal


class BatchView(msgspec.Struct):
    """A batch and its progress: matched so far, done, failed (with reasons at /failures), remaining."""

    batch_id: str
    operation: str
    state: str
    """matching | running | completed | failed | cancelled"""
    query: BatchQuery
    rate: int
    matched: int
    done: int
    failed: int
    remaining: int
    created_at: str | None
    updated_at: str | None
    finished_at: str | None
    reason: str | None = None
    signal: BatchSignal | None = None
    from_step: str | None = None
    error: str | None = None


class BatchPage(msgspec.Struct):
    items: list[BatchView]
    next_cursor: str | None


class BatchFailure(msgspec.Struct):
    execution_id: str
    reason: str
    entry_id: str


class FailurePage(msgspec.Struct):
    batch_id: str
    items: list[BatchFailure]
    next_after: str | None
    """Pass as `after` for the next page (null: none yet)."""
