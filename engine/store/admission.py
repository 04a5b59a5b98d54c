"""Concurrency slots in Redis: per (workflow, key) a sorted set of holders (score: admit ms)
and a sorted set of the queue (score: priority, then arrival), under one hash tag
``{<prefix>:conc:<digest>}`` so each script runs unchanged on Redis Cluster
(conc_acquire.lua, conc_release.lua). A global hash indexes every (workflow, key) that
had slots, for the reconciler (engine/workers/admission.py).
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.store.connection import Redis
from engine.store.errors import translate_methods
from engine.store.keys import Keys
from engine.store.lua import Script, ScriptRunner
from engine.store.replies import text

SCRIPTS = ("conc_acquire", "conc_release")


class Slot(msgspec.Struct, frozen=True, kw_only=True):
    """One (workflow, key) as the index records it."""

    workflow: str
    key: str
    limit: int
    at: int = 0  # when an acquire last touched it (ms)


class Acquired(msgspec.Struct, frozen=True, kw_only=True):
    outcome: str  # "run" | "queue" | "full"
    evicted: str | None = None  # cancel_oldest: the holder this one displaced
    granted: list[str] = []  # other queued instances moved into free slots: each needs an `admit`


_encode = msgspec.json.Encoder().encode
_decode_slot = msgspec.json.Decoder(Slot).decode


@translate_methods
class Slots:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._scripts = ScriptRunner(redis)
        self._scripts.scripts = {n: Script(n) for n in SCRIPTS}

    def _keys(self, workflow: str, key: str, *parts: str) -> list[str]:
        digest = self.keys.conc_digest(workflow, key)
        return [self.keys.conc(digest, part) for part in parts]

    async def acquire(self, workflow: str, key: str, instance_id: str, *, limit: int, mode: str, now: int,
                      priority: int = 0) -> Acquired:
        """Take a slot (or queue for one, with mode 'queue'); idempotent per instance id."""
        await self.redis.hset(self.keys.conc_index, self.keys.conc_digest(workflow, key),
                              _encode(Slot(workflow=workflow, key=key, limit=limit, at=now)))
        reply = await self._scripts.run("conc_acquire", self._keys(workflow, key, "holders", "queue", "seq", "evicted"),
                                        [instance_id, limit, mode, now, priority])
        outcome, evicted, *granted = (text(v) for v in reply)
        return Acquired(outcome=outcome, evicted=evicted or None, granted=granted)

    async def release(self, workflow: str, key: str, instance_id: str, *, limit: int, now: int,
                      taken_by: int | None = None) -> list[str]:
        """Free ``instance_id``'s slot or queue place ('' frees none); returns the ids admitted.
        With ``taken_by``, the slot is freed only if it was (re)taken at or before that ms."""
        args: list[str | int] = [instance_id, limit, now]
        if taken_by is not None:
            args.append(taken_by)
        reply = await self._scripts.run("conc_release", self._keys(workflow, key, "holders", "queue", "evicted"), args)
        return [text(v) for v in reply]

    async def index(self) -> dict[str, Slot]:
        raw: dict[Any, Any] = await self.redis.hgetall(self.keys.conc_index)
        return {text(k): _decode_slot(v) for k, v in raw.items()}

    async def holders(self, workflow: str, key: str) -> list[tuple[str, int]]:
        """Who holds a slot, oldest first, with the ms each was admitted."""
        (holders,) = self._keys(workflow, key, "holders")
        rows: list[Any] = await self.redis.zrange(holders, 0, -1, withscores=True)
        return [(text(m), int(s)) for m, s in rows]

    async def queued(self, workflow: str, key: str) -> list[str]:
        """Who waits, in the order they will be admitted."""
        (queue,) = self._keys(workflow, key, "queue")
        return [text(m) for m in await self.redis.zrange(queue, 0, -1)]

    async def forget(self, digest: str) -> None:
        await self.redis.hdel(self.keys.conc_index, digest)
