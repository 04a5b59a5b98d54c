"""External events: publish one (seed 000's envelope), list them, find one by its
id, and everything that happened under a correlation id.

`GET /events` reads the events stream itself, newest first, with XREVRANGE in
chunks of CHUNK entries, and filters in the API: a page costs at most
SCAN_BUDGET entries read (SCAN_BUDGET / CHUNK round trips). A filter that
matches rarely can then answer a short or empty page with a `next_cursor`: follow
it until it is null. `since`/`until` bound the entry ids, so they cost nothing:
they judge when an event was added, not the `timestamp` its publisher claims.
The stream keeps events FOLDFLOW_EVENT_RETENTION_MS (streams.md, "Trimming").
(`GET /events/stream`, the live feed, is served by routes/live.py.)
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import orjson
from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter

from engine.api.models.events import CorrelationEvents, Event, EventAccepted, EventIn, EventPage, lifecycle_envelope
from engine.api.problems import Problem, problems
from engine.api.services import Services
from engine.api.workflow_ids import workflow_uuid
from engine.core.codec import MAX_CORRELATION_ID_CHARS
from engine.errors import InvalidInput
from engine.store.published import EVENT_ID_PATTERN, MAX_ID_PART, before, check_event_id, entry_ms, is_entry_id
from projections.queries import MAX_LIMIT, parse_time

CHUNK = 500
CURSOR_PATTERN = r"^[0-9]{1,19}-[0-9]{1,19}$"  # always a 64-bit entry id
SCAN_BUDGET = 10_000
TAGS = ["events"]


@post("/events", status_code=202, responses=problems(400, 413), tags=TAGS,
      summary="Publish an external event (a repeated id is not published twice)")
async def publish_event(data: JSONBody[EventIn], services: NamedDependency[Services]) -> EventAccepted:
    """`202` with the event's id and its stream entry; `duplicate: true` when this id was
    published before (within FOLDFLOW_EVENT_RETENTION_MS): then nothing is added."""
    limit = services.settings.max_payload_bytes
    try:
        size = len(orjson.dumps(data.data))
    except TypeError as exc:
        raise Problem(400, f"data cannot be stored as JSON: {exc}") from None
    if size > limit:
        raise Problem(413, f"event data is {size} bytes, over the limit of {limit} (FOLDFLOW_MAX_PAYLOAD_BYTES)")
    # As the publisher wrote it, in RFC 3339 (msgspec's rendering of the time it parsed).
    timestamp = msgspec.json.encode(data.timestamp).decode()[1:-1] if data.timestamp else None
    published = await services.client.publish_event(
        data.type, data.data, correlation_id=data.correlation_id or None, event_id=data.id,
        source=data.source or None, timestamp=timestamp)
    return EventAccepted(id=published.id, entry_id=published.entry_id, duplicate=published.duplicate)


def as_event(doc: dict[str, Any]) -> Event:
    return msgspec.convert(doc, Event)


def _ms(value: str | None) -> int | None:
    if not value:
        return None
    # An entry id's time is a 64-bit unsigned number of ms: a time outside it bounds nothing more.
    return min(max(parse_time(value), 0), MAX_ID_PART)


def bounds(since: str | None, until: str | None, cursor: str | None) -> tuple[str, str] | None:
    """XREVRANGE's max and min for the filters and the cursor (the last entry id answered);
    None when nothing can match."""
    lo, hi = _ms(since), _ms(until)
    top = "+" if hi is None else f"{hi}-{MAX_ID_PART}"
    if cursor:
        if not is_entry_id(cursor):
            raise InvalidInput(f"invalid cursor {cursor!r}: pass next_cursor from a previous page")
        below = before(cursor)
        if below is None:
            return None
        if hi is None or entry_ms(below) <= hi:
            top = below
    return top, "-" if lo is None else f"{lo}-0"


def matches(event: dict[str, Any], filters: dict[str, str | None]) -> bool:
    return all(want is None or event.get(field) == want for field, want in filters.items())


async def scan(services: Services, hi: str, lo: str, limit: int,
               filters: dict[str, str | None]) -> tuple[list[dict[str, Any]], str | None]:
    """Matching events newest first, reading at most SCAN_BUDGET entries; the cursor to go on."""
    found: list[dict[str, Any]] = []
    read = 0
    while read < SCAN_BUDGET:
        count = min(CHUNK, SCAN_BUDGET - read)
        rows = await services.client.events.newest_first(hi, lo, count)
        for event in rows:
            if matches(event, filters):
                found.append(event)
                if len(found) == limit:
                    return found, event["entry_id"]
        read += len(rows)
        last = rows[-1]["entry_id"] if rows else None
        below = before(last) if last else None
        if len(rows) < count or below is None:
            return found, None
        hi = below
    return found, last


@get("/events", responses=problems(400), tags=TAGS, summary="External events, newest first (cursor pages)")
async def list_events(
    services: NamedDependency[Services],
    event_type: Annotated[str | None, QueryParameter(name="type", max_length=200, description="exact type")] = None,
    source: Annotated[str | None, QueryParameter(max_length=200, description="exact source")] = None,
    correlation_id: Annotated[str | None, QueryParameter(max_length=MAX_CORRELATION_ID_CHARS)] = None,
    since: Annotated[str | None, QueryParameter(max_length=64, description="added at or after: ms, ISO-8601 or an "
                                                                           "age (15m)")] = None,
    until: Annotated[str | None, QueryParameter(max_length=64, description="added at or before: ms, ISO-8601 or an "
                                                                           "age")] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 50,
    cursor: Annotated[str | None, QueryParameter(pattern=CURSOR_PATTERN, description="next_cursor of the page before")] = None,
) -> EventPage:
    window = bounds(since, until, cursor)
    if window is None:
        return EventPage(items=[], next_cursor=None)
    filters = {"type": event_type, "source": source, "correlation_id": correlation_id}
    found, next_cursor = await scan(services, *window, limit, filters)
    return EventPage(items=[as_event(e) for e in found], next_cursor=next_cursor)


@get("/events/{event_id:str}", responses=problems(400, 404), tags=TAGS,
     summary="One external event, by the id it was published with (or its entry id)")
async def get_event(
    services: NamedDependency[Services],
    event_id: Annotated[str, PathParameter(pattern=EVENT_ID_PATTERN, description="the envelope's id, or the stream "
                                                                               "entry id of an event published without one")],
) -> Event:
    """By the envelope's id while its record is kept (FOLDFLOW_EVENT_RETENTION_MS), else by its
    stream entry id. The stream is trimmed on the same horizon; an event whose record outlived
    its entry answers 404 saying so."""
    events = services.client.events
    check_event_id(event_id)
    entry_id = await events.entry_of(event_id)
    if entry_id is None:
        found = await events.entry(event_id) if is_entry_id(event_id) else None
        if found is None:
            raise Problem(404, f"no event with id {event_id!r} (never published, or longer ago than "
                               "FOLDFLOW_EVENT_RETENTION_MS)")
        return as_event(found)
    found = await events.entry(entry_id)
    if found is None:
        raise Problem(404, f"event {event_id!r} was published as entry {entry_id}, since trimmed from the "
                           "events stream")
    return as_event(found)


def _time_of(event: dict[str, Any]) -> int:
    entry_id = event.get("entry_id")
    if isinstance(entry_id, str) and is_entry_id(entry_id):
        return entry_ms(entry_id)
    try:
        return parse_time(str(event.get("timestamp", "")))
    except InvalidInput:
        return 0


@get("/correlations/{correlation_id:str}/events", responses=problems(400, 404), tags=TAGS,
     summary="Every lifecycle and external event of a correlation id, in order")
async def correlation_events(
    services: NamedDependency[Services],
    correlation_id: Annotated[str, PathParameter(min_length=1, max_length=MAX_CORRELATION_ID_CHARS)],
) -> CorrelationEvents:
    """From the read models (the projector's correlation and lifecycle projections), so an
    event shows here once projected. External events are placed by when they were added."""
    found = await services.queries.correlation(correlation_id)
    records = {r.get("id"): r for r in found["executions"]}
    prefix = services.settings.prefix
    lifecycle = []
    for event in found["lifecycle"]:
        data = event.get("data") or {}
        record = records.get(data.get("execution_id")) or {}
        workflow = data.get("workflow")
        lifecycle.append(lifecycle_envelope(event, workflow_uuid(prefix, workflow) if workflow else None,
                                            record.get("context")))
    timeline = sorted([*lifecycle, *found["events"]], key=_time_of)
    return CorrelationEvents(correlation_id=correlation_id, events=[as_event(e) for e in timeline])


ROUTES = [publish_event, list_events, get_event, correlation_events]
