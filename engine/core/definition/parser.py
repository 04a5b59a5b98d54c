"""Parse a workflow definition document and validate it into a Definition.

Three document shapes are accepted:

- JSON envelope ``{"name", "version", "description"?, "definition": {"steps", "error_handlers"?}}``;
- bare ``{"steps", "error_handlers"?}``, named by the ``name``/``version`` arguments;
- ``apiVersion/kind/metadata/spec``, with ``spec.config`` holding the workflow
  timeout and default retry policy.

Keyword arguments override the document's name and version. Step fields may sit
inline or under ``config:`` (``config`` wins). Problem paths follow the document:
``definition.steps[1].depends_on[0]``, ``steps[1]...`` or ``spec.steps[1]...``.

Ordering rule: a step depends on the steps in ``depends_on`` when that key is
present (``[]`` makes a root); otherwise, if it has ``sequence`` s, on every step
whose sequence is the greatest sequence below s; otherwise it is a root.

A step's ``retry_policy`` fills in the fields it names over the workflow
default, which is ``RetryPolicy()`` (one attempt) unless the workflow sets one.

Validation collects every problem before raising, so an author fixes a file in
one round. YAML aliases are refused: walking a few kilobytes of nested aliases
can mean visiting billions of nodes.
"""

from __future__ import annotations

import bisect
import difflib
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple

import msgspec
import orjson
import yaml

from engine.core.codec import MAX_TYPE_CHARS
from engine.core.definition.model import (
    Definition,
    DefinitionError,
    ErrorHandler,
    Problem,
    RetryPolicy,
    Step,
    ValidationRule,
    _is_number,
    canonical_json,
    parse_duration_ms,
)
from engine.core.language.conditions import condition_problems
from engine.core.language.expressions import template_problems
from engine.core.language.schema import schema_problems

STEP_TYPES: Final = ("service_call", "event_wait", "conditional", "loop", "validation", "delay", "sub_workflow")
ERROR_ACTIONS: Final = ("retry", "notify", "terminate", "continue", "compensate")
TIMEOUT_ACTIONS: Final = ("fail", "continue", "compensate", "notify")
UNSUPPORTED_ACTIONS: Final = ()
MAX_DOCUMENT_BYTES: Final = 1 << 20
_TYPE_ALIASES: Final = {"wait_for_event": "event_wait", "sleep": "delay", "foreach": "loop", "for_each": "loop",
                        "subworkflow": "sub_workflow", "workflow": "sub_workflow"}
_REQUIRED: Final = (("service", "service_call"), ("event_type", "event_wait"), ("condition", "conditional"),
                    ("items", "loop"), ("service", "loop"), ("validation_rules", "validation"),
                    ("duration", "delay"), ("workflow", "sub_workflow"))
_BACKOFF_BASES: Final = {"exponential": 2.0, "fixed": 1.0, "constant": 1.0}
_STEP_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_MAX_NESTING: Final = 64
_DEFAULT_JITTER: Final = 0.1
STEP_FIELDS: Final = (
    "name", "type", "step_type", "description", "depends_on", "sequence", "parallel", "config", "service",
    "endpoint", "method", "payload", "input", "output", "event_type", "event_filter", "filter", "timeout",
    "timeout_ms", "retry_policy", "on_failure", "on_timeout", "condition", "true_edge", "false_edge", "items",
    "max_iterations", "validation_rules", "duration", "workflow", "workflow_version", "compensates", "tags",
    "labels", "metadata",
)


class _Loader(yaml.SafeLoader):
    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(None, None, "YAML aliases are not supported", mark)
        return super().compose_node(parent, index)


def document_of(source: str | bytes | Mapping[str, Any], *, fmt: str | None = None) -> dict[str, Any]:
    """The parsed document as stored; DefinitionError when it is not an object."""
    try:
        data = source if isinstance(source, bytes) else _serialize(source)
    except TypeError as exc:
        raise _document_error(f"not JSON-serializable: {exc}") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise _document_error(f"{len(data)} bytes, larger than the {MAX_DOCUMENT_BYTES}-byte limit")
    if isinstance(source, Mapping):
        fmt = "json"  # the round trip above makes a plain copy the caller cannot mutate
    elif fmt is None:
        fmt = "json" if data.lstrip()[:1] in (b"{", b"[") else "yaml"
    doc = _decode(data, fmt)
    if not isinstance(doc, dict):
        raise _document_error(f"must be a JSON object or YAML mapping, got {type(doc).__name__}")
    try:
        canonical_json(doc)  # YAML can hold what JSON cannot (huge ints); storage needs JSON
    except TypeError as exc:
        raise _document_error(f"not representable as JSON: {exc}") from None
    return doc


def _serialize(source: str | Mapping[str, Any]) -> bytes:
    if isinstance(source, str):
        return source.encode("utf-8", "surrogatepass")
    return orjson.dumps(source, option=orjson.OPT_NON_STR_KEYS)


def _decode(data: bytes, fmt: str) -> Any:
    try:
        if fmt == "json":
            return orjson.loads(data)
        if fmt in ("yaml", "yml"):
            return yaml.load(data, Loader=_Loader)
    except orjson.JSONDecodeError as exc:
        raise _document_error(f"invalid JSON: {exc}") from None
    except yaml.YAMLError as exc:
        raise _document_error(f"invalid YAML: {exc}") from None
    except RecursionError:
        raise _document_error("nested too deeply") from None
    raise ValueError(f"unknown format {fmt!r} (json or yaml)")


def _document_error(message: str) -> DefinitionError:
    return DefinitionError([Problem("document", message)])


def load_definition_file(
    path: str | os.PathLike[str], *, name: str | None = None, version: str | None = None
) -> Definition:
    file = Path(path)
    with file.open("rb") as handle:
        data = handle.read(MAX_DOCUMENT_BYTES + 1)  # enough to see it is too big, no more
    suffix = file.suffix.lower()
    fmt = "json" if suffix == ".json" else "yaml" if suffix in (".yaml", ".yml") else None
    return parse_definition(data, fmt=fmt, name=name, version=version)


def parse_definition(
    source: str | bytes | Mapping[str, Any],
    *,
    fmt: str | None = None,
    name: str | None = None,
    version: str | None = None,
) -> Definition:
    """A validated Definition, or DefinitionError listing every problem found."""
    return _Builder(document_of(source, fmt=fmt)).build(name, version)


_At = tuple[Any, str] | None  # a value found in the document, with its path; None when absent


def _join(base: str, key: str) -> str:
    return f"{base}.{key}" if base else key


def _at(raw: Mapping[str, Any], key: str, base: str) -> _At:
    value = raw.get(key)
    return None if value is None else (value, _join(base, key))  # null reads as absent


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer"}
    return names.get(type(value), "a number" if isinstance(value, float) else type(value).__name__)


class _Draft(NamedTuple):
    step: Step  # depends_on not resolved yet
    path: str
    declared: tuple[tuple[int, str], ...] | None  # (index, name) as written; None: no depends_on key
    deps_path: str
    on_failure_path: str


class _Builder:
    """One validation pass; readers record a problem and return None rather than stop."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.problems: list[Problem] = []
        self.seen: dict[str, str] = {}  # step name -> path of its first step

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def build(self, name: str | None, version: str | None) -> Definition:
        meta, meta_path, body, body_path = self.shape()
        name, version = self.identity(meta, meta_path, body is meta, name, version)
        if body is None:  # without a body, every further problem would be noise
            raise DefinitionError(self.problems)
        description = self.text(_at(meta, "description", meta_path)) or ""
        timeout_ms, default_retry = self.settings(body, body_path)
        drafts = self.steps(body, body_path, default_retry)
        handlers = self.error_handlers(body, body_path)
        steps, handler_list = self.attach(self.resolve(drafts), drafts, handlers)
        compensation = self.compensation(body, body_path, default_retry)
        steps = self.link_edges(steps, drafts)
        self.check_references(steps, compensation, drafts)
        input_schema = self.input_schema(body, body_path)
        output = self.output(body, body_path)
        if self.problems:
            raise DefinitionError(self.problems)
        return Definition(name=name, version=version, description=description, steps=tuple(steps),
                          error_handlers=handler_list, timeout_ms=timeout_ms, compensation=tuple(compensation),
                          input_schema=input_schema, output=output)

    def shape(self) -> tuple[dict[str, Any], str, dict[str, Any] | None, str]:
        doc = self.doc
        if "apiVersion" in doc or "spec" in doc:
            return self.mapping(_at(doc, "metadata", "")) or {}, "metadata", self.section("spec"), "spec"
        if "definition" in doc:
            return doc, "", self.section("definition"), "definition"
        return doc, "", doc, ""

    def section(self, key: str) -> dict[str, Any] | None:
        found = _at(self.doc, key, "")
        if found is None:
            self.add(key, "required")
        return self.mapping(found)

    def identity(self, meta: dict[str, Any], base: str, bare: bool,
                 name: str | None, version: str | None) -> tuple[str, str]:
        hint = " (pass --name/--version for a bare definition)" if bare else ""
        found_name = (name, "name") if name is not None else _at(meta, "name", base)
        found_version = (version, "version") if version is not None else _at(meta, "version", base)
        if found_version and _is_number(found_version[0]):
            found_version = (str(found_version[0]), found_version[1])  # YAML reads `version: 1.2` as a number
        text_name, text_version = self.text(found_name), self.text(found_version)
        for key, found in (("name", found_name), ("version", found_version)):
            if found is None:
                self.add(_join(base, key), "required" + hint)
        if found_name and text_name is not None and not 0 < len(text_name.strip()) <= 200:
            self.add(found_name[1], "must be 1 to 200 characters, not blank")
        if found_version and text_version is not None and not _VERSION.fullmatch(text_version):
            self.add(found_version[1], "must be up to 64 letters, digits, '.', '_', '+', '-', "
                     "starting with a letter or digit")
        return text_name or "", text_version or ""

    def settings(self, body: dict[str, Any], base: str) -> tuple[int | None, RetryPolicy]:
        config = self.mapping(_at(body, "config", base)) or {}

        def find(key: str) -> _At:
            return _at(config, key, _join(base, "config")) or _at(body, key, base)

        timeout_ms = self.duration(find("timeout") or find("timeout_ms"))
        return timeout_ms, self.retry(find("retry_policy"), RetryPolicy())

    def steps(self, body: dict[str, Any], base: str, default_retry: RetryPolicy) -> list[_Draft]:
        found, path = _at(body, "steps", base), _join(base, "steps")
        if found is None or not isinstance(found[0], list) or not found[0]:
            self.add(path, "must be a non-empty list of steps")
            return []
        drafts = []
        for i, raw in enumerate(found[0]):
            if isinstance(raw, dict):
                drafts.append(self.step(raw, f"{path}[{i}]", default_retry))
            else:
                self.add(f"{path}[{i}]", f"must be an object, got {_kind(raw)}")
        return drafts

    def step(self, raw: dict[str, Any], path: str, default_retry: RetryPolicy) -> _Draft:
        config = self.mapping(_at(raw, "config", path)) or {}

        def find(*keys: str) -> _At:
            for key in keys:
                if (found := _at(config, key, f"{path}.config") or _at(raw, key, path)) is not None:
                    return found
            return None

        self.unknown_keys(raw, path)
        self.unknown_keys(config, f"{path}.config")
        name, kind = self.step_name(find("name"), path), self.step_type(find("type", "step_type"), path)
        for field, needed_by in _REQUIRED:
            if kind == needed_by and find(field) is None:
                self.add(f"{path}.{field}", f"required for {needed_by} steps")
        payload, output, event_filter = find("payload", "input"), find("output"), find("filter", "event_filter")
        items = find("items")
        for templated in (find("endpoint"), payload, output, event_filter, items):
            if templated is not None:
                self.templates(*templated)
        condition = self.condition(find("condition"))
        on_error, retry = self.on_failure(find("on_failure"), name, self.retry(find("retry_policy"), default_retry))
        deps = find("depends_on")
        step = Step(
            name=name or "", type=kind or "", description=self.text(find("description")) or "",
            sequence=self.integer(find("sequence")), service=self.text(find("service")),
            endpoint=self.text(find("endpoint")), method=self.text(find("method")),
            input=payload[0] if payload else None, output=output[0] if output else None,
            event_type=self.event_type(find("event_type")), event_filter=self.mapping(event_filter) or {},
            timeout_ms=self.duration(find("timeout", "timeout_ms")), retry_policy=retry, on_error=on_error,
            on_timeout=self.timeout_action(find("on_timeout"), name),
            condition=condition, true_edge=self.text(find("true_edge")), false_edge=self.text(find("false_edge")),
            items=items[0] if items else None, max_iterations=self.integer(find("max_iterations"), 1) or 1000,
            validation_rules=self.rules(find("validation_rules")), duration_ms=self.duration(find("duration")),
            workflow=self.text(find("workflow")), workflow_version=self.version_text(find("workflow_version")),
            compensates=self.text(find("compensates")),
        )
        return _Draft(step, path, self.names(deps), deps[1] if deps else f"{path}.depends_on", f"{path}.on_failure")

    def unknown_keys(self, raw: dict[str, Any], path: str) -> None:
        """A misspelt field would otherwise be dropped silently (``depend_on`` would make a root step)."""
        for key in raw:
            if key not in STEP_FIELDS:
                close = difflib.get_close_matches(str(key), STEP_FIELDS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.add(f"{path}.{key}", f"unknown field {key!r}{hint}")

    def condition(self, found: _At) -> str | None:
        if found is None:
            return None
        value, path = found
        if isinstance(value, bool):
            return "true" if value else "false"
        text = self.text(found)
        if text is not None:
            for message in condition_problems(text):
                self.add(path, message)
        return text

    def version_text(self, found: _At) -> str | None:
        if found is not None and _is_number(found[0]):
            return str(found[0])
        return self.text(found)

    def rules(self, found: _At) -> tuple[ValidationRule, ...]:
        if found is None:
            return ()
        if not isinstance(found[0], list) or not found[0]:
            self.add(found[1], f"must be a non-empty list of rules, got {_kind(found[0])}")
            return ()
        rules = []
        for i, raw in enumerate(found[0]):
            path = f"{found[1]}[{i}]"
            if not isinstance(raw, dict):
                self.add(path, f"must be an object, got {_kind(raw)}")
                continue
            fields = {k: self.text(_at(raw, k, path)) for k in ("field", "rule", "service", "endpoint")}
            for key in ("field", "rule", "service"):
                if _at(raw, key, path) is None:
                    self.add(f"{path}.{key}", "required")
            if fields["endpoint"] is not None:
                self.templates(fields["endpoint"], f"{path}.endpoint")
            if fields["field"] and fields["rule"] and fields["service"]:
                rules.append(ValidationRule(field=fields["field"], rule=fields["rule"], service=fields["service"],
                                            endpoint=fields["endpoint"]))
        return tuple(rules)

    def timeout_action(self, found: _At, step: str | None) -> ErrorHandler | None:
        raw = self.mapping(found)
        if raw is None or found is None:
            return None
        action = self.text(_at(raw, "action", found[1]))
        if action is None or action not in TIMEOUT_ACTIONS:
            self.add(f"{found[1]}.action", f"must be one of {', '.join(TIMEOUT_ACTIONS)}, got {action!r}")
            return None
        if action == "notify" and _at(raw, "target", found[1]) is None:
            self.add(f"{found[1]}.target", "required for notify")
        return ErrorHandler(step=step, action=action, target=self.text(_at(raw, "target", found[1])),
                            endpoint=self.text(_at(raw, "endpoint", found[1])),
                            message=self.text(_at(raw, "message", found[1])))

    def compensation(self, body: dict[str, Any], base: str, default_retry: RetryPolicy) -> list[Step]:
        found = _at(body, "compensation", base)
        if found is None:
            return []
        block = self.mapping(found)
        raw_steps = _at(block, "steps", found[1]) if block is not None else None
        if raw_steps is None or not isinstance(raw_steps[0], list) or not raw_steps[0]:
            self.add(f"{found[1]}.steps", "must be a non-empty list of steps")
            return []
        steps = []
        for i, raw in enumerate(raw_steps[0]):
            path = f"{raw_steps[1]}[{i}]"
            if not isinstance(raw, dict):
                self.add(path, f"must be an object, got {_kind(raw)}")
                continue
            draft = self.step(raw, path, default_retry)
            if draft.step.type and draft.step.type != "service_call":
                self.add(f"{path}.type", "compensation steps must be service_call steps")
            steps.append(msgspec.structs.replace(draft.step, depends_on=()))
        return steps

    def link_edges(self, steps: list[Step], drafts: list[_Draft]) -> list[Step]:
        """A conditional's edges run after it: add it to their dependencies."""
        edges: dict[str, str] = {}
        for step, draft in zip(steps, drafts):
            if step.type != "conditional":
                continue
            for key in ("true_edge", "false_edge"):
                target = getattr(step, key)
                if target is None:
                    continue
                if target not in self.seen or target == step.name:
                    self.add(f"{draft.path}.{key}", f"unknown step {target!r}")
                else:
                    edges[target] = step.name
        return [msgspec.structs.replace(s, depends_on=s.depends_on + (edges[s.name],))
                if s.name in edges and edges[s.name] not in s.depends_on else s for s in steps]

    def check_references(self, steps: list[Step], compensation: list[Step], drafts: list[_Draft]) -> None:
        names = {s.name for s in steps}
        for step in compensation:
            if step.compensates is not None and step.compensates not in names:
                self.add(f"compensation.{step.name}.compensates", f"unknown step {step.compensates!r}")
        wants_compensation = [(s, d) for s, d in zip(steps, drafts)
                              if (s.on_error and s.on_error.action == "compensate")
                              or (s.on_timeout and s.on_timeout.action == "compensate")]
        if wants_compensation and not compensation:
            for _step, draft in wants_compensation:
                self.add(draft.path, "compensate needs a `compensation` block with steps")
        for step, draft in zip(steps, drafts):
            if step.type == "sub_workflow" and step.workflow is not None and not step.workflow.strip():
                self.add(f"{draft.path}.workflow", "must name a workflow")

    def input_schema(self, body: dict[str, Any], base: str) -> dict[str, Any] | None:
        found = _at(body, "input", base)
        spec = self.mapping(found)
        if spec is None or found is None:
            return None
        schema = self.mapping(_at(spec, "schema", found[1]))
        if schema is None:
            return None
        for message in schema_problems(schema):
            self.add(f"{found[1]}.schema", message)
        return schema

    def output(self, body: dict[str, Any], base: str) -> Any:
        found = _at(body, "output", base)
        spec = self.mapping(found)
        if spec is None or found is None:
            return None
        if (values := _at(spec, "values", found[1])) is not None:
            self.templates(*values)
        if (schema := self.mapping(_at(spec, "schema", found[1]))) is not None:
            for message in schema_problems(schema):
                self.add(f"{found[1]}.schema", message)
        return spec

    def step_name(self, found: _At, path: str) -> str | None:
        name = self.text(found)
        if found is None:
            self.add(f"{path}.name", "required")
        elif name is not None and not _STEP_NAME.fullmatch(name):
            self.add(found[1], f"invalid step name {name!r} (1 to 100 of A-Z a-z 0-9 _ . -)")
        elif name is not None and name in self.seen:
            self.add(found[1], f"duplicate step name {name!r} (first at {self.seen[name]})")
        elif name is not None:
            self.seen[name] = path
            return name
        return None

    def step_type(self, found: _At, path: str) -> str | None:
        kind = self.text(found)
        kind = _TYPE_ALIASES.get(kind, kind) if kind is not None else None
        if found is None:
            self.add(f"{path}.type", f"required (supported: {', '.join(STEP_TYPES)})")
        elif kind is not None and kind not in STEP_TYPES:
            self.add(found[1], f"unknown step type {found[0]!r} (supported: {', '.join(STEP_TYPES)})")
            return None
        return kind

    def on_failure(self, found: _At, step: str | None, retry: RetryPolicy) -> tuple[ErrorHandler | None, RetryPolicy]:
        raw = self.mapping(found)
        if raw is None or found is None:
            return None, retry
        if raw.get("action") == "retry":  # a retry here is just the step's attempt budget
            attempts = self.integer(_at(raw, "max_attempts", found[1]), 1)
            return None, retry if attempts is None else msgspec.structs.replace(retry, max_attempts=attempts)
        return self.handler(raw, found[1], step), retry

    def error_handlers(self, body: dict[str, Any], base: str) -> list[tuple[ErrorHandler, str]]:
        found = _at(body, "error_handlers", base)
        if found is None:
            return []
        if not isinstance(found[0], list):
            self.add(found[1], f"must be a list, got {_kind(found[0])}")
            return []
        handlers = []
        for k, raw in enumerate(found[0]):
            path = f"{found[1]}[{k}]"
            if not isinstance(raw, dict):
                self.add(path, f"must be an object, got {_kind(raw)}")
                continue
            step = self.text(_at(raw, "step", path))
            if step is not None and step not in self.seen:
                self.add(f"{path}.step", f"unknown step {step!r}")
            inner = _at(raw, "on_error", path)
            spec = self.mapping(inner) if inner else raw
            if spec is not None and (handler := self.handler(spec, inner[1] if inner else path, step)):
                handlers.append((handler, path))
        return handlers

    def handler(self, raw: dict[str, Any], path: str, step: str | None) -> ErrorHandler | None:
        action = self.text(_at(raw, "action", path))
        if _at(raw, "action", path) is None:
            self.add(f"{path}.action", f"required (supported: {', '.join(ERROR_ACTIONS)})")
        elif action in UNSUPPORTED_ACTIONS:
            self.add(f"{path}.action", f"action {action!r} is not supported by this version of foldflow "
                                       f"(supported: {', '.join(ERROR_ACTIONS)})")
        elif action is not None and action not in ERROR_ACTIONS:
            self.add(f"{path}.action", f"unknown action {action!r} (supported: {', '.join(ERROR_ACTIONS)})")
        if action == "notify" and _at(raw, "target", path) is None:
            self.add(f"{path}.target", "required for notify")
        if (endpoint := _at(raw, "endpoint", path)) is not None:
            self.templates(*endpoint)
        seconds = self.number(_at(raw, "backoff_seconds", path), 0.0)
        backoff = (self.duration((seconds * 1000, f"{path}.backoff_seconds")) if seconds is not None
                   else self.duration(_at(raw, "backoff_ms", path) or _at(raw, "backoff", path)))
        handler = ErrorHandler(
            step=step, action=action or "", max_retries=self.integer(_at(raw, "max_retries", path), 0) or 0,
            backoff_ms=backoff or 0, target=self.text(_at(raw, "target", path)),
            endpoint=self.text(endpoint), message=self.text(_at(raw, "message", path)),
        )
        return handler if action in ERROR_ACTIONS else None

    def resolve(self, drafts: list[_Draft]) -> list[Step]:
        sequences = sorted({d.step.sequence for d in drafts if d.step.sequence is not None})
        by_sequence: dict[int, dict[str, None]] = {}
        for d in drafts:
            if d.step.sequence is not None and d.step.name:
                by_sequence.setdefault(d.step.sequence, {})[d.step.name] = None
        steps = []
        for d in drafts:
            if d.declared is not None:
                deps = self.declared(d)
            elif d.step.sequence is not None and (i := bisect.bisect_left(sequences, d.step.sequence)):
                deps = tuple(by_sequence[sequences[i - 1]])
            else:
                deps = ()
            steps.append(msgspec.structs.replace(d.step, depends_on=deps))
        first = {d.step.name: d for d in drafts if d.step.name and self.seen.get(d.step.name) == d.path}
        graph = {s.name: s.depends_on for s in steps if s.name in first}
        for cycle in _cycles(graph):
            self.add(first[cycle[0]].deps_path, "dependency cycle: " + " -> ".join(cycle))
        return steps

    def declared(self, draft: _Draft) -> tuple[str, ...]:
        deps: dict[str, None] = {}
        for j, dep in draft.declared or ():
            if dep == draft.step.name:
                self.add(f"{draft.deps_path}[{j}]", "a step cannot depend on itself")
            elif dep not in self.seen:
                self.add(f"{draft.deps_path}[{j}]", f"unknown step {dep!r}")
            else:
                deps[dep] = None
        return tuple(deps)

    def attach(self, steps: list[Step], drafts: list[_Draft],
               handlers: list[tuple[ErrorHandler, str]]) -> tuple[list[Step], tuple[ErrorHandler, ...]]:
        by_step: dict[str, tuple[ErrorHandler, str]] = {}
        for handler, path in handlers:
            if handler.step is not None and handler.step in by_step:
                self.add(path, f"step {handler.step!r} already has an error handler at {by_step[handler.step][1]}")
            elif handler.step is not None:
                by_step[handler.step] = (handler, path)
        # A handler without a step is the workflow-wide default for steps that have none.
        default = next((h for h, _ in handlers if h.step is None), None)
        attached, from_steps = [], []
        for step, draft in zip(steps, drafts):
            if step.on_error is not None:
                from_steps.append(step.on_error)
                if step.name in by_step:
                    self.add(draft.on_failure_path, f"conflicts with the error handler at {by_step[step.name][1]}")
            elif step.name in by_step:
                step = msgspec.structs.replace(step, on_error=by_step[step.name][0])
            elif default is not None:
                step = msgspec.structs.replace(step, on_error=default)
            attached.append(step)
        return attached, tuple(h for h, _ in handlers) + tuple(from_steps)

    # Readers: the value when present and well typed, else None (with a problem if present).

    def text(self, found: _At) -> str | None:
        text: str | None = self.typed(found, str, "a string")
        return text

    def event_type(self, found: _At) -> str | None:
        # An event longer than this is refused when published, so a wait on it could never end.
        text = self.text(found)
        if found is not None and text is not None and not 0 < len(text) <= MAX_TYPE_CHARS:
            self.add(found[1], f"must be 1 to {MAX_TYPE_CHARS} characters (the longest event type accepted)")
        return text

    def mapping(self, found: _At) -> dict[str, Any] | None:
        raw: dict[str, Any] | None = self.typed(found, dict, "an object")
        return raw

    def typed(self, found: _At, kind: type[Any], wanted: str) -> Any:
        if found is None or isinstance(found[0], kind):
            return None if found is None else found[0]
        self.add(found[1], f"must be {wanted}, got {_kind(found[0])}")
        return None

    def integer(self, found: _At, minimum: int | None = None) -> int | None:
        if found is None:
            return None
        value, path = found
        if isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum):
            return value
        self.add(path, "must be an integer" + ("" if minimum is None else f" >= {minimum}") + f", got {value!r}")
        return None

    def number(self, found: _At, minimum: float) -> float | None:
        if found is None:
            return None
        value, path = found
        if _is_number(value) and math.isfinite(value) and value >= minimum:
            return float(value)
        self.add(path, f"must be a number >= {minimum:g}, got {value!r}")
        return None

    def duration(self, found: _At) -> int | None:
        try:
            return None if found is None else parse_duration_ms(found[0])
        except ValueError as exc:
            self.add(found[1] if found else "", str(exc))
            return None

    def names(self, found: _At) -> tuple[tuple[int, str], ...] | None:
        if found is None:
            return None
        if not isinstance(found[0], list):
            self.add(found[1], f"must be a list of step names, got {_kind(found[0])}")
            return ()
        for j, item in enumerate(found[0]):
            if not isinstance(item, str):
                self.add(f"{found[1]}[{j}]", f"must be a step name, got {_kind(item)}")
        return tuple((j, item) for j, item in enumerate(found[0]) if isinstance(item, str))

    def retry(self, found: _At, default: RetryPolicy) -> RetryPolicy:
        raw = self.mapping(found)
        if raw is None or found is None:
            return default
        path, fields = found[1], {}
        backoff = self.text(_at(raw, "backoff", path))
        if backoff is not None and backoff not in _BACKOFF_BASES:
            self.add(f"{path}.backoff", f"unknown backoff {backoff!r} (supported: {', '.join(_BACKOFF_BASES)})")
        elif backoff is not None:
            fields["backoff_base"] = _BACKOFF_BASES[backoff]
            # The YAML form promises jittered backoff; the JSON fields are exact unless jitter is given.
            fields["jitter"] = _DEFAULT_JITTER
        readers = (("max_attempts", lambda f: self.integer(f, 1)), ("backoff_base", lambda f: self.number(f, 1.0)),
                   ("backoff_multiplier", self.duration), ("max_delay_ms", self.duration))
        aliases = {"backoff_multiplier": "initial_delay", "max_delay_ms": "max_delay"}
        jitter = _at(raw, "jitter", path)
        if jitter is not None:
            value = self.number(jitter, 0.0)
            if value is not None and value > 1:
                self.add(jitter[1], f"must be a fraction from 0 to 1, got {value!r}")
            elif value is not None:
                fields["jitter"] = value
        for field, read in readers:
            value = read(_at(raw, field, path) or _at(raw, aliases.get(field, field), path))
            if value is not None:
                fields[field] = value
        return msgspec.structs.replace(default, **fields)

    def templates(self, value: Any, path: str, depth: int = 0) -> None:
        if depth > _MAX_NESTING:
            self.add(path, f"nested deeper than {_MAX_NESTING} levels")
        elif isinstance(value, str):
            for message in template_problems(value):
                self.add(path, message)
        elif isinstance(value, dict):
            for key, item in value.items():
                self.templates(item, f"{path}.{key}", depth + 1)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self.templates(item, f"{path}[{i}]", depth + 1)


def _cycles(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Each dependency cycle once, as a closed walk; iterative, so long chains cannot overflow."""
    state: dict[str, bool] = {}  # True while on the DFS stack, False once finished
    cycles: list[list[str]] = []
    for start in graph:
        if start in state:
            continue
        state[start] = True
        stack = [(start, iter(graph[start]))]
        while stack:
            node, deps = stack[-1]
            nxt = next(deps, None)
            if nxt is None:
                state[node] = False
                stack.pop()
            elif state.get(nxt) is True:
                trail = [n for n, _ in stack]
                cycles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state and nxt in graph:
                state[nxt] = True
                stack.append((nxt, iter(graph[nxt])))
    return cycles
