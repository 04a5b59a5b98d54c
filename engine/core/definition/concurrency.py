"""The ``concurrency`` block of a definition: read at registration, rendered per start.

``concurrency: {key: "{{ input.user_id }}", limit: 1, on_limit: queue}``. The key is
a template over what a start carries: ``input`` (= ``context``), ``tenant`` and
``correlation_id``. Pure: the engine worker renders it before it asks Redis for a slot.
"""

from __future__ import annotations

import re
from typing import Any, Final

from engine.core.definition.fields import Reader, at, join
from engine.core.definition.model import Concurrency
from engine.core.definition.vocabulary import CONCURRENCY_FIELDS, ON_LIMIT
from engine.core.language.expressions import render, template_paths, template_problems
from engine.core.language.templates import to_text

MAX_KEY_CHARS: Final = 512  # a rendered key longer than this is hashed into the slot keys anyway; refuse it
# {{ tenant }} and {{ correlation_id }} are start fields, not template roots: read them via `workflow`.
_START_FIELDS: Final = re.compile(r"\{\{\s*(tenant|correlation_id)\s*\}\}")
_READABLE: Final = ("input", "context", "workflow.tenant", "workflow.correlation_id")


def read_concurrency(r: Reader, body: dict[str, Any], base: str) -> Concurrency | None:
    found = at(body, "concurrency", base)
    spec = r.mapping(found)
    if spec is None or found is None:
        return None
    path = found[1]
    r.closed(spec, path, CONCURRENCY_FIELDS)
    key = _key(r, at(spec, "key", path), join(path, "key"))
    limit = r.integer(at(spec, "limit", path), minimum=1)
    on_limit = r.text(at(spec, "on_limit", path))
    if on_limit is not None and on_limit not in ON_LIMIT:
        r.add(join(path, "on_limit"), f"must be one of {', '.join(ON_LIMIT)}, got {on_limit!r}")
        on_limit = None
    if key is None:
        return None
    return Concurrency(key=key, limit=limit or 1, on_limit=on_limit or "queue")


def _key(r: Reader, found: tuple[Any, str] | None, path: str) -> str | None:
    if found is None:
        r.add(path, "required: a template naming what to limit, e.g. '{{ input.user_id }}' or '{{ tenant }}'")
        return None
    text = r.text(found)
    if text is None:
        return None
    text = _START_FIELDS.sub(lambda m: "{{ workflow.%s }}" % m.group(1), text)
    problems = template_problems(text)
    for message in problems:
        r.add(path, message)
    for read in [] if problems else template_paths(text):
        if not any(read == root or read.startswith(root + ".") for root in _READABLE):
            r.add(path, f"reads {read!r}: a concurrency key may read only input, tenant and correlation_id")
    return text


class KeyRenderError(ValueError):
    """The key could not be rendered from this start (a field it names is missing)."""


def render_key(conc: Concurrency, context: dict[str, Any], tenant: str | None, correlation_id: str | None) -> str:
    """The rendered key of one start; KeyRenderError naming the problem when it cannot be rendered."""
    scope = {"input": context, "context": context,
             "workflow": {"tenant": tenant or "", "correlation_id": correlation_id or ""}}
    try:
        value = render(conc.key, scope)
    except Exception as exc:  # MissingValue, TemplateError: both mean this start cannot be keyed
        raise KeyRenderError(f"concurrency key {conc.key!r} cannot be rendered: {exc}") from None
    key = value if isinstance(value, str) else to_text(value)
    if len(key) > MAX_KEY_CHARS:
        raise KeyRenderError(f"concurrency key is {len(key)} characters, more than {MAX_KEY_CHARS}")
    return key
