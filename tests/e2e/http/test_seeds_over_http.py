"""Seed 004's user registration and seed 000's agent example against real HTTP
services, with nothing but the definitions, `foldflow services register` and
`foldflow activities --http`: no Python handler anywhere."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.e2e.http.conftest import cli
from tests.support.api_stack import ApiStack
from tests.support.http_services import Seen, ServiceFarm
from tests.support.poll import wait_for
from tests.support.tools import EXAMPLES

REGISTRATION = {"username": "ada", "email": "ada@example.com", "password": "correct-horse",
                "profile_data": {"lang": "en"}}


def _finished(api: httpx.Client, eid: str, status: str = "completed", timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        found = api.get(f"/executions/{eid}")
        body: dict[str, Any] = found.json() if found.status_code == 200 else {}
        return body if body.get("status") == status else None

    return wait_for(done, timeout, f"execution {eid} {status}")  # type: ignore[no-any-return]


def _step(api: httpx.Client, eid: str, name: str) -> dict[str, Any]:
    steps = {s["name"]: s for s in api.get(f"/executions/{eid}").json()["steps"]}
    return steps[name]  # type: ignore[no-any-return]


def test_seed_004_user_registration_runs_against_http_services(stack: ApiStack, farm: ServiceFarm) -> None:
    users, profiles, mail = farm.add("user-service"), farm.add("profile-service"), farm.add("notification-service")
    users.route("POST", "/validate", lambda s: (200, {"valid": True}))
    users.route("POST", "/api/users", lambda s: (201, {"id": "u-42", "status": "pending"}))
    users.route("PUT", "/api/users/u-42/activate", lambda s: (200, {"id": "u-42", "status": "active"}))
    profiles.route("POST", "/api/profiles", lambda s: (201, {"profile": "p-1"}))
    mail.route("POST", "/api/(emails|notifications)/send", lambda s: (202, {"queued": True}))
    for service in (users, profiles, mail):
        done = cli(stack, "services", "register", service.name, service.url, "--health", "/health")
        assert done.returncode == 0, done.stderr

    api = httpx.Client(base_url=stack.url, timeout=30)
    created = api.post("/workflows", content=(EXAMPLES / "user-registration.yaml").read_bytes(),
                       headers={"Content-Type": "application/yaml"})
    assert created.status_code == 201, created.text
    started = api.post("/executions", json={"workflow_id": "user-registration-workflow", "context": REGISTRATION,
                                            "correlation_id": "corr-004"})
    assert started.status_code in (200, 202), started.text
    eid = started.json()["execution_id"]

    wait_for(lambda: api.get(f"/executions/{eid}").json(), 60, "the registration waits for the verification event",
             ok=lambda e: any(s["name"] == "wait_for_verification" and s["status"] == "waiting" for s in e["steps"]))
    published = api.post("/events", json={"id": "evt-verified-u-42", "type": "user.email_verified",
                                          "source": "user-service", "data": {"user_id": "u-42"}})
    assert published.status_code == 202, published.text
    _finished(api, eid)

    validations = users.requests("POST", "/validate")
    assert sorted((v.body["field"], v.body["rule"], v.body["value"]) for v in validations) == [
        ("email", "unique_email", "ada@example.com"), ("username", "unique_username", "ada")]
    created_user = users.requests("POST", "/api/users")[0]
    assert created_user.body["username"] == "ada" and created_user.body["status"] == "pending"
    assert created_user.body["password_hash"] and created_user.body["password_hash"] != "correct-horse"
    # user_id flowed from the account's response into the later endpoints and payloads
    assert profiles.requests("POST", "/api/profiles")[0].body["user_id"] == "u-42"
    email = mail.requests("POST", "/api/emails/send")[0].body
    assert email["to"] == "ada@example.com" and email["variables"]["user_id"] == "u-42"
    assert len(users.requests("PUT", "/api/users/u-42/activate")) == 1
    assert mail.requests("POST", "/api/notifications/send")[0].body["type"] == "account_activated"
    calls: list[Seen] = users.seen + profiles.seen + mail.seen
    keys = [c.headers["Idempotency-Key"] for c in calls]
    assert len(keys) == len(set(keys)), "each step run has its own Idempotency-Key"
    assert {c.headers["X-Correlation-ID"] for c in calls} == {"corr-004"}

    account = _step(api, eid, "create_user_account")
    assert account["output"] == {"user_id": "u-42"}  # the step's output mapping read the response


def test_seed_000_agent_example_resolves_services_from_the_environment(stack: ApiStack, farm: ServiceFarm) -> None:
    planning, agents = farm.services["planning-system"], farm.services["agent-orchestrator"]
    planning.route("POST", "/tasks/t-1/prepare", lambda s: (200, {"prepared": True}))
    planning.route("POST", "/tasks/t-1/results", lambda s: (200, {"stored": True}))
    agents.route("POST", "/agents/a-1/tasks", lambda s: (202, {"assigned": "a-1"}))
    api = httpx.Client(base_url=stack.url, timeout=30)
    body = json.loads((EXAMPLES / "agent-task-execution.json").read_bytes())
    assert api.post("/workflows", json=body).status_code == 201
    context = {"project_id": "p-1", "task_id": "t-1", "agent_id": "a-1"}
    eid = api.post("/executions", json={"workflow_id": body["name"], "context": context}).json()["execution_id"]
    wait_for(lambda: api.get(f"/executions/{eid}").json(), 60, "the agent's event is awaited",
             ok=lambda e: any(s["name"] == "execution_monitoring" and s["status"] == "waiting" for s in e["steps"]))
    api.post("/events", json={"type": "agent.task_completed", "source": "agent-orchestrator",
                              "data": {"task_id": "t-1", "agent_id": "a-1", "result": "ok"}})
    _finished(api, eid)
    prepare = planning.requests("POST", "/tasks/t-1/prepare")[0]
    # no payload: the task's input and context
    assert prepare.body["context"] == context
    assert agents.requests("POST", "/agents/a-1/tasks") and planning.requests("POST", "/tasks/t-1/results")
    # the step's call is in its history: method, URL, status, headers, time, the start of the body
    def recorded() -> dict[str, Any] | None:
        steps = {s["name"]: s for s in api.get(f"/executions/{eid}/steps").json()["steps"]}
        attempts = steps["task_preparation"]["attempts"]
        return attempts[-1].get("call") if attempts else None

    call = wait_for(recorded, 30, "the steps read model has the call")
    assert call["method"] == "POST" and call["url"] == planning.url + "/tasks/t-1/prepare"
    assert call["status"] == 200 and call["duration_ms"] >= 0 and '"prepared"' in call["body"]
    assert call["headers"]["Content-Type"].startswith("application/json")
