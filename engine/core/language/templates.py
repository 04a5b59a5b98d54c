"""Parse the expression inside a template into a small tree of nodes.

Hand-written tokenizer and recursive descent, so that definition text can
never reach ``eval``: the only names that do anything are the path roots in
``ROOTS`` and the functions in ``FUNCTIONS``, both fixed here. Lookups walk
mappings by key and lists by index, never attributes.

Grammar, inside ``{{ }}`` (``${ }`` accepts a path only)::

    expr := call | path | literal
    call := NAME "(" [expr ("," expr)*] ")"
    path := ROOT ("." (IDENT | INDEX))*
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

import orjson

from engine.errors import EngineError

ROOTS: Final = frozenset({"input", "context", "steps", "response", "workflow", "event", "item", "index", "signals",
                          "secrets"})
# A secret's value never reaches the core: ``secrets.NAME`` renders to this marker, which the
# HTTP executor replaces at call time (its regex is SECRET_MARKER).
SECRET_NAME: Final = re.compile(r"[A-Za-z0-9_]+")
SECRET_MARKER: Final = re.compile(r"\{\{\s*secrets\.([A-Za-z0-9_]+)\s*\}\}")
MAX_DEPTH: Final = 8
_MAX_NUMBER_CHARS: Final = 64  # int("9" * 5000) raises, and nothing real needs more

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
    |(?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)(?![A-Za-z0-9_.])
    |(?P<path>[A-Za-z_][A-Za-z0-9_-]*(?:\.(?:[A-Za-z_][A-Za-z0-9_-]*|\d+))*)
    |(?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    |(?P<punct>[(),])
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPES: Final = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r"}
_KEYWORDS: Final[dict[str, Any]] = {"true": True, "false": False, "null": None}


class TemplateError(EngineError, ValueError):
    """Malformed template text; the message names the problem and the text."""


class MissingValue(LookupError):
    """A template path that does not resolve against the render scope."""

    def __init__(self, path: str) -> None:
        super().__init__(path)  # args stay (path,) so the error pickles round-trip
        self.path = path

    def __str__(self) -> str:
        return f"no value at {self.path}"


def to_text(value: Any) -> str:
    """How a value reads when interpolated into a longer string."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return str(value)  # scope values come from the engine; still never fail a render on them


class Path:
    __slots__ = ("keys", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        # A digit segment is also tried as a mapping key, so keep both spellings.
        self.keys = tuple((k, int(k) if k.isdigit() else None) for k in text.split("."))

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        current: Any = scope
        for key, index in self.keys:
            if isinstance(current, Mapping):
                if key not in current:
                    raise MissingValue(self.text)
                current = current[key]
            elif index is not None and isinstance(current, (list, tuple)) and index < len(current):
                current = current[index]
            else:
                raise MissingValue(self.text)
        return current


class Literal:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        return self.value


class Call:
    __slots__ = ("args", "function")

    def __init__(self, function: Callable[..., Any], args: Sequence[Node]) -> None:
        self.function = function
        self.args = tuple(args)

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        return self.function(*(arg.evaluate(scope) for arg in self.args))


class Default:
    """``default(expr, fallback)``: the fallback only when expr is missing, not when null."""

    __slots__ = ("expr", "fallback")

    def __init__(self, expr: Node, fallback: Node) -> None:
        self.expr = expr
        self.fallback = fallback

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        try:
            return self.expr.evaluate(scope)
        except MissingValue:
            return self.fallback.evaluate(scope)


class Required:
    """``required(expr, what)``: a missing path fails the render naming ``what``, even where a
    missing optional input would otherwise read as null (execution plans' strict mappings)."""

    __slots__ = ("expr", "what")

    def __init__(self, expr: Node, what: Node | None) -> None:
        self.expr = expr
        self.what = what

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        try:
            return self.expr.evaluate(scope)
        except MissingValue as exc:
            # Not a MissingValue: that would be read as an optional input field left out.
            if self.what is None:
                raise TemplateError(f"{exc.path} is required but not set") from None
            raise TemplateError(f"{to_text(self.what.evaluate(scope))} matched nothing") from None


class Secret:
    """``secrets.NAME``: renders to the marker ``{{ secrets.NAME }}``, never to a value."""

    __slots__ = ("marker", "name", "text")

    def __init__(self, name: str) -> None:
        self.name = name
        self.text = f"secrets.{name}"
        self.marker = "{{ secrets." + name + " }}"

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        return self.marker


Node = Path | Literal | Call | Default | Required | Secret


def node_paths(node: Node) -> Iterator[str]:
    """Every path an expression reads, as written; registration checks them against the steps."""
    if isinstance(node, (Path, Secret)):
        yield node.text
    elif isinstance(node, Call):
        for arg in node.args:
            yield from node_paths(arg)
    elif isinstance(node, Default):
        yield from node_paths(node.expr)
        yield from node_paths(node.fallback)
    elif isinstance(node, Required):
        yield from node_paths(node.expr)


def _hash(value: Any) -> str:
    data = value.encode() if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(data).hexdigest()


def _len(value: Any) -> int:
    if isinstance(value, (str, list, tuple, Mapping)):
        return len(value)
    raise TemplateError(f"len() needs a string, list or object, got {type(value).__name__}")


def from_json(value: Any) -> Any:
    """Text holding JSON as the value it encodes (a model's reply often is); anything else as it is."""
    if not isinstance(value, str):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value


def get(container: Any, key: Any) -> Any:
    """``get(x, key)``: the item under a key no path can spell (``'target table'``), or at a position."""
    if isinstance(container, Mapping) and isinstance(key, str) and key in container:
        return container[key]
    if isinstance(container, (list, tuple)) and isinstance(key, int) and not isinstance(key, bool) \
            and 0 <= key < len(container):
        return container[key]
    raise MissingValue(f"get(..., {key!r})")


FUNCTIONS: Final[dict[str, Callable[..., Any]]] = {
    "from_json": from_json,
    "get": get,
    "hash": _hash,
    "lower": lambda v: to_text(v).lower(),
    "upper": lambda v: to_text(v).upper(),
    "len": _len,
    "str": to_text,
}
_SPECIAL: Final = {"default": (2, 2), "required": (1, 2)}  # (fewest, most) arguments; they see a missing path
_ARITY: Final = {"get": (2, 2)}  # (fewest, most) arguments of the FUNCTIONS that take more than one
_FUNCTION_NAMES: Final = ", ".join(sorted([*FUNCTIONS, *_SPECIAL]))


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise TemplateError(f"unexpected {text[pos]!r} at offset {pos}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "ws":
            tokens.append((kind, match.group()))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.pos = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ("end", "")

    def take(self, value: str) -> None:
        kind, found = self.peek()
        if found != value or kind != "punct":
            raise TemplateError(f"expected {value!r}, found {found or 'end of expression'!r}")
        self.pos += 1

    def expression(self, depth: int = 0) -> Node:
        if depth > MAX_DEPTH:
            raise TemplateError(f"function calls nested deeper than {MAX_DEPTH}")
        kind, text = self.peek()
        self.pos += 1
        if kind == "number":
            return Literal(_number(text))
        if kind == "string":
            return Literal(_unquote(text))
        if kind != "path":
            raise TemplateError(f"expected a path, literal or call, found {text or 'end of expression'!r}")
        if self.peek() == ("punct", "("):
            return self.call(text, depth)
        if text in _KEYWORDS:
            return Literal(_KEYWORDS[text])
        return path(text)

    def call(self, name: str, depth: int) -> Node:
        if name not in _SPECIAL and name not in FUNCTIONS:
            raise TemplateError(f"unknown function {name!r} (known: {_FUNCTION_NAMES})")
        self.take("(")
        args: list[Node] = []
        while self.peek() != ("punct", ")"):
            if self.peek()[0] == "end":
                raise TemplateError(f"unbalanced parentheses: {name}( is never closed")
            if args:
                self.take(",")
            args.append(self.expression(depth + 1))
        self.take(")")
        for arg in args:
            if isinstance(arg, Secret):
                # The core never sees the value, so it cannot compute with it.
                raise TemplateError(f"{arg.text} cannot be an argument of {name}(): a secret is only "
                                    "substituted as it is")
        fewest, most = _SPECIAL.get(name) or _ARITY.get(name, (1, 1))
        if not fewest <= len(args) <= most:
            wanted = str(fewest) if fewest == most else f"{fewest} or {most}"
            raise TemplateError(f"{name}() takes {wanted} argument(s), got {len(args)}")
        if name == "default":
            return Default(args[0], args[1])
        if name == "required":
            return Required(args[0], args[1] if len(args) > 1 else None)
        return Call(FUNCTIONS[name], args)

    def finish(self) -> None:
        kind, text = self.peek()
        if kind != "end":
            raise TemplateError(f"unexpected {text!r} after the expression")


def path(text: str) -> Path | Secret:
    """A checked path; ``text`` must already be a single path token."""
    root, _, rest = text.partition(".")
    if root not in ROOTS:
        raise TemplateError(f"unknown root {root!r} (allowed: {', '.join(sorted(ROOTS))})")
    if root == "secrets":
        if not SECRET_NAME.fullmatch(rest):
            raise TemplateError(f"invalid secret reference {text!r}: write secrets.NAME, NAME of A-Z a-z 0-9 _")
        return Secret(rest)
    return Path(text)


def parse_expression(text: str) -> Node:
    parser = _Parser(text)
    if parser.peek()[0] == "end":
        raise TemplateError("empty expression")
    node = parser.expression()
    parser.finish()
    return node


def parse_path(text: str) -> Path | Secret:
    tokens = tokenize(text)
    if not tokens:
        raise TemplateError("empty expression")
    if len(tokens) != 1 or tokens[0][0] != "path":
        raise TemplateError(f"expected a path like context.x, found {text!r}")
    return path(tokens[0][1])


def _number(text: str) -> int | float:
    if len(text) > _MAX_NUMBER_CHARS:
        raise TemplateError(f"number literal longer than {_MAX_NUMBER_CHARS} characters")
    if text.lstrip("-").isdigit():
        return int(text)
    value = float(text)
    if not math.isfinite(value):
        raise TemplateError(f"number literal out of range: {text}")
    return value


def _unquote(text: str) -> str:
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            escaped = body[i + 1]  # the token regex guarantees a character follows
            if escaped not in _ESCAPES:
                raise TemplateError(f"unknown escape \\{escaped} in string literal")
            char, i = _ESCAPES[escaped], i + 1
        out.append(char)
        i += 1
    return "".join(out)
