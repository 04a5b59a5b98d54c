"""One node config run once on an input, outside any workflow, by the real
machinery: the node becomes a one-node workflow under a reserved name
(`foldflow.node-test.<type>.<hash of the config>`, hidden from listings),
started and waited for like any execution, so a code node runs only where a
`--code` worker runs and an llm or http node goes through the HTTP executor.
The wait is bounded: past it the execution is cancelled and the answer is a
504 naming the worker that should have served it."""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any

import msgspec
import orjson

from engine.api.executions.reads import Folded, Reads
from engine.api.problems import Problem, ProblemItem
from engine.api.services import Services
from engine.api.v1.job_views import node_output
from engine.api.v1.models.nodes import NodeTest, NodeTestResult
from engine.api.v1.node_catalog import BUILTINS
from engine.api.v1.shapes import RESERVED_PREFIX
from engine.core.definition import DefinitionError
from engine.core.model import STATUS_CANCELLED, STATUS_COMPLETED, STATUS_FAILED, encode

NODE = "node"  # the test node's id: its step's name in the one-node workflow
FINAL = frozenset({STATUS_COMPLETED, STATUS_FAILED, STATUS_CANCELLED, "compensated"})
MARKERS = frozenset({"start", "end"})
_EDGES = ("true_edge", "false_edge")  # they name nodes of a workflow this test has not got
_AT = re.compile(r" - at `\$(.*)`$")
_FIELD = re.compile(r"(?:missing required|contains unknown) field `([^`]+)`")


def reserved_name(node_type: str, config: dict[str, Any]) -> str:
    digest = hashlib.sha256(orjson.dumps([node_type, config], option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    return f"{RESERVED_PREFIX}{node_type}.{digest}"


def _config_path(message: str) -> str:
    """`config.<where>` from msgspec's "... - at `$.a.b`" and "missing required field `x`"."""
    at, field = _AT.search(message), _FIELD.search(message)
    return "config" + (at[1] if at else "") + (f".{field[1]}" if field else "")


def check_config(node_type: str, config: dict[str, Any]) -> None:
    """A built-in type's config against its Struct, for a 422 naming the field before anything runs."""
    builtin = BUILTINS.get(node_type)
    if builtin is None or builtin.config is None:
        return
    try:
        msgspec.convert(config, builtin.config)
    except msgspec.ValidationError as exc:
        message = str(exc)
        raise Problem(422, f"the {node_type} config is not valid: {message}",
                      errors=[ProblemItem(path=_config_path(message), message=message.split(" - at ")[0])]) from None


def one_node_document(name: str, node_type: str, config: dict[str, Any]) -> dict[str, Any]:
    config = {k: v for k, v in config.items() if k not in _EDGES} if node_type == "conditional" else config
    return {"name": name, "description": f"a test run of one {node_type} node",
            "nodes": [{"id": "start", "type": "start", "config": {}},
                      {"id": NODE, "type": node_type, "config": config}],
            "edges": [{"source": "start", "target": NODE}]}


def _config_problem(exc: DefinitionError) -> Problem:
    items = [ProblemItem(path=p.path.replace("nodes[1].", "", 1), message=p.message) for p in exc.problems]
    return Problem(422, f"the node config has {len(items)} problem(s)", errors=items)


def _result(node_type: str, name: str, iid: str, folded: Folded) -> NodeTestResult:
    state = folded.state
    step = state.step(NODE)
    took = (state.finished_ms - state.created_ms) if state.finished_ms and state.created_ms else None
    if state.status == STATUS_COMPLETED:
        return NodeTestResult(node_type=node_type, status="completed", output=node_output(step.output, True),
                              duration_ms=took, workflow_name=name, job_id=iid)
    error = step.error or state.error
    return NodeTestResult(node_type=node_type, status="failed", duration_ms=took, workflow_name=name, job_id=iid,
                          error=None if error is None else orjson.loads(encode(error)))


async def run_node(services: Services, node_type: str, body: NodeTest, served_by: str) -> NodeTestResult:
    if node_type in MARKERS:  # a marker takes no step: what enters it is what leaves it
        return NodeTestResult(node_type=node_type, status="completed", output=body.input, duration_ms=0)
    check_config(node_type, body.config)
    name = reserved_name(node_type, body.config)
    try:
        await services.client.register(one_node_document(name, node_type, body.config))
    except DefinitionError as exc:
        raise _config_problem(exc) from None
    iid = f"node-test-{uuid.uuid4().hex}"
    await services.client.start(name, body.input, instance_id=iid)
    reads = Reads(services)
    seen = await reads.wait(iid, None, lambda s: Folded(s).state.status in FINAL, body.timeout_ms)
    folded = Folded(seen)
    if folded.state.status not in FINAL:
        await services.client.cancel(iid, "node test timed out")
        raise Problem(504, f"no worker ran the {node_type} node within {body.timeout_ms} ms: is "
                           f"{served_by} running?", title="Gateway Timeout")
    return _result(node_type, name, iid, folded)
