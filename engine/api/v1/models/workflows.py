"""Seed 001's workflow: a name, a description, nodes and edges. POST and PUT take the
document as it is (nodes/edges, seed 003's plan, or a native form); the parser checks
it field by field with paths, so nodes and edges are open objects here."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

Name = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"\S")]
Form = Literal["nodes", "plan", "native"]


class Node(msgspec.Struct, kw_only=True):
    id: str
    type: str
    """start, llm, http, code, conditional, or a custom type (a service's name)."""
    config: dict[str, Any] = {}


class Edge(msgspec.Struct, kw_only=True):
    source: str
    target: str


class WorkflowCreateV1(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Seed 001's body. Seed 003's plan (`start_step`, `steps` as a map) and the native
    forms are taken too: the parser detects the shape."""

    name: Name
    nodes: Annotated[list[dict[str, Any]], Meta(min_length=1)]
    edges: list[dict[str, Any]] = []
    description: str = ""
    version: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")] | None = None


class WorkflowV1(msgspec.Struct, kw_only=True):
    """A workflow in seed 001's shape, read from its stored document: `nodes` and `edges`
    as written for that form, derived from the steps for the others (`form` says which)."""

    id: str
    name: str
    description: str
    nodes: list[Node]
    edges: list[Edge]
    version: str
    latest_version: str
    versions: int
    is_active: bool
    form: Form
    created_at: str | None
    updated_at: str | None


class WorkflowPageV1(msgspec.Struct, kw_only=True):
    """One page, by name; pass `next_cursor` as `cursor` for the next (absent on the last)."""

    items: list[WorkflowV1]
    limit: int
    next_cursor: str | None = None
