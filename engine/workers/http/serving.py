"""What an activity worker started with ``--http`` serves, kept current while it runs.

Every ``refresh_ms`` it re-reads the registry (one GET of its version counter when
nothing changed) and the instance checks; every few refreshes it looks again at
which queues exist to serve: the services named by registered definitions and the
registered services. A queue is served over HTTP when its service resolves (the
registry, ``<SERVICE>_URL``, or steps that give an absolute ``url``) and no live
activity worker has a Python handler for it: a handler comes first, wherever it runs.

It also runs the registry's health checks: each service at its own interval, by
whichever executor claims the check first (one check per service per interval
across all executors).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from engine.config import Settings
from engine.core.model import Task
from engine.errors import StoreUnavailable
from engine.outbound.health import check_service
from engine.outbound.settings import HttpSettings
from engine.runtime.heartbeat import read_heartbeats
from engine.store.connection import Redis
from engine.store.keys import ACTIVITY_GROUP, Keys
from engine.store.queues import used_queues
from engine.store.services import ServiceRegistry
from engine.workers.http.executor import HttpExecutor, Timing
from engine.workers.http.secrets import Secrets
from engine.workers.http.targets import ServiceDirectory

if TYPE_CHECKING:
    from engine.workers.activities import ActivityWorker

log = logging.getLogger("foldflow.http")
_QUEUES_EVERY = 5  # refreshes between looks at which queues exist
_SAMPLES = 100_000


class HttpServing:
    def __init__(self, redis: Redis, settings: Settings, http: HttpSettings,
                 env: Mapping[str, str] | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.http = http
        self.keys = Keys(settings.prefix, settings.partitions)
        self.registry = ServiceRegistry(redis, self.keys)
        env = os.environ if env is None else env
        self.directory = ServiceDirectory(self.registry, env)
        self.executor = HttpExecutor(settings, http, self.directory, Secrets(env, http.secrets_dir))
        self._timings: dict[str, Timing] = {}
        # The executor's own time per call, for bench/ and /metrics: before the request, after the answer.
        self.before_s: collections.deque[float] = collections.deque(maxlen=_SAMPLES)
        self.after_s: collections.deque[float] = collections.deque(maxlen=_SAMPLES)
        self.observe: Any = None  # (phase, seconds) -> None, set by the metrics when served
        self._loop: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._checked: dict[str, float] = {}  # service id -> monotonic time of its last check here
        self._refreshes = 0
        self.health_checks = 0

    # -- what the activity worker calls ----------------------------------------
    async def open(self, worker: ActivityWorker) -> None:
        await self.executor.open()
        await self.refresh(worker, queues=True)
        self._loop = asyncio.create_task(self._run(worker), name="http-serving")

    async def close(self) -> None:
        # The loop ends on the flag, not only on the cancel: a cancel that lands in a Redis or HTTP call
        # can come back as that call's error, which the loop logs and goes on after (as the engine
        # worker's side loops did: tests/unit/test_engine_side_loops.py).
        self._closing.set()
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
            self._loop = None
        await self.executor.close()

    def takes(self, task: Task) -> bool:
        return self.executor.serves(task.service) or bool((task.http or {}).get("url"))

    async def call(self, task: Task, base: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        command, data, timing = await self.executor.call(task, base)
        if timing is not None:
            self._timings[task.task_id] = timing
        return command, data

    def reported(self, task: Task, received: float) -> None:
        timing = self._timings.pop(task.task_id, None)
        if timing is None:
            return
        before, after = timing.sent_at - received, time.perf_counter() - timing.response_at
        self.before_s.append(before)
        self.after_s.append(after)
        if self.observe is not None:
            self.observe("before", before)
            self.observe("after", after)

    def counters(self) -> dict[str, int]:
        return {"http_calls": self.executor.calls, "http_refused": self.executor.refused,
                "http_health_checks": self.health_checks, "http_registry_refreshes": self.directory.refreshes}

    # -- keeping current --------------------------------------------------------
    async def _run(self, worker: ActivityWorker) -> None:
        backoff = self.http.refresh_ms / 1000
        while not self._closing.is_set():
            await asyncio.sleep(backoff)
            try:
                self._refreshes += 1
                await self.refresh(worker, queues=self._refreshes % _QUEUES_EVERY == 0)
                await self.check_health(worker.services)
                backoff = self.http.refresh_ms / 1000
            except StoreUnavailable as exc:
                log.warning("http: redis unavailable refreshing the registry: %s", exc)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                log.exception("http: refreshing what to serve failed; serving what it served before")
                backoff = min(backoff * 2, 5.0)

    async def refresh(self, worker: ActivityWorker, *, queues: bool) -> None:
        changed = await self.directory.refresh()
        if not (queues or changed):
            return
        candidates = await used_queues(self.redis, self.keys)  # queue -> "url" when a step gives its own url
        names = set(candidates) | set(self.directory.names())
        elsewhere = await self._handled_elsewhere(worker.consumer)
        serve = sorted(q for q in names if q not in elsewhere and q not in worker.handler_services
                       and (self.directory.source(q) is not None or candidates.get(q) == "url"))
        if set(serve) | set(worker.handler_services) != set(worker.services):
            added = worker.serve(serve)
            for stream in added:
                await worker.store.ensure_group(stream, ACTIVITY_GROUP)
            log.info("http: serving %s", ", ".join(serve) or "no service over HTTP")

    async def _handled_elsewhere(self, me: str) -> set[str]:
        """Services that another live activity worker runs Python handlers for."""
        out: set[str] = set()
        for hb in await read_heartbeats(self.redis, self.keys):
            if hb["role"] == "activities" and hb["consumer"] != me:
                out.update(set(hb["services"]) - set(hb.get("http", [])))
        return out

    async def check_health(self, served: list[str]) -> None:
        session = self.executor.session
        if session is None:
            return
        now = time.monotonic()
        due = []
        for name in served:
            record = self.directory.record(name)
            if record is None or now - self._checked.get(record.id, -1e9) < record.health.interval_ms / 1000:
                continue
            self._checked[record.id] = now
            if await self.registry.claim_check(record.id, record.health.interval_ms):
                due.append(record)
        if due:
            now_ms = time.time_ns() // 1_000_000
            results = await asyncio.gather(*(check_service(session, self.registry, r, now_ms,
                                                           policy=self.executor.policy) for r in due))
            for record, checks in zip(due, results):
                self.directory.checked(record.name, checks)
            self.health_checks += len(due)
