"""Creating batches and showing them, shared by `/batches` (engine/api/routes/batches.py)
and `foldflow batch` (engine/ops/batches_cli.py): one check of a spec, one view."""

from __future__ import annotations

from typing import Any

import msgspec

from engine.api.definitions import iso
from engine.api.models.batches import BatchView
from engine.core.batches import BatchSpec, spec_problems
from engine.errors import InvalidInput
from engine.store.batches import Batch, BatchStore
from projections.queries import parse_time


class InvalidBatch(InvalidInput):
    """A batch spec with problems: (field, problem) each."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("invalid batch: " + "; ".join(f"{p}: {m}" for p, m in problems))
        self.problems = problems


def _time(value: str | int | None, field: str, now_ms: int, problems: list[tuple[str, str]]) -> int | None:
    if value is None or isinstance(value, int):
        return value
    try:
        return parse_time(value, now_ms)
    except InvalidInput as exc:
        problems.append((field, str(exc)))
        return None


def checked(spec: BatchSpec, now_ms: int) -> BatchSpec:
    """The spec with its times fixed as ms (an age such as 15m counts from now); InvalidBatch
    naming every problem."""
    problems = spec_problems(spec)
    q = spec.query
    after = _time(q.started_after, "query.started_after", now_ms, problems)
    before = _time(q.started_before, "query.started_before", now_ms, problems)
    if after is not None and before is not None and after > before:
        problems.append(("query.started_before", "is before query.started_after"))
    if problems:
        raise InvalidBatch(problems)
    query = msgspec.structs.replace(q, started_after=after, started_before=before)
    return msgspec.structs.replace(spec, query=query)


def decode_spec(body: dict[str, Any]) -> BatchSpec:
    try:
        return msgspec.convert(body, BatchSpec)
    except msgspec.ValidationError as exc:
        raise InvalidBatch([(str(exc).rsplit("at `$.", 1)[-1].rstrip("`") if "at `$." in str(exc) else "body",
                             str(exc))]) from None


async def submit(store: BatchStore, spec: BatchSpec, now_ms: int) -> Batch:
    return await store.create(checked(spec, now_ms), now_ms)


def batch_view(batch: Batch) -> BatchView:
    s = batch.spec
    return BatchView(batch_id=batch.id, operation=s.operation, state=batch.state, query=s.query, rate=s.rate,
                     matched=batch.matched, done=batch.done, failed=batch.failed,
                     remaining=max(0, batch.matched - batch.cursor), created_at=iso(batch.created_ms),
                     updated_at=iso(batch.updated_ms), finished_at=iso(batch.finished_ms), reason=s.reason,
                     signal=s.signal, from_step=s.from_step, error=batch.error)
