"""External events in the seed's envelope (streams.md, "External events").

An entry of the events stream carries `type`, `data` and `correlation_id` (what
the router reads) and, when the publisher gave them, the envelope's `id`,
`source` and `timestamp`. An event with an id is published at most once per
id: publish_event.lua records the id and adds the entry in one call, and the
record (kept as long as the event index keeps events) is also how the event is
found by its id. An event without an id is one plain XADD; its entry id is its id.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from engine.core.codec import MAX_CORRELATION_ID_CHARS, MAX_TYPE_CHARS, check_length
from engine.errors import InvalidInput
from engine.store.errors import translate_methods
from engine.store.keys import Keys
from engine.store.lua import ScriptRunner
from engine.store.replies import text

# An event's own id names a key ({ff:events}:eid:<id>), so it has the safe alphabet of instance ids.
EVENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,199}$"
EVENT_ID_RE = re.compile(EVENT_ID_PATTERN)
ENTRY_ID_RE = re.compile(r"^\d{1,20}-\d{1,20}$")
MAX_SOURCE_CHARS = 200
MAX_TIMESTAMP_CHARS = 64

Fields = Mapping[bytes, bytes]


class Published(NamedTuple):
    id: str
    entry_id: str
    duplicate: bool


def iso_ms(ms: int) -> str:
    """ISO-8601 UTC with milliseconds, as lifecycle events carry their time."""
    stamp = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


MAX_ID_PART = 2**64 - 1


def entry_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


def is_entry_id(value: str) -> bool:
    """A stream entry id Redis takes: <ms>-<seq>, each a 64-bit unsigned number."""
    return bool(ENTRY_ID_RE.match(value)) and all(int(part) <= MAX_ID_PART for part in value.split("-"))


def before(entry_id: str) -> str | None:
    """The highest entry id below this one (an exclusive XREVRANGE bound), None below 0-0."""
    ms, seq = (int(part) for part in entry_id.split("-"))
    if seq:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-{MAX_ID_PART}" if ms else None


def check_event_id(event_id: str) -> None:
    if not EVENT_ID_RE.match(event_id):
        raise InvalidInput(f"invalid event id {event_id!r}: 1-200 of A-Z a-z 0-9 _ . : @ + - "
                           "(starting alphanumeric)")


def check_timestamp(timestamp: str) -> None:
    check_length("timestamp", timestamp, MAX_TIMESTAMP_CHARS, InvalidInput)
    try:
        dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"invalid timestamp {timestamp!r}: give an ISO-8601 time") from None


def event_fields(type_: str, body: bytes, *, correlation_id: str | None = None, event_id: str | None = None,
                 source: str | None = None, timestamp: str | None = None) -> dict[str, str | bytes]:
    """The entry's fields, every sender-controlled text checked (InvalidInput names the field)."""
    if not type_:
        raise InvalidInput("an event needs a type")
    check_length("type", type_, MAX_TYPE_CHARS, InvalidInput)
    check_length("correlation_id", correlation_id or "", MAX_CORRELATION_ID_CHARS, InvalidInput)
    check_length("source", source or "", MAX_SOURCE_CHARS, InvalidInput)
    if event_id is not None:
        check_event_id(event_id)
    if timestamp:
        check_timestamp(timestamp)
    fields: dict[str, str | bytes] = {"type": type_, "data": body}
    optional = {"correlation_id": correlation_id, "id": event_id, "source": source, "timestamp": timestamp}
    fields.update({k: v for k, v in optional.items() if v})
    return fields


def envelope(entry_id: str, fields: Fields, stream: str) -> dict[str, Any]:
    """The seed's envelope of one entry: with no `id` field its id is the entry id, with no
    `source` the stream's name, with no `timestamp` the time the entry was added."""
    raw = fields.get(b"data", b"null")
    data: Any
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = raw.decode(errors="replace")
    corr = fields.get(b"correlation_id")
    return {
        "id": text(fields.get(b"id") or entry_id),
        "type": text(fields.get(b"type", b"")),
        "source": text(fields.get(b"source") or stream),
        "timestamp": text(fields.get(b"timestamp") or iso_ms(entry_ms(entry_id))),
        "correlation_id": text(corr) if corr else None,
        "data": data,
        "entry_id": entry_id,
    }


@translate_methods
class EventLog:
    """Publishing to and reading back the events stream."""

    def __init__(self, runner: ScriptRunner, keys: Keys) -> None:
        self.runner = runner
        self.redis = runner.redis
        self.keys = keys

    async def publish(self, fields: Mapping[str, str | bytes], keep_ms: int) -> Published:
        """Add the entry; with an `id` field, only when that id was not published in the last keep_ms."""
        event_id = fields.get("id")
        if event_id is None:
            entry = text(await self.redis.xadd(self.keys.events, dict(fields)))  # type: ignore[arg-type]
            return Published(entry, entry, False)
        args = [v for pair in fields.items() for v in pair]
        entry_raw, repeat = await self.runner.run("publish_event", [self.keys.events, self.keys.published(
            text(event_id))], [max(1, keep_ms), *args])
        return Published(text(event_id), text(entry_raw), bool(int(repeat)))

    async def entry_of(self, event_id: str) -> str | None:
        """The entry an id was published as, while its record is kept."""
        found = await self.redis.get(self.keys.published(event_id))
        return text(found) if found is not None else None

    async def entry(self, entry_id: str) -> dict[str, Any] | None:
        rows: Any = await self.redis.xrange(self.keys.events, min=entry_id, max=entry_id, count=1)
        return envelope(text(rows[0][0]), rows[0][1], self.keys.events) if rows else None

    async def newest_first(self, hi: str, lo: str, count: int) -> list[dict[str, Any]]:
        """Up to count entries between lo and hi (XREVRANGE bounds), newest first, as envelopes."""
        rows: Any = await self.redis.xrevrange(self.keys.events, max=hi, min=lo, count=count)
        return [envelope(text(entry_id), fields, self.keys.events) for entry_id, fields in rows]
