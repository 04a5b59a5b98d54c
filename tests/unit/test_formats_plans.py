"""Seed 003's execution plans (engine/core/formats/plans.py): the chain, the
JSONPath mappings as strict templates, and every problem at its plan path."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from engine.core.decide import decide_and_fold
from engine.core.definition import Definition, DefinitionError, parse_definition
from engine.core.model import INITIAL, CompleteStep, Envelope, StartWorkflow
from tests.support.tools import ROOT

EXAMPLE = orjson.loads((ROOT / "docs" / "examples" / "data-pipeline.json").read_bytes())
T0 = 1_700_000_000_000


def doc() -> dict[str, Any]:
    return copy.deepcopy(EXAMPLE)


def problems(document: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(document)
    return [(p.path, p.message) for p in caught.value.problems]


class Run:
    def __init__(self, d: Definition, context: dict[str, Any]) -> None:
        self.d, self.state, self.n = d, INITIAL, 0
        self.send(StartWorkflow(workflow=d.name, context=context))

    def send(self, command: Any) -> list[Any]:
        self.n += 1
        events, self.state = decide_and_fold(
            self.state, Envelope(instance_id="i-1", entry_id=f"{self.n}-0", command=command), self.d, T0)
        return events

    def complete(self, step: str, output: Any) -> list[Any]:
        return self.send(CompleteStep(step=step, attempt=1, task_id=f"i-1:{step}:1", output=output))


def test_the_plan_becomes_a_chain_of_service_calls() -> None:
    d = parse_definition(EXAMPLE)
    assert (d.name, d.version) == ("data-pipeline", "1")
    assert [(s.name, s.service, s.depends_on) for s in d.steps] == [
        ("extract", "extractor", ()), ("transform", "transformer", ("extract",)), ("load", "loader", ("transform",))]
    assert d.step("extract").input == {
        "source_url": "{{ required(input.source_url, 'input_mapping.source_url: $.workflow_input.source_url') }}",
        "format": "csv"}
    assert d.step("load").input["table"] == (
        "{{ required(get(input, 'target table'), "
        "'input_mapping.table: $.workflow_input[\\'target table\\']') }}")


def test_mappings_read_the_input_and_earlier_outputs_as_they_are() -> None:
    run = Run(parse_definition(EXAMPLE), {"source_url": "s3://a", "rules": ["dedupe"], "target table": "t"})
    assert run.state.step("extract").status == "scheduled"
    events = run.complete("extract", {"rows": [{"id": 1}]})
    assert events[-1].input == {"records": {"rows": [{"id": 1}]}, "rules": ["dedupe"]}
    events = run.complete("transform", {"input": {"records": [1, 2]}})
    assert events[-1].input == {"rows": [1, 2], "table": "t"}
    run.complete("load", {"loaded": 2})
    assert run.state.status == "completed"


def test_a_path_that_matches_nothing_fails_the_step_naming_the_path() -> None:
    run = Run(parse_definition(EXAMPLE), {"rules": []})  # no source_url
    failed = run.state.step("extract")
    assert failed.status == "failed" and run.state.status == "failed"
    assert failed.error is not None
    assert failed.error.kind == "template"
    assert "input_mapping.source_url: $.workflow_input.source_url matched nothing" in failed.error.message
    run = Run(parse_definition(EXAMPLE), {"source_url": "s3://a", "rules": [], "target table": "t"})
    run.complete("extract", {})
    run.complete("transform", {"input": {}})  # no records: $.transform.output_data.input.records
    assert "$.transform.output_data.input.records matched nothing" in run.state.step("load").error.message


def test_name_spellings_and_non_string_literals() -> None:
    plan = {"id": "p", "start_step": "a", "steps": {"a": {"agent_name": "x", "input_mapping": {
        "n": 3, "obj": {"k": "{{ not.a.template }}"}, "text": "plain", "braces": "x ${nor.this}", "whole": "$"}}}}
    with pytest.raises(DefinitionError, match=r"input_mapping.whole: \$: must start with \$.workflow_input"):
        parse_definition(plan)
    del plan["steps"]["a"]["input_mapping"]["whole"]  # type: ignore[index]
    d = parse_definition(plan)
    assert d.name == "p"
    run = Run(d, {})
    assert run.state.steps["a"].status == "scheduled"
    from engine.core.language.expressions import render

    assert render(d.step("a").input, {"input": {}}) == {"n": 3, "obj": {"k": "{{ not.a.template }}"}, "text": "plain",
                                                         "braces": "x ${nor.this}"}
    assert parse_definition({**plan, "name": "first", "workflow_id": "w"}).name == "first"
    assert parse_definition({**plan, "id": None, "workflow_id": "w"}).name == "w"


PROBLEMS = [
    (lambda d: d["steps"]["extract"]["input_mapping"].update(x="$.load.output_data"),
     "steps.extract.input_mapping.x", "'load' must come before 'extract' in the next_step chain"),
    (lambda d: d["steps"]["load"].update(next_step="extract"), "steps.load.next_step",
     "cycle: extract -> transform -> load -> extract"),
    (lambda d: d["steps"]["load"].update(next_step="nowhere"), "steps.load.next_step", "unknown step 'nowhere'"),
    (lambda d: d["steps"].update(orphan={"agent_name": "x"}), "steps.orphan", "unreachable"),
    (lambda d: d.update(start_step="extrac"), "start_step", "did you mean 'extract'"),
    (lambda d: d.pop("start_step"), "start_step", "required"),
    (lambda d: d["steps"]["extract"]["input_mapping"].update(x="$.workflow_input..a"),
     "steps.extract.input_mapping.x", "invalid JSONPath"),
    (lambda d: d["steps"]["extract"]["input_mapping"].update(x="$.foo.bar"), "steps.extract.input_mapping.x",
     "must start with $.workflow_input or $.<step>.output_data"),
    (lambda d: d["steps"]["transform"]["input_mapping"].update(x="$.extract.output"),
     "steps.transform.input_mapping.x", "read a step's output as $.extract.output_data"),
    (lambda d: d["steps"]["extract"].update(agent_nam="x"), "steps.extract.agent_nam", "did you mean 'agent_name'"),
    (lambda d: d["steps"]["extract"].pop("agent_name"), "steps.extract.agent_name", "required"),
    (lambda d: d["steps"]["extract"].update(id="other"), "steps.extract.id", "must be the step's key"),
    (lambda d: d["steps"]["extract"].update(timeout="x"), "steps.extract.timeout", "not a duration"),
    (lambda d: d["steps"]["extract"].update(input_mapping=[1]), "steps.extract.input_mapping", "must be an object"),
    (lambda d: d["steps"].update({"bad key": {"agent_name": "x"}}), "steps.bad key", "invalid step id"),
    (lambda d: d["steps"].update(workflow_input={"agent_name": "x"}), "steps.workflow_input", "reserved"),
    (lambda d: d["steps"].update(extra=5), "steps.extra", "must be an object"),
    (lambda d: d.pop("workflow_id"), "name", "required: name, workflow_id or id"),
    (lambda d: d.update(owner="me"), "owner", "unknown field"),
    (lambda d: d.update(steps={}), "steps", "at least one step"),
]


@pytest.mark.parametrize(("change", "path", "message"), PROBLEMS, ids=[p[1] + ":" + p[2] for p in PROBLEMS])
def test_each_problem_names_the_path_of_the_plan(change: Any, path: str, message: str) -> None:
    document = doc()
    change(document)
    found = problems(document)
    assert any(p == path and message in m for p, m in found), found


def test_a_cycle_off_the_chain_is_reported_once_per_step() -> None:
    document = doc()
    document["steps"].update(a={"agent_name": "x", "next_step": "b"}, b={"agent_name": "x", "next_step": "a"})
    assert sorted(problems(document)) == [
        ("steps.a", "unreachable: no next_step chain from start_step 'extract' leads to it"),
        ("steps.b", "unreachable: no next_step chain from start_step 'extract' leads to it")]

