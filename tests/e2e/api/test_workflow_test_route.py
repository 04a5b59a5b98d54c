"""Test runs over HTTP and from the command line (issue 14, seed 004's testing
framework): `POST /workflows/test` (any definition, registered or not) and `POST
/workflows/{workflow_id}/test` (a registered one) on a running `foldflow api`,
with JWT scopes on; and `foldflow definitions test` with the documented mocks.
Nothing is started: the deployment's executions stay empty."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest

from engine.ops.cli import main as cli_main
from tests.support.api_stack import ApiStack

EXAMPLES = Path(__file__).resolve().parents[3] / "docs" / "examples"
SECRET = "simulate-test-secret-0123456789abcdef"
PROBLEM = "application/problem+json"
COMPENSATION_YAML = (EXAMPLES / "compensation.yaml").read_text()
MOCKS = orjson.loads((EXAMPLES / "mocks" / "compensation-mocks.json").read_bytes())


def bearer(scope: str) -> dict[str, str]:
    token = jwt.encode({"sub": "simulate", "scope": scope, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    with ApiStack(redis_url, tmp_path_factory.mktemp("test-route"), workers=False, activities=None,
                  env={"FOLDFLOW_JWT_SECRET": SECRET}, ready="/health/liveness") as running:
        yield running


@pytest.fixture(scope="module")
def http(stack: ApiStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=20, headers=bearer("admin")) as client:
        yield client


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"] == PROBLEM and "Traceback" not in r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["detail"]
    return body


def test_an_unregistered_definition_runs_with_its_mocks(http: httpx.Client) -> None:
    r = http.post("/workflows/test", json={"definition": COMPENSATION_YAML, "mocks": MOCKS,
                                           "input": {"order_id": "o-1"}}, headers=bearer("write"))
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["status"] == "compensated" and run["simulated_ms"] == 200
    assert run["state"]["failed_step"] == "charge_card" and run["state"]["context"] == {"order_id": "o-1"}
    assert run["steps"]["charge_card"][0]["error"] == {"message": "card declined", "retryable": False,
                                                      "kind": "http", "status": 402}
    kinds = [h["type"] for h in run["history"]]
    assert kinds[:2] == ["workflow.created", "workflow.started"] and kinds[-1] == "workflow.compensated"
    first = run["history"][0]
    assert set(first) == {"version", "type", "entry_id", "at", "ts", "data"} and first["at"].endswith("Z")


def test_a_registered_workflow_runs_by_name_id_and_version_and_nothing_starts(http: httpx.Client) -> None:
    steps: list[dict[str, Any]] = [
        {"name": "call", "step_type": "service_call", "service": "svc",
         "retry_policy": {"max_attempts": 3, "backoff_multiplier": 60000}},
        {"name": "after", "step_type": "delay", "duration": "1h", "depends_on": ["call"]}]
    doc = {"name": "simulate-route", "version": "1", "definition": {"steps": steps}}
    created = http.post("/workflows", json=doc)
    assert created.status_code in (200, 201), created.text
    second = {**doc, "version": "2", "definition": {"steps": steps[:1]}}
    assert http.put("/workflows/simulate-route", json=second).status_code == 200
    mocks = {"steps": {"call": [{"error": "down", "status": 500}, {"output": {"ok": True}}]}}
    for path in ("/workflows/simulate-route/test?version=1", f"/workflows/{created.json()['id']}/test?version=1"):
        run = http.post(path, json={"mocks": mocks}, headers=bearer("write")).json()
        assert run["status"] == "completed" and run["simulated_ms"] == 60_000 + 3_600_000
        assert [a["status"] for a in run["steps"]["call"]] == ["retrying", "completed"]
    latest = http.post("/workflows/simulate-route/test", json={"mocks": mocks}).json()
    assert latest["state"]["def_version"] == "2" and latest["simulated_ms"] == 60_000
    listed = http.get("/executions", params={"workflow": "simulate-route"})
    assert listed.status_code == 200 and listed.json()["items"] == []


def test_refusals_are_problems_with_paths(http: httpx.Client) -> None:
    bad = problem(http.post("/workflows/test", json={"definition": COMPENSATION_YAML,
                                                     "mocks": {"steps": {"ghost": {"output": 1}, "charge_card":
                                                                         [{"error": "x", "status": 42}]}}}), 422)
    assert {e["path"] for e in bad["errors"]} == {"mocks.steps.ghost", "mocks.steps.charge_card[0].status"}
    assert bad["detail"] == "the mocks have 2 problem(s)"
    schema = problem(http.post("/workflows/test", json={"definition": (EXAMPLES / "input-output.yaml").read_text(),
                                                        "context": {"email": "nope", "qty": 0}}), 422)
    assert {"context.email", "context.qty"} <= {e["path"] for e in schema["errors"]}
    invalid = problem(http.post("/workflows/test", json={"definition": {"name": "x", "version": "1", "definition": {
        "steps": [{"name": "a", "step_type": "service_call"}]}}}), 422)
    assert invalid["errors"][0]["path"].startswith("definition.definition.steps[0]")
    context = problem(http.post("/workflows/test", json={"definition": COMPENSATION_YAML, "context": {},
                                                         "input": {}}), 400)
    assert "context or input" in context["detail"]
    problem(http.post("/workflows/test", json={"mocks": {}}), 400)  # no definition
    problem(http.post("/workflows/test", content=b"{not json", headers={"content-type": "application/json"}), 400)
    problem(http.post("/workflows/no-such-workflow/test", json={}), 404)
    problem(http.post("/workflows/test", json={"definition": COMPENSATION_YAML}, headers=bearer("read")), 403)


def test_a_run_past_max_events_is_aborted_not_an_error(http: httpx.Client) -> None:
    doc = {"name": "many", "version": "1", "definition": {"steps": [
        {"name": "each", "step_type": "loop", "service": "s", "items": "{{ input.items }}"}]}}
    r = http.post("/workflows/test", json={"definition": doc, "context": {"items": list(range(50))},
                                           "max_events": 20})
    assert r.status_code == 200 and r.json()["status"] == "aborted" and "20 events" in r.json()["reason"]
    problem(http.post("/workflows/test", json={"definition": doc, "max_events": 10**9}), 400)


def test_the_cli_runs_the_documented_example_and_exits_by_the_outcome(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["definitions", "test", str(EXAMPLES / "retry-backoff.yaml"), "--mocks",
                     str(EXAMPLES / "mocks" / "retry-backoff-mocks.json"), "--history"])
    run = orjson.loads(capsys.readouterr().out)
    assert code == 0 and run["status"] == "completed"
    assert [a["status"] for a in run["steps"]["sync"]] == ["retrying", "retrying", "completed"]
    assert run["steps"]["sync"][1]["retry_at_ms"] - run["steps"]["sync"][1]["completed_ms"] == 1000  # Retry-After
    assert run["history"][-1]["type"] == "workflow.completed"
    args = ["definitions", "test", str(EXAMPLES / "compensation.yaml"), "--mocks",
            str(EXAMPLES / "mocks" / "compensation-mocks.json"), "--context", '{"order_id": "o-1"}']
    assert cli_main(args) == 1  # compensated: not completed
    assert "history" not in orjson.loads(capsys.readouterr().out)
    assert cli_main([*args[:4], str(EXAMPLES / "mocks" / "nope.json")]) == 2
    assert "--mocks" in capsys.readouterr().err
    assert cli_main([*args[:3], "--context", "[1]"]) == 2
    assert "context: must be an object" in capsys.readouterr().err
