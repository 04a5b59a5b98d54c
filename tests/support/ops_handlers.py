"""Handlers for the operations tests: a slow service, to have work in flight."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from engine.core.model import Task
from engine.workers.activities import activity


@activity("ops-slow")
async def slow(task: Task) -> dict[str, Any]:
    marker = task.context.get("marker")
    if marker:
        started = Path(f"{marker}.{task.attempt}.started")
        if started.exists():  # a redelivery of a task a stopped worker left: finish fast
            Path(f"{marker}.{task.attempt}.redelivered").write_text(task.task_id)
            return {"slept": 0, "redelivered": True}
        started.write_text(task.task_id)
    await asyncio.sleep(float(task.context.get("sleep", 0)))
    return {"slept": task.context.get("sleep", 0)}
