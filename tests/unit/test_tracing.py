"""Tracing (engine.runtime.tracing) with an in-memory exporter, on fakeredis: the start
span continues the request's trace and its context is what the execution stores; each
step attempt is a span from its dispatch to its report, parented by the start; each
HTTP call of the executor is a CLIENT span under its attempt, and the service receives
that span's traceparent. Off, no span is made and a traceparent passes through as given."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import fakeredis
import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from engine.client import Client
from engine.config import Settings
from engine.core.model import Task
from engine.ops.logs import JsonFormatter, TextFormatter
from engine.outbound.settings import HttpSettings
from engine.runtime import tracing
from engine.runtime.observe import ActivityObserver
from engine.workers.activities import ActivityWorker, Registry
from engine.workers.engine import EngineWorker
from engine.workers.http.serving import HttpServing
from tests.support.http_services import FakeService, ServiceFarm
from tests.support.poll import run
from tests.support.tools import ROOT

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TP = f"00-{TRACE}-{PARENT}-01"
ORDER = {"name": "order", "version": "1", "definition": {"steps": [
    {"name": "fetch", "type": "service_call", "service": "inventory", "endpoint": "/stock",
     "retry_policy": {"max_attempts": 2, "backoff_multiplier": 10, "jitter": 0}},
    {"name": "ship", "type": "service_call", "service": "shipping"},
]}}
ONE = {"name": "one", "version": "1", "definition": {"steps": [
    {"name": "fetch", "type": "service_call", "service": "inventory", "endpoint": "/stock"}]}}


@pytest.fixture(autouse=True)
def tracing_reset() -> Iterator[None]:
    tracing.reset()
    yield
    tracing.reset()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    return exporter


@pytest.fixture(scope="module")
def farm() -> Iterator[ServiceFarm]:
    with ServiceFarm() as f:
        yield f


@pytest.fixture
def inventory(farm: ServiceFarm, request: pytest.FixtureRequest) -> FakeService:
    """Answers 503 to the first call, 200 after."""
    svc = farm.add(f"inventory-{request.node.name[:30]}")
    svc.route("POST", "/stock", lambda seen: (503, {"busy": True}) if len(svc.seen) == 1 else (200, {"n": 3}))
    return svc


def settings_for(prefix: str) -> Settings:
    return Settings(prefix=prefix, partitions=2, block_ms=20, timer_poll_ms=20, claim_idle_ms=1_000,
                    breaker_threshold=0)


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def parent_id(span: ReadableSpan) -> str | None:
    return None if span.parent is None else f"{span.parent.span_id:016x}"


async def inbox_start(client: Client, iid: str) -> dict[str, Any]:
    entries = await client.redis.xrange(client.keys.inbox(client.keys.partition(iid)))
    data: dict[str, Any] = orjson.loads(entries[-1][1][b"data"])  # type: ignore[index]
    return data


def execute(prefix: str, definition: dict[str, Any], service: FakeService, *, traceparent: str | None = None,
            log_to: io.StringIO | None = None) -> tuple[str, Any]:
    """Register and start ``definition`` and run it to its end: an engine worker and an activity
    worker serving ``shipping`` (a handler) and ``inventory`` (over HTTP, at ``service``)."""
    settings = settings_for(prefix)
    server = fakeredis.FakeServer()
    registry = Registry()
    registry.register("shipping", None, lambda task: {"shipped": True})

    async def scenario() -> tuple[str, Any]:
        client = Client(fakeredis.FakeAsyncRedis(server=server), settings)
        worker = EngineWorker(fakeredis.FakeAsyncRedis(server=server), settings)
        acts_redis = fakeredis.FakeAsyncRedis(server=server)
        serving = HttpServing(acts_redis, settings, HttpSettings(timeout_ms=5_000, refresh_ms=50),
                              env={"INVENTORY_URL": service.url})
        acts = ActivityWorker(acts_redis, settings, registry=registry, http=serving, observer=ActivityObserver(None))
        await worker.prepare()
        await client.register(definition)
        tasks = [asyncio.create_task(worker.run()), asyncio.create_task(acts.run())]
        try:
            iid = await client.start(definition["name"], {"sku": "s-1"}, traceparent=traceparent)
            state = await client.wait(iid, timeout=20)
            return iid, state
        finally:
            worker.stop()
            acts.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()

    handler = None
    if log_to is not None:
        handler = logging.StreamHandler(log_to)
        handler.setFormatter(JsonFormatter())
        logging.getLogger("foldflow.tasks").addHandler(handler)
        logging.getLogger("foldflow.tasks").setLevel(logging.DEBUG)
    try:
        return run(scenario())
    finally:
        if handler is not None:
            logging.getLogger("foldflow.tasks").removeHandler(handler)
            logging.getLogger("foldflow.tasks").setLevel(logging.NOTSET)


# -- the start span ---------------------------------------------------------------
def test_a_start_continues_the_requests_trace_and_stores_its_own_context(prefix: str,
                                                                        spans: InMemorySpanExporter) -> None:
    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        client = Client(fakeredis.FakeAsyncRedis(), settings_for(prefix))
        await client.register(ONE)
        given = await inbox_start(client, await client.start("one", instance_id="given", traceparent=TP))
        fresh = await inbox_start(client, await client.start("one", instance_id="fresh"))
        return given, fresh

    given, fresh = run(go())
    first, second = spans.get_finished_spans()
    assert first.name == "foldflow.start one" and first.kind is SpanKind.PRODUCER
    assert hex_ids(first)[0] == TRACE and parent_id(first) == PARENT  # the request's span is its parent
    assert first.attributes is not None and first.attributes["foldflow.execution_id"] == "given"
    assert given["traceparent"] == f"00-{TRACE}-{hex_ids(first)[1]}-01"  # the execution's trace: under the start
    assert second.parent is None and hex_ids(second)[0] != TRACE  # no traceparent: a new trace
    assert second.context is not None
    assert fresh["traceparent"] == "00-{}-{}-{:02x}".format(*hex_ids(second), int(second.context.trace_flags))


def test_an_unsampled_request_stays_unsampled(prefix: str, spans: InMemorySpanExporter) -> None:
    async def go() -> dict[str, Any]:
        client = Client(fakeredis.FakeAsyncRedis(), settings_for(prefix))
        await client.register(ONE)
        return await inbox_start(client, await client.start("one", traceparent=f"00-{TRACE}-{PARENT}-00"))

    stored = run(go())
    assert spans.get_finished_spans() == ()  # not recorded ...
    assert stored["traceparent"].startswith(f"00-{TRACE}-") and stored["traceparent"].endswith("-00")  # ... passed on


# -- the execution's tree ------------------------------------------------------------
def test_attempts_and_http_calls_form_one_tree_under_the_start(prefix: str, spans: InMemorySpanExporter,
                                                               inventory: FakeService) -> None:
    logged = io.StringIO()
    iid, state = execute(prefix, ORDER, inventory, traceparent=TP, log_to=logged)
    assert state.status == "completed", state
    finished = spans.get_finished_spans()
    assert {hex_ids(s)[0] for s in finished} == {TRACE}  # one trace: the request's
    (start,) = [s for s in finished if s.name == "foldflow.start order"]
    fetches = sorted((s for s in finished if s.name == "foldflow.step fetch"), key=lambda s: str((s.attributes or {})["foldflow.attempt"]))
    (ship,) = [s for s in finished if s.name == "foldflow.step ship"]
    calls = sorted((s for s in finished if s.name == "HTTP POST"), key=lambda s: s.start_time or 0)
    assert len(finished) == 6 and len(fetches) == 2 and len(calls) == 2
    assert parent_id(start) == PARENT
    start_id = hex_ids(start)[1]
    for step in (*fetches, ship):
        assert parent_id(step) == start_id and step.kind is SpanKind.CONSUMER
        assert step.attributes is not None and step.attributes["foldflow.execution_id"] == iid
        assert step.start_time is not None and step.end_time is not None
        assert step.start_time % 1_000_000 == 0 and step.start_time <= step.end_time  # from the dispatch (ms)
    for call, fetch in zip(calls, fetches):
        assert parent_id(call) == hex_ids(fetch)[1] and call.kind is SpanKind.CLIENT
        assert fetch.start_time is not None and call.start_time is not None and fetch.start_time <= call.start_time
    failed, done = fetches
    assert {"foldflow.attempt": 1, "foldflow.outcome": "failed", "foldflow.step": "fetch",
            "foldflow.service": "inventory", "foldflow.workflow": "order"}.items() <= dict(failed.attributes or {}).items()
    assert "503" in str((failed.attributes or {})["foldflow.error"]) and failed.status.status_code is StatusCode.ERROR
    assert (done.attributes or {})["foldflow.outcome"] == "completed" and done.status.status_code is StatusCode.UNSET
    assert [(c.attributes or {})["http.response.status_code"] for c in calls] == [503, 200]
    assert (calls[0].attributes or {})["url.full"] == inventory.url + "/stock"
    assert (calls[0].attributes or {})["server.address"] == "127.0.0.1"
    # The service saw each call's own span as the parent: it continues the same trace.
    assert [s.headers["traceparent"] for s in inventory.requests("POST", "/stock")] == [
        "00-{}-{}-01".format(*hex_ids(c)) for c in calls]
    # The task log lines carry the trace and the attempt's span.
    lines = [json.loads(line) for line in logged.getvalue().splitlines()]
    (shipped,) = [line for line in lines if line["step"] == "ship"]
    assert (shipped["trace_id"], shipped["span_id"]) == hex_ids(ship) and "traceparent" not in shipped


def test_a_task_without_traceparent_still_has_one_trace_per_execution(prefix: str,
                                                                       spans: InMemorySpanExporter) -> None:
    task = Task(task_id="t", instance_id="i-7", step="s", attempt=1, reply_to="r", service="x", endpoint=None,
                input=None, context={}, entry_id="1700000000000-0")
    for _ in range(2):
        with tracing.attempt(task) as attempt:
            attempt.ended("completed", {})
    first, second = spans.get_finished_spans()
    assert hex_ids(first)[0] == hex_ids(second)[0] and first.start_time == 1_700_000_000_000 * 1_000_000
    assert hex_ids(first)[1] != hex_ids(second)[1]


# -- off -------------------------------------------------------------------------------
def test_off_no_span_is_made_and_the_traceparent_passes_through(prefix: str, inventory: FakeService,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a span was made with tracing off")

    for name in ("start_span", "attempt", "http_call"):
        monkeypatch.setattr(tracing, name, refuse)
    _, state = execute(prefix, ORDER, inventory, traceparent=TP)
    assert state.status == "completed" and state.traceparent == TP and not tracing.enabled
    assert [s.headers["traceparent"] for s in inventory.requests("POST", "/stock")] == [TP, TP]


def test_off_a_start_without_traceparent_stores_none(prefix: str) -> None:
    async def go() -> dict[str, Any]:
        client = Client(fakeredis.FakeAsyncRedis(), settings_for(prefix))
        await client.register(ONE)
        return await inbox_start(client, await client.start("one"))

    assert "traceparent" not in run(go()) and tracing.decided and not tracing.enabled


# -- setup from the environment ----------------------------------------------------------
@pytest.mark.parametrize(("env", "wanted"), [
    ({}, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
    ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, []),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, []),
])
def test_the_environment_decides(env: dict[str, str], wanted: list[str]) -> None:
    assert tracing.exporters(env) == wanted


def test_setup_names_the_service_after_the_role_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "_global", object())  # leave this process's global provider alone
    assert tracing.setup("worker", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}) and tracing.enabled
    assert tracing._owned.resource.attributes["service.name"] == "foldflow-worker"
    assert tracing.setup("api", {}) is True  # decided once per process
    tracing.reset()
    assert not tracing.setup("api", {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"})
    tracing.reset()
    assert tracing.setup("api", {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "orders-engine"})
    assert tracing._owned.resource.attributes["service.name"] == "orders-engine"


APP_WITH_ITS_OWN_PROVIDER = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from engine.runtime import tracing

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
with trace.get_tracer("app").start_as_current_span("app request") as outer:
    assert tracing.setup("client", {})  # no OTEL_* at all: the application's provider is used
    with tracing.start_span("w", "i-1", None) as stored:
        pass
start, app = exporter.get_finished_spans()
assert start.name == "foldflow.start w" and start.parent.span_id == app.context.span_id
assert stored[36:52] == format(start.context.span_id, "016x")
print("ok")
"""


def test_an_application_with_its_own_provider_gets_the_spans_under_its_own() -> None:
    done = subprocess.run([sys.executable, "-c", APP_WITH_ITS_OWN_PROVIDER], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**os.environ, "OTEL_SDK_DISABLED": ""})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# -- logs and attributes ------------------------------------------------------------------
def record(**extra: Any) -> logging.LogRecord:
    made = logging.LogRecord("foldflow.tasks", logging.INFO, "x.py", 1, "task completed", None, None)
    made.__dict__.update(extra)
    return made


def test_a_log_line_carries_the_trace_of_its_traceparent_or_of_the_current_span(spans: InMemorySpanExporter) -> None:
    line = json.loads(JsonFormatter().format(record(step="s", traceparent=TP)))
    assert (line["trace_id"], line["span_id"], "traceparent" in line) == (TRACE, PARENT, False)
    with tracing.start_span("w", "i-1", TP) as stored:
        inside = json.loads(JsonFormatter().format(record(traceparent=TP)))
    assert (inside["trace_id"], inside["span_id"]) == (TRACE, stored[36:52])  # the current span wins
    assert TextFormatter().format(record(step="s", traceparent=TP)).endswith(f"step=s trace_id={TRACE} span_id={PARENT}")


def test_a_log_line_without_trace_is_as_before() -> None:
    line = json.loads(JsonFormatter().format(record(step="s", traceparent=None)))
    assert set(line) == {"ts", "level", "logger", "msg", "step"}


def test_url_full_has_no_credentials_and_no_query_values() -> None:
    assert tracing.shown_url("https://u:pw@api.example.com:8443/v1/x?key=s3cr3t&flag") == \
        "https://api.example.com:8443/v1/x?key=REDACTED&flag"
