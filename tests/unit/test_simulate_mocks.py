"""The mocks document of a test run: every problem with its path, and no input
(hypothesis: any JSON) that raises anything but MocksError."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.definition import parse_definition
from engine.core.simulate import MocksError, parse_mocks, run_test

DEFINITION = parse_definition({"name": "m", "version": "1", "definition": {"steps": [
    {"name": "call", "step_type": "service_call", "service": "s", "retry_policy": {"max_attempts": 3}},
    {"name": "wait", "step_type": "event_wait", "event_type": "e.x", "depends_on": ["call"]}]}})


def problems(doc: Any) -> dict[str, str]:
    with pytest.raises(MocksError) as caught:
        parse_mocks(doc, DEFINITION)
    return {p.path: p.message for p in caught.value.problems}


def test_every_problem_is_named_with_its_path() -> None:
    found = problems({"steps": {"nope": {"output": 1}, "wait": {"output": 1},
                                "call": [{"output": 1, "error": "x"}, {"error": ""}, {"error": "x", "status": 99},
                                         {"output": 1, "retryable": True}, {"output": 1, "delay_ms": -5}, "x"]},
                      "events": [{"data": []}, {"type": "t", "at_ms": 1, "after_step": "call"},
                                 {"type": "t", "after_step": "ghost"}],
                      "signals": {"name": "s"}, "strict": "yes", "extra": 1})
    assert found["mocks.steps.nope"].startswith("no step 'nope' in the definition")
    assert "event_wait step" in found["mocks.steps.wait"] and "mocks.events" in found["mocks.steps.wait"]
    assert found["mocks.steps.call[0]"] == "needs exactly one of output (the step succeeds) or error (it fails)"
    assert found["mocks.steps.call[1].error"] == "must be a non-empty text: the failure's message"
    assert found["mocks.steps.call[2].status"] == "must be an HTTP status 100-599, got 99"
    assert found["mocks.steps.call[3]"] == "retryable and retry_after_ms go with error, not output"
    assert found["mocks.steps.call[4].delay_ms"].startswith("not a duration: -5")
    assert found["mocks.steps.call[5]"].startswith("must be an object")
    assert found["mocks.events[0].type"] == "required: a text of 1 to 200 characters"
    assert found["mocks.events[0].data"].startswith("must be an object")
    assert found["mocks.events[1]"] == "give at_ms or after_step, not both"
    assert found["mocks.events[2].after_step"] == "no step 'ghost' in the definition"
    assert found["mocks.signals"] == "must be a list, got an object"
    assert found["mocks.strict"] == "must be true or false, got a text"
    assert found["mocks.extra"].startswith("unknown key")


def test_a_document_that_is_not_an_object_is_refused() -> None:
    assert problems([1]) == {"mocks": "must be an object, got a list"}
    assert problems({"steps": []}) == {"mocks.steps": "must be an object of step name -> answers, got a list"}
    assert problems({"steps": {"call": []}}) == {"mocks.steps.call": "must list at least one answer"}


def test_a_good_document_parses_with_durations_and_defaults() -> None:
    mocks = parse_mocks({"steps": {"call": {"error": "x", "status": 503, "delay_ms": "2s"}},
                         "events": [{"type": "e.x", "at_ms": "1m"}], "signals": [{"name": "go"}]}, DEFINITION)
    answer = mocks.steps["call"][0]
    assert (answer.error, answer.status, answer.delay_ms, answer.retryable) == ("x", 503, 2000, None)
    event, signal = mocks.arrivals
    assert (event.kind, event.data, event.at_ms) == ("event", {}, 60_000)
    assert (signal.kind, signal.data, signal.at_ms) == ("signal", None, 0)
    assert parse_mocks(None, DEFINITION).steps == {}


SCALARS = st.none() | st.booleans() | st.integers() | st.text(max_size=4)
KEYS = st.sampled_from(["steps", "events", "signals", "strict", "call", "wait", "output", "error", "type",
                        "at_ms", "after_step", "delay_ms", "status", "retryable", "data", "name"])
ANSWERS = st.dictionaries(KEYS, SCALARS, max_size=3)
DOCS = SCALARS | st.dictionaries(KEYS, SCALARS | ANSWERS | st.lists(ANSWERS, max_size=2)
                                 | st.dictionaries(KEYS, ANSWERS | st.lists(ANSWERS, max_size=2), max_size=2),
                                 max_size=4)


@settings(max_examples=150, deadline=None)
@given(DOCS)
def test_any_document_parses_or_is_refused_with_problems(doc: Any) -> None:
    try:
        mocks = parse_mocks(doc, DEFINITION)
    except MocksError as exc:
        assert exc.problems and all(p.path.startswith("mocks") and p.message for p in exc.problems)
        return
    run = run_test(DEFINITION, mocks)  # and whatever parses, runs to an end
    assert run["status"] in ("completed", "failed", "stalled")
