"""Handlers for the admission tests: `foldflow activities --module tests.support.admission_handlers`.

``admission-sleep`` sleeps ``input.ms`` (20 by default) and answers when it started and ended;
with ``input.fail`` true it raises once it slept (the step fails: one attempt by default)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from engine.core.model import Task
from engine.workers.activities import activity


@activity("admission-sleep")
async def sleep_a_while(task: Task) -> dict[str, Any]:
    ms = task.input.get("ms", 20) if isinstance(task.input, dict) else 20
    began = time.time_ns() // 1_000_000
    await asyncio.sleep(ms / 1000)
    if isinstance(task.input, dict) and task.input.get("fail") is True:
        raise RuntimeError("asked to fail (input.fail)")
    return {"began_ms": began, "ended_ms": time.time_ns() // 1_000_000}
