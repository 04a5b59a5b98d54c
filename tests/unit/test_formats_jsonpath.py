"""The JSONPath subset of execution plans (engine/core/formats/jsonpath.py): parse
and print are inverse, and malformed text is refused with where it went wrong."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.formats.jsonpath import JsonPathError, parse_path, print_path

segments = st.lists(st.one_of(st.integers(min_value=0, max_value=10**9 - 1), st.text(max_size=12)), max_size=8)


@settings(max_examples=60)
@given(segments)
def test_printing_then_parsing_gives_the_path_back(path: list[int | str]) -> None:
    assert parse_path(print_path(tuple(path))) == tuple(path)


@settings(max_examples=60)
@given(segments)
def test_the_printed_spelling_is_canonical(path: list[int | str]) -> None:
    printed = print_path(tuple(path))
    assert print_path(parse_path(printed)) == printed


@settings(max_examples=60)
@given(st.text(max_size=30))
def test_any_text_parses_or_is_refused_with_a_reason(text: str) -> None:
    try:
        parsed = parse_path(text)
    except JsonPathError as exc:
        assert str(exc)
    else:
        assert parse_path(print_path(parsed)) == parsed


@pytest.mark.parametrize(("text", "expected"), [
    ("$", ()),
    ("$.workflow_input.source_url", ("workflow_input", "source_url")),
    ("$.extract.output_data[0]['a b']", ("extract", "output_data", 0, "a b")),
    ('$["x"][12].y-z', ("x", 12, "y-z")),
    ("$['it\\'s']", ("it's",)),
    ("$['back\\\\slash']", ("back\\slash",)),
])
def test_the_subset(text: str, expected: tuple[int | str, ...]) -> None:
    assert parse_path(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("workflow_input.x", "must start with '$'"),
    ("$.", "expected a name after '.' at offset 1"),
    ("$..a", "expected a name after '.'"),
    ("$[*]", "unexpected '[' at offset 1"),
    ("$.a[-1]", "unexpected '['"),
    ("$['a", "unclosed"),
    ("$['a'", "expected ']'"),
    ("$['\\n']", "unknown escape"),
    ("$.a b", "unexpected ' '"),
    ("$" + ".a" * 600, "longer than 1000"),
])
def test_malformed_paths_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(JsonPathError) as caught:
        parse_path(text)
    assert message in str(caught.value)
