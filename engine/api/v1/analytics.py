"""Seed 001's analytics: per workflow, and per job and node type, over a time window
(by creation time), from the read models. The cost is bounded: at most
`max_executions` of the window's executions are read (the newest), and the
answer says `truncated` when the window holds more."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from litestar import get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from engine.api.definitions import iso
from engine.api.problems import problems
from engine.api.services import Services
from engine.api.v1.models.analytics import JobAnalytics, Window, WorkflowAnalytics
from engine.api.v1.shapes import is_reserved, node_types
from engine.api.v1.stats import Tally, add_execution, by_workflow, node_runs
from engine.errors import NotFound
from projections.keys import ViewKeys
from projections.queries import MAX_LIMIT, parse_time

TAGS = ["v1 analytics"]
READ = {"scope": "read"}
MAX_EXECUTIONS = 5000
Since = Annotated[str | None, QueryParameter(max_length=64, description="ms, ISO-8601 or an age (15m, 2d); "
                                             "default: 24h")]
Until = Annotated[str | None, QueryParameter(max_length=64, description="ms, ISO-8601 or an age; default: now")]
Bound = Annotated[int, QueryParameter(ge=1, le=MAX_EXECUTIONS, description="read at most this many executions")]


async def _window(services: Services, since: str | None, until: str | None,
                  bound: int) -> tuple[list[dict[str, Any]], Window]:
    lo = parse_time(since or "24h")
    hi = parse_time(until) if until else None
    records: list[dict[str, Any]] = []
    cursor, total = None, 0
    while len(records) < bound:
        page = await services.queries.executions(since=lo, until=hi, limit=min(MAX_LIMIT, bound - len(records)),
                                                 cursor=cursor)
        total = int(page["count"])
        records.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    window = Window(since=iso(lo), until=iso(hi), read=len(records), max_executions=bound,
                    truncated=total > len(records))
    return [r for r in records if not is_reserved(r.get("workflow"))], window


@get("/api/v1/analytics/workflows", opt=READ, tags=TAGS, operation_id="v1WorkflowAnalytics",
     responses=problems(400), summary="Per workflow: counts by status, success rate, duration percentiles, retries")
async def workflow_analytics(services: NamedDependency[Services], since: Since = None, until: Until = None,
                             max_executions: Bound = 1000) -> WorkflowAnalytics:
    records, window = await _window(services, since, until, max_executions)
    return WorkflowAnalytics(window=window, workflows=by_workflow(records))


async def _attempts(services: Services, records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The steps read model of each execution, in one pipelined round trip."""
    if not records:
        return []
    vk, keys = ViewKeys(services.client.keys), services.client.keys
    pipe = services.redis.pipeline(transaction=False)
    for r in records:
        pipe.hget(vk.view(keys.partition(str(r["id"])), str(r["id"])), "steps")
    return [orjson.loads(raw) if raw is not None else [] for raw in await pipe.execute()]


async def _types_of(services: Services, cache: dict[tuple[str, str], dict[str, str]],
                    record: dict[str, Any]) -> dict[str, str]:
    key = (str(record.get("workflow")), str(record.get("workflow_version")))
    if key not in cache:
        try:
            doc = await services.client.definition_document(*key)
            cache[key] = node_types(doc, await services.client.definition(*key))
        except NotFound:
            cache[key] = {}
    return cache[key]


@get("/api/v1/analytics/jobs", opt=READ, tags=TAGS, operation_id="v1JobAnalytics", responses=problems(400),
     summary="Jobs overall and per node type: counts by status, success rate, duration percentiles, retries")
async def job_analytics(services: NamedDependency[Services], since: Since = None, until: Until = None,
                        max_executions: Bound = 1000) -> JobAnalytics:
    records, window = await _window(services, since, until, max_executions)
    jobs, per_type = Tally("jobs"), dict[str, Tally]()
    cache: dict[tuple[str, str], dict[str, str]] = {}
    for record, attempts in zip(records, await _attempts(services, records)):
        add_execution(jobs, record)
        types = await _types_of(services, cache, record)
        for step, (status, took, retries) in node_runs(attempts).items():
            kind = types.get(step, "unknown")
            per_type.setdefault(kind, Tally(kind)).add(status, took, retries)
    return JobAnalytics(window=window, jobs=jobs.stats(), node_types=[t.stats() for _, t in sorted(per_type.items())])


ROUTES: list[Any] = [workflow_analytics, job_analytics]
