"""Seed 001's /api/v1/workflows: the same catalog as /workflows, in nodes and edges.

POST takes seed 001's document (and seed 003's plans and the native forms: the
parser detects the shape); a changed definition PUT becomes the next version;
DELETE deactivates (history stays). Pages are by name with a cursor
(`limit`, `cursor` = the `next_cursor` of the previous page)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, delete, get, post, put
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import PathParameter, QueryParameter

from engine.api.definitions import (
    YAML_TYPES,
    decode_cursor,
    decode_document,
    document_body,
    encode_cursor,
    identity,
    iso,
    name_problem,
    next_version,
    same_definition,
)
from engine.api.problems import Problem, ProblemItem, problems
from engine.api.services import Services
from engine.api.v1.models.workflows import WorkflowCreateV1, WorkflowPageV1, WorkflowV1
from engine.api.v1.shapes import RESERVED_PREFIX, form_of, is_reserved, nodes_and_edges
from engine.api.workflow_ids import resolve_workflow, workflow_uuid
from engine.api.workflow_views import head_of, workflow_names
from engine.errors import DefinitionConflict, UnknownWorkflow

TAGS = ["v1 workflows"]
READ = {"scope": "read"}
ADMIN = {"scope": "admin", "accepts": tuple(sorted(YAML_TYPES))}
WorkflowId = Annotated[str, PathParameter(description="the workflow's id (a UUID) or its name", max_length=200)]
Req = Request[Any, Any, Any]
SEED_001 = {"name": "Customer Support Workflow", "description": "Classify and route an inquiry",
            "nodes": [{"id": "start", "type": "start", "config": {}},
                      {"id": "classify", "type": "llm", "config": {
                          "model": "gpt-4", "prompt": "Classify this customer inquiry: {{input.message}}"}}],
            "edges": [{"source": "start", "target": "classify"}]}


async def workflow_v1(services: Services, name: str, version: str | None = None) -> WorkflowV1:
    head = await head_of(services, name)
    assert head.latest is not None
    version = version or head.latest
    doc = await services.client.definition_document(name, version)
    definition = await services.client.definition(name, version)
    nodes, edges = nodes_and_edges(doc, definition)
    versions = await services.client.store.definition_versions(name)
    return WorkflowV1(id=workflow_uuid(services.settings.prefix, name), name=name, description=definition.description, nodes=nodes,
                      edges=edges, version=version, latest_version=head.latest, versions=len(versions),
                      is_active=head.active, form=form_of(doc), created_at=iso(head.created_ms),
                      updated_at=iso(head.updated_ms))


async def resolve_visible(services: Services, workflow_id: str) -> str:
    """The workflow's name; the reserved node-test workflows are not there for this API."""
    name = await resolve_workflow(services, workflow_id)
    if is_reserved(name):
        raise UnknownWorkflow(f"no workflow {workflow_id!r}")
    return name


async def _document(request: Req) -> dict[str, Any]:
    doc = decode_document(await request.body(), request.headers.get("content-type"))
    assert doc is not None
    return doc


def _refuse_reserved(doc: dict[str, Any]) -> None:
    given, _ = identity(doc)
    if isinstance(given, str) and is_reserved(given):
        raise Problem(422, f"names starting with {RESERVED_PREFIX!r} are reserved for node tests",
                      errors=[ProblemItem(path="name", message="reserved")])


@post("/api/v1/workflows", opt=ADMIN, tags=TAGS, status_code=201, operation_id="v1CreateWorkflow",
      operation_class=document_body(WorkflowCreateV1, example=SEED_001),
      summary="Register a workflow (nodes and edges, an execution plan, or a native form)",
      responses={200: ResponseSpec(WorkflowV1, description="already registered with this body",
                                   generate_examples=False), **problems(400, 409, 413, 415, 422)})
async def create_workflow(request: Req, services: NamedDependency[Services]) -> Response[WorkflowV1]:
    doc = await _document(request)
    _refuse_reserved(doc)
    try:
        definition, created = await services.client.register(doc)
    except DefinitionConflict as exc:
        raise Problem(409, f"{exc}; PUT /api/v1/workflows/{{id}} registers a changed definition as the "
                           "next version") from None
    return Response(await workflow_v1(services, definition.name, definition.version),
                    status_code=201 if created else 200)


@get("/api/v1/workflows", opt=READ, tags=TAGS, operation_id="v1ListWorkflows",
     summary="Workflows by name, a page at a time (cursor paging)", responses=problems(400))
async def list_workflows(
    services: NamedDependency[Services],
    limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, QueryParameter(max_length=400, description="next_cursor of a page")] = None,
    is_active: Annotated[bool | None, QueryParameter(description="only (in)active workflows")] = None,
) -> WorkflowPageV1:
    after = decode_cursor(cursor)
    items: list[WorkflowV1] = []
    for name in await workflow_names(services):
        if (after is not None and name <= after) or is_reserved(name):
            continue
        try:
            found = await workflow_v1(services, name)
        except UnknownWorkflow:
            continue  # listed, but its hash is gone
        if is_active is not None and found.is_active != is_active:
            continue
        if len(items) == limit:
            return WorkflowPageV1(items=items, limit=limit, next_cursor=encode_cursor(items[-1].name))
        items.append(found)
    return WorkflowPageV1(items=items, limit=limit)


@get("/api/v1/workflows/{workflow_id:str}", opt=READ, tags=TAGS, operation_id="v1GetWorkflow",
     summary="One workflow, its latest version unless ?version=", responses=problems(400, 404))
async def get_workflow(services: NamedDependency[Services], workflow_id: WorkflowId,
                       version: Annotated[str | None, QueryParameter(max_length=64)] = None) -> WorkflowV1:
    return await workflow_v1(services, await resolve_visible(services, workflow_id), version)


@put("/api/v1/workflows/{workflow_id:str}", opt=ADMIN, tags=TAGS, operation_id="v1UpdateWorkflow",
     operation_class=document_body(WorkflowCreateV1, example=SEED_001),
     summary="A changed definition becomes the next version (the same one changes nothing)",
     responses=problems(400, 404, 409, 413, 415, 422))
async def update_workflow(request: Req, services: NamedDependency[Services], workflow_id: WorkflowId) -> WorkflowV1:
    name = await resolve_visible(services, workflow_id)
    doc = await _document(request)
    problem = name_problem(doc, name)
    if problem is not None:
        raise problem
    head = await head_of(services, name)
    assert head.latest is not None
    _, given = identity(doc)
    stored = await services.client.definition_document(name, head.latest)
    if given is None and same_definition(stored, doc):
        return await workflow_v1(services, name)
    version = str(given) if given is not None else next_version(head.latest)
    definition, _ = await services.client.register(doc, name=name, version=version)
    return await workflow_v1(services, name, definition.version)


@delete("/api/v1/workflows/{workflow_id:str}", opt=ADMIN, tags=TAGS, status_code=200,
        operation_id="v1DeleteWorkflow", responses=problems(400, 404),
        summary="Deactivate: new executions are refused (409), running ones finish, history stays")
async def delete_workflow(services: NamedDependency[Services], workflow_id: WorkflowId) -> WorkflowV1:
    name = await resolve_visible(services, workflow_id)
    await services.client.set_active(name, False)
    return await workflow_v1(services, name)


ROUTES: list[Any] = [create_workflow, list_workflows, get_workflow, update_workflow, delete_workflow]
