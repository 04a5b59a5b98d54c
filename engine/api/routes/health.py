"""Health and metrics, open without a token (probes and scrapers carry none):
the same checks and answers as every worker role's ops server."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from engine.api.services import Services
from engine.runtime.health import Probe
from engine.runtime.role import Bystander

PUBLIC = {"public": True}
# In the spec: these operations take no token (an empty requirement overrides the global bearer).
OPEN: list[dict[str, list[str]]] = [{}]
# Litestar adds the charset of a text/* type itself.
EXPOSITION = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")


def _probe(services: Services) -> Probe:
    return Probe(services.redis, services.client.keys, "api", Bystander(),
                 stuck_after_ms=services.settings.stuck_after_ms, alive=lambda: True, stopping=lambda: False)


# A failing probe answers its checks, not a problem document: what failed is the answer.
FAILING = {503: ResponseSpec(data_container=dict[str, Any], generate_examples=False,
                             description="A check failed (Retry-After says when to ask again)")}


def _answer(result: tuple[bool, dict[str, Any]]) -> Response[dict[str, Any]]:
    ok, doc = result
    if ok:
        return Response(doc, status_code=200)
    return Response(doc, status_code=503, headers={"Retry-After": "1"})


@get("/health/liveness", opt=PUBLIC, security=OPEN, tags=["health"], responses=FAILING, summary="The process answers")
async def liveness(services: NamedDependency[Services]) -> Response[dict[str, Any]]:
    return _answer(_probe(services).liveness())


@get("/health/readiness", opt=PUBLIC, security=OPEN, tags=["health"], responses=FAILING,
     summary="Redis answers: this process can serve")
async def readiness(services: NamedDependency[Services]) -> Response[dict[str, Any]]:
    return _answer(await _probe(services).readiness())


@get("/health/dependencies", opt=PUBLIC, security=OPEN, tags=["health"], responses=FAILING,
     summary="Redis: reachability, latency, version, settings")
async def dependencies(services: NamedDependency[Services]) -> Response[dict[str, Any]]:
    return _answer(await _probe(services).dependencies())


@get("/metrics", opt=PUBLIC, security=OPEN, tags=["health"], summary="Prometheus exposition", media_type=EXPOSITION)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(generate_latest(request.app.state.registry), media_type=EXPOSITION)


ROUTES = [liveness, readiness, dependencies, metrics]
