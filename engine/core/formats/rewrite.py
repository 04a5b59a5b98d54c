"""Rewrite seed 001's templates and conditions into native ones.

Seed 001 reads a node's output by the node's id (``{{classify.output.category}}``);
natively that node is step ``classify`` whose output holds the node's output
under ``output`` (``{{ steps.classify.output.output.category }}``). Text is
split into templates with a quote-aware scan and each template is tokenized by
the language's own tokenizers (engine.core.language): only path tokens change,
nothing is ever evaluated, and the native parser then checks the result.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from engine.core.definition.model import Problem
from engine.core.language.condition_parser import ConditionError
from engine.core.language.condition_parser import tokenize as condition_tokens
from engine.core.language.expressions import template_spans
from engine.core.language.templates import TemplateError
from engine.core.language.templates import tokenize as template_tokens

KEPT_ROOTS: Final = frozenset({"input", "context", "secrets", "workflow"})  # mean what they mean natively
TASK: Final = "task"  # a node that runs a task: its output is {"output": ..., ...}
CONDITIONAL: Final = "conditional"  # its output is the native {"result", "edge"}
_KEYWORDS: Final = frozenset({"true", "false", "null"})
_OPERATORS: Final = frozenset({"and", "or", "not", "in"})
_MAX_DEPTH: Final = 64
_SIMPLE: Final = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_.-]*\s*")  # one path: needs no parentheses to stay one operand


class Scope(NamedTuple):
    """The node ids a template may read, by what they are (TASK, CONDITIONAL, or a marker type)."""

    kinds: Mapping[str, str]


class Rewriter:
    def __init__(self, scope: Scope, problems: list[Problem]) -> None:
        self.scope = scope
        self.problems = problems

    def value(self, value: Any, path: str, depth: int = 0) -> Any:
        """A JSON value with every string's templates rewritten (keys are never templates)."""
        if depth > _MAX_DEPTH:
            self.problems.append(Problem(path, f"nested deeper than {_MAX_DEPTH} levels"))
            return value
        if isinstance(value, str):
            return self.text(value, path)
        if isinstance(value, dict):
            return {k: self.value(v, f"{path}.{k}", depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        return value

    def text(self, text: str, path: str) -> str:
        if "{" not in text:
            return text
        try:
            pieces = split_templates(text)
        except TemplateError as exc:
            self.problems.append(Problem(path, str(exc)))
            return text
        out = []
        for opener, inner in pieces:
            if not opener:
                out.append(inner)
            else:
                closer = "}}" if opener == "{{" else "}"
                out.append(f"{opener} {self._expression(inner, path)} {closer}")
        return "".join(out)

    def condition(self, text: str, path: str) -> str:
        """``{{a.output.x}} == 'y'``: templates unwrapped into one bare native condition."""
        try:
            # Spaces around a lone path, so `not{{x}}` cannot run together into one name.
            bare = "".join(inner if not opener else f" {inner} " if _SIMPLE.fullmatch(inner) else f"({inner})"
                           for opener, inner in split_templates(text))
            tokens = condition_tokens(bare)
        except (TemplateError, ConditionError) as exc:
            self.problems.append(Problem(path, str(exc)))
            return text
        out = []
        for i, (kind, token) in enumerate(tokens):
            calls = i + 1 < len(tokens) and tokens[i + 1] == ("op", "(")
            if kind == "name" and not calls and token not in _KEYWORDS and token not in _OPERATORS:
                token = self._path(token, path)
            out.append(token)
        return " ".join(out)

    def _expression(self, inner: str, path: str) -> str:
        try:
            tokens = template_tokens(inner)
        except TemplateError as exc:
            self.problems.append(Problem(path, str(exc)))
            return inner
        out = []
        for i, (kind, token) in enumerate(tokens):
            calls = i + 1 < len(tokens) and tokens[i + 1] == ("punct", "(")
            if kind == "path" and not calls and token not in _KEYWORDS:
                token = self._path(token, path)
            out.append(token)
        return " ".join(out)

    def _path(self, token: str, path: str) -> str:
        root, _, rest = token.partition(".")
        if root in KEPT_ROOTS:
            return token
        kind = self.scope.kinds.get(root)
        if kind == TASK:
            return f"steps.{root}.output" + (f".{rest}" if rest else "")
        if kind == CONDITIONAL:
            if rest == "output" or rest.startswith("output."):
                return f"steps.{root}.{rest}"
            self._refuse(path, f"{token}: a conditional node's output is {{result, edge}}; "
                               f"read {root}.output.result or {root}.output.edge")
        elif kind is not None:
            self._refuse(path, f"{token}: {root!r} is a {kind} node, which has no output")
        else:
            known = sorted(k for k, v in self.scope.kinds.items() if v in (TASK, CONDITIONAL))
            self._refuse(path, f"{token}: unknown node {root!r} (a template reads input, secrets or a node: "
                               f"{', '.join(known) or 'none'})")
        return token

    def _refuse(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))


def split_templates(text: str) -> list[tuple[str, str]]:
    """``(opener, inner)`` for each ``{{ }}`` and ``${ }``, ``("", text)`` between them; TemplateError when unclosed."""
    pieces: list[tuple[str, str]] = []
    literal_from = 0
    for opener, start, end, inner in template_spans(text):
        if start > literal_from:
            pieces.append(("", text[literal_from:start]))
        pieces.append((opener, inner))
        literal_from = end
    if literal_from < len(text):
        pieces.append(("", text[literal_from:]))
    return pieces


def literal(value: Any) -> Any:
    """``value`` spelled so the native renderer returns it as it is: a string holding
    ``{{`` or ``${`` becomes one template of a string literal."""
    if isinstance(value, str):
        if "{{" not in value and "${" not in value:
            return value
        escaped = value.replace("\\", "\\\\").replace("'", "\\'")
        return "{{ '" + escaped + "' }}"
    if isinstance(value, dict):
        return {k: literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [literal(v) for v in value]
    return value
