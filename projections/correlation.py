"""Correlation: correlation id -> its executions and the external events that
carried it. Executions are indexed per partition (``{ff:p}:x:c:<cid>``, member
= instance id, score = created ms) by the ``correlation`` projection over the
feeds; external events (``<prefix>:events`` entries with a ``correlation_id``)
by the same projection's group on the events stream, into
``{<prefix>:events}:x:c:<cid>`` (score = the entry's ms, member = the event as
canonical JSON, so a redelivered entry adds nothing)."""

from __future__ import annotations

from collections.abc import Sequence

from engine.core.codec import MAX_CORRELATION_ID_CHARS, MAX_TYPE_CHARS
from engine.core.model import WorkflowCreated
from engine.store.published import entry_ms, envelope

from .base import Applied, Doc, Ops, Projection, dumps
from .keys import ViewKeys


def fold_correlation(doc: Doc, iid: str, item: Applied) -> Doc:
    e = item.event
    if isinstance(e, WorkflowCreated):
        return {"correlation_id": e.correlation_id, "created_ms": item.ts}
    return doc


def _member(doc: Doc) -> tuple[str, int] | None:
    if not doc or doc.get("correlation_id") is None:
        return None
    return str(doc["correlation_id"]), int(doc["created_ms"])


class Correlation(Projection):
    name = "correlation"

    def fold(self, doc: Doc, iid: str, item: Applied) -> Doc:
        return fold_correlation(doc, iid, item)

    def writes(self, ops: Ops, vk: ViewKeys, p: int, iid: str, old: Doc, new: Doc,
               applied: Sequence[Applied], rebuild: bool) -> None:
        before, after = _member(old), _member(new)
        if before is not None and (after is None or before[0] != after[0]):
            ops.zrem(vk.correlation(p, before[0]), iid)
        if after is not None and (rebuild or before != after):
            ops.zadd(vk.correlation(p, after[0]), after[1], iid)


def external_event(entry_id: str, fields: dict[bytes, bytes], source: str) -> tuple[str, int, bytes] | None:
    """(correlation id, score, member) of an events-stream entry, None when it carries none.
    The member is the event in the seed's envelope: its own id, source and timestamp when the
    publisher gave them (engine/store/published.py says what stands in for each otherwise)."""
    event = envelope(entry_id, fields, source)
    cid = event["correlation_id"]
    if not cid:
        return None
    if len(cid) > MAX_CORRELATION_ID_CHARS or len(event["type"]) > MAX_TYPE_CHARS:
        return None  # the router dead-letters it (streams.md, "Security"): no index key is named by it
    return cid, entry_ms(entry_id), dumps(event)


def external_writes(vk: ViewKeys, entries: Sequence[tuple[str, dict[bytes, bytes]]]) -> Ops:
    ops = Ops()
    for entry_id, fields in entries:
        found = external_event(entry_id, fields, vk.keys.events)
        if found is not None:
            cid, score, member = found
            ops.zadd(vk.correlation_events(cid), score, member)
    return ops
