"""The engine worker: a consumer of every partition inbox that folds, decides
and appends. Several processes share the load through the consumer group.

This module is its lifecycle and schedule: one loop that renews the partition
leases, reclaims what dead consumers left pending, sweeps unconfirmed catch-ups,
does the periodic clean-up, and hands each batch it reads to the Decider shell.
The pieces: batch.py (decide and append), cache.py (instance states),
catchup.py (event-wait catch-ups), housekeeping.py (retirement and trimming).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from engine.config import Settings
from engine.errors import StoreUnavailable
from engine.runtime.consume import Entry, GroupReader
from engine.runtime.metrics import WorkflowMetrics
from engine.runtime.observe import EngineObserver, catalog_step_types
from engine.runtime.preflight import preflight
from engine.runtime.startup import prepare_when_reachable
from engine.store.catalog import Catalog
from engine.store.connection import Redis
from engine.store.events import Store
from engine.store.keys import ENGINE_GROUP, ROUTER_GROUP, Keys
from engine.store.leases import PartitionLeases
from engine.workers.admission import Reconciler
from engine.workers.batch import DeciderShell, Stats
from engine.workers.cache import StateCache
from engine.workers.catchup import CATCHUP_GRACE_MS, Catchups
from engine.workers.housekeeping import Housekeeping
from engine.workers.relay import OutboxRelay
from engine.workers.router import EventRouter
from engine.workers.scheduler import Scheduler
from engine.workers.timers import TimerPoller

__all__ = ["CATCHUP_GRACE_MS", "EngineWorker", "StateCache", "Stats", "clock_ms"]

log = logging.getLogger("foldflow.worker")
RETIRE_EVERY_S = 10.0
FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.05, 5.0  # while Redis does not answer
CRASH_PAUSE_S = 1.0  # after a batch failed for any other reason


def clock_ms() -> int:
    return time.time_ns() // 1_000_000


class _Every:
    """A period on the event loop's clock: due at once, then once per period."""

    __slots__ = ("next", "period")

    def __init__(self, period: float) -> None:
        self.period = period
        self.next = 0.0

    def due(self, now: float) -> bool:
        if now < self.next:
            return False
        self.next = now + self.period
        return True


class EngineWorker:
    """The engine role: decides the commands of the partitions it holds the lease of."""

    role = "engine"

    def __init__(self, redis: Redis, settings: Settings, *, clock: Callable[[], int] = clock_ms,
                 observer: Any = None) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.partitions)
        self.store = Store(redis, self.keys, wait_replicas=settings.wait_replicas,
                           wait_timeout_ms=settings.wait_timeout_ms)
        self.catalog = Catalog(self.store)
        self.consumer = settings.consumer_name()
        self.reader = GroupReader(redis, ENGINE_GROUP, self.consumer, self.keys.all_inboxes())
        self.cache = StateCache(settings.cache_size)
        self.stats = Stats()
        self.router = EventRouter(redis, self.keys, self.store, self.consumer, settings)
        self.relay = OutboxRelay(redis, self.keys, self.store, self.consumer, settings)
        self.timers = TimerPoller(self.store, settings)
        self.leases = PartitionLeases(redis, self.keys, self.store, self.consumer, settings.lease_ms)
        self.catchups = Catchups(redis, self.keys, settings.max_payload_bytes)
        self.housekeeping = Housekeeping(redis, self.keys, settings, self.cache)
        self.batch = DeciderShell(self.store, self.keys, self.catalog, self.cache, self.catchups, self.stats,
                                  settings, self.consumer, clock, self._lose)
        self.batch.observer = observer
        self.scheduler = Scheduler.of(self)  # schedules (issue 16)
        self.reconciler = Reconciler.of(self)  # concurrency slots held by crashed starts (issue 16)
        self.reader.set_streams([])
        self._stopping = asyncio.Event()

    # The batch reads both on its hot path; the lifecycle attaches an observer after construction
    # and tests move the clock, so they live there and are reached through here.
    @property
    def clock(self) -> Callable[[], int]:
        return self.batch.clock

    @clock.setter
    def clock(self, clock: Callable[[], int]) -> None:
        self.batch.clock = clock

    @property
    def observer(self) -> Any:
        """ops: metrics and transition logs (engine.runtime.observe.EngineObserver)."""
        return self.batch.observer

    @observer.setter
    def observer(self, observer: Any) -> None:
        self.batch.observer = observer

    # -- the Role protocol (engine.runtime.role) ---------------------------------
    def groups(self) -> list[tuple[str, str]]:
        return [(s, ENGINE_GROUP) for s in self.keys.all_inboxes()] + [(self.keys.events, ROUTER_GROUP)]

    def partitions(self) -> set[int]:
        return set(self.leases.owned)

    def served_services(self) -> list[str]:
        return []

    def scripts(self) -> dict[str, str]:
        return {name: script.sha for name, script in self.store.scripts.items()}

    def running(self) -> int | None:
        return None

    def observed_by(self, metrics: WorkflowMetrics) -> None:
        if self.observer is None:
            self.observer = EngineObserver(metrics, catalog_step_types(self.catalog))

    def counters(self) -> dict[str, int]:
        return {
            **self.stats.as_dict(),
            "cache_hits": self.cache.hits, "cache_misses": self.cache.misses, "cache_instances": len(self.cache),
            "router_routed": self.router.routed, "router_dead_lettered": self.router.dead_lettered,
            "timers_fired": self.timers.fired, "relay_relayed": self.relay.relayed,
            "reader_nogroup_recoveries": self.reader.nogroup_recoveries,
            "store_under_replicated": self.store.under_replicated,
            "schedules_started": self.scheduler.started,
            "admission_admitted": self.batch.admission.admitted, "admission_evicted": self.batch.admission.evicted,
            "admission_released": self.reconciler.released, "admission_readmitted": self.reconciler.readmitted,
        }

    # -- lifecycle -----------------------------------------------------------
    async def prepare(self) -> None:
        await preflight(self.redis)  # refuses a Redis that may evict streams
        await self.store.check_durability(bool(self.settings.require_fsync_always))
        await self.store.check_meta()
        await self.store.load_scripts()
        for inbox in self.keys.all_inboxes():
            await self.store.ensure_group(inbox, ENGINE_GROUP)
        await self.router.prepare()
        await self.relay.prepare()
        await self.leases.heartbeat()  # so workers started together share partitions at once

    def stop(self) -> None:
        self._stopping.set()
        self.router.stop()
        self.relay.stop()
        self.timers.stop()
        self.scheduler.stop()
        self.reconciler.stop()

    async def run(self) -> None:
        if not await prepare_when_reachable(self.prepare, self._stopping, "engine worker"):
            return
        side = [
            asyncio.create_task(self.router.run(), name="router"),
            asyncio.create_task(self.relay.run(), name="relay"),
            asyncio.create_task(self.timers.run(), name="timers"),
            asyncio.create_task(self.scheduler.run(), name="scheduler"),
            asyncio.create_task(self.reconciler.run(), name="admission"),
        ]
        try:
            await self._consume()
        finally:
            self.stop()
            for task in side:
                task.cancel()
            await asyncio.gather(*side, return_exceptions=True)
            try:
                await self.leases.release_all()  # hand partitions over now, not after the TTL
            except Exception as exc:
                log.warning("could not release leases: %s", exc)

    async def _consume(self) -> None:
        """One loop, so each owned partition's commands are decided in inbox order."""
        loop = asyncio.get_running_loop()
        lease = _Every(self.settings.lease_ms / 3000)
        reclaim = _Every(max(0.2, min(self.settings.claim_idle_ms, 10_000) / 2000))
        retire = _Every(RETIRE_EVERY_S)
        block = max(1, min(self.settings.block_ms, self.settings.lease_ms // 4))
        backoff = FIRST_BACKOFF_S
        while not self._stopping.is_set():
            try:
                await self._periodic(loop, lease, reclaim, retire)
                if not self.leases.owned:
                    await self._sleep(block / 1000)
                    continue
                entries = await self.reader.read(self.settings.batch_size, block)
                if entries:
                    await self.process(entries)
                backoff = FIRST_BACKOFF_S
            except StoreUnavailable as exc:
                # The batch in hand is dropped: its entries stay pending for whoever holds
                # their partition when Redis answers again.
                self.stats.unavailable += 1
                log.warning("redis unavailable, retrying in %.2fs: %s", backoff, exc)
                await self._sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            except Exception:
                log.exception("engine batch failed; its entries stay pending and will be redelivered")
                await self._sleep(CRASH_PAUSE_S)

    async def _periodic(self, loop: asyncio.AbstractEventLoop, lease: _Every, reclaim: _Every,
                        retire: _Every) -> None:
        if lease.due(loop.time()):
            await self.rebalance()
        if reclaim.due(loop.time()):
            await self.reclaim()
            await self.sweep_catchups()
        if retire.due(loop.time()):
            await self.retire()
            await self.trim()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    # -- the schedule's steps --------------------------------------------------
    async def process(self, entries: list[Entry]) -> None:
        await self.batch.process(entries)

    async def rebalance(self) -> None:
        gained, lost = await self.leases.maintain()
        if gained or lost:
            log.info("partitions: gained %s, lost %s, now %s", gained, lost, sorted(self.leases.owned))
            self._read_owned()
        for p in gained:
            # What the previous owner left pending is older than anything unread.
            claimed = await self.reader.claim_all(self.keys.inbox(p))
            if claimed:
                await self.batch.process_claimed(claimed)

    async def reclaim(self) -> int:
        claimed = await self.reader.reclaim(self.settings.claim_idle_ms)
        if claimed:
            await self.batch.process_claimed(claimed)
        return len(claimed)

    async def sweep_catchups(self) -> int:
        """Catch up the event waits of this worker's partitions whose catch-up was not confirmed
        within CATCHUP_GRACE_MS (their worker died between its append and the catch-up)."""
        swept = await self.catchups.sweep(sorted(self.leases.owned), self.clock())
        self.stats.catchups_swept += swept
        return swept

    async def retire(self) -> int:
        """Delete the streams of this worker's partitions' instances that finished more than
        FOLDFLOW_RETENTION_MS ago."""
        retired = await self.housekeeping.retire(sorted(self.leases.owned), self.clock())
        self.stats.retired += retired
        return retired

    async def trim(self) -> int:
        """Trim this worker's partitions' inboxes (and, the holder of partition 0, the external events)."""
        trimmed = await self.housekeeping.trim(sorted(self.leases.owned), self.clock())
        self.stats.trimmed += trimmed
        return trimmed

    def _lose(self, p: int) -> None:
        if p in self.leases.owned:
            log.warning("lease on partition %d lost (held by another worker now)", p)
            self.leases.owned.discard(p)
            self._read_owned()

    def _read_owned(self) -> None:
        self.reader.set_streams([self.keys.inbox(q) for q in sorted(self.leases.owned)])
