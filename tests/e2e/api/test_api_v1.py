"""Seed 001's API under /api/v1 on a running deployment: an engine worker, a
projector, the demo handlers (native service calls, custom node types), the
HTTP executor, and a farm of real HTTP services on loopback (an
OpenAI-compatible model service for llm nodes, a ticket service for http
nodes). One stack for the module; tests keep apart by their own names."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from engine.store.keys import Keys
from tests.support.api_stack import ApiStack
from tests.support.http_services import FakeService, Seen, ServiceFarm
from tests.support.poll import eventually, run

PROBLEM = "application/problem+json"


class PatientStack(ApiStack):
    """Five processes start here (the HTTP executor too): on a loaded 2-core box the API alone
    can take longer than ApiStack's 30 s to import and answer."""

    def _wait_ready(self, name: str, url: str, timeout: float = 90.0) -> None:
        super()._wait_ready(name, url, max(timeout, 90.0))


def _classify(seen: Seen) -> tuple[int, Any]:
    prompt = seen.body["messages"][0]["content"]
    category = "technical" if "crash" in prompt else "billing"
    return 200, {"model": seen.body["model"], "usage": {"total_tokens": 7},
                 "choices": [{"message": {"role": "assistant", "content": orjson.dumps({"category": category}).decode()}}]}


@pytest.fixture(scope="module")
def farm() -> Iterator[ServiceFarm]:
    with ServiceFarm() as running:
        running.add("model").route("POST", "/v1/chat/completions", _classify)
        tickets = running.add("tickets")
        tickets.route("POST", "/tickets", lambda seen: (201, {"ticket": "T-1", "got": seen.body}))
        tickets.route("POST", "/refuse", lambda seen: (400, {"error": "no"}))

        async def hang(seen: Seen) -> tuple[int, Any]:
            await asyncio.sleep(30)  # longer than any node test waits; the farm cancels it at the end
            return 200, {}
        running.add("hangs").route("POST", "/.*", hang)
        yield running


@pytest.fixture(scope="module")
def stack(redis_url: str, farm: ServiceFarm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    logs: Path = tmp_path_factory.mktemp("api-v1")
    env = {"MODEL_SERVICE_URL": farm.services["model"].url, "FOLDFLOW_HTTP_REFRESH_MS": "200",
           "FOLDFLOW_BREAKER_THRESHOLD": "0",
           "FOLDFLOW_SHUTDOWN_TIMEOUT_MS": "1000"}  # the hung call of the 504 test is not waited for
    running = PatientStack(redis_url, logs, http=True, env=env)
    try:  # a start that fails half-way must not leave its processes behind
        yield running.start()
    finally:
        running.stop()


def support_workflow(name: str, tickets: FakeService) -> dict[str, Any]:
    """Seed 001's customer-support workflow, both branches defined."""
    return {
        "name": name, "description": "Classify an inquiry and route it",
        "nodes": [
            {"id": "start", "type": "start", "config": {}},
            {"id": "classify", "type": "llm", "config": {
                "model": "gpt-4", "prompt": "Classify this customer inquiry: {{input.message}}"}},
            {"id": "route", "type": "conditional", "config": {
                "condition": "{{classify.output.category}} == 'technical'",
                "true_edge": "technical_support", "false_edge": "general_support"}},
            {"id": "technical_support", "type": "http", "config": {
                "method": "POST", "url": tickets.url + "/tickets",
                "body": {"category": "{{classify.output.category}}", "message": "{{input.message}}"}}},
            {"id": "general_support", "type": "project-coordinator", "config": {"note": "{{input.message}}"}},
        ],
        "edges": [{"source": "start", "target": "classify"}, {"source": "classify", "target": "route"},
                  {"source": "route", "target": "technical_support"},
                  {"source": "route", "target": "general_support"}],
    }


def unique(kind: str) -> str:
    return f"v1-{kind}-{uuid.uuid4().hex[:6]}"


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body


def finished(api: str, job_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any]:
        return httpx.get(f"{api}/api/v1/jobs/{job_id}").json()  # type: ignore[no-any-return]
    return run(eventually(check, what=f"job {job_id} finished",
                          ok=lambda j: j.get("status") in ("completed", "failed", "cancelled")))


@pytest.fixture(scope="module")
def support(stack: ApiStack, farm: ServiceFarm) -> dict[str, Any]:
    """The support workflow registered and run twice, once down each branch."""
    made = httpx.post(stack.url + "/api/v1/workflows", json=support_workflow(unique("support"),
                                                                            farm.services["tickets"]))
    assert made.status_code == 201, made.text
    workflow = made.json()
    jobs = {}
    for branch, body in (("technical", {"input_data": {"message": "the app crashes on start"}}),
                         ("general", {"input": {"message": "a question about my invoice"}})):
        started = httpx.post(f"{stack.url}/api/v1/workflows/{workflow['id']}/execute", json=body)
        assert started.status_code == 202, started.text
        jobs[branch] = started.json()
    return {"workflow": workflow, "jobs": {b: finished(stack.url, j["job_id"]) for b, j in jobs.items()},
            "started": jobs}


def test_health_and_ping_are_open(stack: ApiStack) -> None:
    health = httpx.get(stack.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "healthy" and health.json()["redis"] == "ok"
    assert httpx.get(stack.url + "/ping").json() == {"message": "pong"}


def test_workflow_is_shown_in_seed_001_shape(stack: ApiStack, support: dict[str, Any]) -> None:
    workflow = support["workflow"]
    assert workflow["version"] == "1" and workflow["form"] == "nodes" and workflow["is_active"] is True
    assert [n["id"] for n in workflow["nodes"]] == ["start", "classify", "route", "technical_support",
                                                    "general_support"]
    assert {"source": "start", "target": "classify"} in workflow["edges"]
    by_name = httpx.get(f"{stack.url}/api/v1/workflows/{workflow['name']}").json()
    assert by_name == httpx.get(f"{stack.url}/api/v1/workflows/{workflow['id']}").json()
    assert by_name["id"] == workflow["id"]


def test_both_branches_run_and_jobs_show_node_results(stack: ApiStack, support: dict[str, Any]) -> None:
    technical, general = support["jobs"]["technical"], support["jobs"]["general"]
    started = support["started"]["technical"]
    assert started["status"] == "pending" and started["job_id"] == started["run_id"]
    assert started["workflow_id"] == support["workflow"]["id"]
    assert technical["status"] == general["status"] == "completed", (technical, general)
    nodes = {r["node_id"]: r for r in technical["node_results"]}
    assert nodes["classify"]["output"] == {"category": "technical"}
    assert nodes["technical_support"]["status"] == "completed" and nodes["general_support"]["status"] == "skipped"
    assert nodes["technical_support"]["output"]["got"] == {"category": "technical",
                                                                   "message": "the app crashes on start"}
    other = {r["node_id"]: r for r in general["node_results"]}
    assert other["technical_support"]["status"] == "skipped"
    assert other["general_support"]["output"]["notified"] is True
    assert general["input_data"] == {"message": "a question about my invoice"}
    assert technical["created_at"] and technical["completed_at"]


def test_logs_are_the_history_in_order_and_paged(stack: ApiStack, support: dict[str, Any]) -> None:
    job = support["jobs"]["technical"]["job_id"]
    whole = httpx.get(f"{stack.url}/api/v1/jobs/{job}/logs", params={"limit": 1000}).json()
    messages = [line["message"] for line in whole["lines"]]
    assert messages[0].startswith("job created") and messages[-1] == "job completed"
    assert any(m.startswith("node classify attempt 1 dispatched") for m in messages)
    assert "node general_support skipped" in " ".join(messages)
    assert [line["seq"] for line in whole["lines"]] == sorted(line["seq"] for line in whole["lines"])
    paged, cursor = [], None
    while True:
        page = httpx.get(f"{stack.url}/api/v1/jobs/{job}/logs", params={"limit": 3, **({"cursor": cursor} if cursor
                                                                                      else {})}).json()
        paged += page["lines"]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert paged == whole["lines"]


def test_jobs_listing_filters_by_workflow_and_status(stack: ApiStack, support: dict[str, Any]) -> None:
    wid = support["workflow"]["id"]
    listed = httpx.get(stack.url + "/api/v1/jobs", params={"workflow_id": wid}).json()
    ids = {j["job_id"] for j in support["jobs"].values()}
    assert {j["job_id"] for j in listed["items"]} == ids and listed["total"] == 2

    async def completed() -> dict[str, Any]:  # the read model follows the stream
        return httpx.get(stack.url + "/api/v1/jobs", params={"workflow_id": wid, "status": "completed"}).json()
    done = run(eventually(completed, ok=lambda page: page["total"] == 2, what="both jobs listed as completed"))
    first = httpx.get(stack.url + "/api/v1/jobs", params={"workflow_id": wid, "limit": 1}).json()
    second = httpx.get(stack.url + "/api/v1/jobs", params={"workflow_id": wid, "limit": 1,
                                                           "cursor": first["next_cursor"]}).json()
    assert {first["items"][0]["job_id"], second["items"][0]["job_id"]} == ids == {j["job_id"] for j in done["items"]}
    failed = httpx.get(stack.url + "/api/v1/jobs", params={"workflow_id": wid, "status": "failed"}).json()
    assert failed["items"] == [] and failed["total"] == 0


def test_put_makes_the_next_version_and_delete_deactivates(stack: ApiStack, farm: ServiceFarm) -> None:
    body = support_workflow(unique("versions"), farm.services["tickets"])
    made = httpx.post(stack.url + "/api/v1/workflows", json=body).json()
    assert httpx.post(stack.url + "/api/v1/workflows", json=body).status_code == 200  # the same: a replay
    same = httpx.put(f"{stack.url}/api/v1/workflows/{made['id']}", json=body)
    assert same.status_code == 200 and same.json()["version"] == "1"
    changed = dict(body, description="now with a new description")
    second = httpx.put(f"{stack.url}/api/v1/workflows/{made['id']}", json=changed).json()
    assert second["version"] == "2" and second["versions"] == 2 and second["description"] == changed["description"]
    problem(httpx.post(stack.url + "/api/v1/workflows", json=dict(changed, description="other")), 409)
    gone = httpx.delete(f"{stack.url}/api/v1/workflows/{made['id']}").json()
    assert gone["is_active"] is False
    refused = problem(httpx.post(f"{stack.url}/api/v1/workflows/{made['id']}/execute", json={"input_data": {}}), 409)
    assert "deactivated" in refused["detail"]


def test_listing_pages_by_cursor_and_takes_other_forms(stack: ApiStack) -> None:
    native = {"name": unique("native"), "version": "1.0", "definition": {"steps": [
        {"name": "wait", "step_type": "event_wait", "event_type": "never.happens"}]}}
    plan = {"name": unique("plan"), "start_step": "notify", "steps": {
        "notify": {"id": "notify", "agent_name": "project-coordinator", "next_step": None,
                   "input_mapping": {"who": "$.workflow_input.who"}}}}
    for doc, form in ((native, "native"), (plan, "plan")):
        made = httpx.post(stack.url + "/api/v1/workflows", json=doc)
        assert made.status_code == 201, made.text
        assert made.json()["form"] == form
    yaml_name = unique("yaml")
    yaml = (f"apiVersion: workflow/v1\nkind: Workflow\nmetadata:\n  name: {yaml_name}\n  version: '1'\n"
            "spec:\n  steps:\n    - name: greet\n      type: service_call\n      service: project-coordinator\n")
    made = httpx.post(stack.url + "/api/v1/workflows", content=yaml, headers={"content-type": "application/yaml"})
    assert made.status_code == 201 and [n["type"] for n in made.json()["nodes"]] == ["start", "project-coordinator"]
    shown = httpx.get(f"{stack.url}/api/v1/workflows/{native['name']}").json()
    assert [n["type"] for n in shown["nodes"]] == ["start", "event_wait"]
    seen: list[str] = []
    cursor = None
    while True:
        page = httpx.get(stack.url + "/api/v1/workflows", params={"limit": 2, **({"cursor": cursor} if cursor
                                                                             else {})}).json()
        seen += [w["name"] for w in page["items"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert {native["name"], plan["name"]} <= set(seen) and seen == sorted(seen) and len(seen) == len(set(seen))


def test_cancel_a_waiting_job(stack: ApiStack) -> None:
    name = unique("waits")
    assert httpx.post(stack.url + "/api/v1/workflows", json={"name": name, "version": "1", "definition": {
        "steps": [{"name": "wait", "step_type": "event_wait", "event_type": "never.happens"}]}}).status_code == 201
    job = httpx.post(f"{stack.url}/api/v1/workflows/{name}/execute", json={"input_data": {"a": 1}}).json()
    run(eventually(lambda: httpx.get(f"{stack.url}/api/v1/jobs/{job['job_id']}").json()["status"] == "running",
                   what="the job running"))
    cancelled = httpx.post(f"{stack.url}/api/v1/jobs/{job['job_id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json() == {"job_id": job["job_id"], "applied": True,
                                                                 "status": "cancelled"}
    assert finished(stack.url, job["job_id"])["status"] == "cancelled"
    assert "ended" in problem(httpx.post(f"{stack.url}/api/v1/jobs/{job['job_id']}/cancel"), 409)["detail"]
    logs = httpx.get(f"{stack.url}/api/v1/jobs/{job['job_id']}/logs").json()["lines"]
    assert logs[-1]["level"] == "warning" and logs[-1]["message"].startswith("job cancelled")


def test_a_failing_node_fails_the_job_with_its_error(stack: ApiStack, farm: ServiceFarm) -> None:
    name = unique("refused")
    doc = {"name": name, "nodes": [{"id": "start", "type": "start"}, {"id": "call", "type": "http", "config": {
        "method": "POST", "url": farm.services["tickets"].url + "/refuse", "body": {}}}],
        "edges": [{"source": "start", "target": "call"}]}
    assert httpx.post(stack.url + "/api/v1/workflows", json=doc).status_code == 201
    job = httpx.post(f"{stack.url}/api/v1/workflows/{name}/execute", json={}).json()
    failed = finished(stack.url, job["job_id"])
    assert failed["status"] == "failed" and "400" in str(failed["error"]), failed
    lines = httpx.get(f"{stack.url}/api/v1/jobs/{job['job_id']}/logs").json()["lines"]
    assert lines[-1]["level"] == "error" and lines[-1]["message"].startswith("job failed at node call")

    # Once its stream is retired, the job and its log come from the read models.
    run(eventually(lambda: httpx.get(f"{stack.url}/executions/{job['job_id']}/steps").status_code == 200 and
                   httpx.get(stack.url + "/api/v1/jobs", params={"workflow_id": name, "status": "failed"}
                             ).json()["total"] == 1, what="the failure projected"))
    redis.Redis.from_url(stack.redis_url).delete(Keys(stack.prefix, stack.partitions).instance(job["job_id"]))
    retired = httpx.get(f"{stack.url}/api/v1/jobs/{job['job_id']}/logs", params={"limit": 2}).json()
    rest = httpx.get(f"{stack.url}/api/v1/jobs/{job['job_id']}/logs", params={"cursor": retired["next_cursor"]}).json()
    shown = [line["message"] for line in retired["lines"] + rest["lines"]]
    assert shown[0] == "job running" and shown[-1].startswith("job failed at node call"), shown
    assert httpx.get(f"{stack.url}/api/v1/jobs/{job['job_id']}").json()["status"] == "failed"


def test_node_types_and_their_schemas(stack: ApiStack) -> None:
    service = unique("svc")
    assert httpx.post(stack.url + "/services", json={"name": service, "instances": ["http://127.0.0.1:9"]}
                      ).status_code == 201
    listed = {t["type"]: t for t in httpx.get(stack.url + "/api/v1/nodes").json()["items"]}
    assert {"start", "llm", "http", "code", "conditional"} <= set(listed)
    assert listed["project-coordinator"]["kind"] == "handler" and listed[service]["kind"] == "service"
    assert not any(t.startswith("foldflow.") for t in listed)
    llm = httpx.get(stack.url + "/api/v1/nodes/llm").json()["config_schema"]
    assert set(llm["required"]) == {"model", "prompt"} and "temperature" in llm["properties"]
    custom = httpx.get(f"{stack.url}/api/v1/nodes/{service}").json()
    assert custom["kind"] == "service" and custom["config_schema"]["type"] == "object"
    assert "no node type" in problem(httpx.get(stack.url + "/api/v1/nodes/no-such-type"), 404)["detail"]


def test_one_node_runs_outside_any_workflow(stack: ApiStack, farm: ServiceFarm) -> None:
    def test(kind: str, config: dict[str, Any], data: dict[str, Any], **extra: Any) -> httpx.Response:
        return httpx.post(f"{stack.url}/api/v1/nodes/{kind}/test", json={"config": config, "input": data, **extra},
                          timeout=30)

    llm = test("llm", {"model": "gpt-4", "prompt": "Classify: {{input.message}}"}, {"message": "it crashes"})
    assert llm.status_code == 200 and llm.json()["status"] == "completed", llm.text
    assert llm.json()["output"] == {"category": "technical"}
    called = test("http", {"method": "POST", "url": farm.services["tickets"].url + "/tickets",
                           "body": {"m": "{{input.m}}"}}, {"m": "hi"}).json()
    assert called["status"] == "completed" and called["output"]["got"] == {"m": "hi"}
    decided = test("conditional", {"condition": "{{input.total}} > 100", "true_edge": "a"}, {"total": 250}).json()
    assert decided["status"] == "completed" and decided["output"]["result"] is True
    handler = test("project-coordinator", {}, {}).json()
    assert handler["status"] == "completed" and handler["output"]["notified"] is True
    assert test("start", {}, {"x": 1}).json()["output"] == {"x": 1}
    refused = test("http", {"method": "POST", "url": farm.services["tickets"].url + "/refuse"}, {}).json()
    assert refused["status"] == "failed" and refused["error"]["status"] == 400

    bad = problem(test("llm", {"model": "gpt-4"}, {}), 422)
    assert bad["errors"] == [{"path": "config.prompt", "message": "Object missing required field `prompt`"}]
    assert "FOLDFLOW_CODE_NODES=sandbox" in str(problem(test("code", {"code": "def process(d):\n  return d"},
                                                                 {}), 422))
    hangs = unique("hangs")
    httpx.post(stack.url + "/services", json={"name": hangs, "instances": [farm.services["hangs"].url]})
    timed_out = problem(test(hangs, {}, {}, timeout_ms=1000), 504)
    assert "foldflow activities --http" in timed_out["detail"]
    # The reserved one-node workflows are in neither API's listings.
    for path in ("/workflows?limit=500", "/api/v1/workflows?limit=200"):
        names = [w["name"] for w in httpx.get(stack.url + path).json()["items"]]
        assert names and not any(n.startswith("foldflow.node-test.") for n in names)
    assert not any(j["workflow_name"] and j["workflow_name"].startswith("foldflow.")
                   for j in httpx.get(stack.url + "/api/v1/jobs?limit=500").json()["items"])


def test_analytics_over_a_window_at_bounded_cost(stack: ApiStack, support: dict[str, Any]) -> None:
    name = support["workflow"]["name"]

    async def both_finished() -> dict[str, Any]:
        return httpx.get(stack.url + "/api/v1/analytics/workflows", params={"since": "1h"}).json()
    found = run(eventually(both_finished, what="the support jobs in the analytics",
                           ok=lambda a: any(w["key"] == name and w["by_status"].get("completed") == 2
                                            for w in a["workflows"])))
    stats = next(w for w in found["workflows"] if w["key"] == name)
    assert stats["total"] == 2 and stats["success_rate"] == 1.0 and stats["duration_ms"]["count"] == 2
    assert stats["duration_ms"]["p50"] <= stats["duration_ms"]["p95"] <= stats["duration_ms"]["p99"]
    assert found["window"]["truncated"] is False
    jobs = httpx.get(stack.url + "/api/v1/analytics/jobs", params={"since": "1h"}).json()
    types = {t["key"]: t for t in jobs["node_types"]}
    assert types["llm"]["by_status"]["completed"] >= 2 and types["http"]["total"] >= 1
    assert jobs["jobs"]["total"] >= 2
    bounded = httpx.get(stack.url + "/api/v1/analytics/jobs", params={"since": "1h", "max_executions": 1}).json()
    assert bounded["window"] | {"since": None} == {"since": None, "until": None, "read": 1, "max_executions": 1,
                                                   "truncated": True}


def test_bad_input_is_a_problem_never_a_500(stack: ApiStack, support: dict[str, Any]) -> None:
    api, wid = stack.url, support["workflow"]["id"]
    problem(httpx.post(api + "/api/v1/workflows", content=b"{not json", headers={"content-type": "application/json"}),
            400)
    problem(httpx.post(api + "/api/v1/workflows", json={"name": "x", "nodes": "no", "edges": []}), 422)
    paths = problem(httpx.post(api + "/api/v1/workflows", json={"name": unique("bad"), "nodes": [
        {"id": "start", "type": "start"}, {"id": "a", "type": "llm", "config": {"model": "m"}}],
        "edges": [{"source": "start", "target": "nope"}]}), 422)
    assert {"nodes[1].config.prompt", "edges[0].target"} <= {e["path"] for e in paths["errors"]}
    problem(httpx.post(api + "/api/v1/workflows", json={"name": "foldflow.node-test.x", "nodes": [], "edges": []}), 422)
    problem(httpx.post(api + "/api/v1/workflows", content=b"x", headers={"content-type": "text/plain"}), 415)
    problem(httpx.post(api + "/api/v1/workflows", content=b"{" + b" " * (2 << 20) + b"}",
                       headers={"content-type": "application/json"}), 413)
    problem(httpx.get(api + "/api/v1/workflows/" + str(uuid.uuid4())), 404)
    problem(httpx.put(api + "/api/v1/workflows/no-such-workflow", json={"name": "no-such-workflow"}), 404)
    problem(httpx.delete(api + "/api/v1/workflows/no-such-workflow"), 404)
    problem(httpx.post(api + "/api/v1/workflows/no-such-workflow/execute", json={}), 404)
    problem(httpx.post(f"{api}/api/v1/workflows/{wid}/execute", json={"input_data": [1]}), 400)
    problem(httpx.post(f"{api}/api/v1/workflows/{wid}/execute", json={"input_data": {}, "input": {}}), 422)
    problem(httpx.post(f"{api}/api/v1/workflows/{wid}/execute", json={"inputs": {}}), 400)
    problem(httpx.get(api + "/api/v1/jobs/no-such-job"), 404)
    problem(httpx.get(api + "/api/v1/jobs/bad%20id"), 400)
    problem(httpx.get(api + "/api/v1/jobs/no-such-job/logs"), 404)
    problem(httpx.post(api + "/api/v1/jobs/no-such-job/cancel"), 404)
    problem(httpx.get(api + "/api/v1/jobs", params={"status": "sleeping"}), 400)
    problem(httpx.get(api + "/api/v1/jobs", params={"limit": 0}), 400)
    problem(httpx.get(api + "/api/v1/jobs", params={"cursor": "garbage"}), 400)
    problem(httpx.get(api + "/api/v1/workflows", params={"cursor": "%%%"}), 400)
    problem(httpx.get(api + "/api/v1/analytics/workflows", params={"since": "yesterday-ish"}), 400)
    problem(httpx.get(api + "/api/v1/analytics/jobs", params={"max_executions": 10 ** 6}), 400)
    problem(httpx.post(api + "/api/v1/nodes/llm/test", json={"config": "x"}), 400)
    problem(httpx.post(api + "/api/v1/nodes/llm/test", json={"config": {"model": 1, "prompt": "p"}}), 422)


def test_every_route_is_in_the_openapi_document(stack: ApiStack) -> None:
    paths = httpx.get(stack.url + "/openapi.json").json()["paths"]
    for path, method in (("/api/v1/workflows", "get"), ("/api/v1/workflows", "post"),
                         ("/api/v1/workflows/{workflow_id}", "put"), ("/api/v1/workflows/{workflow_id}", "delete"),
                         ("/api/v1/workflows/{workflow_id}/execute", "post"), ("/api/v1/jobs", "get"),
                         ("/api/v1/jobs/{job_id}", "get"), ("/api/v1/jobs/{job_id}/cancel", "post"),
                         ("/api/v1/jobs/{job_id}/logs", "get"), ("/api/v1/nodes", "get"),
                         ("/api/v1/nodes/{node_type}", "get"), ("/api/v1/nodes/{node_type}/test", "post"),
                         ("/api/v1/analytics/workflows", "get"), ("/api/v1/analytics/jobs", "get"),
                         ("/health", "get"), ("/ping", "get")):
        assert method in paths.get(path, {}), (path, method)
    assert paths["/health"]["get"]["security"] == [{}]
