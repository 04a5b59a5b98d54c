"""Bodies of the schedule routes (`/schedules`). The schema states the rules a generated
client can know (name alphabet, overlap policies, lengths); the rest (cron, time zone,
durations) is checked by engine/core/schedules.py, which names the field (422)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from engine.store.schedule_ops import ScheduleView

Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
                                   description="1-100 of A-Z a-z 0-9 _ . -: part of every execution id it starts")]
Duration = Annotated[str, msgspec.Meta(min_length=1, max_length=32,
                                       description='a duration such as "30s", "15m", "1h", "1d"')]
OverlapIn = Literal["skip", "buffer_one", "allow", "cancel_previous"]
Time = Annotated[str, msgspec.Meta(min_length=1, max_length=64,
                                   description="ISO 8601 (UTC unless it has an offset) or ms since the epoch")]


class ScheduleIn(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A schedule: POST creates it (`name` required), PUT replaces it (`name` may be left out).
    Exactly one of `cron` (5 fields, in `timezone`) and `every` (aligned to the epoch, at least 1s)."""

    workflow: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    name: Name | None = None
    context: dict[str, Any] = {}
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    cron: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    every: Duration | None = None
    timezone: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = "UTC"
    overlap: OverlapIn = "skip"
    catchup_window: Duration = "1m"
    paused: bool = False
    correlation_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    note: Annotated[str, msgspec.Meta(max_length=1000)] = ""


class TriggerIn(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    overlap: OverlapIn | None = None
    """Default: the schedule's own policy (buffer_one skips a trigger while the previous runs)."""


class BackfillIn(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, rename={"from_": "from"}):
    from_: Time
    to: Time
    overlap: OverlapIn | None = None
    """Default: allow."""


class Requested(msgspec.Struct):
    """Queued for the engine workers' scheduler (it runs within a poll, FOLDFLOW_SCHEDULE_POLL_MS);
    the outcome appears in the schedule's `recent_runs`."""

    name: str
    status: Literal["requested"]
    execution_ids: list[str]


class SchedulePage(msgspec.Struct):
    items: list[ScheduleView]
    next_cursor: str | None


__all__ = ["BackfillIn", "Requested", "ScheduleIn", "SchedulePage", "ScheduleView", "TriggerIn"]
