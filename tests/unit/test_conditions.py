import hashlib
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.language.condition_parser import ARITY, MAX_DEPTH, MAX_TOKENS
from engine.core.language.conditions import (
    _FUNCTIONS,
    Condition,
    ConditionError,
    compile_condition,
    condition_problems,
    evaluate_condition,
)

SCOPE: dict[str, Any] = {
    "input": {"vip": False, "name": "Ada", "n": 3, "tags": ["a", "b"], "profile": {"lang": "en"}, "none": None},
    "context": {"flag": True, "x": {"y": 2}, "zero": 0, "empty": "", "list": [], "obj": {}},
    "steps": {
        "check": {"output": {"score": 12, "items": [{"id": 1}, {"id": 2}]}, "completed": True, "status": "done"},
        "create_user_profile": {"completed": True},
    },
    "workflow": {"id": "wf-1"},
    "event": {"kind": "signup"},
    "response": {"code": 200},
    "item": {"sku": "k-1", "qty": 2},
    "index": 0,
    "signals": {"approved": True},
}


def ev(text: str | bool, scope: Any = None) -> bool:
    return evaluate_condition(text, SCOPE if scope is None else scope)


# The YAML example and the accepted input forms


def test_yaml_example() -> None:
    scope = {"steps": {"create_user_profile": {"completed": True}}}
    assert evaluate_condition("{{ steps.create_user_profile.completed }}", scope) is True
    assert evaluate_condition("{{ steps.create_user_profile.completed }}", {"steps": {}}) is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("steps.check.output.score >= 10 and not input.vip", True),
        ("{{ steps.check.output.score >= 10 and not input.vip }}", True),
        ("{{steps.check.completed}}", True),
        ("${context.flag}", True),
        ("${ context.zero }", False),
        ("  {{ input.vip }}  ", False),
        ("true", True),
        ("false", False),
        ("True", True),
        ("FALSE", False),
        (True, True),
        (False, False),
    ],
)
def test_input_forms(text: str | bool, expected: bool) -> None:
    assert ev(text) is expected


def test_only_one_wrapping_is_stripped() -> None:
    with pytest.raises(ConditionError):
        compile_condition("{{ {{ context.flag }} }}")
    with pytest.raises(ConditionError):
        compile_condition("{{ context.flag }} and {{ input.vip }}")


# Paths


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("context.x.y == 2", True),
        ("steps.check.output.items.1.id == 2", True),
        ("steps.check.status == 'done'", True),
        ("workflow.id == 'wf-1'", True),
        ("event.kind == 'signup'", True),
        ("response.code == 200", True),
        ("item.sku == 'k-1' and item.qty == 2", True),
        ("index == 0", True),
        ("signals.approved", True),
        ("input.__dict__ == null", True),
        ("input.name.__class__ == null", True),
    ],
)
def test_paths(text: str, expected: bool) -> None:
    assert ev(text) is expected


def test_item_scalar_root() -> None:
    assert evaluate_condition("item > 2", {"item": 3})
    assert evaluate_condition("item == 'x'", {"item": "x"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("input.missing == null", True),
        ("input.missing", False),
        ("not input.missing", True),
        ("input.missing != 1", True),
        ("input.missing < 1", False),
        ("input.missing >= 1", False),
        ("steps.nope.output.x.y.z == null", True),
        ("steps.check.output.items.9.id == null", True),
        ("input.name.0 == null", True),  # strings are not indexed
    ],
)
def test_missing_paths_read_as_null(text: str, expected: bool) -> None:
    assert ev(text) is expected


# Operators and precedence


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 == 1", True),
        ("1 == 1.0", True),
        ("'1' == 1", False),
        ("true == 1", False),
        ("false == 0", False),
        ("null == false", False),
        ("null == null", True),
        ("[1, [2]] == [1.0, [2]]", True),
        ("[1] == [1, 2]", False),
        ("input.profile == context.x", False),
        ("context.obj == input.profile", False),
        ("1 != 2", True),
        ("'a' != 'a'", False),
        ("1 < 2", True),
        ("2 <= 2", True),
        ("3 > 2.5", True),
        ("2 >= 3", False),
        ("'abc' < 'abd'", True),
        ("-1 < 0", True),
        ("1e3 == 1000", True),
    ],
)
def test_comparisons(text: str, expected: bool) -> None:
    assert ev(text) is expected


@pytest.mark.parametrize(
    "text",
    ["1 < 'a'", "'a' > 1", "null < 1", "true > false", "[1] < [2]", "input.profile <= input.profile", "1 >= null"],
)
def test_ordering_incompatible_types_is_false(text: str) -> None:
    assert ev(text) is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("'a' in input.tags", True),
        ("'c' in input.tags", False),
        ("'c' not in input.tags", True),
        ("1 in [1.0, 2]", True),
        ("'1' in [1]", False),
        ("'da' in input.name", True),
        ("'lang' in input.profile", True),
        ("'en' in input.profile", False),
        ("1 in input.name", False),
        ("1 in 5", False),
        ("'x' in input.missing", False),
        ("'x' not in input.missing", True),
    ],
)
def test_membership(text: str, expected: bool) -> None:
    assert ev(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true and false", False),
        ("true && true", True),
        ("false or true", True),
        ("false || false", False),
        ("not true", False),
        ("!false", True),
        ("!!context.flag", True),
        ("not not input.vip", False),
        # not binds looser than comparison: not (1 == 2)
        ("not 1 == 2", True),
        ("! 1 == 1", False),
        # and binds tighter than or
        ("true or false and false", True),
        ("(true or false) and false", False),
        ("false and false or true", True),
        ("false and (false or true)", False),
        ("not false and false", False),
        ("not (false and false)", True),
        ("(((context.flag)))", True),
    ],
)
def test_logic_and_precedence(text: str, expected: bool) -> None:
    assert ev(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("null", False),
        ("0", False),
        ("0.0", False),
        ("''", False),
        ("[]", False),
        ("context.obj", False),
        ("context.list", False),
        ("context.empty", False),
        ("1", True),
        ("-0.5", True),
        ("'false'", True),
        ("[0]", True),
        ("input.profile", True),
    ],
)
def test_truthiness(text: str, expected: bool) -> None:
    assert ev(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"""'it\'s' == "it's" """, True),
        (r"""'say \"hi\"' == 'say "hi"' """, True),
        (r"'a\nb' == 'a' ", False),
        (r"len('a\tb') == 3", True),
        (r"len('\\') == 1", True),
        (r"len('\d') == 2", True),  # unknown escapes stay as written, for regex patterns
        (r"matches('123', '\d+') and not matches('a1', '\d+')", True),
        (r"matches('a.b', 'a\.b') and not matches('axb', 'a\\.b')", True),
    ],
)
def test_string_escapes(text: str, expected: bool) -> None:
    assert ev(text) is expected


# Functions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"hash('pw') == '{hashlib.sha256(b'pw').hexdigest()}'", True),
        ("hash(input.name) == hash('Ada')", True),
        ("len(input.tags) == 2", True),
        ("len(input.name) == 3", True),
        ("len(input.profile) == 1", True),
        ("len(5) == null", True),
        ("len(input.missing) == null", True),
        ("lower(input.name) == 'ada'", True),
        ("upper(input.name) == 'ADA'", True),
        ("str(3) == '3'", True),
        ("str(true) == 'true'", True),
        ("str(null) == ''", True),
        ("int('42') == 42", True),
        ("int(' 7 ') == 7", True),
        ("int('2.9') == 2", True),
        ("int(3.7) == 3", True),
        ("int(true) == 1", True),
        ("int('x') == null", True),
        ("int([1]) == null", True),
        ("float('2.5') == 2.5", True),
        ("float(2) == 2.0", True),
        ("float('nan') == null", True),
        ("float('abc') == null", True),
        ("bool(1) and not bool('') and not bool(null)", True),
        ("bool('false')", True),  # truthiness, not parsing
        ("default(input.missing, 5) == 5", True),
        ("default(input.n, 5) == 3", True),
        ("default(input.none, 5) == null", True),  # null is a value, not absence
        ("exists(input.n)", True),
        ("exists(input.none)", True),
        ("exists(input.missing)", False),
        ("exists(steps.check.output.items.0)", True),
        ("contains(input.tags, 'a')", True),
        ("contains(input.name, 'd')", True),
        ("contains(input.profile, 'lang')", True),
        ("contains(5, 5)", False),
        ("startswith(input.name, 'Ad')", True),
        ("startswith(input.name, 'da')", False),
        ("startswith(1, '1')", False),
        ("endswith(input.name, 'da')", True),
        ("endswith(input.name, null)", False),
        ("matches(input.name, '[A-Z][a-z]+')", True),
        ("matches(input.name, 'Ad')", False),  # fullmatch
        ("matches(input.n, '3')", False),
        ("matches(input.name, input.missing)", False),
        ("matches(event.kind, context.pattern)", False),
    ],
)
def test_functions(text: str, expected: bool) -> None:
    assert ev(text) is expected


def test_function_table_matches_the_parser() -> None:
    assert set(_FUNCTIONS) | {"default", "exists"} == set(ARITY)


def test_matches_with_a_pattern_from_data() -> None:
    assert ev("matches(input.name, context.p)", {**SCOPE, "context": {"p": "A.a"}}) is True
    refused = {"input": {"name": "a" * 30 + "!"}, "context": {"p": "(a+)+"}}
    started = time.perf_counter()
    assert evaluate_condition("matches(input.name, context.p)", refused) is False
    assert time.perf_counter() - started < 1.0


def test_matches_caps_the_subject() -> None:
    assert evaluate_condition("matches(input.s, '.*')", {"input": {"s": "a" * 10_000}})
    assert not evaluate_condition("matches(input.s, '.*')", {"input": {"s": "a" * 10_001}})


@pytest.mark.parametrize(
    "pattern",
    ["(a+)+", "(a*)*b", "(a|ab)*", "(?:x|yz)+", "(a?){20}", "(?P<g>a)(?P=g)", ".*.*.*x", "x" * 201, "[", "a{1,3}{2}"],
)
def test_matches_refuses_dangerous_or_invalid_literal_patterns(pattern: str) -> None:
    problems = condition_problems(f"matches(input.name, '{pattern}')")
    assert len(problems) == 1 and "matches()" in problems[0]


def test_matches_pattern_must_be_a_string_literal() -> None:
    assert condition_problems("matches(input.name, 5)")


def test_function_errors() -> None:
    for text, fragment in [
        ("nope(1)", "unknown function 'nope'"),
        ("len(1, 2)", "takes 1 argument"),
        ("default(input.x)", "takes 2 argument"),
        ("exists('input.x')", "takes a path"),
        ("default(1, 2)", "takes a path"),
        ("len(", "missing ')'"),
        ("input.x(1)", "unknown function"),
    ]:
        problems = condition_problems(text)
        assert problems and fragment in problems[0], (text, problems)


# Errors, bounds and hostile input


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "{{ }}",
        "${}",
        "input.x ==",
        "== 1",
        "(input.x",
        "input.x)",
        "[1, 2",
        "1 < 2 < 3",
        "1 == 1 == 1",
        "'a' in 'b' in 'c'",
        "input.x not 3",
        "a.b",
        "x == 1",
        "and",
        "1 and",
        "'unterminated",
        "1 = 1",
        "input.x & 1",
        "0x10",
        "1.5.2",
        "{{ input.x",
    ],
)
def test_malformed(text: str) -> None:
    with pytest.raises(ConditionError):
        compile_condition(text)
    assert len(condition_problems(text)) == 1


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os')",
        "__import__('os').system('id')",
        "().__class__",
        "().__class__.__bases__[0].__subclasses__()",
        "a.__dict__",
        "lambda: 1",
        "(lambda x: x)(1)",
        "f'{input}'",
        "eval('1')",
        "exec('1')",
        "open('/etc/passwd')",
        "getattr(input, 'x')",
        "[x for x in input]",
        "input.x if true else false",
        "input['x']",
        "import os",
        "1; 2",
        "`id`",
        "9" * 100,
        "1e999",
        "-1e400",
        "(" * 40 + "1" + ")" * 40,
        "[" * 40 + "]" * 40,
        "not " * 40 + "true",
        "len(" * 40 + "1" + ")" * 40,
        " or ".join(["true"] * 300),
        "1||" * 300 + "1",
        "x" * 2_001,
        "'" + "a" * 5_000 + "'",
    ],
)
def test_hostile_inputs_are_condition_errors(text: str) -> None:
    with pytest.raises(ConditionError):
        compile_condition(text)


def test_harmless_dunder_paths_are_only_keys() -> None:
    assert ev("input.__class__ == null and not exists(input.__dict__)") is True
    assert ev("input.__class__.__init__.__globals__") is False
    assert evaluate_condition("input.__class__ == 1", {"input": {"__class__": 1}}) is True


def test_bounds_are_inclusive() -> None:
    assert ev("(" * MAX_DEPTH + "true" + ")" * MAX_DEPTH) is True
    assert ev("0||" * (MAX_TOKENS // 2 - 1) + "!0") is True  # exactly MAX_TOKENS tokens
    assert len(condition_problems("0||" * (MAX_TOKENS // 2) + "1")) == 1
    with pytest.raises(ConditionError, match="more than 500 tokens"):
        compile_condition("0||" * (MAX_TOKENS // 2) + "1")
    long = "input.n == " + "0" * 60 + "3"
    assert ev(long) is True
    padded = "true" + " " * (2_000 - 4)
    assert ev(padded) is True


def test_errors_name_the_problem_and_the_text() -> None:
    (problem,) = condition_problems("steps.s.output.x >= ")
    assert "end of expression" in problem and "steps.s.output.x >=" in problem
    with pytest.raises(ConditionError, match=r"unexpected '\}' at offset 5"):
        compile_condition("{{ a }} and {{ b }}")


def test_compiled_once_and_fresh_errors() -> None:
    assert compile_condition("context.flag") is compile_condition("context.flag")
    assert isinstance(compile_condition("context.flag"), Condition)
    errors = []
    for _ in range(2):
        with pytest.raises(ConditionError) as info:
            compile_condition("1 <")
        errors.append(info.value)
    assert errors[0] is not errors[1]


def test_non_string_condition_is_a_problem() -> None:
    assert condition_problems(5)  # type: ignore[arg-type]


def test_evaluation_tolerates_odd_scopes() -> None:
    condition = compile_condition("input.a.b == 1 or len(input) > 0 or hash(input) == ''")
    scopes: list[Any] = [{}, {"input": None}, {"input": [1]}, {"input": 10**400}, {"input": {"a": object()}}, [], 5]
    for scope in scopes:
        assert condition.evaluate(scope) in (True, False)
    deep: Any = 1
    for _ in range(5_000):
        deep = [deep]
    assert evaluate_condition("input.a == input.a", {"input": {"a": deep}}) is False
    assert evaluate_condition("str(input.a) == '' or hash(input.a) == ''", {"input": {"a": deep}}) is False


# Properties


@settings(max_examples=500)
@given(st.text(max_size=200))
def test_arbitrary_text_compiles_or_raises_condition_error(text: str) -> None:
    try:
        assert isinstance(compile_condition(text), Condition)
    except ConditionError:
        pass


_TOKENS = st.sampled_from(
    [
        "input.a", "context.b.0", "steps.s.output.x", "item", "index", "1", "-2.5", "'s'", "true", "null", "[",
        "]", "(", ")", ",", "==", "!=", "<", ">=", "in", "not", "and", "or", "!", "&&", "len(", "default(",
        "exists(", "matches(", "int(", "hash(", "contains(", "'(a+)+'", "'.*'",
    ]
)  # fmt: skip


@settings(max_examples=500)
@given(st.lists(_TOKENS, max_size=30).map(" ".join))
def test_token_soup_compiles_or_raises_condition_error(text: str) -> None:
    try:
        compile_condition(text)
    except ConditionError:
        pass


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from("abx0"), inner, max_size=4),
    max_leaves=20,
)
_CONDITIONS = [
    "input.a == context.b or input.a < context.b and not input.a in context.b",
    "input.a.b >= input.x.0 || !input.a",
    "len(input.a) > int(input.b) and float(context.b) <= 1",
    "matches(str(input.a), '[a-z]*') or startswith(input.a, input.b) or endswith(input.a, 'x')",
    "contains(input.a, input.b) and input.b not in input.a",
    "default(input.a.x, [1, null]) == [1, null] and exists(context.b.a)",
    "hash(input) != hash(context) and bool(input.a) and lower(input.a) == upper(input.b)",
    "item.a > index and signals.x != steps.a.output",
    "matches(input.a, input.b)",
]


@settings(max_examples=300)
@given(
    st.sampled_from(_CONDITIONS),
    st.dictionaries(st.sampled_from(["input", "context", "item", "index", "signals", "steps"]), _JSON),
)
def test_evaluate_never_raises_on_json_scopes(text: str, scope: dict[str, Any]) -> None:
    assert compile_condition(text).evaluate(scope) in (True, False)


@given(st.sampled_from(_CONDITIONS), _JSON)
def test_evaluate_never_raises_on_any_json_value_as_scope(text: str, scope: Any) -> None:
    assert compile_condition(text).evaluate(scope) in (True, False)


@given(_JSON, _JSON)
def test_equality_is_symmetric_and_reflexive(a: Any, b: Any) -> None:
    scope = {"input": {"a": a, "b": b}}
    assert ev("input.a == input.b", scope) is ev("input.b == input.a", scope)
    assert ev("input.a == input.a", scope) is True
    assert ev("input.a != input.b", scope) is not ev("input.a == input.b", scope)


@given(_JSON, _JSON)
def test_ordering_never_holds_both_ways(a: Any, b: Any) -> None:
    scope = {"input": {"a": a, "b": b}}
    assert not (ev("input.a < input.b", scope) and ev("input.b < input.a", scope))
