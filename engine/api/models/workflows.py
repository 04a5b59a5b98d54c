"""Bodies of the definitions and steps routes (seed 000's shapes).

Requests in JSON follow the seed's envelope (`name`, `description`, `version`,
`definition` with `steps` and `error_handlers`); a step is an open object here
because the definition parser checks it, field by field, with paths. The same
routes take YAML (`application/yaml`): the `apiVersion/kind/metadata/spec` form,
or JSON written as YAML."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from engine.api.problems import ProblemItem

# The parser's own rules, stated in the schema too so generated clients (and fuzzers) know them.
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"\S")]
Version = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")]


class WorkflowBody(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The definition proper: steps in order (each names its `step_type`), error handlers and settings."""

    steps: Annotated[list[dict[str, Any]], msgspec.Meta(min_length=1)]
    error_handlers: list[dict[str, Any]] = []
    config: dict[str, Any] | None = None
    timeout: str | int | None = None
    timeout_ms: int | None = None
    retry_policy: dict[str, Any] | None = None
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    compensation: dict[str, Any] | None = None


class WorkflowCreate(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Seed 000's registration body."""

    name: Name
    version: Version
    definition: WorkflowBody
    description: str = ""


class WorkflowVersionCreate(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A new version of the workflow in the path: `name` may be left out (it must match when given);
    without `version` the next one is derived from the latest (last number + 1: 1.0.0 -> 1.0.1)."""

    definition: WorkflowBody
    name: Name | None = None
    version: Version | None = None
    description: str | None = None


class WorkflowUpdate(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """PUT: a changed `definition` becomes a new version (named as for POST .../versions);
    `active` deactivates or reactivates new starts. Either or both."""

    definition: WorkflowBody | None = None
    name: Name | None = None
    version: Version | None = None
    description: str | None = None
    active: bool | None = None


class Workflow(msgspec.Struct):
    """One version of a workflow; every step in `definition.steps` carries its `id`."""

    id: str
    name: str
    description: str
    version: str
    latest_version: str
    active: bool
    created_at: str | None
    updated_at: str | None
    version_created_at: str | None
    definition: dict[str, Any]


class WorkflowSummary(msgspec.Struct):
    id: str
    name: str
    description: str
    version: str
    versions: int
    active: bool
    created_at: str | None
    updated_at: str | None


class WorkflowPage(msgspec.Struct):
    """A page of workflows by name; pass `next_cursor` as `cursor` for the next one (null: no more)."""

    items: list[WorkflowSummary]
    next_cursor: str | None = None


class WorkflowVersion(msgspec.Struct):
    version: str
    created_at: str | None
    latest: bool


class WorkflowVersions(msgspec.Struct):
    """Every version of a workflow, oldest first (semantic-version order)."""

    workflow_id: str
    name: str
    active: bool
    versions: list[WorkflowVersion]


class Validation(msgspec.Struct):
    """The verdict on a definition: `errors` lists every problem with its path; nothing is stored."""

    valid: bool
    errors: list[ProblemItem]
    name: str | None = None
    version: str | None = None
    steps: list[str] = []


class RetryPolicyOut(msgspec.Struct):
    max_attempts: int
    backoff_base: float
    backoff_multiplier: int
    max_delay_ms: int | None
    jitter: float


class StepDefinition(msgspec.Struct):
    """One step of a workflow's definition (`compensation`: it belongs to the compensation block)."""

    id: str
    name: str
    workflow_id: str
    workflow: str
    version: str
    type: str
    description: str
    sequence: int | None
    depends_on: list[str]
    service: str | None
    endpoint: str | None
    method: str | None
    event_type: str | None
    event_filter: dict[str, Any]
    timeout_ms: int | None
    retry_policy: RetryPolicyOut
    compensation: bool


class StepPage(msgspec.Struct):
    items: list[StepDefinition]
    next_cursor: str | None = None
