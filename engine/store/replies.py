"""Redis replies as Python text: the one bytes-to-str helper of the project."""

from __future__ import annotations

from typing import Any


def text(value: Any) -> str:
    """A reply value as str: bytes decoded as UTF-8 (undecodable bytes replaced, never raised), else str()."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
