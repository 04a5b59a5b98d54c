"""Every node type a workflow can use: foldflow's own, and custom types, which are
the services a node can call (registered in the service registry, or served by
a live activity worker's Python handler, as its heartbeat lists). Each type's
config is described by a JSON Schema generated from the Struct the translation
of seed 001's nodes reads (models/nodes.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from engine.api.services import Services
from engine.api.v1.models.nodes import (
    CodeConfig,
    ConditionalConfig,
    HttpConfig,
    Kind,
    LlmConfig,
    NodeType,
    StartConfig,
)
from engine.runtime.heartbeat import read_heartbeats
from engine.store.services import ServiceRegistry

RESERVED_SERVICES = "foldflow."  # the built-in types' own queues (foldflow.http, foldflow.code)


@dataclass(frozen=True, slots=True)
class Builtin:
    config: type[msgspec.Struct] | None
    description: str
    served_by: str


BUILTINS: dict[str, Builtin] = {
    "start": Builtin(StartConfig, "Marks where a workflow begins: edges from it lead to the first nodes",
                     "nothing (no step)"),
    "end": Builtin(StartConfig, "Marks where a branch ends", "nothing (no step)"),
    "llm": Builtin(LlmConfig, "Asks a model (OpenAI-compatible POST /v1/chat/completions); output is the "
                   "message content, parsed as JSON when it is JSON",
                   "foldflow activities --http, with model-service registered or MODEL_SERVICE_URL set"),
    "http": Builtin(HttpConfig, "Calls an absolute URL through the HTTP executor; output is the response",
                    "foldflow activities --http"),
    "code": Builtin(CodeConfig, "Runs Python's process(input_data) in a sandbox; output is its return value",
                    "foldflow activities --code (with FOLDFLOW_CODE_NODES=sandbox)"),
    "conditional": Builtin(ConditionalConfig, "Takes true_edge or false_edge by its condition; output is "
                           "{result, edge}", "foldflow worker (the engine decides it)"),
}


def config_schema(node_type: str) -> dict[str, Any]:
    builtin = BUILTINS.get(node_type)
    if builtin is not None and builtin.config is not None:
        schema: dict[str, Any] = msgspec.json.schema(builtin.config)
        defs = schema.pop("$defs", {})
        root: dict[str, Any] = defs.pop(str(schema.pop("$ref")).rsplit("/", 1)[1])
        return {"$schema": "https://json-schema.org/draft/2020-12/schema", **root, **({"$defs": defs} if defs else {})}
    return {"type": "object", "additionalProperties": True,
            "description": f"the payload sent to service {node_type!r} (templates are rendered first); "
                           "the node's output is the service's answer"}


def _custom(name: str, kind: Kind) -> NodeType:
    if kind == "service":
        return NodeType(type=name, kind=kind, description=f"Calls the registered service {name!r} with the "
                        "node's config as payload", served_by="foldflow activities --http")
    return NodeType(type=name, kind=kind, description=f"Runs the Python handler for {name!r} with the node's "
                    "config as input", served_by="foldflow activities --module (the worker serving it)")


async def custom_types(services: Services) -> dict[str, NodeType]:
    """Registered services first (an HTTP call), then handler-served queues (a live worker)."""
    found: dict[str, NodeType] = {}
    for record in await ServiceRegistry(services.redis, services.client.keys).all():
        found.setdefault(record.name, _custom(record.name, "service"))
    for beat in await read_heartbeats(services.redis, services.client.keys):
        over_http = set(beat.get("http") or [])
        for queue in beat.get("services") or []:
            if isinstance(queue, str) and queue not in over_http:
                found.setdefault(queue, _custom(queue, "handler"))
    return {name: t for name, t in sorted(found.items())
            if name not in BUILTINS and not name.startswith(RESERVED_SERVICES)}


def builtin_types() -> list[NodeType]:
    return [NodeType(type=name, kind="builtin", description=b.description, served_by=b.served_by)
            for name, b in BUILTINS.items()]
