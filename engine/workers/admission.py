"""Admission control per concurrency key, in the engine worker's shell (the core stays pure).

Before deciding, a start of a workflow with ``concurrency`` renders its key and asks Redis
for a slot (engine.store.admission); the outcome reaches ``decide`` as data
(``StartWorkflow.admission``): run, queue (``workflow.queued``, no tasks), or cancel
(cancel_newest). cancel_oldest takes the oldest holder's slot and sends that holder a
``cancel``. A retry of a failed instance must take a slot again; with none free it is
refused (``workflow.command_rejected``), never queued.

After appending, an instance's final event (completed, failed, cancelled, compensated)
releases its slot; the release moves the queue's head into it, and that instance gets an
``admit`` command. The two steps are not atomic: the Reconciler (a side task of every
engine worker) repairs a crash between them, and frees slots whose holder is final or
absent after a grace period.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

import msgspec

from engine.core.codec import command_fields
from engine.core.definition import Definition
from engine.core.definition.concurrency import KeyRenderError, render_key
from engine.core.language.schema import violations
from engine.core.model import (
    STATUS_CANCELLED,
    STATUS_COMPENSATED,
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_NONE,
    STATUS_QUEUED,
    Admission,
    Envelope,
    Event,
    RetryWorkflow,
    StartWorkflow,
    State,
    WorkflowCancelled,
    WorkflowCompensated,
    WorkflowCompleted,
    WorkflowFailed,
)
from engine.errors import StoreUnavailable
from engine.store.admission import Slots
from engine.store.catalog import Catalog
from engine.store.connection import Redis
from engine.store.errors import TRANSIENT
from engine.store.events import Store
from engine.store.keys import Keys

log = logging.getLogger("foldflow.admission")
_FINAL_EVENTS: Final = (WorkflowCompleted, WorkflowFailed, WorkflowCancelled, WorkflowCompensated)
# A slot's holder that is final (or absent) this long after it was admitted is freed by the reconciler.
GRACE_MS: Final = 5_000
RECONCILE_EVERY_S: Final = 2.0
FORGET_AFTER_MS: Final = 600_000  # an index entry with nobody holding or queued, untouched this long

Refused = list[tuple[Envelope, str]]  # starts to dead-letter, each with the reason
Release = tuple[str, str, str, int]  # workflow, key, instance id, limit


class Admitter:
    """The engine shell's admission step: before deciding (``admit``), after appending (``written``, ``flush``)."""

    def __init__(self, redis: Redis, keys: Keys, catalog: Catalog, clock: Callable[[], int]) -> None:
        self.redis = redis
        self.keys = keys
        self.catalog = catalog
        self.clock = clock
        self.slots = Slots(redis, keys)
        self._releases: list[Release] = []
        self.admitted = 0  # admit commands sent to queued instances
        self.evicted = 0  # holders cancelled by cancel_oldest

    async def admit(self, todo: dict[str, list[Envelope]], states: dict[str, Any],
                    starts: dict[tuple[str, str | None], Definition | None]) -> Refused:
        """Rewrite the starts and retries of ``todo`` with their admission; returns the starts refused."""
        refused: Refused = []
        sends: list[tuple[str, str, dict[str, Any], str]] = []
        for iid, envs in todo.items():
            state = states.get(iid)
            if not isinstance(state, State):
                continue
            for i, env in enumerate(envs):
                cmd = env.command
                new: StartWorkflow | RetryWorkflow | None
                if isinstance(cmd, StartWorkflow) and state.status == STATUS_NONE:
                    new = await self._start(iid, cmd, starts.get((cmd.workflow, cmd.version)), refused, env, sends)
                elif isinstance(cmd, RetryWorkflow) and state.status == STATUS_FAILED:
                    new = await self._retry(iid, cmd, state)
                else:
                    continue
                if new is not None:
                    envs[i] = msgspec.structs.replace(env, command=new)
        gone = {env.entry_id for env, _ in refused}
        for iid in list(todo):
            todo[iid] = [e for e in todo[iid] if e.entry_id not in gone]
            if not todo[iid]:
                del todo[iid]
        await self.send(sends)
        return refused

    async def _start(self, iid: str, cmd: StartWorkflow, definition: Definition | None, refused: Refused,
                     env: Envelope, sends: list[tuple[str, str, dict[str, Any], str]]) -> StartWorkflow | None:
        conc = definition.concurrency if definition is not None else None
        if conc is None or definition is None:  # an admission is the engine's to set, never a sender's
            return msgspec.structs.replace(cmd, admission=None) if cmd.admission is not None else None
        if definition.input_schema and violations(definition.input_schema, cmd.context):
            return None  # refused by the shell anyway: take no slot for it
        try:
            key = render_key(conc, cmd.context, cmd.tenant, cmd.correlation_id)
        except KeyRenderError as exc:
            refused.append((env, str(exc)))
            return None
        got = await self.slots.acquire(definition.name, key, iid, limit=conc.limit, mode=conc.on_limit, now=self.clock(),
                                       priority=cmd.priority)
        sends += [("admit", g, {"key": key}, f"admit:{g}") for g in got.granted]
        if got.evicted:
            why = (f"cancelled by the concurrency limit of {definition.name!r} (limit {conc.limit} for key {key!r}, "
                   f"on_limit cancel_oldest): newer instance {iid} took its slot")
            sends.append(("cancel", got.evicted, {"reason": why}, f"evict:{got.evicted}"))
        outcome = {"run": "run", "queue": "queue"}.get(got.outcome, "cancel")
        reason = None if outcome != "cancel" else (
            f"cancelled at start: the concurrency limit of {definition.name!r} is reached "
            f"(limit {conc.limit} for key {key!r}, on_limit cancel_newest)")
        return msgspec.structs.replace(cmd, admission=Admission(outcome=outcome, key=key, limit=conc.limit,
                                                                reason=reason))

    async def _retry(self, iid: str, cmd: RetryWorkflow, state: State) -> RetryWorkflow | None:
        definition = self._definition(state)
        key = state.concurrency_key
        if definition is None or definition.concurrency is None or key is None:
            return msgspec.structs.replace(cmd, admission=None) if cmd.admission is not None else None
        limit = definition.concurrency.limit
        got = await self.slots.acquire(definition.name, key, iid, limit=limit, mode="try", now=self.clock())
        reason = None if got.outcome == "run" else (
            f"cannot retry: the concurrency limit of {definition.name!r} is reached (limit {limit} for key {key!r}); "
            "retry when a slot is free")
        return msgspec.structs.replace(cmd, admission=Admission(outcome="run" if reason is None else "refuse",
                                                                key=key, limit=limit, reason=reason))

    def _definition(self, state: State) -> Definition | None:
        if state.workflow is None or state.def_version is None:
            return None
        return self.catalog.cached(state.workflow, state.def_version)

    # -- after the append ---------------------------------------------------------
    def written(self, state: State, events: list[Event]) -> None:
        """An append went through: a final event frees the instance's slot (in ``flush``)."""
        if state.concurrency_key is None or not any(isinstance(e, _FINAL_EVENTS) for e in events):
            return
        definition = self._definition(state)
        limit = definition.concurrency.limit if definition is not None and definition.concurrency else 1
        assert state.workflow is not None
        self._releases.append((state.workflow, state.concurrency_key, state.id, limit))

    async def flush(self) -> None:
        releases, self._releases = self._releases, []
        sends = []
        for workflow, key, iid, limit in releases:
            granted = await self.slots.release(workflow, key, iid, limit=limit, now=self.clock())
            sends += [("admit", g, {"key": key}, f"admit:{g}") for g in granted]
        await self.send(sends)

    async def send(self, sends: list[tuple[str, str, dict[str, Any], str]]) -> None:
        if not sends:
            return
        pipe = self.redis.pipeline(transaction=False)
        for type_, iid, data, cmd_id in sends:
            pipe.xadd(self.keys.inbox(self.keys.partition(iid)), command_fields(type_, iid, data, cmd_id))  # type: ignore[arg-type]
        try:
            await pipe.execute()
        except TRANSIENT as exc:
            raise StoreUnavailable(f"redis unavailable sending admission commands: {exc}") from exc
        self.admitted += sum(1 for s in sends if s[0] == "admit")
        self.evicted += sum(1 for s in sends if s[0] == "cancel")


class Reconciler:
    """Repairs what a crash between an append and its slot release leaves: a holder that is
    final or absent after GRACE_MS is freed, a holder still queued (granted, its ``admit`` lost)
    gets the ``admit`` again, and free slots are filled from the queue. Every step is
    idempotent, so every engine worker may run one; cancelling it anywhere is safe."""

    def __init__(self, admitter: Admitter, store: Store, *, grace_ms: int = GRACE_MS,
                 every_s: float = RECONCILE_EVERY_S) -> None:
        self.admitter = admitter
        self.slots = admitter.slots
        self.store = store
        self.grace_ms = grace_ms
        self.every_s = every_s
        self.released = 0  # slots freed by the reconciler
        self.readmitted = 0  # admit commands sent again
        self._stopping = asyncio.Event()

    @classmethod
    def of(cls, worker: Any) -> Reconciler:
        """The reconciler of an engine worker (engine.workers.engine.EngineWorker)."""
        return cls(worker.batch.admission, worker.store)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        # Ends on stop(), not only on cancel: a cancellation that lands inside a Redis call can come
        # back as a connection error, which the loop treats as Redis being away (and goes on).
        while not self._stopping.is_set():
            try:
                await self.once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away, a bad index entry: try again next period
                log.warning("admission reconcile failed: %s", exc)
            try:
                await asyncio.wait_for(self._stopping.wait(), self.every_s)
            except TimeoutError:
                pass

    async def once(self) -> None:
        now = self.admitter.clock()
        for digest, slot in (await self.slots.index()).items():
            await self._reconcile(digest, slot.workflow, slot.key, slot.limit, slot.at, now)

    async def _reconcile(self, digest: str, workflow: str, key: str, limit: int, touched: int, now: int) -> None:
        sends: list[tuple[str, str, dict[str, Any], str]] = []
        holders = await self.slots.holders(workflow, key)
        for iid, since in holders:
            if now - since < self.grace_ms:
                continue
            status = (await self.store.load(iid)).status
            if status in _SLOT_FREE:
                log.info("admission: freeing the slot of %s (%s) for %s %r", iid, status, workflow, key)
                self.released += 1
                granted = await self.slots.release(workflow, key, iid, limit=limit, now=now, taken_by=since)
                sends += [("admit", g, {"key": key}, f"admit:{g}") for g in granted]
            elif status == STATUS_QUEUED:
                self.readmitted += 1
                sends.append(("admit", iid, {"key": key}, f"admit:{iid}"))
        granted = await self.slots.release(workflow, key, "", limit=limit, now=now)  # fill free slots
        sends += [("admit", g, {"key": key}, f"admit:{g}") for g in granted]
        await self.admitter.send(sends)
        if not holders and not granted and now - touched > FORGET_AFTER_MS and not await self.slots.queued(workflow, key):
            await self.slots.forget(digest)


_SLOT_FREE: Final = frozenset({STATUS_NONE, STATUS_COMPLETED, STATUS_CANCELLED, STATUS_COMPENSATED, STATUS_FAILED})
