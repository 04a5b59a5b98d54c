"""Test runs (issue 14, seed 004's testing framework): a definition run on the
in-memory engine (engine.core.simulate) with mocked step answers, events and
signals; the answer is its whole history and final state. Nothing is stored,
sent or started, and no service is called: the only thing read is the
registered definition, for `POST /workflows/{workflow_id}/test`.

Scope: `write`, though nothing is written. A test run executes a definition the
caller chooses (any definition, for `POST /workflows/test`) and costs CPU up to
its limits; that is the act of running workflows, which `write` grants (it is
what starts executions), and not the act of looking, which `read` grants to
dashboards and observers. It stays below `admin`: registering nothing, it is
not a definitions write (unlike `POST /workflows/validate`, which belongs to
the registration flow).

`POST /workflows/test` does not clash with `/workflows/{workflow_id}`: Litestar
matches a static segment before a path parameter, and no POST takes
`/workflows/{workflow_id}` (so a workflow named `test` is reached with
`/workflows/test/test`).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import msgspec
from litestar import post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter

from engine.api.models.testing import DefinitionTest, TestRun, WorkflowTest
from engine.api.problems import Problem, ProblemItem, problems
from engine.api.services import Services
from engine.api.workflow_ids import resolve_workflow
from engine.core.definition import Definition, DefinitionError, parse_definition
from engine.core.simulate import (
    DEFAULT_INSTANCE_ID,
    DEFAULT_START_MS,
    Limits,
    MocksError,
    TestInputError,
    parse_mocks,
    run_test,
)
from engine.errors import NotFound

WRITE = {"scope": "write"}
TAGS = ["testing"]
WorkflowId = Annotated[str, PathParameter(description="the workflow's id (a UUID) or its name")]
VersionQuery = Annotated[str | None, QueryParameter(description="a version of the workflow (default: the latest)")]
_ANSWERS = problems(400, 404, 413, 415, 422)


@post("/workflows/test", opt=WRITE, tags=TAGS, status_code=200, operation_id="testDefinition",
      summary="Run a definition (registered or not) on an in-memory engine with mocked answers; store nothing",
      responses=problems(400, 413, 415, 422))
async def run_definition_test(data: JSONBody[DefinitionTest]) -> TestRun:
    try:
        definition = parse_definition(data.definition, name=data.name, version=data.version)
    except DefinitionError as exc:
        raise Problem(422, f"the definition has {len(exc.problems)} problem(s)",
                      errors=[ProblemItem(path=_under("definition", p.path), message=p.message)
                              for p in exc.problems]) from None
    return await _run(definition, data)


@post("/workflows/{workflow_id:str}/test", opt=WRITE, tags=TAGS, status_code=200, operation_id="testWorkflow",
      summary="Run a registered workflow (?version=, default latest) on an in-memory engine with mocked answers",
      responses=_ANSWERS)
async def run_workflow_test(services: NamedDependency[Services], workflow_id: WorkflowId, data: JSONBody[WorkflowTest],
                        version: VersionQuery = None) -> TestRun:
    name = await resolve_workflow(services, workflow_id)
    definition = await services.client.catalog.get(name, version)
    if definition is None:
        raise NotFound(f"workflow {name!r} has no version {version!r}")
    return await _run(definition, data)


async def _run(definition: Definition, data: WorkflowTest) -> TestRun:
    if data.context is not None and data.input is not None:
        raise Problem(400, "give context or input, not both (they mean the same)")
    context = data.context if data.context is not None else data.input
    try:
        mocks = parse_mocks(data.mocks, definition)  # refused before a thread is taken
        # The run is CPU only, bounded by max_events: off the event loop, so other requests go on.
        result = await asyncio.to_thread(
            run_test, definition, mocks, context=context, correlation_id=data.correlation_id,
            limits=Limits(max_events=data.max_events), instance_id=data.execution_id or DEFAULT_INSTANCE_ID,
            start_ms=DEFAULT_START_MS if data.start_ms is None else data.start_ms)
    except (MocksError, TestInputError) as exc:
        what = "mocks" if isinstance(exc, MocksError) else "test input"
        raise Problem(422, f"the {what} have {len(exc.problems)} problem(s)",
                      errors=[ProblemItem(path=p.path, message=p.message) for p in exc.problems]) from None
    return msgspec.convert(result, TestRun)


def _under(base: str, path: str) -> str:
    if not path:
        return base
    return f"{base}{path}" if path.startswith("[") else f"{base}.{path}"


ROUTES: list[Any] = [run_definition_test, run_workflow_test]
