import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.language.expressions import MissingValue, TemplateError, render, render_endpoint, template_problems

SCOPE: dict[str, Any] = {
    "input": {"username": "ada", "password": "correct-horse", "profile": {"lang": "en"}, "n": 3},
    "context": {"task_id": "t-1", "agent_id": "a-1", "count": 2, "flag": True, "none": None},
    "steps": {"create": {"output": {"user_id": "u-9", "items": [{"id": 1}, {"id": 2}]}}},
    "response": {"id": "r-1"},
    "workflow": {"id": "wf-1"},
    "event": {"data": {"ok": True}},
}


# Dollar-brace and mustache paths


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("${context.task_id}", "t-1"),
        ("${ input.profile.lang }", "en"),
        ("{{ input.username }}", "ada"),
        ("{{input.username}}", "ada"),
        ("{{   context.count   }}", 2),
        ("{{ steps.create.output.user_id }}", "u-9"),
        ("{{ steps.create.output.items.1.id }}", 2),
        ("{{ response.id }}", "r-1"),
        ("{{ workflow.id }}", "wf-1"),
        ("{{ event.data.ok }}", True),
    ],
)
def test_paths_resolve(template: str, expected: Any) -> None:
    assert render(template, SCOPE) == expected


def test_whole_template_keeps_type() -> None:
    assert render("{{ input.profile }}", SCOPE) == {"lang": "en"}
    assert render("  ${context.count}\n", SCOPE) == 2
    assert render("{{ steps.create.output.items }}", SCOPE) == [{"id": 1}, {"id": 2}]
    assert render("{{ context.none }}", SCOPE) is None
    assert render("{{ context.flag }}", SCOPE) is True


def test_interpolation_makes_a_string() -> None:
    assert render("user-{{ input.username }}", SCOPE) == "user-ada"
    assert render("{{ context.task_id }}/{{ context.agent_id }}", SCOPE) == "t-1/a-1"
    assert render("n={{ context.count }} p={{ input.profile }}", SCOPE) == 'n=2 p={"lang":"en"}'
    assert render("[{{ context.none }}] {{ context.flag }}", SCOPE) == "[] true"


def test_deep_render_leaves_keys_and_scalars() -> None:
    value = {
        "{{ input.username }}": "{{ input.username }}",
        "list": ["${context.task_id}", 3, None, {"x": "{{ context.count }}"}],
        "n": 1.5,
        "b": False,
    }
    assert render(value, SCOPE) == {
        "{{ input.username }}": "ada",
        "list": ["t-1", 3, None, {"x": 2}],
        "n": 1.5,
        "b": False,
    }


def test_literals() -> None:
    assert render("{{ 'a b' }}", SCOPE) == "a b"
    assert render('{{ "q\\"x" }}', SCOPE) == 'q"x'
    assert render("{{ 42 }}", SCOPE) == 42
    assert render("{{ -1.5 }}", SCOPE) == -1.5
    assert render("{{ true }}", SCOPE) is True
    assert render("{{ null }}", SCOPE) is None


# Functions


def test_hash_is_sha256_hex() -> None:
    expected = hashlib.sha256(b"correct-horse").hexdigest()
    assert render("{{ hash(input.password) }}", SCOPE) == expected
    assert render("{{ hash(context.count) }}", SCOPE) == hashlib.sha256(b"2").hexdigest()
    assert render("{{ hash(input.profile) }}", SCOPE) == hashlib.sha256(b'{"lang":"en"}').hexdigest()


def test_string_functions() -> None:
    assert render("{{ upper(input.username) }}", SCOPE) == "ADA"
    assert render("{{ lower('AbC') }}", SCOPE) == "abc"
    assert render("{{ len(steps.create.output.items) }}", SCOPE) == 2
    assert render("{{ len(input.username) }}", SCOPE) == 3
    assert render("{{ str(context.count) }}", SCOPE) == "2"
    assert render("{{ upper(default(input.missing, 'x')) }}", SCOPE) == "X"


def test_default_only_for_missing() -> None:
    assert render("{{ default(input.missing, 'fallback') }}", SCOPE) == "fallback"
    assert render("{{ default(input.username, 'fallback') }}", SCOPE) == "ada"
    assert render("{{ default(context.none, 7) }}", SCOPE) is None
    assert render("{{ default(steps.nope.output.x, null) }}", SCOPE) is None
    assert render("{{ default(input.x, '}}') }}", SCOPE) == "}}"


def test_len_of_a_number_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match="len"):
        render("{{ len(context.count) }}", SCOPE)


# Missing values


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ("${context.nope}", "context.nope"),
        ("{{ steps.other.output.x }}", "steps.other.output.x"),
        ("{{ steps.create.output.items.5 }}", "steps.create.output.items.5"),
        ("{{ input.username.x }}", "input.username.x"),
        ("x {{ event.data.ok.y }}", "event.data.ok.y"),
        ("{{ hash(input.nope) }}", "input.nope"),
    ],
)
def test_missing_values(template: str, path: str) -> None:
    with pytest.raises(MissingValue) as caught:
        render(template, SCOPE)
    assert caught.value.path == path
    assert path in str(caught.value)


def test_missing_root_in_scope() -> None:
    with pytest.raises(MissingValue) as caught:
        render("{{ response.id }}", {"input": {}})
    assert caught.value.path == "response.id"


# Endpoints


def test_endpoint_placeholders_read_context() -> None:
    assert render_endpoint("/tasks/{task_id}/prepare", SCOPE) == "/tasks/t-1/prepare"
    assert render_endpoint("/n/{count}", SCOPE) == "/n/2"
    assert render_endpoint("/u/{{ steps.create.output.user_id }}/x", SCOPE) == "/u/u-9/x"
    assert render_endpoint("/a/${context.agent_id}", SCOPE) == "/a/a-1"
    assert render_endpoint("{{ context.count }}", SCOPE) == "2"  # always a string
    assert render_endpoint("/plain", SCOPE) == "/plain"


def test_endpoint_placeholder_missing() -> None:
    with pytest.raises(TemplateError, match=r"placeholder \{nope\} in endpoint '/tasks/\{nope\}' resolved to nothing"):
        render_endpoint("/tasks/{nope}", SCOPE)


def test_single_braces_are_text_for_render() -> None:
    assert render("/tasks/{task_id}", SCOPE) == "/tasks/{task_id}"
    assert render('{"a": 1}', SCOPE) == '{"a": 1}'
    assert render_endpoint("/x/{ not a placeholder }", SCOPE) == "/x/{ not a placeholder }"
    assert template_problems("/tasks/{task_id}") == []


# Malformed templates


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("{{ input.x", "unclosed '{{'"),
        ("a ${context.x", "unclosed '${'"),
        ("{{ }}", "empty expression"),
        ("${}", "empty expression"),
        ("{{ input..x }}", "unexpected '.'"),
        ("{{ input.x. }}", "unexpected '.'"),
        ("{{ 1abc }}", "unexpected"),
        ("{{ secrets.a.b }}", "invalid secret reference 'secrets.a.b'"),
        ("{{ secrets }}", "invalid secret reference 'secrets'"),
        ("{{ upper(secrets.x) }}", "cannot be an argument of upper()"),
        ("${ os.environ }", "unknown root 'os'"),
        ("{{ eval(input.x) }}", "unknown function 'eval'"),
        ("{{ lower(input.x }}", "unbalanced parentheses"),
        ("{{ lower(input.x)) }}", "unexpected ')'"),
        ("{{ lower() }}", "takes 1 argument"),
        ("{{ default(input.x) }}", "takes 2 argument"),
        ("{{ input.x input.y }}", "unexpected 'input.y'"),
        ("${ hash(input.x) }", "expected a path"),
        ("{{ 'unterminated }}", "unclosed '{{'"),
        ("{{ 'bad \\q escape' }}", "unknown escape"),
        ("{{ input.a.b(1) }}", "unknown function"),
        ("{{ " + "9" * 100 + " }}", "number literal longer"),
    ],
)
def test_malformed_templates(template: str, fragment: str) -> None:
    problems = template_problems(template)
    assert len(problems) == 1
    assert fragment in problems[0]
    assert repr(template)[:40] in problems[0] or "..." in problems[0]  # names the offending text
    with pytest.raises(TemplateError, match="."):
        render(template, SCOPE)


@pytest.mark.parametrize(
    "hostile",
    [
        "{{ __import__('os').system('x') }}",
        "{{ ().__class__ }}",
        "{{ input.__class__.__mro__() }}",
        "{{ [x for x in ()] }}",
        "{{ lambda: 1 }}",
        "{{ open('/etc/passwd') }}",
        "{{ getattr(input, 'x') }}",
        "{{ input['x'] }}",
        "${ __builtins__ }",
    ],
)
def test_hostile_input_is_a_template_error(hostile: str) -> None:
    assert template_problems(hostile)
    with pytest.raises(TemplateError):
        render(hostile, SCOPE)


def test_nesting_is_bounded() -> None:
    deep = "{{ " + "lower(" * 20 + "input.username" + ")" * 20 + " }}"
    assert "nested deeper" in template_problems(deep)[0]
    shallow = "{{ " + "lower(" * 3 + "input.username" + ")" * 3 + " }}"
    assert render(shallow, SCOPE) == "ada"


def test_length_is_bounded() -> None:
    long = "{{ input.username }}" + "x" * 10_000
    assert "longer than 10000" in template_problems(long)[0]
    with pytest.raises(TemplateError):
        render(long, SCOPE)
    plain = "x" * 20_000  # no template at all: nothing to bound
    assert render(plain, SCOPE) is plain


def test_value_depth_is_bounded() -> None:
    value: Any = "{{ input.n }}"
    for _ in range(100):
        value = [value]
    assert template_problems(value)
    with pytest.raises(TemplateError):
        render(value, SCOPE)


def test_template_problems_walks_values() -> None:
    value = {"ok": "{{ input.x }}", "bad": ["{{ nope.x }}", {"k": "${"}], "n": 3, "{{ key }}": None}
    problems = template_problems(value)
    assert len(problems) == 2
    assert "unknown root 'nope'" in problems[0]
    assert "unclosed '${'" in problems[1]


def test_repeated_render_of_a_bad_template_raises_each_time() -> None:
    for _ in range(3):
        with pytest.raises(TemplateError, match="unknown root"):
            render("{{ bad.root }}", SCOPE)


# Properties


@given(st.text(max_size=300))
def test_arbitrary_text_never_crashes(text: str) -> None:
    assert isinstance(template_problems(text), list)
    try:
        render(text, SCOPE)
        render_endpoint(text, SCOPE)
    except (TemplateError, MissingValue):
        pass


_pieces = st.sampled_from(
    ["{{", "}}", "${", "{", "}", "(", ")", ",", "'", '"', "\\", " ", ".", "0", "-1.5e3", "input",
     "context.count", "steps.create.output.items.0", "hash(", "default(", "lower", "true", "x"]
)


@given(st.lists(_pieces, max_size=30).map("".join))
def test_template_like_text_never_crashes(text: str) -> None:
    problems = template_problems(text)
    try:
        render(text, SCOPE)
    except TemplateError:
        assert problems
    except MissingValue:
        pass
    else:
        assert not problems


@given(st.text(alphabet=st.characters(blacklist_characters="{$")))
def test_text_without_markers_is_unchanged(text: str) -> None:
    assert render(text, SCOPE) is text
    assert render_endpoint(text, SCOPE) is text
    assert template_problems(text) == []


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet="ab{}$ "),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=20,
)


@given(_json)
def test_arbitrary_values_never_crash(value: Any) -> None:
    assert isinstance(template_problems(value), list)
    try:
        render(value, SCOPE)
    except (TemplateError, MissingValue):
        pass


@given(st.text(alphabet="abc-_/", min_size=1, max_size=20))
def test_interpolated_strings_pass_through(text: str) -> None:
    assert render(text + "{{ input.username }}" + text, SCOPE) == text + "ada" + text


def test_optional_roots_read_a_missing_whole_value_as_null() -> None:
    scope = {"input": {"a": 1}, "steps": {}}
    payload = {"a": "{{ input.a }}", "b": "{{ input.b }}", "c": "${input.c}"}
    assert render(payload, scope, frozenset({"input"})) == {"a": 1, "b": None, "c": None}
    with pytest.raises(MissingValue):  # inside text a missing value is still an error
        render({"t": "x-{{ input.b }}"}, scope, frozenset({"input"}))
    with pytest.raises(MissingValue):  # and under roots not named optional
        render({"s": "{{ steps.x.output }}"}, scope, frozenset({"input"}))
    with pytest.raises(MissingValue):  # and without the option
        render(payload, scope)
