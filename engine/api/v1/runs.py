"""Seed 003's runs: a run is an execution whose id is the run id, read as the
``workflow_runs`` and ``step_executions`` rows seed 003's clients know.

Status, times, steps and errors come from the read models (the executions and
steps projections); who triggered and who cancelled a run come from its record
(``{ff:p}:run:<run_id>``, engine/store/runs.py), which the bridge writes for the
runs it starts and the cancel route for every run it cancels. Runs started any
other way (POST /executions, /api/v1/workflows/{id}/execute, the CLI) are
readable here too: they just have no ``triggered_by`` unless their starter says.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

import msgspec
from litestar import Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, PathParameter

from engine.api.models.executions import EXECUTION_ID_PATTERN
from engine.api.problems import Problem, problems
from engine.api.services import Services
from engine.core.model import STATUS_NONE, TERMINAL
from engine.core.runs import CANCELLED, FINAL_RUN_STATUSES, PENDING, RUN_STATUS, STEP_STATUS, iso, step_execution_id
from engine.errors import UnknownInstance
from engine.store.runs import RunStore

TAGS = ["runs"]
RunStatus = Literal["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"]
StepStatus = Literal["RUNNING", "COMPLETED", "FAILED", "CANCELLED"]
RunIdParam = Annotated[str, PathParameter(pattern=EXECUTION_ID_PATTERN, max_length=200, description="the run's id")]


class Run(msgspec.Struct, kw_only=True):
    """A ``workflow_runs`` row."""

    run_id: str
    workflow_id: str | None
    """The workflow (the plan's name) the run runs."""
    workflow_version: str | None
    status: RunStatus
    error_message: str | None = None
    triggered_by: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    completed_at: str | None = None
    """When it reached COMPLETED, FAILED or CANCELLED."""
    cancelled_at: str | None = None
    cancelled_by: str | None = None
    input_data: dict[str, Any] = {}
    output_data: Any = None


class StepExecution(msgspec.Struct, kw_only=True):
    """A ``step_executions`` row: one attempt of one step."""

    step_execution_id: str
    run_id: str
    step_id: str
    step_name: str
    agent_name: str | None
    status: StepStatus
    attempt: int | None = None
    input_data: Any = None
    output_data: Any = None
    error_message: str | None = None
    started_at: str | None = None
    completed_at: str | None = None


class CancelRun(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    cancelled_by: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    reason: Annotated[str, msgspec.Meta(max_length=1000)] | None = None


class RunCancelled(msgspec.Struct, kw_only=True):
    run_id: str
    cancelled_by: str
    cancelled_at: str
    command_id: str
    """The inbox command sent; the run reads CANCELLED once the engine has applied it."""


def _message(error: Any) -> str | None:
    if isinstance(error, dict):
        message = error.get("message")
        return str(message) if message is not None else None
    return None


def run_view(run_id: str, record: dict[str, str] | None, doc: dict[str, Any] | None) -> Run:
    """The row from the run's record and its executions document (either may be missing, not both)."""
    rec = record or {}
    doc = doc or {}
    status: RunStatus = RUN_STATUS.get(doc.get("status", ""), PENDING)  # type: ignore[assignment]
    final = iso(doc.get("finished_ms")) if status in FINAL_RUN_STATUSES else None
    if not doc and rec.get("error_message"):  # the bridge could not start it (the reason is dead-lettered too)
        return Run(run_id=run_id, workflow_id=rec.get("workflow"), workflow_version=rec.get("workflow_version"),
                   status="FAILED", error_message=rec["error_message"], triggered_by=rec.get("triggered_by"),
                   created_at=rec.get("created_at"), updated_at=rec.get("failed_at"), completed_at=rec.get("failed_at"))
    created = rec.get("created_at") or iso(doc.get("created_ms"))
    error = _message(doc.get("error")) if status == "FAILED" else None
    if status == CANCELLED and doc.get("reason"):
        error = f"cancelled: {doc['reason']}"
    return Run(
        run_id=run_id, workflow_id=doc.get("workflow") or rec.get("workflow"),
        workflow_version=doc.get("workflow_version") or rec.get("workflow_version"), status=status,
        error_message=error, triggered_by=rec.get("triggered_by"), created_at=created,
        updated_at=iso(doc.get("updated_ms")) or created, completed_at=final,
        cancelled_at=rec.get("cancelled_at") or (final if status == CANCELLED else None),
        cancelled_by=rec.get("cancelled_by"), input_data=doc.get("context") or {}, output_data=doc.get("output"),
    )


def step_rows(run_id: str, records: list[dict[str, Any]], names: dict[str, str]) -> list[StepExecution]:
    """The steps read model's attempts as step_executions rows; skipped steps never ran and have none."""
    rows = []
    for r in records:
        status = STEP_STATUS.get(r.get("status", ""))
        if status is None:
            continue
        step = str(r.get("step"))
        rows.append(StepExecution(
            step_execution_id=step_execution_id(run_id, step, r.get("attempt"), r.get("iteration")), run_id=run_id,
            step_id=step, step_name=names.get(step, step), agent_name=r.get("queue"),
            status=status,  # type: ignore[arg-type]
            attempt=r.get("attempt"), input_data=r.get("input"), output_data=r.get("output"),
            error_message=_message(r.get("error")), started_at=iso(r.get("started_ms")),
            completed_at=iso(r.get("completed_ms")),
        ))
    return rows


async def _read(services: Services, run_id: str) -> tuple[dict[str, str] | None, dict[str, Any] | None]:
    record = await RunStore(services.redis, services.client.keys).get(run_id)
    try:
        doc: dict[str, Any] | None = await services.queries.execution(run_id)
    except UnknownInstance:
        doc = None
    if record is None and doc is None:
        raise Problem(404, f"no run {run_id!r} (not started, or not projected yet)")
    return record, doc


@get("/api/v1/runs/{run_id:str}", tags=TAGS, operation_id="getRun", summary="One run (a workflow_runs row)",
     responses=problems(404))
async def get_run(services: NamedDependency[Services], run_id: RunIdParam) -> Run:
    record, doc = await _read(services, run_id)
    return run_view(run_id, record, doc)


@get("/api/v1/runs/{run_id:str}/steps", tags=TAGS, operation_id="listRunSteps",
     summary="The run's step executions, one per attempt, in the order they began", responses=problems(404))
async def get_run_steps(services: NamedDependency[Services], run_id: RunIdParam) -> list[StepExecution]:
    record, doc = await _read(services, run_id)
    try:
        records = await services.queries.steps(run_id)
    except UnknownInstance:
        return []  # started, not projected yet: no step has begun as far as the read models know
    names: dict[str, str] = {}
    workflow = (doc or {}).get("workflow") or (record or {}).get("workflow")
    if workflow:
        version = (doc or {}).get("workflow_version") or (record or {}).get("workflow_version")
        definition = await services.client.catalog.get(workflow, version)
        if definition is not None:
            names = {s.name: s.description or s.name for s in definition.steps}
    return step_rows(run_id, records, names)


_CANCEL = {202: ResponseSpec(RunCancelled, description="Sent to the engine", generate_examples=False),
           **problems(400, 404, 409, 413, 415)}


@post("/api/v1/runs/{run_id:str}/cancel", tags=TAGS, operation_id="cancelRun", status_code=202,
      summary="Cancel a run (409 when it is already completed or cancelled)", responses=_CANCEL)
async def cancel_run(services: NamedDependency[Services], run_id: RunIdParam,
                     data: JSONBody[CancelRun | None] = None) -> Response[RunCancelled]:
    runs = RunStore(services.redis, services.client.keys)
    record = await runs.get(run_id)
    status = (await services.client.state(run_id)).status
    if status == STATUS_NONE:  # not created yet (a bridge run), or its stream retired: ask the read model
        try:
            status = (await services.queries.execution(run_id)).get("status", STATUS_NONE)
        except UnknownInstance:
            if record is None:
                raise Problem(404, f"no run {run_id!r}") from None
    if status in TERMINAL:
        raise Problem(409, f"run {run_id!r} is {RUN_STATUS.get(status, status)}: it cannot be cancelled")
    reason = data.reason if data else None
    cmd_id = f"cancel:{uuid.uuid4().hex}"
    await services.client.send("cancel", run_id, {"reason": reason} if reason else {}, cmd_id=cmd_id)
    by = (data.cancelled_by if data else None) or "api"
    await runs.record_cancel(run_id, by, iso(time.time_ns() // 1_000_000) or "", reason)
    stored = await runs.get(run_id) or {}  # a cancellation before this one keeps its who and when
    return Response(RunCancelled(run_id=run_id, cancelled_by=stored.get("cancelled_by", by),
                                 cancelled_at=stored.get("cancelled_at", ""), command_id=cmd_id), status_code=202)


ROUTES: list[Any] = [get_run, get_run_steps, cancel_run]
