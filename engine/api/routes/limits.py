"""Per-service limits across the cluster (issue 16): `PUT /services/{name}/limits`
declares at most N tasks of a service in flight and/or a rate (a token bucket),
`GET` shows them with their live usage (permits held, tokens left, tasks waiting),
`DELETE` lifts them; `GET /limits` lists every limited service. A service is any
service a step calls (a queue), registered or not; a registered service may be
named by its id too. The activity workers enforce the limits (engine/workers/limits.py)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import delete, get, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter

from engine.api.models.limits import LimitsIn, LimitsPage, LimitsView, RateView, UsageView
from engine.api.problems import Problem, ProblemItem, problems
from engine.api.services import Services
from engine.errors import NotFound
from engine.store.connection import Redis
from engine.store.keys import Keys
from engine.store.limits import (
    SERVICE_NAME,
    InvalidLimits,
    Limits,
    LimitStore,
    check_service,
    duration_text,
    limits_runner,
    parse_limits,
)
from engine.store.services import ServiceRegistry

TAGS = ["services"]
ServiceName = Annotated[str, PathParameter(
    description="the service's name (the queue its steps call), or a registered service's id",
    pattern=SERVICE_NAME.pattern, max_length=100)]


def _store(services: Services) -> LimitStore:
    return LimitStore(limits_runner(services.redis), services.client.keys)


def _invalid(exc: InvalidLimits) -> Problem:
    return Problem(422, f"the limits have {len(exc.problems)} problem(s): {exc}",
                   errors=[ProblemItem(path=p, message=m) for p, m in exc.problems])


async def _name(services: Services, service_id: str) -> str:
    """The service's name: a registered service's id resolves to its name."""
    if len(service_id) == 36 and service_id.count("-") == 4:
        record = await ServiceRegistry(services.redis, services.client.keys).get(service_id)
        if record is not None:
            return record.name
    try:
        return check_service(service_id)
    except InvalidLimits as exc:
        raise _invalid(exc) from None


async def _view(store: LimitStore, service: str, limits: Limits | None) -> LimitsView:
    usage = await store.usage(service, limits)
    shown = limits or Limits()
    rate = shown.rate
    return LimitsView(
        service=service, limited=limits is not None and limits.active, in_flight=shown.in_flight,
        rate=None if rate is None else RateView(limit=rate.limit, per=duration_text(rate.per_ms), per_ms=rate.per_ms),
        lease=duration_text(shown.lease_ms), lease_ms=shown.lease_ms,
        usage=UsageView(in_flight=usage.in_flight, tokens=usage.tokens,
                        waiting=usage.waiting_in_flight + usage.waiting_rate,
                        waiting_in_flight=usage.waiting_in_flight, waiting_rate=usage.waiting_rate))


async def limits_view_of(redis: Redis, keys: Keys, service: str) -> LimitsView | None:
    """A service's limits with their usage, or None when it has none (GET /services/{id} shows them)."""
    store = LimitStore(limits_runner(redis), keys)
    limits = await store.get(service)
    return None if limits is None else await _view(store, service, limits)


@put("/services/{service_id:str}/limits", tags=TAGS, operation_id="putServiceLimits",
     summary="Set a service's limits across the cluster: tasks in flight at once and/or a rate",
     responses=problems(400, 413, 415, 422))
async def put_limits(data: JSONBody[LimitsIn], services: NamedDependency[Services],
                     service_id: ServiceName) -> LimitsView:
    service = await _name(services, service_id)
    body: dict[str, Any] = msgspec.to_builtins(data)
    try:
        limits = parse_limits(body)
    except InvalidLimits as exc:
        raise _invalid(exc) from None
    store = _store(services)
    await store.put(service, limits)
    return await _view(store, service, limits)


@get("/services/{service_id:str}/limits", tags=TAGS, operation_id="getServiceLimits",
     summary="A service's limits and their live usage: permits held, tokens left, tasks waiting",
     responses=problems(400, 422))
async def get_limits(services: NamedDependency[Services], service_id: ServiceName) -> LimitsView:
    service = await _name(services, service_id)
    store = _store(services)
    return await _view(store, service, await store.get(service))


@delete("/services/{service_id:str}/limits", tags=TAGS, status_code=204, operation_id="deleteServiceLimits",
        summary="Lift a service's limits (tasks waiting for them run)", responses=problems(400, 404, 422))
async def delete_limits(services: NamedDependency[Services], service_id: ServiceName) -> None:
    service = await _name(services, service_id)
    if not await _store(services).remove(service):
        raise NotFound(f"service {service!r} has no limits")


@get("/limits", tags=TAGS, operation_id="listServiceLimits", summary="Every limited service, with its live usage")
async def list_limits(services: NamedDependency[Services]) -> LimitsPage:
    store = _store(services)
    return LimitsPage(items=[await _view(store, name, limits) for name, limits in (await store.all()).items()])


ROUTES: list[Any] = [put_limits, get_limits, delete_limits, list_limits]
