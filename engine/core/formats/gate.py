"""Which steps of a definition run user code, and where the document says so: the
deployment refuses them unless it runs code in a sandbox (FOLDFLOW_CODE_NODES)."""

from __future__ import annotations

from typing import Any, Final

from engine.core.definition.model import Definition, Problem
from engine.core.formats.services import CODE_SERVICE

HOW_TO_ENABLE: Final = ("code nodes are off in this deployment: set FOLDFLOW_CODE_NODES=sandbox and run "
                        "`foldflow activities --code` on the machines where user code may run")


def code_problems(doc: dict[str, Any], definition: Definition) -> list[Problem]:
    """One problem per step that would send user code to CODE_SERVICE, at its path in ``doc``."""
    names = [s.name for s in definition.steps + definition.compensation if s.service == CODE_SERVICE]
    return [Problem(_path(doc, name), HOW_TO_ENABLE) for name in names]


def _path(doc: dict[str, Any], name: str) -> str:
    nodes = doc.get("nodes")
    if isinstance(nodes, list):
        for j, node in enumerate(nodes):
            if isinstance(node, dict) and node.get("id") == name:
                return f"nodes[{j}].type"
    steps = doc.get("steps")
    if isinstance(steps, dict):  # an execution plan
        return f"steps.{name}.agent_name"
    for base, body in (("spec", doc.get("spec")), ("definition", doc.get("definition")), ("", doc)):
        listed = body.get("steps") if isinstance(body, dict) else None
        for i, step in enumerate(listed if isinstance(listed, list) else []):
            if isinstance(step, dict) and step.get("name") == name:
                return f"{base}.steps[{i}].service" if base else f"steps[{i}].service"
    return name  # a compensation step: its name says which
