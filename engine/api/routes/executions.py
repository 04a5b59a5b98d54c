"""Executions: start (waiting on the instance stream for the engine to apply it),
list from the read models, read one fresh from its stream, control it, and read
its state, history, steps and retries. Commands go to the inboxes through
engine.Client; the routes keep no state, so any API process answers any request.

Idempotency: a start with an `Idempotency-Key` runs as the execution id derived
from the key (views.idempotent_id), so every process maps one key to one
execution; a repeat answers that execution, and a repeat whose body differs is
refused with 422 (draft-ietf-httpapi-idempotency-key-header). A client-chosen
`execution_id` is idempotent the same way (a different body for an existing
id: 409)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import msgspec
from litestar import Response, get, post, put
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, HeaderParameter, JSONBody, PathParameter, QueryParameter

from engine.api.executions.links import StartOperation
from engine.api.executions.reads import Folded, Reads, step_names
from engine.api.executions.views import (
    at,
    correlated_page,
    from_record,
    from_state,
    group_steps,
    history_event,
    idempotent_id,
    mismatch,
    pending,
    rewinds,
    schema_items,
    started,
    summary,
)
from engine.api.live.cursor import entry_id
from engine.api.models.executions import (
    EXECUTION_ID_PATTERN,
    ControlRequest,
    ControlResult,
    CorrelationId,
    Execution,
    ExecutionPage,
    ExecutionStarted,
    HistoryPage,
    RetriesView,
    RetryRequest,
    StartExecution,
    StateView,
    StepsView,
)
from engine.api.problems import Problem, ProblemItem, problems
from engine.api.services import Services
from engine.api.workflow_ids import as_uuid, resolve_workflow, step_uuid, workflow_uuid
from engine.core.ids import traceparent_problem
from engine.core.model import (
    STATUS_COMPENSATING,
    STATUS_CREATED,
    STATUS_FAILED,
    STATUS_NONE,
    STATUS_PAUSED,
    STATUS_QUEUED,
    STATUS_RUNNING,
    CommandRejected,
    WorkflowQueued,
    WorkflowStarted,
)
from engine.errors import InvalidContext, NotFound, UnknownInstance
from projections.queries import parse_time

TAGS = ["executions"]
# The statuses each control command is accepted in: the engine's rules (engine/core/decide.py,
# _cancel/_pause/_resume/_retry; tests/unit/api/test_executions.py checks they agree), checked
# here first so a refusal is a 409 now rather than a rejection event later.
ACCEPTS = {
    "cancel": frozenset({STATUS_CREATED, STATUS_QUEUED, STATUS_RUNNING, STATUS_PAUSED, STATUS_FAILED,
                         STATUS_COMPENSATING}),
    "pause": frozenset({STATUS_RUNNING}),
    "resume": frozenset({STATUS_PAUSED}),
    "retry": frozenset({STATUS_FAILED}),
}
Command = Literal["cancel", "pause", "resume", "retry"]
Status = Literal["created", "queued", "running", "paused", "failed", "completed", "cancelled", "compensating", "compensated"]

ExecutionIdParam = Annotated[str, PathParameter(pattern=EXECUTION_ID_PATTERN, max_length=200,
                                                description="the execution's id")]
StepIdParam = Annotated[str, PathParameter(min_length=1, max_length=200, description="the step's id (UUID) or name")]
WaitMs = Annotated[int | None, QueryParameter(ge=0, le=60_000, description="how long to wait for the engine to apply "
                                              "it (ms); default FOLDFLOW_API_START_WAIT_MS")]
IdempotencyKey = Annotated[str | None, HeaderParameter(name="Idempotency-Key", min_length=1, max_length=255,
                                                       description="the same key returns the same execution")]
TraceParent = Annotated[str | None, HeaderParameter(name="traceparent", max_length=55,
                                                    description="W3C trace context, carried by every task of "
                                                                "the execution (00-<32 hex>-<16 hex>-<2 hex>)")]
EntryId = Annotated[str | None, QueryParameter(pattern=r"^[0-9]{1,20}-[0-9]{1,20}$",
                                               description="an entry_id of the previous page")]


def _wait(services: Services, wait_ms: int | None) -> int:
    return services.api.start_wait_ms if wait_ms is None else wait_ms


async def _names(services: Services, workflow: str | None, version: str | None, seen: Any = ()) -> list[str]:
    definition = await services.client.catalog.get(workflow, version) if workflow else None
    return step_names(definition, list(seen))


# -- start -----------------------------------------------------------------------
def _refuse_repeat(keyed: bool, execution_id: str, diff: list[str]) -> Problem:
    if keyed:
        return Problem(422, "this Idempotency-Key was used for a different request (execution "
                            f"{execution_id}); use a new key for a new execution", errors=_diff_items(diff))
    return Problem(409, f"execution {execution_id} exists and was started differently", errors=_diff_items(diff))


def _diff_items(diff: list[str]) -> list[Any]:
    return [ProblemItem(path=d.split(":", 1)[0], message=d.split(": ", 1)[1]) for d in diff]


async def _replay(services: Services, iid: str, folded: Folded, name: str, body: StartExecution,
                  keyed: bool) -> Response[ExecutionStarted] | None:
    """The answer to a start of an id that exists already (None: it does not)."""
    prefix = services.settings.prefix
    if folded.created is not None:
        diff = mismatch(folded.created, name, body)
        if diff:
            raise _refuse_repeat(keyed, iid, diff)
        names = await _names(services, name, folded.state.def_version, folded.state.steps)
        return Response(started(folded.state, names, prefix), status_code=200, headers={"Idempotent-Replayed": "true"})
    try:
        record = await services.queries.execution(iid)
    except UnknownInstance:
        return None
    diff = mismatch({**record, "version": record.get("workflow_version")}, name, body)
    if diff:
        raise _refuse_repeat(keyed, iid, diff)
    view = from_record(record, [], prefix)
    return Response(ExecutionStarted(
        execution_id=iid, workflow_id=view.workflow_id or "", workflow=name, version=view.version,
        correlation_id=view.correlation_id, status="started", started_at=at(record.get("started_ms")),
        started_ms=record.get("started_ms"), current_step=view.current_step, current_steps=view.current_steps,
        context=view.context), status_code=200, headers={"Idempotent-Replayed": "true"})


@post("/executions", status_code=200, operation_id="startExecution", operation_class=StartOperation, tags=TAGS,
      summary="Start an execution (200 once the engine applied it, else 202 pending)",
      responses={202: ResponseSpec(ExecutionStarted, description="Sent, not applied within wait_ms: poll "
                                   "GET /executions/{execution_id}", generate_examples=False),
                 **problems(400, 404, 409, 413, 415, 422)})
async def start_execution(services: NamedDependency[Services], data: JSONBody[StartExecution],
                          idempotency_key: IdempotencyKey = None, wait_ms: WaitMs = None,
                          traceparent: TraceParent = None) -> Response[ExecutionStarted]:
    if traceparent is not None and (problem := traceparent_problem(traceparent)) is not None:
        raise Problem(400, problem)  # refused before anything is read or sent
    # A name needs no lookup of its own: the start's one read of the definition refuses an unknown one.
    by_name = as_uuid(data.workflow_id) is None
    name = data.workflow_id if by_name else await resolve_workflow(services, data.workflow_id)
    reads = Reads(services)
    iid = data.execution_id or (idempotent_id(services.settings.prefix, idempotency_key) if idempotency_key else None)
    if iid is not None:
        replay = await _replay(services, iid, await reads.fold(iid), name, data, data.execution_id is None)
        if replay is not None:
            return replay
    try:
        iid = await services.client.start(name, data.context, version=data.version,
                                          correlation_id=data.correlation_id, instance_id=iid,
                                          traceparent=traceparent, priority=data.priority, tenant=data.tenant)
    except InvalidContext as exc:
        raise Problem(422, f"the context does not match the input schema of {name!r}",
                      errors=schema_items(exc.problems)) from None
    seen = await reads.wait(iid, None, _has((WorkflowStarted, WorkflowQueued)), _wait(services, wait_ms))
    folded = Folded(seen)
    if folded.created is None or folded.state.status == STATUS_QUEUED:  # queued: waits for a concurrency slot
        return Response(pending(iid, name, data, services.settings.prefix), status_code=202)
    diff = mismatch(folded.created, name, data)
    if diff:  # a concurrent start of the same id got there first
        raise _refuse_repeat(data.execution_id is None, iid, diff)
    names = await _names(services, name, folded.state.def_version, folded.state.steps)
    return Response(started(folded.state, names, services.settings.prefix), status_code=200)


def _has(kind: type | tuple[type, ...]) -> Any:
    return lambda seen: any(isinstance(e, kind) for _, e, _ in seen)


# -- reads ------------------------------------------------------------------------
@get("/executions", operation_id="listExecutions", tags=TAGS, summary="Executions, newest first (cursor pages)",
     responses=problems(400, 404))
async def list_executions(
    services: NamedDependency[Services], status: FromQuery[Status | None] = None,
    workflow: Annotated[str | None, QueryParameter(min_length=1, max_length=200,
                                              description="a workflow's id or name")] = None,
    correlation_id: Annotated[CorrelationId | None, QueryParameter(min_length=1, max_length=200)] = None,
    since: Annotated[str | None, QueryParameter(description="ms, ISO-8601 or an age (15m, 2d)", max_length=64)] = None,
    until: Annotated[str | None, QueryParameter(description="ms, ISO-8601 or an age", max_length=64)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, QueryParameter(max_length=1000, description="next_cursor of the previous page")] = None,
) -> ExecutionPage:
    name = await resolve_workflow(services, workflow) if workflow else None
    lo = parse_time(since) if since else None
    hi = parse_time(until) if until else None
    if correlation_id:
        records = await services.queries.correlated(correlation_id)
        page = correlated_page(records, status=status, workflow=name, since=lo, until=hi, limit=limit, cursor=cursor)
    else:
        page = await services.queries.executions(status=status, workflow=name, since=lo, until=hi, limit=limit,
                                                 cursor=cursor)
    prefix = services.settings.prefix
    return ExecutionPage(items=[summary(r, prefix) for r in page["items"]], count=int(page["count"]),
                         next_cursor=page["next_cursor"])


@get("/executions/{execution_id:str}", operation_id="getExecution", tags=TAGS,
     summary="One execution, folded from its stream now (its read model once the stream is retired)",
     responses=problems(400, 404))
async def get_execution(services: NamedDependency[Services], execution_id: ExecutionIdParam) -> Execution:
    folded = await Reads(services).current(execution_id)
    state = folded.state
    if state.status != STATUS_NONE:
        names = await _names(services, state.workflow, state.def_version, state.steps)
        return from_state(state, names, services.settings.prefix)
    record = await services.queries.execution(execution_id)
    attempts = await _attempts(services, execution_id)
    return from_record(record, attempts, services.settings.prefix)


async def _attempts(services: Services, execution_id: str) -> list[dict[str, Any]]:
    try:
        return await services.queries.steps(execution_id)
    except UnknownInstance:  # not projected yet
        return []


@get("/executions/{execution_id:str}/state", operation_id="getExecutionState", tags=TAGS,
     summary="The execution's state as the engine folds it", responses=problems(400, 404))
async def get_state(services: NamedDependency[Services], execution_id: ExecutionIdParam) -> StateView:
    folded = await Reads(services).current(execution_id)
    if folded.state.status == STATUS_NONE:
        raise UnknownInstance(f"no instance stream for execution {execution_id!r} (unknown, or retired: "
                              "GET /executions/{execution_id} serves its read model)")
    return StateView(execution_id=execution_id, version=folded.state.version, last_entry_id=folded.last_id,
                     state=msgspec.to_builtins(folded.state))


@get("/executions/{execution_id:str}/history", operation_id="getExecutionHistory", tags=TAGS,
     summary="The execution's events in order, paged by entry id", responses=problems(400, 404))
async def get_history(services: NamedDependency[Services], execution_id: ExecutionIdParam, after: EntryId = None,
                      limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100) -> HistoryPage:
    page = await Reads(services).page(execution_id, entry_id(after) if after is not None else None, limit)
    if not page and after is None:
        raise UnknownInstance(f"no history for execution {execution_id!r} (unknown, or its stream retired)")
    events = [history_event(eid, version, event, ts) for eid, version, event, ts in page]
    return HistoryPage(execution_id=execution_id, events=events,
                       next_after=events[-1].entry_id if len(events) == limit else None)


# -- control -----------------------------------------------------------------------
async def _control(services: Services, execution_id: str, command: Command, wait_ms: int | None,
                   **data: Any) -> Response[ControlResult]:
    reads = Reads(services)
    folded = await reads.current(execution_id)
    status = folded.state.status
    if status == STATUS_NONE:
        record = await services.queries.execution(execution_id)  # UnknownInstance: 404
        status = str(record["status"])  # its stream was retired: it is final
    if status not in ACCEPTS[command]:
        raise Problem(409, f"cannot {command} an execution that is {status} (accepted when "
                           f"{' or '.join(sorted(ACCEPTS[command]))})")
    cmd_id = f"{command}:{uuid.uuid4().hex}"
    await _send(services, execution_id, command, cmd_id, data)
    seen = await reads.wait(execution_id, folded.last_id, lambda s: any(e.cmd == cmd_id for _, e, _ in s),
                            _wait(services, wait_ms))
    mine = [e for _, e, _ in seen if e.cmd == cmd_id]
    rejected = next((e for e in mine if isinstance(e, CommandRejected)), None)
    if rejected is not None:  # the status changed between the check and the command
        raise Problem(409, rejected.reason)
    after = folded.extend(seen).state.status if mine else status
    return Response(ControlResult(execution_id=execution_id, command=command, command_id=cmd_id,
                                  applied=bool(mine), status=after), status_code=200 if mine else 202)


async def _send(services: Services, execution_id: str, command: Command, cmd_id: str, data: dict[str, Any]) -> None:
    client = services.client
    if command == "cancel":
        await client.cancel(execution_id, data.get("reason"), cmd_id=cmd_id)
    elif command == "pause":
        await client.pause(execution_id, data.get("reason"), cmd_id=cmd_id)
    elif command == "resume":
        await client.resume(execution_id, cmd_id=cmd_id)
    else:
        await client.retry(execution_id, from_step=data.get("from_step"), input=data.get("input"), cmd_id=cmd_id)


_CONTROL = {202: ResponseSpec(ControlResult, description="Sent, not applied within wait_ms",
                              generate_examples=False), **problems(400, 404, 409)}


@put("/executions/{execution_id:str}/cancel", operation_id="cancelExecution", tags=TAGS, responses=_CONTROL,
     summary="Cancel (409 when it is completed, cancelled or compensated)")
async def cancel_execution(services: NamedDependency[Services], execution_id: ExecutionIdParam,
                           data: JSONBody[ControlRequest | None] = None, wait_ms: WaitMs = None) -> Response[ControlResult]:
    return await _control(services, execution_id, "cancel", wait_ms, reason=data.reason if data else None)


@put("/executions/{execution_id:str}/pause", operation_id="pauseExecution", tags=TAGS, responses=_CONTROL,
     summary="Pause a running execution (409 otherwise)")
async def pause_execution(services: NamedDependency[Services], execution_id: ExecutionIdParam,
                          data: JSONBody[ControlRequest | None] = None, wait_ms: WaitMs = None) -> Response[ControlResult]:
    return await _control(services, execution_id, "pause", wait_ms, reason=data.reason if data else None)


@put("/executions/{execution_id:str}/resume", operation_id="resumeExecution", tags=TAGS, responses=_CONTROL,
     summary="Resume a paused execution (409 otherwise)")
async def resume_execution(services: NamedDependency[Services], execution_id: ExecutionIdParam,
                           wait_ms: WaitMs = None) -> Response[ControlResult]:
    return await _control(services, execution_id, "resume", wait_ms)


# -- steps ---------------------------------------------------------------------------
async def _workflow_of(services: Services, folded: Folded, execution_id: str) -> tuple[str | None, list[str]]:
    state = folded.state
    if state.status != STATUS_NONE:
        return state.workflow, await _names(services, state.workflow, state.def_version, state.steps)
    record = await services.queries.execution(execution_id)  # UnknownInstance: 404
    return record.get("workflow"), await _names(services, record.get("workflow"), record.get("workflow_version"))


def _resolve_step(services: Services, workflow: str | None, names: list[str], step_id: str) -> str:
    if step_id in names:
        return step_id
    wanted = step_id.lower()
    for name in names:
        if workflow and step_uuid(workflow_uuid(services.settings.prefix, workflow), name) == wanted:
            return name
    raise NotFound(f"no step {step_id!r} in {workflow!r}")


@get("/executions/{execution_id:str}/steps", operation_id="getExecutionSteps", tags=TAGS,
     summary="Each step with its attempts: inputs, outputs, errors, times", responses=problems(400, 404))
async def get_steps(services: NamedDependency[Services], execution_id: ExecutionIdParam) -> StepsView:
    folded = await Reads(services).current(execution_id)
    workflow, names = await _workflow_of(services, folded, execution_id)
    attempts = await _attempts(services, execution_id)
    return StepsView(execution_id=execution_id,
                     steps=group_steps(attempts, names, workflow, services.settings.prefix))


@get("/executions/{execution_id:str}/steps/{step_id:str}/retries", operation_id="getStepRetries", tags=TAGS,
     summary="A step's attempts and the retries that ran it again", responses=problems(400, 404))
async def get_retries(services: NamedDependency[Services], execution_id: ExecutionIdParam,
                      step_id: StepIdParam) -> RetriesView:
    folded = await Reads(services).fold(execution_id)
    workflow, names = await _workflow_of(services, folded, execution_id)
    attempts = await _attempts(services, execution_id)
    name = _resolve_step(services, workflow, names + [str(a["step"]) for a in attempts], step_id)
    (history,) = group_steps([a for a in attempts if a["step"] == name], [name], workflow, services.settings.prefix)
    runs = [a for a in history.attempts if a.kind != "notification"]
    return RetriesView(execution_id=execution_id, step_id=history.step_id, name=name, retries=max(0, len(runs) - 1),
                       attempts=history.attempts, rewinds=rewinds(folded.events, name))


@post("/executions/{execution_id:str}/steps/{step_id:str}/retry", status_code=200, operation_id="retryFromStep",
      tags=TAGS, responses=_CONTROL,
      summary="Run a failed execution again from this step, optionally with edited input (audited)")
async def retry_step(services: NamedDependency[Services], execution_id: ExecutionIdParam, step_id: StepIdParam,
                     data: JSONBody[RetryRequest | None] = None, wait_ms: WaitMs = None) -> Response[ControlResult]:
    folded = await Reads(services).current(execution_id)
    workflow, names = await _workflow_of(services, folded, execution_id)
    name = _resolve_step(services, workflow, names, step_id)
    definition = await services.client.catalog.get(workflow, folded.state.def_version) if workflow else None
    if definition is not None and name in definition.compensation_steps():
        raise Problem(409, f"cannot retry from {name!r}: it is a compensation step")
    return await _control(services, execution_id, "retry", wait_ms, from_step=name,
                          input=data.input if data else None)


ROUTES: list[Any] = [start_execution, list_executions, get_execution, get_state, get_history, cancel_execution,
                     pause_execution, resume_execution, get_steps, get_retries, retry_step]
