"""The API's request metrics, under seed 000's names: `api_request_count` and
`api_request_duration_seconds`, labelled by method, route template and status.
The route label is the template (`/executions/{execution_id}`), never the raw
path, so an id can never become a label value and grow the series without bound."""

from __future__ import annotations

import time
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Histogram

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("method", "route", "status")
        self.count = Counter("api_request_count", "HTTP requests answered by the API", labels, registry=registry)
        self.duration = Histogram("api_request_duration_seconds", "Time to answer an HTTP request", labels,
                                  registry=registry, buckets=BUCKETS)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        async def measured(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            status = [500]

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status[0] = int(message["status"])
                await send(message)

            started = time.perf_counter()
            try:
                await app(scope, receive, sending)
            finally:
                route: Any = scope.get("path_template") or "unmatched"
                labels = (scope.get("method", "GET"), str(route), str(status[0]))
                self.count.labels(*labels).inc()
                self.duration.labels(*labels).observe(time.perf_counter() - started)

        return measured
