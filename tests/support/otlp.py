"""A tiny OTLP/HTTP trace receiver for the tracing tests: ``POST /v1/traces`` with a
protobuf ``ExportTraceServiceRequest`` (as opentelemetry-exporter-otlp-proto-http
sends it, gzip or not), served on a loopback port from a ServiceFarm's loop; every
span received is kept as a ``Received``.

    with ServiceFarm() as farm:
        collector = OtlpReceiver(farm).start()
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.url
        ... collector.spans
"""

from __future__ import annotations

import gzip
import threading
from typing import Any, NamedTuple

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from engine.dev.embedded import free_port
from tests.support.http_services import ServiceFarm

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


class Received(NamedTuple):
    service: str  # the resource's service.name
    name: str
    kind: str  # INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER
    trace_id: str  # hex, as in a traceparent
    span_id: str
    parent_id: str | None
    start_ns: int
    end_ns: int
    status: int  # 0 unset, 1 ok, 2 error
    attributes: dict[str, Any]


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return None if which is None else getattr(v, which)


def decode(body: bytes) -> list[Received]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    out = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(Received(
                    str(resource.get("service.name", "")), span.name, KINDS.get(span.kind, str(span.kind)),
                    span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex() or None,
                    span.start_time_unix_nano, span.end_time_unix_nano, span.status.code,
                    {kv.key: _value(kv.value) for kv in span.attributes}))
    return out


class OtlpReceiver:
    def __init__(self, farm: ServiceFarm) -> None:
        self.farm = farm
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.spans: list[Received] = []
        self.posts = 0
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        received = decode(body)
        with self._lock:
            self.posts += 1
            self.spans.extend(received)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def start(self) -> OtlpReceiver:
        async def serve() -> None:
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_post("/v1/traces", self._traces)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._runner = runner

        self.farm._run(serve())
        return self

    def stop(self) -> None:
        if self._runner is not None:
            self.farm._run(self._runner.cleanup())
            self._runner = None

    def named(self, name: str) -> list[Received]:
        with self._lock:
            return [s for s in self.spans if s.name == name]

    def trace(self, trace_id: str) -> list[Received]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]
