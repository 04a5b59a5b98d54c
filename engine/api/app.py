"""The Litestar application: routes, auth, problems, metrics and the OpenAPI
3.1 document (generated from the msgspec Structs the routes take and return),
served at `/openapi.json` with interactive docs at `/docs`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityRequirement, SecurityScheme
from prometheus_client import CollectorRegistry

from engine.api.auth import TokenVerifier, guard
from engine.api.metrics import RequestMetrics
from engine.api.problems import EXCEPTION_HANDLERS
from engine.api.routes import ROUTES
from engine.api.routes.services import Directory, provide_directory
from engine.api.services import Services
from engine.api.settings import ApiSettings
from engine.api.surface import Docs, check_media_type, completed_on_startup, websocket_denials
from engine.config import Settings
from engine.runtime import tracing
from engine.store.connection import Redis, connect_blocking

CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 5.0
REQUEST_POOL = 256  # connections; starts and controls wait on the blocking pool, not here
MAX_BLOCK_MS = 10_000  # the longest XREAD BLOCK any route issues (engine/api/live/sources.BLOCK_MS)


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
        render_plugins=[Docs(path="/docs")],
        components=Components(security_schemes={"bearer": bearer}), security=security,
    )


def connect_pools(settings: Settings, api: ApiSettings) -> tuple[Redis, Redis]:
    """The request client and the blocking-read client. Both pools wait for a free
    connection (up to 5 s) rather than fail past their size. A Redis that is down
    answers 503 fast: a closed port refuses at once, a silent host is given
    CONNECT_TIMEOUT_S; one that accepts and then stalls is cut off after
    READ_TIMEOUT_S on requests, and after the longest BLOCK plus a margin on
    blocking reads. On Redis Cluster a blocked XREAD is per partition, so that
    pool is sized per partition too."""
    scheme = settings.redis_url.partition("://")[0]
    per_sub = settings.partitions if "cluster" in scheme else 1
    redis = connect_blocking(settings.redis_url, REQUEST_POOL, read_timeout_s=READ_TIMEOUT_S,
                             socket_connect_timeout=CONNECT_TIMEOUT_S)
    blocking = connect_blocking(settings.redis_url, api.max_subscriptions * per_sub + REQUEST_POOL,
                                read_timeout_s=MAX_BLOCK_MS / 1000 + 5, socket_connect_timeout=CONNECT_TIMEOUT_S)
    return redis, blocking


def create_app(settings: Settings, api: ApiSettings, *,
               redis_factory: Callable[[], Redis] | None = None) -> Litestar:
    """The app; Redis is connected in its lifespan (or by redis_factory, for tests)."""
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        tracing.setup("api")  # the spans of the starts it sends, when OTEL_* asks for them
        if redis_factory:
            redis, blocking = redis_factory(), None
        else:
            redis, blocking = connect_pools(settings, api)
        app.state.services = Services.over(redis, settings, api, blocking=blocking)
        app.state.directory = Directory.open(redis, app.state.services.client.keys)
        try:
            yield
        finally:
            await app.state.directory.close()
            await redis.aclose()
            if blocking is not None:
                await blocking.aclose()
            await asyncio.to_thread(tracing.shutdown)

    state: dict[str, Any] = {"registry": registry,
                             "verifier": TokenVerifier(api) if api.auth_configured else None}
    app = Litestar(
        route_handlers=ROUTES,
        dependencies={"services": Provide(_services, sync_to_thread=False),
                      "directory": Provide(provide_directory, sync_to_thread=False)},
        guards=[guard],
        before_request=check_media_type,
        on_startup=[completed_on_startup],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=openapi_config(),
        lifespan=[lifespan],
        state=State(state),
        request_max_body_size=settings.max_payload_bytes,
        debug=False,
        logging_config=None,  # foldflow's (--log-format), not Litestar's root handler; problems.py logs errors
    )
    # Outside the router, not as route middleware: requests no route matches (404, 405) are
    # counted too, under the route label "unmatched".
    app.asgi_handler = websocket_denials(metrics.middleware(app.asgi_handler))
    return app
