"""Where each part of a translated document came from, so that a problem the native
parser finds is reported at the path its author wrote (``nodes[2].config.condition``,
not ``steps[1].condition``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from engine.core.definition.model import Definition, DefinitionError, Problem


class PathMap:
    """Native path prefixes and the original paths they stand for; the longest prefix wins."""

    def __init__(self) -> None:
        self._map: dict[str, tuple[str, bool]] = {}

    def add(self, native: str, original: str, *, same_below: bool = False) -> None:
        """``same_below``: what is under ``native`` keeps its shape under ``original``
        (a payload that is the node's config as written), so the rest of the path carries over."""
        self._map[native] = (original, same_below)

    def original(self, native: str) -> str:
        probe = native
        while True:
            found = self._map.get(probe)
            if found is not None:
                original, same_below = found
                return original + native[len(probe):] if same_below else original
            cut = max(probe.rfind("."), probe.rfind("["))
            if cut <= 0:
                return native
            probe = probe[:cut]


class Translation(NamedTuple):
    """A native document, where its parts came from, and what was wrong before it was built."""

    document: dict[str, Any]
    paths: PathMap
    problems: list[Problem]
    wording: tuple[tuple[re.Pattern[str], str], ...] = ()  # native advice, said in the format's words

    def build(self, parse: Callable[[dict[str, Any]], Definition]) -> Definition:
        """The Definition ``parse`` makes of the document; every problem at its original path."""
        try:
            definition = parse(self.document)
        except DefinitionError as exc:
            raise DefinitionError(merge(self.problems, self._mapped(exc.problems))) from None
        if self.problems:
            raise DefinitionError(self.problems)
        return definition

    def _mapped(self, problems: Iterable[Problem]) -> list[Problem]:
        return [Problem(self.paths.original(p.path), self._worded(p.message)) for p in problems]

    def _worded(self, message: str) -> str:
        for pattern, replacement in self.wording:
            message = pattern.sub(replacement, message)
        return message


def merge(first: list[Problem], then: list[Problem]) -> list[Problem]:
    """``first`` and then the problems of ``then`` at paths ``first`` does not already explain:
    a node reference the translation refused also fails the native check of what it became."""
    explained = {p.path for p in first}
    out, seen = list(first), set(first)
    for problem in then:
        if problem.path not in explained and problem not in seen:
            out.append(problem)
            seen.add(problem)
    return out
