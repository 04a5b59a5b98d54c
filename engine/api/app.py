"""The Litestar application: routes, auth, problems, metrics and the OpenAPI
3.1 document (generated from the msgspec Structs the routes take and return),
served at `/openapi.json` with interactive docs at `/docs`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityRequirement, SecurityScheme
from prometheus_client import CollectorRegistry

from engine.api.auth import TokenVerifier, guard
from engine.api.metrics import RequestMetrics
from engine.api.problems import EXCEPTION_HANDLERS
from engine.api.routes import ROUTES
from engine.api.services import Services
from engine.api.settings import ApiSettings
from engine.config import Settings
from engine.store.connection import Redis, connect


def _version() -> str:
    try:
        return version("foldflow")
    except PackageNotFoundError:
        return "0"


def _services(state: State) -> Services:
    services: Services = state.services
    return services


def openapi_config() -> OpenAPIConfig:
    bearer = SecurityScheme(type="http", scheme="bearer", bearer_format="JWT",
                            description="A JWT whose `scope` claim grants read, write or admin")
    security: list[SecurityRequirement] = [{"bearer": []}]
    return OpenAPIConfig(
        title="foldflow", version=_version(), path="/",
        description="Durable workflows on Redis Streams: definitions, executions, steps, events, live streams.",
        render_plugins=[SwaggerRenderPlugin(path="/docs")],
        components=Components(security_schemes={"bearer": bearer}), security=security,
    )


def create_app(settings: Settings, api: ApiSettings, *,
               redis_factory: Callable[[], Redis] | None = None) -> Litestar:
    """The app; Redis is connected in its lifespan (or by redis_factory, for tests)."""
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        redis = redis_factory() if redis_factory else connect(settings.redis_url)
        app.state.services = Services.over(redis, settings, api)
        try:
            yield
        finally:
            await redis.aclose()

    state: dict[str, Any] = {"registry": registry,
                             "verifier": TokenVerifier(api) if api.auth_configured else None}
    return Litestar(
        route_handlers=ROUTES,
        dependencies={"services": Provide(_services, sync_to_thread=False)},
        guards=[guard],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[metrics.middleware],
        openapi_config=openapi_config(),
        lifespan=[lifespan],
        state=State(state),
        request_max_body_size=settings.max_payload_bytes,
        debug=False,
    )
