"""Activity workers: run the registered handlers for the task queues they serve
and report each result with one atomic script (result command XADDed to the
task's reply_to inbox, task acknowledged and deleted).

    @engine.activity("planning-system")                 # every step of a service
    async def plan(task): ...
    @engine.activity("planning-system", step="task_preparation")   # wins for that step
    def prepare(task): ...

A handler gets an ``engine.Task`` and returns a JSON-able value (its step's
output). With an ``HttpExecutor`` (``foldflow activities --http``) the worker also
serves, over HTTP, every queue whose service resolves through the service registry
or the environment and for which no live activity worker has a handler; that set
is re-read while it runs (engine.workers.http.serving). With a ``CodeServing``
(``--code``) it runs the tasks of ``foldflow.code`` in a bubblewrap sandbox, one
fresh process per call (engine.workers.code). Raising fails the attempt: retryable, unless it raises
``engine.StepError(msg, retryable=False)``. A StepError's message is recorded as
given; any other exception with its type and the handler's line that raised it,
``KeyError: 'warehouse_code' (at shop/handlers.py:42 in reserve)``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from engine.config import Settings
from engine.core.codec import decode_task_entry
from engine.core.model import Task
from engine.errors import ConfigError, PoisonMessage, StoreUnavailable
from engine.runtime import tracing
from engine.runtime.consume import Entry, GroupReader
from engine.runtime.metrics import WorkflowMetrics
from engine.runtime.observe import ActivityObserver
from engine.runtime.preflight import preflight
from engine.runtime.startup import prepare_when_reachable
from engine.store.batching import ScriptBatcher
from engine.store.connection import Redis
from engine.store.events import Store
from engine.store.keys import ACTIVITY_GROUP, Keys
from engine.workers.breaker import CircuitBreakers
from engine.workers.code.serving import CodeServing
from engine.workers.handler_errors import Handler, handler_error
from engine.workers.http.serving import HttpServing
from engine.workers.lanes import Lanes
from engine.workers.limits import ServiceLimits

log = logging.getLogger("foldflow.activities")

class Registry:
    def __init__(self) -> None:
        self._handlers: dict[tuple[str, str | None], Handler] = {}

    def register(self, service: str, step: str | None, fn: Handler) -> None:
        key = (service, step)
        if key in self._handlers and self._handlers[key] is not fn:
            where = f"step {step!r} of " if step else ""
            raise ConfigError(f"a handler for {where}service {service!r} is already registered")
        self._handlers[key] = fn

    def handler(self, service: str, step: str | None = None) -> Callable[[Handler], Handler]:
        """Decorator registering into this registry (``engine.activity`` uses the default one)."""

        def decorate(fn: Handler) -> Handler:
            self.register(service, step, fn)
            return fn

        return decorate

    def handler_for(self, service: str, step: str) -> Handler | None:
        return self._handlers.get((service, step)) or self._handlers.get((service, None))

    @property
    def services(self) -> list[str]:
        return sorted({service for service, _ in self._handlers})

    def clear(self) -> None:
        self._handlers.clear()


# The decorator needs a place to put handlers at import time; the activity
# worker takes a Registry explicitly and defaults to this one.
default_registry = Registry()


def activity(service: str, step: str | None = None, *, registry: Registry | None = None) -> Callable[[Handler], Handler]:
    return (registry or default_registry).handler(service, step)


def import_handlers(module: str) -> None:
    """Import the module whose decorators register the handlers."""
    importlib.import_module(module)


class ActivityWorker:
    """The activities role: runs the handlers of the services it serves, at most `concurrency` at once."""

    role = "activities"

    def __init__(self, redis: Redis, settings: Settings, *, registry: Registry | None = None,
                 services: list[str] | None = None, observer: Any = None, http: HttpServing | None = None,
                 code: CodeServing | None = None) -> None:
        self.observer = observer  # ops: handler metrics and task logs (engine.runtime.observe.ActivityObserver)
        self.redis = redis
        self.settings = settings
        self.registry = registry or default_registry
        self.keys = Keys(settings.prefix, settings.partitions)
        self.store = Store(redis, self.keys, wait_replicas=settings.wait_replicas,
                           wait_timeout_ms=settings.wait_timeout_ms)
        self.consumer = settings.consumer_name()
        self.handler_services = services or self.registry.services
        self.code = code  # --code: the sandbox serves foldflow.code as this worker's own handler
        if code is not None and code.service not in self.handler_services:
            self.handler_services = sorted([*self.handler_services, code.service])
        self.services = list(self.handler_services)
        self.http = http
        if not self.services and http is None:
            raise ConfigError("no activity handlers registered: nothing to serve")
        streams = [self.keys.tasks(p, q) for q in self.services for p in range(self.keys.partitions)]
        self.reader = GroupReader(redis, ACTIVITY_GROUP, self.consumer, streams)
        self.lanes = Lanes(redis, self.keys, self.reader)  # priority lanes, read first (engine.workers.lanes)
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._running: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self.breakers = CircuitBreakers(self.store, settings.breaker_threshold, settings.breaker_cooldown_ms)
        self.limits = ServiceLimits(self.store, self.keys, group=ACTIVITY_GROUP, consumer=self.consumer,
                                    claim_idle_ms=settings.task_claim_idle_ms,
                                    max_unslotted=settings.concurrency)  # per-service limits (issue 16)
        self.reports = ScriptBatcher(self.store, "complete_task")
        self.completed = 0
        self.failed = 0
        self.stale = 0

    # -- the Role protocol (engine.runtime.role) ---------------------------------
    def groups(self) -> list[tuple[str, str]]:
        return [(s, ACTIVITY_GROUP) for s in self.reader.streams]

    def partitions(self) -> set[int]:
        return set()

    def served_services(self) -> list[str]:
        return list(self.services)

    def http_services(self) -> list[str]:
        """The services this worker serves over HTTP (no handler of its own): heartbeats say so."""
        return [] if self.http is None else sorted(set(self.services) - set(self.handler_services))

    def serve(self, services: list[str]) -> list[str]:
        """Serve these queues from now on (the HTTP side's set changed); the new task streams."""
        wanted = sorted(set(self.handler_services) | set(services))
        added = [self.keys.tasks(p, q) for q in wanted if q not in self.services for p in range(self.keys.partitions)]
        self.services = wanted
        self.lanes.set_base([self.keys.tasks(p, q) for q in wanted for p in range(self.keys.partitions)], wanted)
        return added

    def scripts(self) -> dict[str, str]:
        return {name: script.sha for name, script in self.store.scripts.items()}

    def running(self) -> int | None:
        return len(self._running)

    def observed_by(self, metrics: WorkflowMetrics) -> None:
        if self.observer is None:
            self.observer = ActivityObserver(metrics)
        self.limits.metrics = metrics
        if self.http is not None:
            phases = {phase: metrics.http_overhead.labels(phase) for phase in ("before", "after")}
            self.http.observe = lambda phase, seconds: phases[phase].observe(seconds)

    def counters(self) -> dict[str, int]:
        counts = {"completed": self.completed, "failed": self.failed, "stale": self.stale,
                  "breakers_opened": self.breakers.opened, "reader_nogroup_recoveries": self.reader.nogroup_recoveries,
                  "store_under_replicated": self.store.under_replicated, "limit_waits": self.limits.waits}
        if self.http is not None:
            counts.update(self.http.counters())
        if self.code is not None:
            counts.update(self.code.counters())
        return counts

    async def prepare(self) -> None:
        await preflight(self.redis)  # refuses a Redis that may evict streams
        await self.store.check_durability(bool(self.settings.require_fsync_always))
        await self.store.check_meta()
        await self.store.load_scripts()
        for stream in self.reader.streams:
            await self.store.ensure_group(stream, ACTIVITY_GROUP)
        if self.http is not None:
            await self.http.open(self)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        if not await prepare_when_reachable(self.prepare, self._stopping, "activity worker"):
            return
        backoff = 0.05
        last_reclaim = 0.0
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping.is_set():
                try:
                    free = max(1, self._free_slots())
                    await self.lanes.tick(self.services)
                    entries = await self.lanes.read(min(free, self.settings.batch_size), self.settings.block_ms)
                    if loop.time() - last_reclaim > max(0.2, min(self.settings.task_claim_idle_ms, 20_000) / 2000):
                        last_reclaim = loop.time()
                        entries = self.lanes.order([*entries, *await self._reclaim()])
                    for entry in entries:
                        await self._slots.acquire()
                        task = asyncio.create_task(self._run_one(entry))
                        self._running.add(task)
                        task.add_done_callback(self._running.discard)
                    backoff = 0.05
                except StoreUnavailable as exc:
                    log.warning("activities: redis unavailable, retrying in %.2fs: %s", backoff, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                except Exception:
                    log.exception("activity loop failed; retrying in 1s (unreported tasks are redelivered)")
                    await asyncio.sleep(1.0)
        finally:
            # Drain: let running handlers report; what is not reported stays
            # pending and is redelivered after the claim idle time.
            if self._running:
                await asyncio.gather(*self._running, return_exceptions=True)
            if self.http is not None:
                await self.http.close()

    async def _reclaim(self) -> list[Entry]:
        """Tasks a dead worker held; one that keeps killing its workers is dead-lettered."""
        fresh = []
        limit = self.settings.max_deliveries
        for entry, n in await self.reader.reclaim(self.settings.task_claim_idle_ms):
            if n > limit:
                await self._dead_letter(entry, f"delivered {n} times (limit {limit}): no worker finished it", n)
            else:
                fresh.append(entry)
        return fresh

    async def _admitted(self, task: Task) -> bool:
        """Wait while the service's breaker is open, without holding a handler slot."""
        while (wait := await self.breakers.admit(task.service)) > 0:
            if self._stopping.is_set():
                return False
            self._slots.release()
            try:
                await asyncio.sleep(min(wait, 1.0))
            finally:
                await self._slots.acquire()
        return True

    def _free_slots(self) -> int:
        return self.settings.concurrency - len(self._running)

    async def _run_one(self, entry: Entry) -> None:
        stream, entry_id, fields = entry
        try:
            try:
                task = decode_task_entry(entry_id, stream, fields)
            except PoisonMessage as exc:
                await self._dead_letter(entry, str(exc))
                return
            if tracing.enabled:  # the attempt's span, from its dispatch to its report (engine.runtime.tracing)
                with tracing.attempt(task) as span:
                    span.ended(*await self._attempt(task))
            else:
                await self._attempt(task)
        except StoreUnavailable as exc:
            log.warning("could not report task %s (it stays pending): %s", entry_id, exc)
        except Exception:
            log.exception("task %s failed outside its handler", entry_id)
        finally:
            await self.limits.release(stream, entry_id)
            self._slots.release()

    async def _attempt(self, task: Task) -> tuple[str, dict[str, Any]]:
        """Run a delivered task and report it: how that ended (completed, failed, stale, or
        released: left pending) and the result."""
        if not await self._admitted(task):
            return "released", {}  # stopping while its service's breaker was open: it stays pending
        if not await self.limits.admit(task, self._slots, self._stopping):
            return "released", {}  # stopping while it waited for its service's limits: it stays pending
        started = time.perf_counter()
        command, data = await self.execute(task)
        await self.breakers.record(task.service, healthy=_healthy(command, data))
        if self.observer is not None:  # ops: handler duration and outcome
            self.observer.task_done(task, command, data, time.perf_counter() - started)
        outcome = await self.report(task, command, data)
        if self.http is not None:
            self.http.reported(task, started)
        return outcome, data

    async def execute(self, task: Task) -> tuple[str, dict[str, Any]]:
        """Run the handler; the result command's type and data."""
        base: dict[str, Any] = {"step": task.step, "attempt": task.attempt, "task_id": task.task_id}
        if task.iteration is not None:
            base["iteration"] = task.iteration
        handler = self.registry.handler_for(task.service, task.step)
        if handler is None and self.code is not None and self.code.takes(task):
            return await self.code.call(task, base)
        if handler is None and self.http is not None and self.http.takes(task):
            return await self.http.call(task, base)
        if handler is None:
            error = {"message": f"no handler for service {task.service!r} step {task.step!r}", "retryable": False,
                     "kind": "handler"}
            return "step.failed", {**base, "error": error}
        started = time.perf_counter()
        try:
            if inspect.iscoroutinefunction(handler):
                result = await handler(task)
            else:
                result = await asyncio.to_thread(handler, task)
                if inspect.isawaitable(result):
                    result = await result
        except Exception as exc:
            return "step.failed", {**base, "error": handler_error(exc, handler)}
        finally:
            log.debug("task %s ran in %.3fs", task.task_id, time.perf_counter() - started)
        return "step.completed", {**base, "output": {} if result is None else result}

    async def report(self, task: Task, command: str, data: dict[str, Any]) -> str:
        """Report the result; "completed", "failed", or "stale" (another worker holds the task now)."""
        try:
            body = orjson.dumps(data)
        except TypeError as exc:
            body = orjson.dumps({**_ids(data), "error": {
                "message": f"handler returned a value that is not JSON: {exc}", "retryable": False, "kind": "handler"}})
            command = "step.failed"
        if len(body) > self.settings.max_payload_bytes:
            body = orjson.dumps({**_ids(data), "error": {
                "message": f"result is {len(body)} bytes, over the limit of {self.settings.max_payload_bytes}",
                "retryable": False, "kind": "handler"}})
            command = "step.failed"
        # A notification's outcome is not a step result: it is acknowledged only.
        answer = "" if task.kind == "notification" else command
        result = await self.reports.call(
            [task.queue_key, task.reply_to],
            [ACTIVITY_GROUP, self.consumer, task.entry_id, answer, task.instance_id, body, f"res:{task.task_id}"],
        )
        if isinstance(result, int) and result < 0:
            self.stale += 1
            log.warning("task %s was reclaimed by another worker; this late result is dropped", task.task_id)
            return "stale"
        if command == "step.completed":
            self.completed += 1
            return "completed"
        self.failed += 1
        return "failed"

    async def _dead_letter(self, entry: Entry, reason: str, deliveries: int = 1) -> None:
        stream, entry_id, fields = entry
        p = self.keys.stream_partition(stream)
        await self.store.dead_letter_many(
            [(stream, self.keys.dlq(p), ACTIVITY_GROUP, entry_id, reason, fields, deliveries)], self.consumer,
            time.time_ns() // 1_000_000,
        )
        log.warning("dead-lettered task %s: %s", entry_id, reason)


def _ids(data: dict[str, Any]) -> dict[str, Any]:
    return {k: data[k] for k in ("step", "attempt", "task_id", "iteration") if k in data}


def _healthy(command: str, data: dict[str, Any]) -> bool:
    """Did the service answer? A completed step, or a deliberate non-retryable refusal."""
    return command == "step.completed" or not data.get("error", {}).get("retryable", True)
