"""The UI tests' activity handlers: the demo's services, and `ui-check`, whose
`charge` step refuses an amount over 100 for good (so an execution fails and a
retry from that step with an edited input can complete it)."""

from __future__ import annotations

from typing import Any

import engine.dev.demo_handlers  # noqa: F401  (registers the demo's services in this process too)
from engine.core.model import Task
from engine.workers.activities import activity
from engine.workers.handler_errors import StepError


@activity("ui-check", step="prepare")
def prepare(task: Task) -> dict[str, Any]:
    return {"prepared": True}


@activity("ui-check", step="charge")
def charge(task: Task) -> dict[str, Any]:
    amount = task.input.get("amount") if isinstance(task.input, dict) else None
    if not isinstance(amount, int) or amount > 100:
        raise StepError(f"amount {amount!r} is over the limit of 100", retryable=False)
    return {"charged": amount}
