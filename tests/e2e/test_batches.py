"""Batch operations end to end, on real processes (engine worker, projector, API, and
`foldflow batches`) and a real redis-server: 200 executions waiting on an event are
cancelled by one `POST /batches` on their workflow, with progress readable over HTTP;
a batch over a mix where some are already cancelled lists those as failures with
their reasons; the CLI starts, waits for, lists, shows and cancels batches; bad
input gets 4xx naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from engine.client import Client
from engine.config import Settings
from engine.store.connection import connect
from engine.store.keys import Keys
from projections.queries import Queries
from tests.support.api_stack import ApiStack
from tests.support.fault_support import start_many
from tests.support.poll import eventually, run, wait_for
from tests.support.tools import ROOT, spawn

pytestmark = pytest.mark.redis


def waiting(name: str) -> dict[str, Any]:
    """A workflow whose one step waits for an event that never comes."""
    return {"name": name, "version": "1",
            "steps": [{"name": "w", "type": "event_wait", "event_type": "never.sent", "filter": {"k": "v"}}]}


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    logs = tmp_path_factory.mktemp("batches-e2e")
    with ApiStack(redis_url, logs, activities=None) as s:
        s.procs["batches"] = spawn(["batches"], s.env(), logs / "batches.log")
        yield s


def settings_of(stack: ApiStack) -> Settings:
    return Settings(redis_url=stack.redis_url, prefix=stack.prefix, partitions=stack.partitions)


async def started(stack: ApiStack, workflow: str, n: int, cancel_first: int = 0) -> list[str]:
    """n executions of a fresh waiting workflow, all running in the read models; the first
    cancel_first of them cancelled (and projected so) beforehand."""
    settings = settings_of(stack)
    redis = connect(stack.redis_url)
    client, queries = Client(redis, settings), Queries(redis, settings)
    try:
        await client.register(waiting(workflow))
        ids = [f"{workflow}-{i}" for i in range(n)]
        await start_many(redis, Keys(settings.prefix, settings.partitions), ids, workflow)
        await eventually(lambda: queries.count(status="running", workflow=workflow), 60, "all running",
                         ok=lambda c: c == n)
        for iid in ids[:cancel_first]:
            await client.cancel(iid, "by hand")
        if cancel_first:
            await eventually(lambda: queries.count(status="cancelled", workflow=workflow), 30, "cancelled by hand",
                             ok=lambda c: c == cancel_first)
        return ids
    finally:
        await redis.aclose()


async def statuses(stack: ApiStack, ids: list[str]) -> dict[str, int]:
    client = Client(connect(stack.redis_url), settings_of(stack))
    try:
        counts: dict[str, int] = {}
        for iid in ids:
            status = (await client.state(iid)).status
            counts[status] = counts.get(status, 0) + 1
        return counts
    finally:
        await client.close()


def test_a_batch_cancels_every_execution_of_a_workflow_with_progress_over_http(stack: ApiStack) -> None:
    workflow = f"bw-{uuid.uuid4().hex[:6]}"
    ids = run(started(stack, workflow, 200))
    with httpx.Client(base_url=stack.url, timeout=10) as http:
        answer = http.post("/batches", json={"operation": "cancel", "query": {"workflow": workflow},
                                             "reason": "e2e cleanup", "rate": 1000})
        assert answer.status_code == 202, answer.text
        batch = answer.json()
        assert batch["state"] == "matching" and answer.headers["location"] == f"/batches/{batch['batch_id']}"
        seen: list[int] = []

        def finished() -> bool:
            view = http.get(f"/batches/{batch['batch_id']}").json()
            seen.append(view["done"])
            return bool(view["state"] == "completed")

        wait_for(finished, 60, "the batch completed", interval=0.05)
        view = http.get(f"/batches/{batch['batch_id']}").json()
        assert (view["matched"], view["done"], view["failed"], view["remaining"]) == (200, 200, 0, 0)
        assert view["finished_at"] is not None and seen == sorted(seen)  # progress only moves forward
        assert http.get(f"/batches/{batch['batch_id']}/failures").json()["items"] == []
        listed = http.get("/batches", params={"limit": 500}).json()["items"]
        assert batch["batch_id"] in [b["batch_id"] for b in listed]
        again = http.post(f"/batches/{batch['batch_id']}/cancel")
        assert again.status_code == 409 and "completed" in again.json()["detail"]
    wait_for(lambda: statuses(stack, ids), 30, "every execution cancelled", ok=lambda c: c == {"cancelled": 200})


def cli(stack: ApiStack, *args: str) -> tuple[int, Any]:
    out = subprocess.run([sys.executable, "-m", "engine.ops.cli", *args], env=stack.env(), cwd=ROOT,
                         capture_output=True, text=True, timeout=90)
    try:
        return out.returncode, json.loads(out.stdout)
    except json.JSONDecodeError:
        return out.returncode, out.stdout + out.stderr


def test_a_batch_over_a_mix_lists_the_refused_items_with_reasons_through_the_cli(stack: ApiStack) -> None:
    workflow = f"bm-{uuid.uuid4().hex[:6]}"
    ids = run(started(stack, workflow, 20, cancel_first=5))
    code, view = cli(stack, "batch", "start", "pause", "--workflow", workflow, "--reason", "maintenance", "--follow")
    assert code == 1, view  # completed, with failed items
    assert (view["state"], view["matched"], view["done"], view["failed"]) == ("completed", 20, 15, 5)
    code, failures = cli(stack, "batch", "failures", view["batch_id"])
    assert code == 0
    assert sorted(f["execution_id"] for f in failures["items"]) == sorted(ids[:5])
    assert {f["reason"] for f in failures["items"]} == {"cancelled: cannot pause (accepted when running)"}
    wait_for(lambda: statuses(stack, ids), 30, "the rest paused", ok=lambda c: c == {"cancelled": 5, "paused": 15})
    code, shown = cli(stack, "batch", "show", view["batch_id"])
    assert code == 0 and shown["done"] == 15 and shown["operation"] == "pause" and shown["reason"] == "maintenance"
    code, listed = cli(stack, "batch", "list", "--limit", "1000")
    assert code == 0 and view["batch_id"] in [b["batch_id"] for b in listed["items"]]
    code, refused = cli(stack, "batch", "cancel", view["batch_id"])
    assert code == 1 and refused == {"batch_id": view["batch_id"], "cancelled": False, "state": "completed"}
    code, resumed = cli(stack, "batch", "start", "resume", "--workflow", workflow, "--status", "paused", "--follow")
    assert code == 0 and (resumed["matched"], resumed["done"]) == (15, 15)


def test_a_slow_batch_cancelled_midway_keeps_what_it_did(stack: ApiStack) -> None:
    workflow = f"bc-{uuid.uuid4().hex[:6]}"
    ids = run(started(stack, workflow, 30))
    with httpx.Client(base_url=stack.url, timeout=10) as http:
        bid = http.post("/batches", json={"operation": "cancel", "query": {"workflow": workflow},
                                          "rate": 5}).json()["batch_id"]
        wait_for(lambda: http.get(f"/batches/{bid}").json()["done"] >= 3, 30, "a few items done")
        stopped = http.post(f"/batches/{bid}/cancel")
        assert stopped.status_code == 200 and stopped.json()["state"] == "cancelled"
        done = stopped.json()["done"]
        assert 3 <= done < 30
    # The chunk in flight when it was cancelled still goes out, and is counted; nothing after it.
    final = http_view(stack, bid)
    assert done <= final["done"] <= done + 1 and final["state"] == "cancelled"  # chunks of 1 at rate 5
    wait_for(lambda: statuses(stack, ids), 30, "the done ones cancelled",
             ok=lambda c: c.get("cancelled", 0) == final["done"])


def http_view(stack: ApiStack, bid: str) -> dict[str, Any]:
    view: dict[str, Any] = httpx.get(f"{stack.url}/batches/{bid}", timeout=10).json()
    return view


@pytest.mark.parametrize(("body", "field"), [
    ({"operation": "explode"}, "operation"),
    ({"operation": "cancel"}, "query"),
    ({"operation": "signal", "query": {"workflow": "w"}}, "signal"),
    ({"operation": "cancel", "query": {"workflow": "w"}, "rate": 0}, "rate"),
    ({"operation": "cancel", "query": {"started_after": "last tuesday"}}, "query.started_after"),
    ({"operation": "cancel", "query": {"status": ["sleeping"]}}, "status"),
    ({"operation": "cancel", "query": {"workflow": "w"}, "from_step": "a"}, "from_step"),
])
def test_bad_batches_are_refused_naming_the_field(stack: ApiStack, body: dict[str, Any], field: str) -> None:
    answer = httpx.post(f"{stack.url}/batches", json=body, timeout=10)
    assert answer.status_code in (400, 422), answer.text
    assert field in answer.text


def test_unknown_batches_and_workflows_are_404_and_bad_ids_400(stack: ApiStack) -> None:
    with httpx.Client(base_url=stack.url, timeout=10) as http:
        assert http.get(f"/batches/{'0' * 32}").status_code == 404
        assert http.get("/batches/not-an-id").status_code == 400
        assert http.post(f"/batches/{'0' * 32}/cancel").status_code == 404
        assert http.get(f"/batches/{'0' * 32}/failures").status_code == 404
        assert http.post("/batches", json={"operation": "cancel", "query": {"workflow": "no-such-wf"}}).status_code == 404
    code, out = cli(stack, "batch", "start", "signal", "--status", "running")
    assert code == 2 and "signal" in str(out)
