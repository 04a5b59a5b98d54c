"""The two halves of a batch's work, for engine/ops/batch_runner.py: matching
(page through the read models) and applying (one control command per item).

Matching reads the projections (the executions listing indexes, or a correlation
id's index), a page at a time, from a cursor the runner stores after each page.
The time range ends at the batch's creation unless the query says otherwise, so
executions started after the batch do not join it.

Applying reads the item's own stream (never a read model: the stream is the
truth, and it says whether this batch's command was applied already) and sends
the command with the item's cmd_id, or returns why it cannot.
"""

from __future__ import annotations

from typing import Any

import orjson

from engine.client import Client
from engine.core.batches import COMMAND, BatchQuery, cmd_id, command_data, record_matches, refusal
from engine.core.evolve import fold_stored
from engine.core.model import INITIAL, STATUS_NONE, CommandRejected
from engine.errors import UnknownInstance
from engine.store.batches import Batch
from projections.queries import Queries

PAGE = 500


def _bound(value: str | int | None) -> int | None:
    return value if isinstance(value, int) else None


class Matcher:
    """One page of a batch's query at a time: (ids, next cursor, last page)."""

    def __init__(self, queries: Queries, page: int = PAGE) -> None:
        self.queries, self.size = queries, page

    async def page(self, batch: Batch, cursor: str) -> tuple[list[str], str, bool]:
        query = batch.spec.query
        if query.correlation_id is not None:
            return await self._correlated(query, cursor)
        return await self._listed(query, cursor, batch.created_ms)

    async def _correlated(self, query: BatchQuery, cursor: str) -> tuple[list[str], str, bool]:
        assert query.correlation_id is not None
        records = await self.queries.correlated(query.correlation_id)
        chosen = sorted((r.get("created_ms") or 0, str(r["id"])) for r in records if record_matches(r, query))
        start = int(cursor or 0)
        end = start + self.size
        return [iid for _, iid in chosen[start:end]], str(end), end >= len(chosen)

    async def _listed(self, query: BatchQuery, cursor: str, created_ms: int) -> tuple[list[str], str, bool]:
        at: dict[str, Any] = orjson.loads(cursor) if cursor else {"s": 0, "c": None}
        index: int = at["s"]
        statuses: list[str | None] = list(query.status) or [None]
        until = _bound(query.started_before)
        page = await self.queries.executions(
            status=statuses[index], workflow=query.workflow, since=_bound(query.started_after),
            until=created_ms if until is None else min(until, created_ms), limit=self.size, cursor=at["c"])
        ids = [str(r["id"]) for r in page["items"] if record_matches(r, query)]
        if page["next_cursor"] is not None:
            return ids, orjson.dumps({"s": index, "c": page["next_cursor"]}).decode(), False
        nxt = index + 1
        return ids, orjson.dumps({"s": nxt, "c": None}).decode(), nxt >= len(statuses)


class Applier:
    """Sends one item's command, once; answers why not (a failure reason) or None (done)."""

    def __init__(self, client: Client, queries: Queries) -> None:
        self.client, self.queries = client, queries

    async def apply(self, batch: Batch, execution_id: str) -> str | None:
        spec = batch.spec
        mine = cmd_id(batch.id, execution_id)
        stored = await self.client.store.read_events(execution_id)
        if not stored:
            return await self._gone(batch, execution_id)
        answered = [e for _, e, _ in stored if e.cmd == mine]
        if answered:  # sent before a crash, and applied: done, or refused after all
            rejected = next((e for e in answered if isinstance(e, CommandRejected)), None)
            return None if rejected is None else f"rejected by the engine: {rejected.reason}"
        state = fold_stored(INITIAL, ((e, ts) for _, e, ts in stored))
        why = refusal(spec.operation, state.status)
        if why is not None:
            return why
        await self.client.send(COMMAND[spec.operation], execution_id, command_data(spec, batch.id), cmd_id=mine)
        return None

    async def _gone(self, batch: Batch, execution_id: str) -> str:
        """No stream: retired after it finished (its read model says how), or never there."""
        try:
            record: dict[str, Any] = await self.queries.execution(execution_id)
        except UnknownInstance:
            return "unknown execution"
        status = str(record.get("status") or STATUS_NONE)
        return refusal(batch.spec.operation, status) or f"{status}: its stream is retired"
