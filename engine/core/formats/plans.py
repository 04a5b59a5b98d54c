"""Seed 003's execution plans, as a native document.

``{"name" | "workflow_id" | "id", "version"?, "description"?, "start_step",
"steps": {"extract": {"id", "agent_name", "next_step", "input_mapping"}, ...}}``:
the steps chain from ``start_step`` by ``next_step`` (null or absent ends the
chain); each is a service_call to the service ``agent_name`` whose payload is
its ``input_mapping``. A mapping value that is a string starting with ``$`` is a
JSONPath (jsonpath.py): ``$.workflow_input...`` reads the input,
``$.<step>.output_data...`` that step's output. Unlike a native payload, a path
that matches nothing fails the step naming the path (the template function
``required``); any other value is a literal, passed as it is.
"""

from __future__ import annotations

import re
from typing import Any, Final

from engine.core.definition.fields import did_you_mean
from engine.core.definition.model import Problem
from engine.core.definition.vocabulary import STEP_NAME
from engine.core.formats.jsonpath import JsonPathError, Segment, parse_path, print_path
from engine.core.formats.paths import PathMap, Translation
from engine.core.formats.rewrite import literal

NAME_KEYS: Final = ("name", "workflow_id", "id")  # the first one present names the workflow
DOC_FIELDS: Final = (*NAME_KEYS, "version", "description", "start_step", "steps")
STEP_FIELDS: Final = ("id", "name", "description", "agent_name", "next_step", "input_mapping", "timeout",
                      "retry_policy")
INPUT_ROOT: Final = "workflow_input"
OUTPUT_KEY: Final = "output_data"
_IDENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")  # a key a native template path can spell
WORDING: Final = (
    (re.compile(r"add '([^']+)' to the depends_on of '([^']+)' \(or of a step it depends on\)"),
     r"'\1' must come before '\2' in the next_step chain"),
    (re.compile(r"required \(pass --name/--version for a bare definition\)"),
     "required: name, workflow_id or id (or pass --name)"),
)
_MAX_GETS: Final = 6  # the template parser nests calls at most 8 deep, required() being one


class _Plan:
    def __init__(self, doc: dict[str, Any], strict: bool) -> None:
        self.doc, self.strict = doc, strict
        self.problems: list[Problem] = []
        self.paths = PathMap()

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def closed(self, raw: dict[str, Any], path: str, fields: tuple[str, ...]) -> None:
        if self.strict:
            for key in raw:
                if key not in fields:
                    self.add(f"{path}.{key}" if path else str(key), f"unknown field {key!r}{did_you_mean(str(key), fields)}")


def translate_plan(doc: dict[str, Any], *, strict: bool = True) -> Translation:
    t = _Plan(doc, strict)
    t.closed(doc, "", DOC_FIELDS)
    native: dict[str, Any] = {"version": "1"}
    named = next((key for key in NAME_KEYS if doc.get(key) is not None), None)
    if named is not None:
        native["name"] = doc[named]
        t.paths.add("name", named)
    for key in ("version", "description"):
        if doc.get(key) is not None:
            native[key] = doc[key]
            t.paths.add(key, key)
    steps = {k: v for k, v in doc["steps"].items() if _step_ok(t, k, v)}
    if not doc["steps"]:
        t.add("steps", "must hold at least one step")
    links = _links(t, steps)
    chain = _chain(t, steps, links, doc.get("start_step"))
    after = {following: key for key, following in links.items()}  # one step before each: a chain has no joins
    # Steps off the chain are refused already; translated too, so their own problems show in the same round.
    order = chain + [key for key in steps if key not in chain]
    native["steps"] = [_step(t, steps, key, i, after.get(key)) for i, key in enumerate(order)]
    t.paths.add("steps", "steps")
    return Translation(native, t.paths, t.problems, WORDING)


def _step_ok(t: _Plan, key: str, raw: Any) -> bool:
    path = f"steps.{key}"
    if not isinstance(raw, dict):
        t.add(path, "must be an object with agent_name and, optionally, next_step and input_mapping")
        return False
    t.closed(raw, path, STEP_FIELDS)
    ok = True
    if not STEP_NAME.fullmatch(key) or key == INPUT_ROOT:
        why = f"{INPUT_ROOT!r} is reserved for the input" if key == INPUT_ROOT else "1 to 100 of A-Z a-z 0-9 _ . -"
        t.add(path, f"invalid step id {key!r} ({why})")
        ok = False
    if raw.get("id") is not None and raw["id"] != key:
        t.add(f"{path}.id", f"must be the step's key {key!r}, got {raw['id']!r}")
    if not isinstance(raw.get("agent_name"), str) or not raw["agent_name"]:
        t.add(f"{path}.agent_name", "required: the service (agent) that runs the step")
    return ok


def _links(t: _Plan, steps: dict[str, Any]) -> dict[str, str]:
    """Each step's next_step that names a step."""
    links = {}
    for key, raw in steps.items():
        following = raw.get("next_step")
        if following is None:
            continue
        if not isinstance(following, str) or following not in t.doc["steps"]:
            hint = did_you_mean(following, list(t.doc["steps"])) if isinstance(following, str) else ""
            t.add(f"steps.{key}.next_step", f"unknown step {following!r}{hint}")
        elif following in steps:  # else refused already
            links[key] = following
    return links


def _chain(t: _Plan, steps: dict[str, Any], links: dict[str, str], start: Any) -> list[str]:
    """The steps in the order next_step walks them from start_step; a link closing a cycle is dropped."""
    if not isinstance(start, str):
        t.add("start_step", "required: the id of the first step")
        return []
    if start not in steps:
        if start not in t.doc["steps"]:
            t.add("start_step", f"unknown step {start!r}{did_you_mean(start, list(t.doc['steps']))}")
        return []
    chain = [start]
    while (following := links.get(chain[-1])) is not None:
        if following in chain:
            t.add(f"steps.{chain[-1]}.next_step",
                  "cycle: " + " -> ".join([*chain[chain.index(following):], following]))
            del links[chain[-1]]
            break
        chain.append(following)
    for key in steps:
        if key not in chain:
            t.add(f"steps.{key}", f"unreachable: no next_step chain from start_step {start!r} leads to it")
    return chain


def _step(t: _Plan, steps: dict[str, Any], key: str, i: int, previous: str | None) -> dict[str, Any]:
    raw, path, native = steps[key], f"steps.{key}", f"steps[{i}]"
    step: dict[str, Any] = {"name": key, "type": "service_call", "service": raw.get("agent_name"),
                            "depends_on": [previous] if previous else []}
    for native_key, original in (("", path), (".name", path), (".depends_on", path),
                                 (".service", f"{path}.agent_name"), (".payload", f"{path}.input_mapping")):
        t.paths.add(native + native_key, original)
    for option in ("description", "timeout", "retry_policy"):
        if raw.get(option) is not None:
            step[option] = raw[option]
            t.paths.add(f"{native}.{option}", f"{path}.{option}", same_below=True)
    if raw.get("description") is None and isinstance(raw.get("name"), str):
        step["description"] = raw["name"]
    mapping = raw.get("input_mapping")
    if mapping is None:
        return step
    if not isinstance(mapping, dict):
        t.add(f"{path}.input_mapping", "must be an object: field -> JSONPath or literal")
        return step
    step["payload"] = {field: _value(t, steps, value, f"{path}.input_mapping.{field}", field)
                       for field, value in mapping.items()}
    for field in mapping:
        t.paths.add(f"{native}.payload.{field}", f"{path}.input_mapping.{field}", same_below=True)
    return step


def _value(t: _Plan, steps: dict[str, Any], value: Any, path: str, field: str) -> Any:
    if not isinstance(value, str) or not value.startswith("$"):
        return literal(value)
    try:
        segments = parse_path(value)
    except JsonPathError as exc:
        t.add(path, f"invalid JSONPath {value!r}: {exc}")
        return None
    native = _native_path(t, steps, segments, path)
    if native is None:
        return None
    what = f"input_mapping.{field}: {print_path(segments)}"
    return "{{ required(" + native + ", '" + _escaped(what) + "') }}"


def _native_path(t: _Plan, steps: dict[str, Any], segments: tuple[Segment, ...], path: str) -> str | None:
    printed = print_path(segments)
    head = segments[0] if segments else None
    if head == INPUT_ROOT:
        parts, rest = ["input"], segments[1:]
    elif isinstance(head, str) and head in steps:
        if len(segments) < 2 or segments[1] != OUTPUT_KEY:
            t.add(path, f"{printed}: read a step's output as $.{head}.{OUTPUT_KEY}")
            return None
        parts, rest = ["steps", head, "output"], segments[2:]
        if not _IDENT.fullmatch(head):
            t.add(path, f"{printed}: step id {head!r} cannot be read by a mapping (use A-Z a-z 0-9 _ -)")
            return None
    else:
        t.add(path, f"{printed}: must start with $.{INPUT_ROOT} or $.<step>.{OUTPUT_KEY} "
                    f"(steps: {', '.join(steps) or 'none'})")
        return None
    expression, calls = ".".join(parts), 0
    for segment in rest:
        if calls == 0 and (isinstance(segment, int) or _IDENT.fullmatch(segment)):
            expression += f".{segment}"
            continue
        # A key no template path can spell, and what follows it: read with get().
        calls += 1
        key = str(segment) if isinstance(segment, int) else "'" + _escaped(segment) + "'"
        expression = f"get({expression}, {key})"
    if calls > _MAX_GETS:
        t.add(path, f"{printed}: more than {_MAX_GETS} segments after a key that is not a plain name")
        return None
    return expression


def _escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")
