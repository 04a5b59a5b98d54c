"""Health and metrics, open without a token (probes and scrapers carry none):
the same checks and answers as every worker role's ops server."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from engine.api.services import Services
from engine.runtime.health import Probe
from engine.runtime.role import Bystander

PUBLIC = {"public": True}
# Litestar adds the charset of a text/* type itself.
EXPOSITION = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")


def _probe(services: Services) -> Probe:
    return Probe(services.redis, services.client.keys, "api", Bystander(),
                 stuck_after_ms=services.settings.stuck_after_ms, alive=lambda: True, stopping=lambda: False)


def _answer(result: tuple[bool, dict[str, Any]]) -> Response[dict[str, Any]]:
    ok, doc = result
    return Response(doc, status_code=200 if ok else 503)


@get("/health/liveness", opt=PUBLIC, tags=["health"], summary="The process answers")
async def liveness(services: Services) -> Response[dict[str, Any]]:
    return _answer(_probe(services).liveness())


@get("/health/readiness", opt=PUBLIC, tags=["health"], summary="Redis answers: this process can serve")
async def readiness(services: Services) -> Response[dict[str, Any]]:
    return _answer(await _probe(services).readiness())


@get("/health/dependencies", opt=PUBLIC, tags=["health"], summary="Redis: reachability, latency, version, settings")
async def dependencies(services: Services) -> Response[dict[str, Any]]:
    return _answer(await _probe(services).dependencies())


@get("/metrics", opt=PUBLIC, tags=["health"], summary="Prometheus exposition", media_type=EXPOSITION)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(generate_latest(request.app.state.registry), media_type=EXPOSITION)


ROUTES = [liveness, readiness, dependencies, metrics]
