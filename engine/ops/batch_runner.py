"""`foldflow batches`: the role that carries out batch operations (streams.md,
"Batch operations"), run by engine.runtime.lifecycle.serve like every worker.

It is not part of the engine worker because matching reads the read models, which
the write side never does. Several runners can run: each batch is advanced by the
one holding its lease (``{<prefix>:batch:<id>}:lease``, a token with a TTL that
every progress step renews). Progress moves only through batch.lua, under the
lease and from the cursor it was read at, so a runner killed mid-batch leaves the
batch where its last step put it; another (or the restarted one) takes the lease
when it expires and goes on from the stored cursors. An item resent after such a
crash carries the same cmd_id, which the engine applies once.

Work is bounded per batch by its ``rate`` (items per second); a runner gives each
batch a slice of time and then moves to the next, so one large batch does not
hold back the others.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable

from engine.client import Client
from engine.config import Settings
from engine.errors import InvalidInput, StoreUnavailable
from engine.ops.batch_items import Applier, Matcher
from engine.runtime.metrics import WorkflowMetrics
from engine.runtime.preflight import preflight
from engine.runtime.startup import prepare_when_reachable
from engine.store.batches import Batch, BatchStore, Refused
from engine.store.connection import Redis
from engine.store.events import Store
from engine.store.keys import Keys
from projections.queries import Queries

log = logging.getLogger("foldflow.batches")
SLICE_S = 5.0  # how long a runner advances one batch before looking at the others
POLL_S = 0.5  # how often an idle runner looks for batches
MAX_CHUNK = 100  # items sent between two progress steps


class Pace:
    """At most ``rate`` items per second: after each chunk, wait until its share of time has passed."""

    def __init__(self, rate: int, clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]]) -> None:
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self.due = clock()

    async def spend(self, items: int) -> None:
        self.due = max(self.due, self.clock()) + items / self.rate
        wait = self.due - self.clock()
        if wait > 0:
            await self.sleep(wait)


class BatchRunner:
    role = "batches"

    def __init__(self, redis: Redis, settings: Settings, *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] | None = None, page: int | None = None) -> None:
        self.redis, self.settings, self.clock = redis, settings, clock
        self.keys = Keys(settings.prefix, settings.partitions)
        self.consumer = settings.consumer_name()
        self.token = f"{self.consumer}:{uuid.uuid4().hex[:8]}"
        self.ttl_ms = max(1000, settings.lease_ms)
        self.batches = BatchStore(redis, self.keys)
        queries = Queries(redis, settings)
        self.matcher = Matcher(queries) if page is None else Matcher(queries, page)
        self.applier = Applier(Client(redis, settings), queries)
        self._sleep_fn = sleep or self._sleep
        self.counts = {"batch_items_done": 0, "batch_items_failed": 0, "batch_items_matched": 0,
                       "batches_finished": 0, "batch_leases_lost": 0}
        self._stopping = asyncio.Event()

    # -- the Role protocol (engine.runtime.role) ---------------------------------
    def groups(self) -> list[tuple[str, str]]:
        return []

    def partitions(self) -> set[int]:
        return set()

    def served_services(self) -> list[str]:
        return []

    def scripts(self) -> dict[str, str]:
        return {"batch": self.batches.scripts["batch"].sha}

    def running(self) -> int | None:
        return None

    def counters(self) -> dict[str, int]:
        return dict(self.counts)

    def observed_by(self, metrics: WorkflowMetrics) -> None:
        return None  # its counts are its counters

    def stop(self) -> None:
        self._stopping.set()

    # -- lifecycle -------------------------------------------------------------
    async def prepare(self) -> None:
        await preflight(self.redis)
        await Store(self.redis, self.keys).check_meta()
        await self.batches.load_scripts()

    async def run(self) -> None:
        if not await prepare_when_reachable(self.prepare, self._stopping, "batches"):
            return
        backoff = 0.05
        while not self._stopping.is_set():
            try:
                worked = await self.tick()
                backoff = 0.05
            except StoreUnavailable as exc:
                log.warning("batches: redis unavailable, retrying in %.2fs: %s", backoff, exc)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except Exception:
                log.exception("batches: a step failed; the batch stays where its last step put it")
                worked = False
            if not worked:
                await self._sleep(POLL_S)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def tick(self) -> bool:
        """Advance one active batch whose lease is free for a slice; False when there was none."""
        active = await self.batches.active()
        random.shuffle(active)  # runners started together should not all queue on one batch
        for bid in active:
            if not await self.batches.acquire(bid, self.token, self.ttl_ms, self._now_ms()):
                continue
            try:
                await self.advance(bid, self.clock() + SLICE_S)
            finally:
                await self.batches.release(bid, self.token)
            return True
        return False

    async def advance(self, batch_id: str, until: float) -> None:
        """Match, then apply, until the slice ends, the batch is final or the lease is lost."""
        try:
            while not self._stopping.is_set() and self.clock() < until:
                batch = await self.batches.get(batch_id)
                if batch is None or not batch.active:
                    await self.batches.deactivate(batch_id)
                    return
                if batch.state == "matching":
                    await self._match(batch)
                else:
                    await self._apply(batch, until)
        except Refused as exc:
            if exc.why == "lease":
                self.counts["batch_leases_lost"] += 1
            log.info("batch %s: step refused (%s): another runner has it, or it ended", batch_id, exc)

    async def _match(self, batch: Batch) -> None:
        try:
            ids, cursor, last = await self.matcher.page(batch, batch.match_cursor)
        except InvalidInput as exc:  # e.g. a status the read models do not list
            await self.batches.fail(batch.id, f"the query cannot run: {exc}", self._now_ms())
            return
        matched = await self.batches.commit_match(batch.id, self.token, self.ttl_ms, self._now_ms(),
                                                  batch.match_cursor, cursor, last, ids)
        self.counts["batch_items_matched"] += len(ids)
        if last:
            log.info("batch %s: %d executions matched", batch.id, matched)

    def _chunk(self, rate: int) -> int:
        # Small enough that a chunk at this rate takes well under a lease TTL.
        return max(1, min(MAX_CHUNK, int(rate * self.ttl_ms / 3000)))

    async def _apply(self, batch: Batch, until: float) -> None:
        pace = Pace(batch.spec.rate, self.clock, self._sleep_fn)
        cursor = batch.cursor
        while not self._stopping.is_set() and self.clock() < until:
            ids = await self.batches.items(batch.id, cursor, self._chunk(batch.spec.rate))
            failures: list[tuple[str, str]] = []
            for iid in ids:
                reason = await self.applier.apply(batch, iid)
                if reason is not None:
                    failures.append((iid, reason))
            state = await self.batches.commit_apply(batch.id, self.token, self.ttl_ms, self._now_ms(), cursor,
                                                    cursor + len(ids), len(ids) - len(failures), failures)
            cursor += len(ids)
            if not ids and state == "running":  # nothing stored past the cursor: look again next slice
                return
            self.counts["batch_items_done"] += len(ids) - len(failures)
            self.counts["batch_items_failed"] += len(failures)
            if state != "running":
                await self.batches.deactivate(batch.id)
                self.counts["batches_finished"] += 1
                log.info("batch %s: %s", batch.id, state)
                return
            await pace.spend(len(ids))
