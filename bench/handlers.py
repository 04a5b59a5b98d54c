"""Trivial handlers for the benchmark's workflows (queue `bench`).

Each returns the wall clock (ns) at which it ran, so the latency case can tell
when every task reached its worker.
"""

from __future__ import annotations

import time
from typing import Any

from engine import Task, activity


@activity("bench")
async def step(task: Task) -> dict[str, Any]:
    return {"t": time.time_ns()}

