"""What the API and the CLI do with schedules, in one place: create, replace, pause, unpause,
delete, trigger, backfill, and the view `GET /schedules/{id}` and `foldflow schedules show`
print (definition, state, next fire times, recent runs). The scheduler loop
(engine/workers/scheduler.py) carries out triggers and backfills; here they are queued.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from engine.core.schedules import (
    MAX_BACKFILL,
    OVERLAPS,
    InvalidSchedule,
    Run,
    Schedule,
    count_fires,
    fire_times,
    iso_ms,
    trigger_id,
    validated,
)
from engine.errors import InvalidInput, UnknownWorkflow
from engine.store.catalog import Catalog
from engine.store.schedules import Request, ScheduleState, ScheduleStore

NEXT_SHOWN = 5
RUNS_SHOWN = 20


class RunView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    action: str
    at: str
    fire_time: str | None = None
    execution_id: str | None = None
    count: int = 0
    first: str | None = None
    last: str | None = None
    detail: str = ""


class StateView(msgspec.Struct, frozen=True, kw_only=True):
    paused: bool
    next_fire: str | None
    """When a worker looks at it next (its due score); None while paused."""
    last_fire: str | None
    last_execution_id: str | None
    buffered_fire: str | None
    created_at: str | None
    updated_at: str | None
    last_error: str
    counters: dict[str, int]


class ScheduleView(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    schedule: Schedule
    state: StateView
    next_fire_times: list[str]
    recent_runs: list[RunView]


def _iso(ms: int | None) -> str | None:
    return None if ms is None else iso_ms(ms)


def run_view(r: Run) -> RunView:
    return RunView(action=r.action, at=iso_ms(r.at_ms), fire_time=_iso(r.fire_ms), execution_id=r.execution_id,
                   count=r.count, first=_iso(r.first_ms), last=_iso(r.last_ms), detail=r.detail)


def view(state: ScheduleState, runs: list[Run], shown: int = NEXT_SHOWN) -> ScheduleView:
    s = state.schedule
    upcoming = [] if s.paused else fire_times(s, state.cursor_ms, 2**62, shown)
    return ScheduleView(
        name=s.name, schedule=s,
        state=StateView(paused=s.paused, next_fire=_iso(state.next_ms), last_fire=_iso(state.last_fire_ms),
                        last_execution_id=state.last_execution_id, buffered_fire=_iso(state.buffered_ms),
                        created_at=_iso(state.created_ms or None), updated_at=_iso(state.updated_ms or None),
                        last_error=state.last_error, counters=state.counters),
        next_fire_times=[iso_ms(t) for t in upcoming], recent_runs=[run_view(r) for r in runs])


def parse_time(value: str, field: str) -> int:
    """ms since the epoch from ISO 8601 (a time without an offset is UTC) or a number of ms."""
    if value.isdigit():
        return int(value)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{field}: not an ISO 8601 time (e.g. 2026-03-01T09:00:00Z): {value[:100]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


class ScheduleOps:
    def __init__(self, store: ScheduleStore, catalog: Catalog) -> None:
        self.store, self.catalog = store, catalog

    async def _checked(self, s: Schedule) -> Schedule:
        validated(s)  # InvalidSchedule names each field
        head = await self.catalog.head(s.workflow)
        if head.latest is None:
            raise UnknownWorkflow(f"workflow {s.workflow!r} is not registered: register it before scheduling it")
        if s.version is not None and await self.catalog.get(s.workflow, s.version) is None:
            raise UnknownWorkflow(f"workflow {s.workflow!r} has no version {s.version!r}")
        return s

    async def create(self, s: Schedule) -> ScheduleView:
        await self.store.put(await self._checked(s), "create")
        return await self.show(s.name)

    async def replace(self, s: Schedule) -> ScheduleView:
        await self.store.found(s.name)
        await self.store.put(await self._checked(s), "replace")
        return await self.show(s.name)

    async def set_paused(self, name: str, paused: bool) -> ScheduleView:
        s = (await self.store.found(name)).schedule
        await self.store.put(msgspec.structs.replace(s, paused=paused), "pause" if paused else "unpause")
        return await self.show(name)

    async def show(self, name: str, shown: int = NEXT_SHOWN) -> ScheduleView:
        state = await self.store.found(name)
        return view(state, await self.store.runs(name, RUNS_SHOWN), shown)

    async def all(self) -> list[ScheduleView]:
        out = []
        for name in await self.store.names():
            state = await self.store.get(name)
            if state is not None:
                out.append(view(state, [], 1))
        return out

    async def trigger(self, name: str, now_ms: int, overlap: str | None = None) -> str:
        _overlap(overlap)
        await self.store.found(name)
        iid = trigger_id(name, now_ms)
        await self.store.request(name, Request(kind="trigger", execution_id=iid, overlap=overlap))
        return iid

    async def backfill(self, name: str, from_ms: int, to_ms: int, now_ms: int,
                       overlap: str | None = None) -> list[int]:
        """Queue a backfill of every fire time in [from, to]; the fire times it covers."""
        _overlap(overlap)
        s = (await self.store.found(name)).schedule
        if to_ms < from_ms:
            raise InvalidInput("to: must not be before from")
        if to_ms > now_ms:
            raise InvalidInput("to: must not be in the future (future fire times start on their own)")
        count = count_fires(s, from_ms - 1, to_ms, MAX_BACKFILL + 1)
        if count > MAX_BACKFILL:
            raise InvalidInput(f"the range holds more than {MAX_BACKFILL} fire times, the most one backfill "
                               "starts: split it into smaller ranges")
        await self.store.request(name, Request(kind="backfill", from_ms=from_ms, to_ms=to_ms, overlap=overlap))
        return fire_times(s, from_ms - 1, to_ms, MAX_BACKFILL)


def _overlap(overlap: str | None) -> None:
    if overlap is not None and overlap not in OVERLAPS:
        raise InvalidInput(f"overlap: one of {', '.join(OVERLAPS)}, got {overlap[:50]!r}")


def schedule_of(body: dict[str, Any]) -> Schedule:
    """A Schedule from a JSON body; InvalidSchedule naming the field that does not convert."""
    try:
        return msgspec.convert(body, Schedule)
    except msgspec.ValidationError as exc:
        raise InvalidSchedule([(_field_of(str(exc)), str(exc))]) from None


def _field_of(message: str) -> str:
    _, _, path = message.rpartition("at `$.")
    return path.rstrip("`").split(".")[0].split("[")[0] or "body"



