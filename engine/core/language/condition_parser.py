"""Parse a step condition into a small immutable tree (see ``engine.core.language.conditions``).

Hand-written tokenizer and recursive descent, like ``engine.core.language.templates``,
whose paths, number and string literals this reuses: definition text never
reaches ``eval``, names only ever select a path root or a function from fixed
tables, and lookups walk mappings by key and lists by index, never attributes.

Grammar (EBNF)::

    condition  = or_expr ;
    or_expr    = and_expr { ( "or" | "||" ) and_expr } ;
    and_expr   = not_expr { ( "and" | "&&" ) not_expr } ;
    not_expr   = ( "not" | "!" ) not_expr | comparison ;
    comparison = operand [ comp_op operand ] ;           (* no chaining *)
    comp_op    = "==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not" "in" ;
    operand    = literal | list | call | path | "(" or_expr ")" ;
    list       = "[" [ or_expr { "," or_expr } ] "]" ;
    call       = FUNCTION "(" [ or_expr { "," or_expr } ] ")" ;
    path       = ROOT { "." ( IDENT | INDEX ) } ;
    literal    = STRING | NUMBER | "true" | "false" | "null" ;
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from engine.core.language.templates import _ESCAPES, Path, TemplateError, _number
from engine.core.language.templates import ROOTS as TEMPLATE_ROOTS
from engine.errors import EngineError

# A condition is decided in the core, which never holds a secret's value.
ROOTS: Final = (TEMPLATE_ROOTS - {"secrets"}) | {"item", "index", "signals"}
MAX_CHARS: Final = 2_000
MAX_TOKENS: Final = 500
MAX_DEPTH: Final = 32
MAX_PATTERN_CHARS: Final = 200
MAX_SUBJECT_CHARS: Final = 10_000
# Worst-case backtracking grows with the product of the repeats' spans: two
# unbounded repeats (``.*x.*``) stay well under a second on a full-size subject,
# three (``.*.*.*x``) would take minutes.
MAX_PATTERN_COST: Final = 10**9

ARITY: Final[dict[str, int]] = {
    "from_json": 1, "get": 2, "hash": 1, "len": 1, "lower": 1, "upper": 1, "str": 1, "int": 1, "float": 1, "bool": 1,
    "default": 2, "exists": 1, "contains": 2, "startswith": 2, "endswith": 2, "matches": 2,
}  # fmt: skip
_PATH_ONLY: Final = frozenset({"default", "exists"})  # they ask whether a path resolves
_KEYWORDS: Final[dict[str, Any]] = {"true": True, "false": False, "null": None}
_OPERATOR_WORDS: Final = frozenset({"and", "or", "not", "in"})
_COMPARISONS: Final = frozenset({"==", "!=", "<", "<=", ">", ">=", "in"})
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
    |(?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)(?![A-Za-z0-9_.])
    |(?P<name>[A-Za-z_][A-Za-z0-9_-]*(?:\.(?:[A-Za-z_][A-Za-z0-9_-]*|\d+))*)
    |(?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    |(?P<op>==|!=|<=|>=|&&|\|\||[<>!()\[\],])
    """,
    re.VERBOSE | re.DOTALL | re.ASCII,
)


class ConditionError(EngineError, ValueError):
    """Malformed condition text; the message names the problem and the text."""


@dataclass(frozen=True, slots=True)
class Lit:
    value: Any


@dataclass(frozen=True, slots=True)
class Ref:
    path: Path


@dataclass(frozen=True, slots=True)
class ListOf:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


@dataclass(frozen=True, slots=True)
class AllOf:
    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Compare:
    op: str
    left: Node
    right: Node
    negate: bool = False  # "not in"


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[Node, ...]


Node = Lit | Ref | ListOf | Not | AllOf | AnyOf | Compare | Call


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ConditionError(f"unexpected {text[pos]!r} at offset {pos}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "ws":
            if len(tokens) == MAX_TOKENS:
                raise ConditionError(f"more than {MAX_TOKENS} tokens")
            tokens.append((kind, match.group()))
        pos = match.end()
    return tokens


def parse_condition(text: str) -> Node:
    """The tree for a bare expression (no ``{{ }}`` wrapping); raises ConditionError."""
    if len(text) > MAX_CHARS:
        raise ConditionError(f"longer than {MAX_CHARS} characters")
    parser = _Parser(tokenize(text))
    if parser.peek()[0] == "end":
        raise ConditionError("empty condition")
    node = parser.or_expr()
    kind, found = parser.peek()
    if kind != "end":
        raise ConditionError(f"unexpected {found!r} after the expression")
    return node


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    def peek(self, ahead: int = 0) -> tuple[str, str]:
        at = self.pos + ahead
        return self.tokens[at] if at < len(self.tokens) else ("end", "")

    def accept(self, *values: str) -> bool:
        kind, found = self.peek()
        if kind in ("op", "name") and found in values:
            self.pos += 1
            return True
        return False

    def expect(self, value: str) -> None:
        if not self.accept(value):
            raise ConditionError(f"expected {value!r}, found {self.peek()[1] or 'end of expression'!r}")

    def deeper(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ConditionError(f"nested deeper than {MAX_DEPTH} levels")

    def or_expr(self) -> Node:
        operands = [self.and_expr()]
        while self.accept("or", "||"):
            operands.append(self.and_expr())
        return operands[0] if len(operands) == 1 else AnyOf(tuple(operands))

    def and_expr(self) -> Node:
        operands = [self.not_expr()]
        while self.accept("and", "&&"):
            operands.append(self.not_expr())
        return operands[0] if len(operands) == 1 else AllOf(tuple(operands))

    def not_expr(self) -> Node:
        if self.accept("not", "!"):
            self.deeper()
            node = Not(self.not_expr())
            self.depth -= 1
            return node
        return self.comparison()

    def comparison(self) -> Node:
        left = self.operand()
        negate = self.peek() == ("name", "not") and self.peek(1) == ("name", "in")
        if negate:
            self.pos += 1
        kind, op = self.peek()
        if op not in _COMPARISONS or kind not in ("op", "name"):
            return left
        self.pos += 1
        node = Compare(op, left, self.operand(), negate)
        if self.peek()[1] in _COMPARISONS or self.peek() == ("name", "not"):
            raise ConditionError(f"chained comparison at {self.peek()[1]!r}; join comparisons with 'and'")
        return node

    def operand(self) -> Node:
        kind, text = self.peek()
        self.pos += 1
        if kind == "number":
            return Lit(_converted(_number, text))
        if kind == "string":
            return Lit(_unquote(text))
        if (kind, text) == ("op", "("):
            self.deeper()
            node = self.or_expr()
            self.expect(")")
            self.depth -= 1
            return node
        if (kind, text) == ("op", "["):
            return ListOf(self.sequence("]"))
        if kind != "name":
            raise ConditionError(f"expected a value, path or call, found {text or 'end of expression'!r}")
        if self.peek() == ("op", "("):
            self.pos += 1
            return self.call(text)
        if text in _KEYWORDS:
            return Lit(_KEYWORDS[text])
        if text in _OPERATOR_WORDS:
            raise ConditionError(f"expected a value, path or call, found {text!r}")
        root = text.split(".", 1)[0]
        if root not in ROOTS:
            raise ConditionError(f"unknown name {root!r} (paths start with one of: {', '.join(sorted(ROOTS))})")
        return Ref(Path(text))

    def sequence(self, close: str) -> tuple[Node, ...]:
        self.deeper()
        items: list[Node] = []
        while not self.accept(close):
            if self.peek()[0] == "end":
                raise ConditionError(f"missing {close!r}")
            if items:
                self.expect(",")
            items.append(self.or_expr())
        self.depth -= 1
        return tuple(items)

    def call(self, name: str) -> Node:
        if name not in ARITY:
            raise ConditionError(f"unknown function {name!r} (known: {', '.join(sorted(ARITY))})")
        args = self.sequence(")")
        if len(args) != ARITY[name]:
            raise ConditionError(f"{name}() takes {ARITY[name]} argument(s), got {len(args)}")
        if name in _PATH_ONLY and not isinstance(args[0], Ref):
            raise ConditionError(f"{name}() takes a path as its first argument, like input.x")
        if name == "matches" and isinstance(args[1], Lit):
            problem = pattern_problem(args[1].value)
            if problem is not None:
                raise ConditionError(f"matches(): {problem}")
        return Call(name, args)


def _converted(parse: Any, text: str) -> Any:
    try:
        return parse(text)
    except TemplateError as exc:
        raise ConditionError(str(exc)) from None


def _unquote(text: str) -> str:
    """A string literal's value; unlike in templates an unknown escape stays as
    written, so regex patterns read naturally: ``matches(input.code, '\\d+')``."""
    parts = re.split(r"(\\.)", text[1:-1], flags=re.DOTALL)
    return "".join(_ESCAPES.get(part[1], part) if part.startswith("\\") else part for part in parts)


_sre: Any = importlib.import_module("re._parser")  # no public API walks a parsed pattern
_REPEATS: Final = frozenset({"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"})
_LEAVES: Final = frozenset({"LITERAL", "NOT_LITERAL", "IN", "ANY", "AT", "CATEGORY", "RANGE", "NEGATE"})


class _Refused(Exception):
    pass


def pattern_problem(pattern: Any) -> str | None:
    """Why ``matches`` refuses a pattern, or None when it is accepted."""
    compiled = safe_pattern(pattern) if isinstance(pattern, str) else "the pattern must be a string"
    return compiled if isinstance(compiled, str) else None


def safe_pattern(pattern: str) -> re.Pattern[str] | str:
    """The compiled pattern, or the reason it is refused."""
    if len(pattern) > MAX_PATTERN_CHARS:  # checked before the cache, which must not hold huge keys
        return f"pattern longer than {MAX_PATTERN_CHARS} characters"
    return _safe_pattern(pattern)


@lru_cache(maxsize=256)
def _safe_pattern(pattern: str) -> re.Pattern[str] | str:
    """Compile ``pattern`` unless its shape invites catastrophic backtracking.

    Without a timeout the only defence against catastrophic backtracking is to
    refuse shapes that cause it: a repeat over anything that itself repeats or
    alternates (``(a+)+``, ``(a|ab)*``), backreferences, and more than about two
    unbounded repeats in one pattern. Some harmless patterns are refused too.
    """
    try:
        cost = _cost(_sre.parse(pattern), inside_repeat=False)
        if cost > MAX_PATTERN_COST:
            return f"too many unbounded repeats in {pattern!r}"
        return re.compile(pattern)
    except _Refused as exc:
        return f"{exc} in {pattern!r}"
    except Exception as exc:  # re.error, OverflowError, RecursionError: all mean "not this pattern"
        return f"invalid pattern {pattern!r}: {exc}"


def _cost(subpattern: Any, inside_repeat: bool) -> int:
    cost = 1
    for op, av in subpattern:
        name = str(op)
        if name in _REPEATS:
            low, high, body = av
            if inside_repeat:
                raise _Refused("nested repeat")
            cost *= min(high - low, MAX_SUBJECT_CHARS) + 1
            cost *= _cost(body, inside_repeat=high > 1)
        elif name == "BRANCH":
            if inside_repeat:
                raise _Refused("alternation inside a repeat")
            for branch in av[1]:
                cost *= _cost(branch, inside_repeat)
        elif name == "SUBPATTERN":
            cost *= _cost(av[3], inside_repeat)
        elif name in ("ASSERT", "ASSERT_NOT"):
            cost *= _cost(av[1], inside_repeat)
        elif name == "ATOMIC_GROUP":
            cost *= _cost(av, inside_repeat)
        elif name not in _LEAVES:
            raise _Refused(f"unsupported construct {name.lower()}")  # backreferences, conditionals
    return cost
