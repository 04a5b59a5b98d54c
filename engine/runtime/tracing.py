"""OpenTelemetry traces: one trace per execution, continued from the ``traceparent``
of the request that started it.

Spans (docs/tracing.md): ``foldflow.start <workflow>`` where a start is sent
(engine.client.Client.start), ``foldflow.step <step>`` for each step attempt, from
its dispatch (the task entry's time) to its reported result (the activity worker),
and a CLIENT span ``HTTP <METHOD>`` for each call of the HTTP executor, whose
context is the ``traceparent`` the service receives.

Off unless the environment asks for it: ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set, or ``OTEL_TRACES_EXPORTER`` naming
``otlp`` or ``console``; ``OTEL_SDK_DISABLED=true`` wins over all of them. Off, the
hot paths test one bool (``enabled``) and make no span object, and a start's
``traceparent`` is passed through exactly as given. The exporter and the batch
processor read the other standard variables themselves (``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_TRACES_SAMPLER``, ...).

Traces are process-wide by nature (the span context travels in a contextvar), so
the state here is module-level: ``setup`` once per process at role start-up,
``shutdown`` (flush) on exit; tests install their own provider with ``use``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags, Tracer

log = logging.getLogger("foldflow.tracing")

enabled = False
"""True while spans are made: tested by every hot path before anything else."""
decided = False
"""True once this process has read its environment (or a test installed a provider)."""
_tracer: Tracer | None = None
_owned: Any = None  # the SDK TracerProvider setup() made, shut down by shutdown()
_global: Any = None  # the first one, made the global one (which can be set once per process)

EXPORTERS = frozenset({"otlp", "console"})
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_TRUE = frozenset({"true", "1", "yes", "on"})


def exporters(env: Mapping[str, str]) -> list[str]:
    """Which exporters the environment asks for: [] means tracing stays off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return []
    named = [e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    if named:
        return [e for e in named if e in EXPORTERS]  # "none" (or only unknown names): off
    return ["otlp"] if any(env.get(v, "").strip() for v in ENDPOINT_VARS) else []


def setup(role: str, env: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on when the environment asks for it (once per process); whether it is on.

    The provider made here becomes the global one. An application that already installed
    a TracerProvider as the global one keeps it (OTEL_* or not): foldflow's spans go there
    and no second exporter is made."""
    global decided, _owned, _global
    if decided:
        return enabled
    decided = True
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    existing = trace.get_tracer_provider()
    if not isinstance(existing, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)) and existing is not _global:
        _install(existing)  # the application's own
        return True
    wanted = exporters(env)
    if not wanted:
        return False
    provider = _provider(role, wanted, env)
    _owned = provider
    _install(provider)
    if _global is None:  # a handler's own spans (and any instrumentation) go the same way
        _global = provider
        trace.set_tracer_provider(provider)
    log.info("tracing on: exporting spans by %s as %s", "+".join(wanted),
             provider.resource.attributes.get("service.name"))
    return True


def _provider(role: str, wanted: list[str], env: Mapping[str, str]) -> Any:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    name = env.get("OTEL_SERVICE_NAME", "").strip() or f"foldflow-{role}"
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    for kind in wanted:
        exporter: SpanExporter
        if kind == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # endpoint, headers, timeout: the OTEL_EXPORTER_OTLP_* variables
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _install(provider: Any) -> None:
    global enabled, decided, _tracer
    _tracer = provider.get_tracer("foldflow")
    enabled = decided = True


def use(provider: Any) -> None:
    """Make spans with this (SDK) TracerProvider from now on: tests, or an embedding application."""
    _install(provider)


def reset() -> None:
    """Off, and the environment is read again by the next setup(); shuts down what setup() made."""
    global enabled, decided, _tracer
    shutdown()
    enabled = decided = False
    _tracer = None


def shutdown() -> None:
    """Flush and stop the exporter setup() made (blocking: at exit, or in a thread)."""
    global _owned
    owned, _owned = _owned, None
    if owned is not None:
        try:
            owned.shutdown()
        except Exception:  # an exporter that cannot flush must not fail a clean exit
            log.warning("tracing: flushing spans at exit failed", exc_info=True)


# -- trace context -------------------------------------------------------------
def traceparent(span: Span) -> str:
    """The W3C ``traceparent`` of a span: what is stored and sent on for it."""
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _remote(value: str) -> SpanContext | None:
    parts = value.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        ctx = SpanContext(int(parts[1], 16), int(parts[2], 16), is_remote=True, trace_flags=TraceFlags(int(parts[3], 16)))
    except ValueError:
        return None
    return ctx if ctx.is_valid else None


def parent(value: str | None) -> Context | None:
    """The context a ``traceparent`` names (None: the current one, a new trace when there is none)."""
    remote = _remote(value) if value else None
    return None if remote is None else trace.set_span_in_context(trace.NonRecordingSpan(remote))


def execution_parent(traceparent_: str | None, instance_id: str) -> Context:
    """A task's parent: its traceparent; without one (started with tracing off, or by a raw
    XADD) a trace id derived from the instance id, so the attempts of one execution still
    share one trace."""
    found = parent(traceparent_)
    if found is not None:
        return found
    digest = hashlib.sha256(instance_id.encode()).digest()
    derived = SpanContext(int.from_bytes(digest[:16], "big") or 1, int.from_bytes(digest[16:24], "big") or 1,
                          is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(trace.NonRecordingSpan(derived))


def ids(traceparent_: str | None = None) -> tuple[str, str] | None:
    """(trace_id, span_id) of the current span, else of ``traceparent_``; None when neither is."""
    if enabled:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
    if traceparent_ and len(traceparent_) == 55 and traceparent_[2] == "-":
        return traceparent_[3:35], traceparent_[36:52]
    return None


def shown_url(url: str) -> str:
    """``url.full`` as recorded: no user or password, every query value redacted."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "REDACTED"
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    query = "&".join(f"{p.partition('=')[0]}=REDACTED" if "=" in p else p for p in parts.query.split("&") if p)
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


# -- the spans -----------------------------------------------------------------
@contextmanager
def start_span(workflow: str, instance_id: str, given: str | None) -> Iterator[str]:
    """The span of a start, current inside; yields the traceparent to store for the execution."""
    assert _tracer is not None, "tracing.setup() or use() first"
    attrs = {"foldflow.execution_id": instance_id, "foldflow.workflow": workflow}
    with _tracer.start_as_current_span(f"foldflow.start {workflow}", context=parent(given), kind=SpanKind.PRODUCER,
                                       attributes=attrs) as span:
        yield traceparent(span)


class Attempt:
    """The span of one step attempt; the worker says how it ended with ``ended``."""

    def __init__(self, span: Span) -> None:
        self.span = span

    def ended(self, outcome: str, data: Mapping[str, Any]) -> None:
        self.span.set_attribute("foldflow.outcome", outcome)
        error = data.get("error")
        if isinstance(error, Mapping):
            message = str(error.get("message", ""))[:1000]
            self.span.set_attribute("foldflow.error", message)
            if error.get("kind"):
                self.span.set_attribute("error.type", str(error["kind"]))
            self.span.set_status(Status(StatusCode.ERROR, message))


@contextmanager
def attempt(task: Any) -> Iterator[Attempt]:
    """``foldflow.step <step>``: from the task's dispatch (its entry id's time) to its report.

    Current while the handler runs, so an HTTP call it makes is its child."""
    assert _tracer is not None, "tracing.setup() or use() first"
    attrs: dict[str, Any] = {"foldflow.execution_id": task.instance_id, "foldflow.workflow": task.workflow or "",
                             "foldflow.step": task.step, "foldflow.attempt": task.attempt,
                             "foldflow.service": task.service, "foldflow.task_id": task.task_id}
    if task.iteration is not None:
        attrs["foldflow.iteration"] = task.iteration
    if task.correlation_id:
        attrs["foldflow.correlation_id"] = task.correlation_id
    span = _tracer.start_span(f"foldflow.step {task.step}", context=execution_parent(task.traceparent, task.instance_id),
                              kind=SpanKind.CONSUMER, attributes=attrs, start_time=_dispatched_ns(task.entry_id))
    recorder = Attempt(span)
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=True, set_status_on_exception=True):
            yield recorder
    except BaseException:
        span.set_attribute("foldflow.outcome", "unreported")
        raise
    finally:
        span.end()


def _dispatched_ns(entry_id: str) -> int | None:
    ms = entry_id.partition("-")[0]
    return int(ms) * 1_000_000 if ms.isdigit() else None


class HttpCall:
    """The CLIENT span of one HTTP call; ``traceparent`` is what the request carries."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self.traceparent = traceparent(span)

    def answered(self, status: int) -> None:
        self.span.set_attribute("http.response.status_code", status)
        if status >= 400:
            self.span.set_attribute("error.type", str(status))
            self.span.set_status(Status(StatusCode.ERROR))


@contextmanager
def http_call(method: str, url: str) -> Iterator[HttpCall]:
    """``HTTP <METHOD>``, a child of the current span (the step attempt)."""
    assert _tracer is not None, "tracing.setup() or use() first"
    parts = urlsplit(url)
    attrs: dict[str, Any] = {"http.request.method": method, "url.full": shown_url(url),
                             "server.address": parts.hostname or ""}
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None:
        attrs["server.port"] = port
    with _tracer.start_as_current_span(f"HTTP {method}", kind=SpanKind.CLIENT, attributes=attrs,
                                       record_exception=False, set_status_on_exception=False) as span:
        call = HttpCall(span)
        try:
            yield call
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR, str(exc)[:1000]))
            raise
