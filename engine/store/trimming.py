"""Trimming streams without losing anything a consumer group still needs.

Before Redis 8.2, MINID/MAXLEN trims ignore consumer groups (REDIS-NOTES), so
the floor is computed here: the oldest entry any group on the stream has
pending, else the oldest of the groups' last delivered ids. Entries below the
floor are acknowledged by every group, and only those are trimmed.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from engine.core.ids import entry_key
from engine.store.replies import text


async def group_floor(redis: Any, stream: str) -> str | None:
    """The lowest id some group on ``stream`` may still need; None when it has no group."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return None  # no such stream
    floors: list[str] = []
    for group in groups:
        name = text(group.get("name") or group.get(b"name"))
        summary = await redis.xpending(stream, name)
        if summary and summary.get("pending"):
            floors.append(text(summary["min"]))
        else:
            floors.append(text(group.get("last-delivered-id") or group.get(b"last-delivered-id") or "0-0"))
    return min(floors, key=entry_key) if floors else None


async def trim_acknowledged(redis: Any, stream: str, not_after: str | None = None) -> int:
    """Trim what every group has acknowledged (and, with ``not_after``, only below it)."""
    floor = await group_floor(redis, stream)
    if floor is None or floor == "0-0":
        return 0
    if not_after is not None and entry_key(not_after) < entry_key(floor):
        floor = not_after
    return int(await redis.xtrim(stream, minid=floor, approximate=False))
