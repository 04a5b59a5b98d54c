"""Front ends: other seeds' definition formats, translated into the native document.

One engine underneath: a nodes-and-edges workflow (seed 001, nodes.py) or an
execution plan (seed 003, plans.py) becomes a bare native document that the
normal parser then validates into a Definition, and every problem it finds is
reported at the path of the original document (paths.py). Pure, like the rest
of engine/core.
"""

from __future__ import annotations

from engine.core.formats.services import CODE_SERVICE, HTTP_SERVICE, LLM_SERVICE
from engine.core.formats.translate import Translation, translate

__all__ = ["CODE_SERVICE", "HTTP_SERVICE", "LLM_SERVICE", "Translation", "translate"]
