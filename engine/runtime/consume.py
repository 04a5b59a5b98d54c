"""Consumer-group plumbing shared by the engine, router and activity workers:
blocking batched reads over many streams, and reclaiming what dead consumers
left pending (XAUTOCLAIM with its cursor carried between calls), and
recreating a consumer group that vanished (NOGROUP) instead of failing forever."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from engine.errors import StoreUnavailable
from engine.store.connection import Redis, is_cluster
from engine.store.errors import REFUSED, TRANSIENT, is_nogroup
from engine.store.replies import text

# One entry as read: (stream key, entry id, fields).
Entry = tuple[str, str, dict[bytes, bytes]]
log = logging.getLogger("foldflow.consumer")
_POLL_MIN_S = 0.002
_POLL_MAX_S = 0.05



class GroupReader:
    """Reads one consumer group over a fixed set of streams."""

    def __init__(self, redis: Redis, group: str, consumer: str, streams: Sequence[str]) -> None:
        self.redis = redis
        self.group = group
        self.consumer = consumer
        self.streams = list(streams)
        # XAUTOCLAIM scans at most COUNT*10 pending entries per call: the
        # cursor must be carried, or entries past the first window starve.
        self._cursors = {s: "0-0" for s in self.streams}
        # On Redis Cluster one XREADGROUP cannot name streams in different slots
        # (CROSSSLOT), so each stream is read on its own, pipelined per node.
        self.cluster = is_cluster(redis)
        self._idle_s = _POLL_MIN_S
        # ops: groups found missing (NOGROUP) and recreated; an alarm, never expected.
        self.nogroup_recoveries = 0

    def set_streams(self, streams: Sequence[str]) -> None:
        self.streams = list(streams)
        self._cursors = {s: self._cursors.get(s, "0-0") for s in self.streams}

    async def claim_all(self, stream: str, count: int = 500) -> list[tuple[Entry, int]]:
        """Every entry pending in stream for any consumer, claimed now, in id order.

        Used when a partition changes hands: what the last owner left pending is
        older than anything unread, so it is decided first.
        """
        out: list[tuple[Entry, int]] = []
        cursor = "0-0"
        while True:
            try:
                reply = await self.redis.xautoclaim(stream, self.group, self.consumer, 0, cursor, count=count)
            except TRANSIENT as exc:
                raise StoreUnavailable(f"redis unavailable claiming {stream}: {exc}") from exc
            except REFUSED as exc:
                if not is_nogroup(exc):
                    raise
                await self.recover([stream], "XAUTOCLAIM")
                return out  # a recreated group has nothing pending
            claimed = [(stream, text(eid), fields) for eid, fields in reply[1] if fields is not None]
            if claimed:
                counts = await self.delivery_counts(stream, [e[1] for e in claimed])
                out += [(e, counts.get(e[1], 1)) for e in claimed]
            cursor = text(reply[0])
            if cursor == "0-0":
                return out

    async def read(self, count: int, block_ms: int | None, only: Sequence[str] | None = None) -> list[Entry]:
        """Up to count new entries per stream (of ``only`` when given: some of the streams, e.g.
        priority lanes read before the rest; block_ms None: no wait)."""
        streams = self.streams if only is None else list(only)
        if not streams:
            # Nothing to read yet (an HTTP executor before any service resolves): wait as a
            # blocking read would, or the caller's loop spins and starves the event loop.
            await asyncio.sleep((block_ms or 0) / 1000 or _POLL_MAX_S)
            return []
        if self.cluster:
            return await self._poll(streams, count, block_ms or 0)
        try:
            reply = await self.redis.xreadgroup(
                self.group, self.consumer, {s: ">" for s in streams}, count=count, block=block_ms
            )
        except TRANSIENT as exc:
            raise StoreUnavailable(f"redis unavailable reading {self.group}: {exc}") from exc
        except REFUSED as exc:
            if not is_nogroup(exc):
                raise
            await self.recover(streams, "XREADGROUP")
            return []
        return _entries(reply)

    async def _poll(self, streams: list[str], count: int, block_ms: int) -> list[Entry]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block_ms / 1000
        while True:
            pipe = self.redis.pipeline(transaction=False)
            for stream in streams:
                pipe.xreadgroup(self.group, self.consumer, {stream: ">"}, count=count)
            try:
                replies = await pipe.execute(raise_on_error=False)
            except TRANSIENT as exc:
                raise StoreUnavailable(f"redis unavailable reading {self.group}: {exc}") from exc
            missing = [s for s, r in zip(streams, replies) if is_nogroup(r)]
            for r in replies:
                if isinstance(r, TRANSIENT):
                    raise StoreUnavailable(f"redis unavailable reading {self.group}: {r}") from r
                if isinstance(r, Exception) and not is_nogroup(r):
                    raise r
            if missing:
                await self.recover(missing, "XREADGROUP")
            entries = [e for reply in replies if not isinstance(reply, Exception) for e in _entries(reply)]
            remaining = deadline - loop.time()
            if entries or remaining <= 0:
                self._idle_s = _POLL_MIN_S
                return entries
            # Nothing yet: poll again soon, less often the longer it stays quiet.
            await asyncio.sleep(min(self._idle_s, remaining))
            self._idle_s = min(self._idle_s * 2, _POLL_MAX_S)

    async def reclaim(self, min_idle_ms: int, count: int = 100) -> list[tuple[Entry, int]]:
        """Claim entries idle longer than min_idle_ms; each with its delivery count."""
        out: list[tuple[Entry, int]] = []
        for stream in self.streams:
            try:
                reply = await self.redis.xautoclaim(
                    stream, self.group, self.consumer, min_idle_ms, self._cursors[stream], count=count
                )
            # TRANSIENT first: TryAgainError (a slot migrating, a failover) is a refusal (ResponseError) too,
            # and was re-raised as a crash of the loop instead of backing off.
            except TRANSIENT as exc:
                raise StoreUnavailable(f"redis unavailable reclaiming {stream}: {exc}") from exc
            except REFUSED as exc:
                if not is_nogroup(exc):
                    raise
                await self.recover([stream], "XAUTOCLAIM")
                continue
            self._cursors[stream] = text(reply[0])
            claimed = [(stream, text(eid), fields) for eid, fields in reply[1] if fields is not None]
            if not claimed:
                continue
            counts = await self.delivery_counts(stream, [e[1] for e in claimed])
            out += [(e, counts.get(e[1], 1)) for e in claimed]
        return out

    async def recover(self, streams: Sequence[str], during: str) -> int:
        """NOGROUP: this group, or its whole stream, is gone (FLUSHDB, DEL, XGROUP
        DESTROY, eviction). Raise the alarm and recreate the group at ``0``, never
        ``$``: what is still in the stream is delivered again, which the workers
        absorb (repeats are ignored), whereas ``$`` would silently skip it.

        Returns how many groups this call recreated (0: another worker was
        first). StoreUnavailable when Redis refuses to recreate one, so the
        caller's loop backs off instead of spinning on NOGROUP.
        """
        created = 0
        for stream in streams:
            try:
                await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except TRANSIENT as exc:
                raise StoreUnavailable(f"redis unavailable recreating group {self.group} on {stream}: {exc}") from exc
            except REFUSED as exc:
                if "BUSYGROUP" in str(exc):
                    continue  # another worker recreated it first
                raise StoreUnavailable(
                    f"consumer group {self.group} on {stream} is missing and could not be recreated: {exc}"
                ) from exc
            created += 1
            self._cursors[stream] = "0-0"
            log.error(
                "ALARM: consumer group %s on %s was missing (NOGROUP on %s: the stream was flushed or deleted, or "
                "the group destroyed); recreated at 0, so entries still in the stream are delivered again",
                self.group, stream, during, extra={"group": self.group, "stream": stream},
            )
        self.nogroup_recoveries += created
        return created

    async def delivery_counts(self, stream: str, ids: list[str]) -> dict[str, int]:
        """Each entry's delivery count, asked one entry at a time (pipelined): a
        range query over the ids would be cut short by this consumer's own other
        pending entries in between."""
        pipe = self.redis.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(stream, self.group, min=entry_id, max=entry_id, count=1)
        try:
            rows: Any = await pipe.execute()
        except TRANSIENT as exc:  # as for the claim it follows: back off, do not crash the loop
            raise StoreUnavailable(f"redis unavailable reading delivery counts of {stream}: {exc}") from exc
        return {
            text(found[0]["message_id"]): int(found[0]["times_delivered"]) for found in rows if found
        }


def _entries(reply: Any) -> list[Entry]:
    out: list[Entry] = []
    if not reply:
        return out
    items = reply.items() if isinstance(reply, dict) else reply
    for stream, entries in items:
        if entries and isinstance(entries[0], list) and len(entries) == 1 and isinstance(entries[0][0], list):
            entries = entries[0]  # RESP3 nests once more
        name = text(stream)
        out += [(name, text(eid), fields) for eid, fields in entries if fields is not None]
    return out


async def consume(reader: GroupReader, handle: Callable[[list[Entry]], Awaitable[Any]], stopping: asyncio.Event,
                  *, name: str, batch_size: int, block_ms: int, claim_idle_ms: int) -> None:
    """The loop of a side consumer (router, relay): read, reclaim what dead consumers
    left, handle; back off while Redis is away; never die on one bad batch."""
    log = logging.getLogger(f"foldflow.{name}")
    loop = asyncio.get_running_loop()
    last_reclaim = 0.0
    backoff = 0.05
    while not stopping.is_set():
        try:
            entries = await reader.read(batch_size, min(block_ms, 500))
            if loop.time() - last_reclaim > max(0.2, claim_idle_ms / 2000):
                last_reclaim = loop.time()
                entries += [e for e, _ in await reader.reclaim(claim_idle_ms)]
            if entries:
                await handle(entries)
            backoff = 0.05
        except StoreUnavailable as exc:
            log.warning("%s: redis unavailable, retrying in %.2fs: %s", name, backoff, exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
        except Exception:
            log.exception("%s batch failed; entries stay pending", name)
            await asyncio.sleep(1.0)
