"""The read side's Redis I/O: ``project.lua`` (loaded once, re-sent after
NOSCRIPT), view loads, instance-stream reads for gap filling and rebuilds.
Redis errors are translated here, as in ``engine.store.events``."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from engine.core.model import decode_event
from engine.errors import PoisonMessage, StoreUnavailable
from engine.store.connection import evalsha_many
from engine.store.errors import TRANSIENT

from .base import Applied, Call, Doc
from .keys import ViewKeys

SCRIPT = (Path(__file__).parent / "scripts" / "project.lua").read_bytes()
SHA = hashlib.sha1(SCRIPT).hexdigest()


def decode_entry(fields: dict[bytes, bytes]) -> Applied:
    """A feed or instance-stream entry -> Applied; PoisonMessage when unreadable."""
    try:
        return Applied(int(fields[b"version"]), int(fields[b"ts"]), decode_event(fields[b"data"]))
    except Exception as exc:
        raise PoisonMessage(f"unreadable event entry: {exc}") from exc


class ViewStore:
    def __init__(self, redis: aioredis.Redis, vk: ViewKeys) -> None:
        self.redis = redis
        self.vk = vk

    async def load_script(self) -> None:
        await self.redis.script_load(SCRIPT)

    async def project(self, calls: Sequence[tuple[Call, str, str]]) -> list[list[int]]:
        """Run project.lua once per (call, group, projection), pipelined; each reply is
        [applied count, refused block numbers...]."""
        built = [c.build(group, name) for c, group, name in calls]
        if not built:
            return []
        try:
            results = await evalsha_many(self.redis, SHA, SCRIPT, built)
        except TRANSIENT as exc:
            raise StoreUnavailable(f"redis unavailable running project.lua: {exc}") from exc
        for r in results:
            if isinstance(r, TRANSIENT):  # one call failed in transit (a cluster node failing over)
                raise StoreUnavailable(f"redis unavailable running project.lua: {r}") from r
            if isinstance(r, Exception):
                raise r
        return [[int(x) for x in r] for r in results]

    async def load_views(self, name: str, wanted: Sequence[tuple[int, str]]) -> list[tuple[int, Doc]]:
        """Each instance's (projected version, document) for one projection, one round trip."""
        if not wanted:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for p, iid in wanted:
            pipe.hmget(self.vk.view(p, iid), [f"v:{name}", name])
        try:
            rows: list[Any] = await pipe.execute()
        except TRANSIENT as exc:
            raise StoreUnavailable(f"redis unavailable loading views: {exc}") from exc
        return [(int(v or 0), orjson.loads(doc) if doc else None) for v, doc in rows]

    async def read_instances(self, wanted: Sequence[tuple[int, str]]) -> list[list[Applied]]:
        """Whole instance streams, decoded (an unreadable entry ends that instance's list)."""
        if not wanted:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for p, iid in wanted:
            pipe.xrange(self.vk.keys.instance(iid, p), "-", "+")
        try:
            replies: list[Any] = await pipe.execute()
        except TRANSIENT as exc:
            raise StoreUnavailable(f"redis unavailable reading instance streams: {exc}") from exc
        out: list[list[Applied]] = []
        for entries in replies:
            items: list[Applied] = []
            for _eid, fields in entries:
                try:
                    items.append(decode_entry(fields))
                except PoisonMessage:
                    break
            out.append(items)
        return out
