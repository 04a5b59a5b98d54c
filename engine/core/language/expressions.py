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

Rendering sits on the engine's hot path, so each distinct string is compiled
once (``lru_cache``) and strings without ``{`` return before any lookup.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Final

from engine.core.language.templates import (
    MissingValue,
    Node,
    Path,
    TemplateError,
    node_paths,
    parse_expression,
    parse_path,
    to_text,
)

__all__ = ["MissingValue", "TemplateError", "render", "render_endpoint", "template_paths", "template_problems"]

MAX_TEMPLATE_CHARS: Final = 10_000
MAX_VALUE_DEPTH: Final = 64  # deeper payload templates would only serve to exhaust the stack
_MARKER = re.compile(r"\$\{|\{\{|\{")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_-]*)\}")


class _Whole:
    """One template and nothing else: the value keeps its type."""

    __slots__ = ("node",)

    def __init__(self, node: Node) -> None:
        self.node = node

    def render(self, scope: Mapping[str, Any]) -> Any:
        return self.node.evaluate(scope)


class _Interpolated:
    __slots__ = ("parts",)

    def __init__(self, parts: list[str | Node]) -> None:
        self.parts = tuple(parts)

    def render(self, scope: Mapping[str, Any]) -> str:
        return "".join(p if isinstance(p, str) else to_text(p.evaluate(scope)) for p in self.parts)


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
    if isinstance(compiled, _Whole):
        return list(node_paths(compiled.node))
    if isinstance(compiled, _Interpolated):
        return [path for part in compiled.parts if not isinstance(part, str) for path in node_paths(part)]
    return []


def render(value: Any, scope: Mapping[str, Any], optional: frozenset[str] = frozenset()) -> Any:
    """Deep-render: mapping values, list items and strings; keys and other scalars as they are.

    ``optional`` names roots (e.g. ``input``) whose missing paths render as null
    when a value is exactly one template: an optional input field the caller
    left out becomes null in a payload rather than failing the step. Missing
    paths inside text, and under any other root, are still errors.
    """
    return _render(value, scope, 0, optional)


def _render(value: Any, scope: Mapping[str, Any], depth: int, optional: frozenset[str]) -> Any:
    if isinstance(value, str):
        if "{" not in value:
            return value
        try:
            return _render_str(value, scope, False)
        except MissingValue as exc:
            if optional and exc.path.split(".", 1)[0] in optional and isinstance(_compiled(value, False), _Whole):
                return None
            raise
    if depth > MAX_VALUE_DEPTH:
        raise TemplateError(f"value nested deeper than {MAX_VALUE_DEPTH} levels")
    if isinstance(value, Mapping):
        return {key: _render(item, scope, depth + 1, optional) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_render(item, scope, depth + 1, optional) for item in value]
    return value


def render_endpoint(endpoint: str, scope: Mapping[str, Any]) -> str:
    """Render an endpoint; bare ``{name}`` placeholders read ``scope["context"][name]``."""
    if "{" not in endpoint:
        return endpoint
    return to_text(_render_str(endpoint, scope, True))


def _render_str(text: str, scope: Mapping[str, Any], placeholders: bool) -> Any:
    compiled = _compiled(text, placeholders)
    if isinstance(compiled, TemplateError):
        # A fresh error each time: re-raising the cached one would grow its traceback.
        raise TemplateError(str(compiled))
    return text if compiled is None else compiled.render(scope)


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


def _assemble(parts: list[str | Node]) -> _Compiled:
    nodes = [p for p in parts if not isinstance(p, str)]
    if not nodes:
        return None
    texts = [p for p in parts if isinstance(p, str)]
    if len(nodes) == 1 and all(not t.strip() for t in texts):
        return _Whole(nodes[0])
    return _Interpolated(parts)


def _split(text: str, placeholders: bool) -> list[str | Node]:
    parts: list[str | Node] = []
    pos = literal_from = 0
    while (marker := _MARKER.search(text, pos)) is not None:
        start, found = marker.start(), marker.group()
        if found == "{":
            hole = _PLACEHOLDER.match(text, start) if placeholders else None
            if hole is None:
                pos = start + 1  # a lone brace is plain text
                continue
            node: Node = Path("context." + hole.group(1))
            end = hole.end()
        elif found == "${":
            close = text.find("}", marker.end())
            if close < 0:
                raise TemplateError("unclosed '${'")
            node, end = parse_path(text[marker.end() : close]), close + 1
        else:
            close = _closing_braces(text, marker.end())
            node, end = parse_expression(text[marker.end() : close]), close + 2
        if start > literal_from:
            parts.append(text[literal_from:start])
        parts.append(node)
        pos = literal_from = end
    if literal_from < len(text):
        parts.append(text[literal_from:])
    return parts


def _closing_braces(text: str, pos: int) -> int:
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
