"""Schedules: `/schedules` creates, lists, replaces and deletes them; `/schedules/{name}`
shows the definition, the state, the next fire times and the recent runs; `trigger`,
`pause`, `unpause` and `backfill` act on one. Triggers and backfills are queued for the
engine workers' scheduler (202); its outcome is in `recent_runs`. Reads need `read`,
the rest `write` (engine/api/auth.py, by method)."""

from __future__ import annotations

import time
import weakref
from typing import Annotated, Any

import msgspec
from litestar import Response, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter

from engine.api.definitions import decode_cursor, encode_cursor
from engine.api.models.schedules import BackfillIn, Requested, ScheduleIn, SchedulePage, ScheduleView, TriggerIn
from engine.api.problems import Problem, ProblemItem, problems
from engine.api.services import Services
from engine.client import Client
from engine.core.schedules import InvalidSchedule, Schedule, execution_id
from engine.errors import NotFound
from engine.store.schedule_ops import ScheduleOps, parse_time, schedule_of
from engine.store.schedules import ScheduleStore

TAGS = ["schedules"]
ScheduleName = Annotated[str, PathParameter(description="the schedule's name", max_length=100)]
_OPS: weakref.WeakKeyDictionary[Client, ScheduleOps] = weakref.WeakKeyDictionary()


def _ops(services: Services) -> ScheduleOps:
    """One per API process (its scripts are read once)."""
    client = services.client
    found = _OPS.get(client)
    if found is None:
        found = _OPS[client] = ScheduleOps(ScheduleStore(client.redis, client.keys), client.catalog)
    return found


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _schedule(data: ScheduleIn, name: str) -> Schedule:
    body: dict[str, Any] = msgspec.to_builtins(data)
    body["name"] = name
    try:
        return schedule_of(body)
    except InvalidSchedule as exc:
        raise _invalid(exc) from None


def _invalid(exc: InvalidSchedule) -> Problem:
    return Problem(422, f"the schedule has {len(exc.problems)} problem(s)",
                   errors=[ProblemItem(path=f, message=m) for f, m in exc.problems])


async def _checked(call: Any) -> ScheduleView:
    try:
        view: ScheduleView = await call
    except InvalidSchedule as exc:
        raise _invalid(exc) from None
    return view


@post("/schedules", tags=TAGS, status_code=201, operation_id="createSchedule",
      summary="Create a schedule (its name must be new; its workflow registered)",
      responses=problems(400, 404, 409, 413, 415, 422))
async def create_schedule(data: JSONBody[ScheduleIn], services: NamedDependency[Services]) -> Response[ScheduleView]:
    if data.name is None:
        raise Problem(422, "the schedule has 1 problem(s)", errors=[ProblemItem(path="name", message="required")])
    view = await _checked(_ops(services).create(_schedule(data, data.name)))
    return Response(view, status_code=201, headers={"Location": f"/schedules/{view.name}"})


@get("/schedules", tags=TAGS, operation_id="listSchedules", summary="Schedules by name, a page at a time",
     responses=problems(400))
async def list_schedules(
    services: NamedDependency[Services],
    cursor: Annotated[str | None, QueryParameter(max_length=400, description="next_cursor of a page")] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
) -> SchedulePage:
    after = decode_cursor(cursor)
    views = [v for v in await _ops(services).all() if after is None or v.name > after]
    page = views[:limit]
    more = len(views) > limit
    return SchedulePage(items=page, next_cursor=encode_cursor(page[-1].name) if more else None)


@get("/schedules/{name:str}", tags=TAGS, operation_id="getSchedule",
     summary="One schedule: definition, state, next fire times and recent runs", responses=problems(400, 404))
async def get_schedule(services: NamedDependency[Services], name: ScheduleName,
                       next: Annotated[int, QueryParameter(ge=0, le=100, description="fire times shown")] = 5,
                       ) -> ScheduleView:
    return await _ops(services).show(name, next)


@put("/schedules/{name:str}", tags=TAGS, operation_id="replaceSchedule",
     summary="Replace a schedule (its next fire time is computed from now; counters and runs stay)",
     responses=problems(400, 404, 413, 415, 422))
async def replace_schedule(data: JSONBody[ScheduleIn], services: NamedDependency[Services],
                           name: ScheduleName) -> ScheduleView:
    if data.name is not None and data.name != name:
        raise Problem(422, "the schedule has 1 problem(s)",
                      errors=[ProblemItem(path="name", message=f"{data.name[:100]!r} is not the name in the path")])
    return await _checked(_ops(services).replace(_schedule(data, name)))


@delete("/schedules/{name:str}", tags=TAGS, status_code=204, operation_id="deleteSchedule",
        summary="Delete a schedule (the runs it started keep running)", responses=problems(404))
async def delete_schedule(services: NamedDependency[Services], name: ScheduleName) -> None:
    if not await _ops(services).store.delete(name):
        raise NotFound(f"no schedule {name!r}")


@post("/schedules/{name:str}/pause", tags=TAGS, status_code=200, operation_id="pauseSchedule",
      summary="Stop starting runs (triggers and backfills still run)", responses=problems(404))
async def pause_schedule(services: NamedDependency[Services], name: ScheduleName) -> ScheduleView:
    return await _ops(services).set_paused(name, True)


@post("/schedules/{name:str}/unpause", tags=TAGS, status_code=200, operation_id="unpauseSchedule",
      summary="Start runs again from now (the paused time is not backfilled)", responses=problems(404))
async def unpause_schedule(services: NamedDependency[Services], name: ScheduleName) -> ScheduleView:
    return await _ops(services).set_paused(name, False)


@post("/schedules/{name:str}/trigger", tags=TAGS, status_code=202, operation_id="triggerSchedule",
      summary="Start one run now, id <name>@trigger-<ms> (the schedule's overlap policy unless given)",
      responses=problems(400, 404, 415))
async def trigger_schedule(services: NamedDependency[Services], name: ScheduleName,
                           data: JSONBody[TriggerIn | None] = None) -> Requested:
    iid = await _ops(services).trigger(name, _now_ms(), data.overlap if data else None)
    return Requested(name=name, status="requested", execution_ids=[iid])


@post("/schedules/{name:str}/backfill", tags=TAGS, status_code=202, operation_id="backfillSchedule",
      summary="Start every fire time in [from, to] (at most 1000; the same ids as the regular fires)",
      responses=problems(400, 404, 415))
async def backfill_schedule(services: NamedDependency[Services], name: ScheduleName,
                            data: JSONBody[BackfillIn]) -> Requested:
    times = await _ops(services).backfill(name, parse_time(data.from_, "from"), parse_time(data.to, "to"),
                                          _now_ms(), data.overlap)
    return Requested(name=name, status="requested", execution_ids=[execution_id(name, t) for t in times])


ROUTES: list[Any] = [create_schedule, list_schedules, get_schedule, replace_schedule, delete_schedule,
                     pause_schedule, unpause_schedule, trigger_schedule, backfill_schedule]
