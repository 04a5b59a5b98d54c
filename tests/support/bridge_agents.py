"""Agents of seed 003's data pipeline, for the bridge tests:
`foldflow activities --module tests.support.bridge_agents`.

``extractor``, ``transformer`` and ``loader`` run the extract -> transform -> load plan;
``holder`` keeps its step running (until the run is cancelled, or ``hold_s`` passes)
so a cancellation finds the run RUNNING; ``breaker`` fails for good.
"""

from __future__ import annotations

import asyncio
from typing import Any

from engine.core.model import Task
from engine.workers.activities import activity
from engine.workers.handler_errors import StepError


def _input(task: Task) -> dict[str, Any]:
    return task.input if isinstance(task.input, dict) else {}


@activity("extractor")
def extract(task: Task) -> dict[str, Any]:
    url = _input(task).get("source_url")
    return {"source_url": url, "records": [{"id": 1, "name": "a"}, {"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


@activity("transformer")
def transform(task: Task) -> dict[str, Any]:
    records = _input(task).get("records", {}).get("records", [])
    unique = list({r["id"]: r for r in records}.values())
    return {"records": unique, "rules": _input(task).get("rules")}


@activity("loader")
def load(task: Task) -> dict[str, Any]:
    rows = _input(task).get("rows", [])
    return {"loaded": len(rows), "table": _input(task).get("table")}


@activity("holder")
async def hold(task: Task) -> dict[str, Any]:
    await asyncio.sleep(float(_input(task).get("hold_s", 20)))
    return {"held": True}


@activity("breaker")
def fail(task: Task) -> dict[str, Any]:
    raise StepError("the source is gone", retryable=False)
