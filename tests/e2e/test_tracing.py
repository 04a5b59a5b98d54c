"""Traces end to end, real processes on a real Redis: `foldflow api`, `foldflow worker`
and `foldflow activities --http` export by OTLP/HTTP (OTEL_EXPORTER_OTLP_ENDPOINT) to a
receiver this test runs on loopback, and the step calls a real HTTP service on loopback
that records the traceparent it received. One trace per execution, rooted at the span
of the request that started it (or at the CLI's start span); the service continues it
from the HTTP span; the activity worker's JSON log lines carry its trace_id."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.client import Client
from engine.config import Settings
from tests.support.api_stack import ApiStack
from tests.support.http_services import FakeService, Seen, ServiceFarm
from tests.support.otlp import OtlpReceiver, Received
from tests.support.poll import wait_for
from tests.support.tools import ROOT

# One step over HTTP: the first call of each run answers 503, the retry 200.
NAME = "e2e-traced-order"
ORDER: dict[str, object] = {"name": NAME, "version": "1", "definition": {"steps": [
    {"name": "fetch", "type": "service_call", "service": "inventory", "endpoint": "/stock",
     "retry_policy": {"max_attempts": 2, "backoff_multiplier": 20, "jitter": 0}}]}}
KNOBS = {"FOLDFLOW_BREAKER_THRESHOLD": "0", "FOLDFLOW_HTTP_REFRESH_MS": "200", "FOLDFLOW_HTTP_TIMEOUT_MS": "5000",
         "FOLDFLOW_LOG_FORMAT": "json", "OTEL_BSP_SCHEDULE_DELAY": "100"}
LONG = {"wait_ms": 20_000}


@pytest.fixture(scope="module")
def farm() -> Iterator[tuple[ServiceFarm, FakeService, OtlpReceiver]]:
    with ServiceFarm() as running:
        inventory = running.add("inventory")

        def stock(seen: Seen) -> tuple[int, dict[str, object]]:
            key = seen.headers.get("Idempotency-Key")
            tries = sum(1 for s in inventory.seen if s.headers.get("Idempotency-Key") == key)
            return (503, {"busy": True}) if tries == 1 else (200, {"in_stock": 3})

        inventory.route("POST", "/stock", stock)
        collector = OtlpReceiver(running).start()
        try:
            yield running, inventory, collector
        finally:
            collector.stop()


@pytest.fixture(scope="module")
def stack(redis_url: str, farm: tuple[ServiceFarm, FakeService, OtlpReceiver],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    _, inventory, collector = farm
    env = {**KNOBS, "INVENTORY_URL": inventory.url, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url}
    with ApiStack(redis_url, tmp_path_factory.mktemp("tracing"), activities=None, http=True, env=env) as running:
        async def register() -> None:
            client = Client.from_url(running.redis_url, Settings(prefix=running.prefix, partitions=running.partitions))
            try:
                await client.register(ORDER)
            finally:
                await client.close()

        asyncio.run(register())
        yield running


def completed(stack: ApiStack, iid: str) -> None:
    wait_for(lambda: httpx.get(f"{stack.url}/executions/{iid}").json(), what=f"{iid} completed",
             ok=lambda d: d.get("status") == "completed")


def spans_of(collector: OtlpReceiver, trace_id: str, count: int) -> list[Received]:
    """The trace's spans once ``count`` of them arrived (the processes export every 100 ms)."""
    found: list[Received] = wait_for(lambda: collector.trace(trace_id), what=f"{count} spans of trace {trace_id}",
                                     ok=lambda spans: len(spans) >= count)
    return found


def check_tree(spans: list[Received], root_parent: str | None, inventory: FakeService, iid: str) -> Received:
    """start -> attempt 1, attempt 2 -> one HTTP call each; the service saw each call's span. The start."""
    (start,) = [s for s in spans if s.name == f"foldflow.start {NAME}"]
    steps = sorted((s for s in spans if s.name == "foldflow.step fetch"), key=lambda s: s.attributes["foldflow.attempt"])
    calls = [s for s in spans if s.name == "HTTP POST"]
    assert len(spans) == 5 and len(steps) == 2 and len(calls) == 2, [(s.service, s.name) for s in spans]
    assert start.parent_id == root_parent and start.kind == "PRODUCER"
    assert start.attributes["foldflow.execution_id"] == iid
    ids = {s.span_id for s in spans} | ({root_parent} if root_parent else set())
    assert all(s.parent_id in ids for s in spans if s is not start)  # one tree, no dangling parent
    for step, outcome in zip(steps, ("failed", "completed")):
        assert step.parent_id == start.span_id and step.kind == "CONSUMER" and step.service == "foldflow-activities"
        assert step.attributes["foldflow.outcome"] == outcome and step.attributes["foldflow.execution_id"] == iid
        (call,) = [c for c in calls if c.parent_id == step.span_id]
        assert call.kind == "CLIENT" and step.start_ns <= call.start_ns <= call.end_ns <= step.end_ns
        assert call.attributes["http.request.method"] == "POST"
        assert call.attributes["url.full"] == inventory.url + "/stock"
        assert call.attributes["http.response.status_code"] == (503 if outcome == "failed" else 200)
    assert steps[0].status == 2 and "503" in steps[0].attributes["foldflow.error"]  # ERROR, saying why
    received = [s.headers["traceparent"] for s in inventory.requests("POST", "/stock")]
    assert sorted(tp[36:52] for tp in received if tp[3:35] == start.trace_id) == sorted(c.span_id for c in calls)
    return start


def test_an_api_start_is_one_trace_under_the_requests_span(stack: ApiStack,
                                                           farm: tuple[ServiceFarm, FakeService, OtlpReceiver]) -> None:
    _, inventory, collector = farm
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    started = httpx.post(f"{stack.url}/executions", json={"workflow_id": NAME, "context": {"sku": "s-1"}},
                         headers={"traceparent": f"00-{trace_id}-{parent}-01"}, params=LONG, timeout=30)
    assert started.status_code == 200, started.text
    iid = started.json()["execution_id"]
    completed(stack, iid)
    start = check_tree(spans_of(collector, trace_id, 5), parent, inventory, iid)
    assert start.service == "foldflow-api"
    # The activity worker's JSON log line of the failed attempt names the trace and the attempt's span.
    lines = [json.loads(line) for line in (stack.logs / "http.log").read_text().splitlines() if line.startswith("{")]
    (failed,) = [line for line in lines if line.get("instance_id") == iid and line["msg"].startswith("task failed")]
    (attempt,) = [s for s in collector.trace(trace_id) if s.attributes.get("foldflow.attempt") == 1]
    assert (failed["trace_id"], failed["span_id"]) == (trace_id, attempt.span_id)


def test_a_cli_start_begins_a_new_trace_that_its_steps_continue(stack: ApiStack,
                                                                farm: tuple[ServiceFarm, FakeService, OtlpReceiver],
                                                                tmp_path: Path) -> None:
    _, inventory, collector = farm
    done = subprocess.run([sys.executable, "-m", "engine.ops.cli", "start", NAME, "--context", "{}"],
                          env=stack.env(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    iid = done.stdout.strip()
    completed(stack, iid)
    # The CLI flushed its span at exit: it is the root of the execution's trace.
    (start,) = wait_for(lambda: [s for s in collector.named(f"foldflow.start {NAME}")
                                 if s.attributes["foldflow.execution_id"] == iid], what="the CLI's start span")
    assert start.service == "foldflow-client" and start.parent_id is None
    check_tree(spans_of(collector, start.trace_id, 5), None, inventory, iid)
