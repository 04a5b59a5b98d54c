"""Shared plumbing of the admission tests (tests/e2e/test_admission.py,
tests/faults/test_faults_admission.py): a definition with concurrency, bulk starts
carrying tenant and priority, and what the histories say about slots."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from engine.core.codec import command_fields
from engine.store.admission import Slots
from engine.store.keys import Keys

from .fault_support import histories
from .limit_handlers import most_at_once

HANDLERS = "tests.support.admission_handlers"
FINAL = ("workflow.completed", "workflow.cancelled", "workflow.failed", "workflow.compensated")


def definition(name: str, key: str, limit: int, on_limit: str = "queue") -> dict[str, Any]:
    return {"name": name, "version": "1", "definition": {
        "concurrency": {"key": key, "limit": limit, "on_limit": on_limit},
        "steps": [{"name": "work", "type": "service_call", "service": "admission-sleep",
                   "input": {"ms": "{{ input.ms }}"}}]}}


async def start_many(redis: aioredis.Redis, keys: Keys, workflow: str, starts: list[tuple[str, dict[str, Any]]],
                     batch: int = 500) -> None:
    """XADD one start per (id, extra start fields: context, tenant, priority), pipelined."""
    for lo in range(0, len(starts), batch):
        pipe = redis.pipeline(transaction=False)
        for iid, extra in starts[lo: lo + batch]:
            data = {"workflow": workflow, "context": {"ms": 20}, **extra}
            pipe.xadd(keys.inbox(keys.partition(iid)), command_fields("start", iid, data, f"start:{iid}"))
        await pipe.execute()


def final_of(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((e for e in history if e["type"] in FINAL), None)


def started_ms(history: list[dict[str, Any]]) -> int | None:
    return next((e["ts"] for e in history if e["type"] == "workflow.started"), None)


def admitted_intervals(hist: dict[str, list[dict[str, Any]]]) -> list[tuple[float, float]]:
    """Each instance's time holding a slot: from its workflow.started to its final event."""
    out = []
    for h in hist.values():
        begin, end = started_ms(h), final_of(h)
        if begin is not None:
            out.append((float(begin), float(end["ts"] if end else float("inf"))))
    return out


async def most_running_per_key(redis: aioredis.Redis, keys: Keys, groups: dict[str, list[str]]) -> dict[str, int]:
    return {k: most_at_once(admitted_intervals(await histories(redis, keys, ids))) for k, ids in groups.items()}


async def slots_left(redis: aioredis.Redis, keys: Keys) -> dict[str, tuple[list[str], list[str]]]:
    """Every (workflow, key) that still has holders or queued ids."""
    slots = Slots(redis, keys)
    left = {}
    for slot in (await slots.index()).values():
        holders = [i for i, _ in await slots.holders(slot.workflow, slot.key)]
        queued = await slots.queued(slot.workflow, slot.key)
        if holders or queued:
            left[f"{slot.workflow}/{slot.key}"] = (holders, queued)
    return left
