"""Handlers for the operations tests: a slow service, to have work in flight."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from engine.activities import activity
from engine.model import Task


@activity("ops-slow")
async def slow(task: Task) -> dict[str, Any]:
    marker = task.context.get("marker")
    if marker:
        Path(marker).with_suffix(f".{task.attempt}.started").write_text(task.task_id)
    await asyncio.sleep(float(task.context.get("sleep", 0)))
    return {"slept": task.context.get("sleep", 0)}
