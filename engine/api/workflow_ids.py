"""Ids of workflows and of their steps, as seed 000's API shows them (UUIDs).

They are derived, not stored (engine.store.catalog derives them): a workflow's
id is a UUIDv5 of the deployment's prefix and the workflow's name, a step's id
a UUIDv5 of its workflow's id and the step's name. Every API process computes
the same ids with no state, and an id stays the same across versions of a
workflow. Routes take a workflow's id or its name wherever they take
`workflow_id`; `ff:defids` maps an id to its name in one HGET."""

from __future__ import annotations

import uuid

from engine.api.services import Services
from engine.errors import UnknownWorkflow
from engine.store.catalog import step_uuid, workflow_uuid
from engine.store.replies import text

__all__ = ["as_uuid", "resolve_workflow", "step_uuid", "workflow_uuid"]


def as_uuid(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


async def resolve_workflow(services: Services, workflow_id: str) -> str:
    """The name of the workflow `workflow_id` names (its id or its name); UnknownWorkflow if none."""
    keys = services.client.keys
    wanted = as_uuid(workflow_id)
    if wanted is not None:
        name = await services.client.catalog.name_of(wanted)
        if name is not None and workflow_uuid(keys.prefix, name) == wanted:
            return name
    if await services.redis.sismember(keys.definitions_index, workflow_id):
        return workflow_id
    if wanted is not None:
        # Workflows registered before the id index existed: derive and compare.
        for raw in await services.redis.smembers(keys.definitions_index):
            name = text(raw)
            if workflow_uuid(keys.prefix, name) == wanted:
                return name
        raise UnknownWorkflow(f"no workflow with id {workflow_id!r}")
    raise UnknownWorkflow(f"no workflow named {workflow_id!r}")
