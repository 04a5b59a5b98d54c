"""`foldflow bridge`: seed 003's messages over Redis streams (streams.md,
"Execution plans"). Two loops in one role, run by engine.runtime.lifecycle.serve
like every worker (heartbeat, ops server, SIGTERM drain):

- intake, consumer group ``bridge`` on ``<prefix>:workflow.execution.requests`` and
  ``<prefix>:workflow.cancellation.requests``: each request is carried out
  (engine/bridge/intake.py) and then acknowledged; a malformed one, or one
  delivered more than FOLDFLOW_MAX_DELIVERIES times, is dead-lettered to
  ``<prefix>:bridge:dlq`` with its reason, and the loop goes on;
- monitor, consumer group ``bridge:monitor`` on every partition feed
  (engine/bridge/monitor.py): every status change of a bridge run, once, on
  ``<prefix>:workflow.monitoring.updates``.

Several bridges share the work through the groups; what a dead one left pending
is claimed (XAUTOCLAIM) after FOLDFLOW_CLAIM_IDLE_MS.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from engine.bridge.intake import Intake
from engine.bridge.messages import cancellation_request, execution_request
from engine.bridge.monitor import Monitor
from engine.client import Client
from engine.config import Settings
from engine.errors import PoisonMessage, StoreUnavailable
from engine.runtime.consume import Entry, GroupReader
from engine.runtime.metrics import WorkflowMetrics
from engine.runtime.preflight import preflight
from engine.runtime.startup import prepare_when_reachable
from engine.store.connection import Redis
from engine.store.events import Store
from engine.store.keys import Keys
from engine.store.runs import INTAKE_GROUP, MONITOR_GROUP, RunStore
from projections.keys import ViewKeys
from projections.store import ViewStore

log = logging.getLogger("foldflow.bridge")
Handler = Callable[[list[tuple[Entry, int]]], Awaitable[None]]


class Bridge:
    role = "bridge"

    def __init__(self, redis: Redis, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.redis, self.settings, self.clock = redis, settings, clock
        self.keys = Keys(settings.prefix, settings.partitions)
        self.consumer = settings.consumer_name()
        self.store = Store(redis, self.keys)
        self.runs = RunStore(redis, self.keys)
        self.client = Client(redis, settings)
        self.intake = Intake(self.client, self.runs, clock)
        self.monitor = Monitor(self.runs, self.store, ViewStore(redis, ViewKeys(self.keys)), self.consumer, clock)
        rk = self.runs.rk
        self.requests = GroupReader(redis, INTAKE_GROUP, self.consumer, [rk.requests, rk.cancellations])
        self.feeds = GroupReader(redis, MONITOR_GROUP, self.consumer,
                                 [self.keys.feed(p) for p in range(settings.partitions)])
        self.counts = {"requests": 0, "runs_started": 0, "cancellations": 0, "requests_dead_lettered": 0,
                       "bridge_reclaimed": 0}
        self._stopping = asyncio.Event()

    # -- the Role protocol (engine.runtime.role) ---------------------------------
    def groups(self) -> list[tuple[str, str]]:
        return [(s, r.group) for r in (self.requests, self.feeds) for s in r.streams]

    def partitions(self) -> set[int]:
        return set()

    def served_services(self) -> list[str]:
        return []

    def scripts(self) -> dict[str, str]:
        return {"dead_letter": self.store.scripts["dead_letter"].sha,
                "bridge_monitor": self.runs.scripts["bridge_monitor"].sha}

    def running(self) -> int | None:
        return None

    def counters(self) -> dict[str, int]:
        return {**self.counts, **vars(self.monitor.stats)}

    def observed_by(self, metrics: WorkflowMetrics) -> None:
        return None  # its counts are its counters; it appends no events of its own

    def stop(self) -> None:
        self._stopping.set()

    # -- lifecycle -------------------------------------------------------------
    async def prepare(self) -> None:
        await preflight(self.redis)
        await self.store.check_meta()
        await self.store.load_scripts()
        await self.runs.load_scripts()
        for stream in self.requests.streams:
            await self.store.ensure_group(stream, INTAKE_GROUP)
        # "$": a bridge run's events all follow its record, written only once this group
        # exists, so the feeds' history before it holds nothing the monitor must publish.
        for feed in self.feeds.streams:
            await self.store.ensure_group(feed, MONITOR_GROUP, start="$")

    async def run(self) -> None:
        if not await prepare_when_reachable(self.prepare, self._stopping, "bridge"):
            return
        tasks = [asyncio.create_task(self._consume(self.requests, self.handle_requests), name="bridge-intake"),
                 asyncio.create_task(self._consume(self.feeds, self._monitor), name="bridge-monitor")]
        try:
            await asyncio.gather(*tasks)
        finally:
            self.stop()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _monitor(self, entries: list[tuple[Entry, int]]) -> None:
        await self.monitor.handle([e for e, _ in entries])

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _consume(self, reader: GroupReader, handle: Handler) -> None:
        """Reclaim what dead consumers left (with delivery counts), read, handle; back off
        while Redis is away; never die on one bad batch."""
        loop = asyncio.get_running_loop()
        reclaim_every = max(0.2, min(self.settings.claim_idle_ms, 10_000) / 2000)
        next_reclaim, backoff = 0.0, 0.05
        while not self._stopping.is_set():
            try:
                if loop.time() >= next_reclaim:
                    next_reclaim = loop.time() + reclaim_every
                    claimed = await reader.reclaim(self.settings.claim_idle_ms, count=self.settings.batch_size)
                    if claimed:
                        self.counts["bridge_reclaimed"] += len(claimed)
                        await handle(claimed)
                entries = await reader.read(self.settings.batch_size, self.settings.block_ms)
                if entries:
                    await handle([(e, 1) for e in entries])
                backoff = 0.05
            except StoreUnavailable as exc:
                log.warning("%s: redis unavailable, retrying in %.2fs: %s", reader.group, backoff, exc)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                log.exception("%s: batch failed; its entries stay pending and will be redelivered", reader.group)
                await self._sleep(1.0)

    # -- intake ----------------------------------------------------------------
    async def handle_requests(self, entries: list[tuple[Entry, int]]) -> None:
        """Each request in turn (a cancellation after the request it follows in its stream)."""
        done: dict[str, list[str]] = {}
        poison: list[tuple[Entry, str, int]] = []
        for entry, deliveries in entries:
            stream, entry_id, _fields = entry
            self.counts["requests"] += 1
            if deliveries > self.settings.max_deliveries:
                poison.append((entry, f"delivered {deliveries} times (FOLDFLOW_MAX_DELIVERIES "
                                      f"{self.settings.max_deliveries}): the bridge failed on it every time",
                               deliveries))
                continue
            try:
                await self._carry_out(entry)
            except PoisonMessage as exc:
                poison.append((entry, str(exc), deliveries))
                continue
            done.setdefault(stream, []).append(entry_id)
        for stream, ids in done.items():
            await self.runs.ack(stream, INTAKE_GROUP, ids)
        if poison:
            await self._dead_letter(poison)

    async def _carry_out(self, entry: Entry) -> None:
        stream, entry_id, fields = entry
        if stream == self.runs.rk.requests:
            request = execution_request(fields)
            await self.intake.execute(request, entry_id)
            self.counts["runs_started"] += 1
            log.info("run %s started from request %s", request.run_id, entry_id, extra={"instance_id": request.run_id})
        else:
            cancel = cancellation_request(fields)
            if await self.intake.cancel(cancel, entry_id):
                self.counts["cancellations"] += 1
            else:
                log.info("run %s is already final: cancellation %s changes nothing", cancel.run_id, entry_id)

    async def _dead_letter(self, poison: list[tuple[Entry, str, int]]) -> None:
        items: list[Any] = []
        for (stream, entry_id, fields), reason, deliveries in poison:
            log.warning("dead-lettered %s %s: %s", stream, entry_id, reason)
            items.append((stream, self.runs.rk.dlq, INTAKE_GROUP, entry_id, reason, fields, deliveries))
        await self.store.dead_letter_many(items, self.consumer, int(self.clock() * 1000))
        self.counts["requests_dead_lettered"] += len(poison)
