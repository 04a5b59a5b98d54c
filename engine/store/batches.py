"""Batch records, their matched items and failures (streams.md, "Batch operations"):
the Redis side of `POST /batches`, `foldflow batch ...` and the `foldflow batches` runners.

Per batch, under one hash tag ``{<prefix>:batch:<id>}`` (so batch.lua runs on Cluster):
``rec`` (hash: the spec, state, counters, cursors, times), ``items`` (list of the
matched execution ids, in match order), ``seen`` (set: ids matched so far, while
matching), ``failures`` (stream: execution_id, reason) and ``lease`` (the runner that
advances it). Globally: ``<prefix>:batches`` (sorted set of every batch by creation
ms) and ``<prefix>:batches:active`` (set of those matching or running).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import msgspec

from engine.core.batches import ACTIVE_STATES, BatchSpec
from engine.errors import NotFound, StoreUnavailable
from engine.store.connection import Redis
from engine.store.errors import TRANSIENT
from engine.store.keys import Keys
from engine.store.lua import Script, ScriptRunner
from engine.store.replies import text

T = TypeVar("T")
PARTS = ("rec", "lease", "items", "seen", "failures")
COUNTERS = ("matched", "done", "failed", "cursor")
_encode = msgspec.json.Encoder().encode
_decode_spec = msgspec.json.Decoder(BatchSpec).decode


class Refused(Exception):
    """batch.lua refused a step: ``why`` is lease | state | cursor, ``value`` what it found."""

    def __init__(self, why: str, value: str = "") -> None:
        super().__init__(f"{why} {value}".strip())
        self.why, self.value = why, value


class Batch(msgspec.Struct, frozen=True, kw_only=True):
    """A batch record as stored."""

    id: str
    spec: BatchSpec
    state: str
    matched: int = 0
    done: int = 0
    failed: int = 0
    cursor: int = 0
    """Items (in the items list) handled so far."""
    match_cursor: str = ""
    created_ms: int
    updated_ms: int
    finished_ms: int | None = None
    error: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def _batch(raw: dict[str, str]) -> Batch:
    nums = {k: int(raw.get(k) or 0) for k in COUNTERS}
    return Batch(id=raw["id"], spec=_decode_spec(raw["spec"]), state=raw["state"], **nums,
                 match_cursor=raw.get("match_cursor", ""), created_ms=int(raw["created_ms"]),
                 updated_ms=int(raw.get("updated_ms") or raw["created_ms"]),
                 finished_ms=int(raw["finished_ms"]) if raw.get("finished_ms") else None, error=raw.get("error"))


class BatchStore(ScriptRunner):
    def __init__(self, redis: Redis, keys: Keys) -> None:
        super().__init__(redis)
        self.keys = keys
        self.scripts = {"batch": Script("batch")}

    def _keys(self, batch_id: str) -> list[str]:
        return [self.keys.batch(batch_id, part) for part in PARTS]

    async def _do(self, what: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except TRANSIENT as exc:
            raise StoreUnavailable(f"redis unavailable {what}: {exc}") from exc

    # -- records ---------------------------------------------------------------
    async def create(self, spec: BatchSpec, now_ms: int, batch_id: str | None = None) -> Batch:
        """Write a new batch (state matching) and put it in both indexes."""
        bid = batch_id or uuid.uuid4().hex
        fields = {"id": bid, "spec": _encode(spec).decode(), "state": "matching", "matched": 0, "done": 0,
                  "failed": 0, "cursor": 0, "match_cursor": "", "created_ms": now_ms, "updated_ms": now_ms}
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.batch(bid, "rec"), mapping=fields)  # type: ignore[arg-type]
        pipe.zadd(self.keys.batches, {bid: now_ms})
        pipe.sadd(self.keys.batches_active, bid)
        await self._do(f"creating batch {bid}", pipe.execute())
        return _batch({k: str(v) for k, v in fields.items()})

    async def get(self, batch_id: str) -> Batch | None:
        raw: Any = await self._do(f"reading batch {batch_id}", self.redis.hgetall(self.keys.batch(batch_id, "rec")))
        fields = {text(k): text(v) for k, v in (raw or {}).items()}
        return _batch(fields) if "spec" in fields else None

    async def found(self, batch_id: str) -> Batch:
        batch = await self.get(batch_id)
        if batch is None:
            raise NotFound(f"no batch {batch_id!r}")
        return batch

    async def page(self, limit: int, after: str | None = None) -> tuple[list[Batch], str | None]:
        """Batches newest first; ``after`` is the last id of the previous page."""
        start = 0
        if after is not None:
            rank = await self._do("paging batches", self.redis.zrevrank(self.keys.batches, after))
            if rank is None:
                raise NotFound(f"no batch {after!r} to page after")
            start = int(rank) + 1  # type: ignore[arg-type]
        ids = [text(i) for i in await self._do("paging batches",
                                                self.redis.zrevrange(self.keys.batches, start, start + limit))]
        pipe = self.redis.pipeline(transaction=False)
        for bid in ids[:limit]:
            pipe.hgetall(self.keys.batch(bid, "rec"))
        rows: Any = await self._do("paging batches", pipe.execute())
        records = [{text(k): text(v) for k, v in (raw or {}).items()} for raw in rows]
        batches = [_batch(f) for f in records if "spec" in f]
        return batches, (ids[limit - 1] if len(ids) > limit else None)

    async def items(self, batch_id: str, start: int, count: int) -> list[str]:
        got: Any = await self._do("reading batch items", self.redis.lrange(self.keys.batch(batch_id, "items"),
                                                                           start, start + count - 1))
        return [text(i) for i in got]

    async def failures(self, batch_id: str, after: str | None, limit: int) -> list[tuple[str, str, str]]:
        """(entry id, execution id, reason) after an entry id, oldest first."""
        got: Any = await self._do("reading batch failures", self.redis.xrange(
            self.keys.batch(batch_id, "failures"), min=f"({after}" if after else "-", max="+", count=limit))
        out = []
        for entry_id, fields in got:
            f = {text(k): text(v) for k, v in fields.items()}
            out.append((text(entry_id), f.get("execution_id", ""), f.get("reason", "")))
        return out

    async def active(self) -> list[str]:
        got: Any = await self._do("reading active batches", self.redis.smembers(self.keys.batches_active))
        return sorted(text(i) for i in got)

    async def deactivate(self, batch_id: str) -> None:
        await self._do("retiring a batch", self.redis.srem(self.keys.batches_active, batch_id))

    async def fail(self, batch_id: str, error: str, now_ms: int) -> None:
        """A batch that cannot go on (its query no longer runs): state failed, with why."""
        await self._do("failing a batch", self.redis.hset(self.keys.batch(batch_id, "rec"), mapping={
            "state": "failed", "error": error, "updated_ms": now_ms, "finished_ms": now_ms}))
        await self.deactivate(batch_id)

    # -- batch.lua -------------------------------------------------------------
    async def _script(self, batch_id: str, op: str, token: str, ttl_ms: int, now_ms: int, *args: Any) -> Any:
        return await self.run("batch", self._keys(batch_id), [op, token, ttl_ms, now_ms, *args])

    async def acquire(self, batch_id: str, token: str, ttl_ms: int, now_ms: int) -> bool:
        return bool(await self._script(batch_id, "acquire", token, ttl_ms, now_ms))

    async def release(self, batch_id: str, token: str) -> None:
        await self._script(batch_id, "release", token, 0, 0)

    async def cancel(self, batch_id: str, now_ms: int) -> tuple[bool, str]:
        """(cancelled now, state after): a final batch stays as it is."""
        await self.found(batch_id)
        reply = await self._script(batch_id, "cancel", "", 0, now_ms)
        ok = text(reply[0]) == "ok"
        if ok:
            await self.deactivate(batch_id)
        return ok, text(reply[1])

    @staticmethod
    def _reply(reply: Any) -> str:
        if text(reply[0]) != "ok":
            raise Refused(text(reply[0]), text(reply[1]) if len(reply) > 1 else "")
        return text(reply[1])

    async def commit_match(self, batch_id: str, token: str, ttl_ms: int, now_ms: int, expected: str, new: str,
                           last: bool, ids: Sequence[str]) -> int:
        """Append a page of matched ids and move the match cursor; returns matched so far."""
        reply = await self._script(batch_id, "match", token, ttl_ms, now_ms, expected, new, int(last), *ids)
        return int(self._reply(reply))

    async def commit_apply(self, batch_id: str, token: str, ttl_ms: int, now_ms: int, expected: int, new: int,
                           done: int, failures: Sequence[tuple[str, str]]) -> str:
        """Count a chunk of items handled, record its failures; returns the state after."""
        pairs = [x for pair in failures for x in pair]
        reply = await self._script(batch_id, "apply", token, ttl_ms, now_ms, expected, new, done, len(failures),
                                   *pairs)
        return self._reply(reply)
