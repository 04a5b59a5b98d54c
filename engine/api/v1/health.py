"""Seed 001's GET /health and GET /ping: open (no token), as probes send none."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec

from engine.api.services import Services
from engine.api.v1.models.health import Health, Pong

CHECK_TIMEOUT_S = 2.0
PUBLIC = {"public": True}
OPEN: list[dict[str, list[str]]] = [{}]  # no token: an empty requirement overrides the global bearer
FAILING = {503: ResponseSpec(data_container=Health, generate_examples=False,
                             description="Redis did not answer (Retry-After says when to ask again)")}


@get("/health", opt=PUBLIC, security=OPEN, tags=["health"], responses=FAILING, operation_id="v1Health",
     summary="Status and a Redis check (503 when Redis does not answer)")
async def health(services: NamedDependency[Services]) -> Response[Health]:
    began = time.perf_counter()
    try:
        await asyncio.wait_for(services.redis.ping(), CHECK_TIMEOUT_S)
    except Exception as exc:  # any failure to answer is the finding, not an error of this route
        return Response(Health(status="unhealthy", redis=f"unreachable: {exc.__class__.__name__}"),
                        status_code=503, headers={"Retry-After": "1"})
    took = round((time.perf_counter() - began) * 1000, 2)
    return Response(Health(status="healthy", redis="ok", redis_latency_ms=took))


@get("/ping", opt=PUBLIC, security=OPEN, tags=["health"], operation_id="v1Ping", summary="The process answers")
async def ping() -> Pong:
    return Pong()


ROUTES: list[Any] = [health, ping]
