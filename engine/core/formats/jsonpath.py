"""The JSONPath subset execution plans use in their mappings: ``$``, ``.name``,
``[n]`` and ``['name']`` (or ``["name"]``).

Parsed into a tuple of segments and printed back; never evaluated here: plans.py
turns a parsed path into a template path that the engine renders like any other.
``print_path(parse_path(text))`` is the canonical spelling of ``text``, and
``parse_path(print_path(p)) == p`` for every path ``p``.
"""

from __future__ import annotations

import re
from typing import Final

from engine.errors import EngineError

Segment = str | int  # a key, or a list index
MAX_PATH_CHARS: Final = 1_000
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_INDEX: Final = re.compile(r"\[(\d{1,9})\]")
_ESCAPES: Final = {"\\": "\\", "'": "'", '"': '"'}


class JsonPathError(EngineError, ValueError):
    """Malformed JSONPath text; the message names the problem and where it is."""


def parse_path(text: str) -> tuple[Segment, ...]:
    if len(text) > MAX_PATH_CHARS:
        raise JsonPathError(f"longer than {MAX_PATH_CHARS} characters")
    if not text.startswith("$"):
        raise JsonPathError(f"must start with '$', got {text[:20]!r}")
    segments: list[Segment] = []
    pos = 1
    while pos < len(text):
        if text[pos] == ".":
            found = _NAME.match(text, pos + 1)
            if found is None:
                raise JsonPathError(f"expected a name after '.' at offset {pos}")
            segments.append(found.group())
            pos = found.end()
        elif (index := _INDEX.match(text, pos)) is not None:
            segments.append(int(index.group(1)))
            pos = index.end()
        elif text.startswith(("['", '["'), pos):
            key, pos = _quoted(text, pos + 1)
            segments.append(key)
        else:
            raise JsonPathError(f"unexpected {text[pos]!r} at offset {pos} (the subset is $, .name, [n], ['name'])")
    return tuple(segments)


def _quoted(text: str, pos: int) -> tuple[str, int]:
    """The key of ``['...']`` starting at its quote, and the offset after its ``]``."""
    quote, out, i = text[pos], [], pos + 1
    while i < len(text):
        char = text[i]
        if char == "\\":
            if i + 1 >= len(text) or text[i + 1] not in _ESCAPES:
                raise JsonPathError(f"unknown escape at offset {i} (only \\\\, \\' and \\\")")
            out.append(_ESCAPES[text[i + 1]])
            i += 2
        elif char == quote:
            if not text.startswith("]", i + 1):
                raise JsonPathError(f"expected ']' at offset {i + 1}")
            return "".join(out), i + 2
        else:
            out.append(char)
            i += 1
    raise JsonPathError(f"unclosed {quote}[{quote} at offset {pos - 1}")


def print_path(segments: tuple[Segment, ...]) -> str:
    parts = ["$"]
    for segment in segments:
        if isinstance(segment, int):
            parts.append(f"[{segment}]")
        elif _NAME.fullmatch(segment):
            parts.append(f".{segment}")
        else:
            parts.append("['" + segment.replace("\\", "\\\\").replace("'", "\\'") + "']")
    return "".join(parts)
