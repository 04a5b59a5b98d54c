"""The pure parts of /api/v1, without a deployment: job statuses, log lines,
seed 001's shape of the other forms, and the analytics' percentiles."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.api.problems import Problem
from engine.api.v1.job_views import JOB_STATUS, NATIVE, job_status, node_output
from engine.api.v1.log_lines import lifecycle_line, log_line
from engine.api.v1.node_test import check_config, reserved_name
from engine.api.v1.shapes import form_of, is_reserved, node_types, nodes_and_edges
from engine.api.v1.stats import Tally, node_runs, percentile
from engine.core.definition import parse_definition
from engine.core.model import StepError, StepFailed, StepScheduled, WorkflowCreated, WorkflowFailed, WorkflowStarted
from projections.base import Applied
from projections.keys import STATUSES
from projections.lifecycle import fold_context, lifecycle_event


def test_every_engine_status_is_one_job_status_and_back() -> None:
    assert set(JOB_STATUS) == set(STATUSES)
    assert sorted(s for natives in NATIVE.values() for s in natives) == sorted(STATUSES)
    assert job_status("paused") == "running" and job_status("compensated") == "failed"
    assert node_output({"output": 3, "model": "m"}, True) == 3 and node_output({"output": 3}, False) == {"output": 3}


def test_log_lines_say_what_happened_at_which_level() -> None:
    error = StepError(message="boom", kind="http", status=503)
    lines = [log_line("1-0", 1, WorkflowCreated(instance_id="j", workflow="w", version="1"), 0),
             log_line("2-0", 2, StepScheduled(step="a", attempt=1, task_id="t", queue="svc", endpoint="/x"), 1),
             log_line("3-0", 3, StepFailed(step="a", attempt=1, error=error, retry_at=5), 2),
             log_line("4-0", 4, WorkflowFailed(step="a", error=error), 3)]
    assert [(line.level, line.message) for line in lines] == [
        ("info", "job created: workflow w version 1"), ("info", "node a attempt 1 dispatched to svc /x"),
        ("warning", "node a attempt 1 failed (will retry): http: boom (HTTP 503)"),
        ("error", "job failed at node a: http: boom (HTTP 503)")]
    assert lines[1].node_id == "a" and lines[1].attempt == 1 and lines[0].node_id is None


def test_plans_and_native_forms_have_nodes_and_edges() -> None:
    plan = {"name": "p", "start_step": "a", "steps": {
        "a": {"id": "a", "agent_name": "extractor", "next_step": "b", "input_mapping": {"u": "$.workflow_input.u"}},
        "b": {"id": "b", "agent_name": "loader", "next_step": None}}}
    assert form_of(plan) == "plan"
    nodes, edges = nodes_and_edges(plan, parse_definition(plan))
    assert [(n.id, n.type) for n in nodes] == [("start", "start"), ("a", "extractor"), ("b", "loader")]
    assert [(e.source, e.target) for e in edges] == [("start", "a"), ("a", "b")]
    native = {"name": "n", "version": "1", "definition": {"steps": [
        {"name": "x", "step_type": "service_call", "service": "orders"},
        {"name": "y", "step_type": "delay", "duration": "1s", "depends_on": ["x"]}]}}
    definition = parse_definition(native)
    nodes, edges = nodes_and_edges(native, definition)
    assert [(n.id, n.type) for n in nodes] == [("start", "start"), ("x", "orders"), ("y", "delay")]
    assert [(e.source, e.target) for e in edges] == [("start", "x"), ("x", "y")]
    assert node_types(native, definition) == {"x": "orders", "y": "delay"}
    assert is_reserved("foldflow.node-test.llm.0123") and not is_reserved("foldflow") and not is_reserved(None)


@given(st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=200),
       st.floats(min_value=0, max_value=100))
def test_percentiles_are_values_in_order(values: list[int], q: float) -> None:
    ordered = sorted(values)
    found = percentile(ordered, q)
    assert found in ordered
    assert percentile(ordered, 50) <= percentile(ordered, 95) <= percentile(ordered, 99) == percentile(ordered, 99)
    assert sum(1 for v in ordered if v <= found) >= q / 100 * len(ordered)  # type: ignore[operator]


def test_tallies_and_node_runs() -> None:
    tally = Tally("w")
    for status, took in (("completed", 10), ("completed", 30), ("failed", 20), ("running", None)):
        tally.add(status, took, 1)
    stats = tally.stats()
    assert stats.total == 4 and stats.success_rate == round(2 / 3, 4) and stats.retries == 4
    assert (stats.duration_ms.p50, stats.duration_ms.p99, stats.duration_ms.count) == (20.0, 30.0, 3)
    assert percentile([], 50) is None and Tally("none").stats().success_rate is None
    runs = node_runs([{"step": "a", "attempt": 1, "kind": "task", "status": "failed", "started_ms": 0,
                       "completed_ms": 5}, {"step": "a", "attempt": 2, "kind": "task", "status": "completed",
                                            "started_ms": 10, "completed_ms": 12},
                      {"step": "b", "attempt": 0, "kind": "skipped", "status": "skipped", "started_ms": 3}])
    assert runs == {"a": ("completed", 12, 1)}


def test_a_node_config_is_refused_at_the_field_that_is_wrong() -> None:
    cases = [({"model": "m"}, "config.prompt"), ({"model": 1, "prompt": "p"}, "config.model"),
             ({"model": "m", "prompt": "p", "bogus": 1}, "config.bogus"),
             ({"model": "m", "prompt": "p", "temperature": 9}, "config.temperature")]
    for config, path in cases:
        with pytest.raises(Problem) as refused:
            check_config("llm", config)
        assert refused.value.status == 422 and [e.path for e in refused.value.errors or []] == [path]
    check_config("llm", {"model": "m", "prompt": "p", "timeout": "5s"})
    check_config("some-service", {"anything": ["goes"]})  # a custom type's config is its payload
    assert reserved_name("llm", {"a": 1, "b": 2}) == reserved_name("llm", {"b": 2, "a": 1})
    assert reserved_name("llm", {"a": 1}).startswith("foldflow.node-test.llm.")


def test_a_retired_job_logs_from_its_lifecycle_read_model() -> None:
    error = StepError(message="boom", kind="http")
    events = [WorkflowCreated(instance_id="j", workflow="w", version="1"), WorkflowStarted(),
              StepScheduled(step="a", attempt=1, task_id="t", queue="svc"),
              StepFailed(step="a", attempt=1, error=error, retry_at=9), StepFailed(step="a", attempt=2, error=error),
              WorkflowFailed(step="a", error=error)]
    ctx = fold_context(None, "j", Applied(1, 0, events[0]))
    entries = [lifecycle_event(ctx, "j", Applied(v, v * 10, e)) for v, e in enumerate(events, 1)]
    lines = [lifecycle_line(e) for e in entries if e is not None]
    assert [(line.seq, line.level, line.message) for line in lines] == [
        (2, "info", "job running"), (3, "info", "node a attempt 1 dispatched to svc"),
        (4, "warning", "node a attempt 1 failed (will retry): http: boom"),
        (5, "error", "node a attempt 2 failed: http: boom"), (6, "error", "job failed at node a: http: boom")]
    assert lines[1].entry_id == "0-3" and lines[1].node_id == "a"
