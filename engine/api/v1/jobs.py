"""Seed 001's jobs: POST /api/v1/workflows/{id}/execute starts an execution (the
job; its `job_id` is also seed 003's `run_id` and the execution id), and
/api/v1/jobs reads and cancels them. The same Client and read models as
/executions: a job is an execution, shown in seed 001's words."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

from litestar import Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, PathParameter, QueryParameter

from engine.api.executions.reads import Reads
from engine.api.executions.views import at
from engine.api.problems import Problem, problems
from engine.api.services import Services
from engine.api.v1.job_views import NATIVE, job_from_record, job_from_state, job_status, job_summary
from engine.api.v1.log_lines import lifecycle_line, log_line
from engine.api.v1.models.jobs import (
    RUN_ID_PATTERN,
    CancelResult,
    ExecuteRequest,
    Job,
    JobCreated,
    JobPage,
    JobStatus,
    LogPage,
)
from engine.api.v1.shapes import form_of, is_reserved
from engine.api.v1.workflows import WorkflowId, resolve_visible
from engine.api.workflow_ids import workflow_uuid
from engine.core.model import STATUS_NONE, State
from engine.errors import InvalidContext, NotFound, UnknownInstance
from projections.queries import encode_cursor

TAGS = ["v1 jobs"]
READ, WRITE = {"scope": "read"}, {"scope": "write"}
JobId = Annotated[str, PathParameter(pattern=RUN_ID_PATTERN, max_length=200, description="the job's id")]
# The engine's rule (engine/core/decide.py _cancel): a job that ended cannot be cancelled.
CANCELLABLE = frozenset({"created", "running", "paused", "failed", "compensating"})


def _input_of(body: ExecuteRequest) -> dict[str, Any]:
    if body.input_data is not None and body.input is not None:
        raise Problem(422, "send input_data or input (they mean the same), not both")
    return body.input_data if body.input_data is not None else body.input or {}


def _created(services: Services, iid: str, name: str, version: str | None, status: JobStatus,
             data: dict[str, Any], created_ms: int | None) -> JobCreated:
    return JobCreated(job_id=iid, run_id=iid, workflow_id=workflow_uuid(services.settings.prefix, name),
                      workflow_name=name, version=version, status=status, input_data=data,
                      created_at=at(created_ms if created_ms is not None else int(time.time() * 1000)) or "")


def _repeat(services: Services, state: State, name: str, data: dict[str, Any]) -> Response[JobCreated]:
    if state.workflow != name or dict(state.context) != data:
        raise Problem(409, f"run {state.id} exists and was started with another workflow or input")
    return Response(_created(services, state.id, name, state.def_version, job_status(state.status),
                             dict(state.context), state.created_ms), status_code=200)


@post("/api/v1/workflows/{workflow_id:str}/execute", opt=WRITE, tags=TAGS, status_code=202,
      operation_id="v1ExecuteWorkflow",
      responses={200: ResponseSpec(JobCreated, description="this run_id was started before: that job",
                                   generate_examples=False), **problems(400, 404, 409, 413, 415, 422)},
      summary="Start a job: {\"input_data\": {...}} (or \"input\"); a repeated run_id starts nothing twice")
async def execute_workflow(services: NamedDependency[Services], workflow_id: WorkflowId,
                           data: JSONBody[ExecuteRequest]) -> Response[JobCreated]:
    name = await resolve_visible(services, workflow_id)
    given = _input_of(data)
    if data.run_id is not None:
        existing = (await Reads(services).current(data.run_id)).state
        if existing.status != STATUS_NONE:
            return _repeat(services, existing, name, given)
    try:
        iid = await services.client.start(name, given, version=data.version,
                                          instance_id=data.run_id or uuid.uuid4().hex)
    except InvalidContext as exc:
        raise Problem(422, f"input_data does not match the input schema of {name!r}: {exc}") from None
    body = _created(services, iid, name, data.version, "pending", given, None)
    return Response(body, status_code=202, headers={"Location": f"/api/v1/jobs/{iid}"})


async def _page(services: Services, status: JobStatus | None, name: str | None, limit: int,
                cursor: str | None) -> dict[str, Any]:
    """Newest first across the engine's statuses that make up one job status (merged by
    creation time and id, as the read model's own cursor orders them)."""
    natives: tuple[str | None, ...] = NATIVE[status] if status else (None,)
    pages = [await services.queries.executions(status=s, workflow=name, limit=limit, cursor=cursor)
             for s in natives]
    merged = sorted((r for p in pages for r in p["items"]), key=lambda r: (int(r["created_ms"]), str(r["id"])),
                    reverse=True)
    items = merged[:limit]
    more = len(merged) > limit or any(p["next_cursor"] for p in pages)
    last = items[-1] if items else None
    return {"items": items, "count": sum(int(p["count"]) for p in pages),
            "next_cursor": encode_cursor(int(last["created_ms"]), str(last["id"])) if more and last else None}


@get("/api/v1/jobs", opt=READ, tags=TAGS, operation_id="v1ListJobs", responses=problems(400, 404),
     summary="Jobs newest first (cursor pages), by workflow and status")
async def list_jobs(
    services: NamedDependency[Services],
    workflow_id: Annotated[str | None, QueryParameter(min_length=1, max_length=200,
                                                      description="a workflow's id or name")] = None,
    status: Annotated[JobStatus | None, QueryParameter(description="one of the five job statuses")] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, QueryParameter(max_length=1000, description="next_cursor of a page")] = None,
) -> JobPage:
    name = await resolve_visible(services, workflow_id) if workflow_id else None
    page = await _page(services, status, name, limit, cursor)
    prefix = services.settings.prefix
    # A node test's job is not one of the user's: its page may come out one short.
    items = [job_summary(r, prefix) for r in page["items"] if not is_reserved(r.get("workflow"))]
    return JobPage(items=items, total=int(page["count"]), limit=limit, next_cursor=page["next_cursor"])


async def _unwrap(services: Services, workflow: str | None, version: str | None) -> bool:
    if not workflow or not version:
        return False
    try:
        return form_of(await services.client.definition_document(workflow, version)) == "nodes"
    except NotFound:
        return False


async def read_job(services: Services, job_id: str) -> Job:
    state = (await Reads(services).current(job_id)).state
    prefix = services.settings.prefix
    if state.status != STATUS_NONE:
        definition = await services.client.catalog.get(state.workflow or "", state.def_version)
        names = [s.name for s in definition.steps] if definition else []
        return job_from_state(state, names, prefix, await _unwrap(services, state.workflow, state.def_version))
    record = await services.queries.execution(job_id)  # UnknownInstance: 404
    try:
        attempts = await services.queries.steps(job_id)
    except UnknownInstance:
        attempts = []
    unwrap = await _unwrap(services, record.get("workflow"), record.get("workflow_version"))
    return job_from_record(record, attempts, prefix, unwrap)


@get("/api/v1/jobs/{job_id:str}", opt=READ, tags=TAGS, operation_id="v1GetJob", responses=problems(400, 404),
     summary="One job: status, input, output, error, each node's result, times")
async def get_job(services: NamedDependency[Services], job_id: JobId) -> Job:
    return await read_job(services, job_id)


@post("/api/v1/jobs/{job_id:str}/cancel", opt=WRITE, tags=TAGS, status_code=200, operation_id="v1CancelJob",
      responses={202: ResponseSpec(CancelResult, description="sent, not applied within the wait",
                                   generate_examples=False), **problems(400, 404, 409)},
      summary="Cancel a job that has not ended (409 once it has)")
async def cancel_job(services: NamedDependency[Services], job_id: JobId) -> Response[CancelResult]:
    reads = Reads(services)
    folded = await reads.current(job_id)
    status = folded.state.status
    if status == STATUS_NONE:
        status = str((await services.queries.execution(job_id))["status"])  # 404, or retired: final
    if status not in CANCELLABLE:
        raise Problem(409, f"job {job_id} is {job_status(status)} ({status}): only a job that has not "
                           "ended can be cancelled")
    cmd_id = f"cancel:{uuid.uuid4().hex}"
    await services.client.cancel(job_id, "cancelled through /api/v1/jobs", cmd_id=cmd_id)
    seen = await reads.wait(job_id, folded.last_id, lambda s: any(e.cmd == cmd_id for _, e, _ in s),
                            services.api.start_wait_ms)
    applied = any(e.cmd == cmd_id for _, e, _ in seen)
    after = folded.extend(seen).state.status if applied else status
    return Response(CancelResult(job_id=job_id, applied=applied, status=job_status(after)),
                    status_code=200 if applied else 202)


@get("/api/v1/jobs/{job_id:str}/logs", opt=READ, tags=TAGS, operation_id="v1GetJobLogs",
     responses=problems(400, 404),
     summary="The job's log lines from its history, in order (cursor pages; from the read models once retired)")
async def get_job_logs(
    services: NamedDependency[Services], job_id: JobId,
    cursor: Annotated[str | None, QueryParameter(pattern=r"^[0-9]{1,20}-[0-9]{1,20}$",
                                                 description="next_cursor of the previous page")] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> LogPage:
    retired = cursor is not None and cursor.startswith("0-")  # a cursor of the read-model log below
    page = [] if retired else await Reads(services).page(job_id, cursor, limit)
    if page or (cursor is not None and not retired):
        lines = [log_line(eid, version, event, ts) for eid, version, event, ts in page]
    else:
        # The stream was retired (or never was): the lifecycle read model keeps its transitions,
        # attempts and errors (UnknownInstance, a 404, when it has not got the job either).
        after = int(cursor[2:]) if retired and cursor else 0
        lines = [line for line in map(lifecycle_line, await services.queries.lifecycle(job_id))
                 if line.seq > after][:limit]
    return LogPage(job_id=job_id, lines=lines, next_cursor=lines[-1].entry_id if len(lines) == limit else None)


ROUTES: list[Any] = [execute_workflow, list_jobs, get_job, cancel_job, get_job_logs]
