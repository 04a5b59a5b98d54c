"""Admission control through a running `foldflow api`: a start's priority and tenant,
a queued start (202, then `queued` in GET and in listings), bad priorities refused with
400, and a retry that finds no free slot refused with 409 naming the limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.client import Client
from engine.config import Settings
from engine.store.connection import connect
from tests.support.admission_support import HANDLERS
from tests.support.api_stack import ApiStack

pytestmark = pytest.mark.redis
DEFINITION = {"name": "api-conc", "version": "1", "definition": {
    "concurrency": {"key": "{{ input.user }}", "limit": 1, "on_limit": "queue"},
    "steps": [{"name": "work", "type": "service_call", "service": "admission-sleep",
               "input": {"ms": "{{ input.ms }}", "fail": "{{ input.fail }}"}}]}}


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    logs: Path = tmp_path_factory.mktemp("admission-api")
    with ApiStack(redis_url, logs, activities=HANDLERS) as running:
        settings = Settings(redis_url=redis_url, prefix=running.prefix, partitions=running.partitions)

        async def register() -> None:
            client = Client(connect(redis_url), settings)
            await client.register(DEFINITION)
            await client.close()
        asyncio.run(register())
        yield running


def _start(api: str, iid: str, **body: Any) -> httpx.Response:
    return httpx.post(api + "/executions?wait_ms=3000", json={"workflow_id": "api-conc", "execution_id": iid, **body},
                      timeout=10)


def _status_becomes(api: str, iid: str, want: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        got = httpx.get(f"{api}/executions/{iid}", timeout=5)
        if got.status_code == 200:
            last = got.json()
            if last["status"] == want:
                return dict(last)
        time.sleep(0.1)
    raise AssertionError(f"{iid} never became {want}: {last}")


def test_priority_and_tenant_bad_priorities_and_a_queued_start(stack: ApiStack) -> None:
    api = stack.url
    for bad in (10, -1, "high", True):
        answer = _start(api, "bad", context={"user": "u1", "ms": 1, "fail": False}, priority=bad)
        assert answer.status_code == 400 and "priority" in answer.text, (bad, answer.text)
    first = _start(api, "h-1", context={"user": "u1", "ms": 1500, "fail": False}, priority=3, tenant="acme")
    assert first.status_code == 200 and first.json()["status"] == "started", first.text
    second = httpx.post(api + "/executions?wait_ms=300", json={
        "workflow_id": "api-conc", "execution_id": "q-1", "context": {"user": "u1", "ms": 1, "fail": False}})
    assert second.status_code == 202, second.text  # created but not started: it waits for the slot
    _status_becomes(api, "q-1", "queued")
    listed = httpx.get(api + "/executions", params={"status": "queued"}, timeout=5).json()
    assert "q-1" in str(listed), listed
    _status_becomes(api, "q-1", "completed")


def test_a_retry_without_a_free_slot_is_refused_with_409(stack: ApiStack) -> None:
    api = stack.url
    assert _start(api, "f-1", context={"user": "u9", "ms": 1, "fail": True}).status_code in (200, 202)
    _status_becomes(api, "f-1", "failed")  # a failed instance frees its slot
    assert _start(api, "g-1", context={"user": "u9", "ms": 3000, "fail": False}).status_code == 200
    refused = httpx.post(f"{api}/executions/f-1/steps/work/retry", timeout=10)
    assert refused.status_code == 409, refused.text
    assert "concurrency limit" in refused.json()["detail"] and "'u9'" in refused.json()["detail"]
    _status_becomes(api, "g-1", "completed")
    again = httpx.post(f"{api}/executions/f-1/steps/work/retry", timeout=10)
    assert again.status_code == 200, again.text  # a slot is free now: it runs (and fails) again
