"""The engine worker's Decider shell: inbox entries in, appended decisions out.

Per batch: group the commands by instance, bring each instance's state up to
date (cache.py), decide every command, plan each instance's effects, and write
each instance's events, effects and acks with one script call per partition
(``Store.append_many``). Then each outcome is settled: a version conflict
catches up and decides again, up to MAX_ROUNDS; an entry reclaimed by another
worker while we held it is left to its new owner; a lapsed lease hands the
partition back to the schedule (``on_fenced``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from engine.config import Settings
from engine.core.codec import command_fields, decode_command_entry
from engine.core.decide import decide_and_fold
from engine.core.definition import Definition
from engine.core.evolve import fold
from engine.core.language.schema import violations
from engine.core.model import (
    STATUS_NONE,
    AdmitWorkflow,
    Envelope,
    Event,
    HistoryLarge,
    StartWorkflow,
    State,
    StepWaiting,
    encode,
)
from engine.errors import PoisonMessage, StoreUnavailable
from engine.runtime.consume import Entry
from engine.store.catalog import Catalog
from engine.store.errors import TRANSIENT
from engine.store.events import AppendOutcome, AppendRequest, AppendResult, Store
from engine.store.keys import ENGINE_GROUP, Keys
from engine.store.plan import plan
from engine.workers.admission import Admitter
from engine.workers.cache import StateCache, current_states
from engine.workers.catchup import Catchups, Wait, wait_of

log = logging.getLogger("foldflow.worker")
MAX_ROUNDS = 8  # conflict retries within one batch before leaving entries to redelivery

Poison = list[tuple[Entry, str]]  # inbox entries to dead-letter, each with the reason
Orphan = tuple[str, StartWorkflow, str]  # a sub-workflow that could not start: its id, its start, why


class Stats:
    """What one engine worker did, for logs, tests and metrics."""

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


class Decided:
    """One instance's decision in a round, with what settling its outcome needs."""

    __slots__ = ("kept", "request", "state", "waits")

    def __init__(self, request: AppendRequest, kept: list[Envelope], state: State, waits: list[Wait]) -> None:
        self.request = request
        self.kept = kept  # the commands decided (the others were dead-lettered)
        self.state = state  # the state after the decision's events
        self.waits = waits  # the event waits its events register


class _Round:
    """What one round of deciding shares: its time, the definitions of its starts, its refusals."""

    __slots__ = ("by_id", "now", "orphans", "poison", "starts")

    def __init__(self, by_id: dict[str, Entry], now: int,
                 starts: dict[tuple[str, str | None], Definition | None]) -> None:
        self.by_id = by_id
        self.now = now
        self.starts = starts
        self.poison: Poison = []
        self.orphans: list[Orphan] = []


class _Pending:
    """What the outcomes of a batch's rounds leave to do."""

    __slots__ = ("again", "stale", "unavailable", "waits")

    def __init__(self, todo: dict[str, list[Envelope]]) -> None:
        self.again = todo  # instances to decide (again) in the next round
        self.stale: set[str] = set()  # of those, the ones whose state an append refused
        self.waits: list[Wait] = []  # event waits written, to catch up once the rounds end
        self.unavailable = ""  # why a call failed in transit, if one did


class DeciderShell:
    def __init__(self, store: Store, keys: Keys, catalog: Catalog, cache: StateCache, catchups: Catchups,
                 stats: Stats, settings: Settings, consumer: str, clock: Callable[[], int],
                 on_fenced: Callable[[int], None]) -> None:
        self.store = store
        self.keys = keys
        self.catalog = catalog
        self.cache = cache
        self.catchups = catchups
        self.stats = stats
        self.settings = settings
        self.consumer = consumer
        self.clock = clock
        self.on_fenced = on_fenced  # a partition whose lease lapsed: the schedule stops reading it
        self.observer: Any = None  # ops: metrics and transition logs (engine.runtime.observe.EngineObserver)
        self.admission = Admitter(store.redis, keys, catalog, lambda: self.clock())  # concurrency per key

    async def process(self, entries: list[Entry]) -> None:
        self.stats.batches += 1
        self.stats.commands += len(entries)
        groups: dict[str, list[Envelope]] = {}
        poison: Poison = []
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
            await self.dead_letter(poison)
        await self.apply(groups, by_id)

    async def process_claimed(self, claimed: list[tuple[Entry, int]]) -> None:
        """Entries claimed from other consumers, each with its delivery count: the ones
        delivered more than FOLDFLOW_MAX_DELIVERIES times are dead-lettered, the rest processed."""
        self.stats.reclaimed += len(claimed)
        limit = self.settings.max_deliveries
        poison = [
            (e, f"delivered {n} times (limit {limit}): it failed every time it was processed")
            for e, n in claimed
            if n > limit
        ]
        await self.dead_letter(poison, {e[1]: n for e, n in claimed})
        fresh = [e for e, n in claimed if n <= limit]
        if fresh:
            await self.process(fresh)

    async def dead_letter(self, poison: Poison, deliveries: dict[str, int] | None = None) -> None:
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

    async def apply(self, groups: dict[str, list[Envelope]], by_id: dict[str, Entry]) -> None:
        pending = _Pending(groups)
        for _ in range(MAX_ROUNDS):
            if not pending.again:
                break
            decided = await self._decide_round(pending.again, pending.stale, by_id)
            results = await self.store.append_many([d.request for d in decided], ENGINE_GROUP, self.consumer,
                                                   fenced=True)
            pending.again, pending.stale = {}, set()
            for d, res in zip(decided, results):
                self._settle(d, res, pending)
        if pending.again:
            log.warning("gave up on %d instances after %d version conflicts; redelivery will retry",
                        len(pending.again), MAX_ROUNDS)
        await self.admission.flush()  # final events free their slots; the next queued get `admit`
        if pending.waits:
            await self.catchups.catch_up(pending.waits)
        if pending.unavailable:
            raise StoreUnavailable(f"redis unavailable running append.lua for some partitions: {pending.unavailable}")

    # -- deciding ------------------------------------------------------------
    async def _decide_round(self, todo: dict[str, list[Envelope]], stale: set[str],
                            by_id: dict[str, Entry]) -> list[Decided]:
        states, lasts = await current_states(self.cache, self.store, todo, stale)
        starts = await self._prefetch_definitions(todo, states)
        refused = await self.admission.admit(todo, states, starts)  # concurrency slots, before deciding
        rnd = _Round(by_id, self.clock(), starts)
        for env, why in refused:  # a start whose concurrency key cannot be rendered
            rnd.poison.append((by_id[env.entry_id], why))
            if isinstance(env.command, StartWorkflow) and env.command.parent is not None:
                rnd.orphans.append((env.instance_id, env.command, why))
        decided: list[Decided] = []
        for iid, envs in todo.items():
            state = states[iid]
            if isinstance(state, PoisonMessage):
                rnd.poison += [(by_id[e.entry_id], str(state)) for e in envs]
                continue
            d = self._decide_instance(iid, state, lasts.get(iid), envs, rnd)
            if d is not None:
                decided.append(d)
        if rnd.poison:
            await self.dead_letter(rnd.poison)
        if rnd.orphans:
            await self._tell_parents(rnd.orphans)
        return decided

    def _decide_instance(self, iid: str, state: State, last: str | None, envs: list[Envelope],
                         rnd: _Round) -> Decided | None:
        events, new_state, kept = self._decide(iid, state, envs, rnd)
        if not kept:
            return None
        p = self.keys.partition(iid)
        events, new_state = self._warn_if_large(state, events, new_state, rnd.now)
        fx = plan(state, events, self.keys, p)
        waits = [wait_of(iid, e, new_state) for e in events if isinstance(e, StepWaiting)]
        req = AppendRequest(iid, p, state.version, [e.entry_id for e in kept], events, fx, rnd.now,
                            self._snapshot(state, new_state), last, [w[4] for w in waits])
        return Decided(req, kept, new_state, waits)

    def _decide(self, iid: str, state: State, envs: list[Envelope],
                rnd: _Round) -> tuple[list[Event], State, list[Envelope]]:
        events: list[Event] = []
        kept: list[Envelope] = []
        for env in envs:
            cmd = env.command
            if state.status == STATUS_NONE and isinstance(cmd, AdmitWorkflow):
                kept.append(env)  # it overtook the redelivered start it was granted for: that start runs
                continue
            if state.status == STATUS_NONE and not isinstance(cmd, StartWorkflow):
                reason = f"unknown instance {iid!r}: no workflow was started with this id"
                rnd.poison.append((rnd.by_id[env.entry_id], reason))
                continue
            definition = self._definition_for(state, cmd, rnd.starts)
            refusal = self._refusal(state, cmd, definition)
            if refusal is not None or definition is None:
                rnd.poison.append((rnd.by_id[env.entry_id], refusal or "no definition"))
                if isinstance(cmd, StartWorkflow) and cmd.parent is not None:
                    rnd.orphans.append((iid, cmd, refusal or "no definition"))
                continue
            new_events, state = decide_and_fold(state, env, definition, rnd.now)
            events += new_events
            kept.append(env)
        return events, state, kept

    def _refusal(self, state: State, cmd: object, definition: Definition | None) -> str | None:
        """Why ``cmd`` cannot be decided at all (it is dead-lettered), or None."""
        if definition is None:
            return self._missing_definition(state, cmd)
        if state.status == STATUS_NONE and isinstance(cmd, StartWorkflow) and definition.input_schema:
            problems = violations(definition.input_schema, cmd.context)
            if problems:  # refused: no instance is created
                return (f"input does not match the input schema of {definition.name!r} "
                        f"{definition.version}: " + "; ".join(problems))
        return None

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

    async def _tell_parents(self, orphans: list[Orphan]) -> None:
        """A sub-workflow that could not start fails its parent's step instead of leaving it waiting."""
        pipe = self.store.redis.pipeline(transaction=False)
        for child, cmd, reason in orphans:
            assert cmd.parent is not None
            data = {"step": cmd.parent.step, "attempt": cmd.parent.attempt, "task_id": child,
                    "error": {"message": f"child workflow {child} could not start: {reason}", "retryable": False,
                              "kind": "child"}}
            pipe.xadd(self.keys.inbox(self.keys.partition(cmd.parent.id)),
                      command_fields("step.failed", cmd.parent.id, data, f"child:{child}:step.failed"))  # type: ignore[arg-type]
        try:
            await pipe.execute()
        except TRANSIENT as exc:
            raise StoreUnavailable(f"redis unavailable telling parents their child could not start: {exc}") from exc

    # -- definitions -----------------------------------------------------------
    def _definition_for(self, state: State, cmd: object,
                        starts: dict[tuple[str, str | None], Definition | None]) -> Definition | None:
        if state.status == STATUS_NONE:
            assert isinstance(cmd, StartWorkflow)
            return starts.get((cmd.workflow, cmd.version))
        assert state.workflow is not None and state.def_version is not None
        return self.catalog.cached(state.workflow, state.def_version)

    @staticmethod
    def _missing_definition(state: State, cmd: object) -> str:
        if state.status == STATUS_NONE and isinstance(cmd, StartWorkflow):
            which = f"version {cmd.version!r}" if cmd.version else "any version"
            return f"unknown workflow {cmd.workflow!r} ({which} is not registered)"
        return f"definition {state.workflow!r} version {state.def_version!r} of this instance is not registered"

    async def _prefetch_definitions(
        self, todo: dict[str, list[Envelope]], states: dict[str, State | PoisonMessage]
    ) -> dict[tuple[str, str | None], Definition | None]:
        """Fill the catalog's cache for running instances; return the definitions the starts name."""
        starts: dict[tuple[str, str | None], Definition | None] = {}
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
                if isinstance(cmd, StartWorkflow) and (cmd.workflow, cmd.version) not in starts:
                    starts[(cmd.workflow, cmd.version)] = await self._fetch(cmd.workflow, cmd.version)
        return starts

    async def _fetch(self, name: str, version: str | None) -> Definition | None:
        try:
            return await self.catalog.get(name, version)
        except PoisonMessage as exc:
            log.error("%s", exc)
            return None

    # -- outcomes ----------------------------------------------------------------
    def _settle(self, d: Decided, res: AppendResult, pending: _Pending) -> None:
        outcome = res.outcome
        if outcome is AppendOutcome.OK:
            self._written(d, res, pending)
        elif outcome is AppendOutcome.CONFLICT:
            self._conflicted(d, res, pending)
        elif outcome is AppendOutcome.UNAVAILABLE:
            # Its call failed in transit while others got through (one Redis Cluster
            # node failing over): applied whole or not at all, and its entries stay
            # pending until redelivered. The others' follow-ups (cache, catch-up of
            # their waits) still run before the loop backs off.
            self.cache.drop(d.request.instance_id)
            pending.unavailable = res.error or "a call failed in transit"
        elif outcome is AppendOutcome.FENCED:
            # Our lease on this partition lapsed: its new owner claims these entries.
            self.stats.fenced += 1
            self.on_fenced(d.request.p)
        else:
            # Reclaimed by another worker while we held it: theirs now.
            self.stats.not_owner += 1
            self.cache.drop(d.request.instance_id)
            rest = [e for e in d.kept if e.entry_id != res.entry_id]
            if rest:
                pending.again[d.request.instance_id] = rest

    def _written(self, d: Decided, res: AppendResult, pending: _Pending) -> None:
        req = d.request
        iid = req.instance_id
        cached = self.cache.get(iid)
        last = res.last_id or (cached[1] if cached else None)
        self.cache.put(iid, d.state, last)
        self.admission.written(d.state, req.events)
        if self.observer is not None:  # ops: outcome metrics, one log line per transition
            self.observer.appended(iid, req.events, d.state)
        self.stats.events += len(req.events)
        if not req.events:
            self.stats.ignored += len(d.kept)
        pending.waits += d.waits

    def _conflicted(self, d: Decided, res: AppendResult, pending: _Pending) -> None:
        iid = d.request.instance_id
        self.stats.conflicts += 1
        if res.version is None or res.version <= d.request.expected:
            # The stream is behind our cached state, or at its version with another
            # last entry: Redis lost acknowledged writes (restart without fsync,
            # failover) and perhaps a different history was appended since.
            # Catching up from the cached tail would never converge: reload it all.
            self.cache.drop(iid)
            self.stats.diverged += 1
        pending.stale.add(iid)
        pending.again[iid] = d.kept
