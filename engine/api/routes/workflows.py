"""Definitions: seed 000's `/workflows` routes. Registering takes the seed's JSON
body or YAML (`application/yaml`); a (name, version) is immutable, so posting
the same one again is a replay (200, the stored workflow) and a different body
under it is 409. A changed definition is a new version; executions keep the
version they started with. DELETE deactivates (new starts get 409) and
`PUT {"active": true}` reactivates; nothing is ever deleted, so history stays."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, delete, get, post, put
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, PathParameter, QueryParameter

from engine.api.definitions import (
    YAML_TYPES,
    decode_cursor,
    decode_document,
    document_body,
    encode_cursor,
    identity,
    name_problem,
    next_version,
    same_definition,
    step_names,
)
from engine.api.models.workflows import (
    Validation,
    Workflow,
    WorkflowCreate,
    WorkflowPage,
    WorkflowSummary,
    WorkflowUpdate,
    WorkflowVersionCreate,
    WorkflowVersions,
)
from engine.api.problems import Problem, ProblemItem, problems
from engine.api.services import Services
from engine.api.workflow_ids import resolve_workflow
from engine.api.workflow_views import head_of, summary, versions_view, workflow_names, workflow_view
from engine.core.definition import DefinitionError, parse_definition
from engine.errors import NotFound

# The app refuses a body that is not JSON (415) unless the route lists more types here.
ADMIN = {"scope": "admin", "accepts": tuple(sorted(YAML_TYPES))}
TAGS = ["workflows"]
WorkflowId = Annotated[str, PathParameter(description="the workflow's id (a UUID) or its name")]
VersionQuery = Annotated[str | None, QueryParameter(description="a version of the workflow (default: the latest)")]
Req = Request[Any, Any, Any]
# Seed 000's registration body, shown in the docs and tried first by fuzzers.
SEED_EXAMPLE = {"name": "Agent Task Execution", "description": "Workflow for agent task execution process",
                "version": "1.0.0", "definition": {"steps": [
                    {"name": "task_preparation", "step_type": "service_call", "service": "planning-system",
                     "endpoint": "/tasks/{task_id}/prepare", "sequence": 1,
                     "retry_policy": {"max_attempts": 3, "backoff_base": 2, "backoff_multiplier": 1000}}],
                    "error_handlers": []}}


def _also(status: int, description: str, container: Any = Workflow) -> dict[int, ResponseSpec]:
    return {status: ResponseSpec(data_container=container, description=description)}


async def _document(request: Req, *, optional: bool = False) -> dict[str, Any] | None:
    return decode_document(await request.body(), request.headers.get("content-type"), optional=optional)


@post("/workflows", opt=ADMIN, tags=TAGS, status_code=201, operation_id="createWorkflow",
      operation_class=document_body(WorkflowCreate, example=SEED_EXAMPLE, links=True),
      summary="Register a workflow definition (JSON or YAML)",
      responses={**_also(200, "this (name, version) was already registered with this body"),
                 **problems(400, 409, 413, 415, 422)})
async def create_workflow(request: Req, services: NamedDependency[Services]) -> Response[Workflow]:
    doc = await _document(request)
    assert doc is not None
    definition, created = await services.client.register(doc)
    view = await workflow_view(services, definition.name, definition.version)
    return Response(view, status_code=201 if created else 200)


@get("/workflows", tags=TAGS, operation_id="listWorkflows",
     summary="Workflows by name, a page at a time", responses=problems(400))
async def list_workflows(
    services: NamedDependency[Services],
    name: Annotated[str | None, QueryParameter(description="names containing this (any case)")] = None,
    active: FromQuery[bool | None] = None,
    cursor: Annotated[str | None, QueryParameter(description="next_cursor of a page")] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
) -> WorkflowPage:
    after = decode_cursor(cursor)
    needle = name.casefold() if name else None
    items: list[WorkflowSummary] = []
    for candidate in await workflow_names(services):
        if (after is not None and candidate <= after) or (needle and needle not in candidate.casefold()):
            continue
        found = await summary(services, candidate)
        if found is None or (active is not None and found.active != active):
            continue
        if len(items) == limit:
            return WorkflowPage(items=items, next_cursor=encode_cursor(items[-1].name))
        items.append(found)
    return WorkflowPage(items=items)


@get("/workflows/{workflow_id:str}", tags=TAGS, operation_id="getWorkflow",
     summary="One workflow (the latest version unless ?version=)",
     responses=problems(404))
async def get_workflow(services: NamedDependency[Services], workflow_id: WorkflowId,
                       version: VersionQuery = None) -> Workflow:
    return await workflow_view(services, await resolve_workflow(services, workflow_id), version)


async def _add_version(services: Services, name: str, doc: dict[str, Any]) -> tuple[Workflow, bool]:
    """Register `doc` as a version of `name`: unchanged from the latest -> nothing new;
    without a version -> the next one after the latest."""
    problem = name_problem(doc, name)
    if problem is not None:
        raise problem
    head = await head_of(services, name)
    assert head.latest is not None
    _, given = identity(doc)
    if given is None and same_definition(await services.client.definition_document(name, head.latest), doc):
        return await workflow_view(services, name), False
    version = given if given is not None else next_version(head.latest)
    definition, created = await services.client.register(doc, name=name, version=str(version))
    return await workflow_view(services, name, definition.version), created


def _has_definition(doc: dict[str, Any]) -> bool:
    return any(key in doc for key in ("definition", "spec", "apiVersion", "steps"))


@put("/workflows/{workflow_id:str}", opt=ADMIN, tags=TAGS, operation_id="updateWorkflow",
     operation_class=document_body(WorkflowUpdate),
     summary="Change a workflow: a changed definition becomes a new version; `active` (de)activates it",
     responses=problems(400, 404, 409, 413, 415, 422))
async def update_workflow(request: Req, services: NamedDependency[Services], workflow_id: WorkflowId) -> Workflow:
    name = await resolve_workflow(services, workflow_id)
    doc = await _document(request)
    assert doc is not None
    active = doc.pop("active", None)
    if active is not None and not isinstance(active, bool):
        raise Problem(422, "active must be true or false", errors=[ProblemItem(path="active", message="not a boolean")])
    version = None
    if _has_definition(doc):
        version = (await _add_version(services, name, doc))[0].version
    elif set(doc) - {"name"} or name_problem(doc, name):
        raise Problem(422, "PUT changes the definition (send `definition`) and/or `active`; nothing else alone",
                      errors=[ProblemItem(path=k, message="not changeable without a definition")
                              for k in sorted(set(doc) - {"name"})] or None)
    if active is not None:
        await services.client.set_active(name, active)
    return await workflow_view(services, name, version)


@delete("/workflows/{workflow_id:str}", opt=ADMIN, tags=TAGS, status_code=200, operation_id="deactivateWorkflow",
        summary="Deactivate: new starts are refused (409), running executions finish, history stays",
        responses=problems(404))
async def deactivate_workflow(services: NamedDependency[Services], workflow_id: WorkflowId) -> Workflow:
    name = await resolve_workflow(services, workflow_id)
    await services.client.set_active(name, False)
    return await workflow_view(services, name)


@post("/workflows/{workflow_id:str}/versions", opt=ADMIN, tags=TAGS, status_code=201,
      operation_id="createWorkflowVersion", operation_class=document_body(WorkflowVersionCreate, links=True),
      summary="Register a new version of this workflow",
      responses={**_also(200, "nothing new: the same body is already stored (under this or the latest version)"),
                 **problems(400, 404, 409, 413, 415, 422)})
async def create_version(request: Req, services: NamedDependency[Services], workflow_id: WorkflowId) -> Response[Workflow]:
    name = await resolve_workflow(services, workflow_id)
    doc = await _document(request)
    assert doc is not None
    view, created = await _add_version(services, name, doc)
    return Response(view, status_code=201 if created else 200)


@get("/workflows/{workflow_id:str}/versions", tags=TAGS, operation_id="listWorkflowVersions",
     summary="Every version of a workflow, oldest first",
     responses=problems(404))
async def list_versions(services: NamedDependency[Services], workflow_id: WorkflowId) -> WorkflowVersions:
    return await versions_view(services, await resolve_workflow(services, workflow_id))


def _verdict(doc: dict[str, Any], *, name: str | None = None, version: str | None = None,
             extra: list[ProblemItem] | None = None) -> Validation:
    given_name, given_version = identity(doc)
    try:
        definition = parse_definition(doc, name=name, version=version)
    except DefinitionError as exc:
        errors = [ProblemItem(path=p.path, message=p.message) for p in exc.problems] + (extra or [])
        named = name or (given_name if isinstance(given_name, str) else None)
        return Validation(valid=False, errors=errors, name=named,
                          version=version or (given_version if isinstance(given_version, str) else None))
    errors = extra or []
    return Validation(valid=not errors, errors=errors, name=definition.name, version=definition.version,
                      steps=step_names(definition))


@post("/workflows/validate", opt=ADMIN, tags=TAGS, status_code=200, operation_id="validateWorkflow",
      operation_class=document_body(WorkflowCreate, example=SEED_EXAMPLE),
      summary="Check a definition, store nothing: every problem with its path",
      responses=problems(400, 413, 415))
async def validate_definition(request: Req) -> Validation:
    doc = await _document(request)
    assert doc is not None
    return _verdict(doc)


async def _conflict(services: Services, name: str, version: str, doc: dict[str, Any]) -> list[ProblemItem]:
    try:
        stored = await services.client.definition_document(name, version)
    except NotFound:
        return []
    if same_definition(stored, doc):
        return []
    return [ProblemItem(path="version", message=f"{version!r} is already registered with a different body")]


@post("/workflows/{workflow_id:str}/validate", opt=ADMIN, tags=TAGS, status_code=200,
      operation_id="validateWorkflowVersion",
      operation_class=document_body(WorkflowVersionCreate, required=False),
      summary="Check a candidate version of this workflow (or, with no body, the stored one); store nothing",
      responses=problems(400, 404, 413, 415))
async def validate_version(request: Req, services: NamedDependency[Services], workflow_id: WorkflowId,
                           version: VersionQuery = None) -> Validation:
    name = await resolve_workflow(services, workflow_id)
    head = await head_of(services, name)
    assert head.latest is not None
    doc = await _document(request, optional=True)
    if doc is None:
        # The stored one under today's rules: it may predate a check registration now makes.
        stored = version or head.latest
        return _verdict(await services.client.definition_document(name, stored), name=name, version=stored)
    mismatch = name_problem(doc, name)
    extra = [ProblemItem(path=p.path, message=p.message) for p in mismatch.problems] if mismatch else []
    _, given = identity(doc)
    candidate = str(given) if given is not None else next_version(head.latest)
    return _verdict(doc, name=name, version=candidate, extra=extra + await _conflict(services, name, candidate, doc))


ROUTES: list[Any] = [create_workflow, list_workflows, validate_definition, get_workflow, update_workflow,
                     deactivate_workflow, create_version, list_versions, validate_version]
