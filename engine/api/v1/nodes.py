"""Seed 001's /api/v1/nodes: the node types (built-in and custom), each one's
config schema, and a test run of one node config on an input."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter

from engine.api.problems import problems
from engine.api.services import Services
from engine.api.v1.models.nodes import NodeSchema, NodeTest, NodeTestResult, NodeType, NodeTypes
from engine.api.v1.node_catalog import BUILTINS, builtin_types, config_schema, custom_types
from engine.api.v1.node_test import run_node
from engine.errors import NotFound

TAGS = ["v1 nodes"]
NodeTypeParam = Annotated[str, PathParameter(min_length=1, max_length=100, description="a node type")]


async def _find(services: Services, node_type: str) -> NodeType:
    for builtin in builtin_types():
        if builtin.type == node_type:
            return builtin
    custom = (await custom_types(services)).get(node_type)
    if custom is None:
        raise NotFound(f"no node type {node_type!r}: the built-in ones are {', '.join(BUILTINS)}; a custom "
                       "type is a registered service or one a live activity worker has a handler for")
    return custom


@get("/api/v1/nodes", opt={"scope": "read"}, tags=TAGS, operation_id="v1ListNodeTypes", responses=problems(),
     summary="Every node type: the built-in ones, registered services and live handlers")
async def list_node_types(services: NamedDependency[Services]) -> NodeTypes:
    return NodeTypes(items=builtin_types() + list((await custom_types(services)).values()))


@get("/api/v1/nodes/{node_type:str}", opt={"scope": "read"}, tags=TAGS, operation_id="v1GetNodeType",
     responses=problems(400, 404), summary="A node type and the JSON Schema of its config")
async def get_node_type(services: NamedDependency[Services],
                        node_type: NodeTypeParam) -> NodeSchema:
    found = await _find(services, node_type)
    return NodeSchema(type=found.type, kind=found.kind, config_schema=config_schema(found.type))


@post("/api/v1/nodes/{node_type:str}/test", opt={"scope": "admin"}, tags=TAGS, status_code=200,
      operation_id="v1TestNode", responses=problems(400, 404, 413, 415, 422, 504),
      summary="Run one node config once on an input, outside any workflow: its output or error")
async def test_node(services: NamedDependency[Services],
                    node_type: NodeTypeParam, data: JSONBody[NodeTest]) -> NodeTestResult:
    found = await _find(services, node_type)
    return await run_node(services, node_type, data, found.served_by)


ROUTES: list[Any] = [list_node_types, get_node_type, test_node]
