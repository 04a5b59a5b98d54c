"""Ids of workflows and of their steps, as seed 000's API shows them (UUIDs).

They are derived, not stored: a workflow's id is a UUIDv5 of the deployment's
prefix and the workflow's name, a step's id a UUIDv5 of its workflow's id and
the step's name. Every API process computes the same ids with no state, and an
id stays the same across versions of a workflow. Routes take a workflow's id or
its name wherever they take `workflow_id`."""

from __future__ import annotations

import uuid

from engine.api.services import Services
from engine.errors import UnknownWorkflow
from engine.store.replies import text

_NAMESPACE = uuid.UUID("6f1d3f0e-2b7c-5a8e-9c1d-f01df10f0000")


def workflow_uuid(prefix: str, name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{prefix}:workflow:{name}"))


def step_uuid(workflow_id: str, step_name: str) -> str:
    return str(uuid.uuid5(uuid.UUID(workflow_id), f"step:{step_name}"))


def _as_uuid(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


async def resolve_workflow(services: Services, workflow_id: str) -> str:
    """The name of the workflow `workflow_id` names (its id or its name); UnknownWorkflow if none."""
    keys = services.client.keys
    wanted = _as_uuid(workflow_id)
    if wanted is None:
        if await services.redis.sismember(keys.definitions_index, workflow_id):
            return workflow_id
        raise UnknownWorkflow(f"no workflow named {workflow_id!r}")
    for raw in await services.redis.smembers(keys.definitions_index):
        name = text(raw)
        if workflow_uuid(services.settings.prefix, name) == wanted:
            return name
    raise UnknownWorkflow(f"no workflow with id {workflow_id!r}")
