"""Step conditions: ``steps.check.output.score >= 10 and not input.vip``.

A condition is a bare expression (grammar in ``engine.core.language.condition_parser``) or
the same wrapped once as a template, ``{{ ... }}`` or ``${ ... }``, so that
``condition: "{{ steps.create_user_profile.completed }}"`` reads as it does in
the examples. A YAML ``condition: true`` arrives as a Python bool; that works too.

Syntax errors surface at compile time as ``ConditionError``; evaluation never
raises on data:

- a path that does not resolve reads as null (``exists()`` and ``default()``
  are the explicit tools for absence);
- ``==`` is JSON equality: ``1 == 1.0``, but ``"1" != 1`` and ``true != 1``;
- ``< <= > >=`` compare two numbers or two strings, and are false otherwise;
- ``in`` tests list items, substrings, or object keys, and is false otherwise;
- a function that cannot apply to its argument gives null (``len(5)``);
- the result is truthy unless null, false, 0, "", [] or {}.

Each distinct text is compiled once (``lru_cache``), errors included.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from typing import Any, Final

from engine.core.language.condition_parser import (
    MAX_CHARS,
    MAX_SUBJECT_CHARS,
    AllOf,
    AnyOf,
    Call,
    Compare,
    ConditionError,
    ListOf,
    Lit,
    Node,
    Not,
    Ref,
    parse_condition,
    safe_pattern,
)
from engine.core.language.templates import FUNCTIONS as TEMPLATE_FUNCTIONS
from engine.core.language.templates import MissingValue

__all__ = ["Condition", "ConditionError", "compile_condition", "condition_paths", "condition_problems",
           "evaluate_condition"]

_MAX_VALUE_DEPTH: Final = 100  # deeper data compares unequal rather than exhausting the stack
_MAX_NUMBER_TEXT: Final = 64
_ORDER: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class Condition:
    """A compiled condition; ``evaluate`` is pure and never raises on data."""

    __slots__ = ("_root", "text")

    def __init__(self, text: str, root: Node) -> None:
        self.text = text
        self._root = root

    def evaluate(self, scope: Mapping[str, Any]) -> bool:
        return truthy(_evaluate(self._root, scope))

    def __repr__(self) -> str:
        return f"Condition({self.text!r})"


def compile_condition(text: str | bool) -> Condition:
    """The compiled condition, from a cache; raises ConditionError on malformed text."""
    compiled = _compiled(text)
    if isinstance(compiled, ConditionError):
        # A fresh error each time: re-raising the cached one would grow its traceback.
        raise ConditionError(str(compiled))
    return compiled


def condition_problems(text: str | bool) -> list[str]:
    """For validation at registration: one message when malformed, else []."""
    compiled = _compiled(text)
    return [str(compiled)] if isinstance(compiled, ConditionError) else []


def condition_paths(text: str | bool) -> list[str]:
    """The paths a condition reads, as written; [] when it is malformed."""
    compiled = _compiled(text)
    return [] if isinstance(compiled, ConditionError) else list(_paths(compiled._root))


def _paths(node: Node) -> Iterator[str]:
    match node:
        case Ref(path):
            yield path.text
        case ListOf(items) | AllOf(items) | AnyOf(items) | Call(_, items):
            for item in items:
                yield from _paths(item)
        case Not(operand):
            yield from _paths(operand)
        case Compare(_, left, right, _):
            yield from _paths(left)
            yield from _paths(right)


def evaluate_condition(text: str | bool, scope: Mapping[str, Any]) -> bool:
    return compile_condition(text).evaluate(scope)


def _compiled(text: str | bool) -> Condition | ConditionError:
    if isinstance(text, bool):
        text = "true" if text else "false"
    if not isinstance(text, str):
        return ConditionError(f"a condition must be a string, got {type(text).__name__}")
    if len(text) > MAX_CHARS:  # checked before the cache, which must not hold huge keys
        return ConditionError(f"longer than {MAX_CHARS} characters in {_excerpt(text)}")
    return _compile(text)


@lru_cache(maxsize=4096)
def _compile(text: str) -> Condition | ConditionError:
    try:
        return Condition(text, parse_condition(_unwrapped(text)))
    except ConditionError as exc:
        return ConditionError(f"{exc} in {_excerpt(text)}")
    except RecursionError:  # the parser bounds depth; this is only a backstop
        return ConditionError(f"nested too deeply in {_excerpt(text)}")


def _unwrapped(text: str) -> str:
    """The expression inside one ``{{ }}`` or ``${ }``; blanks keep error offsets true."""
    stripped = text.strip()
    lead = " " * (len(text) - len(text.lstrip()))
    for opener, closer in (("{{", "}}"), ("${", "}")):
        if stripped.startswith(opener) and stripped.endswith(closer) and len(stripped) >= 4:
            return lead + " " * len(opener) + stripped[len(opener) : -len(closer)]
    if stripped.lower() in ("true", "false"):  # str(True) from a caller
        return stripped.lower()
    return text


def _excerpt(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# Evaluation


def _evaluate(node: Node, scope: Mapping[str, Any]) -> Any:
    match node:
        case Lit(value):
            return value
        case Ref(path):
            try:
                return path.evaluate(scope)
            except MissingValue:
                return None
        case ListOf(items):
            return [_evaluate(item, scope) for item in items]
        case Not(operand):
            return not truthy(_evaluate(operand, scope))
        case AllOf(operands):
            return all(truthy(_evaluate(o, scope)) for o in operands)
        case AnyOf(operands):
            return any(truthy(_evaluate(o, scope)) for o in operands)
        case Compare(op, left, right, negate):
            return _compare(op, _evaluate(left, scope), _evaluate(right, scope)) != negate
        case Call(name, args):
            return _call(name, args, scope)
    raise AssertionError(f"unhandled node {node!r}")  # pragma: no cover


def _call(name: str, args: tuple[Node, ...], scope: Mapping[str, Any]) -> Any:
    if name in ("exists", "default"):
        ref = args[0]
        assert isinstance(ref, Ref)  # the parser allows only a path here
        try:
            value = ref.path.evaluate(scope)
        except MissingValue:
            return False if name == "exists" else _evaluate(args[1], scope)
        return True if name == "exists" else value
    values = [_evaluate(arg, scope) for arg in args]
    try:
        return _FUNCTIONS[name](*values)
    except Exception:  # the data does not fit the function (len(5), int("x")): null, never a crash
        return None


def truthy(value: Any) -> bool:
    """JSON truthiness: null, false, 0, "", [] and {} are false."""
    if value is None or isinstance(value, bool):
        return value is True
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, (str, list, tuple, Mapping)):
        return len(value) > 0
    return True


def json_equal(a: Any, b: Any, depth: int = 0) -> bool:
    """Equality as JSON sees it: numbers by value, no bool/number or string/number mixing."""
    if depth > _MAX_VALUE_DEPTH:
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) or _is_number(b):
        return _is_number(a) and _is_number(b) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(json_equal(x, y, depth + 1) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return len(a) == len(b) and all(k in b and json_equal(v, b[k], depth + 1) for k, v in a.items())
    return a is b  # null, or values that are not JSON at all


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "==":
        return json_equal(left, right)
    if op == "!=":
        return not json_equal(left, right)
    if op == "in":
        return _contains(right, left)
    if (_is_number(left) and _is_number(right)) or (isinstance(left, str) and isinstance(right, str)):
        return _ORDER[op](left, right)
    return False  # incomparable types are neither less nor greater


def _contains(container: Any, item: Any) -> bool:
    if isinstance(container, str):
        return isinstance(item, str) and item in container
    if isinstance(container, Mapping):
        return isinstance(item, str) and item in container
    if isinstance(container, (list, tuple)):
        return any(json_equal(item, x) for x in container)
    return False


def _to_int(value: Any) -> int | None:
    if isinstance(value, str) and len(value) <= _MAX_NUMBER_TEXT:
        try:
            return int(value.strip())
        except ValueError:
            value = float(value)  # "2.5": a ValueError here becomes null in _call
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    return int(value) if isinstance(value, int) else None


def _to_float(value: Any) -> float | None:
    if isinstance(value, str) and len(value) <= _MAX_NUMBER_TEXT:
        value = float(value.strip())
    if isinstance(value, (int, float)):
        number = float(value)  # OverflowError on a huge int becomes null in _call
        return number if math.isfinite(number) else None
    return None


def _both_str(check: Callable[[str, str], bool]) -> Callable[[Any, Any], bool]:
    return lambda a, b: isinstance(a, str) and isinstance(b, str) and check(a, b)


def _matches(text: Any, pattern: Any) -> bool:
    if not isinstance(text, str) or not isinstance(pattern, str) or len(text) > MAX_SUBJECT_CHARS:
        return False
    compiled = safe_pattern(pattern)
    return not isinstance(compiled, str) and compiled.fullmatch(text) is not None


_FUNCTIONS: Final[dict[str, Callable[..., Any]]] = {
    **TEMPLATE_FUNCTIONS,  # hash, len, lower, upper, str: the same results as in templates
    "int": _to_int,
    "float": _to_float,
    "bool": truthy,
    "contains": _contains,
    "startswith": _both_str(str.startswith),
    "endswith": _both_str(str.endswith),
    "matches": _matches,
}
