"""Helpers shared by the end-to-end tests: an agent simulator that answers the
example's event waits by watching the partition feeds, and history checks."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis

import engine.dev.demo_handlers  # noqa: F401 - registers the simulated services
from engine.client import Client
from engine.config import Settings
from engine.store.connection import is_cluster
from engine.store.keys import Keys
from engine.workers.activities import ActivityWorker, Registry
from engine.workers.engine import EngineWorker


class AgentSimulator:
    """Publishes `agent.task_completed` for every wait it sees begin in the feeds.

    It watches `workflow.step_waiting` on the feeds (as any service could), so it
    never races the wait's registration.
    """

    def __init__(self, redis: aioredis.Redis, client: Client, keys: Keys) -> None:
        self.redis = redis
        self.client = client
        self.keys = keys
        self.published = 0
        self.completed: set[str] = set()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def _read(self, cursors: dict[str, str]) -> list[Any]:
        if not is_cluster(self.redis):
            return list(await self.redis.xread(cursors, count=500, block=100) or [])
        # Redis Cluster: one XREAD cannot span slots; read each feed, pipelined.
        pipe = self.redis.pipeline(transaction=False)
        for stream, cursor in cursors.items():
            pipe.xread({stream: cursor}, count=500)
        replies = [r for reply in await pipe.execute() for r in (reply.items() if isinstance(reply, dict) else reply or [])]
        if not replies:
            await asyncio.sleep(0.02)
        return replies

    async def run(self) -> None:
        cursors = {self.keys.feed(p): "0-0" for p in range(self.keys.partitions)}
        while not self._stop.is_set():
            reply = await self._read(cursors)
            for stream, entries in reply:
                name = stream.decode() if isinstance(stream, bytes) else stream
                for entry_id, fields in entries:
                    cursors[name] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    if fields[b"type"] == b"workflow.completed":
                        self.completed.add(fields[b"id"].decode())
                    if fields[b"type"] != b"workflow.step_waiting":
                        continue
                    data = orjson.loads(fields[b"data"])
                    flt = data["filter"]
                    await self.client.publish(data["event_type"], {**flt, "result": "done"})
                    self.published += 1


def check_history(history: list[dict[str, Any]]) -> None:
    """Versions are 1..n; every step event names its step and attempt; no step
    attempt is scheduled or completed twice."""
    assert [e["version"] for e in history] == list(range(1, len(history) + 1))
    completed: Counter[tuple[str, int, int | None]] = Counter()
    scheduled: Counter[tuple[str, int, int | None]] = Counter()
    for e in history:
        if e["type"].startswith("workflow.step_"):
            assert "step" in e["data"] and "attempt" in e["data"], e
        key = (e["data"].get("step"), e["data"].get("attempt"), e["data"].get("iteration"))
        if e["type"] == "workflow.step_completed":
            completed[key] += 1
        if e["type"] in ("workflow.step_scheduled", "workflow.step_waiting"):
            scheduled[key] += 1
    assert all(n == 1 for n in completed.values()), completed
    assert all(n == 1 for n in scheduled.values()), scheduled
    # completed and cancelled are final: at most one, and only refusals follow it
    for i, e in enumerate(history):
        if e["type"] in ("workflow.completed", "workflow.cancelled"):
            after = {x["type"] for x in history[i + 1:]}
            assert after <= {"workflow.command_rejected"}, (e, after)


class Cluster:
    """Two engine workers, one activity worker and the agent simulator."""

    def __init__(self, factory: Callable[[], aioredis.Redis], settings: Settings,
                 registry: Registry | None = None) -> None:
        self.factory = factory
        self.settings = settings
        self.client = Client(factory(), settings)
        self.workers = [EngineWorker(factory(), settings) for _ in range(2)]
        self.activities = ActivityWorker(factory(), settings, registry=registry)
        self.agents = AgentSimulator(factory(), self.client, Keys(settings.prefix, settings.partitions))
        self.tasks: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> Cluster:
        for w in self.workers:
            await w.prepare()
        runners = [w.run() for w in self.workers] + [self.activities.run(), self.agents.run()]
        self.tasks = [asyncio.create_task(r) for r in runners]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for w in self.workers:
            w.stop()
        self.activities.stop()
        self.agents.stop()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.close()
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                raise r
