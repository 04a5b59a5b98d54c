"""Dead letters: list, show, replay and drop what the workers
moved to ``{ff:p}:dlq`` and ``ff:events:dlq`` (streams.md, "Dead letters").
In the store layer so `foldflow dlq` (engine/ops) and the API's dead-letter
routes (engine/api/ui/dlq_routes.py) share one implementation.

Replay puts the original fields back on the dead letter's ``source`` stream as
a new entry (a new id: the workers read it as fresh input; a ``cmd_id`` it
carries still makes a repeat harmless) and deletes the dead letter. Only a
source that is one of this deployment's partition inboxes, task streams or its
external events stream is accepted. Anything else (a partition feed a
projector could not read, a key of another prefix, a hand-written ``source``)
is refused: writing there would forge history or feed nobody.

Atomicity: a partition dlq shares its hash tag with the partition's inbox and
task streams, so ``dlq_replay.lua`` adds the entry and deletes the dead letter
in one step, on one Redis or Redis Cluster alike, and two operators replaying
the same dead letter replay it once. ``ff:events:dlq`` and ``ff:events`` hash
to different slots, so there replay is XADD, then XDEL: the event is never
lost, but a crash (or a second operator) between the two can publish it twice;
the router delivers at least once anyway, and an instance takes an event once
per wait.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec
import orjson

from engine.core.ids import QUEUE_RE, entry_key
from engine.errors import InvalidInput, NotFound
from engine.store.connection import Redis
from engine.store.events import Store
from engine.store.keys import Keys
from engine.store.lua import Script
from engine.store.replies import text
from engine.store.runs import RunKeys

EVENTS = "events"
BRIDGE = "bridge"  # <prefix>:bridge:dlq: requests `foldflow bridge` could not carry out (engine/store/runs.py)
_ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
_PAGE = 500

Partition = int | str  # 0..P-1, or "events" for <prefix>:events:dlq


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    ref: str
    """``<partition>/<id>``: names it across every dlq (what show, replay and drop take)."""
    id: str
    """Its id in the dead-letter stream (ids repeat across streams: a bare id may need --partition)."""
    dlq: str
    partition: Partition
    reason: str
    source: str
    """The stream the entry came from; replay writes it back there."""
    entry_id: str
    """Its id in the source stream."""
    group: str | None = None
    ts: int | None = None
    deliveries: int | None = None
    fields: Any = None
    """The original entry's fields (a JSON object of text), or the raw text when unreadable."""
    replayable: bool = False
    refusal: str | None = None
    """Why replay would be refused (None when replayable)."""


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: the first non-empty {...}, else the whole key."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def replay_target_ok(keys: Keys, source: str) -> bool:
    """Is source one of this deployment's inboxes, task streams or its external events stream?"""
    if source == keys.events:
        return True
    if source in (RunKeys(keys).requests, RunKeys(keys).cancellations):
        return True
    for p in range(keys.partitions):
        if source == keys.inbox(p):
            return True
        base = keys.tasks(p, "")
        if source.startswith(base) and QUEUE_RE.match(source[len(base):]):
            return True
    return False


def replay_refusal(keys: Keys, source: str, fields: Any) -> str | None:
    if not replay_target_ok(keys, source):
        return (f"source {source!r} is not one of this deployment's inboxes, task streams or {keys.events}: "
                "replay refused (drop it, or add it by hand if you know where it belongs)")
    if not isinstance(fields, dict) or not fields:
        return "its original fields are not a non-empty JSON object: nothing to replay"
    wrong = [k for k, v in fields.items() if not isinstance(v, str)]
    if wrong:
        return f"original field(s) {', '.join(map(repr, wrong))} are not text: replay refused"
    return None


def parse_partition(text: str | None, keys: Keys) -> Partition | None:
    if text is None:
        return None
    if text == EVENTS:
        return EVENTS
    if text == BRIDGE:
        return BRIDGE
    if text.isdigit() and int(text) < keys.partitions:
        return int(text)
    raise InvalidInput(f"partition {text!r}: expected 0..{keys.partitions - 1}, {EVENTS!r} or {BRIDGE!r}")


def check_entry_id(entry_id: str) -> str:
    if not _ENTRY_ID.match(entry_id):
        raise InvalidInput(f"{entry_id!r} is not a stream entry id (expected <ms>-<seq>, e.g. 1700000000000-0)")
    return entry_id


def _text(value: Any) -> str:
    return text(value)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class DeadLetters:
    """The dead-letter streams of one deployment (a prefix and its partition count)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self.store = Store(redis, keys)
        self.store.scripts["dlq_replay"] = Script("dlq_replay")  # run() reloads it after NOSCRIPT

    @property
    def events_dlq(self) -> str:
        return self.keys.events_dlq

    def streams(self, partition: Partition | None = None) -> list[tuple[Partition, str]]:
        every: list[tuple[Partition, str]] = [(p, self.keys.dlq(p)) for p in range(self.keys.partitions)]
        every.append((EVENTS, self.events_dlq))
        every.append((BRIDGE, RunKeys(self.keys).dlq))
        return every if partition is None else [(p, k) for p, k in every if p == partition]

    def letter(self, partition: Partition, dlq: str, entry_id: Any, raw: dict[Any, Any]) -> DeadLetter:
        f = {_text(k): _text(v) for k, v in raw.items()}
        source = f.get("source", "")
        fields: Any = f.get("fields")
        if fields is not None:
            try:
                fields = orjson.loads(fields)
            except orjson.JSONDecodeError:
                pass  # shown as the raw text; replay refuses it
        refusal = replay_refusal(self.keys, source, fields)
        return DeadLetter(
            ref=f"{partition}/{_text(entry_id)}", id=_text(entry_id), dlq=dlq, partition=partition, reason=f.get("reason", ""), source=source,
            entry_id=f.get("entry_id", ""), group=f.get("group"), ts=_int(f.get("ts")),
            deliveries=_int(f.get("deliveries")), fields=fields, replayable=refusal is None, refusal=refusal,
        )

    async def find(self, *, partition: Partition | None = None, reason_contains: str | None = None,
                   limit: int | None = 100) -> list[DeadLetter]:
        """The oldest matching dead letters over every dlq (or one), oldest first; limit None: all."""
        if limit is not None and limit < 1:
            raise InvalidInput(f"--limit {limit}: must be at least 1")
        found: list[DeadLetter] = []
        for p, key in self.streams(partition):
            found += await self._scan(p, key, reason_contains, limit)
        found.sort(key=lambda d: entry_key(d.id))
        return found if limit is None else found[:limit]

    async def _scan(self, p: Partition, key: str, needle: str | None, limit: int | None) -> list[DeadLetter]:
        out: list[DeadLetter] = []
        start = "-"
        while limit is None or len(out) < limit:
            page: Any = await self.redis.xrange(key, min=start, max="+", count=_PAGE)
            for entry_id, raw in page:
                letter = self.letter(p, key, entry_id, raw)
                if needle is None or needle.lower() in letter.reason.lower():
                    out.append(letter)
            if len(page) < _PAGE:
                break
            start = "(" + _text(page[-1][0])
        return out if limit is None else out[:limit]

    async def get(self, entry_id: str, partition: Partition | None = None) -> DeadLetter:
        """By ``<partition>/<id>`` (a ref), or by a bare id searched in every dlq (or the one given)."""
        if "/" in entry_id:
            where, _, entry_id = entry_id.partition("/")
            named = parse_partition(where, self.keys)
            if partition is not None and named != partition:
                raise InvalidInput(f"{where}/{entry_id} is in partition {where}, not --partition {partition}")
            partition = named
        check_entry_id(entry_id)
        candidates = self.streams(partition)
        pipe = self.redis.pipeline(transaction=False)
        for _, key in candidates:
            pipe.xrange(key, min=entry_id, max=entry_id)
        replies = await pipe.execute()
        hits = [self.letter(p, key, e[0][0], e[0][1]) for (p, key), e in zip(candidates, replies) if e]
        if not hits:
            where = "any dead-letter stream" if partition is None else self.streams(partition)[0][1]
            raise NotFound(f"no dead letter {entry_id} in {where}")
        if len(hits) > 1:
            raise InvalidInput(f"dead letter id {entry_id} is in {', '.join(h.dlq for h in hits)}: name one as "
                               f"{' or '.join(h.ref for h in hits)}, or pass --partition")
        return hits[0]

    async def replay(self, letter: DeadLetter) -> str:
        """Put the original entry back on its source; the new entry's id there."""
        if letter.refusal is not None:
            raise InvalidInput(f"dead letter {letter.id} in {letter.dlq}: {letter.refusal}")
        flat: list[str] = [x for kv in letter.fields.items() for x in kv]
        if hash_tag(letter.dlq) == hash_tag(letter.source):
            new = await self.store.run("dlq_replay", [letter.dlq, letter.source], [letter.id, *flat])
        else:
            # Different slots (ff:events:dlq -> ff:events): add first, so a crash loses nothing.
            new = None
            if await self.redis.xrange(letter.dlq, min=letter.id, max=letter.id):
                new = await self.redis.xadd(letter.source, dict(letter.fields))
                await self.redis.xdel(letter.dlq, letter.id)
        if new is None:
            raise NotFound(f"dead letter {letter.id} is no longer in {letter.dlq} (replayed or dropped meanwhile)")
        return _text(new)

    async def drop(self, letter: DeadLetter) -> None:
        if not await self.redis.xdel(letter.dlq, letter.id):
            raise NotFound(f"dead letter {letter.id} is no longer in {letter.dlq} (replayed or dropped meanwhile)")

    async def replay_many(self, letters: Sequence[DeadLetter]) -> dict[str, list[dict[str, Any]]]:
        """Replay each; refusals and vanished ones are reported, not raised."""
        done: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []
        for letter in letters:
            try:
                new = await self.replay(letter)
            except (InvalidInput, NotFound) as exc:
                refused.append({"ref": letter.ref, "id": letter.id, "dlq": letter.dlq, "error": str(exc)})
                continue
            done.append({"ref": letter.ref, "id": letter.id, "dlq": letter.dlq, "source": letter.source, "new_id": new})
        return {"replayed": done, "refused": refused}

    async def drop_many(self, letters: Sequence[DeadLetter]) -> dict[str, list[dict[str, Any]]]:
        done: list[dict[str, Any]] = []
        missing: list[dict[str, Any]] = []
        for letter in letters:
            try:
                await self.drop(letter)
            except NotFound as exc:
                missing.append({"ref": letter.ref, "id": letter.id, "dlq": letter.dlq, "error": str(exc)})
                continue
            done.append({"ref": letter.ref, "id": letter.id, "dlq": letter.dlq})
        return {"dropped": done, "missing": missing}


async def deployment_keys(redis: Redis, keys: Keys) -> Keys:
    """The keys with the partition count recorded in <prefix>:meta (read only), so an
    operator sees every dlq even without FOLDFLOW_PARTITIONS set."""
    stored = await redis.hget(keys.meta, "partitions")
    count = _int(_text(stored)) if stored is not None else None
    return keys if not count or count == keys.partitions else Keys(keys.prefix, count)
