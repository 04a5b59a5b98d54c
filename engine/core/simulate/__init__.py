"""Test runs: a definition run on an in-memory engine with mocked step answers,
events and signals, returning its whole history and final state, touching no
deployment and no service (what Conductor's /api/workflow/test does).

It is the real decide and evolve under a simulated clock (clock.py), with the
worker's effects played in memory (driver.py), from a mocks document (mocks.py);
report.py shapes the answer. Pure: no I/O, no wall clock; the same inputs give
the same run, byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from engine.core.definition import Definition, DefinitionError, Problem
from engine.core.ids import INSTANCE_ID_RE
from engine.core.language.schema import violations
from engine.core.simulate.driver import DEFAULT_OUTPUT, FINAL, Driver, Limits
from engine.core.simulate.mocks import Mocks, MocksError, parse_mocks
from engine.core.simulate.report import report

__all__ = ["DEFAULT_INSTANCE_ID", "DEFAULT_OUTPUT", "DEFAULT_START_MS", "FINAL", "MAX_START_MS", "Limits", "Mocks",
           "MocksError", "TestInputError", "parse_mocks", "run_test"]

DEFAULT_START_MS: Final = 1_767_225_600_000  # 2026-01-01T00:00:00Z: a fixed start, so runs repeat exactly
DEFAULT_INSTANCE_ID: Final = "test-run"
MAX_START_MS: Final = 4_102_444_800_000  # 2100-01-01: far enough, and every simulated time stays a datetime


class TestInputError(DefinitionError):
    """A context, start time or instance id a test run cannot start with (paths as given)."""

    __test__ = False  # not a pytest test class, whatever its name says


def run_test(definition: Definition, mocks: Any = None, *, context: Any = None, correlation_id: str | None = None,
             start_ms: int = DEFAULT_START_MS, limits: Limits = Limits(),
             instance_id: str = DEFAULT_INSTANCE_ID) -> dict[str, Any]:
    """Run ``definition`` against ``mocks`` (a mocks document, or parsed Mocks) from ``context``.

    Raises MocksError or TestInputError (each a DefinitionError with every problem and its
    path) before anything runs; a run that cannot end reports status "stalled" or "aborted".
    """
    checked = mocks if isinstance(mocks, Mocks) else parse_mocks(mocks, definition)
    start_context = _context(definition, context, instance_id, start_ms)
    driver = Driver(definition, checked, limits, start_ms, instance_id)
    outcome = driver.run(start_context, correlation_id)
    return report(outcome, definition, start_ms, driver.clock.elapsed)


def _context(definition: Definition, context: Any, instance_id: str, start_ms: int) -> dict[str, Any]:
    problems = []
    if context is None:
        context = {}
    if not isinstance(context, Mapping):
        problems.append(Problem("context", "must be an object (the workflow's input)"))
    elif definition.input_schema:
        for problem in violations(definition.input_schema, dict(context)):
            where, _, message = problem.partition(": ")
            path = "context" if where == "(root)" else "context." + where.replace("/", ".")
            problems.append(Problem(path, message or problem))
    if not INSTANCE_ID_RE.match(instance_id):
        problems.append(Problem("instance_id", "1-200 of A-Z a-z 0-9 _ . : @ + -, starting alphanumeric"))
    if not 0 <= start_ms <= MAX_START_MS:
        problems.append(Problem("start_ms", f"must be ms since the epoch, 0 to {MAX_START_MS} (2100-01-01)"))
    if problems:
        raise TestInputError(problems)
    return dict(context)
