"""The definitions and steps routes' reads: a workflow's view (one version, its
steps with ids, its times and active flag), listings, and finding a step by id
or name. Each read is a few HGETs of `ff:def:<name>` (pipelined), and parses
come from the catalog's cache."""

from __future__ import annotations

import msgspec

from engine.api.definitions import iso, with_step_ids
from engine.api.models.workflows import (
    RetryPolicyOut,
    StepDefinition,
    Workflow,
    WorkflowSummary,
    WorkflowVersion,
    WorkflowVersions,
)
from engine.api.problems import Problem, ProblemItem
from engine.api.services import Services
from engine.api.workflow_ids import as_uuid, resolve_workflow, step_uuid, workflow_uuid
from engine.core.definition import Definition, version_sort_key
from engine.core.definition.model import Step
from engine.errors import UnknownWorkflow
from engine.store.catalog import Head
from engine.store.replies import text


async def head_of(services: Services, name: str) -> Head:
    head = await services.client.catalog.head(name)
    if head.latest is None:
        raise UnknownWorkflow(f"workflow {name!r} is not registered")
    return head


async def workflow_view(services: Services, name: str, version: str | None = None) -> Workflow:
    """One version of a workflow (the latest unless given); UnknownWorkflow (404) when there is none."""
    head = await head_of(services, name)
    assert head.latest is not None
    version = version or head.latest
    document = await services.client.definition_document(name, version)
    definition = await services.client.definition(name, version)
    created = await services.redis.hget(services.client.keys.definition(name), f"t:{version}")
    wid = workflow_uuid(services.settings.prefix, name)
    return Workflow(id=wid, name=name, description=definition.description, version=version,
                    latest_version=head.latest, active=head.active, created_at=iso(head.created_ms),
                    updated_at=iso(head.updated_ms), version_created_at=iso(None if created is None else int(created)),
                    definition=with_step_ids(document, wid))


# The one-node workflows POST /api/v1/nodes/{type}/test registers (engine/api/v1/node_test.py): not the
# user's, so no listing shows them.
HIDDEN_PREFIX = "foldflow.node-test."


async def workflow_names(services: Services) -> list[str]:
    names = (text(n) for n in await services.redis.smembers(services.client.keys.definitions_index))
    return sorted(n for n in names if not n.startswith(HIDDEN_PREFIX))


async def summary(services: Services, name: str) -> WorkflowSummary | None:
    head = await services.client.catalog.head(name)
    if head.latest is None:
        return None  # listed in ff:defs but its hash is gone: not a workflow any more
    definition = await services.client.definition(name, head.latest)
    versions = await services.client.store.definition_versions(name)
    return WorkflowSummary(id=workflow_uuid(services.settings.prefix, name), name=name,
                           description=definition.description, version=head.latest, versions=len(versions),
                           active=head.active, created_at=iso(head.created_ms), updated_at=iso(head.updated_ms))


async def versions_view(services: Services, name: str) -> WorkflowVersions:
    head = await head_of(services, name)
    times = await services.client.catalog.version_times(name)
    return WorkflowVersions(workflow_id=workflow_uuid(services.settings.prefix, name), name=name, active=head.active,
                            versions=[WorkflowVersion(version=v, created_at=iso(t), latest=v == head.latest)
                                      for v, t in times.items()])


def step_view(definition: Definition, step: Step, workflow_id: str, compensation: bool) -> StepDefinition:
    retry = step.retry_policy
    return StepDefinition(
        id=step_uuid(workflow_id, step.name), name=step.name, workflow_id=workflow_id, workflow=definition.name,
        version=definition.version, type=step.type, description=step.description, sequence=step.sequence,
        depends_on=list(step.depends_on), service=step.service, endpoint=step.endpoint, method=step.method,
        event_type=step.event_type, event_filter=dict(step.event_filter), timeout_ms=step.timeout_ms,
        retry_policy=RetryPolicyOut(**msgspec.structs.asdict(retry)), compensation=compensation)


def steps_of(definition: Definition, prefix: str) -> list[StepDefinition]:
    wid = workflow_uuid(prefix, definition.name)
    return ([step_view(definition, s, wid, False) for s in definition.steps]
            + [step_view(definition, s, wid, True) for s in definition.compensation])


async def workflow_steps(services: Services, name: str, version: str | None = None) -> list[StepDefinition]:
    head = await head_of(services, name)
    definition = await services.client.definition(name, version or head.latest)
    return steps_of(definition, services.settings.prefix)


async def every_step(services: Services) -> list[StepDefinition]:
    """The steps of the latest version of every workflow, by workflow name, then in definition order."""
    out: list[StepDefinition] = []
    for name in await workflow_names(services):
        head = await services.client.catalog.head(name)
        if head.latest is not None:
            out.extend(steps_of(await services.client.definition(name, head.latest), services.settings.prefix))
    return out


async def _step_by_id(services: Services, wanted: str) -> StepDefinition | None:
    name = await services.client.catalog.name_of(wanted)
    names = [name] if name is not None else await workflow_names(services)  # ids indexed before: scan
    for candidate in names:
        head = await services.client.catalog.head(candidate)
        if head.latest is None:
            continue
        # Newest first: a step dropped from the latest version is still found in the one that had it.
        versions = sorted(await services.client.store.definition_versions(candidate), key=version_sort_key,
                          reverse=True)
        for version in versions:
            steps = steps_of(await services.client.definition(candidate, version), services.settings.prefix)
            found = next((s for s in steps if s.id == wanted), None)
            if found is not None:
                return found
    return None


async def find_step(services: Services, step_id: str, workflow: str | None) -> StepDefinition:
    """A step by its id or its name; a name in several workflows is 409 unless `workflow` narrows it."""
    wanted = as_uuid(step_id)
    if wanted is not None and workflow is None:
        found = await _step_by_id(services, wanted)
        if found is not None:
            return found
    if workflow is not None:
        candidates = await workflow_steps(services, await resolve_workflow(services, workflow))
    else:
        candidates = await every_step(services)
    matches = [s for s in candidates if s.name == step_id or s.id == wanted]
    if not matches:
        where = f" in workflow {workflow!r}" if workflow else ""
        raise Problem(404, f"no step with id or name {step_id!r}{where}")
    if len(matches) > 1:
        raise Problem(409, f"step name {step_id!r} is in {len(matches)} workflows: use the step's id, "
                           "or ?workflow= to say which",
                      errors=[ProblemItem(path=f"workflow {m.workflow_id}", message=f"{m.workflow}: step id {m.id}")
                              for m in matches])
    return matches[0]
