"""The template functions the other formats translate into, usable in any
definition: ``from_json``, ``required`` and ``get``."""

from __future__ import annotations

from typing import Any

import pytest

from engine.core.language.conditions import condition_problems, evaluate_condition
from engine.core.language.expressions import MissingValue, TemplateError, render, template_problems

SCOPE: dict[str, Any] = {"input": {"text": '{"category": "technical"}', "words": "not json", "n": 3,
                                   "odd": {"a b": [10, 20]}},
                         "steps": {"s": {"output": {"content": "[1, 2]"}}}}
OPTIONAL = frozenset({"input", "context"})


@pytest.mark.parametrize(("template", "expected"), [
    ("{{ from_json(input.text) }}", {"category": "technical"}),
    ("{{ from_json(input.words) }}", "not json"),
    ("{{ from_json(input.n) }}", 3),
    ("{{ from_json(input.odd) }}", {"a b": [10, 20]}),
    ("{{ from_json(steps.s.output.content) }}", [1, 2]),
    ("{{ get(input.odd, 'a b') }}", [10, 20]),
    ("{{ get(get(input.odd, 'a b'), 1) }}", 20),
    ("{{ required(input.n) }}", 3),
    ("{{ required(input.n, 'the count') }}", 3),
])
def test_the_functions(template: str, expected: Any) -> None:
    assert render(template, SCOPE) == expected


def test_a_missing_optional_input_is_null_unless_required() -> None:
    assert render({"x": "{{ input.gone }}"}, SCOPE, OPTIONAL) == {"x": None}
    with pytest.raises(TemplateError, match="^input.gone is required but not set$"):
        render({"x": "{{ required(input.gone) }}"}, SCOPE, OPTIONAL)
    with pytest.raises(TemplateError, match=r"^\$\.workflow_input\.gone matched nothing$"):
        render({"x": "{{ required(input.gone, '$.workflow_input.gone') }}"}, SCOPE, OPTIONAL)
    with pytest.raises(TemplateError, match="matched nothing"):
        render("{{ required(get(input.odd, 'nope'), 'odd key') }}", SCOPE, OPTIONAL)


def test_get_misses_are_missing_values() -> None:
    for template in ("{{ get(input.odd, 'nope') }}", "{{ get(get(input.odd, 'a b'), 5) }}",
                     "{{ get(input.n, 'x') }}", "{{ get(get(input.odd, 'a b'), true) }}"):
        with pytest.raises(MissingValue):
            render(template, SCOPE)


@pytest.mark.parametrize(("template", "message"), [
    ("{{ from_json() }}", "from_json() takes 1 argument(s), got 0"),
    ("{{ get(input.odd) }}", "get() takes 2 argument(s), got 1"),
    ("{{ required() }}", "required() takes 1 or 2 argument(s), got 0"),
    ("{{ required(input.a, 'b', 'c') }}", "required() takes 1 or 2 argument(s), got 3"),
])
def test_wrong_argument_counts_are_refused_at_registration(template: str, message: str) -> None:
    assert any(message in p for p in template_problems(template))


def test_conditions_have_from_json_and_get() -> None:
    assert evaluate_condition("get(from_json(input.text), 'category') == 'technical'", SCOPE)
    assert condition_problems("from_json(input.text) == 1") == []
    assert evaluate_condition("get(input.odd, 'a b') == [10, 20]", SCOPE)
    assert evaluate_condition("contains(from_json(steps.s.output.content), 2)", SCOPE)
