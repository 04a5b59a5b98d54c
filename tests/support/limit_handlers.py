"""Handlers for the per-service limit tests: each run appends `start`/`end` lines
(task id, unix time, pid) to the file its context names, so a test counts from the
handlers' own records how many ran at once and how fast they started."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from engine.core.model import Task
from engine.workers.activities import activity

IN_FLIGHT_SERVICE = "limited-svc"
RATE_SERVICE = "rated-svc"


def _record(path: str, what: str, task: Task) -> None:
    with open(path, "a") as out:  # one short O_APPEND write: lines of several processes do not mix
        out.write(f"{what} {task.task_id} {time.time():.6f} {os.getpid()}\n")


@activity(IN_FLIGHT_SERVICE)
@activity(RATE_SERVICE)
async def recorded(task: Task) -> dict[str, Any]:
    log = str(task.context["log"])
    _record(log, "start", task)
    await asyncio.sleep(float(task.context.get("sleep", 0.1)))
    _record(log, "end", task)
    return {"ran": True}


def definition(name: str, service: str) -> dict[str, Any]:
    return {"name": name, "version": "1", "definition": {"steps": [
        {"name": "call", "step_type": "service_call", "service": service, "endpoint": "/run", "sequence": 1}]}}


def runs(log: Path) -> dict[str, list[tuple[float, float | None, int]]]:
    """task id -> each run's (start, end or None, pid), from the handlers' records."""
    out: dict[str, list[tuple[float, float | None, int]]] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        what, task_id, at, pid = line.split()
        if what == "start":
            out.setdefault(task_id, []).append((float(at), None, int(pid)))
        else:
            for i, (start, end, p) in enumerate(out[task_id]):
                if end is None and p == int(pid):
                    out[task_id][i] = (start, float(at), p)
                    break
    return out


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals overlapping at any moment (an end before a start at the same instant)."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    best = now = 0
    for _, step in points:
        now += step
        best = max(best, now)
    return best
