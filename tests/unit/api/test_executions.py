"""/executions in process: the app over fakeredis with a real engine worker,
projector and activity worker in the same event loop, so starts are applied,
steps run and fail, and the read models fill, as in a deployment."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import fakeredis
import httpx
import pytest

from engine.api.app import create_app
from engine.api.executions.views import correlated_page, idempotent_id, mismatch, schema_items
from engine.api.models.executions import StartExecution
from engine.api.routes.executions import ACCEPTS
from engine.api.settings import ApiSettings
from engine.api.workflow_ids import step_uuid, workflow_uuid
from engine.client import Client
from engine.config import Settings
from engine.core.decide import decide
from engine.core.definition import parse_definition
from engine.core.model import (
    CancelWorkflow,
    CommandRejected,
    Envelope,
    PauseWorkflow,
    ResumeWorkflow,
    RetryWorkflow,
    State,
    Task,
)
from engine.workers.activities import ActivityWorker, Registry
from engine.workers.engine import EngineWorker
from engine.workers.handler_errors import StepError
from projections.queries import encode_cursor
from projections.runner import Projector
from tests.support.poll import eventually, run

SHOP = {"name": "shop", "version": "1", "definition": {
    "input": {"schema": {"type": "object", "required": ["order"],
                         "properties": {"order": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}}},
    "steps": [{"name": "reserve", "step_type": "service_call", "service": "shop",
               "payload": {"order": "${context.order}"}},
              {"name": "charge", "step_type": "service_call", "service": "bank", "depends_on": ["reserve"],
               "payload": {"card": "declined"}}]}}
WAITS = {"name": "waits", "version": "1", "definition": {"steps": [
    {"name": "hold", "step_type": "event_wait", "event_type": "never.happens", "timeout": 3_600_000}]}}


async def reserve(task: Task) -> dict[str, Any]:
    return {"reserved": task.input}


async def charge(task: Task) -> dict[str, Any]:
    if task.input != {"card": "valid"}:
        raise StepError(f"card {task.input!r} declined", retryable=False)
    return {"charged": True}


def registry() -> Registry:
    r = Registry()
    r.register("shop", None, reserve)
    r.register("bank", None, charge)
    return r


@asynccontextmanager
async def deployment(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Client]]:
    server = fakeredis.FakeServer()

    def factory() -> Any:
        return fakeredis.FakeAsyncRedis(server=server)

    worker, projector = EngineWorker(factory(), settings), Projector(factory(), settings)
    acts = ActivityWorker(factory(), settings, registry=registry())
    await worker.prepare()
    await projector.prepare()
    tasks = [asyncio.create_task(r.run()) for r in (worker, projector, acts)]
    await eventually(lambda: len(worker.partitions()) == settings.partitions, what="the worker holds every partition")
    client = Client(factory(), settings)
    await client.register(SHOP)
    await client.register(WAITS)
    app = create_app(settings, ApiSettings(start_wait_ms=5_000), redis_factory=factory)
    try:
        # One event loop for the app and the engine: Litestar's AsyncTestClient runs the
        # lifespan in a portal thread, whose Redis clients the routes would then share.
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with app.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
            yield http, client
    finally:
        for role in (worker, projector, acts):
            role.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()


def scenario(settings: Settings, body: Callable[[httpx.AsyncClient, Client], Awaitable[None]]) -> None:
    async def go() -> None:
        async with deployment(settings) as (http, client):
            await body(http, client)
    run(go())


async def status_of(http: httpx.AsyncClient, iid: str, want: str) -> dict[str, Any]:
    async def check() -> dict[str, Any]:
        doc: dict[str, Any] = (await http.get(f"/executions/{iid}")).json()
        return doc
    found: dict[str, Any] = await eventually(check, what=f"{iid} {want}", ok=lambda d: d.get("status") == want)
    return found


# -- pure rules ---------------------------------------------------------------------
def test_idempotency_ids_are_derived_per_deployment() -> None:
    assert idempotent_id("ff", "k-1") == idempotent_id("ff", "k-1")
    assert idempotent_id("ff", "k-1") != idempotent_id("ff", "k-2") != idempotent_id("other", "k-1")


def test_mismatch_names_each_field_that_differs() -> None:
    created = {"workflow": "shop", "version": "1", "correlation_id": "c", "context": {"order": "o"}}
    same = StartExecution(workflow_id="x", correlation_id="c", context={"order": "o"})
    assert mismatch(created, "shop", same) == []
    other = StartExecution(workflow_id="x", correlation_id="d", context={"order": "p"}, version="1")
    assert [d.split(":")[0] for d in mismatch(created, "shop", other)] == ["correlation_id", "context"]


def test_schema_problems_get_json_paths_under_context() -> None:
    items = schema_items(["(root): 'order' is a required property", "lines/0/qty: 0 is less than 1"])
    assert [(i.path, i.message) for i in items] == [("context", "'order' is a required property"),
                                                    ("context.lines[0].qty", "0 is less than 1")]


def test_correlation_pages_use_the_listing_order_and_cursors() -> None:
    records = [{"id": f"e{i}", "created_ms": 1000 + i // 2, "status": "running", "workflow": "w"} for i in range(5)]
    first = correlated_page(records, status=None, workflow=None, since=None, until=None, limit=2, cursor=None)
    assert [r["id"] for r in first["items"]] == ["e4", "e3"] and first["count"] == 5
    second = correlated_page(records, status=None, workflow=None, since=None, until=None, limit=2,
                             cursor=first["next_cursor"])
    assert [r["id"] for r in second["items"]] == ["e2", "e1"]
    last = correlated_page(records, status=None, workflow=None, since=None, until=None, limit=2,
                           cursor=encode_cursor(1001, "e2"))
    assert [r["id"] for r in last["items"]] == ["e1", "e0"] and last["next_cursor"] is None
    assert correlated_page(records, status="failed", workflow=None, since=None, until=None, limit=2,
                           cursor=None)["count"] == 0


@pytest.mark.parametrize("status", ["created", "running", "paused", "failed", "completed", "cancelled",
                                    "compensating", "compensated"])
def test_the_routes_accept_what_the_engine_accepts(status: str) -> None:
    """ACCEPTS (checked before a command is sent) must agree with decide's rules."""
    definition = parse_definition(WAITS)
    state = State(id="i-1", status=status, version=3, workflow="waits", def_version="1")
    for name, command in (("cancel", CancelWorkflow()), ("pause", PauseWorkflow()), ("resume", ResumeWorkflow()),
                          ("retry", RetryWorkflow())):
        envelope = Envelope(instance_id="i-1", entry_id="1-1", command=command, cmd_id=f"{name}:1")
        events = decide(state, envelope, definition, 10)
        engine_accepts = not any(isinstance(e, CommandRejected) for e in events)
        assert (status in ACCEPTS[name]) == engine_accepts, (name, status, events)


# -- the routes over an engine in process -------------------------------------------
def test_start_answers_200_once_applied_with_the_seed_fields(fake_settings: Settings) -> None:
    async def body(http: httpx.AsyncClient, client: Client) -> None:
        r = await http.post("/executions", json={"workflow_id": workflow_uuid(fake_settings.prefix, "shop"),
                                                 "correlation_id": "order-1", "context": {"order": "o-1"}})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["status"] == "started" and doc["workflow"] == "shop" and doc["correlation_id"] == "order-1"
        assert doc["workflow_id"] == workflow_uuid(fake_settings.prefix, "shop")
        assert doc["context"] == {"order": "o-1"} and doc["current_step"] == "reserve"
        assert doc["started_at"].endswith("Z") and isinstance(doc["started_ms"], int)
        state = await client.state(doc["execution_id"])
        assert state.workflow == "shop" and state.correlation_id == "order-1"
    scenario(fake_settings, body)


def test_wait_ms_0_answers_202_pending(fake_settings: Settings) -> None:
    async def body(http: httpx.AsyncClient, client: Client) -> None:
        r = await http.post("/executions?wait_ms=0", json={"workflow_id": "waits", "context": {}})
        assert r.status_code == 202 and r.json()["status"] == "pending"
        await status_of(http, r.json()["execution_id"], "running")
    scenario(fake_settings, body)


def test_context_against_the_input_schema_is_422_with_every_problem(fake_settings: Settings) -> None:
    async def body(http: httpx.AsyncClient, client: Client) -> None:
        r = await http.post("/executions", json={"workflow_id": "shop", "execution_id": "bad-ctx",
                                                 "context": {"qty": 0}})
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
        paths = sorted(e["path"] for e in r.json()["errors"])
        assert paths == ["context", "context.qty"]
        assert (await http.get("/executions/bad-ctx")).status_code == 404  # nothing stored
    scenario(fake_settings, body)


def test_idempotency_key_returns_the_same_execution(fake_settings: Settings) -> None:
    async def body(http: httpx.AsyncClient, client: Client) -> None:
        start = {"workflow_id": "waits", "correlation_id": "idem", "context": {"n": 1}}
        first = await http.post("/executions", json=start, headers={"Idempotency-Key": "key-1"})
        again = await http.post("/executions", json=start, headers={"Idempotency-Key": "key-1"})
        assert first.status_code == again.status_code == 200
        assert first.json()["execution_id"] == again.json()["execution_id"]
        assert again.headers["idempotent-replayed"] == "true"
        other = await http.post("/executions", json={**start, "context": {"n": 2}}, headers={"Idempotency-Key": "key-1"})
        assert other.status_code == 422 and other.json()["errors"][0]["path"] == "context"
        listed = (await http.get("/executions?correlation_id=idem")).json()
        assert await eventually(lambda: http.get("/executions?correlation_id=idem"),
                                ok=lambda r: r.json()["count"] == 1) and listed["count"] <= 1
    scenario(fake_settings, body)


def test_a_chosen_execution_id_started_differently_is_409(fake_settings: Settings) -> None:
    async def body(http: httpx.AsyncClient, client: Client) -> None:
        assert (await http.post("/executions", json={"workflow_id": "waits", "execution_id": "mine-1"})).status_code == 200
        same = await http.post("/executions", json={"workflow_id": "waits", "execution_id": "mine-1"})
        assert same.status_code == 200 and same.json()["execution_id"] == "mine-1"
        clash = await http.post("/executions", json={"workflow_id": "shop", "execution_id": "mine-1",
                                                     "context": {"order": "o"}})
        assert clash.status_code == 409 and "workflow" in [e["path"] for e in clash.json()["errors"]]
    scenario(fake_settings, body)


def test_unknown_workflow_404_unknown_field_and_bad_id_400(fake_settings: Settings) -> None:
    async def body(http: httpx.AsyncClient, client: Client) -> None:
        assert (await http.post("/executions", json={"workflow_id": "nope"})).status_code == 404
        assert (await http.post("/executions", json={"workflow_id": "waits", "contxt": {}})).status_code == 400
        assert (await http.post("/executions", json={"workflow_id": "waits", "execution_id": "-x"})).status_code == 400
        assert (await http.get("/executions/no-such")).status_code == 404
        for path in ("/executions/bad%20id", "/executions/bad%20id/state", "/executions/bad%20id/history"):
            assert (await http.get(path)).status_code == 400, path
        assert (await http.get("/executions/x/history?after=nope")).status_code == 400
        assert (await http.get("/executions?since=yesterday")).status_code == 400
        assert (await http.get("/executions?cursor=garbage")).status_code == 400
    scenario(fake_settings, body)


def test_a_deactivated_workflow_refuses_starts_with_409(fake_settings: Settings) -> None:
    async def body(http: httpx.AsyncClient, client: Client) -> None:
        await client.register({**WAITS, "name": "retiring"})
        assert (await http.delete("/workflows/retiring")).status_code == 200
        r = await http.post("/executions", json={"workflow_id": "retiring", "execution_id": "late-1"})
        assert r.status_code == 409 and "deactivated" in r.json()["detail"], r.text
        assert (await http.get("/executions/late-1")).status_code == 404  # nothing sent
    scenario(fake_settings, body)


def test_pause_resume_cancel_and_each_409(fake_settings: Settings) -> None:
    async def body(http: httpx.AsyncClient, client: Client) -> None:
        iid = (await http.post("/executions", json={"workflow_id": "waits"})).json()["execution_id"]
        assert (await http.put(f"/executions/{iid}/resume")).status_code == 409
        paused = await http.put(f"/executions/{iid}/pause", json={"reason": "maintenance"})
        assert paused.status_code == 200 and paused.json()["status"] == "paused" and paused.json()["applied"]
        again = await http.put(f"/executions/{iid}/pause")
        assert again.status_code == 409 and "paused" in again.json()["detail"]
        assert (await http.put(f"/executions/{iid}/resume")).json()["status"] == "running"
        cancelled = await http.put(f"/executions/{iid}/cancel", json={"reason": "not needed"})
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        for command in ("cancel", "pause", "resume"):
            refused = await http.put(f"/executions/{iid}/{command}")
            assert refused.status_code == 409 and "cancelled" in refused.json()["detail"], command
        assert (await http.put("/executions/nobody/cancel")).status_code == 404
    scenario(fake_settings, body)


def test_retry_from_a_step_with_edited_input(fake_settings: Settings) -> None:
    async def body(http: httpx.AsyncClient, client: Client) -> None:
        iid = (await http.post("/executions", json={"workflow_id": "shop", "context": {"order": "o-9"}})).json()[
            "execution_id"]
        failed = await status_of(http, iid, "failed")
        assert failed["failed_step"] == "charge"
        charge_id = step_uuid(workflow_uuid(fake_settings.prefix, "shop"), "charge")
        assert (await http.post(f"/executions/{iid}/steps/nothing/retry")).status_code == 404
        r = await http.post(f"/executions/{iid}/steps/{charge_id}/retry", json={"input": {"card": "valid"}})
        assert r.status_code == 200 and r.json()["applied"] and r.json()["command"] == "retry", r.text
        await status_of(http, iid, "completed")
        assert (await http.post(f"/executions/{iid}/steps/charge/retry")).status_code == 409
        retries = await eventually(lambda: http.get(f"/executions/{iid}/steps/charge/retries"),
                                   ok=lambda r: r.json()["retries"] == 1)
        doc = retries.json()
        assert [a["status"] for a in doc["attempts"]] == ["failed", "completed"]
        assert doc["attempts"][1]["input"] == {"card": "valid"} and doc["step_id"] == charge_id
        assert doc["rewinds"][0]["input"] == {"card": "valid"} and doc["rewinds"][0]["from_step"] == "charge"
        steps = (await http.get(f"/executions/{iid}/steps")).json()["steps"]
        assert [(s["name"], s["status"], len(s["attempts"])) for s in steps] == [("reserve", "completed", 1),
                                                                                ("charge", "completed", 2)]
    scenario(fake_settings, body)


def test_history_pages_and_state(fake_settings: Settings) -> None:
    async def body(http: httpx.AsyncClient, client: Client) -> None:
        iid = (await http.post("/executions", json={"workflow_id": "shop", "context": {"order": "o-2"}})).json()[
            "execution_id"]
        await status_of(http, iid, "failed")
        whole = await client.history(iid)
        seen: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            page = (await http.get(f"/executions/{iid}/history", params={"limit": 2, **({"after": after} if after else {})})).json()
            seen += page["events"]
            after = page["next_after"]
            if after is None:
                break
        assert [(e["version"], e["type"], e["entry_id"]) for e in seen] == [
            (e["version"], e["type"], e["entry_id"]) for e in whole]
        state = (await http.get(f"/executions/{iid}/state")).json()
        assert state["state"]["status"] == "failed" and state["version"] == len(whole)
        assert state["last_entry_id"] == whole[-1]["entry_id"]
    scenario(fake_settings, body)


def test_listing_filters_and_cursor_pages(fake_settings: Settings) -> None:
    async def body(http: httpx.AsyncClient, client: Client) -> None:
        ids = [(await http.post("/executions", json={"workflow_id": "waits", "correlation_id": "batch"})).json()[
            "execution_id"] for _ in range(3)]
        await eventually(lambda: http.get("/executions", params={"workflow": "waits", "status": "running"}),
                         ok=lambda r: r.json()["count"] == 3)
        pages, cursor = [], None
        while True:
            doc = (await http.get("/executions", params={"workflow": workflow_uuid(fake_settings.prefix, "waits"),
                                                         "limit": 2, **({"cursor": cursor} if cursor else {})})).json()
            pages.append([i["execution_id"] for i in doc["items"]])
            cursor = doc["next_cursor"]
            if cursor is None:
                break
        assert sorted(i for page in pages for i in page) == sorted(ids) and len(pages[0]) == 2
        by_corr = (await http.get("/executions", params={"correlation_id": "batch", "status": "running"})).json()
        assert by_corr["count"] == 3 and by_corr["items"][0]["workflow_id"] == workflow_uuid(fake_settings.prefix,
                                                                                              "waits")
        assert (await http.get("/executions", params={"status": "bogus"})).status_code == 400
        assert (await http.get("/executions", params={"workflow": "nope"})).status_code == 404
    scenario(fake_settings, body)


def test_the_spec_links_a_start_to_the_execution_routes(fake_settings: Settings) -> None:
    async def body(http: httpx.AsyncClient, client: Client) -> None:
        spec = (await http.get("/openapi.json")).json()
        ops = {op["operationId"] for path in spec["paths"].values() for op in path.values() if "operationId" in op}
        for code in ("200", "202"):
            links = spec["paths"]["/executions"]["post"]["responses"][code]["links"]
            assert {link["operationId"] for link in links.values()} <= ops
            assert all(link["parameters"] == {"execution_id": "$response.body#/execution_id"}
                       for link in links.values())
            assert "getExecution" in {link["operationId"] for link in links.values()}
    scenario(fake_settings, body)


TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
REMOTE = {"name": "remote", "version": "1", "definition": {"steps": [
    {"name": "call", "step_type": "service_call", "service": "nobody-serves-this"}]}}


def test_a_start_carries_its_traceparent_header_and_refuses_a_bad_one(fake_settings: Settings) -> None:
    async def body(http: httpx.AsyncClient, client: Client) -> None:
        bad = await http.post("/executions", json={"workflow_id": "waits", "execution_id": "trace-bad"},
                              headers={"traceparent": "00-nope-01"})
        assert bad.status_code == 400 and bad.headers["content-type"].startswith("application/problem+json")
        assert "invalid traceparent" in bad.json()["detail"]
        assert (await http.get("/executions/trace-bad")).status_code == 404  # nothing sent
        ok = await http.post("/executions", json={"workflow_id": "waits", "execution_id": "trace-ok"},
                             headers={"traceparent": TRACE})
        assert ok.status_code == 200, ok.text
        assert (await client.state("trace-ok")).traceparent == TRACE
    scenario(fake_settings, body)


def test_the_steps_view_shows_the_call_meta_of_each_attempt(fake_settings: Settings) -> None:
    async def body(http: httpx.AsyncClient, client: Client) -> None:
        await client.register(REMOTE)
        assert (await http.post("/executions", json={"workflow_id": "remote", "execution_id": "r-1"})).status_code == 200
        call = {"method": "POST", "url": "http://svc.test/x", "status": 201, "duration_ms": 7,
                "headers": {"content-type": "application/json"}, "body": '{"id": 1}'}
        await client.send("step.completed", "r-1", {"step": "call", "attempt": 1, "output": {"id": 1}, "call": call})
        await status_of(http, "r-1", "completed")

        async def steps() -> Any:
            return (await http.get("/executions/r-1/steps")).json()["steps"]
        found = await eventually(steps, what="the call in the steps view",
                                 ok=lambda s: s and s[0]["attempts"] and s[0]["attempts"][0].get("call"))
        assert found[0]["attempts"][0]["call"] == call
        retries = (await http.get("/executions/r-1/steps/call/retries")).json()
        assert retries["attempts"][0]["call"] == call
    scenario(fake_settings, body)
