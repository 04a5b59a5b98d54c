"""Routes external events (the global events stream) to the instances waiting
for them, through the per-partition wait index: for each filter shape
registered for the event's type, the event's own values name the index set to
read. No instance is ever scanned.

Delivery is at least once: a router that dies between writing the commands and
acknowledging the event routes it again, and the instances ignore the repeat
(the wait is no longer open; the command's cmd_id names the event entry).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from engine.config import Settings
from engine.core.codec import MAX_CORRELATION_ID_CHARS, MAX_TYPE_CHARS, check_length, command_fields
from engine.errors import PoisonMessage, StoreUnavailable
from engine.runtime.consume import Entry, GroupReader, consume
from engine.store.connection import Redis
from engine.store.errors import TRANSIENT
from engine.store.events import Store
from engine.store.keys import ROUTER_GROUP, Keys

log = logging.getLogger("foldflow.router")


class EventRouter:
    def __init__(self, redis: Redis, keys: Keys, store: Store, consumer: str, settings: Settings) -> None:
        self.redis = redis
        self.keys = keys
        self.store = store
        self.settings = settings
        self.reader = GroupReader(redis, ROUTER_GROUP, consumer, [keys.events])
        self.routed = 0
        self.dead_lettered = 0
        self._stopping = asyncio.Event()

    @property
    def dlq(self) -> str:
        return self.keys.events_dlq

    async def prepare(self) -> None:
        await self.store.ensure_group(self.keys.events, ROUTER_GROUP)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        await consume(self.reader, self.route, self._stopping, name="router", batch_size=self.settings.batch_size,
                      block_ms=self.settings.block_ms, claim_idle_ms=self.settings.claim_idle_ms)

    async def route(self, entries: list[Entry]) -> int:
        decoded: list[tuple[str, str, dict[str, Any], str | None]] = []
        bad: list[tuple[str, dict[bytes, bytes], str]] = []
        for _stream, entry_id, fields in entries:
            try:
                decoded.append((entry_id, *_decode_event(fields, self.settings.max_payload_bytes)))
            except PoisonMessage as exc:
                bad.append((entry_id, fields, str(exc)))
        if bad:
            await self._dead_letter(bad)
        commands = await self._match(decoded)
        pipe = self.redis.pipeline(transaction=False)
        for p, command in commands:
            pipe.xadd(self.keys.inbox(p), command)
        if decoded:
            pipe.xack(self.keys.events, ROUTER_GROUP, *[d[0] for d in decoded])
        try:
            await pipe.execute()
        except TRANSIENT as exc:
            raise StoreUnavailable(f"redis unavailable routing events: {exc}") from exc
        self.routed += len(commands)
        return len(commands)

    async def _shapes(self, types: list[str]) -> tuple[dict[str, list[tuple[str, ...]]],
                                                       dict[tuple[str, int], list[tuple[str, ...]]]]:
        """Per type: the filter shapes definitions wait with, and per partition those of open waits."""
        P = self.keys.partitions
        pipe = self.redis.pipeline(transaction=False)
        for etype in types:
            pipe.smembers(self.keys.event_shapes(etype))
            for p in range(P):
                pipe.smembers(self.keys.wait_shapes(p, etype))
        replies = await pipe.execute()
        indexed: dict[str, list[tuple[str, ...]]] = {}
        shapes: dict[tuple[str, int], list[tuple[str, ...]]] = {}
        for i, etype in enumerate(types):
            row = replies[i * (P + 1): (i + 1) * (P + 1)]
            indexed[etype] = [tuple(orjson.loads(m)) for m in row[0]]
            for p in range(P):
                shapes[(etype, p)] = [tuple(orjson.loads(m)) for m in row[p + 1]]
        return indexed, shapes

    async def _match(self, decoded: list[tuple[str, str, dict[str, Any], str | None]]) -> list[tuple[int, dict[Any, Any]]]:
        P = self.keys.partitions
        types = sorted({etype for _, etype, _, _ in decoded})
        if not types:
            return []
        indexed, shapes = await self._shapes(types)
        pipe = self.redis.pipeline(transaction=False)
        # First remember each event under every filter shape a definition waits with, so a
        # wait that begins after this moment finds it (no lost wake-ups) ...
        horizon = int(decoded[-1][0].split("-")[0]) - self.settings.event_retention_ms
        for entry_id, etype, data, _ in decoded:
            for shape in indexed[etype]:
                if all(f in data for f in shape):
                    key = self.keys.event_index(etype, shape, [data[f] for f in shape])
                    pipe.zadd(key, {entry_id: int(entry_id.split("-")[0])})
                    pipe.zremrangebyscore(key, "-inf", horizon)
                    pipe.pexpire(key, self.settings.event_retention_ms)
        writes = len(pipe)
        # ... then deliver it to every wait already open. Redis runs a pipeline in
        # order, so a wait registered too late for this lookup finds the index entry.
        lookups: list[tuple[int, str, str, dict[str, Any], str | None]] = []
        for entry_id, etype, data, corr in decoded:
            for p in range(P):
                for shape in shapes[(etype, p)]:
                    if all(f in data for f in shape):
                        pipe.smembers(self.keys.wait_index(p, etype, shape, [data[f] for f in shape]))
                        lookups.append((p, entry_id, etype, data, corr))
        if not len(pipe):
            return []
        replies = (await pipe.execute())[writes:]
        commands: list[tuple[int, dict[Any, Any]]] = []
        for (p, entry_id, etype, data, corr), members in zip(lookups, replies):
            for member in members:
                iid, step, attempt = orjson.loads(member)
                commands.append((p, event_command(iid, step, attempt, etype, entry_id, data, corr)))
        return commands

    async def _dead_letter(self, bad: list[tuple[str, dict[bytes, bytes], str]]) -> None:
        """The same letter as every other worker's (dead_letter.lua), so `foldflow dlq` reads,
        filters and replays the router's as it does theirs; the delivery counts are one extra
        round trip, paid only when an event is unreadable."""
        deliveries = await self.reader.delivery_counts(self.keys.events, [entry_id for entry_id, _, _ in bad])
        await self.store.dead_letter_many(
            [(self.keys.events, self.dlq, ROUTER_GROUP, entry_id, reason, fields, deliveries.get(entry_id, 1))
             for entry_id, fields, reason in bad],
            self.reader.consumer, time.time_ns() // 1_000_000,
        )
        for entry_id, _, reason in bad:
            log.warning("dead-lettered event %s: %s", entry_id, reason)
        self.dead_lettered += len(bad)


def _decode_event(fields: dict[bytes, bytes], max_bytes: int) -> tuple[str, dict[str, Any], str | None]:
    etype = fields.get(b"type")
    if not etype:
        raise PoisonMessage("missing field 'type'")
    check_length("type", etype.decode(errors="replace"), MAX_TYPE_CHARS)
    raw = fields.get(b"data", b"{}")
    if len(raw) > max_bytes:
        raise PoisonMessage(f"data is {len(raw)} bytes, over the limit of {max_bytes}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PoisonMessage(f"data is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PoisonMessage(f"data must be a JSON object, got {type(data).__name__}")
    corr = fields.get(b"correlation_id")
    if corr:
        check_length("correlation_id", corr.decode(errors="replace"), MAX_CORRELATION_ID_CHARS)
    return etype.decode(errors="replace"), data, corr.decode(errors="replace") if corr else None


def event_command(iid: str, step: str, attempt: int, etype: str, entry_id: str, data: dict[str, Any],
                  correlation_id: str | None) -> dict[Any, Any]:
    """The inbox command that delivers one external event to one waiting step."""
    body: dict[str, Any] = {"step": step, "attempt": attempt, "event_type": etype, "event_id": entry_id, "data": data}
    if correlation_id:
        body["correlation_id"] = correlation_id
    return command_fields("event", iid, body, f"ev:{entry_id}:{step}:{attempt}")


def decode_event_fields(fields: dict[bytes, bytes], max_bytes: int) -> tuple[str, dict[str, Any], str | None]:
    return _decode_event(fields, max_bytes)
