"""The engine worker: a consumer of every partition inbox that folds, decides
and appends. Several processes share the load through the consumer group.

Per batch: read up to N commands, group them by instance, bring each instance's
state up to date (from the cache, catching up with the stream's tail), decide
every command, and write each instance's events, effects and acks with one
pipelined script call per instance. A version conflict (another worker wrote
first) catches up and decides again; an entry that is no longer ours (it was
reclaimed while we stalled) is left to its new owner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson

from engine.config import Settings
from engine.core.codec import command_fields, decode_command_entry
from engine.core.decide import decide_and_fold
from engine.core.definition import Definition
from engine.core.evolve import fold
from engine.core.language.schema import violations
from engine.core.model import (
    INITIAL,
    STATUS_NONE,
    Envelope,
    Event,
    HistoryLarge,
    StartWorkflow,
    State,
    StepWaiting,
    decode_event,
    encode,
)
from engine.errors import PoisonMessage, StoreUnavailable
from engine.runtime.consume import Entry, GroupReader
from engine.runtime.preflight import preflight
from engine.runtime.startup import prepare_when_reachable
from engine.store.catalog import Catalog
from engine.store.connection import Redis
from engine.store.events import CONFLICT, FENCED, OK, TRANSIENT, UNAVAILABLE, AppendRequest, Store
from engine.store.keys import ENGINE_GROUP, Keys, encode_shape, entry_key, filter_shape, wait_signature
from engine.store.leases import PartitionLeases
from engine.store.plan import plan
from engine.store.trimming import trim_acknowledged
from engine.workers.relay import OutboxRelay
from engine.workers.router import EventRouter, decode_event_fields, event_command
from engine.workers.timers import TimerPoller

log = logging.getLogger("foldflow.worker")
MAX_ROUNDS = 8  # conflict retries within one batch before leaving entries to redelivery
RETIRE_EVERY_S = 10.0




def clock_ms() -> int:
    return time.time_ns() // 1_000_000


class StateCache:
    """Bounded LRU of instance states, each with the id of the last event folded."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[State, str | None]] = OrderedDict()
        self.hits = self.misses = 0  # ops: lookups by the engine worker (cache hit ratio)

    def get(self, iid: str) -> tuple[State, str | None] | None:
        item = self._items.get(iid)
        if item is not None:
            self._items.move_to_end(iid)
        return item

    def put(self, iid: str, state: State, last_id: str | None) -> None:
        self._items[iid] = (state, last_id)
        self._items.move_to_end(iid)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def drop(self, iid: str) -> None:
        self._items.pop(iid, None)

    def __len__(self) -> int:
        return len(self._items)


class Stats:
    """What one engine worker did, for logs, tests and (later) metrics."""

    def __init__(self) -> None:
        self.commands = 0  # inbox entries read
        self.events = 0  # events appended
        self.ignored = 0  # commands that changed nothing (repeats, late results)
        self.conflicts = 0  # appends refused on version: caught up and decided again
        self.diverged = 0  # conflicts where the stream no longer holds what was decided on (lost writes)
        self.not_owner = 0  # entries reclaimed by another worker while we held them
        self.fenced = 0  # appends refused because the partition's lease moved on
        self.dead_lettered = 0
        self.reclaimed = 0
        self.batches = 0
        self.large_histories = 0  # instances whose history crossed FOLDFLOW_HISTORY_WARN_EVENTS
        self.retired = 0  # finished instances whose streams were retired
        self.trimmed = 0  # acknowledged inbox and old event entries trimmed
        self.unavailable = 0  # loop turns that met an unavailable Redis (their batch dropped, retried)
        self.catchups_swept = 0  # event-wait catch-ups a worker left unconfirmed, done by the sweep

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class EngineWorker:
    def __init__(self, redis: Redis, settings: Settings, *, clock: Callable[[], int] = clock_ms,
                 observer: Any = None) -> None:
        self.observer = observer  # ops: metrics and transition logs (engine.runtime.observe.EngineObserver)
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
        self.clock = clock
        self.router = EventRouter(redis, self.keys, self.store, self.consumer, settings)
        self.relay = OutboxRelay(redis, self.keys, self.store, self.consumer, settings)
        self.timers = TimerPoller(self.store, settings)
        self.leases = PartitionLeases(redis, self.keys, self.store, self.consumer, settings.lease_ms)
        self.reader.set_streams([])
        self._stopping = asyncio.Event()
        self._orphans: list[tuple[str, StartWorkflow, str]] = []

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

    async def run(self) -> None:
        if not await prepare_when_reachable(self.prepare, self._stopping, "engine worker"):
            return
        side = [
            asyncio.create_task(self.router.run(), name="router"),
            asyncio.create_task(self.relay.run(), name="relay"),
            asyncio.create_task(self.timers.run(), name="timers"),
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
        lease_every = self.settings.lease_ms / 3000
        reclaim_every = max(0.2, min(self.settings.claim_idle_ms, 10_000) / 2000)
        block = max(1, min(self.settings.block_ms, self.settings.lease_ms // 4))
        next_lease = next_reclaim = next_retire = 0.0
        backoff = 0.05
        while not self._stopping.is_set():
            try:
                if loop.time() >= next_lease:
                    next_lease = loop.time() + lease_every
                    await self.rebalance()
                if loop.time() >= next_reclaim:
                    next_reclaim = loop.time() + reclaim_every
                    await self.reclaim()
                    await self.sweep_catchups()
                if loop.time() >= next_retire:
                    next_retire = loop.time() + RETIRE_EVERY_S
                    await self.retire()
                    await self.trim()
                if not self.leases.owned:
                    await self._sleep(block / 1000)
                    continue
                entries = await self.reader.read(self.settings.batch_size, block)
                if entries:
                    await self.process(entries)
                backoff = 0.05
            except StoreUnavailable as exc:
                # The batch in hand is dropped: its entries stay pending for whoever holds
                # their partition when Redis answers again.
                self.stats.unavailable += 1
                log.warning("redis unavailable, retrying in %.2fs: %s", backoff, exc)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                log.exception("engine batch failed; its entries stay pending and will be redelivered")
                await self._sleep(1.0)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    # -- the recipe ------------------------------------------------------------
    async def rebalance(self) -> None:
        gained, lost = await self.leases.maintain()
        if gained or lost:
            log.info("partitions: gained %s, lost %s, now %s", gained, lost, sorted(self.leases.owned))
            self.reader.set_streams([self.keys.inbox(p) for p in sorted(self.leases.owned)])
        for p in gained:
            # What the previous owner left pending is older than anything unread.
            claimed = await self.reader.claim_all(self.keys.inbox(p))
            if claimed:
                await self._process_claimed(claimed)

    async def reclaim(self) -> int:
        claimed = await self.reader.reclaim(self.settings.claim_idle_ms)
        if claimed:
            await self._process_claimed(claimed)
        return len(claimed)

    async def _process_claimed(self, claimed: list[tuple[Entry, int]]) -> None:
        self.stats.reclaimed += len(claimed)
        limit = self.settings.max_deliveries
        poison = [
            (e, f"delivered {n} times (limit {limit}): it failed every time it was processed")
            for e, n in claimed
            if n > limit
        ]
        await self._dead_letter(poison, {e[1]: n for e, n in claimed})
        fresh = [e for e, n in claimed if n <= limit]
        if fresh:
            await self.process(fresh)

    async def process(self, entries: list[Entry]) -> None:
        self.stats.batches += 1
        self.stats.commands += len(entries)
        groups: dict[str, list[Envelope]] = {}
        poison: list[tuple[Entry, str]] = []
        for entry in entries:
            stream, entry_id, fields = entry
            p = self.keys.inbox_partition(stream)
            try:
                env = decode_command_entry(entry_id, fields, self.settings.max_payload_bytes)
                home = self.keys.partition(env.instance_id)
                if home != p:
                    raise PoisonMessage(f"instance {env.instance_id!r} belongs to partition {home}, not {p}")
            except PoisonMessage as exc:
                poison.append((entry, str(exc)))
                continue
            groups.setdefault(env.instance_id, []).append(env)
        by_id = {e[1]: e for e in entries}
        if poison:
            await self._dead_letter(poison)
        await self._apply(groups, by_id)

    async def _apply(self, groups: dict[str, list[Envelope]], by_id: dict[str, Entry]) -> None:
        stale: set[str] = set()
        todo = groups
        waits: list[Wait] = []
        unavailable = ""
        for _ in range(MAX_ROUNDS):
            if not todo:
                break
            states, lasts = await self._states(todo, stale)
            await self._prefetch_definitions(todo, states)
            reqs: list[AppendRequest] = []
            after: list[tuple[str, list[Envelope], State]] = []
            registered: list[list[Wait]] = []  # per request: the event waits its events register
            poison: list[tuple[Entry, str]] = []
            now = self.clock()
            for iid, envs in todo.items():
                state = states[iid]
                if isinstance(state, PoisonMessage):
                    poison += [(by_id[e.entry_id], str(state)) for e in envs]
                    continue
                events, new_state, kept = self._decide(iid, state, envs, now, poison, by_id)
                if not kept:
                    continue
                p = self.keys.partition(iid)
                events, new_state = self._warn_if_large(state, events, new_state, now)
                fx = plan(state, events, self.keys, p)
                new_waits = [_wait(iid, e, new_state) for e in events if isinstance(e, StepWaiting)]
                reqs.append(AppendRequest(iid, p, state.version, [e.entry_id for e in kept], events, fx, now,
                                          self._snapshot(state, new_state), lasts.get(iid),
                                          [w[4] for w in new_waits]))
                after.append((iid, kept, new_state))
                registered.append(new_waits)
            if poison:
                await self._dead_letter(poison)
            if self._orphans:
                await self._tell_parents()
            results = await self.store.append_many(reqs, ENGINE_GROUP, self.consumer, fenced=True)
            todo = {}
            stale = set()
            for req, (iid, envs, new_state), new_waits, res in zip(reqs, after, registered, results):
                if res.status == OK:
                    cached = self.cache.get(iid)
                    last = res.last_id or (cached[1] if cached else None)
                    self.cache.put(iid, new_state, last)
                    if self.observer is not None:  # ops: outcome metrics, one log line per transition
                        self.observer.appended(iid, req.events, new_state)
                    self.stats.events += len(req.events)
                    if not req.events:
                        self.stats.ignored += len(envs)
                    waits += new_waits
                elif res.status == CONFLICT:
                    self.stats.conflicts += 1
                    if res.version <= req.expected:
                        # The stream is behind our cached state, or at its version with another
                        # last entry: Redis lost acknowledged writes (restart without fsync,
                        # failover) and perhaps a different history was appended since.
                        # Catching up from the cached tail would never converge: reload it all.
                        self.cache.drop(iid)
                        self.stats.diverged += 1
                    stale.add(iid)
                    todo[iid] = envs
                elif res.status == UNAVAILABLE:
                    # Its call failed in transit while others got through (one Redis Cluster
                    # node failing over): applied whole or not at all, and its entries stay
                    # pending until redelivered. The others' follow-ups (cache, catch-up of
                    # their waits) still run below before the loop backs off.
                    self.cache.drop(iid)
                    unavailable = res.entry_id
                elif res.status == FENCED:
                    # Our lease on this partition lapsed: its new owner claims these entries.
                    self.stats.fenced += 1
                    self._lose(req.p)
                else:
                    # Reclaimed by another worker while we held it: theirs now.
                    self.stats.not_owner += 1
                    self.cache.drop(iid)
                    rest = [e for e in envs if e.entry_id != res.entry_id]
                    if rest:
                        todo[iid] = rest
        if todo:
            log.warning("gave up on %d instances after %d version conflicts; redelivery will retry", len(todo), MAX_ROUNDS)
        if waits:
            await self._catch_up(waits)
        if unavailable:
            raise StoreUnavailable(f"redis unavailable running append.lua for some partitions: {unavailable}")

    async def _catch_up(self, waits: list[Wait]) -> None:
        """Deliver events published after an instance started but before its wait began,
        then strike the waits off the partitions' catch-up sets.

        append.lua added each wait to ``{ff:p}:catchup`` with the wait itself, so a worker
        that dies before this is done leaves it there, and whoever holds the partition
        does it in ``sweep_catchups``. Delivering twice is harmless (a repeat is ignored).
        """
        pipe = self.redis.pipeline(transaction=False)
        await self._deliver_early_events(waits, pipe)
        for iid, _, _, _, member in waits:  # after the deliveries, in the same round trip
            pipe.zrem(self.keys.catchups(self.keys.partition(iid)), member)
        await _execute(pipe, "delivering events published before a wait")

    async def sweep_catchups(self) -> int:
        """Catch up the event waits of this worker's partitions whose catch-up was not confirmed
        within CATCHUP_GRACE_MS (their worker died between its append and the catch-up)."""
        cutoff = self.clock() - CATCHUP_GRACE_MS
        owned = sorted(self.leases.owned)
        pipe = self.redis.pipeline(transaction=False)
        for p in owned:
            pipe.zrangebyscore(self.keys.catchups(p), "-inf", cutoff, start=0, num=256)
        replies = await _execute(pipe, "reading catch-ups")
        found: list[Wait] = []
        unreadable = self.redis.pipeline(transaction=False)
        for p, members in zip(owned, replies):
            for raw in members:
                member = raw.decode() if isinstance(raw, bytes) else str(raw)
                wait = _decode_wait(member)
                if wait is None:
                    log.error("dropping an unreadable catch-up member of partition %d: %r", p, member[:200])
                    unreadable.zrem(self.keys.catchups(p), member)
                    continue
                found.append(wait)
        if len(unreadable):
            await _execute(unreadable, "dropping unreadable catch-ups")
        if found:
            await self._catch_up(found)
            self.stats.catchups_swept += len(found)
            log.warning("caught up %d event waits a worker left unconfirmed", len(found))
        return len(found)

    async def _deliver_early_events(self, waits: list[Wait], deliver: Any) -> None:
        """Add to the pipeline ``deliver`` the events published after an instance started
        but before its wait began, as event commands for its inbox.

        The router indexes every event under the filter shapes definitions wait
        with before it looks for open waits; we look in that index after the wait
        is registered. Whichever runs second sees the other's write, so no event
        is lost; one seen by both arrives twice and the second is ignored. An event
        an earlier wait of the same instance already took does not count again.
        """
        pipe = self.redis.pipeline(transaction=False)
        for _, wait, since, _, _ in waits:
            shape = filter_shape(wait.filter)
            pipe.sadd(self.keys.event_shapes(wait.event_type), encode_shape(shape))
            key = self.keys.event_index(wait.event_type, shape, [wait.filter[k] for k in shape])
            pipe.zrangebyscore(key, since, "+inf", start=0, num=16)
        replies = await _execute(pipe, "looking up events published before a wait")
        found = []
        for (iid, wait, _, taken, _), ids in zip(waits, replies[1::2]):
            fresh = [i.decode() for i in ids if taken is None or entry_key(i.decode()) > entry_key(taken)]
            if fresh:
                found.append((iid, wait, fresh[0]))
        if not found:
            return
        pipe = self.redis.pipeline(transaction=False)
        for _, _, event_id in found:
            pipe.xrange(self.keys.events, min=event_id, max=event_id)
        entries = await _execute(pipe, "reading events published before a wait")
        for (iid, wait, event_id), rows in zip(found, entries):
            if not rows:
                continue  # trimmed away since it was indexed
            try:
                etype, data, corr = decode_event_fields(rows[0][1], self.settings.max_payload_bytes)
            except ValueError:
                continue  # the router dead-letters it
            command = event_command(iid, wait.step, wait.attempt, etype, event_id, data, corr)
            deliver.xadd(self.keys.inbox(self.keys.partition(iid)), command)

    async def _tell_parents(self) -> None:
        """A sub-workflow that could not start fails its parent's step instead of leaving it waiting."""
        pipe = self.redis.pipeline(transaction=False)
        for child, cmd, reason in self._orphans:
            assert cmd.parent is not None
            data = {"step": cmd.parent.step, "attempt": cmd.parent.attempt, "task_id": child,
                    "error": {"message": f"child workflow {child} could not start: {reason}", "retryable": False,
                              "kind": "child"}}
            pipe.xadd(self.keys.inbox(self.keys.partition(cmd.parent.id)),
                      command_fields("step.failed", cmd.parent.id, data, f"child:{child}:step.failed"))  # type: ignore[arg-type]
        self._orphans.clear()
        await _execute(pipe, "telling parents their child could not start")

    def _warn_if_large(self, before: State, events: list[Event], after: State,
                       now: int) -> tuple[list[Event], State]:
        limit = self.settings.history_warn_events
        if not events or not before.version < limit <= after.version:
            return events, after
        self.stats.large_histories += 1
        log.warning("instance %s has a history of %d events (FOLDFLOW_HISTORY_WARN_EVENTS=%d)",
                    after.id, after.version, limit)
        warning = HistoryLarge(events=after.version + 1, threshold=limit)
        return [*events, warning], fold(after, [warning], now)

    def _snapshot(self, before: State, after: State) -> bytes | None:
        """The folded state, when these events cross a multiple of FOLDFLOW_SNAPSHOT_EVERY."""
        every = self.settings.snapshot_every
        return encode(after) if after.version // every > before.version // every else None

    async def retire(self) -> int:
        """Delete the streams of instances that finished more than FOLDFLOW_RETENTION_MS ago.

        Their histories stay in the read models (projections). Only partitions
        this worker holds, a bounded batch at a time.
        """
        if not self.settings.retention_ms:
            return 0
        cutoff = self.clock() - self.settings.retention_ms
        retired = 0
        for p in sorted(self.leases.owned):
            try:
                ids = await self.redis.zrangebyscore(self.keys.finished(p), "-inf", cutoff, start=0, num=500)
            except TRANSIENT as exc:
                raise StoreUnavailable(f"redis unavailable reading finished instances: {exc}") from exc
            if not ids:
                continue
            names = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
            pipe = self.redis.pipeline(transaction=False)
            for iid in names:
                pipe.delete(self.keys.instance(iid, p), self.keys.snapshot(p, iid))
                self.cache.drop(iid)
            pipe.zrem(self.keys.finished(p), *names)
            await _execute(pipe, "retiring finished instances")
            retired += len(names)
        self.stats.retired += retired
        return retired

    async def trim(self) -> int:
        """Trim the inboxes this worker holds below what the engine group has acknowledged,
        and (the holder of partition 0) the external events older than their retention,
        never past what the router or a projection has not processed."""
        trimmed = 0
        for p in sorted(self.leases.owned):
            trimmed += await trim_acknowledged(self.redis, self.keys.inbox(p))
        if 0 in self.leases.owned:
            horizon = f"{max(0, self.clock() - self.settings.event_retention_ms)}-0"
            trimmed += await trim_acknowledged(self.redis, self.keys.events, not_after=horizon)
        self.stats.trimmed += trimmed
        return trimmed

    def _lose(self, p: int) -> None:
        if p in self.leases.owned:
            log.warning("lease on partition %d lost (held by another worker now)", p)
            self.leases.owned.discard(p)
            self.reader.set_streams([self.keys.inbox(q) for q in sorted(self.leases.owned)])

    def _decide(
        self, iid: str, state: State, envs: list[Envelope], now: int,
        poison: list[tuple[Entry, str]], by_id: dict[str, Entry],
    ) -> tuple[list[Event], State, list[Envelope]]:
        events: list[Event] = []
        kept: list[Envelope] = []
        for env in envs:
            cmd = env.command
            if state.status == STATUS_NONE and not isinstance(cmd, StartWorkflow):
                poison.append((by_id[env.entry_id], f"unknown instance {iid!r}: no workflow was started with this id"))
                continue
            definition = self._definition_for(state, cmd)
            refusal = self._missing_definition(state, cmd) if definition is None else None
            if definition is not None and state.status == STATUS_NONE and isinstance(cmd, StartWorkflow) \
                    and definition.input_schema:
                problems = violations(definition.input_schema, cmd.context)
                if problems:  # refused: no instance is created
                    refusal = (f"input does not match the input schema of {definition.name!r} "
                               f"{definition.version}: " + "; ".join(problems))
            if refusal is not None or definition is None:
                poison.append((by_id[env.entry_id], refusal or "no definition"))
                if isinstance(cmd, StartWorkflow) and cmd.parent is not None:
                    self._orphans.append((iid, cmd, refusal or "no definition"))
                continue
            new_events, state = decide_and_fold(state, env, definition, now)
            events += new_events
            kept.append(env)
        return events, state, kept

    def _definition_for(self, state: State, cmd: object) -> Definition | None:
        if state.status == STATUS_NONE:
            assert isinstance(cmd, StartWorkflow)
            return self._start_defs.get((cmd.workflow, cmd.version))
        assert state.workflow is not None and state.def_version is not None
        return self.catalog.cached(state.workflow, state.def_version)

    @staticmethod
    def _missing_definition(state: State, cmd: object) -> str:
        if state.status == STATUS_NONE and isinstance(cmd, StartWorkflow):
            which = f"version {cmd.version!r}" if cmd.version else "any version"
            return f"unknown workflow {cmd.workflow!r} ({which} is not registered)"
        return f"definition {state.workflow!r} version {state.def_version!r} of this instance is not registered"

    async def _prefetch_definitions(self, todo: dict[str, list[Envelope]], states: dict[str, State | PoisonMessage]) -> None:
        self._start_defs: dict[tuple[str, str | None], Definition | None] = {}
        for iid, envs in todo.items():
            state = states[iid]
            if isinstance(state, PoisonMessage):
                continue
            if state.status != STATUS_NONE:
                assert state.workflow is not None and state.def_version is not None
                if self.catalog.cached(state.workflow, state.def_version) is None:
                    await self._fetch(state.workflow, state.def_version)
                continue
            for env in envs:
                cmd = env.command
                if isinstance(cmd, StartWorkflow) and (cmd.workflow, cmd.version) not in self._start_defs:
                    self._start_defs[(cmd.workflow, cmd.version)] = await self._fetch(cmd.workflow, cmd.version)

    async def _fetch(self, name: str, version: str | None) -> Definition | None:
        try:
            return await self.catalog.get(name, version)
        except PoisonMessage as exc:
            log.error("%s", exc)
            return None

    async def _states(
        self, todo: dict[str, list[Envelope]], stale: set[str]
    ) -> tuple[dict[str, State | PoisonMessage], dict[str, str | None]]:
        """Each instance's state, and the id of the stream entry it was folded up to."""
        out: dict[str, State | PoisonMessage] = {}
        lasts: dict[str, str | None] = {}
        wanted: list[tuple[str, State, str | None]] = []
        for iid, envs in todo.items():
            cached = self.cache.get(iid)
            self.cache.hits += cached is not None and iid not in stale  # ops: cache hit ratio
            self.cache.misses += cached is None or iid in stale
            if cached is None and iid not in stale and all(isinstance(e.command, StartWorkflow) for e in envs):
                # A start is almost always for a new id: decide on the empty state and
                # let append.lua's version check catch the rare repeat (it reloads).
                out[iid] = INITIAL
            elif cached is None:
                wanted.append((iid, INITIAL, None))
            elif iid in stale:
                wanted.append((iid, cached[0], cached[1]))
            else:
                out[iid], lasts[iid] = cached
        if wanted:
            for (iid, _, _), loaded in zip(wanted, await self.store.load_many(wanted)):
                if isinstance(loaded, PoisonMessage):
                    self.cache.drop(iid)
                    out[iid] = loaded
                else:
                    state, last = loaded
                    if state.status != STATUS_NONE:
                        self.cache.put(iid, state, last)
                    out[iid], lasts[iid] = state, last
        return out, lasts

    async def _dead_letter(self, poison: list[tuple[Entry, str]], deliveries: dict[str, int] | None = None) -> None:
        if not poison:
            return
        items = []
        for (stream, entry_id, fields), reason in poison:
            p = self.keys.inbox_partition(stream)
            n = (deliveries or {}).get(entry_id, 1)
            items.append((stream, self.keys.dlq(p), ENGINE_GROUP, entry_id, reason, fields, n))
            log.warning("dead-lettered %s %s: %s", stream, entry_id, reason)
        await self.store.dead_letter_many(items, self.consumer, self.clock())
        self.stats.dead_lettered += len(poison)


async def _execute(pipe: Any, what: str) -> Any:
    """A pipeline's replies; StoreUnavailable (the loop backs off) when Redis does not answer."""
    try:
        return await pipe.execute()
    except TRANSIENT as exc:
        raise StoreUnavailable(f"redis unavailable {what}: {exc}") from exc


# An event wait to catch up: instance id, the wait, the instance's creation (ms; events
# before it do not count), the id of the event an earlier wait took (or None), and its
# member in {ff:p}:catchup.
Wait = tuple[str, StepWaiting, int, "str | None", str]
CATCHUP_GRACE_MS = 5_000  # an append's own catch-up takes milliseconds; older is left over


def _wait(iid: str, wait: StepWaiting, state: State) -> Wait:
    since = state.created_ms or 0
    taken = state.last_events.get(wait_signature(wait.event_type, wait.filter))
    member = orjson.dumps([iid, since, taken, encode(wait).decode()]).decode()
    return iid, wait, since, taken, member


def _decode_wait(member: str) -> Wait | None:
    try:
        iid, since, taken, raw = orjson.loads(member)
        wait = decode_event(raw)
    except Exception:
        return None
    if not isinstance(wait, StepWaiting) or not isinstance(iid, str) or not isinstance(since, int):
        return None
    return iid, wait, since, taken if isinstance(taken, str) else None, member
