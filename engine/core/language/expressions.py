"""Templates in workflow definitions: find them, check them, render them.

Two spellings reach the same expressions:

- ``${context.task_id}``: a path only;
- ``{{ steps.s.output.user_id }}`` or ``{{ hash(input.password) }}``: a path,
  a literal, or a call of one of a fixed set of functions
  (see ``engine.core.language.templates``).

A string that is exactly one template (surrounding whitespace aside) renders to
the value itself, keeping its type; anything else renders to a string. Single
braces, as in ``/tasks/{task_id}``, are plain text for ``render`` and context
placeholders for ``render_endpoint`` only, because payloads may legitimately
contain braces while endpoints are URL paths.

``secrets.NAME`` renders to the marker ``{{ secrets.NAME }}`` (the HTTP executor
substitutes the value at call time). A render for a call (``call=True``) refuses
instance data that reads as such a marker, so data can never ask for a secret.

Rendering sits on the engine's hot path, so each distinct string is compiled
once (``lru_cache``) and strings without ``{`` return before any lookup.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any, Final
from urllib.parse import quote

from engine.core.language.templates import (
    SECRET_MARKER,
    MissingValue,
    Node,
    Path,
    Secret,
    TemplateError,
    node_paths,
    parse_expression,
    parse_path,
    to_text,
)

__all__ = ["MissingValue", "TemplateError", "literal_text", "refuse_markers", "render", "render_endpoint", "template_paths",
           "template_problems"]

MAX_TEMPLATE_CHARS: Final = 10_000
MAX_VALUE_DEPTH: Final = 64  # deeper payload templates would only serve to exhaust the stack
_MARKER = re.compile(r"\$\{|\{\{|\{")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_-]*)\}")


class Placeholder:
    """A bare ``{name}`` of an endpoint: the context's ``name``, else the step input's."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        for source in (scope.get("context"), scope.get(_PAYLOAD)):
            if isinstance(source, Mapping) and self.name in source:
                return source[self.name]
        raise MissingValue(f"context.{self.name}")


_Hole = Node | Placeholder
_PAYLOAD: Final = " payload"  # the scope key of the step's rendered input; no template path can spell it


def _evaluate(node: _Hole, scope: Mapping[str, Any], call: bool) -> Any:
    value = node.evaluate(scope)
    if call and not isinstance(node, Secret):
        refuse_markers(value, _label(node))
    return value


def _label(node: _Hole) -> str:
    if isinstance(node, Placeholder):
        return "{" + node.name + "}"
    if isinstance(node, Path):
        return node.text
    return "a template"


def refuse_markers(value: Any, where: str, depth: int = 0) -> None:
    """Instance data that reads as ``{{ secrets.NAME }}`` would make the executor send that secret."""
    if isinstance(value, str):
        if "secrets" in value and (found := SECRET_MARKER.search(value)) is not None:
            raise TemplateError(f"{where} holds the text {found.group()!r}, which reads as a secret reference: "
                                "only a definition may ask for a secret")
    elif depth > MAX_VALUE_DEPTH:
        raise TemplateError(f"value nested deeper than {MAX_VALUE_DEPTH} levels")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            refuse_markers(key, where, depth + 1)
            refuse_markers(item, where, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            refuse_markers(item, where, depth + 1)


class _Whole:
    """One template and nothing else: the value keeps its type."""

    __slots__ = ("node",)

    def __init__(self, node: _Hole) -> None:
        self.node = node

    def render(self, scope: Mapping[str, Any], call: bool = False) -> Any:
        return _evaluate(self.node, scope, call)


class _Interpolated:
    __slots__ = ("parts",)

    def __init__(self, parts: list[str | _Hole]) -> None:
        self.parts = tuple(parts)

    def render(self, scope: Mapping[str, Any], call: bool = False) -> str:
        return "".join(p if isinstance(p, str) else to_text(_evaluate(p, scope, call)) for p in self.parts)


_Compiled = _Whole | _Interpolated | None  # None: no templates, the string renders as itself


def template_problems(value: Any) -> list[str]:
    """One message per malformed template anywhere in a JSON-like value."""
    problems: list[str] = []
    _collect(value, problems, 0)
    return problems


def _collect(value: Any, problems: list[str], depth: int) -> None:
    if depth > MAX_VALUE_DEPTH:
        problems.append(f"nested deeper than {MAX_VALUE_DEPTH} levels")
    elif isinstance(value, str):
        if "{" in value:
            compiled = _compiled(value, False)
            if isinstance(compiled, TemplateError):
                problems.append(str(compiled))
    elif isinstance(value, Mapping):
        for item in value.values():
            _collect(item, problems, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect(item, problems, depth + 1)


def template_paths(text: str) -> list[str]:
    """The paths the templates in one string read; [] when it has none or is malformed.

    Bare ``{name}`` endpoint placeholders read the context, so they are left out.
    """
    if "{" not in text:
        return []
    compiled = _compiled(text, False)
    if isinstance(compiled, _Whole) and not isinstance(compiled.node, Placeholder):
        return list(node_paths(compiled.node))
    if isinstance(compiled, _Interpolated):
        return [path for part in compiled.parts if not isinstance(part, (str, Placeholder))
                for path in node_paths(part)]
    return []


def literal_text(text: str) -> str:
    """``text`` with its templates (and endpoint placeholders) left out; as it is when malformed."""
    if "{" not in text:
        return text
    compiled = _compiled(text, True)
    if isinstance(compiled, _Interpolated):
        return "".join(p for p in compiled.parts if isinstance(p, str))
    return "" if isinstance(compiled, _Whole) else text


def render(value: Any, scope: Mapping[str, Any], optional: frozenset[str] = frozenset(), *,
           call: bool = False) -> Any:
    """Deep-render: mapping values, list items and strings; keys and other scalars as they are.

    ``optional`` names roots (e.g. ``input``) whose missing paths render as null
    when a value is exactly one template: an optional input field the caller
    left out becomes null in a payload rather than failing the step. Missing
    paths inside text, and under any other root, are still errors. ``call``: the
    value goes to a service (payload, headers), so instance data must not read
    as a secret marker.
    """
    return _render(value, scope, 0, optional, call)


def _render(value: Any, scope: Mapping[str, Any], depth: int, optional: frozenset[str], call: bool) -> Any:
    if isinstance(value, str):
        if "{" not in value:
            return value
        try:
            return _render_str(value, scope, False, call)
        except MissingValue as exc:
            if optional and exc.path.split(".", 1)[0] in optional and isinstance(_compiled(value, False), _Whole):
                return None
            raise
    if depth > MAX_VALUE_DEPTH:
        raise TemplateError(f"value nested deeper than {MAX_VALUE_DEPTH} levels")
    if isinstance(value, Mapping):
        return {key: _render(item, scope, depth + 1, optional, call) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_render(item, scope, depth + 1, optional, call) for item in value]
    return value


def render_endpoint(endpoint: str, scope: Mapping[str, Any], payload: Any = None, *, what: str = "endpoint") -> str:
    """Render an endpoint (or a url) for a call.

    A bare ``{name}`` reads the context's ``name``, else the step input's
    (``payload``). Every substituted value is URL-encoded as one path segment,
    except a secret marker, which the executor encodes with the value. A
    placeholder that is missing or null fails: a URL with a hole calls the
    wrong resource.
    """
    if "{" not in endpoint:
        return endpoint
    compiled = _compiled(endpoint, True)
    if isinstance(compiled, TemplateError):
        raise TemplateError(str(compiled))  # a fresh error: re-raising the cached one would grow its traceback
    if compiled is None:
        return endpoint
    holes = compiled.parts if isinstance(compiled, _Interpolated) else (compiled.node,)
    scope = {**scope, _PAYLOAD: payload} if payload is not None else scope
    out = []
    for i, part in enumerate(holes):
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, Secret):
            out.append(part.marker)
        else:
            out.append(quote(to_text(_hole_value(endpoint, holes, i, scope, what)), safe=""))
    return "".join(out)


def _hole_value(endpoint: str, holes: tuple[str | _Hole, ...], i: int, scope: Mapping[str, Any], what: str) -> Any:
    node = holes[i]
    assert not isinstance(node, str)
    try:
        value = _evaluate(node, scope, True)
    except MissingValue:
        value = None
    if value is None:
        spelled = _spellings(endpoint)[sum(1 for h in holes[:i] if not isinstance(h, str))]
        raise TemplateError(f"placeholder {spelled} in {what} {endpoint!r} resolved to nothing")
    return value


def _spellings(text: str) -> list[str]:
    """Each template of an endpoint as written, in order (only on the way to an error)."""
    spelled: list[str] = []
    _split(text, True, spelled)
    return spelled


def _render_str(text: str, scope: Mapping[str, Any], placeholders: bool, call: bool = False) -> Any:
    compiled = _compiled(text, placeholders)
    if isinstance(compiled, TemplateError):
        # A fresh error each time: re-raising the cached one would grow its traceback.
        raise TemplateError(str(compiled))
    return text if compiled is None else compiled.render(scope, call)


def _compiled(text: str, placeholders: bool) -> _Compiled | TemplateError:
    if len(text) > MAX_TEMPLATE_CHARS:  # checked before the cache, which must not hold huge keys
        return TemplateError(f"template longer than {MAX_TEMPLATE_CHARS} characters in {_excerpt(text)}")
    return _compile(text, placeholders)


@lru_cache(maxsize=4096)
def _compile(text: str, placeholders: bool) -> _Compiled | TemplateError:
    # Errors are cached too, so a malformed string costs one parse, not one per render.
    try:
        return _assemble(_split(text, placeholders))
    except TemplateError as exc:
        return TemplateError(f"{exc} in {_excerpt(text)}")


def _assemble(parts: list[str | _Hole]) -> _Compiled:
    nodes = [p for p in parts if not isinstance(p, str)]
    if not nodes:
        return None
    texts = [p for p in parts if isinstance(p, str)]
    if len(nodes) == 1 and all(not t.strip() for t in texts):
        return _Whole(nodes[0])
    return _Interpolated(parts)


def template_spans(text: str, placeholders: bool = False) -> Iterator[tuple[str, int, int, str]]:
    """``(opener, start, end, inner)`` for each ``{{ }}``, ``${ }`` (and, with ``placeholders``,
    ``{name}``, opener ``"{"``) in text, in order, unparsed; TemplateError when one is unclosed."""
    pos = 0
    while (marker := _MARKER.search(text, pos)) is not None:
        start, found = marker.start(), marker.group()
        if found == "{":
            hole = _PLACEHOLDER.match(text, start) if placeholders else None
            if hole is None:
                pos = start + 1  # a lone brace is plain text
                continue
            yield "{", start, hole.end(), hole.group(1)
            pos = hole.end()
            continue
        if found == "${":
            close = text.find("}", marker.end())
            if close < 0:
                raise TemplateError("unclosed '${'")
            end = close + 1
        else:
            close = closing_braces(text, marker.end())
            end = close + 2
        yield found, start, end, text[marker.end() : close]
        pos = end


def _split(text: str, placeholders: bool, spelled: list[str] | None = None) -> list[str | _Hole]:
    parts: list[str | _Hole] = []
    literal_from = 0
    for opener, start, end, inner in template_spans(text, placeholders):
        node: _Hole = (Placeholder(inner) if opener == "{" else parse_path(inner) if opener == "${"
                       else parse_expression(inner))
        if start > literal_from:
            parts.append(text[literal_from:start])
        if spelled is not None:
            spelled.append(text[start:end])
        parts.append(node)
        literal_from = end
    if literal_from < len(text):
        parts.append(text[literal_from:])
    return parts


def closing_braces(text: str, pos: int) -> int:
    """Index of the ``}}`` closing a ``{{``; braces inside quoted literals do not count."""
    quote = ""
    while pos < len(text):
        char = text[pos]
        if quote:
            if char == "\\":
                pos += 1
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif text.startswith("}}", pos):
            return pos
        pos += 1
    raise TemplateError("unclosed '{{'")


def _excerpt(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
