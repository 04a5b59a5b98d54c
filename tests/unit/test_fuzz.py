"""Fuzzing the decoders and parsers that read what other people wrote: stream
entries (commands, tasks, external events, stored events) and workflow
definitions. Each must answer or refuse with its one documented error, never
anything else: an unexpected exception in a worker fails a whole batch instead
of dead-lettering one entry."""

from __future__ import annotations

from typing import Any

import orjson
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.core.codec import decode_command_entry, decode_task_entry
from engine.core.definition import Definition, DefinitionError, parse_definition
from engine.core.ids import INSTANCE_ID_RE
from engine.core.language.conditions import Condition, ConditionError, compile_condition
from engine.core.language.expressions import render, template_problems
from engine.core.language.templates import MissingValue, TemplateError
from engine.core.model import COMMAND_TYPES, Envelope, Task
from engine.errors import PoisonMessage
from engine.store.events import decode_stored
from engine.workers.router import _decode_event

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- building blocks ---------------------------------------------------------------
_SCALAR = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
JSON = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=15)


@st.composite
def nested(draw: st.DrawFn, fields: tuple[str, ...] = ("a",)) -> bytes:
    """A JSON document nested deeper than any parser's comfort (or just deep), at the
    top or under a field (msgspec recurses even to skip an unknown field)."""
    depth = draw(st.sampled_from([1, 30, 255, 600, 1100, 5000]))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    doc = opener * depth + b"1" + closer * depth
    field = draw(st.none() | st.sampled_from(fields))
    return doc if field is None else b'{"%s":' % field.encode() + doc + b"}"


COMMAND_FIELDS = sorted({f for c in COMMAND_TYPES.values() for f in c.__struct_fields__})
TASK_FIELDS = ["service", "endpoint", "input", "context", "workflow", "correlation_id", "kind", "iteration",
               "method"]


def shaped(fields: list[str]) -> st.SearchStrategy[bytes]:
    """JSON objects with the right field names and values of any type: wrong types, nulls, nesting."""
    return st.dictionaries(st.sampled_from(fields), JSON, max_size=6).map(orjson.dumps)


def data_values(fields: list[str]) -> st.SearchStrategy[bytes]:
    return (shaped(fields) | JSON.map(orjson.dumps) | st.binary(max_size=64) | nested(tuple(fields))
            | st.sampled_from([b"", b"{", b"\xff\xfe{}", b"null", b"{}", b'{"a": NaN}', b"1e999",
                               b"{}" + b" " * 5000,
                               b'{"attempt": 123456789012345678901234567890, "iteration": -1e400}']))


def entry(required: dict[bytes, st.SearchStrategy[bytes]]) -> st.SearchStrategy[dict[bytes, bytes]]:
    """A stream entry: each known field present or missing, plus stray fields (bytes, not UTF-8 included)."""
    known = st.fixed_dictionaries({}, optional=required)
    stray = st.dictionaries(st.binary(min_size=1, max_size=8), st.binary(max_size=32), max_size=3)
    return st.tuples(known, stray).map(lambda kv: {**kv[1], **kv[0]})


TEXT_BYTES = st.text(max_size=20).map(str.encode) | st.binary(max_size=20)
COMMAND_ENTRY = entry({
    b"type": st.sampled_from(sorted(COMMAND_TYPES)).map(str.encode) | TEXT_BYTES,
    b"id": st.sampled_from([b"i-1", b"i-1", b"i-1", b"a" * 201, b"bad id", b"\xff"]) | TEXT_BYTES,
    b"data": data_values(COMMAND_FIELDS),
    b"cmd_id": TEXT_BYTES,
})
TASK_ENTRY = entry({
    b"task_id": TEXT_BYTES, b"id": TEXT_BYTES, b"step": TEXT_BYTES, b"reply_to": TEXT_BYTES,
    b"attempt": st.sampled_from([b"1", b"-3", b"1.5", b"", b" 2 ", b"9" * 40, b"\xff"]) | TEXT_BYTES,
    b"data": data_values(TASK_FIELDS),
})
EVENT_ENTRY = entry({
    b"type": TEXT_BYTES, b"data": data_values(["task_id", "agent_id", "result"]), b"correlation_id": TEXT_BYTES,
})


# -- stream entries ----------------------------------------------------------------
@FUZZ
@given(COMMAND_ENTRY, st.sampled_from([64, 4096, 1 << 20]))
def test_command_entries_decode_or_are_poison(fields: dict[bytes, bytes], max_bytes: int) -> None:
    try:
        env = decode_command_entry("1-0", fields, max_bytes)
    except PoisonMessage as exc:
        assert str(exc)  # the reason a dead letter carries
        return
    assert isinstance(env, Envelope) and INSTANCE_ID_RE.match(env.instance_id)
    assert len(fields.get(b"data", b"{}")) <= max_bytes


@FUZZ
@given(st.sampled_from(sorted(COMMAND_TYPES)), data_values(COMMAND_FIELDS))
def test_command_data_of_every_type_decodes_or_is_poison(type_: str, data: bytes) -> None:
    """The envelope right, the data anything: the decoders of every command type."""
    try:
        decode_command_entry("1-0", {b"type": type_.encode(), b"id": b"i-1", b"data": data}, 1 << 20)
    except PoisonMessage as exc:
        assert str(exc)


@FUZZ
@given(data_values(TASK_FIELDS))
def test_task_data_decodes_or_is_poison(data: bytes) -> None:
    fields = {b"task_id": b"t", b"id": b"i-1", b"step": b"s", b"attempt": b"1", b"reply_to": b"r", b"data": data}
    try:
        decode_task_entry("1-0", "{ff:0}:tasks:q", fields)
    except PoisonMessage as exc:
        assert str(exc)


@FUZZ
@given(TASK_ENTRY)
def test_task_entries_decode_or_are_poison(fields: dict[bytes, bytes]) -> None:
    try:
        task = decode_task_entry("1-0", "{ff:0}:tasks:q", fields)
    except PoisonMessage as exc:
        assert str(exc)
        return
    assert isinstance(task, Task) and isinstance(task.attempt, int) and isinstance(task.service, str)


@FUZZ
@given(EVENT_ENTRY, st.sampled_from([64, 1 << 20]))
def test_external_events_decode_or_are_poison(fields: dict[bytes, bytes], max_bytes: int) -> None:
    try:
        etype, data, corr = _decode_event(fields, max_bytes)
    except PoisonMessage as exc:
        assert str(exc)
        return
    assert etype and isinstance(data, dict) and (corr is None or isinstance(corr, str))


@FUZZ
@given(entry({b"data": data_values(["type", "step", "attempt", "status", "context"]),
              b"ts": st.sampled_from([b"1", b"x", b""]) | TEXT_BYTES}))
def test_stored_events_decode_or_are_poison(fields: dict[bytes, bytes]) -> None:
    try:
        decode_stored("i-1", b"1-0", fields)
    except PoisonMessage:
        pass


# -- definitions -------------------------------------------------------------------
STEP_KEYS = ["name", "type", "service", "endpoint", "depends_on", "retry", "timeout", "condition", "input",
             "on_timeout", "event", "filter", "steps", "items", "rules", "workflow", "duration", "output",
             "error_handler", "method", "max_attempts", "backoff", "compensate", "sequence"]
STEP_VALUES = (JSON | st.sampled_from(["service_call", "event_wait", "conditional", "loop", "validation", "delay",
                                       "sub_workflow", "10s", "-1s", "{{ input.x }}", "${context.a}", "a and (",
                                       "steps.a.output.x > 1", ["a"], ["a", "a"], {"max_attempts": 3}]))
STEP = st.dictionaries(st.sampled_from(STEP_KEYS), STEP_VALUES, max_size=8)
STEP_NAMED = st.tuples(st.sampled_from(["a", "b", "c", ""]), STEP).map(lambda t: {**t[1], "name": t[0]})
DOCUMENT = st.fixed_dictionaries(
    {}, optional={
        "name": st.text(max_size=8) | JSON, "version": st.sampled_from(["1", "1.0.0", "", "x"]) | JSON,
        "definition": st.fixed_dictionaries({}, optional={
            "steps": st.lists(STEP_NAMED, max_size=4) | JSON,
            "error_handlers": st.lists(st.dictionaries(st.sampled_from(["action", "steps", "on", "max_attempts"]),
                                                       STEP_VALUES, max_size=4), max_size=2) | JSON,
            "input": JSON,
        }),
        "steps": st.lists(STEP_NAMED, max_size=3),
        "apiVersion": st.sampled_from(["foldflow/v1", "x"]), "kind": st.sampled_from(["Workflow", "x"]),
        "metadata": st.dictionaries(st.sampled_from(["name", "version"]), JSON, max_size=2),
        "spec": st.dictionaries(st.sampled_from(["steps", "input", "error_handlers"]), JSON, max_size=3),
    })


def _parses_or_refuses(source: Any, **kw: Any) -> None:
    try:
        assert isinstance(parse_definition(source, **kw), Definition)
    except DefinitionError as exc:
        assert exc.problems and all(p.message for p in exc.problems)


@FUZZ
@given(DOCUMENT | JSON)
def test_definition_documents_parse_or_raise_definition_error(doc: Any) -> None:
    _parses_or_refuses(doc if isinstance(doc, dict) else orjson.dumps(doc), name="n", version="1")


@FUZZ
@given(DOCUMENT)
def test_definition_bytes_json_and_yaml_agree_on_refusing(doc: dict[str, Any]) -> None:
    _parses_or_refuses(orjson.dumps(doc))
    _parses_or_refuses(yaml.safe_dump(doc), fmt="yaml")


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200) | nested())
def test_arbitrary_definition_text_parses_or_raises_definition_error(source: bytes | str) -> None:
    _parses_or_refuses(source)


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(["a: &a [*a]", "a: !!python/object:os.system x", "[" * 5000, "a: " + "[" * 3000,
                        "&a a: *a", "a: !!binary ////", "? [a]\n: b"]))
def test_hostile_yaml_parses_or_raises_definition_error(source: str) -> None:
    _parses_or_refuses(source, fmt="yaml")


# -- templates and conditions against any scope (the existing fuzzers use fixed scopes) --
_TEMPLATE_PIECES = st.sampled_from(
    ["{{", "}}", "${", "}", "(", ")", ",", "'", " ", ".", "0", "input", "input.a", "input.a.0", "context.b",
     "steps.s.output", "hash(", "default(", "lower(", "upper(", "len(", "trim(", "'x'", "1e308", "-0"])
_CONDITION_PIECES = st.sampled_from(
    ["input.a", "input.b.0", "context.c", "steps.s.output.x", "item", "index", "1", "-2.5", "1e308", "'s'", "true",
     "null", "[", "]", "(", ")", ",", "==", "!=", "<", ">=", "in", "not", "and", "or", "len(", "default(",
     "exists(", "matches(", "int(", "float(", "hash(", "contains(", "starts_with(", "lower(", "'^a'"])
SCOPE = st.fixed_dictionaries({"input": JSON, "context": JSON, "steps": JSON, "item": JSON, "index": JSON})


@FUZZ
@given(st.lists(_TEMPLATE_PIECES, max_size=20).map("".join), SCOPE)
def test_templates_render_against_any_scope(text: str, scope: dict[str, Any]) -> None:
    assert isinstance(template_problems(text), list)
    try:
        render(text, scope)
    except (TemplateError, MissingValue):
        pass


@FUZZ
@given(st.lists(_CONDITION_PIECES, max_size=16).map(" ".join), SCOPE)
def test_conditions_compile_and_evaluate_against_any_scope(text: str, scope: dict[str, Any]) -> None:
    try:
        condition = compile_condition(text)
    except ConditionError:
        return
    assert isinstance(condition, Condition)
    assert condition.evaluate(scope) in (True, False)
