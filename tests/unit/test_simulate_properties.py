"""Properties of test runs over random mocks (hypothesis): every run ends with a
status, its history is a real one (it decodes and folds into the reported state,
in time order), and the same inputs give the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.definition import load_definition_file
from engine.core.evolve import fold_stored
from engine.core.model import INITIAL, decode_event
from engine.core.simulate import DEFAULT_START_MS, run_test
from engine.core.simulate.mocks import ANSWERED_TYPES

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
NAMES = ["retry-backoff.yaml", "compensation.yaml", "conditional.yaml", "loop.yaml", "validation.yaml",
         "timeout-compensate.yaml", "on-failure-notify.yaml", "parallel-join.yaml", "event-wait.yaml",
         "step-timeout.yaml", "sub-workflow.yaml"]
DEFINITIONS = {name: load_definition_file(EXAMPLES / name) for name in NAMES}
CONTEXT = {"order_id": "o-1", "total": 5, "customer": "c-1", "email": "a@b.co", "amount": 3,
           "lines": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}]}

ANSWER = st.one_of(
    st.fixed_dictionaries({"output": st.sampled_from([{}, {"id": "x"}, {"score": 1, "valid": True}, None])}),
    st.fixed_dictionaries({"error": st.just("boom")},
                          optional={"retryable": st.booleans(), "status": st.sampled_from([400, 429, 503])}),
).flatmap(lambda a: st.fixed_dictionaries({**{k: st.just(v) for k, v in a.items()}},
                                          optional={"delay_ms": st.integers(0, 5_000)}))


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(NAMES))
    definition = DEFINITIONS[name]
    answered = [s.name for s in definition.steps + definition.compensation if s.type in ANSWERED_TYPES]
    steps = {step: draw(st.lists(ANSWER, min_size=1, max_size=3)) for step in answered if draw(st.booleans())}
    events = draw(st.lists(st.fixed_dictionaries({"type": st.just("payment.received"),
                                                  "data": st.sampled_from([{"order_id": "o-1"}, {"order_id": "o"}]),
                                                  "at_ms": st.integers(0, 4_000_000)}), max_size=2))
    return name, {"steps": steps, "events": events}


@settings(max_examples=80, deadline=None)
@given(cases())
def test_any_run_ends_with_a_real_history(case: tuple[str, dict[str, Any]]) -> None:
    name, mocks = case
    run = run_test(DEFINITIONS[name], mocks, context=CONTEXT)
    assert run["status"] in ("completed", "failed", "compensated", "stalled"), run.get("reason")
    stored = [(decode_event(orjson.dumps({"type": h["type"], **h["data"]})), h["ts"]) for h in run["history"]]
    state = fold_stored(INITIAL, stored)
    assert (state.status, state.version) == (run["state"]["status"], run["state"]["version"])
    times = [h["ts"] for h in run["history"]]
    assert times == sorted(times) and times[-1] - DEFAULT_START_MS <= run["simulated_ms"]
    assert run_test(DEFINITIONS[name], mocks, context=CONTEXT) == run
