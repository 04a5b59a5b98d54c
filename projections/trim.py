"""Feed trimming: a partition feed is trimmed only below what every consumer
group on it has processed (its oldest pending entry, or else its last
delivered one), and only when every projection's group exists. Redis before
8.2 trims regardless of groups, so the floor is computed here; a group's
position only moves forward, so the floor read before XTRIM stays safe."""

from __future__ import annotations

from typing import Any

from engine.store.connection import Redis
from engine.store.keys import Keys
from engine.store.replies import text

from .catalog import PROJECTIONS
from .keys import group_name


def _id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


async def feed_floor(redis: Redis, feed: str) -> str | None:
    """The lowest entry id some group on the feed still needs (None: do not trim)."""
    groups: Any = await redis.xinfo_groups(feed)
    names = {text(g["name"]) for g in groups}
    if any(group_name(n) not in names for n in PROJECTIONS):
        return None
    floor: str | None = None
    for g in groups:
        pos = text(g["last-delivered-id"])
        if int(g["pending"]) > 0:
            summary: Any = await redis.xpending(feed, text(g["name"]))
            # Acknowledged between XINFO and XPENDING: nothing pending now, last-delivered holds.
            if summary["min"] is not None:
                pos = text(summary["min"])
        if floor is None or _id(pos) < _id(floor):
            floor = pos
    return None if floor in (None, "0-0") else floor


async def trim_feeds(redis: Redis, keys: Keys) -> dict[int, int]:
    """Trim every partition feed to its floor; returns entries removed per partition."""
    removed: dict[int, int] = {}
    for p in range(keys.partitions):
        feed = keys.feed(p)
        if not await redis.exists(feed):
            continue
        floor = await feed_floor(redis, feed)
        if floor is not None:
            removed[p] = int(await redis.xtrim(feed, minid=floor, approximate=False))
    return removed
