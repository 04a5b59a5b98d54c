"""Batch operations (issue 16): `POST /batches` asks for one control command on every
execution a query matches; the `foldflow batches` runners carry it out at the batch's
rate (engine/ops/batch_runner.py), and `GET /batches/{batch_id}` shows its progress
while it runs and after. The routes only write and read the batch's record
(engine/store/batches.py); no command is sent from here."""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from litestar import Response, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter

from engine.api.batches import InvalidBatch, batch_view, checked
from engine.api.live.cursor import entry_id
from engine.api.models.batches import BatchFailure, BatchPage, BatchView, FailurePage
from engine.api.problems import Problem, ProblemItem, problems
from engine.api.services import Services
from engine.api.workflow_ids import resolve_workflow
from engine.core.batches import BatchSpec
from engine.store.batches import BatchStore

TAGS = ["batches"]
BatchId = Annotated[str, PathParameter(pattern=r"^[0-9a-f]{32}$", description="the batch's id (32 hex digits)")]
WRITE = {"scope": "write"}


def _store(services: Services) -> BatchStore:
    return BatchStore(services.redis, services.client.keys)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@post("/batches", tags=TAGS, status_code=202, operation_id="createBatch", opt=WRITE,
      summary="Cancel, pause, resume, retry, signal or terminate every execution a query matches",
      responses=problems(400, 404, 413, 415, 422))
async def create_batch(services: NamedDependency[Services], data: JSONBody[BatchSpec]) -> Response[BatchView]:
    now = _now_ms()
    try:
        spec = checked(data, now)
    except InvalidBatch as exc:
        raise Problem(422, f"the batch has {len(exc.problems)} problem(s)",
                      errors=[ProblemItem(path=p, message=m) for p, m in exc.problems]) from None
    if spec.query.workflow is not None:  # by id or name; an unknown one is a 404, not an empty batch
        name = await resolve_workflow(services, spec.query.workflow)
        spec = msgspec.structs.replace(spec, query=msgspec.structs.replace(spec.query, workflow=name))
    batch = await _store(services).create(spec, now)
    return Response(batch_view(batch), status_code=202, headers={"Location": f"/batches/{batch.id}"})


@get("/batches", tags=TAGS, operation_id="listBatches", summary="Batches, newest first (cursor pages)",
     responses=problems(400, 404))
async def list_batches(
    services: NamedDependency[Services],
    cursor: Annotated[str | None, QueryParameter(pattern=r"^[0-9a-f]{32}$",
                                                 description="next_cursor of the previous page")] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
) -> BatchPage:
    batches, nxt = await _store(services).page(limit, cursor)
    return BatchPage(items=[batch_view(b) for b in batches], next_cursor=nxt)


@get("/batches/{batch_id:str}", tags=TAGS, operation_id="getBatch", summary="One batch and its progress",
     responses=problems(400, 404))
async def get_batch(services: NamedDependency[Services], batch_id: BatchId) -> BatchView:
    return batch_view(await _store(services).found(batch_id))


@get("/batches/{batch_id:str}/failures", tags=TAGS, operation_id="getBatchFailures",
     summary="The items that failed, each with its reason, oldest first", responses=problems(400, 404))
async def get_failures(
    services: NamedDependency[Services], batch_id: BatchId,
    after: Annotated[str | None, QueryParameter(pattern=r"^[0-9]{1,20}-[0-9]{1,20}$",
                                                description="next_after of the previous page")] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> FailurePage:
    store = _store(services)
    await store.found(batch_id)
    rows = await store.failures(batch_id, entry_id(after) if after is not None else None, limit)
    items = [BatchFailure(execution_id=iid, reason=reason, entry_id=eid) for eid, iid, reason in rows]
    return FailurePage(batch_id=batch_id, items=items, next_after=items[-1].entry_id if len(items) == limit else None)


@post("/batches/{batch_id:str}/cancel", tags=TAGS, status_code=200, operation_id="cancelBatch", opt=WRITE,
      summary="Stop a batch (items done stay done); 409 when it has ended", responses=problems(400, 404, 409))
async def cancel_batch(services: NamedDependency[Services], batch_id: BatchId) -> BatchView:
    store = _store(services)
    cancelled, state = await store.cancel(batch_id, _now_ms())
    if not cancelled:
        raise Problem(409, f"batch {batch_id} is {state}: only a matching or running batch can be cancelled")
    return batch_view(await store.found(batch_id))


ROUTES: list[Any] = [create_batch, list_batches, get_batch, get_failures, cancel_batch]
