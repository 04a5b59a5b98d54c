"""Counts, success rates and duration percentiles over read-model records, without I/O."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from engine.api.v1.job_views import job_status
from engine.api.v1.models.analytics import Durations, Stats

FINISHED = ("completed", "failed", "cancelled")


def percentile(ordered: list[int], q: float) -> float | None:
    """Nearest rank on sorted values (q in 0..100): always one of the values, never interpolated."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


@dataclass
class Tally:
    key: str
    by_status: dict[str, int] = field(default_factory=dict)
    durations: list[int] = field(default_factory=list)
    retries: int = 0

    def add(self, status: str, duration_ms: int | None, retries: int) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if duration_ms is not None and duration_ms >= 0:
            self.durations.append(duration_ms)
        self.retries += retries

    def stats(self) -> Stats:
        ordered = sorted(self.durations)
        finished = sum(self.by_status.get(s, 0) for s in FINISHED)
        rate = round(self.by_status.get("completed", 0) / finished, 4) if finished else None
        return Stats(key=self.key, total=sum(self.by_status.values()), by_status=dict(sorted(self.by_status.items())),
                     success_rate=rate, retries=self.retries,
                     duration_ms=Durations(p50=percentile(ordered, 50), p95=percentile(ordered, 95),
                                           p99=percentile(ordered, 99), count=len(ordered)))


def _duration(record: dict[str, Any]) -> int | None:
    end, begin = record.get("finished_ms"), record.get("started_ms") or record.get("created_ms")
    return int(end) - int(begin) if end is not None and begin is not None else None


def execution_retries(record: dict[str, Any]) -> int:
    attempts = record.get("attempts") or {}
    return sum(max(0, int(n) - 1) for n in attempts.values()) if isinstance(attempts, dict) else 0


def add_execution(tally: Tally, record: dict[str, Any]) -> None:
    tally.add(job_status(str(record.get("status"))), _duration(record), execution_retries(record))


def by_workflow(records: Iterable[dict[str, Any]]) -> list[Stats]:
    tallies: dict[str, Tally] = {}
    for record in records:
        name = str(record.get("workflow"))
        add_execution(tallies.setdefault(name, Tally(name)), record)
    return [t.stats() for _, t in sorted(tallies.items())]


def node_runs(attempts: list[dict[str, Any]]) -> dict[str, tuple[str, int | None, int]]:
    """Per step of one execution: its last attempt's status, the time from its first attempt's
    start to its last one's end, and its retries (attempts past the first)."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for record in attempts:
        if record.get("kind") not in ("notification", "skipped"):
            runs.setdefault(str(record["step"]), []).append(record)
    out = {}
    for step, tries in runs.items():
        first, last = tries[0], tries[-1]
        end = last.get("completed_ms")
        took = int(end) - int(first["started_ms"]) if end is not None and first.get("started_ms") is not None else None
        out[step] = (str(last.get("status")), took, max(0, len({int(t["attempt"]) for t in tries}) - 1))
    return out
