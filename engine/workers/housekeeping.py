"""The engine worker's periodic clean-up of the partitions it holds: streams of
instances finished longer ago than FOLDFLOW_RETENTION_MS are deleted, and
inboxes and the external event stream are trimmed below what was processed.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.config import Settings
from engine.errors import StoreUnavailable
from engine.store.connection import Redis
from engine.store.errors import TRANSIENT
from engine.store.keys import Keys
from engine.store.trimming import trim_acknowledged
from engine.workers.cache import StateCache

RETIRE_BATCH = 500  # finished instances retired per partition and turn


class Housekeeping:
    def __init__(self, redis: Redis, keys: Keys, settings: Settings, cache: StateCache) -> None:
        self.redis = redis
        self.keys = keys
        self.retention_ms = settings.retention_ms
        self.event_retention_ms = settings.event_retention_ms
        self.cache = cache

    async def retire(self, owned: Sequence[int], now: int) -> int:
        """Delete the streams of instances that finished more than FOLDFLOW_RETENTION_MS
        before ``now``, in partitions ``owned``, a bounded batch at a time.

        Their histories stay in the read models (projections).
        """
        if not self.retention_ms:
            return 0
        retired = 0
        for p in owned:
            names = await self._finished_before(p, now - self.retention_ms)
            if names:
                await self._delete(p, names)
                retired += len(names)
        return retired

    async def trim(self, owned: Sequence[int], now: int) -> int:
        """Trim the inboxes of partitions ``owned`` below what the engine group has acknowledged,
        and (for the holder of partition 0) the external events older than their retention,
        never past what the router or a projection has not processed."""
        trimmed = 0
        for p in owned:
            trimmed += await trim_acknowledged(self.redis, self.keys.inbox(p))
        if 0 in owned:
            horizon = f"{max(0, now - self.event_retention_ms)}-0"
            trimmed += await trim_acknowledged(self.redis, self.keys.events, not_after=horizon)
        return trimmed

    async def _finished_before(self, p: int, cutoff: int) -> list[str]:
        try:
            ids = await self.redis.zrangebyscore(self.keys.finished(p), "-inf", cutoff, start=0, num=RETIRE_BATCH)
        except TRANSIENT as exc:
            raise StoreUnavailable(f"redis unavailable reading finished instances: {exc}") from exc
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def _delete(self, p: int, names: list[str]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for iid in names:
            pipe.delete(self.keys.instance(iid, p), self.keys.snapshot(p, iid))
            self.cache.drop(iid)
        pipe.zrem(self.keys.finished(p), *names)
        try:
            await pipe.execute()
        except TRANSIENT as exc:
            raise StoreUnavailable(f"redis unavailable retiring finished instances: {exc}") from exc
