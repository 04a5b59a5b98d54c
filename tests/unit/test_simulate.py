"""Test runs on the in-memory engine (engine.core.simulate): branches, retries with
simulated backoff, compensation, event waits, delays, timeouts, children, signals,
and runs that cannot end. Pure: no Redis, no services, no wall clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.core.definition import Definition, load_definition_file, parse_definition
from engine.core.evolve import fold_stored
from engine.core.model import INITIAL, decode_event
from engine.core.simulate import DEFAULT_START_MS, Limits, TestInputError, run_test

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
T0 = DEFAULT_START_MS


def example(name: str) -> Definition:
    return load_definition_file(EXAMPLES / name)


def statuses(run: dict[str, Any]) -> dict[str, list[str]]:
    return {name: [a["status"] for a in attempts] for name, attempts in run["steps"].items()}


def types(run: dict[str, Any]) -> list[str]:
    return [h["type"] for h in run["history"]]


def test_both_branches_of_a_conditional_are_taken_by_what_the_mock_answers() -> None:
    definition = example("conditional.yaml")
    large = run_test(definition, {"steps": {"price": {"output": {"input": {"total": 5000}}}}}, context={"total": 1})
    small = run_test(definition, {"steps": {"price": {"output": {"input": {"total": 10}}}}}, context={"total": 1})
    assert large["status"] == small["status"] == "completed"
    assert statuses(large)["manual_review"] == ["completed"] and statuses(large)["auto_approve"] == ["skipped"]
    assert statuses(small)["manual_review"] == ["skipped"] and statuses(small)["notify_reviewer"] == ["skipped"]
    assert statuses(small)["auto_approve"] == statuses(small)["confirm"] == ["completed"]
    decision = large["steps"]["is_large"][0]
    assert decision["kind"] == "decision" and decision["output"] == {"result": True, "edge": "manual_review"}


def test_retries_wait_out_their_backoff_on_the_simulated_clock() -> None:
    definition = example("retry-backoff.yaml")
    mocks = {"steps": {"sync": [{"error": "unavailable", "status": 503}, {"error": "boom"}, {"output": {"ok": 1}}],
                       "push": [{"error": "bad request", "status": 400}]}}
    run = run_test(definition, mocks)
    sync = run["steps"]["sync"]
    assert [a["status"] for a in sync] == ["retrying", "retrying", "completed"]
    assert [a["mock"] for a in sync] == [0, 1, 2]
    policy = definition.step("sync").retry_policy
    first, second = (a["retry_at_ms"] - a["completed_ms"] for a in sync[:2])
    assert policy.backoff_multiplier * 0.9 <= first <= policy.backoff_multiplier * 1.1  # 100ms, jitter 0.1
    assert 2 * policy.backoff_multiplier * 0.9 <= second <= 2 * policy.backoff_multiplier * 1.1
    assert sync[1]["started_ms"] == sync[0]["retry_at_ms"] and sync[2]["started_ms"] == sync[1]["retry_at_ms"]
    # A 400 is not retryable: push fails at once, whatever its two attempts allow.
    assert run["status"] == "failed" and run["state"]["failed_step"] == "push"
    assert statuses(run)["push"] == ["failed"] and run["steps"]["push"][0]["error"]["status"] == 400
    assert run["simulated_ms"] == sync[1]["retry_at_ms"] - T0


def test_the_last_answer_repeats_and_an_unmocked_step_answers_an_empty_object() -> None:
    run = run_test(example("retry-backoff.yaml"), {"steps": {"audit": {"error": "down"}}})
    assert run["status"] == "failed" and len(run["steps"]["audit"]) == 4  # on_failure retry: 4 attempts
    assert {a["mock"] for a in run["steps"]["audit"]} == {0}
    assert run["steps"]["sync"][0]["mock"] is None and run["steps"]["sync"][0]["output"] == {}


def test_strict_mocks_fail_a_step_that_has_none() -> None:
    run = run_test(example("delay.yaml"), {"strict": True})
    assert run["status"] == "failed"
    assert run["state"]["error"]["message"] == "no mock for step 'release' (mocks.strict is true)"


def test_a_failure_compensates_the_completed_steps_latest_first() -> None:
    mocks = {"steps": {"reserve_stock": {"output": {"id": "x-1"}}, "charge_card": {"error": "declined",
                                                                                    "retryable": False}}}
    run = run_test(example("compensation.yaml"), mocks, context={"order_id": "o-1"})
    assert run["status"] == "compensated"
    started = next(h for h in run["history"] if h["type"] == "workflow.compensating")
    assert started["data"]["steps"] == ["cancel_courier", "release_stock", "apologise"]
    assert run["steps"]["release_stock"][0]["endpoint"] == "/reservations/x-1"
    assert run["steps"]["refund_card"] == []
    assert types(run)[-1] == "workflow.compensated"


def test_an_event_wait_takes_the_matching_event_when_it_arrives() -> None:
    events = [{"type": "payment.received", "data": {"order_id": "other"}, "at_ms": 10},
              {"type": "payment.received", "data": {"order_id": "o-1", "amount": 3}, "at_ms": "5m"}]
    run = run_test(example("event-wait.yaml"), {"events": events}, context={"order_id": "o-1"})
    assert run["status"] == "completed" and run["simulated_ms"] == 300_000
    wait = run["steps"]["wait_for_payment"][0]
    assert wait["output"] == {"order_id": "o-1", "amount": 3} and wait["event_id"] == run["events"][1]["entry_id"]
    assert run["steps"]["ship"][0]["input"] == {"paid_with": "o-1"}


def test_an_event_published_before_the_wait_began_still_counts() -> None:
    events = [{"type": "invoice.paid", "data": {"invoice": "i-1"}, "after_step": "grace_period"}]
    run = run_test(example("early-event.yaml"), {"events": events}, context={"invoice": "i-1"})
    assert run["status"] == "completed"
    early = run_test(example("early-event.yaml"), {"events": [{**events[0], "after_step": None, "at_ms": 0}]},
                     context={"invoice": "i-1"})
    assert early["status"] == "completed" and early["simulated_ms"] == 1000  # the delay, then the event at once


def test_an_event_wait_times_out_without_its_event() -> None:
    run = run_test(example("event-wait.yaml"), {"events": [{"type": "payment.received",
                                                            "data": {"order_id": "o-1"}, "at_ms": "2h"}]},
                   context={"order_id": "o-1"})
    assert run["status"] == "failed" and run["simulated_ms"] == 3_600_000
    assert run["state"]["error"]["kind"] == "timeout"
    assert "waiting for event 'payment.received'" in run["state"]["error"]["message"]
    cont = run_test(example("event-timeout.yaml"), {}, context={"parcel": "p-1"})
    assert cont["status"] == "completed" and cont["steps"]["wait_for_delivery"][0]["continued"] is True


def test_a_delay_passes_on_the_simulated_clock() -> None:
    run = run_test(example("delay.yaml"))
    assert run["status"] == "completed" and run["simulated_ms"] == 500
    assert run["steps"]["cool_off"][0] == {"attempt": 1, "kind": "delay", "status": "completed", "until_ms": T0 + 500,
                                           "started_ms": T0, "output": {"delayed_ms": 500}, "completed_ms": T0 + 500}


def test_a_late_answer_loses_to_the_step_timeout() -> None:
    definition = parse_definition({"name": "slow", "version": "1", "definition": {"steps": [
        {"name": "call", "step_type": "service_call", "service": "s", "timeout": "1s"}]}})
    run = run_test(definition, {"steps": {"call": {"output": {"ok": True}, "delay_ms": "5s"}}})
    assert run["status"] == "failed" and run["state"]["error"]["kind"] == "timeout"
    assert run["simulated_ms"] == 1000
    quick = run_test(definition, {"steps": {"call": {"output": {"ok": True}, "delay_ms": 999}}})
    assert quick["status"] == "completed" and quick["simulated_ms"] == 999


def test_a_sub_workflow_is_its_mocked_outcome() -> None:
    definition = example("sub-workflow.yaml")
    run = run_test(definition, {"steps": {"credit_check": {"output": {"score": 720}}}}, context={"customer": "c"})
    assert run["status"] == "completed" and run["steps"]["open_account"][0]["input"] == {"score": 720}
    assert run["steps"]["credit_check"][0]["kind"] == "child"
    failed = run_test(definition, {"steps": {"credit_check": {"error": "child failed"}}}, context={"customer": "c"})
    assert failed["status"] == "failed" and failed["steps"]["credit_check"][0]["error"]["retryable"] is False


def test_signals_arrive_after_a_step_and_templates_read_them() -> None:
    definition = parse_definition({"name": "signals", "version": "1", "definition": {"steps": [
        {"name": "ask", "step_type": "service_call", "service": "s"},
        {"name": "wait", "step_type": "delay", "duration": "1m", "depends_on": ["ask"]},
        {"name": "act", "step_type": "service_call", "service": "s", "depends_on": ["wait"],
         "input": {"by": "{{ signals.approval.by }}"}}]}})
    run = run_test(definition, {"signals": [{"name": "approval", "payload": {"by": "ops"}, "after_step": "ask"}]})
    assert run["status"] == "completed" and run["steps"]["act"][0]["input"] == {"by": "ops"}
    assert "workflow.signal_received" in types(run)


def test_a_wait_nothing_can_satisfy_stalls_the_run_with_the_reason() -> None:
    definition = parse_definition({"name": "forever", "version": "1", "definition": {"steps": [
        {"name": "wait", "step_type": "event_wait", "event_type": "never.sent"}]}})
    run = run_test(definition, {"events": [{"type": "something.else"}]})
    assert run["status"] == "stalled" and run["state"]["status"] == "running"
    assert "wait waits for event 'never.sent'" in run["reason"]


def test_a_run_past_its_limits_is_aborted() -> None:
    definition = parse_definition({"name": "many", "version": "1", "definition": {"steps": [
        {"name": "each", "step_type": "loop", "service": "s", "items": "{{ input.items }}", "max_iterations": 5000}]}})
    run = run_test(definition, context={"items": list(range(100))}, limits=Limits(max_events=50))
    assert run["status"] == "aborted" and "50 events" in run["reason"] and len(run["history"]) >= 50
    big = run_test(definition, context={"items": list(range(3000))}, limits=Limits(max_events=3000))
    assert big["status"] == "aborted" and "work limit" in big["reason"]  # a loop's cost grows with its items
    far = run_test(example("event-wait.yaml"), context={"order_id": "o"}, limits=Limits(max_span_ms=60_000))
    assert far["status"] == "aborted" and "past the limit of 60000 ms" in far["reason"]


def test_the_history_is_the_real_history_and_folds_into_the_state() -> None:
    run = run_test(example("retry-backoff.yaml"), {"steps": {"sync": {"error": "x", "status": 502}}})
    events = [(decode_event(orjson.dumps({"type": h["type"], **h["data"]})), h["ts"]) for h in run["history"]]
    state = fold_stored(INITIAL, events)
    assert orjson.loads(orjson.dumps(state.status)) == run["state"]["status"] == "failed"
    assert [h["version"] for h in run["history"]] == list(range(1, len(events) + 1))
    assert run_test(example("retry-backoff.yaml"), {"steps": {"sync": {"error": "x", "status": 502}}}) == run


def test_every_format_runs_nodes_and_edges_included() -> None:
    doc = {"name": "support", "nodes": [
        {"id": "start", "type": "start", "config": {}},
        {"id": "classify", "type": "llm", "config": {"model": "m", "prompt": "Classify {{input.message}}"}},
        {"id": "route", "type": "conditional", "config": {"condition": "{{classify.output.category}} == 'technical'",
                                                          "true_edge": "tech", "false_edge": "general"}},
        {"id": "tech", "type": "http", "config": {"method": "POST", "url": "https://t.example/x"}},
        {"id": "general", "type": "http", "config": {"method": "POST", "url": "https://g.example/x"}}],
        "edges": [{"source": "start", "target": "classify"}, {"source": "classify", "target": "route"},
                  {"source": "route", "target": "tech"}, {"source": "route", "target": "general"}]}
    definition = parse_definition(doc)
    for category, taken, skipped in (("technical", "tech", "general"), ("billing", "general", "tech")):
        chat = {"choices": [{"message": {"content": orjson.dumps({"category": category}).decode()}}], "model": "m"}
        run = run_test(definition, {"steps": {"classify": {"output": chat}}}, context={"message": "help"})
        assert run["status"] == "completed", run.get("reason") or run["state"]["error"]
        assert statuses(run)[taken] == ["completed"] and statuses(run)[skipped] == ["skipped"]


def test_a_context_that_breaks_the_input_schema_is_refused_with_paths() -> None:
    with pytest.raises(TestInputError) as caught:
        run_test(example("input-output.yaml"), context={"email": "not-an-email", "qty": 0})
    assert {p.path for p in caught.value.problems} >= {"context.email", "context.qty"}
    with pytest.raises(TestInputError, match="context: must be an object"):
        run_test(example("delay.yaml"), context=[1])


def test_an_event_id_is_published_once() -> None:
    event = {"type": "payment.received", "data": {"order_id": "o-1"}, "id": "evt-1"}
    run = run_test(example("event-wait.yaml"), {"events": [{**event, "at_ms": "1h"}, {**event, "at_ms": 0}]},
                   context={"order_id": "o-1"})
    assert run["status"] == "completed" and len(run["events"]) == 1 and run["events"][0]["at_ms"] == 0


def test_an_execution_plan_runs_with_its_mappings() -> None:
    plan = {"name": "pipeline", "start_step": "extract", "steps": {
        "extract": {"id": "extract", "agent_name": "extractor", "next_step": "load",
                    "input_mapping": {"url": "$.workflow_input.source_url"}},
        "load": {"id": "load", "agent_name": "loader", "input_mapping": {"rows": "$.extract.output_data"}}}}
    definition = parse_definition(plan)
    run = run_test(definition, {"steps": {"extract": {"output": {"output_data": [1, 2]}}}},
                   context={"source_url": "s3://bucket/in"})
    assert run["status"] == "completed"
    assert run["steps"]["extract"][0]["input"] == {"url": "s3://bucket/in"}
    assert run["steps"]["load"][0]["queue"] == "loader"
