"""Seed 000's example end to end over HTTP only, as a service in any language would
drive it: register the agent-task-execution definition, start an execution, watch it
live over SSE, publish the agents' `agent.task_completed` event, and read the history
and the correlation id's timeline. No Python client, no CLI: httpx and the wire."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx

from tests.support.api_stack import ApiStack
from tests.support.poll import wait_for
from tests.support.tools import EXAMPLES

CONTEXT = {"project_id": "p-1", "task_id": "t-1", "agent_id": "a-1"}


def _sse(url: str, seen: list[dict[str, Any]], done: threading.Event) -> None:
    """Every message of one SSE stream, until the server closes it."""
    with httpx.stream("GET", url, timeout=httpx.Timeout(10, read=60)) as resp:
        assert resp.status_code == 200, resp.read()
        message: dict[str, Any] = {}
        for line in resp.iter_lines():
            if line.startswith(("id:", "event:", "data:")):
                name, _, value = line.partition(":")
                message[name] = value.strip()
            elif line == "" and message:
                seen.append(message)
                message = {}
    done.set()


def test_seed_000_over_http_only(stack: ApiStack) -> None:
    api = httpx.Client(base_url=stack.url, timeout=30)
    body = json.loads((EXAMPLES / "agent-task-execution.json").read_bytes())
    created = api.post("/workflows", json=body)
    assert created.status_code == 201, created.text
    workflow = created.json()
    assert workflow["active"] is True and all(s["id"] for s in workflow["definition"]["steps"])

    started = api.post("/executions", json={"workflow_id": workflow["id"], "correlation_id": "corr-seed-000",
                                            "context": CONTEXT})
    assert started.status_code == 200, started.text
    execution = started.json()
    assert execution["status"] == "started" and execution["context"] == CONTEXT
    eid = execution["execution_id"]

    seen: list[dict[str, Any]] = []
    closed = threading.Event()
    threading.Thread(target=_sse, args=(f"{stack.url}/executions/{eid}/stream", seen, closed), daemon=True).start()

    def waiting() -> bool:
        steps = {s["name"]: s for s in api.get(f"/executions/{eid}").json()["steps"]}
        return steps["execution_monitoring"]["status"] == "waiting"

    wait_for(waiting, 30, "the execution waits for the agent's event")
    event = {"id": "evt-seed-000", "type": "agent.task_completed", "source": "agent-orchestrator",
             "timestamp": "2023-01-01T12:00:00Z", "correlation_id": "corr-seed-000",
             "data": {"task_id": "t-1", "agent_id": "a-1", "result": {"status": "done"}}}
    accepted = api.post("/events", json=event)
    assert accepted.status_code == 202 and accepted.json()["id"] == "evt-seed-000", accepted.text
    assert api.post("/events", json=event).json()["duplicate"] is True

    assert closed.wait(60), f"the live stream did not close; saw {[m.get('event') for m in seen]}"
    types = [m["event"] for m in seen]
    assert types[-1] == "close" and types[-2] == "workflow.completed"
    ids = [m["id"] for m in seen if "id" in m]
    assert len(ids) == len(set(ids)), "the stream repeated an entry"

    final = api.get(f"/executions/{eid}").json()
    assert final["status"] == "completed"
    history = api.get(f"/executions/{eid}/history").json()["events"]
    assert history[0]["type"] == "workflow.created" and history[-1]["type"] == "workflow.completed"
    # The stream sends each event of the history once, in order, under its entry id.
    assert [e["entry_id"] for e in history] == ids

    def timeline() -> list[str]:
        resp = api.get("/correlations/corr-seed-000/events")
        return [e["type"] for e in resp.json()["events"]] if resp.status_code == 200 else []

    order = wait_for(timeline, 30, "the correlation timeline has the whole run",
                     ok=lambda t: "workflow.completed" in t and "agent.task_completed" in t)
    assert order.index("workflow.started") < order.index("agent.task_completed") < order.index("workflow.completed")
