"""The service registry (seed 000's Service Discovery): `/services` lists,
registers, replaces and removes the records that `service_call` steps resolve
through, and `/services/{service_id}/health` checks every instance now
(Consul-style). A service is named by its id (a UUID) or its name. The checks
run from this process through an aiohttp session the app opens in its lifespan,
under the deployment's address policy (FOLDFLOW_HTTP_ALLOW / FOLDFLOW_HTTP_DENY):
a check of an address the policy refuses, or of one that never answers, is
`critical` within the service's check timeout, never an error of the API."""

from __future__ import annotations

import dataclasses
import time
from typing import Annotated, Any

import aiohttp
import msgspec
from litestar import Response, delete, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi.spec import Link, OpenAPIResponse, Operation
from litestar.params import JSONBody, PathParameter, QueryParameter

from engine.api.definitions import decode_cursor, encode_cursor, iso
from engine.api.models.services import (
    CheckView,
    HealthView,
    InstanceView,
    Service,
    ServiceHealth,
    ServiceIn,
    ServicePage,
    TlsView,
)
from engine.api.problems import Problem, ProblemItem, problems
from engine.api.routes.limits import limits_view_of
from engine.errors import NotFound
from engine.outbound.health import check_service, checking_session
from engine.outbound.safety import AddressPolicy
from engine.outbound.settings import http_settings
from engine.store.connection import Redis
from engine.store.keys import Keys
from engine.store.services import InstanceCheck, InvalidService, ServiceRecord, ServiceRegistry, aggregate

TAGS = ["services"]
ServiceId = Annotated[str, PathParameter(description="the service's id (a UUID) or its name", max_length=200)]


@dataclasses.dataclass(frozen=True, slots=True)
class Directory:
    """The registry and the HTTP session its checks use: one per API process."""

    registry: ServiceRegistry
    session: aiohttp.ClientSession
    policy: AddressPolicy

    @classmethod
    def open(cls, redis: Redis, keys: Keys) -> Directory:
        """Inside the running loop (the app's lifespan); ConfigError for a malformed policy."""
        policy = AddressPolicy(*http_settings().networks())
        return cls(registry=ServiceRegistry(redis, keys), session=checking_session(policy), policy=policy)

    async def close(self) -> None:
        await self.session.close()


def provide_directory(state: State) -> Directory:
    found: Directory = state.directory
    return found


def _check_view(check: InstanceCheck | None) -> tuple[str, str, str | None, int]:
    if check is None:
        return "unknown", "", None, 0
    return check.status, check.output, iso(check.checked_at), check.consecutive_failures


def service_view(record: ServiceRecord, checks: dict[str, InstanceCheck]) -> Service:
    current = [checks.get(i.url) or InstanceCheck(url=i.url) for i in record.instances]
    instances = []
    for instance, check in zip(record.instances, current):
        status, output, at, failures = _check_view(check)
        instances.append(InstanceView(url=instance.url, weight=instance.weight, status=status,  # type: ignore[arg-type]
                                      output=output, checked_at=at, consecutive_failures=failures))
    health = record.health
    tls = record.tls
    return Service(
        id=record.id, name=record.name, status=aggregate(current), instances=instances,  # type: ignore[arg-type]
        health=HealthView(path=health.path, interval_ms=health.interval_ms, timeout_ms=health.timeout_ms,
                          failures_before_critical=health.failures_before_critical),
        timeout_ms=record.timeout_ms, headers=dict(record.headers), tags=list(record.tags),
        metadata=dict(record.metadata),
        tls=None if tls is None else TlsView(ca_bundle=tls.ca_bundle, client_cert=tls.client_cert,
                                             client_key=tls.client_key),
        created_at=iso(record.created_at), updated_at=iso(record.updated_at))


async def _found(directory: Directory, service_id: str) -> ServiceRecord:
    record = await directory.registry.get(service_id)
    if record is None:
        raise NotFound(f"no service {service_id!r} is registered (by id or name)")
    return record


def _invalid(exc: InvalidService) -> Problem:
    return Problem(422, f"the service has {len(exc.problems)} problem(s)",
                   errors=[ProblemItem(path=p, message=m) for p, m in exc.problems])


def _body(data: ServiceIn) -> dict[str, Any]:
    body: dict[str, Any] = msgspec.to_builtins(data)
    return body


FOLLOWS = {"GetService": "getService", "CheckService": "checkService", "UpdateService": "updateService",
           "RemoveService": "removeService"}
LINKS = {name: Link(operation_id=op, parameters={"service_id": "$response.body#/id"},
                    description=f"{op} of the service this answer names") for name, op in FOLLOWS.items()}


@dataclasses.dataclass
class _Linked(Operation):
    """Its 201 links to the routes of the service it registered (stateful fuzzing follows them)."""

    def __post_init__(self) -> None:
        response = (self.responses or {}).get("201")
        if isinstance(response, OpenAPIResponse):
            response.links = {**(response.links or {}), **LINKS}


@post("/services", tags=TAGS, status_code=201, operation_id="createService", operation_class=_Linked,
      summary="Register a service (its name must be new)",
      responses={**problems(400, 409, 413, 415, 422)})
async def create_service(data: JSONBody[ServiceIn], directory: NamedDependency[Directory]) -> Response[Service]:
    try:
        record = await directory.registry.register(_body(data))
    except InvalidService as exc:
        raise _invalid(exc) from None
    return Response(service_view(record, {}), status_code=201, headers={"Location": f"/services/{record.id}"})


@get("/services", tags=TAGS, operation_id="listServices", summary="Services by name, a page at a time",
     responses=problems(400))
async def list_services(
    directory: NamedDependency[Directory],
    name: Annotated[str | None, QueryParameter(max_length=200, description="names containing this")] = None,
    tag: Annotated[str | None, QueryParameter(max_length=100, description="services with this tag")] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=400, description="next_cursor of a page")] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
) -> ServicePage:
    after = decode_cursor(cursor)
    chosen = [r for r in await directory.registry.all()
              if (after is None or r.name > after) and (not name or name.casefold() in r.name)
              and (tag is None or tag in r.tags)]
    page = chosen[:limit]
    checks = await directory.registry.checks_of([r.id for r in page])
    items = [service_view(r, checks[r.id]) for r in page]
    more = len(chosen) > limit
    return ServicePage(items=items, next_cursor=encode_cursor(page[-1].name) if more else None)


@get("/services/{service_id:str}", tags=TAGS, operation_id="getService",
     summary="One service, with each instance's last check", responses=problems(404))
async def get_service(directory: NamedDependency[Directory], service_id: ServiceId) -> Service:
    record = await _found(directory, service_id)
    view = service_view(record, await directory.registry.checks(record.id))
    limits = await limits_view_of(directory.registry.redis, directory.registry.keys, record.name)
    return view if limits is None else msgspec.structs.replace(view, limits=limits)


@put("/services/{service_id:str}", tags=TAGS, operation_id="updateService",
     summary="Replace a service's record (id and created_at stay; checks of removed instances go)",
     responses=problems(400, 404, 409, 413, 415, 422))
async def update_service(data: JSONBody[ServiceIn], directory: NamedDependency[Directory],
                         service_id: ServiceId) -> Service:
    try:
        record = await directory.registry.update(service_id, _body(data))
    except InvalidService as exc:
        raise _invalid(exc) from None
    return service_view(record, await directory.registry.checks(record.id))


@delete("/services/{service_id:str}", tags=TAGS, status_code=204, operation_id="removeService",
        summary="Remove a service: steps naming it resolve through the environment, or wait",
        responses=problems(404))
async def remove_service(directory: NamedDependency[Directory], service_id: ServiceId) -> None:
    if not await directory.registry.remove(service_id):
        raise NotFound(f"no service {service_id!r} is registered (by id or name)")


@get("/services/{service_id:str}/health", tags=TAGS, operation_id="checkService",
     summary="Check every instance now (within the service's check timeout) and store the results",
     responses=problems(404))
async def check_service_now(directory: NamedDependency[Directory], service_id: ServiceId) -> ServiceHealth:
    record = await _found(directory, service_id)
    checks = await check_service(directory.session, directory.registry, record, int(time.time() * 1000), policy=directory.policy)
    ordered = [checks[i.url] for i in record.instances]
    return ServiceHealth(service_id=record.id, name=record.name, status=aggregate(ordered),  # type: ignore[arg-type]
                         checks=[CheckView(url=c.url, status=c.status, output=c.output, checked_at=iso(c.checked_at))
                                 for c in ordered])


ROUTES: list[Any] = [create_service, list_services, get_service, update_service, remove_service, check_service_now]
