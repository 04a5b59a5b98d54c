"""The projector: one consumer group per projection (``proj:<name>``) over
every partition feed, plus the correlation projection's group on the external
events stream. Several processes share the work through the groups.

Per batch and projection: decode the entries, group them by instance, load
each instance's view and projected version, fold the events above that
version (filling a gap from the instance stream when another projector holds
the events in between), and write every instance of a partition with one
``project.lua`` call that checks each version guard, writes the views and
indexes, acknowledges the entries and moves the checkpoint. A redelivered or
replayed event is at or below the stored version and changes nothing; a guard
that moved underneath (another projector, a rebuild) reloads and folds again.
A projector killed before its script call leaves its entries pending, and
XAUTOCLAIM hands them to another after ``claim_idle_ms``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from engine.config import Settings
from engine.errors import PoisonMessage, StoreUnavailable
from engine.runtime.consume import Entry, GroupReader
from engine.runtime.metrics import WorkflowMetrics
from engine.runtime.preflight import preflight
from engine.runtime.startup import prepare_when_reachable
from engine.store.connection import Redis
from engine.store.events import Store
from engine.store.keys import Keys

from .base import Applied, Call, Doc, Ops, Projection, dumps
from .catalog import PROJECTIONS, select
from .correlation import external_writes
from .keys import ViewKeys, group_name
from .store import ViewStore, decode_entry
from .trim import trim_feeds

log = logging.getLogger("foldflow.projector")
MAX_ROUNDS = 8
Key = tuple[int, str]  # (partition, instance id)


def clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Stats:
    def __init__(self) -> None:
        self.entries = 0  # feed entries handled
        self.applied = 0  # events folded into a view
        self.skipped = 0  # entries at or below the projected version: repeats
        self.filled = 0  # events read from instance streams to close a gap
        self.refused = 0  # blocks whose version guard moved: folded again
        self.reclaimed = 0
        self.dead_lettered = 0
        self.batches = 0
        self.lags_ms: collections.deque[int] = collections.deque(maxlen=200_000)  # append -> projected

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}


class Projector:
    """The projector role: folds the partition feeds into the read models."""

    role = "projector"

    def __init__(self, redis: Redis, settings: Settings, only: Sequence[str] | None = None, *,
                 trim_every_ms: int = 0, clock: Callable[[], int] = clock_ms) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.partitions)
        self.vk = ViewKeys(self.keys)
        self.store = ViewStore(redis, self.vk)
        self.engine_store = Store(redis, self.keys)
        self.projections = select(list(only or []))
        self.consumer = settings.consumer_name()
        self.readers = {p.name: GroupReader(redis, group_name(p.name), self.consumer, self.vk.feeds())
                        for p in self.projections}
        self.events_reader = (GroupReader(redis, group_name("correlation"), self.consumer, [self.keys.events])
                              if "correlation" in self.readers else None)
        self.trim_every_ms = trim_every_ms
        self.clock = clock
        self.stats = Stats()
        self._stopping = asyncio.Event()

    # -- the Role protocol (engine.runtime.role) ---------------------------------
    def groups(self) -> list[tuple[str, str]]:
        readers = [*self.readers.values(), *([self.events_reader] if self.events_reader else [])]
        return [(s, r.group) for r in readers for s in r.streams]

    def partitions(self) -> set[int]:
        return set()

    def served_services(self) -> list[str]:
        return []

    def scripts(self) -> dict[str, str]:
        return {}  # the view script is loaded by prepare() and re-sent on NOSCRIPT by its store

    def running(self) -> int | None:
        return None

    def counters(self) -> dict[str, int]:
        return self.stats.as_dict()

    def observed_by(self, metrics: WorkflowMetrics) -> None:
        return None  # the projector's counts are its stats; it has no transitions to report

    # -- lifecycle -------------------------------------------------------------
    async def prepare(self) -> None:
        await preflight(self.redis)  # refuses a Redis that may evict streams
        await self.engine_store.check_meta()
        await self.store.load_script()
        await self.engine_store.load_scripts()
        # Every projection's group exists from the first projector on, even under
        # --only, so trimming always waits for all of them.
        for name in PROJECTIONS:
            for feed in self.vk.feeds():
                await self.engine_store.ensure_group(feed, group_name(name))
        await self.engine_store.ensure_group(self.keys.events, group_name("correlation"))

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        if not await prepare_when_reachable(self.prepare, self._stopping, "projector"):
            return
        loops: list[Coroutine[Any, Any, None]] = [
            self._consume(reader, self._handler(PROJECTIONS[name])) for name, reader in self.readers.items()
        ]
        if self.events_reader is not None:
            loops.append(self._consume(self.events_reader, self.apply_events))
        if self.trim_every_ms > 0:
            loops.append(self._trim_loop())
        tasks: list[asyncio.Task[None]] = [asyncio.create_task(c) for c in loops]
        try:
            await asyncio.gather(*tasks)
        finally:
            self.stop()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _handler(self, projection: Projection) -> Callable[[list[Entry]], Awaitable[None]]:
        async def handle(entries: list[Entry]) -> None:
            await self.apply(projection, entries)

        return handle

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _consume(self, reader: GroupReader, handle: Callable[[list[Entry]], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        reclaim_every = max(0.2, min(self.settings.claim_idle_ms, 10_000) / 2000)
        next_reclaim = 0.0
        backoff = 0.05
        while not self._stopping.is_set():
            try:
                if loop.time() >= next_reclaim:
                    next_reclaim = loop.time() + reclaim_every
                    claimed = await reader.reclaim(self.settings.claim_idle_ms, count=self.settings.batch_size)
                    if claimed:
                        self.stats.reclaimed += len(claimed)
                        await handle([e for e, _ in claimed])
                entries = await reader.read(self.settings.batch_size, self.settings.block_ms)
                if entries:
                    await handle(entries)
                backoff = 0.05
            except StoreUnavailable as exc:
                log.warning("redis unavailable, retrying in %.2fs: %s", backoff, exc)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                log.exception("projection batch failed; its entries stay pending and will be redelivered")
                await self._sleep(1.0)

    async def _trim_loop(self) -> None:
        while not self._stopping.is_set():
            await self._sleep(self.trim_every_ms / 1000)
            try:
                await trim_feeds(self.redis, self.keys)
            except Exception:
                log.exception("feed trim failed")

    # -- the recipe --------------------------------------------------------------
    async def apply(self, projection: Projection, entries: list[Entry]) -> None:
        """Project a batch of feed entries (read or reclaimed) for one projection."""
        self.stats.batches += 1
        self.stats.entries += len(entries)
        work: dict[Key, list[tuple[Applied, str]]] = {}
        poison: list[tuple[Entry, str]] = []
        for entry in entries:
            stream, entry_id, fields = entry
            try:
                iid = fields[b"id"].decode()
                item = decode_entry(fields)
            except (KeyError, UnicodeDecodeError, PoisonMessage) as exc:
                poison.append((entry, f"projection {projection.name} cannot read this feed entry: {exc}"))
                continue
            work.setdefault((self.keys.stream_partition(stream), iid), []).append((item, entry_id))
        if poison:
            await self._dead_letter(projection.name, poison)
        for _ in range(MAX_ROUNDS):
            if not work:
                return
            work = await self._round(projection, work)
        log.warning("%s: gave up on %d instances after %d guard conflicts; redelivery retries",
                    projection.name, len(work), MAX_ROUNDS)

    async def _round(self, projection: Projection,
                     work: dict[Key, list[tuple[Applied, str]]]) -> dict[Key, list[tuple[Applied, str]]]:
        """One guarded write per partition for every instance in ``work``; returns what was refused."""
        name = projection.name
        wanted = list(work)
        views = dict(zip(wanted, await self.store.load_views(name, wanted)))
        gaps = [k for k in wanted if _has_gap(views[k][0], work[k])]
        fills = dict(zip(gaps, await self.store.read_instances(gaps)))
        calls: dict[int, Call] = {}
        pending_lags: dict[Key, list[int]] = {}
        now = self.clock()
        for key in wanted:
            call = calls.get(key[0]) or calls.setdefault(key[0], Call(self.vk.checkpoint(key[0]), self.keys.feed(key[0])))
            lags = self._fold_into(call, projection, key, views[key], work[key], fills.get(key, []), now)
            if lags is not None:
                pending_lags[key] = lags
        todo = [c for c in calls.values() if not c.empty]
        results = await self.store.project([(c, group_name(name), name) for c in todo])
        return self._tally(todo, results, work, pending_lags)

    def _fold_into(self, call: Call, projection: Projection, key: Key, view: tuple[int, Any],
                   items: list[tuple[Applied, str]], fill: list[Applied], now: int) -> list[int] | None:
        """Add one instance's view write to its partition's call; the lags it will apply, or None."""
        (p, iid), (version, doc) = key, view
        old = [eid for it, eid in items if it.version <= version]
        if old:
            call.ack(old)
            self.stats.skipped += len(old)
        applied = _contiguous(version, items, fill)
        if not applied:
            return None
        last = applied[-1].version
        self.stats.filled += sum(1 for a in applied if a.version not in {it.version for it, _ in items})
        new = projection.fold_all(doc, iid, applied)
        ops = Ops()
        ops.hset(self.vk.view(p, iid), projection.name, dumps(new))
        projection.writes(ops, self.vk, p, iid, doc, new, applied, False)
        ids = [eid for it, eid in items if version < it.version <= last]
        call.guarded(key, self.vk.view(p, iid), version, last, ops, ids)
        return [now - it.ts for it, _ in items if version < it.version <= last]

    def _tally(self, todo: list[Call], results: list[Any], work: dict[Key, list[tuple[Applied, str]]],
               pending_lags: dict[Key, list[int]]) -> dict[Key, list[tuple[Applied, str]]]:
        retry: dict[Key, list[tuple[Applied, str]]] = {}
        for call, result in zip(todo, results):
            refused = {call.blocks[i - 1] for i in result[1:]}
            for key in call.blocks:
                if key in refused:
                    retry[key] = work[key]
                    self.stats.refused += 1
                else:
                    lags = pending_lags.get(key, [])
                    self.stats.applied += len(lags)
                    self.stats.lags_ms.extend(lags)
        return retry

    async def apply_events(self, entries: list[Entry]) -> None:
        """Index external events that carry a correlation id (idempotent: keyed by entry id)."""
        ops = external_writes(self.vk, [(eid, fields) for _s, eid, fields in entries])
        call = Call(self.vk.events_checkpoint, self.keys.events)
        call.unguarded(ops, [eid for _s, eid, _f in entries])
        await self.store.project([(call, group_name("correlation"), "correlation")])

    async def _dead_letter(self, name: str, poison: list[tuple[Entry, str]]) -> None:
        items = []
        for (stream, entry_id, fields), reason in poison:
            p = self.keys.stream_partition(stream)
            items.append((stream, self.keys.dlq(p), group_name(name), entry_id, reason, fields, 1))
            log.warning("dead-lettered %s %s: %s", stream, entry_id, reason)
        await self.engine_store.dead_letter_many(items, self.consumer, self.clock())
        self.stats.dead_lettered += len(poison)


def _has_gap(version: int, items: list[tuple[Applied, str]]) -> bool:
    fresh = sorted({it.version for it, _ in items if it.version > version})
    return bool(fresh) and fresh != list(range(version + 1, fresh[-1] + 1))


def _contiguous(version: int, items: list[tuple[Applied, str]], fill: list[Applied]) -> list[Applied]:
    """The events right after the projected version, without holes, up to the
    newest one in the batch; events beyond a hole stay pending."""
    top = max((it.version for it, _ in items), default=0)
    by_version = {a.version: a for a in fill if version < a.version <= top}
    by_version.update({it.version: it for it, _ in items if it.version > version})
    out: list[Applied] = []
    n = version + 1
    while n in by_version:
        out.append(by_version[n])
        n += 1
    return out


__all__ = ["Doc", "Projector", "Stats"]
