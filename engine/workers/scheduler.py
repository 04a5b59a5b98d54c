"""The scheduling loop every engine worker runs: claim the due schedules (judged by the Redis
server's clock), start their fire times under the overlap policy, run queued triggers and
backfills, and advance each schedule guarded by its claim token.

Exactly one start per fire time however many workers run: a claim holds a schedule for a
lease (20 polls, at least 2 s); a worker killed while holding it leaves it due again when the lease runs
out, and the next claimer sends the same starts again, with the same instance ids (the
id derives from the schedule and the fire time; a start is idempotent per id). Safe to
cancel anywhere: nothing is written until the advance, and what was sent before is
idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from engine.config import Settings
from engine.core.model import TERMINAL
from engine.core.schedules import (
    MAX_BACKFILL,
    Run,
    Schedule,
    Start,
    apply_overlap,
    execution_id,
    fire_times,
    plan_tick,
)
from engine.errors import EngineError, StoreUnavailable
from engine.store.catalog import Catalog
from engine.store.schedules import COUNTERS, Request, ScheduleState, ScheduleStore

log = logging.getLogger("foldflow.scheduler")
MIN_LEASE_MS = 2_000
LEASE_POLLS = 20  # a claim lasts this many polls (10 s at the default 500 ms), at least MIN_LEASE_MS: a tick
# of one schedule (up to MAX_BACKFILL starts) ends well within it, and one that does not only repeats
# idempotent starts
CLAIM_BATCH = 32  # schedules claimed per call
REQUESTS_PER_TICK = 10
START_GRACE_MS = 60_000  # a run started this recently without events yet is still starting: running
ERROR_RETRY_MS = 10_000
FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.1, 5.0
FINISHED = frozenset(TERMINAL | {"failed"})


class Outcome:
    """What one tick of one schedule did, written by the advance."""

    __slots__ = ("counters", "data", "last_error", "last_fire_ms", "last_id", "now", "runs", "started_ms")

    def __init__(self, state: ScheduleState, now: int) -> None:
        self.now = now
        self.runs: list[Run] = []
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.last_id = state.last_execution_id
        self.last_fire_ms = state.last_fire_ms
        self.started_ms = state.last_started_ms
        self.last_error = state.last_error
        self.data: dict[str, Any] | EngineError | None = None  # the start data, built once per tick

    def record(self, run: Run) -> None:
        self.runs.append(run)
        key = "errors" if run.action == "error" else run.action
        if key in self.counters:
            self.counters[key] += 1

    def fields(self) -> dict[str, Any]:
        return {"last_execution_id": self.last_id, "last_fire_ms": self.last_fire_ms,
                "last_started_ms": self.started_ms, "last_error": self.last_error}


class Scheduler:
    def __init__(self, store: ScheduleStore, catalog: Catalog, settings: Settings, consumer: str) -> None:
        self.store = store
        self.catalog = catalog
        self.consumer = consumer
        self.interval = max(50, settings.schedule_poll_ms) / 1000
        self.lease_ms = max(MIN_LEASE_MS, LEASE_POLLS * settings.schedule_poll_ms)
        self.started = 0
        self._stopping = asyncio.Event()

    @classmethod
    def of(cls, worker: Any) -> Scheduler:
        """The scheduler of an engine worker (engine/workers/engine.py), on its Redis and catalog."""
        return cls(ScheduleStore(worker.redis, worker.keys), worker.catalog, worker.settings, worker.consumer)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        backoff = FIRST_BACKOFF_S
        while not self._stopping.is_set():
            try:
                if await self.tick():
                    continue  # more may be due right now
                backoff = FIRST_BACKOFF_S
            except StoreUnavailable as exc:
                log.warning("schedule poll skipped: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            except Exception:
                log.exception("schedule poll failed")
            try:
                await asyncio.wait_for(self._stopping.wait(), self.interval)
            except TimeoutError:
                pass

    async def tick(self) -> int:
        """Claim the due schedules and handle each; one that fails is recorded and the rest go on."""
        now, claimed = await self.store.claim(CLAIM_BATCH, self.lease_ms, self.consumer)
        for name, token in claimed:
            try:
                await self.handle(name, token, now)
            except StoreUnavailable:
                raise
            except Exception as exc:
                log.exception("schedule %r failed", name)
                await self.store.advance(name, token, now + ERROR_RETRY_MS, {"last_error": str(exc)[:500]},
                                         {"errors": 1}, [Run(action="error", at_ms=now, detail=str(exc)[:500])], 0)
        return len(claimed)

    async def handle(self, name: str, token: str, now: int) -> None:
        state = await self.store.get(name)
        if state is None:
            return  # deleted after the claim: the delete removed it from the due set
        s = state.schedule
        requests = await self.store.requests(name, REQUESTS_PER_TICK)
        # allow needs no look at the previous run (unless a held fire or a request's own policy does)
        needs = s.overlap != "allow" or state.buffered_ms is not None or any(r.overlap != "allow" for r in requests)
        running = needs and await self._running(state, now)
        tick = plan_tick(s, cursor_ms=state.cursor_ms, now_ms=now, running=running, buffered_ms=state.buffered_ms)
        out = Outcome(state, now)
        for run in tick.runs:
            out.record(run)
        await self._act(s, tick.cancel_previous, tick.starts, out)
        running = running or bool(tick.starts)
        for request in requests:
            running = await self._request(s, request, running, out)
        fields = {**out.fields(), "cursor_ms": tick.cursor_ms, "buffered_ms": tick.buffered_ms}
        if not await self.store.advance(name, token, tick.next_ms, fields, out.counters, out.runs, len(requests)):
            log.info("schedule %r changed or was claimed again meanwhile: its tick is not recorded", name)

    async def _running(self, state: ScheduleState, now: int) -> bool:
        """Whether the schedule's last started run is still going (or still starting)."""
        if state.last_execution_id is None:
            return False
        status = await self.store.status(state.last_execution_id)
        if status == "none":
            return state.last_started_ms is not None and now - state.last_started_ms < START_GRACE_MS
        return status not in FINISHED

    async def _request(self, s: Schedule, request: Request, running: bool, out: Outcome) -> bool:
        if request.kind == "trigger" and request.execution_id:
            fires = [Start(out.now, request.execution_id, "triggered")]
            policy = request.overlap or s.overlap
        else:
            times = fire_times(s, request.from_ms - 1, request.to_ms, MAX_BACKFILL)
            fires = [Start(t, execution_id(s.name, t), "backfilled") for t in times]
            policy = request.overlap or "allow"
        done = apply_overlap(policy, fires, running=running, buffered_ms=None, now_ms=out.now)
        for run in done.runs:
            out.record(run)
        await self._act(s, done.cancel_previous, done.starts, out)
        return done.running

    async def _act(self, s: Schedule, cancel_previous: bool, starts: list[Start], out: Outcome) -> None:
        if cancel_previous and out.last_id is not None:
            await self.store.send("cancel", out.last_id, {"reason": f"schedule {s.name}: cancel_previous"},
                                  cmd_id=f"cancel:{out.last_id}:schedule")
        for start in starts:
            await self._start(s, start, out)

    async def _start(self, s: Schedule, start: Start, out: Outcome) -> None:
        if out.data is None:
            try:
                out.data = await self.catalog.start_data(s.workflow, s.context, s.version, s.correlation_id)
            except StoreUnavailable:
                raise
            except EngineError as exc:  # not registered, deactivated, context breaks the input schema
                out.data = exc
        if isinstance(out.data, EngineError):
            out.last_error = f"{start.execution_id}: {out.data}"[:500]
            out.record(Run(action="error", at_ms=out.now, fire_ms=start.fire_ms, execution_id=start.execution_id,
                           detail=str(out.data)[:500]))
            return
        await self.store.send("start", start.execution_id, out.data, cmd_id=f"start:{start.execution_id}")
        self.started += 1
        out.last_id, out.last_fire_ms, out.started_ms = start.execution_id, start.fire_ms, out.now
        out.record(Run(action=start.action, at_ms=out.now, fire_ms=start.fire_ms, execution_id=start.execution_id))
