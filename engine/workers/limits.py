"""Per-service limits in the activity worker: before a task of a limited service
runs, it takes an in-flight permit and a token (engine/store/limits.py, judged by
the Redis clock, shared by every worker); while it cannot, it waits without
holding a handler slot, as a task of a service whose breaker is open does, and
is recorded as waiting (``foldflow stuck`` and ``GET /services/{name}/limits``
say so). While the handler runs its permit's lease is renewed every third of
the lease; the permit is released when the result is reported. A worker killed
while holding permits leaks nothing: they lapse when their lease runs out.

The limits are cached and refreshed at most every REFRESH_S (one GET of the
version counter; HGETALL only when it moved): a service without limits costs no
Redis round trip.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import orjson

from engine.core.model import Task
from engine.errors import StoreUnavailable
from engine.store.limits import Limits, LimitStore
from engine.store.lua import ScriptRunner

REFRESH_S = 1.0
POLL_MS = (50, 1_000)  # asking again for a permit: first after 50 ms, doubling up to 1 s
log = logging.getLogger("foldflow.limits")


class _Held:
    __slots__ = ("lease_ms", "renewer", "service", "task_id")

    def __init__(self, service: str, task_id: str, lease_ms: int, renewer: asyncio.Task[None]) -> None:
        self.service = service
        self.task_id = task_id
        self.lease_ms = lease_ms
        self.renewer = renewer


class ServiceLimits:
    def __init__(self, runner: ScriptRunner, keys: Any, *, group: str, consumer: str, claim_idle_ms: int,
                 max_unslotted: int) -> None:
        self.store = LimitStore(runner, keys)
        # At most this many tasks wait without a handler slot (the worker's concurrency); more wait
        # holding theirs, so a worker's read loop stops pulling tasks once twice that many wait.
        self.max_unslotted, self._unslotted = max_unslotted, 0
        # A waiting task stays pending with this consumer: touched every third of the claim
        # idle time, so no reclaim hands it to a second worker (or to this one again) meanwhile.
        self.group, self.consumer, self.touch_s = group, consumer, claim_idle_ms / 3000
        self._limits: dict[str, Limits] = {}
        self._version = -1
        self._next_refresh = 0.0
        self._refreshing = asyncio.Lock()
        self._held: dict[tuple[str, str], _Held] = {}
        self._freed: dict[str, asyncio.Event] = {}
        self.waits = 0  # tasks that had to wait (counters(): foldflow_activity_limit_waits)
        self.waiting: dict[tuple[str, str], int] = {}  # (service, reason) -> tasks of this worker waiting now
        self.metrics: Any = None  # WorkflowMetrics when the ops server runs

    async def limits_for(self, service: str) -> Limits | None:
        if time.monotonic() >= self._next_refresh:
            async with self._refreshing:  # tasks arriving meanwhile wait for the answer, not the old cache
                if time.monotonic() >= self._next_refresh:
                    await self._refresh()
                    self._next_refresh = time.monotonic() + REFRESH_S
        return self._limits.get(service)

    async def _refresh(self) -> None:
        try:
            version = await self.store.version()
            if version != self._version:
                self._limits, self._version = await self.store.all(), version
        except StoreUnavailable as exc:
            log.warning("limits: could not refresh (keeping the last known): %s", exc)

    async def admit(self, task: Task, slots: asyncio.Semaphore, stopping: asyncio.Event) -> bool:
        """Wait until the task may run under its service's limits; False when the worker stops first."""
        limits = await self.limits_for(task.service)
        if limits is None or not limits.active:
            return True
        info = orjson.dumps({"instance_id": task.instance_id, "step": task.step, "attempt": task.attempt})
        poll = POLL_MS[0]
        reason = ""
        touched = time.monotonic()
        try:
            while (answer := await self.store.acquire(task.service, task.task_id, limits, info, poll))[0]:
                wait_ms, now_reason = answer
                if now_reason != reason:
                    self._count(task.service, reason, now_reason)
                    reason = now_reason
                if stopping.is_set():
                    await self.store.unwait(task.service, task.task_id)
                    return False
                await self._wait(task.service, slots, wait_ms / 1000)
                if time.monotonic() - touched > self.touch_s:
                    touched = time.monotonic()
                    if not await self.store.touch(task.queue_key, self.group, self.consumer, task.entry_id):
                        return False  # another worker claimed it meanwhile: it runs there, not here
                poll = min(poll * 2, POLL_MS[1])
                current = await self.limits_for(task.service)
                if current is None or not current.active:
                    await self.store.unwait(task.service, task.task_id)
                    return True  # its limits were removed while it waited
                limits = current
        finally:
            self._count(task.service, reason, "")
        renewer = asyncio.create_task(self._renew(task.service, task.task_id, limits.lease_ms))
        self._held[(task.queue_key, task.entry_id)] = _Held(task.service, task.task_id, limits.lease_ms, renewer)
        return True

    async def _wait(self, service: str, slots: asyncio.Semaphore, seconds: float) -> None:
        """Sleep (at most 1 s, jittered; sooner when a permit of the service is released here), without
        holding a handler slot unless max_unslotted tasks already wait so."""
        freed = self._freed.setdefault(service, asyncio.Event())
        unslotted = self._unslotted < self.max_unslotted
        if unslotted:
            self._unslotted += 1
            slots.release()
        try:
            try:
                await asyncio.wait_for(freed.wait(), min(seconds, 1.0, self.touch_s) * random.uniform(0.8, 1.0))
            except TimeoutError:
                pass
        finally:
            if unslotted:
                await slots.acquire()
                self._unslotted -= 1

    def _count(self, service: str, old: str, new: str) -> None:
        if old:
            self.waiting[(service, old)] -= 1
            if self.metrics is not None:
                self.metrics.limit_waiting.labels(service, old).dec()
        if new:
            self.waiting[(service, new)] = self.waiting.get((service, new), 0) + 1
            self.waits += 1
            if self.metrics is not None:
                self.metrics.limit_waiting.labels(service, new).inc()
                self.metrics.limit_waits.labels(service, new).inc()

    async def _renew(self, service: str, task_id: str, lease_ms: int) -> None:
        while True:
            await asyncio.sleep(lease_ms / 3000)
            try:
                await self.store.renew(service, task_id, lease_ms)
            except StoreUnavailable as exc:
                log.warning("limits: could not renew the permit of task %s: %s", task_id, exc)

    async def release(self, stream: str, entry_id: str) -> None:
        """The task's result is reported (or it gave up): its permit goes back. Never raises."""
        held = self._held.pop((stream, entry_id), None)
        if held is None:
            return
        held.renewer.cancel()
        try:
            await self.store.release(held.service, held.task_id)
        except Exception as exc:  # the permit lapses after its lease
            log.warning("limits: could not release the permit of task %s (it lapses in %d ms): %s",
                        held.task_id, held.lease_ms, exc)
        freed = self._freed.pop(held.service, None)
        if freed is not None:
            freed.set()
