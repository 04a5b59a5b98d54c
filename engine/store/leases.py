"""Partition leases: each partition's inbox is decided by one engine worker at
a time, so one instance's commands are applied in the order they were sent.

Workers heartbeat into a sorted set; each aims to hold its fair share
(ceil(P / live workers)) of partitions, releases extras so a newcomer can take
them, and renews what it holds. A lease outlives a crash by at most its TTL.
append.lua refuses a worker that no longer holds the lease (fencing), so a
stalled worker that wakes after its lease moved on cannot write.
"""

from __future__ import annotations

import math
import random
import time

import redis.asyncio as aioredis

from engine.errors import StoreUnavailable
from engine.store.errors import TRANSIENT
from engine.store.events import Store
from engine.store.keys import Keys


class PartitionLeases:
    def __init__(self, redis: aioredis.Redis, keys: Keys, store: Store, holder: str, ttl_ms: int) -> None:
        self.redis = redis
        self.keys = keys
        self.store = store
        self.holder = holder
        self.ttl_ms = ttl_ms
        self.owned: set[int] = set()

    async def heartbeat(self) -> int:
        """Say we are alive; returns how many engine workers are."""
        now = time.time_ns() // 1_000_000
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self.keys.workers, {self.holder: now})
        pipe.zremrangebyscore(self.keys.workers, "-inf", now - 3 * self.ttl_ms)
        # Live = heard from within one lease TTL (a worker heartbeats every third of
        # it), so a dead worker's share is handed out as soon as its leases expire.
        pipe.zcount(self.keys.workers, now - self.ttl_ms, "+inf")
        try:
            _, _, live = await pipe.execute()
        except TRANSIENT as exc:
            raise StoreUnavailable(f"redis unavailable for the worker heartbeat: {exc}") from exc
        return max(1, int(live))

    async def maintain(self) -> tuple[list[int], list[int]]:
        """Heartbeat, renew, rebalance. Returns (gained, lost) partitions."""
        target = math.ceil(self.keys.partitions / await self.heartbeat())
        lost: list[int] = []
        held = sorted(self.owned)
        if held:
            renewed = await self.store.leases("renew", held, self.holder, self.ttl_ms)
            lost = [p for p, ok in zip(held, renewed) if not ok]
            self.owned -= set(lost)
        if len(self.owned) > target:
            extra = sorted(self.owned)[target:]
            await self.store.leases("release", extra, self.holder, self.ttl_ms)
            self.owned -= set(extra)
            lost += extra
        gained: list[int] = []
        candidates = [p for p in range(self.keys.partitions) if p not in self.owned]
        random.shuffle(candidates)  # newcomers should not all race for partition 0
        # Ask for only as many as we lack, a chunk at a time: grabbing every free
        # partition and releasing extras would starve a worker racing us.
        while len(self.owned) < target and candidates:
            chunk, candidates = candidates[: target - len(self.owned)], candidates[target - len(self.owned):]
            for p, ok in zip(chunk, await self.store.leases("acquire", chunk, self.holder, self.ttl_ms)):
                if ok:
                    self.owned.add(p)
                    gained.append(p)
        return gained, lost

    async def release_all(self) -> None:
        if self.owned:
            await self.store.leases("release", sorted(self.owned), self.holder, self.ttl_ms)
        self.owned.clear()
        await self.redis.zrem(self.keys.workers, self.holder)
