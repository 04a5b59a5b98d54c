"""The mocks document of a test run: what each step answers, and which events and
signals arrive when. Parsed and checked against the definition before anything
runs, every problem with its path (``steps.charge[1].status``), as definitions are.

```
{"steps":   {"<step>": answer | [answer, ...]},   # answers used in order, the last repeats
 "events":  [{"type", "data"?, "id"?, "at_ms"? | "after_step"?}],
 "signals": [{"name", "payload"?, "at_ms"? | "after_step"?}],
 "strict":  false}                                 # true: an unmocked step fails
answer = {"output": ...} | {"error": "text", "retryable"?, "status"?, "retry_after_ms"?}, each with "delay_ms"?
```
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from engine.core.definition import Definition, DefinitionError, Problem, parse_duration_ms

MAX_ANSWERS: Final = 10_000  # per step; more answers than any bounded run can use
MAX_ARRIVALS: Final = 10_000  # events plus signals
_DOC_KEYS: Final = frozenset({"steps", "events", "signals", "strict"})
_ANSWER_KEYS: Final = frozenset({"output", "error", "retryable", "status", "retry_after_ms", "delay_ms"})
_EVENT_KEYS: Final = frozenset({"type", "data", "id", "at_ms", "after_step"})
_SIGNAL_KEYS: Final = frozenset({"name", "payload", "at_ms", "after_step"})
# Which steps a mock may answer: the ones that send a task or start a child.
ANSWERED_TYPES: Final = frozenset({"service_call", "loop", "validation", "sub_workflow"})


class MocksError(DefinitionError):
    """A mocks document with problems; each Problem's path is inside the mocks document."""


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    output: Any = None
    error: str | None = None  # set: the attempt fails with this message
    retryable: bool | None = None  # None: decided by status and step kind (see driver)
    status: int | None = None
    retry_after_ms: int | None = None
    delay_ms: int = 0  # the answer arrives this long after the task is sent


class Arrival(msgspec.Struct, frozen=True, kw_only=True):
    """An external event (kind "event") or a signal (kind "signal") the run receives."""

    kind: str
    name: str  # the event's type or the signal's name
    data: Any = None  # the event's data (an object) or the signal's payload
    event_id: str | None = None
    at_ms: int | None = None  # after the start; None with after_step
    after_step: str | None = None  # right after this step completes


class Mocks(msgspec.Struct, frozen=True, kw_only=True):
    steps: dict[str, tuple[Answer, ...]] = {}
    arrivals: tuple[Arrival, ...] = ()
    strict: bool = False


def parse_mocks(doc: Any, definition: Definition) -> Mocks:
    """The checked mocks for ``definition``, or MocksError listing every problem."""
    problems: list[Problem] = []
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise MocksError([Problem("mocks", f"must be an object, got {_kind(doc)}")])
    _closed(problems, doc, "mocks", _DOC_KEYS)
    names = {s.name: s for s in definition.steps + definition.compensation}
    steps = _steps(problems, doc.get("steps"), names)
    arrivals = [*_arrivals(problems, doc.get("events"), "events", "event", names),
                *_arrivals(problems, doc.get("signals"), "signals", "signal", names)]
    if len(arrivals) > MAX_ARRIVALS:
        problems.append(Problem("mocks", f"{len(arrivals)} events and signals, more than {MAX_ARRIVALS}"))
    strict = doc.get("strict", False)
    if not isinstance(strict, bool):
        problems.append(Problem("mocks.strict", f"must be true or false, got {_kind(strict)}"))
    if problems:
        raise MocksError(problems)
    return Mocks(steps=steps, arrivals=tuple(arrivals), strict=bool(strict))


def _steps(problems: list[Problem], raw: Any, names: Mapping[str, Any]) -> dict[str, tuple[Answer, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(Problem("mocks.steps", f"must be an object of step name -> answers, got {_kind(raw)}"))
        return {}
    out: dict[str, tuple[Answer, ...]] = {}
    for name, answers in raw.items():
        path = f"mocks.steps.{name}"
        step = names.get(name)
        if step is None:
            problems.append(Problem(path, f"no step {name!r} in the definition (steps: {', '.join(names)})"))
            continue
        if step.type not in ANSWERED_TYPES:
            problems.append(Problem(path, f"step {name!r} is a {step.type} step: it calls nothing, so nothing "
                                          "answers it (mock events for event_wait steps under mocks.events)"))
            continue
        listed = answers if isinstance(answers, list) else [answers]
        if not listed:
            problems.append(Problem(path, "must list at least one answer"))
        elif len(listed) > MAX_ANSWERS:
            problems.append(Problem(path, f"{len(listed)} answers, more than {MAX_ANSWERS}"))
        else:
            many = isinstance(answers, list)
            parsed = [_answer(problems, a, f"{path}[{i}]" if many else path) for i, a in enumerate(listed)]
            out[name] = tuple(a for a in parsed if a is not None)
    return out


def _answer(problems: list[Problem], raw: Any, path: str) -> Answer | None:
    if not isinstance(raw, Mapping):
        problems.append(Problem(path, f"must be an object such as {{\"output\": ...}} or {{\"error\": \"...\"}}, "
                                      f"got {_kind(raw)}"))
        return None
    before = len(problems)
    _closed(problems, raw, path, _ANSWER_KEYS)
    error = raw.get("error")
    if ("output" in raw) == ("error" in raw):
        problems.append(Problem(path, "needs exactly one of output (the step succeeds) or error (it fails)"))
    elif "error" in raw and not (isinstance(error, str) and error.strip()):
        problems.append(Problem(f"{path}.error", "must be a non-empty text: the failure's message"))
    retryable = raw.get("retryable")
    if retryable is not None and not isinstance(retryable, bool):
        problems.append(Problem(f"{path}.retryable", f"must be true or false, got {_kind(retryable)}"))
    status = raw.get("status")
    if status is not None and not (_is_int(status) and 100 <= status <= 599):
        problems.append(Problem(f"{path}.status", f"must be an HTTP status 100-599, got {status!r}"))
    if "output" in raw and ("retryable" in raw or "retry_after_ms" in raw):
        problems.append(Problem(path, "retryable and retry_after_ms go with error, not output"))
    delay = _duration(problems, raw.get("delay_ms"), f"{path}.delay_ms")
    retry_after = _duration(problems, raw.get("retry_after_ms"), f"{path}.retry_after_ms")
    if len(problems) > before:
        return None
    return Answer(output=raw.get("output"), error=error, retryable=retryable, status=status,
                  retry_after_ms=retry_after, delay_ms=delay or 0)


def _arrivals(problems: list[Problem], raw: Any, key: str, kind: str,
              names: Mapping[str, Any]) -> list[Arrival]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.append(Problem(f"mocks.{key}", f"must be a list, got {_kind(raw)}"))
        return []
    out = []
    for i, item in enumerate(raw):
        arrival = _arrival(problems, item, f"mocks.{key}[{i}]", kind, names)
        if arrival is not None:
            out.append(arrival)
    return out


def _arrival(problems: list[Problem], raw: Any, path: str, kind: str, names: Mapping[str, Any]) -> Arrival | None:
    label, body = ("type", "data") if kind == "event" else ("name", "payload")
    if not isinstance(raw, Mapping):
        problems.append(Problem(path, f"must be an object with {label!r}, got {_kind(raw)}"))
        return None
    before = len(problems)
    _closed(problems, raw, path, _EVENT_KEYS if kind == "event" else _SIGNAL_KEYS)
    name = raw.get(label)
    if not (isinstance(name, str) and 0 < len(name) <= 200):
        problems.append(Problem(f"{path}.{label}", "required: a text of 1 to 200 characters"))
    data = raw.get(body, {} if kind == "event" else None)
    if kind == "event" and not isinstance(data, Mapping):
        problems.append(Problem(f"{path}.data", f"must be an object (what filters compare), got {_kind(data)}"))
    event_id = raw.get("id")
    if event_id is not None and not (isinstance(event_id, str) and 0 < len(event_id) <= 200):
        problems.append(Problem(f"{path}.id", "must be a text of 1 to 200 characters"))
    after = raw.get("after_step")
    if "at_ms" in raw and after is not None:
        problems.append(Problem(path, "give at_ms or after_step, not both"))
    if after is not None and after not in names:
        problems.append(Problem(f"{path}.after_step", f"no step {after!r} in the definition"))
    at_ms = _duration(problems, raw.get("at_ms"), f"{path}.at_ms")
    if len(problems) > before:
        return None
    return Arrival(kind=kind, name=str(name), data=data, event_id=event_id, after_step=after,
                   at_ms=None if after is not None else (at_ms or 0))


def _duration(problems: list[Problem], raw: Any, path: str) -> int | None:
    if raw is None:
        return None
    try:
        return parse_duration_ms(raw)
    except ValueError as exc:
        problems.append(Problem(path, str(exc)))
        return None


def _closed(problems: list[Problem], raw: Mapping[str, Any], path: str, allowed: frozenset[str]) -> None:
    for key in raw:
        if key not in allowed:
            problems.append(Problem(f"{path}.{key}", f"unknown key (expected one of {', '.join(sorted(allowed))})"))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a text", bool: "true/false", type(None): "null"}
    for cls, word in names.items():
        if isinstance(value, cls):
            return word
    return "a number" if isinstance(value, (int, float)) else type(value).__name__
