"""Analytics over a time window, from the read models, at bounded cost."""

from __future__ import annotations

import msgspec


class Durations(msgspec.Struct, kw_only=True):
    """Milliseconds, over the finished items that have both ends (null when none)."""

    p50: float | None
    p95: float | None
    p99: float | None
    count: int


class Stats(msgspec.Struct, kw_only=True):
    key: str
    """The workflow's name, or the node type."""
    total: int
    by_status: dict[str, int]
    success_rate: float | None
    """completed / finished (completed, failed, cancelled); null when none finished."""
    duration_ms: Durations
    retries: int


class Window(msgspec.Struct, kw_only=True):
    since: str | None
    until: str | None
    read: int
    """Executions read: at most `max_executions`."""
    max_executions: int
    truncated: bool
    """More executions fall in the window than were read (the newest were)."""


class WorkflowAnalytics(msgspec.Struct, kw_only=True):
    window: Window
    workflows: list[Stats]


class JobAnalytics(msgspec.Struct, kw_only=True):
    window: Window
    jobs: Stats
    node_types: list[Stats]
