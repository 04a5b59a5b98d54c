"""The outbox relay: moves commands that a decision addressed to instances in
other partitions (a sub-workflow's start, a child's result for its parent)
from the partition outbox, where append.lua wrote them atomically with the
decision, to the target inbox.

At least once: a relay that dies between the XADD and the XACK sends the
command again, and the target ignores the repeat (a second start of the same
child id, a result for an attempt that is no longer running, a seen cmd_id).
"""

from __future__ import annotations

import asyncio
import logging

from engine.config import Settings
from engine.errors import StoreUnavailable
from engine.runtime.consume import Entry, GroupReader, consume
from engine.store.connection import Redis
from engine.store.errors import TRANSIENT
from engine.store.events import Store
from engine.store.keys import RELAY_GROUP, Keys

log = logging.getLogger("foldflow.relay")
_FIELDS = (b"type", b"id", b"data", b"cmd_id")


class OutboxRelay:
    def __init__(self, redis: Redis, keys: Keys, store: Store, consumer: str, settings: Settings) -> None:
        self.redis = redis
        self.keys = keys
        self.store = store
        self.settings = settings
        self.reader = GroupReader(redis, RELAY_GROUP, consumer, [keys.outbox(p) for p in range(keys.partitions)])
        self._inboxes = {keys.inbox(p).encode() for p in range(keys.partitions)}
        self.relayed = 0
        self._stopping = asyncio.Event()

    async def prepare(self) -> None:
        for stream in self.reader.streams:
            await self.store.ensure_group(stream, RELAY_GROUP)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        await consume(self.reader, self.relay, self._stopping, name="relay", batch_size=self.settings.batch_size,
                      block_ms=self.settings.block_ms, claim_idle_ms=self.settings.claim_idle_ms)

    async def relay(self, entries: list[Entry]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        moved = 0
        for stream, entry_id, fields in entries:
            target = fields.get(b"target", b"")
            if target in self._inboxes and all(f in fields for f in _FIELDS[:3]):
                pipe.xadd(target, {f: fields[f] for f in _FIELDS if f in fields})
                moved += 1
            else:
                log.error("outbox entry %s in %s is malformed (target %r); dropped", entry_id, stream, target)
            pipe.xack(stream, RELAY_GROUP, entry_id)
            pipe.xdel(stream, entry_id)
        try:
            await pipe.execute()
        except TRANSIENT as exc:
            raise StoreUnavailable(f"redis unavailable relaying the outbox: {exc}") from exc
        self.relayed += moved
        return moved
