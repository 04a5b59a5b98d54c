"""Node types and the one-node test run."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

Kind = Literal["builtin", "service", "handler"]


class NodeType(msgspec.Struct, kw_only=True):
    type: str
    kind: Kind
    """builtin: foldflow's own; service: a registered service; handler: a live activity worker's handler."""
    description: str
    served_by: str
    """What must run for a node of this type to be served."""


class NodeTypes(msgspec.Struct, kw_only=True):
    items: list[NodeType]


class NodeSchema(msgspec.Struct, kw_only=True):
    type: str
    kind: Kind
    config_schema: dict[str, Any]


class NodeTest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    config: dict[str, Any] = {}
    input: dict[str, Any] = {}
    timeout_ms: Annotated[int, Meta(ge=100, le=20_000)] = 5_000
    """How long to wait for a worker to run it; past it, 504 (and the run is cancelled)."""


class NodeTestResult(msgspec.Struct, kw_only=True):
    node_type: str
    status: Literal["completed", "failed"]
    output: Any = None
    error: Any = None
    duration_ms: int | None = None
    workflow_name: str | None = None
    """The reserved one-node workflow the test ran as (hidden from listings)."""
    job_id: str | None = None


# Each built-in type's config, as the translation of seed 001's nodes reads it.
class StartConfig(msgspec.Struct, forbid_unknown_fields=True):
    """A marker: no step; edges from it point at the first nodes."""


class LlmConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/chat/completions on the model service (registered `model-service`, else MODEL_SERVICE_URL)."""

    model: Annotated[str, Meta(min_length=1)]
    prompt: Annotated[str, Meta(min_length=1, description="a template: {{input.x}}, {{node.output.x}}")]
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    api_key: str | None = None
    """Usually {{secrets.NAME}}; sent as `Authorization: Bearer ...`."""
    service: str | None = None
    """Another service speaking the same protocol."""
    timeout: str | int | None = None
    retry_policy: dict[str, Any] | None = None


class HttpConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One call through the HTTP executor and its safety rules."""

    url: Annotated[str, Meta(pattern=r"^https?://", description="absolute; templates allowed")]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    headers: dict[str, str] = {}
    body: Any = None
    timeout: str | int | None = None
    retry_policy: dict[str, Any] | None = None


class CodeConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Python run in the sandbox by `foldflow activities --code`."""

    code: Annotated[str, Meta(min_length=1, description="defines process(input_data)")]
    language: Literal["python"] = "python"
    input_mapping: dict[str, Any] | None = None
    timeout: str | int | None = None
    retry_policy: dict[str, Any] | None = None


class ConditionalConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Takes true_edge or false_edge; the other branch is skipped."""

    condition: Annotated[str, Meta(min_length=1, examples=["{{classify.output.category}} == 'technical'"])]
    true_edge: str | None = None
    false_edge: str | None = None
