"""Which format a document is in, and its translation when it is not native."""

from __future__ import annotations

from typing import Any

from engine.core.formats.nodes import translate_nodes
from engine.core.formats.paths import Translation
from engine.core.formats.plans import translate_plan

__all__ = ["Translation", "translate"]


def translate(doc: dict[str, Any], *, strict: bool = True) -> Translation | None:
    """The native translation of a seed 001 (``nodes`` and ``edges``) or seed 003
    (``start_step`` and a ``steps`` mapping) document; None for a native one.

    ``steps`` as a mapping is enough to mean a plan (native steps are a list), so a
    plan that lacks its ``start_step`` is told so rather than that steps must be a list."""
    if "nodes" in doc and "edges" in doc:
        return translate_nodes(doc, strict=strict)
    if isinstance(doc.get("steps"), dict):
        return translate_plan(doc, strict=strict)
    return None
