"""Code nodes are refused at registration unless the deployment runs user code in a
sandbox (FOLDFLOW_CODE_NODES=sandbox): the error names the node and how to enable them."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
import pytest

from engine.client import Client
from engine.config import Settings, from_env
from engine.core.definition import DefinitionError
from engine.core.formats import CODE_SERVICE
from engine.errors import ConfigError

NODES = {"name": "scoring", "nodes": [
    {"id": "start", "type": "start"},
    {"id": "score", "type": "code", "config": {"code": "def process(input_data):\n    return 1\n"}}],
    "edges": [{"source": "start", "target": "score"}]}
NATIVE = {"name": "native-code", "version": "1", "definition": {"steps": [
    {"name": "a", "type": "service_call", "service": "orders"},
    {"name": "b", "type": "service_call", "service": CODE_SERVICE, "payload": {"code": "x"}}]}}
PLAN = {"id": "plan-code", "start_step": "a", "steps": {"a": {"agent_name": CODE_SERVICE}}}


def register(document: dict[str, Any], code_nodes: str) -> Any:
    async def go() -> Any:
        client = Client(fakeredis.FakeAsyncRedis(), Settings(prefix="gate", code_nodes=code_nodes))
        try:
            definition, created = await client.register(document)
            return created, await client.definition(definition.name)
        finally:
            await client.close()

    return asyncio.run(go())


@pytest.mark.parametrize(("document", "path"), [(NODES, "nodes[1].type"), (NATIVE, "definition.steps[1].service"),
                                                (PLAN, "steps.a.agent_name")])
def test_code_steps_are_refused_unless_the_deployment_sandboxes_them(document: dict[str, Any], path: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        register(document, "off")
    [problem] = caught.value.problems
    assert problem.path == path
    assert "FOLDFLOW_CODE_NODES=sandbox" in problem.message and "foldflow activities --code" in problem.message
    created, stored = register(document, "sandbox")
    assert created and any(s.service == CODE_SERVICE for s in stored.steps)


def test_definitions_without_code_register_either_way() -> None:
    created, stored = register({**NODES, "nodes": NODES["nodes"][:1] + [
        {"id": "score", "type": "crm", "config": {}}]}, "off")
    assert created and stored.step("score").service == "crm"


def test_the_setting() -> None:
    assert from_env({}).code_nodes == "off"
    assert from_env({"FOLDFLOW_CODE_NODES": "sandbox"}).code_nodes == "sandbox"
    with pytest.raises(ConfigError, match="FOLDFLOW_CODE_NODES: must be one of off, sandbox, got 'yes'"):
        from_env({"FOLDFLOW_CODE_NODES": "yes"})
