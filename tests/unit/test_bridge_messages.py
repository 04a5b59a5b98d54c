"""Seed 003's request messages: every malformed one is refused with a reason that
names the problem (what the bridge dead-letters it with), never another exception."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.bridge.intake import plan_identity
from engine.bridge.messages import cancellation_request, execution_request
from engine.errors import PoisonMessage

PLAN = {"start_step": "a", "steps": {"a": {"agent_name": "extractor"}}}


def entry(doc: Any) -> dict[bytes, bytes]:
    return {b"data": orjson.dumps(doc)}


def test_an_execution_request_as_seed_003_writes_it() -> None:
    request = execution_request(entry({"run_id": "r-1", "workflow_plan": PLAN, "input_data": {"x": 1},
                                       "timestamp": "2026-01-01T00:00:00Z", "message_type": "execution_request"}))
    assert (request.run_id, request.plan, request.input_data) == ("r-1", PLAN, {"x": 1})
    assert request.timestamp == "2026-01-01T00:00:00Z" and request.triggered_by is None


def test_a_cancellation_request_as_seed_003_writes_it() -> None:
    request = cancellation_request(entry({"run_id": "r-1", "cancelled_by": "ops", "reason": "why",
                                          "message_type": "cancellation_request"}))
    assert (request.run_id, request.cancelled_by, request.reason) == ("r-1", "ops", "why")


@pytest.mark.parametrize(("fields", "reason"), [
    ({}, "no 'data' field"),
    ({b"data": b"{nope"}, "not JSON"),
    (entry([1]), "must be a JSON object"),
    (entry({"run_id": "r", "message_type": "cancellation_request", "workflow_plan": PLAN}), "message_type"),
    (entry({"workflow_plan": PLAN, "message_type": "execution_request"}), "missing run_id"),
    (entry({"run_id": "has space", "workflow_plan": PLAN, "message_type": "execution_request"}), "invalid run_id"),
    (entry({"run_id": "r", "message_type": "execution_request"}), "workflow_plan must be a JSON object"),
    (entry({"run_id": "r", "workflow_plan": PLAN, "input_data": [1], "message_type": "execution_request"}),
     "input_data must be a JSON object"),
    (entry({"run_id": "r", "workflow_plan": PLAN, "triggered_by": 7, "message_type": "execution_request"}),
     "triggered_by must be a string"),
])
def test_each_malformed_request_is_refused_naming_the_problem(fields: dict[bytes, bytes], reason: str) -> None:
    with pytest.raises(PoisonMessage, match=reason):
        execution_request(fields)


json_values = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=10)
documents = st.fixed_dictionaries({}, optional={
    "run_id": json_values | st.text(max_size=20), "workflow_plan": json_values, "input_data": json_values,
    "message_type": st.sampled_from(["execution_request", "cancellation_request"]) | json_values,
    "cancelled_by": json_values, "reason": json_values, "timestamp": json_values})


@given(st.one_of(st.binary(max_size=64), documents.map(orjson.dumps)))
def test_any_entry_is_a_request_or_refused(data: bytes) -> None:
    for parse in (execution_request, cancellation_request):
        try:
            parse({b"data": data})
        except PoisonMessage as exc:
            assert str(exc)


def test_a_plan_without_name_or_version_is_named_by_its_content() -> None:
    name, version = plan_identity(PLAN)
    assert name is not None and name.startswith("plan-") and version is not None
    assert plan_identity(dict(reversed(list(PLAN.items())))) == (name, version)  # key order does not matter
    assert plan_identity({**PLAN, "steps": {"b": {"agent_name": "x"}}})[0] != name
    assert plan_identity({**PLAN, "workflow_id": "w", "version": "2"}) == (None, None)
