"""Seed 003 end to end: execution and cancellation requests on their streams, a real
`foldflow bridge` with an engine worker, projector, activity worker
(tests/support/bridge_agents.py) and `foldflow api`, watched through
/api/v1/runs/... and workflow.monitoring.updates. One stack for the module."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from engine.ops.cli import main
from tests.support.api_stack import ApiStack
from tests.support.poll import eventually, run
from tests.support.tools import spawn

PLAN = {
    "workflow_id": "data-pipeline", "start_step": "extract",
    "steps": {
        "extract": {"id": "extract", "name": "Extract the source", "agent_name": "extractor", "next_step": "transform",
                    "input_mapping": {"source_url": "$.workflow_input.source_url"}},
        "transform": {"id": "transform", "agent_name": "transformer", "next_step": "load",
                      "input_mapping": {"records": "$.extract.output_data", "rules": "$.workflow_input.rules"}},
        "load": {"id": "load", "agent_name": "loader", "next_step": None,
                 "input_mapping": {"rows": "$.transform.output_data.records", "table": "$.workflow_input.table"}},
    },
}
HOLD_PLAN = {"workflow_id": "held", "start_step": "wait",
             "steps": {"wait": {"id": "wait", "agent_name": "holder", "input_mapping": {"hold_s": 20}}}}
INPUT = {"source_url": "s3://bucket/orders.csv", "rules": ["dedupe"], "table": "orders"}
PIPELINE_UPDATES = 9  # created, started, 3 x (step running, step completed), completed


class Bridge:
    def __init__(self, stack: ApiStack, logs: Path) -> None:
        self.stack, self.logs = stack, logs
        self.redis = redis.Redis.from_url(stack.redis_url)
        self.prefix = stack.prefix
        self.restarts = 0

    def start(self) -> None:
        self.stack.procs[f"bridge{self.restarts}"] = spawn(["bridge"], self.stack.env(),
                                                          self.logs / f"bridge{self.restarts}.log")

    def kill(self) -> None:
        proc = self.stack.procs[f"bridge{self.restarts}"]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.restarts += 1

    def send(self, stream: str, message: Any) -> str:
        data = message if isinstance(message, (bytes, str)) else orjson.dumps(message)
        return self.redis.xadd(f"{self.prefix}:{stream}", {"data": data}).decode()

    def execute(self, run_id: str, plan: dict[str, Any] = PLAN, **extra: Any) -> str:
        return self.send("workflow.execution.requests", {
            "run_id": run_id, "workflow_plan": plan, "input_data": INPUT, "timestamp": "2026-01-02T03:04:05Z",
            "message_type": "execution_request", **extra})

    def updates(self, run_id: str) -> list[dict[str, Any]]:
        out = []
        for _id, fields in self.redis.xrange(f"{self.prefix}:workflow.monitoring.updates"):
            message = orjson.loads(fields[b"data"])
            if message["run_id"] == run_id:
                out.append(message)
        return out

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.stack.url + path, timeout=5)

    def run_status(self, run_id: str) -> str | None:
        answer = self.get(f"/api/v1/runs/{run_id}")
        return answer.json()["status"] if answer.status_code == 200 else None

    def wait_status(self, run_id: str, status: str, timeout: float = 20) -> dict[str, Any]:
        run(eventually(lambda: self.run_status(run_id) == status, timeout, f"run {run_id} {status}"))
        return dict(self.get(f"/api/v1/runs/{run_id}").json())

    def created_events(self, run_id: str) -> int:
        history = self.get(f"/executions/{run_id}/history?limit=1000").json()
        return sum(1 for e in history["events"] if e.get("type") == "workflow.created")


@pytest.fixture(scope="module")
def bridge(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    logs = tmp_path_factory.mktemp("bridge")
    stack = ApiStack(redis_url, logs, activities="tests.support.bridge_agents",
                     env={"FOLDFLOW_SHUTDOWN_TIMEOUT_MS": "500"})
    b = Bridge(stack, logs)
    b.start()  # before the stack: its start-up overlaps the others'
    stack.start()
    try:
        yield b
    finally:
        stack.stop()
        b.redis.close()


def _rid() -> str:
    return f"run-{uuid.uuid4().hex[:10]}"


def test_a_request_runs_the_data_pipeline_watched_through_the_runs_api(bridge: Bridge) -> None:
    run_id = _rid()
    bridge.execute(run_id, triggered_by="scheduler")
    row = bridge.wait_status(run_id, "COMPLETED")
    assert row["triggered_by"] == "scheduler" and row["workflow_id"] == "data-pipeline"
    assert row["completed_at"] and row["created_at"] and row["error_message"] is None
    assert row["output_data"] == {"load": {"loaded": 2, "table": "orders"}}
    steps = bridge.get(f"/api/v1/runs/{run_id}/steps").json()
    assert [(s["step_id"], s["agent_name"], s["status"]) for s in steps] == [
        ("extract", "extractor", "COMPLETED"), ("transform", "transformer", "COMPLETED"), ("load", "loader", "COMPLETED")]
    assert steps[0]["step_name"] == "Extract the source"
    assert steps[0]["input_data"] == {"source_url": INPUT["source_url"]}
    assert steps[2]["output_data"] == {"loaded": 2, "table": "orders"}
    assert steps[0]["step_execution_id"] == f"{run_id}:extract:1" and steps[0]["started_at"] <= steps[0]["completed_at"]


def test_monitoring_updates_arrive_once_each_in_order(bridge: Bridge) -> None:
    run_id = _rid()
    bridge.execute(run_id)
    bridge.wait_status(run_id, "COMPLETED")
    updates = run(eventually(lambda: bridge.updates(run_id), 10, "every update",
                             ok=lambda u: len(u) >= PIPELINE_UPDATES))
    assert [(u["step_id"], u["status"]) for u in updates] == [
        (None, "PENDING"), (None, "RUNNING"), ("extract", "RUNNING"), ("extract", "COMPLETED"),
        ("transform", "RUNNING"), ("transform", "COMPLETED"), ("load", "RUNNING"), ("load", "COMPLETED"),
        (None, "COMPLETED")]
    versions = [u["metadata"]["version"] for u in updates]
    assert versions == sorted(set(versions))
    assert all(u["message_type"] == "status_update" and u["timestamp"].endswith("Z") for u in updates)


def test_the_same_request_twice_starts_one_run(bridge: Bridge) -> None:
    run_id = _rid()
    bridge.execute(run_id, triggered_by="first")
    bridge.execute(run_id, triggered_by="second")
    row = bridge.wait_status(run_id, "COMPLETED")
    assert row["triggered_by"] == "first"
    assert bridge.created_events(run_id) == 1
    updates = run(eventually(lambda: bridge.updates(run_id), 10, "every update",
                             ok=lambda u: len(u) >= PIPELINE_UPDATES))
    assert len(updates) == PIPELINE_UPDATES


def test_a_cancellation_request_cancels_a_running_run(bridge: Bridge) -> None:
    run_id = _rid()
    bridge.execute(run_id, plan=HOLD_PLAN)
    run(eventually(lambda: bridge.get(f"/api/v1/runs/{run_id}/steps").json(), 20, "the held step running",
                   ok=lambda steps: isinstance(steps, list) and any(s["status"] == "RUNNING" for s in steps)))
    bridge.send("workflow.cancellation.requests", {"run_id": run_id, "cancelled_by": "ops@example.com",
                                                   "reason": "wrong input", "message_type": "cancellation_request",
                                                   "timestamp": "2026-01-02T03:04:06Z"})
    row = bridge.wait_status(run_id, "CANCELLED")
    assert row["cancelled_by"] == "ops@example.com" and row["cancelled_at"] and row["completed_at"]
    updates = run(eventually(lambda: bridge.updates(run_id), 10, "the cancellation update",
                             ok=lambda u: bool(u) and u[-1]["status"] == "CANCELLED"))
    assert updates[-1]["step_id"] is None


def test_the_cancel_route_cancels_and_then_refuses(bridge: Bridge) -> None:
    run_id = _rid()
    bridge.execute(run_id, plan=HOLD_PLAN)
    bridge.wait_status(run_id, "RUNNING")
    answer = httpx.post(f"{bridge.stack.url}/api/v1/runs/{run_id}/cancel", json={"cancelled_by": "alice"}, timeout=5)
    assert answer.status_code == 202, answer.text
    assert answer.json()["cancelled_by"] == "alice"
    assert bridge.wait_status(run_id, "CANCELLED")["cancelled_by"] == "alice"
    again = httpx.post(f"{bridge.stack.url}/api/v1/runs/{run_id}/cancel", timeout=5)
    assert again.status_code == 409 and again.headers["content-type"].startswith("application/problem+json")
    missing = httpx.post(f"{bridge.stack.url}/api/v1/runs/{_rid()}/cancel", timeout=5)
    assert missing.status_code == 404


def test_a_run_started_over_http_is_readable_as_a_run(bridge: Bridge) -> None:
    run_id = _rid()
    bridge.execute(run_id)
    bridge.wait_status(run_id, "COMPLETED")
    other = f"api-{uuid.uuid4().hex[:8]}"
    answer = httpx.post(f"{bridge.stack.url}/executions", timeout=10, json={
        "workflow_id": "data-pipeline", "execution_id": other, "context": INPUT})
    assert answer.status_code in (200, 201, 202), answer.text
    row = bridge.wait_status(other, "COMPLETED")
    assert row["triggered_by"] is None and row["workflow_id"] == "data-pipeline"
    assert bridge.updates(other) == []  # only the bridge's own runs are monitored


def test_malformed_messages_are_dead_lettered_and_the_next_one_runs(bridge: Bridge,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    bad_plan = {"start_step": "nowhere", "steps": {"a": {"agent_name": "extractor"}}}
    requests, cancellations = "workflow.execution.requests", "workflow.cancellation.requests"
    sent = [  # (stream, entry id): ids repeat across streams
        (requests, bridge.send(requests, b"{not json")),
        (requests, bridge.send(requests, {"run_id": _rid(), "message_type": "status_update"})),
        (requests, bridge.send(requests, {"workflow_plan": PLAN, "message_type": "execution_request"})),
        (requests, bridge.execute(_rid(), plan=bad_plan)),
        (cancellations, bridge.send(cancellations, {"run_id": _rid(), "message_type": "cancellation_request"})),
    ]
    good = _rid()
    bridge.execute(good)
    bridge.wait_status(good, "COMPLETED")
    dlq = f"{bridge.prefix}:bridge:dlq"

    def letters() -> dict[tuple[str, str], tuple[str, str]]:
        return {(f[b"source"].decode().removeprefix(f"{bridge.prefix}:"), f[b"entry_id"].decode()):
                (f[b"reason"].decode(), i.decode()) for i, f in bridge.redis.xrange(dlq)}

    found = run(eventually(letters, 10, "five dead letters", ok=lambda d: all(s in d for s in sent)))
    reasons = [found[s][0] for s in sent]
    assert "not JSON" in reasons[0]
    assert "message_type 'status_update'" in reasons[1]
    assert "missing run_id" in reasons[2]
    assert "invalid workflow_plan" in reasons[3] and "start_step" in reasons[3]
    assert "no run" in reasons[4]
    flags = ["--redis-url", bridge.stack.redis_url, "--prefix", bridge.prefix, "--partitions", "4"]
    assert main([*flags, "dlq", "list", "--partition", "bridge", "--reason-contains", "workflow_plan"]) == 0
    listed = orjson.loads(capsys.readouterr().out)
    assert [(d["ref"], d["source"]) for d in listed] == [
        (f"bridge/{found[sent[3]][1]}", f"{bridge.prefix}:workflow.execution.requests")]


def test_a_killed_bridge_restarts_losing_nothing_and_starting_nothing_twice(bridge: Bridge) -> None:
    runs = [_rid() for _ in range(6)]
    for run_id in runs[:4]:
        bridge.execute(run_id)
    run(eventually(lambda: bridge.updates(runs[0]), 20, "the first update"))
    bridge.kill()  # mid-stream: runs started, their updates half published
    stream = f"{bridge.prefix}:workflow.execution.requests"
    for run_id in runs[4:]:
        bridge.execute(run_id)
    # A bridge that read these two and died before carrying them out: its pending entries.
    held = bridge.redis.xreadgroup("bridge", "dead-bridge", {stream: ">"})
    assert len(held[0][1]) == 2
    bridge.start()
    run(eventually(lambda: all(bridge.run_status(r) == "COMPLETED" for r in runs), 30, "every run COMPLETED"))
    for run_id in runs:
        updates = run(eventually(lambda r=run_id: bridge.updates(r), 10, f"every update of {run_id}",
                                 ok=lambda u: len(u) >= PIPELINE_UPDATES))
        assert len({u["update_id"] for u in updates}) == len(updates) == PIPELINE_UPDATES, updates
        assert bridge.created_events(run_id) == 1
    assert bridge.redis.xpending(stream, "bridge")["pending"] == 0  # claimed from the dead consumer, acked
