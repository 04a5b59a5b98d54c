"""Typed readers over a document, and the record of what one validation pass found.

A reader takes a value found in the document with its path (``At``) and returns
it when present and well typed, else None, recording a problem when it was
present but wrong: one pass collects every problem, so an author fixes a file
in one round. Null reads as absent.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

from engine.core.codec import MAX_TYPE_CHARS
from engine.core.definition.model import Problem, _is_number, parse_duration_ms
from engine.core.definition.vocabulary import MAX_NESTING
from engine.core.ids import LANE_SUFFIX_RE
from engine.core.language.conditions import condition_paths, condition_problems
from engine.core.language.expressions import template_paths, template_problems

At = tuple[Any, str] | None  # a value found in the document, with its path; None when absent
_LISTED_FIELDS: Final = 12  # a set this small is listed when no known key is close to the unknown one

# Who reads a template, which decides the steps it may name (see references.py).
UPSTREAM: Final = "upstream"  # rendered before its step runs: steps upstream of it
OWN: Final = "own"  # rendered once its step ran (output mapping, failure handlers): upstream, and the step itself
FLOW: Final = "flow"  # the workflow's output and default handler: any step of the main flow
ANY: Final = "any"  # compensation: any step


class Owner(NamedTuple):
    step: str | None  # None: the workflow, or a step whose name is invalid
    scope: str


class Read(NamedTuple):
    """A template or condition naming ``steps.<step>``, kept until the step graph is known."""

    path: str
    step: str
    owner: Owner


def join(base: str, key: str) -> str:
    return f"{base}.{key}" if base else key


def at(raw: Mapping[str, Any], key: str, base: str) -> At:
    value = raw.get(key)
    return None if value is None else (value, join(base, key))


def kind_of(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer"}
    return names.get(type(value), "a number" if isinstance(value, float) else type(value).__name__)


def did_you_mean(word: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Reader:
    """One validation pass: the problems so far, the step names seen, and the step reads to check."""

    def __init__(self, *, strict: bool = True) -> None:
        # Not strict: a stored definition, validated when it was registered. Checks added
        # since (closed key sets below the step, step reads) must not refuse what
        # registration once accepted, or instances running on it would be dead-lettered.
        self.strict = strict
        self.problems: list[Problem] = []
        self.seen: dict[str, str] = {}  # step name -> path of its first step
        self.reads: list[Read] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def closed(self, raw: Mapping[Any, Any], path: str, fields: Sequence[str],
               misplaced: Mapping[str, str] | None = None) -> None:
        """A misspelt key would otherwise be dropped silently (``depend_on`` would make a root step)."""
        if not self.strict:
            return
        for key in raw:
            if key in fields:
                continue
            where = f"{path}.{key}" if path else str(key)
            if misplaced and key in misplaced:
                self.add(where, misplaced[key])
                continue
            hint = did_you_mean(str(key), fields)
            if not hint and len(fields) <= _LISTED_FIELDS:
                hint = f" (known: {', '.join(fields)})"
            self.add(where, f"unknown field {key!r}{hint}")

    def text(self, found: At) -> str | None:
        text: str | None = self.typed(found, str, "a string")
        return text

    def service(self, found: At) -> str | None:
        """A step's service (its task queue): ``<name>:p1`` .. ``:p9`` name priority lanes (streams.md, "Tasks")."""
        text = self.text(found)
        if self.strict and found is not None and text is not None and LANE_SUFFIX_RE.search(text):
            self.add(found[1], f"{text!r} ends like a priority lane (:p1 .. :p9, reserved): rename the service")
        return text

    def version_text(self, found: At) -> str | None:
        if found is not None and _is_number(found[0]):
            return str(found[0])  # YAML reads `version: 1.2` as a number
        return self.text(found)

    def event_type(self, found: At) -> str | None:
        # An event longer than this is refused when published, so a wait on it could never end.
        text = self.text(found)
        if found is not None and text is not None and not 0 < len(text) <= MAX_TYPE_CHARS:
            self.add(found[1], f"must be 1 to {MAX_TYPE_CHARS} characters (the longest event type accepted)")
        return text

    def mapping(self, found: At) -> dict[str, Any] | None:
        raw: dict[str, Any] | None = self.typed(found, dict, "an object")
        return raw

    def typed(self, found: At, kind: type[Any], wanted: str) -> Any:
        if found is None or isinstance(found[0], kind):
            return None if found is None else found[0]
        self.add(found[1], f"must be {wanted}, got {kind_of(found[0])}")
        return None

    def integer(self, found: At, minimum: int | None = None) -> int | None:
        if found is None:
            return None
        value, path = found
        if isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum):
            return value
        self.add(path, "must be an integer" + ("" if minimum is None else f" >= {minimum}") + f", got {value!r}")
        return None

    def number(self, found: At, minimum: float) -> float | None:
        if found is None:
            return None
        value, path = found
        if _is_number(value) and math.isfinite(value) and value >= minimum:
            return float(value)
        self.add(path, f"must be a number >= {minimum:g}, got {value!r}")
        return None

    def duration(self, found: At) -> int | None:
        try:
            return None if found is None else parse_duration_ms(found[0])
        except ValueError as exc:
            self.add(found[1] if found else "", str(exc))
            return None

    def names(self, found: At) -> tuple[tuple[int, str], ...] | None:
        """``depends_on`` as written, (index, name); None when the key is absent."""
        if found is None:
            return None
        if not isinstance(found[0], list):
            self.add(found[1], f"must be a list of step names, got {kind_of(found[0])}")
            return ()
        for j, item in enumerate(found[0]):
            if not isinstance(item, str):
                self.add(f"{found[1]}[{j}]", f"must be a step name, got {kind_of(item)}")
        return tuple((j, item) for j, item in enumerate(found[0]) if isinstance(item, str))

    def condition(self, found: At, owner: Owner) -> str | None:
        if found is None:
            return None
        value, path = found
        if isinstance(value, bool):
            return "true" if value else "false"
        text = self.text(found)
        if text is not None:
            for message in condition_problems(text):
                self.add(path, message)
            self.note(condition_paths(text), path, owner)
        return text

    def templates(self, value: Any, path: str, owner: Owner, depth: int = 0, *, secrets: bool = False) -> None:
        """``secrets``: the value goes to a service call (headers, endpoint, url, payload), the only
        place the HTTP executor substitutes ``{{ secrets.NAME }}``."""
        if depth > MAX_NESTING:
            self.add(path, f"nested deeper than {MAX_NESTING} levels")
        elif isinstance(value, str):
            for message in template_problems(value):
                self.add(path, message)
            paths = template_paths(value)
            if not secrets:
                for read in paths:
                    if read.startswith("secrets."):
                        self.add(path, f"{read}: secrets may be used only in a service call's headers, "
                                       "endpoint, url and payload")
            self.note(paths, path, owner)
        elif isinstance(value, dict):
            for key, item in value.items():
                self.templates(item, f"{path}.{key}", owner, depth + 1, secrets=secrets)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self.templates(item, f"{path}[{i}]", owner, depth + 1, secrets=secrets)

    def note(self, paths: list[str], path: str, owner: Owner) -> None:
        for read in paths:
            root, _, rest = read.partition(".")
            if root == "steps" and rest:  # a bare `steps` names no step in particular
                self.reads.append(Read(path, rest.split(".", 1)[0], owner))
