"""Rebuild a read model from the instance streams while everything keeps running.

Instance by instance (found with SCAN over the partition's instance streams,
an operator's action, never a query), the whole stream is folded and written
with the guard "stored version <= the stream's": live projectors that are
behind skip what the rebuild wrote; a projector that got ahead makes the
rebuild read the stream again. Indexes are rewritten from scratch for each
instance. Views of instances whose stream was retired are left as they are,
since nothing remains to rebuild them from. The correlation projection also
replays the external events stream (its index is keyed by entry id).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from engine.config import Settings
from engine.store.connection import Redis
from engine.store.keys import Keys
from engine.store.replies import text

from .base import Call, Ops, Projection, dumps
from .catalog import select
from .correlation import external_writes
from .keys import ViewKeys
from .store import ViewStore

log = logging.getLogger("foldflow.projector")
CHUNK = 200
MAX_ROUNDS = 8


def _glob_escape(text: str) -> str:
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


class Rebuilder:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.keys = Keys(settings.prefix, settings.partitions)
        self.vk = ViewKeys(self.keys)
        self.store = ViewStore(redis, self.vk)

    async def rebuild(self, names: Sequence[str]) -> dict[str, Any]:
        projections = select(list(names))
        await self.store.load_script()
        instances = 0
        for p in range(self.keys.partitions):
            chunk: list[str] = []
            async for key in self.redis.scan_iter(match=_glob_escape(f"{self.keys.tag(p)}:i:") + "*",
                                                  count=1000, _type="stream"):
                chunk.append(text(key).split(":i:", 1)[1])
                if len(chunk) >= CHUNK:
                    instances += await self._instances(projections, p, chunk)
                    chunk = []
            if chunk:
                instances += await self._instances(projections, p, chunk)
        events = 0
        if any(pr.name == "correlation" for pr in projections):
            events = await self._external_events()
        return {"projections": [pr.name for pr in projections], "instances": instances, "external_events": events}

    async def _instances(self, projections: list[Projection], p: int, iids: list[str]) -> int:
        for projection in projections:
            todo = [(p, iid) for iid in iids]
            for _ in range(MAX_ROUNDS):
                if not todo:
                    break
                todo = await self._round(projection, todo)
            if todo:
                log.warning("rebuild %s: %d instances kept moving; run the rebuild again", projection.name, len(todo))
        return len(iids)

    async def _round(self, projection: Projection, todo: list[tuple[int, str]]) -> list[tuple[int, str]]:
        name = projection.name
        streams = await self.store.read_instances(todo)
        views = await self.store.load_views(name, todo)
        call: Call | None = None
        for key, applied, (_version, old) in zip(todo, streams, views):
            p, iid = key
            if not applied or [a.version for a in applied] != list(range(1, len(applied) + 1)):
                continue  # retired, or unreadable: nothing to rebuild from
            call = call or Call(self.vk.checkpoint(p), self.keys.feed(p))
            new = projection.fold_all(None, iid, applied)
            ops = Ops()
            ops.hset(self.vk.view(p, iid), name, dumps(new))
            projection.writes(ops, self.vk, p, iid, old, new, applied, True)
            call.guarded(key, self.vk.view(p, iid), -1, applied[-1].version, ops, [])
        if call is None:
            return []
        [result] = await self.store.project([(call, "", name)])
        return [call.blocks[i - 1] for i in result[1:]]

    async def _external_events(self) -> int:
        count, after = 0, "-"
        while True:
            entries: Any = await self.redis.xrange(self.keys.events, min=after, max="+", count=1000)
            if not entries:
                return count
            rows = [(eid.decode(), fields) for eid, fields in entries]
            call = Call(self.vk.events_checkpoint, self.keys.events)
            call.unguarded(external_writes(self.vk, rows), [])
            await self.store.project([(call, "", "correlation")])
            count += len(rows)
            after = "(" + rows[-1][0]
