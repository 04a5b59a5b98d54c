"""/executions against a running `foldflow api` process, over loopback HTTP with
httpx, with a real engine worker, projector and activity worker (the demo's
handlers) behind it: seed 000's start verbatim, 200 vs 202, the Idempotency-Key,
each refused transition, unknown and malformed ids, history pages, and a retry
from a failed step with edited input."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from engine.api.workflow_ids import step_uuid, workflow_uuid
from engine.client import Client
from engine.config import Settings
from tests.support.api_stack import ApiStack
from tests.support.poll import wait_for
from tests.support.tools import EXAMPLES

AGENT = "Agent Task Execution"
# One step served by the demo's agent-orchestrator handler, which fails attempt 1 when the
# context says flaky; with one attempt allowed, the execution fails there.
ASSIGN = {"name": "e2e-exec-assign", "version": "1", "definition": {"steps": [
    {"name": "assign", "step_type": "service_call", "service": "agent-orchestrator",
     "endpoint": "/agents/{agent_id}/tasks", "payload": {"agent": "${context.agent_id}"}}]}}
SEED_CONTEXT = {"project_id": "project-123", "task_id": "task-456", "agent_id": "agent-789"}
LONG = {"wait_ms": 20_000}  # only a bound on a hang: the engine answers in milliseconds


@pytest.fixture(scope="module")
def registered(stack: ApiStack) -> ApiStack:
    async def register() -> None:
        client = Client.from_url(stack.redis_url, Settings(prefix=stack.prefix, partitions=stack.partitions))
        try:
            await client.register(orjson.loads((EXAMPLES / "agent-task-execution.json").read_bytes()))
            await client.register(ASSIGN)
        finally:
            await client.close()
    asyncio.run(register())
    return stack


def status_is(api: str, iid: str, want: str) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(lambda: httpx.get(f"{api}/executions/{iid}").json(), what=f"{iid} {want}",
                                     ok=lambda d: d.get("status") == want)
    return found


def start(api: str, body: dict[str, Any], **params: Any) -> httpx.Response:
    return httpx.post(f"{api}/executions", json=body, params={**LONG, **params}, timeout=30)


def test_the_seed_start_request_verbatim(registered: ApiStack, api: str) -> None:
    body = {"workflow_id": workflow_uuid(registered.prefix, AGENT), "correlation_id": "project-123",
            "context": SEED_CONTEXT}
    r = start(api, body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["status"] == "started" and doc["workflow_id"] == body["workflow_id"]
    assert doc["correlation_id"] == "project-123" and doc["context"] == SEED_CONTEXT
    assert doc["current_step"] == "task_preparation" and doc["started_at"].endswith("Z")
    # the demo handlers run the two service calls; the event wait holds it running
    running = wait_for(lambda: httpx.get(f"{api}/executions/{doc['execution_id']}").json(),
                       ok=lambda d: d["current_step"] == "execution_monitoring")
    assert running["status"] == "running" and running["source"] == "stream"
    steps = wait_for(lambda: httpx.get(f"{api}/executions/{doc['execution_id']}/steps").json()["steps"],
                     ok=lambda s: s[1]["status"] == "completed")
    assert [s["name"] for s in steps] == ["task_preparation", "agent_assignment", "execution_monitoring",
                                          "result_processing"]
    assert steps[0]["step_id"] == step_uuid(str(body["workflow_id"]), "task_preparation")
    assert steps[0]["attempts"][0]["output"]["prepared"] is True
    listed = httpx.get(f"{api}/executions", params={"correlation_id": "project-123"}).json()
    assert doc["execution_id"] in [i["execution_id"] for i in listed["items"]]


def test_wait_ms_0_answers_202_pending_then_it_starts(registered: ApiStack, api: str) -> None:
    r = start(api, {"workflow_id": AGENT, "context": SEED_CONTEXT}, wait_ms=0)
    assert r.status_code == 202 and r.json()["status"] == "pending"
    status_is(api, r.json()["execution_id"], "running")


def test_the_idempotency_key_returns_the_same_execution(registered: ApiStack, api: str) -> None:
    body = {"workflow_id": AGENT, "correlation_id": "idem-e2e", "context": SEED_CONTEXT}
    headers = {"Idempotency-Key": "order-77-start"}
    first = httpx.post(f"{api}/executions", json=body, headers=headers, params=LONG, timeout=30)
    again = httpx.post(f"{api}/executions", json=body, headers=headers, params=LONG, timeout=30)
    assert first.status_code == again.status_code == 200
    assert first.json()["execution_id"] == again.json()["execution_id"]
    changed = httpx.post(f"{api}/executions", json={**body, "correlation_id": "other"}, headers=headers, timeout=30)
    assert changed.status_code == 422 and changed.json()["errors"][0]["path"] == "correlation_id"
    wait_for(lambda: httpx.get(f"{api}/executions", params={"correlation_id": "idem-e2e"}).json()["count"],
             ok=lambda n: n == 1)


def test_each_refused_transition_is_409_with_the_reason(registered: ApiStack, api: str) -> None:
    iid = start(api, {"workflow_id": AGENT, "context": SEED_CONTEXT}).json()["execution_id"]
    refused = httpx.put(f"{api}/executions/{iid}/resume", params=LONG)
    assert refused.status_code == 409 and "running" in refused.json()["detail"]
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert httpx.put(f"{api}/executions/{iid}/pause", json={"reason": "window"}, params=LONG,
                     timeout=30).json()["status"] == "paused"
    assert httpx.put(f"{api}/executions/{iid}/pause", params=LONG).status_code == 409
    assert httpx.put(f"{api}/executions/{iid}/resume", params=LONG, timeout=30).json()["status"] == "running"
    assert httpx.put(f"{api}/executions/{iid}/cancel", params=LONG, timeout=30).json()["status"] == "cancelled"
    for command in ("cancel", "pause", "resume"):
        r = httpx.put(f"{api}/executions/{iid}/{command}")
        assert r.status_code == 409 and "cancelled" in r.json()["detail"], command
    r = httpx.post(f"{api}/executions/{iid}/steps/task_preparation/retry")
    assert r.status_code == 409 and "cancelled" in r.json()["detail"]


def test_unknown_404_and_malformed_400(registered: ApiStack, api: str) -> None:
    assert httpx.get(f"{api}/executions/no-such-execution").status_code == 404
    assert httpx.put(f"{api}/executions/no-such-execution/cancel").status_code == 404
    assert httpx.post(f"{api}/executions", json={"workflow_id": "no-such-workflow"}).status_code == 404
    for path in ("/executions/-bad", "/executions/-bad/history", "/executions/-bad/steps"):
        r = httpx.get(api + path)
        assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json"), path
    assert httpx.post(f"{api}/executions", content=b"{not json",
                      headers={"content-type": "application/json"}).status_code == 400


def test_history_in_pages_is_the_whole_history(registered: ApiStack, api: str) -> None:
    iid = start(api, {"workflow_id": AGENT, "context": SEED_CONTEXT}).json()["execution_id"]
    wait_for(lambda: httpx.get(f"{api}/executions/{iid}").json()["current_step"],
             ok=lambda s: s == "execution_monitoring")
    whole = httpx.get(f"{api}/executions/{iid}/history", params={"limit": 1000}).json()["events"]
    paged: list[dict[str, Any]] = []
    after = None
    while True:
        page = httpx.get(f"{api}/executions/{iid}/history",
                         params={"limit": 3, **({"after": after} if after else {})}).json()
        paged += page["events"]
        after = page["next_after"]
        if after is None:
            break
    assert paged == whole and [e["version"] for e in paged] == list(range(1, len(whole) + 1))
    assert whole[0]["type"] == "workflow.created" and whole[0]["at"].endswith("Z")
    state = httpx.get(f"{api}/executions/{iid}/state").json()
    assert state["version"] >= len(whole) and state["state"]["workflow"] == AGENT


def test_retry_from_the_failed_step_with_edited_input(registered: ApiStack, api: str) -> None:
    context = {"agent_id": "agent-1", "flaky": True}
    iid = start(api, {"workflow_id": ASSIGN["name"], "context": context}).json()["execution_id"]
    failed = status_is(api, iid, "failed")
    assert failed["failed_step"] == "assign"
    step_id = step_uuid(workflow_uuid(registered.prefix, str(ASSIGN["name"])), "assign")
    r = httpx.post(f"{api}/executions/{iid}/steps/{step_id}/retry", json={"input": {"agent": "agent-2"}},
                   params=LONG, timeout=30)
    # the retried step may already have run when the answer is read: the engine answers in milliseconds
    assert r.status_code == 200 and r.json()["applied"] and r.json()["status"] in ("running", "completed"), r.text
    status_is(api, iid, "completed")
    retried = [e for e in httpx.get(f"{api}/executions/{iid}/history").json()["events"]
               if e["type"] == "workflow.retried"]
    assert retried[0]["data"]["from_step"] == "assign" and retried[0]["data"]["input"] == {"agent": "agent-2"}
    doc = wait_for(lambda: httpx.get(f"{api}/executions/{iid}/steps/assign/retries").json(),
                   ok=lambda d: d["retries"] == 1 and d["attempts"][-1]["status"] == "completed")
    assert [a["input"] for a in doc["attempts"]] == [{"agent": "agent-1"}, {"agent": "agent-2"}]
    assert doc["rewinds"][0]["input"] == {"agent": "agent-2"}
    again = httpx.post(f"{api}/executions/{iid}/steps/assign/retry")
    assert again.status_code == 409 and "completed" in again.json()["detail"]
