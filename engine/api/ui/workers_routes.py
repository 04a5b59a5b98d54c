"""GET /workers: the live worker processes (their heartbeats: role, partitions
held, services served, counters), the consumer groups' lag and pending counts
and the dead-letter counts: what `foldflow top` shows, for the UI's workers page."""

from __future__ import annotations

import time
from typing import Any

from litestar import get
from litestar.di import NamedDependency

from engine.api.problems import problems
from engine.api.services import Services
from engine.api.ui.models import Lag, Worker, WorkersView
from engine.runtime.heartbeat import read_heartbeats
from engine.store.errors import translated
from engine.store.inventory import dead_letters, partition_lag


def _ints(raw: Any) -> list[int]:
    return [int(x) for x in raw if isinstance(x, int)] if isinstance(raw, list) else []


def _texts(raw: Any) -> list[str]:
    return [str(x) for x in raw] if isinstance(raw, list) else []


def worker_view(beat: dict[str, Any], now_ms: int) -> Worker:
    counters = beat.get("counters")
    return Worker(consumer=str(beat["consumer"]), role=str(beat["role"]), host=str(beat["host"]), pid=int(beat["pid"]),
                  version=str(beat["version"]), started_ms=int(beat["started_ms"]), last_beat_ms=int(beat["ts"]),
                  age_ms=max(0, now_ms - int(beat["ts"])), partitions=_ints(beat.get("partitions")),
                  services=_texts(beat.get("services")), http=_texts(beat.get("http")),
                  counters=counters if isinstance(counters, dict) else {})


@translated
async def _read(services: Services) -> WorkersView:
    redis, keys = services.redis, services.client.keys
    beats = await read_heartbeats(redis, keys)
    queues = sorted({q for b in beats for q in _texts(b.get("services"))})
    lag = await partition_lag(redis, keys, queues=queues)
    counts = await dead_letters(redis, keys)
    now = time.time_ns() // 1_000_000
    return WorkersView(
        workers=[worker_view(b, now) for b in beats], partitions=keys.partitions,
        lag=[Lag(group=g, partition=p or None, queue=q or None, lag=n, pending=pending)
             for (g, p, q), (n, pending) in sorted(lag.items())],
        dead_letters=counts, now_ms=now)


@get("/workers", operation_id="listWorkers", tags=["operations"], responses=problems(),
     summary="Live workers (heartbeats, partitions, services), consumer-group lag and dead-letter counts")
async def list_workers(services: NamedDependency[Services]) -> WorkersView:
    return await _read(services)


ROUTES: list[Any] = [list_workers]
