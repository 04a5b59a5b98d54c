"""Trivial handlers for the benchmark's linear workflow."""

from __future__ import annotations

from typing import Any

from engine import Task, activity


@activity("bench")
async def step(task: Task) -> dict[str, Any]:
    return {"step": task.step}
