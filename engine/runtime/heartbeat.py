"""Worker heartbeats: every worker process (engine, activities, projector, ...)
writes who it is, its role and its counters into Redis, so `foldflow top`,
`foldflow stuck` and the metrics know which workers are alive and what they
serve (streams.md, "Worker heartbeats").

- ``<prefix>:hb:<consumer>``: hash, expires after 3 heartbeat intervals;
- ``<prefix>:heartbeats``: sorted set, member = consumer, score = last beat (ms).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import orjson

from engine.runtime.role import Role
from engine.store.connection import Redis
from engine.store.keys import Keys
from engine.store.replies import text

log = logging.getLogger("foldflow.heartbeat")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def describe(runner: Role, role: str, consumer: str, version: str, started_ms: int) -> dict[str, Any]:
    """The heartbeat's fields (values as Redis stores them)."""
    fields: dict[str, Any] = {
        "consumer": consumer, "role": role, "host": socket.gethostname(), "pid": os.getpid(),
        "version": version, "started_ms": started_ms, "ts": _now_ms(),
        "counters": orjson.dumps(runner.counters()),
        "services": orjson.dumps(runner.served_services()),
        # the services of those it serves over HTTP, not with handlers (so handlers elsewhere win)
        "http": orjson.dumps(getattr(runner, "http_services", list)()),
        "partitions": orjson.dumps(sorted(runner.partitions())),
    }
    return fields


class Heartbeat:
    def __init__(self, redis: Redis, keys: Keys, interval_ms: int,
                 fields: Callable[[], dict[str, Any]], consumer: str) -> None:
        self.redis = redis
        self.keys = keys
        self.interval_ms = interval_ms
        self.fields = fields
        self.consumer = consumer
        self._stopping = asyncio.Event()

    async def beat(self) -> None:
        key = self.keys.heartbeat(self.consumer)
        now = _now_ms()
        pipe = self.redis.pipeline(transaction=False)
        fields: Any = self.fields()
        pipe.hset(key, mapping=fields)
        pipe.pexpire(key, 3 * self.interval_ms)
        pipe.zadd(self.keys.heartbeats, {self.consumer: now})
        # Index entries of workers gone for an hour are noise: drop them.
        pipe.zremrangebyscore(self.keys.heartbeats, "-inf", now - 3_600_000)
        await pipe.execute()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.beat()
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)
            try:
                await asyncio.wait_for(self._stopping.wait(), self.interval_ms / 1000)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        """Stop beating and say goodbye, so the worker disappears from `top` at once."""
        self._stopping.set()
        try:
            await self.beat()  # final counters, then gone
            await self.redis.delete(self.keys.heartbeat(self.consumer))
            await self.redis.zrem(self.keys.heartbeats, self.consumer)
        except Exception as exc:
            log.debug("could not remove heartbeat: %s", exc)


async def read_heartbeats(redis: Redis, keys: Keys) -> list[dict[str, Any]]:
    """Live workers' heartbeats, decoded, oldest consumer first."""
    members = [text(m) for m in await redis.zrange(keys.heartbeats, 0, -1)]
    if not members:
        return []
    pipe = redis.pipeline(transaction=False)
    for m in members:
        pipe.hgetall(keys.heartbeat(m))
    out = []
    for member, raw in zip(members, await pipe.execute()):
        if not raw:
            continue  # expired: the worker is gone
        h = {k.decode(): v.decode() for k, v in raw.items()}
        out.append({
            "consumer": h.get("consumer", member), "role": h.get("role", "?"), "host": h.get("host", ""),
            "pid": int(h.get("pid", 0) or 0), "version": h.get("version", ""),
            "started_ms": int(h.get("started_ms", 0) or 0), "ts": int(h.get("ts", 0) or 0),
            "counters": orjson.loads(h.get("counters", "{}")), "services": orjson.loads(h.get("services", "[]")),
            "http": orjson.loads(h.get("http", "[]")), "partitions": orjson.loads(h.get("partitions", "[]")),
        })
    return out
