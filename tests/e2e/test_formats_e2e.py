"""Seed 001's nodes-and-edges customer support workflow and seed 003's execution
plan, registered and started over HTTP (POST /workflows, POST /executions) on one
real deployment whose only executor is `foldflow activities --http`: the llm
nodes call an OpenAI-compatible service on loopback, the http node a ticket
service, the plan's agents their own services. One engine underneath."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.api_stack import ApiStack
from tests.support.http_services import Seen, ServiceFarm
from tests.support.poll import wait_for
from tests.support.tools import ROOT

DOCS = ROOT / "docs" / "examples"
API_KEY = "sk-formats-3b9d0c"
AGENTS = ("extractor", "transformer", "loader")


def model_reply(seen: Seen) -> tuple[int, Any]:
    """An OpenAI-compatible chat completion: inquiries that mention an error are technical."""
    prompt = seen.body["messages"][-1]["content"]
    category = "technical" if "error" in prompt.lower() else "general"
    return 200, {"id": "chatcmpl-1", "object": "chat.completion", "model": seen.body["model"] + "-0613",
                 "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": json.dumps({"category": category})}}]}


@pytest.fixture(scope="module")
def farm() -> Iterator[ServiceFarm]:
    with ServiceFarm() as running:
        running.add("model").route("POST", "/v1/chat/completions", model_reply)
        running.add("tickets").route("POST", "/v1/tickets", lambda s: (201, {"ticket": "T-1", "got": s.body}))
        running.add("extractor").route("POST", "/?", lambda s: (200, {"rows": [{"id": 1}, {"id": 2}]}))
        running.add("transformer").route("POST", "/?", lambda s: (200, {"input": {"records": s.body["records"]["rows"]}}))
        running.add("loader").route("POST", "/?", lambda s: (200, {"loaded": len(s.body["rows"])}))
        yield running


@pytest.fixture(scope="module")
def api(redis_url: str, farm: ServiceFarm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    logs: Path = tmp_path_factory.mktemp("formats-stack")
    env = {"MODEL_SERVICE_URL": farm.services["model"].url, "FOLDFLOW_SECRET_OPENAI_API_KEY": API_KEY,
           "FOLDFLOW_SECRET_TICKETS_TOKEN": "tickets-token", "FOLDFLOW_BREAKER_THRESHOLD": "0",
           "FOLDFLOW_HTTP_REFRESH_MS": "200",  # the executor sees the queues of a definition registered just now
           **{f"{a.upper()}_URL": farm.services[a].url for a in AGENTS}}
    with ApiStack(redis_url, logs, activities=None, http=True, env=env) as stack, \
            httpx.Client(base_url=stack.url, timeout=30) as client:
        yield client


def register(api: httpx.Client, document: dict[str, Any]) -> None:
    created = api.post("/workflows", content=orjson.dumps(document), headers={"Content-Type": "application/json"})
    assert created.status_code == 201, created.text


def finished(api: httpx.Client, workflow: str, context: dict[str, Any], status: str) -> dict[str, Any]:
    started = api.post("/executions", json={"workflow_id": workflow, "context": context})
    assert started.status_code in (200, 202), started.text
    eid = started.json()["execution_id"]

    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"/executions/{eid}").json()
        return body if body.get("status") in ("completed", "failed", "cancelled") else None

    body: dict[str, Any] = wait_for(done, 60, f"execution {eid} finished")
    steps = {s["name"]: s for s in body["steps"]}
    assert body["status"] == status, {name: (s["status"], s.get("error")) for name, s in steps.items()}
    return steps


def test_the_customer_support_workflow_takes_both_routes(api: httpx.Client, farm: ServiceFarm) -> None:
    document = copy.deepcopy(orjson.loads((DOCS / "customer-support.json").read_bytes()))
    document["nodes"][4]["config"]["url"] = farm.services["tickets"].url + "/v1/tickets"
    register(api, document)

    technical = finished(api, "Customer Support Workflow", {"message": "I get an error 500 at login"}, "completed")
    assert technical["classify"]["output"] == {"output": {"category": "technical"}, "model": "gpt-4-0613",
                                               "usage": {"prompt_tokens": 9, "completion_tokens": 3,
                                                         "total_tokens": 12}}
    assert technical["route"]["output"] == {"result": True, "edge": "technical_support"}
    assert technical["technical_support"]["status"] == "completed"
    assert technical["general_support"]["status"] == "skipped"

    general = finished(api, "Customer Support Workflow", {"message": "Where is my invoice?"}, "completed")
    assert general["route"]["output"] == {"result": False, "edge": "general_support"}
    assert general["technical_support"]["status"] == "skipped"
    assert general["general_support"]["output"]["output"]["ticket"] == "T-1"

    calls = farm.services["model"].requests("POST", "/v1/chat/completions")
    assert len(calls) == 3  # classify twice, technical_support once
    first = calls[0]
    assert first.headers["Authorization"] == f"Bearer {API_KEY}"  # the secret, filled in at call time
    assert first.body["model"] == "gpt-4" and first.body["temperature"] == 0 and first.body["max_tokens"] == 50
    assert first.body["messages"][0]["role"] == "user" and "error 500" in first.body["messages"][0]["content"]
    [answer] = [c for c in calls if c.body["messages"][0]["content"].startswith("Answer this technical inquiry")]
    assert "Authorization" not in answer.headers  # technical_support has no api_key
    [ticket] = farm.services["tickets"].requests("POST", "/v1/tickets")
    assert ticket.body == {"message": "Where is my invoice?", "category": "general"}
    assert ticket.headers["Authorization"] == "Bearer tickets-token"


def test_the_data_pipeline_plan_runs_its_chain(api: httpx.Client, farm: ServiceFarm) -> None:
    register(api, orjson.loads((DOCS / "data-pipeline.json").read_bytes()))
    context = {"source_url": "https://data.example.com/orders.csv", "rules": ["dedupe"], "target table": "orders"}
    steps = finished(api, "data-pipeline", context, "completed")
    assert steps["load"]["output"] == {"loaded": 2}
    [extract] = farm.services["extractor"].seen
    assert extract.body == {"source_url": "https://data.example.com/orders.csv", "format": "csv"}
    [transform] = farm.services["transformer"].seen
    assert transform.body == {"records": {"rows": [{"id": 1}, {"id": 2}]}, "rules": ["dedupe"]}

    [load] = farm.services["loader"].seen
    assert load.body == {"rows": [{"id": 1}, {"id": 2}], "table": "orders"}

    # a path that matches nothing fails its step, naming the path (a native payload would send null)
    missing = finished(api, "data-pipeline", {k: v for k, v in context.items() if k != "rules"}, "failed")
    assert missing["transform"]["error"]["kind"] == "template"
    assert "input_mapping.rules: $.workflow_input.rules matched nothing" in missing["transform"]["error"]["message"]
    assert missing["load"]["status"] == "pending" and len(farm.services["transformer"].seen) == 1


def test_a_code_node_is_refused_where_code_nodes_are_off(api: httpx.Client) -> None:
    document = {"name": "code-off", "nodes": [{"id": "run", "type": "code", "config": {
        "code": "def process(input_data):\n    return input_data\n"}}], "edges": []}
    refused = api.post("/workflows", content=orjson.dumps(document), headers={"Content-Type": "application/json"})
    assert refused.status_code == 422, refused.text
    assert refused.headers["Content-Type"].startswith("application/problem+json")
    assert "nodes[0].type" in refused.text and "FOLDFLOW_CODE_NODES=sandbox" in refused.text
