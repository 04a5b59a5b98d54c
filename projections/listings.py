"""Listing indexes: executions by status, by workflow, by both, and all of them,
each a per-partition sorted set of instance ids scored by creation time (ms).

Every filter combination the queries offer is exactly one index per partition,
so a listing reads P ranges (pipelined) and a count is P ZCOUNTs: no scans.
The executions projection keeps them in the same script call as the record.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.store.replies import text

from .base import Doc, Ops
from .keys import STATUSES, ViewKeys


def memberships(vk: ViewKeys, p: int, doc: Doc) -> dict[str, int]:
    """The index keys an execution record belongs to, with its score."""
    if not doc or doc.get("created_ms") is None:
        return {}
    score = int(doc["created_ms"])
    status, workflow = doc.get("status"), doc.get("workflow")
    keys = {vk.index(p): score, vk.index(p, status=status): score}
    if workflow is not None:
        keys[vk.index(p, workflow=workflow)] = score
        keys[vk.index(p, status=status, workflow=workflow)] = score
    return keys


def index_writes(ops: Ops, vk: ViewKeys, p: int, iid: str, old: Doc, new: Doc, rebuild: bool) -> None:
    before = memberships(vk, p, old)
    after = memberships(vk, p, new)
    stale = set(before) - set(after)
    if rebuild:
        # The stored record may be wrong: leave no index entry behind under any status.
        for doc in (old, new):
            workflow = doc.get("workflow") if isinstance(doc, dict) else None
            for status in STATUSES:
                stale.add(vk.index(p, status=status))
                if workflow is not None:
                    stale.add(vk.index(p, status=status, workflow=workflow))
        stale -= set(after)
    for key in sorted(stale):
        ops.zrem(key, iid)
    for key, score in sorted(after.items()):
        if rebuild or before.get(key) != score:
            ops.zadd(key, score, iid)


def merge_page(pages: Sequence[Sequence[tuple[Any, float]]], limit: int,
               after: tuple[int, str] | None) -> list[tuple[str, int]]:
    """Merge per-partition pages (each newest first) into one page, newest first,
    ordered by (score, id) descending, strictly after the cursor."""
    items: list[tuple[int, str]] = []
    for page in pages:
        for member, score in page:
            iid = text(member)
            key = (int(score), iid)
            if after is None or key < after:
                items.append(key)
    items.sort(reverse=True)
    return [(iid, score) for score, iid in items[:limit]]
