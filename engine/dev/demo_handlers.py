"""Simulated services for the agent-task-execution example (the demo's handlers).

Serve them from another process with `foldflow activities --module engine.dev.demo_handlers`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from engine.core.model import Task
from engine.workers.activities import activity


@activity("planning-system", step="task_preparation")
async def prepare_task(task: Task) -> dict[str, Any]:
    await asyncio.sleep(0.01)
    return {"prepared": True, "endpoint": task.endpoint, "plan": ["analyse", "implement", "verify"]}


@activity("agent-orchestrator")
async def assign_agent(task: Task) -> dict[str, Any]:
    if task.context.get("flaky") and task.attempt == 1:
        raise RuntimeError("agent pool busy (simulated failure on the first attempt)")
    return {"assigned": True, "agent_id": task.context.get("agent_id"), "endpoint": task.endpoint}


@activity("planning-system", step="result_processing")
def process_results(task: Task) -> dict[str, Any]:
    return {"recorded": True, "task_id": task.context.get("task_id"), "endpoint": task.endpoint}


@activity("project-coordinator")
def notify_coordinator(task: Task) -> dict[str, Any]:
    return {"notified": True, "endpoint": task.endpoint}
