"""Stored documents in seed 001's shape, without I/O: which form a document is,
and its nodes and edges (as written for the nodes form, derived from the steps
for seed 003's plans and the native forms)."""

from __future__ import annotations

from typing import Any

from engine.api.v1.models.workflows import Edge, Form, Node
from engine.api.workflow_views import HIDDEN_PREFIX
from engine.core.definition import Definition
from engine.core.definition.model import Step

START = "start"
RESERVED_PREFIX = HIDDEN_PREFIX  # one-node workflows of node tests: hidden from every listing


def is_reserved(name: str | None) -> bool:
    return bool(name) and str(name).startswith(RESERVED_PREFIX)


def form_of(doc: Any) -> Form:
    if isinstance(doc, dict) and "nodes" in doc and "edges" in doc:
        return "nodes"
    if isinstance(doc, dict) and "start_step" in doc and isinstance(doc.get("steps"), dict):
        return "plan"
    return "native"


def _text(value: Any, fallback: str = "") -> str:
    return value if isinstance(value, str) else fallback


def _as_written(doc: dict[str, Any]) -> tuple[list[Node], list[Edge]]:
    nodes = [Node(id=_text(n.get("id")), type=_text(n.get("type")),
                  config=n["config"] if isinstance(n.get("config"), dict) else {})
             for n in doc.get("nodes") or [] if isinstance(n, dict)]
    edges = [Edge(source=_text(e.get("source")), target=_text(e.get("target")))
             for e in doc.get("edges") or [] if isinstance(e, dict)]
    return nodes, edges


def _from_plan(doc: dict[str, Any]) -> tuple[list[Node], list[Edge]]:
    nodes, edges = [Node(id=START, type=START)], list[Edge]()
    if isinstance(doc.get("start_step"), str):
        edges.append(Edge(source=START, target=doc["start_step"]))
    for key, step in doc["steps"].items():
        body = step if isinstance(step, dict) else {}
        config = {k: v for k, v in body.items() if k not in ("id", "agent_name", "next_step")}
        nodes.append(Node(id=str(key), type=_text(body.get("agent_name"), "unknown"), config=config))
        if isinstance(body.get("next_step"), str):
            edges.append(Edge(source=str(key), target=body["next_step"]))
    return nodes, edges


def native_type(step: Step) -> str:
    """A native step as a node type: a service call is a node of its service's type."""
    if step.type == "service_call" and step.service:
        return step.service
    return step.type


def _raw_steps(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    body = doc.get("spec") if "spec" in doc else doc.get("definition", doc)
    steps = body.get("steps") if isinstance(body, dict) else None
    return {s["name"]: s for s in steps or [] if isinstance(s, dict) and isinstance(s.get("name"), str)}


def _from_steps(doc: dict[str, Any], definition: Definition) -> tuple[list[Node], list[Edge]]:
    raw = _raw_steps(doc)
    nodes, edges = [Node(id=START, type=START)], list[Edge]()
    for step in definition.steps:
        config = {k: v for k, v in raw.get(step.name, {}).items() if k not in ("name", "depends_on")}
        nodes.append(Node(id=step.name, type=native_type(step), config=config))
        sources = list(step.depends_on) or [START]
        edges.extend(Edge(source=s, target=step.name) for s in sources)
    return nodes, edges


def nodes_and_edges(doc: Any, definition: Definition) -> tuple[list[Node], list[Edge]]:
    form = form_of(doc)
    if form == "nodes":
        return _as_written(doc)
    if form == "plan":
        return _from_plan(doc)
    return _from_steps(doc if isinstance(doc, dict) else {}, definition)


def node_types(doc: Any, definition: Definition) -> dict[str, str]:
    """Each step's node type (a step is named after its node)."""
    nodes, _ = nodes_and_edges(doc, definition)
    types = {n.id: n.type for n in nodes}
    return {s.name: types.get(s.name, native_type(s)) for s in definition.steps}
