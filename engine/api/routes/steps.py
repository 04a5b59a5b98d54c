"""Steps of the definitions: each with its id (a UUIDv5 of its workflow's id and
its name, the same in every version). `step_id` is the id or the name; a name
that two workflows share answers 409 listing both, unless `?workflow=` says
which. (An execution's steps are under /executions/{execution_id}/steps.)"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import get
from litestar.di import NamedDependency
from litestar.params import PathParameter, QueryParameter

from engine.api.definitions import decode_cursor, encode_cursor
from engine.api.models.workflows import StepDefinition, StepPage
from engine.api.problems import problems
from engine.api.routes.workflows import VersionQuery, WorkflowId
from engine.api.services import Services
from engine.api.workflow_ids import resolve_workflow
from engine.api.workflow_views import every_step, find_step, workflow_steps

TAGS = ["steps"]


def _key(step: StepDefinition, position: int) -> str:
    return f"{step.workflow}\n{position:08d}"


@get("/steps", tags=TAGS, operation_id="listSteps",
     summary="Every step of the latest version of every workflow", responses=problems(400, 404))
async def list_steps(
    services: NamedDependency[Services],
    workflow: Annotated[str | None, QueryParameter(description="only this workflow's steps (its id or name)")] = None,
    type: Annotated[str | None, QueryParameter(description="only steps of this type, e.g. service_call")] = None,
    cursor: Annotated[str | None, QueryParameter(description="next_cursor of a page")] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> StepPage:
    after = decode_cursor(cursor)
    if workflow is not None:
        steps = await workflow_steps(services, await resolve_workflow(services, workflow))
    else:
        steps = await every_step(services)
    position: dict[str, int] = {}
    keyed = []
    for step in steps:
        position[step.workflow] = position.get(step.workflow, -1) + 1
        keyed.append((_key(step, position[step.workflow]), step))
    page = [(k, s) for k, s in keyed if (after is None or k > after) and (type is None or s.type == type)]
    if len(page) > limit:
        return StepPage(items=[s for _, s in page[:limit]], next_cursor=encode_cursor(page[limit - 1][0]))
    return StepPage(items=[s for _, s in page])


@get("/steps/{step_id:str}", tags=TAGS, operation_id="getStep",
     summary="One step by its id or its name", responses=problems(404, 409))
async def get_step(
    services: NamedDependency[Services],
    step_id: Annotated[str, PathParameter(description="the step's id (a UUID) or its name")],
    workflow: Annotated[str | None, QueryParameter(description="the workflow (id or name) a shared step name is in")] = None,
) -> StepDefinition:
    return await find_step(services, step_id, workflow)


@get("/workflows/{workflow_id:str}/steps", tags=TAGS, operation_id="listWorkflowSteps",
     summary="The steps of a workflow, in definition order",
     responses=problems(404))
async def steps_of_workflow(
    services: NamedDependency[Services], workflow_id: WorkflowId, version: VersionQuery = None,
) -> list[StepDefinition]:
    return await workflow_steps(services, await resolve_workflow(services, workflow_id), version)


ROUTES: list[Any] = [list_steps, get_step, steps_of_workflow]
