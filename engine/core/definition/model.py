"""Workflow definitions as data: the validated, immutable shape the decider reads.

Parsing and validation live in parser.py; ``engine.core.definition`` is
the front door that exports both.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec
import orjson

from engine.errors import EngineError

_MAX_MS: Final = 2**53 - 1  # stays exact in Lua numbers and JSON doubles
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_UNIT_MS: Final = {None: 1, "ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class Problem(msgspec.Struct, frozen=True):
    path: str
    message: str


class DefinitionError(EngineError, ValueError):
    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(f"{p.path}: {p.message}" for p in self.problems))


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    max_attempts: int = 1
    backoff_base: float = 2.0
    backoff_multiplier: int = 1000
    max_delay_ms: int | None = None
    jitter: float = 0.0  # each delay moves by up to this fraction, either way

    def delay_ms(self, attempt: int, spread: float = 0.5) -> int:
        """Delay after failed attempt ``attempt`` (1-based), before the next one.

        ``spread`` in [0, 1) picks where in the jitter band the delay falls; the
        decider derives it from the instance, step and attempt, so a replay
        computes the same delay while different instances spread out.
        """
        if attempt < 1:
            raise ValueError(f"attempts count from 1, got {attempt}")
        try:
            delay = self.backoff_multiplier * self.backoff_base ** (attempt - 1)
        except OverflowError:
            delay = math.inf
        if self.max_delay_ms is not None:
            delay = min(delay, self.max_delay_ms)
        if self.jitter and math.isfinite(delay):
            delay *= 1 + self.jitter * (2 * spread - 1)
        return int(min(max(delay, 0), _MAX_MS))


class ErrorHandler(msgspec.Struct, frozen=True, kw_only=True):
    step: str | None
    action: str
    max_retries: int = 0
    backoff_ms: int = 0
    target: str | None = None
    endpoint: str | None = None
    message: str | None = None


class ValidationRule(msgspec.Struct, frozen=True, kw_only=True):
    """One rule of a validation step: a call to ``service`` about one input field."""

    field: str
    rule: str
    service: str
    endpoint: str | None = None


class Step(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    type: str
    description: str = ""
    depends_on: tuple[str, ...] = ()
    sequence: int | None = None
    service: str | None = None
    endpoint: str | None = None
    method: str | None = None
    input: Any = None
    output: Any = None
    event_type: str | None = None
    event_filter: dict[str, Any] = {}
    timeout_ms: int | None = None
    retry_policy: RetryPolicy = RetryPolicy()
    on_error: ErrorHandler | None = None
    on_timeout: ErrorHandler | None = None  # what a timeout does (fail by default)
    condition: str | None = None  # the step runs only when this holds; else it is skipped
    true_edge: str | None = None  # conditional: the step taken when the condition holds
    false_edge: str | None = None  # conditional: ... when it does not
    items: Any = None  # loop: a template yielding the list to iterate
    max_iterations: int = 1000  # loop: more items than this fail the step
    validation_rules: tuple[ValidationRule, ...] = ()
    duration_ms: int | None = None  # delay
    workflow: str | None = None  # sub_workflow: the child's workflow name
    workflow_version: str | None = None
    compensates: str | None = None  # compensation: the step whose effect this undoes
    # What an HTTP call of the step carries (definition/calls.py); the executor reads them.
    headers: dict[str, str] = {}  # header name -> template
    url: str | None = None  # an absolute URL (template) in place of the service's base URL
    retry_on_status: tuple[int, ...] = ()  # retryable besides 408, 425, 429 and 5xx
    success_on_status: tuple[int, ...] = ()  # complete the step besides 2xx
    follow_redirects: bool = False


class Concurrency(msgspec.Struct, frozen=True, kw_only=True):
    """At most ``limit`` instances of the workflow (all versions) per rendered ``key`` run at once."""

    key: str  # a template over the start: input (= context), tenant, correlation_id
    limit: int = 1
    on_limit: str = "queue"  # "queue" | "cancel_newest" | "cancel_oldest"


class Definition(msgspec.Struct, frozen=True, kw_only=True, dict=True):
    name: str
    version: str
    description: str = ""
    steps: tuple[Step, ...]
    error_handlers: tuple[ErrorHandler, ...] = ()
    timeout_ms: int | None = None
    compensation: tuple[Step, ...] = ()  # run in reverse order when the workflow fails
    input_schema: dict[str, Any] | None = None  # JSON Schema for the start context
    output: Any = None  # spec.output: {"values": templates} and/or {"schema": ...}
    concurrency: Concurrency | None = None  # admission control per key (engine/workers/admission.py)

    def __post_init__(self) -> None:
        # Frozen structs refuse attributes; dict=True gives a side table that
        # msgspec neither encodes nor compares, and decoding rebuilds it.
        dependents: dict[str, list[str]] = {s.name: [] for s in self.steps + self.compensation}
        for step in self.steps:
            for dependency in step.depends_on:
                dependents.setdefault(dependency, []).append(step.name)
        self.__dict__["_index"] = {s.name: s for s in self.steps + self.compensation}
        self.__dict__["_dependents"] = {k: tuple(v) for k, v in dependents.items()}

    def step(self, name: str) -> Step:
        index: dict[str, Step] = self.__dict__["_index"]
        return index[name]

    def compensation_steps(self) -> frozenset[str]:
        return frozenset(s.name for s in self.compensation)

    def roots(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps if not s.depends_on)

    def dependents(self, name: str) -> tuple[str, ...]:
        dependents: dict[str, tuple[str, ...]] = self.__dict__["_dependents"]
        return dependents[name]


def parse_duration_ms(value: Any) -> int:
    """Milliseconds from a number of ms or a string such as "500ms", "5s", "30m", "24h", "1d"."""
    ms: float = math.nan
    if _is_number(value):
        ms = value
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        ms = float(match[1]) * _UNIT_MS[match[2]]
    if not 0 <= ms <= _MAX_MS:  # NaN fails this too
        raise ValueError(f"not a duration: {value!r} (ms, or a string like '500ms', '5s', '5m', '24h', '1d')")
    return int(ms)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # JSON true is not 1


def version_sort_key(version: str) -> str:
    """Zero-pad numeric runs to 10 digits so plain string order is version order."""
    return re.sub(r"\d+", lambda m: m[0].lstrip("0").rjust(10, "0"), version)


def canonical_json(doc: Mapping[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


