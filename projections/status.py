"""Projector status: per projection and partition, how far behind the feed it
is, in entries (undelivered + pending) and in seconds (age of the oldest entry
not yet processed)."""

from __future__ import annotations

from typing import Any

from engine.store.connection import Redis
from engine.store.keys import Keys
from engine.store.replies import text

from .catalog import PROJECTIONS
from .keys import ViewKeys, group_name


def _ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


async def _row(redis: Redis, stream: str, group: dict[str, Any] | None, now_ms: int) -> dict[str, Any]:
    if group is None:
        return {"group": None, "lag_entries": None, "lag_seconds": None, "pending": None}
    pending = int(group["pending"])
    last = text(group["last-delivered-id"])
    oldest: str | None = None
    if pending:
        summary: Any = await redis.xpending(stream, text(group["name"]))
        oldest = text(summary["min"])
    else:
        nxt: Any = await redis.xrange(stream, min=f"({last}" if last != "0-0" else "-", max="+", count=1)
        oldest = text(nxt[0][0]) if nxt else None
    lag = group.get("lag")
    return {
        "group": text(group["name"]),
        "pending": pending,
        "lag_entries": None if lag is None else int(lag) + pending,
        "lag_seconds": 0.0 if oldest is None else max(0.0, (now_ms - _ms(oldest)) / 1000),
        "last_delivered": last,
    }


async def projector_status(redis: Redis, keys: Keys, now_ms: int) -> list[dict[str, Any]]:
    vk = ViewKeys(keys)
    rows: list[dict[str, Any]] = []
    streams = [(str(p), keys.feed(p), vk.checkpoint(p)) for p in range(keys.partitions)]
    streams.append(("events", keys.events, vk.events_checkpoint))
    for part, stream, ckpt_key in streams:
        groups: dict[str, dict[str, Any]] = {}
        if await redis.exists(stream):
            groups = {text(g["name"]): g for g in await redis.xinfo_groups(stream)}
        checkpoints = {text(k): text(v) for k, v in (await redis.hgetall(ckpt_key)).items()}
        names = ["correlation"] if part == "events" else list(PROJECTIONS)
        for name in names:
            row = await _row(redis, stream, groups.get(group_name(name)), now_ms)
            rows.append({"projection": name, "partition": part, **row, "checkpoint": checkpoints.get(name)})
    return rows
