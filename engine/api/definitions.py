"""What the definitions routes do with a request body and a stored definition,
without I/O: which content types they take, decoding, reading the name and
version a document gives, adding step ids, naming the next version, and the
OpenAPI request bodies of routes that take JSON or YAML."""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime
import re
from typing import Any, cast

import msgspec
from litestar.openapi.spec import Link, OpenAPIMediaType, OpenAPIResponse, Operation, RequestBody

from engine.api.problems import Problem, ProblemItem
from engine.core.definition import Definition, DefinitionError, document_of
from engine.core.definition.model import Problem as DefinitionProblem
from engine.store.catalog import step_uuid

JSON_TYPES = frozenset({"application/json"})
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode_document(body: bytes, content_type: str | None, *, optional: bool = False) -> dict[str, Any] | None:
    """The request's document: 415 for a content type other than JSON or YAML, 400 when it
    does not parse into an object. None for an empty body when `optional`."""
    if not body.strip():
        if optional:
            return None
        raise Problem(400, "the request body is empty: send a workflow definition (JSON or YAML)")
    kind = media_type(content_type) or "application/json"  # as every other route takes a bare body
    if kind.endswith("+json"):
        kind = "application/json"
    if kind not in JSON_TYPES and kind not in YAML_TYPES:
        raise Problem(415, f"Content-Type {kind or '(none)'!r} is not taken here: send application/json "
                           "or application/yaml")
    try:
        return document_of(body, fmt="json" if kind in JSON_TYPES else "yaml")
    except DefinitionError as exc:
        raise Problem(400, f"the body is not a definition document: {exc}",
                      errors=[ProblemItem(path=p.path, message=p.message) for p in exc.problems]) from None


def body_key(doc: dict[str, Any]) -> str | None:
    """Where the steps live: `spec` (YAML envelope), `definition` (seed envelope), or the top (bare)."""
    if "apiVersion" in doc or "spec" in doc:
        return "spec"
    return "definition" if "definition" in doc else None


def _meta(doc: dict[str, Any]) -> tuple[dict[str, Any], str]:
    if body_key(doc) == "spec":
        meta = doc.get("metadata")
        return (meta if isinstance(meta, dict) else {}), "metadata."
    return doc, ""


def identity(doc: dict[str, Any]) -> tuple[Any, Any]:
    """The name and version the document itself gives (None when it gives none)."""
    meta, _ = _meta(doc)
    version = meta.get("version")
    return meta.get("name"), str(version) if isinstance(version, (int, float)) else version


def name_problem(doc: dict[str, Any], name: str) -> DefinitionError | None:
    """A document for a workflow in the path may leave its name out but not name another."""
    given, _ = identity(doc)
    if given is None or given == name:
        return None
    path = _meta(doc)[1] + "name"
    return DefinitionError([DefinitionProblem(path, f"is {given!r}, but the path names workflow {name!r}; "
                                                    "leave it out or make them match")])


def next_version(latest: str) -> str:
    """The version PUT gives a changed definition when the body names none: the last number
    of the latest version plus one (1.0.0 -> 1.0.1, v3 -> v4); `.1` appended when it has none."""
    match = _LAST_NUMBER.search(latest)
    if match is None:
        return f"{latest}.1"
    bumped = str(int(match[1]) + 1).zfill(len(match[1]))  # 2024-01 -> 2024-02
    return f"{latest[:match.start()]}{bumped}{latest[match.end():]}"


def same_definition(stored: Any, candidate: dict[str, Any]) -> bool:
    """Whether a body changes nothing of the stored document (ignoring a name/version it leaves out)."""
    def strip(doc: Any) -> Any:
        if not isinstance(doc, dict):
            return doc
        out = copy.deepcopy(doc)
        meta, _ = _meta(out)
        for key in ("name", "version"):
            meta.pop(key, None)
        return out
    return bool(strip(stored) == strip(candidate))


def with_step_ids(doc: dict[str, Any], workflow_id: str) -> dict[str, Any]:
    """The definition section of a stored document, each step (and compensation step) with its id."""
    key = body_key(doc)
    section = copy.deepcopy(doc.get(key) if key else {k: v for k, v in doc.items()
                                                       if k not in ("name", "version", "description")})
    if not isinstance(section, dict):
        return {}
    compensation = section.get("compensation")
    lists = [section.get("steps"), compensation.get("steps") if isinstance(compensation, dict) else None]
    for steps in lists:
        for step in steps if isinstance(steps, list) else []:
            if isinstance(step, dict) and isinstance(step.get("name"), str):
                step["id"] = step_uuid(workflow_id, step["name"])
    return cast(dict[str, Any], section)


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        return base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise Problem(400, "cursor is not one this API gave out (pass next_cursor unchanged)",
                      errors=[ProblemItem(path="cursor", message="malformed")]) from None


def step_names(definition: Definition) -> list[str]:
    return [s.name for s in definition.steps + definition.compensation]


def _inlined(struct: type[msgspec.Struct]) -> dict[str, Any]:
    """The struct's JSON schema with its $defs inlined (these bodies nest without cycles)."""
    schema = msgspec.json.schema(struct)
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.rsplit("/", 1)[1]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node
    return cast(dict[str, Any], walk(schema))


# operationIds a registered workflow links to: stateful fuzzing follows them with the new id.
FOLLOWS = {"GetWorkflow": "getWorkflow", "ListWorkflowVersions": "listWorkflowVersions",
           "ListWorkflowSteps": "listWorkflowSteps", "ValidateStoredWorkflow": "validateWorkflowVersion"}


def _links() -> dict[str, Link]:
    return {name: Link(operation_id=op, parameters={"workflow_id": "$response.body#/id"},
                       description=f"{op} of the workflow this answer names") for name, op in FOLLOWS.items()}


def document_body(struct: type[msgspec.Struct], *, required: bool = True, example: Any = None,
                  links: bool = False) -> type[Operation]:
    """An Operation class declaring a JSON body shaped as `struct`, or YAML text (the handler
    reads the raw body); with `links`, its 200/201 answers link to the workflow's routes."""
    json_schema = _inlined(struct)
    yaml_schema = {"type": "string", "description": "the same document in YAML, or the "
                                                    "apiVersion/kind/metadata/spec form (spec.steps, spec.config)"}

    @dataclasses.dataclass
    class DocumentBody(Operation):
        def __post_init__(self) -> None:
            # Plain dicts pass through Litestar's spec rendering unchanged.
            media = {"application/json": OpenAPIMediaType(schema=cast(Any, json_schema), example=example),
                     "application/yaml": OpenAPIMediaType(schema=cast(Any, yaml_schema))}
            self.request_body = RequestBody(content=media, required=required)
            for code in ("200", "201") if links else ():
                response = (self.responses or {}).get(code)
                if isinstance(response, OpenAPIResponse):
                    response.links = {**(response.links or {}), **_links()}

    return DocumentBody
