"""Where a subscriber is, as the `id:` of each SSE message (and `?after=`/Last-Event-ID to resume).

An execution's stream is one Redis stream, so its position is the entry id of the
last event sent (`<ms>-<seq>`). GET /events/stream reads every partition feed, so
its position is one entry id per feed, partition 0 first, joined by `.`
(`1733150000000-0.0-0.1733150000123-4.0-0` for P = 4): reading each feed after its
own id again is exactly "the next message", nothing missed and nothing twice. Pure."""

from __future__ import annotations

import re

from engine.errors import InvalidInput

_ENTRY_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")
ORIGIN = "0-0"
_MAX_PART = 2**64 - 1


def entry_id(raw: str, what: str = "after") -> str:
    """A stream entry id `<ms>-<seq>` as given (a bare `<ms>` means `<ms>-0`); InvalidInput otherwise."""
    raw = raw.strip()
    if raw.isdigit() and len(raw) <= 20:
        raw = f"{raw}-0"
    m = _ENTRY_ID.match(raw)
    if not m:
        raise InvalidInput(f"{what} must be a stream entry id such as 1733150000000-0 (the id: of a message), "
                           f"not {raw[:80]!r}")
    ms, seq = int(m.group(1)), int(m.group(2))
    # Redis refuses parts past 64 bits, and reading after the very last id (an exclusive start past it)
    if ms > _MAX_PART or seq > _MAX_PART or (ms, seq) == (_MAX_PART, _MAX_PART):
        raise InvalidInput(f"{what} {raw[:80]!r} is past the last stream entry id Redis can hold")
    return raw


def id_key(eid: str) -> tuple[int, int]:
    """An entry id as the pair Redis orders it by."""
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq or 0)


def encode_positions(positions: list[str]) -> str:
    return ".".join(positions)


def decode_positions(raw: str, partitions: int, what: str = "after") -> list[str]:
    """One entry id per partition feed; InvalidInput when the cursor is not one of this deployment's."""
    parts = raw.strip().split(".")
    if len(parts) != partitions:
        raise InvalidInput(f"{what} is not a cursor of this deployment: it has {len(parts)} position(s), "
                           f"the deployment has {partitions} partition(s)")
    return [entry_id(p, what) for p in parts]


def resume_from(last_event_id: str | None, after: str | None) -> str | None:
    """A reconnecting EventSource sends Last-Event-ID with its original URL (and so its
    original ?after=): the header is the newer position, so it wins."""
    for value in (last_event_id, after):
        if value is not None and value.strip():
            return value
    return None
