"""Where subscriptions read from: one execution's instance stream, or every
partition feed. An execution's first batch is an XRANGE, so
that an unknown id is a 404 before the response starts, and so is its catch-up;
its live reads belong to the instance's Tail (tail.py). The feed source parks its
own XREAD BLOCK on the hub's blocking client, so an idle subscription costs one
parked command, not a poll.

Feeds on Redis Cluster live in different hash slots and one XREAD may not name
two slots, so there the feed source keeps one blocking read per partition in
flight and takes whichever answers first."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from engine.api.live.cursor import ORIGIN, encode_positions, id_key
from engine.api.live.envelope import Context, context_of, envelope, is_lifecycle, lifecycle_type, matches
from engine.api.live.sse import Message
from engine.client import FINAL_STATUSES
from engine.core.evolve import fold_stored
from engine.core.ids import INSTANCE_ID_RE
from engine.core.model import INITIAL, Event, decode_event
from engine.errors import InvalidInput, PoisonMessage, UnknownInstance
from engine.store.connection import Redis, is_cluster
from engine.store.events import decode_stored
from engine.store.keys import Keys
from engine.store.replies import text

log = logging.getLogger("foldflow.api.live")

BLOCK_MS = 10_000
"""How long one XREAD parks before it is sent again; the blocking client's read timeout is longer
(routes/live.py: connect_blocking's read_timeout_s)."""
CHUNK = 256
"""Entries per read: a longer history comes in several reads, paced by the client."""

Entries = Sequence[tuple[Any, Mapping[bytes, Any]]]


class Contexts:
    """Instance contexts (workflow, version, correlation id, context) by instance id: a
    workflow.created never changes, so one process-wide LRU serves every feed subscriber."""

    def __init__(self, size: int = 10_000) -> None:
        self._items: OrderedDict[str, Context] = OrderedDict()
        self._size = size

    def get(self, iid: str) -> Context | None:
        found = self._items.get(iid)
        if found is not None:
            self._items.move_to_end(iid)
        return found

    def put(self, iid: str, ctx: Context) -> None:
        self._items[iid] = ctx
        self._items.move_to_end(iid)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


def stream_entries(reply: Any) -> dict[str, Entries]:
    """XREAD's reply (a list of [key, entries] under RESP2, a map under RESP3) by key."""
    if not reply:
        return {}
    pairs = reply.items() if isinstance(reply, dict) else reply
    return {text(key): (entries[0] if entries and isinstance(entries[0], list) else entries) for key, entries in pairs}


class ExecutionSource:
    """Every event of one execution after `after`, until it is final (or caught up, with follow=False).

    `read` catches up with XRANGE, as the client takes the
    messages; once it is caught up the subscription follows the instance's Tail
    (tail.py), whose one blocking read serves every subscriber of the instance."""

    shared = True

    def __init__(self, redis: Redis, blocking: Redis, keys: Keys, prefix: str, iid: str,
                 after: str | None = None, follow: bool = True, chunk: int = CHUNK) -> None:
        if not INSTANCE_ID_RE.match(iid):
            raise InvalidInput(f"invalid execution id {iid[:80]!r}: 1-200 of A-Z a-z 0-9 _ . : @ + - "
                               "(starting alphanumeric)")
        self.redis, self.blocking, self.keys, self.prefix, self.iid = redis, blocking, keys, prefix, iid
        self.key = keys.instance(iid)
        self.after = id_key(after) if after else None
        self.follow, self.chunk = follow, chunk
        self.last = ORIGIN
        self.ctx: Context | None = None
        self.state = INITIAL
        self.closed: str | None = None
        self._first: Entries | None = None

    def cancel(self) -> None:
        """Nothing in flight outside the reader task."""

    def fork(self) -> ExecutionSource:
        """A source at the same position and state, sending everything after it (a Tail's)."""
        twin = ExecutionSource(self.redis, self.blocking, self.keys, self.prefix, self.iid, chunk=self.chunk)
        twin.last, twin.ctx, twin.state = self.last, self.ctx, self.state
        return twin

    async def open(self) -> ExecutionSource:
        """Reads the first batch; UnknownInstance (404) when the execution has no events."""
        first: Any = await self.redis.xrange(self.key, "-", "+", count=self.chunk)
        self._first = first
        if not self._first:
            raise UnknownInstance(f"no execution {self.iid!r}")
        return self

    async def read(self) -> tuple[list[Message], bool]:
        entries: Any = self._first
        if entries is not None:
            self._first = None
        else:
            entries = await self.redis.xrange(self.key, f"({self.last}", "+", count=self.chunk)
        messages = self._take(entries)
        caught_up = len(entries) < self.chunk
        if caught_up and (self.final or not self.follow):
            self.closed = self.final_reason if self.follow else "follow=false: every event so far was sent"
        return messages, caught_up

    async def read_until(self, last: str) -> list[Message]:
        """The entries after this source's position up to `last` (a Tail's position), closing when final."""
        entries: Any = await self.redis.xrange(self.key, f"({self.last}", last)
        messages = self._take(entries)
        if self.final:
            self.closed = self.final_reason
        return messages

    async def read_live(self) -> list[Message]:
        """What is appended next: one blocking XREAD on the hub's pool."""
        reply = await self.blocking.xread({self.key: self.last}, count=self.chunk, block=BLOCK_MS)
        return self._take(stream_entries(reply).get(self.key, []))

    @property
    def final(self) -> bool:
        return self.state.status in FINAL_STATUSES

    @property
    def final_reason(self) -> str:
        return f"execution {self.iid} is {self.state.status}: no more events"

    def _take(self, entries: Entries) -> list[Message]:
        messages, folded = [], []
        for raw_id, fields in entries:
            eid = self.last = text(raw_id)
            try:
                _, event, ts = decode_stored(self.iid, eid, fields)
            except PoisonMessage as exc:
                log.warning("%s", exc)
                continue
            folded.append((event, ts))
            self.ctx = self.ctx or context_of(event)
            if self.after is None or id_key(eid) > self.after:
                doc = envelope(self.prefix, self.iid, self.ctx, _version(fields), ts, event)
                messages.append(Message(eid, doc["type"], doc))
        if folded:
            self.state = fold_stored(self.state, folded)
        return messages


def _version(fields: Mapping[bytes, Any]) -> int:
    try:
        return int(fields[b"version"])
    except (KeyError, ValueError, TypeError):
        return 0


class FeedSource:
    """The lifecycle events of every execution, from every partition feed, that pass the filters.
    Filters differ per subscriber, so each one keeps its own blocking read."""

    shared = False

    def __init__(self, redis: Redis, blocking: Redis, keys: Keys, prefix: str, contexts: Contexts, *,
                 positions: list[str] | None, correlation_id: str | None = None, workflow: str | None = None,
                 types: frozenset[str] = frozenset(), chunk: int = CHUNK) -> None:
        self.redis, self.blocking, self.keys, self.prefix, self.contexts = redis, blocking, keys, prefix, contexts
        self.positions = positions
        self.filters: dict[str, Any] = {"correlation_id": correlation_id, "workflow": workflow, "types": types}
        self.chunk = chunk
        self.closed: str | None = None
        self._reads: dict[int, asyncio.Task[Any]] = {}

    def cancel(self) -> None:
        for task in self._reads.values():
            task.cancel()
        self._reads.clear()

    async def open(self) -> FeedSource:
        """Without a cursor: from now, i.e. after each feed's last entry."""
        if self.positions is None:
            pipe = self.redis.pipeline(transaction=False)
            for p in range(self.keys.partitions):
                pipe.xrevrange(self.keys.feed(p), "+", "-", count=1)
            lasts = await pipe.execute()
            self.positions = [text(last[0][0]) if last else ORIGIN for last in lasts]
        return self

    @property
    def cursor(self) -> str:
        assert self.positions is not None
        return encode_positions(self.positions)

    async def read(self) -> tuple[list[Message], bool]:
        batches = await (self._read_apart() if is_cluster(self.blocking) else self._read_together())
        messages: list[Message] = []
        for p, entries in batches:
            messages.extend(await self._take(p, entries))
        return messages, all(len(entries) < self.chunk for _, entries in batches)

    async def _read_together(self) -> list[tuple[int, Entries]]:
        assert self.positions is not None
        keys: dict[Any, Any] = {self.keys.feed(p): pos for p, pos in enumerate(self.positions)}
        reply = stream_entries(await self.blocking.xread(keys, count=self.chunk, block=BLOCK_MS))
        return [(p, reply[self.keys.feed(p)]) for p in range(self.keys.partitions) if self.keys.feed(p) in reply]

    async def _read_apart(self) -> list[tuple[int, Entries]]:
        assert self.positions is not None
        for p, pos in enumerate(self.positions):
            if p not in self._reads:
                self._reads[p] = asyncio.ensure_future(
                    self.blocking.xread({self.keys.feed(p): pos}, count=self.chunk, block=BLOCK_MS))
        done, _ = await asyncio.wait(self._reads.values(), return_when=asyncio.FIRST_COMPLETED)
        out = []
        for p in [p for p, task in self._reads.items() if task in done]:
            out.append((p, stream_entries(self._reads.pop(p).result()).get(self.keys.feed(p), [])))
        return out

    async def _take(self, p: int, entries: Entries) -> list[Message]:
        assert self.positions is not None
        wanted: list[tuple[str, str, int, int, Event]] = []
        for raw_id, fields in entries:
            eid = self.positions[p] = text(raw_id)
            try:
                iid, event = text(fields[b"id"]), decode_event(fields[b"data"])
                ts = int(fields[b"ts"])
            except Exception as exc:
                log.warning("unreadable feed entry %s of partition %d: %s", eid, p, exc)
                continue
            ctx = context_of(event)
            if ctx is not None:
                self.contexts.put(iid, ctx)
            types = self.filters["types"]
            if is_lifecycle(event) and (not types or lifecycle_type(event) in types):
                wanted.append((eid, iid, _version(fields), ts, event))
        await self._learn({iid for _, iid, _, _, _ in wanted})
        return self._messages(p, wanted)

    def _messages(self, p: int, wanted: list[tuple[str, str, int, int, Event]]) -> list[Message]:
        assert self.positions is not None
        out, after = [], list(self.positions)
        for eid, iid, version, ts, event in wanted:
            doc = envelope(self.prefix, iid, self.contexts.get(iid), version, ts, event)
            if matches(doc, **self.filters):
                after[p] = eid
                out.append(Message(encode_positions(after), doc["type"], doc))
        return out

    async def _learn(self, iids: set[str]) -> None:
        """The contexts of instances whose workflow.created came before this subscription: their first event."""
        missing = [iid for iid in iids if self.contexts.get(iid) is None]
        if not missing:
            return
        pipe = self.redis.pipeline(transaction=False)
        for iid in missing:
            pipe.xrange(self.keys.instance(iid), "-", "+", count=1)
        for iid, first in zip(missing, await pipe.execute()):
            ctx = None
            if first:
                try:
                    ctx = context_of(decode_stored(iid, first[0][0], first[0][1])[1])
                except PoisonMessage:
                    ctx = None
            self.contexts.put(iid, ctx or {})
