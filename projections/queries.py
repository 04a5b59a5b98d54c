"""Queries on the read models: what happened to execution X, which executions
are in status S of workflow W since T (cursor pagination, counts), and
everything under correlation id C. Every answer comes from the projections'
keys and indexes in a fixed number of round trips; nothing is scanned and no
instance stream is read or folded."""

from __future__ import annotations

import base64
import datetime as dt
import re
import time
from typing import Any

import orjson

from engine.config import Settings
from engine.core.ids import INSTANCE_ID_RE
from engine.errors import InvalidInput, NotFound, UnknownInstance
from engine.store.connection import Redis, connect
from engine.store.keys import Keys
from engine.store.replies import text

from .keys import STATUSES, ViewKeys
from .listings import merge_page

MAX_LIMIT = 1000
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_time(text: str, now_ms: int | None = None) -> int:
    """ms since epoch from an integer (ms), an ISO-8601 time, or an age ("90s", "15m", "1h", "2d")."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    m = _DURATION.match(text)
    if m:
        now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
        return now - int(m.group(1)) * _UNIT_MS[m.group(2)]
    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"invalid time {text!r}: give ms since epoch, ISO-8601, or an age like 15m, 1h, 2d") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return int(stamp.timestamp() * 1000)


def encode_cursor(score: int, iid: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([score, iid])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        score, iid = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return int(score), str(iid)
    except Exception:
        raise InvalidInput(f"invalid cursor {cursor!r}: pass next_cursor from a previous page") from None


def _check_id(instance_id: str) -> None:
    if not INSTANCE_ID_RE.match(instance_id):
        raise InvalidInput(f"invalid instance id {instance_id!r}")



class Queries:
    """The read side's Python API (``foldflow executions|correlation`` use it)."""

    def __init__(self, redis: Redis, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.redis = redis
        self.keys = Keys(self.settings.prefix, self.settings.partitions)
        self.vk = ViewKeys(self.keys)

    @classmethod
    def from_url(cls, url: str, settings: Settings | None = None) -> Queries:
        return cls(connect(url), settings)

    async def close(self) -> None:
        await self.redis.aclose()

    # -- one execution -----------------------------------------------------------
    async def _field(self, instance_id: str, name: str) -> Any:
        _check_id(instance_id)
        raw = await self.redis.hget(self.vk.view(self.keys.partition(instance_id), instance_id), name)
        if raw is None:
            raise UnknownInstance(f"no execution {instance_id!r} in the read models (not started, or not projected yet)")
        return orjson.loads(raw)

    async def execution(self, instance_id: str) -> dict[str, Any]:
        record: dict[str, Any] = await self._field(instance_id, "executions")
        return record

    async def steps(self, instance_id: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = await self._field(instance_id, "steps")
        return records

    async def lifecycle(self, instance_id: str) -> list[dict[str, Any]]:
        _check_id(instance_id)
        p = self.keys.partition(instance_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(self.vk.view(p, instance_id))
        pipe.lrange(self.vk.lifecycle(p, instance_id), 0, -1)
        exists, items = await pipe.execute()
        if not exists:
            raise UnknownInstance(f"no execution {instance_id!r} in the read models")
        return [orjson.loads(x) for x in items]

    # -- listings ------------------------------------------------------------------
    def _filters(self, status: str | None, limit: int) -> None:
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"unknown status {status!r}: one of {', '.join(STATUSES)}")
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(f"limit must be 1..{MAX_LIMIT}, got {limit}")

    async def executions(self, *, status: str | None = None, workflow: str | None = None, since: int | None = None,
                   until: int | None = None, limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        """Executions newest first (by creation time), with the total count for the filters."""
        self._filters(status, limit)
        after = decode_cursor(cursor) if cursor else None
        lo = "-inf" if since is None else since
        hi: Any = "+inf" if until is None else until
        if after is not None:
            hi = after[0] if until is None else min(after[0], until)
        keys = [self.vk.index(p, status=status, workflow=workflow) for p in range(self.keys.partitions)]
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.zcount(key, lo, "+inf" if until is None else until)
        for key in keys:
            pipe.zrevrangebyscore(key, hi, lo, start=0, num=limit, withscores=True)
        replies = await pipe.execute()
        count = sum(int(n) for n in replies[: len(keys)])
        pages: list[Any] = list(replies[len(keys):])
        pages = await self._complete(keys, pages, hi, lo, limit, after)
        page = merge_page(pages, limit, after)
        items = await self._records([iid for iid, _ in page])
        more = len(page) == limit
        return {"items": items, "count": count,
                "next_cursor": encode_cursor(page[-1][1], page[-1][0]) if more and page else None}

    async def _complete(self, keys: list[str], pages: list[Any], hi: Any, lo: Any, limit: int,
                        after: tuple[int, str] | None) -> list[Any]:
        """Refetch a partition whose full page lost entries to the cursor's ties
        (same ms, already returned), until it has `limit` entries past the cursor."""
        if after is None:
            return pages
        n = limit
        while True:
            short = [i for i, page in enumerate(pages)
                     if len(page) == n and sum(1 for m, s in page if (int(s), text(m)) < after) < limit]
            if not short:
                return pages
            n *= 2
            pipe = self.redis.pipeline(transaction=False)
            for i in short:
                pipe.zrevrangebyscore(keys[i], hi, lo, start=0, num=n, withscores=True)
            for i, page in zip(short, await pipe.execute()):
                pages[i] = page

    async def count(self, *, status: str | None = None, workflow: str | None = None,
                    since: int | None = None, until: int | None = None) -> int:
        self._filters(status, 1)
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.keys.partitions):
            pipe.zcount(self.vk.index(p, status=status, workflow=workflow),
                        "-inf" if since is None else since, "+inf" if until is None else until)
        return sum(int(n) for n in await pipe.execute())

    async def _records(self, iids: list[str]) -> list[dict[str, Any]]:
        if not iids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for iid in iids:
            pipe.hget(self.vk.view(self.keys.partition(iid), iid), "executions")
        return [orjson.loads(raw) for raw in await pipe.execute() if raw is not None]

    # -- correlation -----------------------------------------------------------------
    async def correlated(self, correlation_id: str) -> list[dict[str, Any]]:
        """The executions records under a correlation id (its index in every partition), unordered."""
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.keys.partitions):
            pipe.zrange(self.vk.correlation(p, correlation_id), 0, -1)
        return await self._records([text(m) for members in await pipe.execute() for m in members])

    async def correlation(self, correlation_id: str) -> dict[str, Any]:
        """The executions under a correlation id, the external events that carried it,
        and one timeline of their lifecycle events and those external events."""
        if not correlation_id:
            raise InvalidInput("a correlation id is needed")
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.keys.partitions):
            pipe.zrange(self.vk.correlation(p, correlation_id), 0, -1, withscores=True)
        pipe.zrange(self.vk.correlation_events(correlation_id), 0, -1)
        replies = await pipe.execute()
        members = sorted((int(score), text(m)) for page in replies[:-1] for m, score in page)
        events = [orjson.loads(raw) for raw in replies[-1]]
        if not members and not events:
            raise NotFound(f"nothing under correlation id {correlation_id!r} in the read models")
        pipe = self.redis.pipeline(transaction=False)
        for _score, iid in members:
            p = self.keys.partition(iid)
            pipe.hget(self.vk.view(p, iid), "executions")
            pipe.lrange(self.vk.lifecycle(p, iid), 0, -1)
        rows = await pipe.execute() if members else []
        executions = [orjson.loads(raw) for raw in rows[0::2] if raw is not None]
        lifecycle = [orjson.loads(x) for items in rows[1::2] for x in items]
        lifecycle.sort(key=lambda e: (e["timestamp"], e["data"]["execution_id"], int(e["id"].rsplit(":", 1)[1])))
        timeline = sorted([*lifecycle, *events], key=lambda e: e["timestamp"])
        return {"correlation_id": correlation_id, "executions": executions, "events": events,
                "lifecycle": lifecycle, "timeline": timeline}
