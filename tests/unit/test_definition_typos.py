"""Definitions that would fail, or silently fall back to defaults, are refused when validated.

Misspelt keys anywhere a document's keys are a closed set, templates that name
a step that does not exist, and templates or conditions that read a step not
upstream of the step using them. Every example and documented snippet is
still accepted as it is.
"""

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.core.definition import DefinitionError, Problem, load_definition_file, parse_definition

ROOT = Path(__file__).resolve().parents[2]
# The platform teams' own files, where a checkout has shared/ beside it (CI does).
SHARED = ROOT.parent / "shared" / "examples"
EXAMPLE_FILES = sorted(
    [*(ROOT / "engine" / "dev" / "examples").iterdir(), *(ROOT / "docs" / "examples").iterdir(),
     *(SHARED.iterdir() if SHARED.is_dir() else [])],
    key=str,
)
DEFINITION_FILES = [f for f in EXAMPLE_FILES if f.suffix in (".json", ".yaml", ".yml") and not f.name.endswith(".run.json")]


def problems_of(source: Any, **kwargs: Any) -> list[Problem]:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(source, **kwargs)
    return caught.value.problems


def problem_at(problems: list[Problem], path: str) -> str:
    found = [p.message for p in problems if p.path == path]
    assert len(found) == 1, problems
    return found[0]


def call(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "service_call", "service": "svc", **fields}


def bare(*steps: dict[str, Any], **body: Any) -> dict[str, Any]:
    return {"name": "wf", "version": "1", "steps": list(steps), **body}


def envelope(*steps: dict[str, Any], **definition: Any) -> dict[str, Any]:
    return {"name": "wf", "version": "1", "definition": {"steps": list(steps), **definition}}


def yaml_doc(*steps: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "workflow/v1", "kind": "Workflow", "metadata": {"name": "wf", "version": "1"},
            "spec": {"steps": list(steps), **spec}}


# -- (a) templates naming a step that does not exist ----------------------------------------

def test_a_template_naming_a_missing_step_is_refused() -> None:
    # given a payload reading a step nobody defined
    doc = yaml_doc(call("charge"), call("ship", depends_on=["charge"],
                                          payload={"charge_id": "{{ steps.nope.output }}"}))
    # when it is validated
    problems = problems_of(doc)
    # then the payload field is named
    assert problems == [Problem("spec.steps[1].payload.charge_id", "reads step 'nope', which does not exist")]


def test_a_misspelt_step_in_a_template_gets_a_suggestion() -> None:
    doc = yaml_doc(call("charge"), call("ship", depends_on=["charge"], endpoint="/ship/{{ steps.chrage.output.id }}"))
    message = problem_at(problems_of(doc), "spec.steps[1].endpoint")
    assert message == "reads step 'chrage', which does not exist (did you mean 'charge'?)"


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        (yaml_doc(call("a", condition="steps.nope.completed")), "spec.steps[0].condition"),
        (yaml_doc(call("a"), output={"values": {"x": "${steps.nope.output}"}}), "spec.output.values.x"),
        (yaml_doc(call("a"), compensation={"steps": [call("undo", endpoint="/u/{{ steps.nope.output.id }}")]}),
         "spec.compensation.steps[0].endpoint"),
        (envelope(call("a"), error_handlers=[{"action": "notify", "target": "ops", "endpoint": "/n/{{ steps.nope.x }}"}]),
         "definition.error_handlers[0].endpoint"),
        (yaml_doc({"name": "v", "type": "validation", "validation_rules": [
            {"field": "f", "rule": "r", "service": "s", "endpoint": "{{ default(steps.nope.output, 'x') }}"}]}),
         "spec.steps[0].validation_rules[0].endpoint"),
    ],
)
def test_a_missing_step_is_refused_wherever_templates_are(doc: dict[str, Any], path: str) -> None:
    assert problem_at(problems_of(doc), path) == "reads step 'nope', which does not exist"


# -- (b) misspelt retry_policy fields --------------------------------------------------------

def test_misspelt_retry_policy_fields_are_refused_with_suggestions() -> None:
    # given a step policy whose two fields would silently fall back to the defaults
    doc = yaml_doc(call("a", retry_policy={"backof": "exponential", "max_attemps": 4}))
    # when it is validated
    problems = problems_of(doc)
    # then each is named, with the field meant
    assert problems == [
        Problem("spec.steps[0].retry_policy.backof", "unknown field 'backof' (did you mean 'backoff'?)"),
        Problem("spec.steps[0].retry_policy.max_attemps", "unknown field 'max_attemps' (did you mean 'max_attempts'?)"),
    ]


def test_the_workflow_default_retry_policy_is_checked_too() -> None:
    doc = yaml_doc(call("a"), config={"retry_policy": {"max_attempts": 3, "inital_delay": "5s"}})
    message = problem_at(problems_of(doc), "spec.config.retry_policy.inital_delay")
    assert message == "unknown field 'inital_delay' (did you mean 'initial_delay'?)"


def test_a_retry_policy_in_json_under_a_step_config_is_checked() -> None:
    doc = envelope({"name": "a", "step_type": "service_call", "config": {"service": "s", "retry_policy": {"backoff_bsae": 2}}})
    message = problem_at(problems_of(doc), "definition.steps[0].config.retry_policy.backoff_bsae")
    assert message == "unknown field 'backoff_bsae' (did you mean 'backoff_base'?)"


# -- (c) misspelt fields at every other level ---------------------------------------------------

@pytest.mark.parametrize(
    ("doc", "path", "message"),
    [
        # JSON envelope: the top level and the definition body
        ({**envelope(call("a")), "descripton": "x"}, "descripton", "unknown field 'descripton' (did you mean 'description'?)"),
        (envelope(call("a"), concurency=4), "definition.concurency",
         "unknown field 'concurency' (did you mean 'concurrency'?)"),
        (yaml_doc(call("a"), concurency={"key": "{{ tenant }}"}), "spec.concurency",
         "unknown field 'concurency' (did you mean 'concurrency'?)"),
        (envelope(call("a"), concurrency={"key": "{{ tenant }}", "limt": 2}), "definition.concurrency.limt",
         "unknown field 'limt' (did you mean 'limit'?)"),
        (yaml_doc(call("a"), concurrency={"key": "{{ tenant }}", "on_limt": "queue"}), "spec.concurrency.on_limt",
         "unknown field 'on_limt' (did you mean 'on_limit'?)"),
        (envelope(call("a"), error_handler=[]), "definition.error_handler",
         "unknown field 'error_handler' (did you mean 'error_handlers'?)"),
        # bare body
        (bare(call("a"), timout="5s"), "timout", "unknown field 'timout' (did you mean 'timeout'?)"),
        # YAML: top level, metadata, spec, config
        ({**yaml_doc(call("a")), "kindd": "Workflow"}, "kindd", "unknown field 'kindd' (did you mean 'kind'?)"),
        ({**yaml_doc(call("a")), "metadata": {"name": "wf", "version": "1", "descripton": "x"}}, "metadata.descripton",
         "unknown field 'descripton' (did you mean 'description'?)"),
        (yaml_doc(call("a"), compensaton={"steps": [call("u")]}), "spec.compensaton",
         "unknown field 'compensaton' (did you mean 'compensation'?)"),
        (yaml_doc(call("a"), config={"timout": "30m"}), "spec.config.timout",
         "unknown field 'timout' (did you mean 'timeout'?)"),
        # input and output blocks
        (yaml_doc(call("a"), input={"schemas": {"type": "object"}}), "spec.input.schemas",
         "unknown field 'schemas' (did you mean 'schema'?)"),
        (yaml_doc(call("a"), output={"value": {"x": "{{ input.x }}"}}), "spec.output.value",
         "unknown field 'value' (did you mean 'values'?)"),
        # compensation block
        (yaml_doc(call("a"), compensation={"steps": [call("u")], "stesp": []}), "spec.compensation.stesp",
         "unknown field 'stesp' (did you mean 'steps'?)"),
        # step handlers
        (yaml_doc(call("a", on_failure={"action": "terminate", "mesage": "x"})), "spec.steps[0].on_failure.mesage",
         "unknown field 'mesage' (did you mean 'message'?)"),
        (yaml_doc({"name": "w", "type": "event_wait", "event_type": "e", "timeout": "1s",
                   "on_timeout": {"action": "notify", "target": "ops", "endpiont": "/x"}}),
         "spec.steps[0].on_timeout.endpiont", "unknown field 'endpiont' (did you mean 'endpoint'?)"),
        # error_handlers entries, inside on_error and written inline
        (envelope(call("a"), error_handlers=[{"step": "a", "on_error": {"action": "retry", "max_retrys": 2}}]),
         "definition.error_handlers[0].on_error.max_retrys", "unknown field 'max_retrys' (did you mean 'max_retries'?)"),
        (envelope(call("a"), error_handlers=[{"step": "a", "action": "retry", "backoff_second": 5}]),
         "definition.error_handlers[0].backoff_second",
         "unknown field 'backoff_second' (did you mean 'backoff_seconds'?)"),
        # validation rules
        (yaml_doc({"name": "v", "type": "validation", "validation_rules": [
            {"field": "email", "rule": "unique", "service": "users", "endpont": "/v"}]}),
         "spec.steps[0].validation_rules[0].endpont", "unknown field 'endpont' (did you mean 'endpoint'?)"),
    ],
)
def test_a_misspelt_key_is_refused_with_its_path(doc: dict[str, Any], path: str, message: str) -> None:
    assert problem_at(problems_of(doc), path) == message


def test_a_step_typo_is_still_reported_as_before() -> None:
    doc = envelope(call("a"), call("b", depend_on=["a"]))
    assert problems_of(doc) == [
        Problem("definition.steps[1].depend_on", "unknown field 'depend_on' (did you mean 'depends_on'?)")]


def test_a_known_key_in_a_place_that_ignores_it_says_so() -> None:
    # given handler keys that on_failure's retry (an attempt budget) and an entry beside on_error never read
    doc = envelope(call("a", on_failure={"action": "retry", "max_retries": 3}),
                   call("b"), error_handlers=[{"step": "b", "on_error": {"action": "continue"}, "action": "retry"}])
    problems = problems_of(doc)
    assert problem_at(problems, "definition.steps[0].on_failure.max_retries").startswith(
        "not used by on_failure action 'retry', which sets only max_attempts")
    assert problem_at(problems, "definition.error_handlers[0].action") == "ignored beside on_error: move it into on_error"


def test_every_problem_is_listed_at_once() -> None:
    doc = yaml_doc(call("a", retry_policy={"backof": "fixed"}), call("b", payload={"x": "{{ steps.nope.x }}"}),
                   confg={"timeout": "1m"})
    assert [p.path for p in problems_of(doc)] == ["spec.confg", "spec.steps[0].retry_policy.backof",
                                                   "spec.steps[1].payload.x"]


def test_free_form_maps_stay_free() -> None:
    # given author-owned keys in payloads, output mappings, filters, tags, labels and schemas
    doc = yaml_doc(
        call("a", payload={"anything": 1, "retry_policy": {"backof": "not ours"}}, output={"whatever": "{{ response.x }}"},
             tags=["t"], labels={"team": "x"}, metadata={"owner": "y"}),
        {"name": "w", "type": "event_wait", "event_type": "e", "depends_on": ["a"], "filter": {"odd_key": 1}},
        input={"schema": {"type": "object", "properties": {"concurency": {"type": "integer"}}, "x-extension": True}},
        output={"values": {"free": "{{ steps.a.output }}"}, "schema": {"type": "object", "x-note": "y"}},
    )
    doc["metadata"].update(tags=["a", "b"], labels={"any": "thing"})
    # when it is validated, then it is accepted
    assert parse_definition(doc).name == "wf"


# -- templates reading a step that is not upstream ---------------------------------------------

def test_a_template_reading_a_parallel_step_is_refused_naming_both() -> None:
    # given two steps after `a`, one reading the other although they run in parallel
    doc = yaml_doc(call("a"), call("charge", depends_on=["a"]),
                   call("ship", depends_on=["a"], payload={"charge_id": "{{ steps.charge.output.id }}"}))
    # when it is validated
    message = problem_at(problems_of(doc), "spec.steps[2].payload.charge_id")
    # then the message names the reader and the step it reads
    assert message == ("step 'ship' reads step 'charge', which is not upstream of it, so it may not have run: "
                       "add 'charge' to the depends_on of 'ship' (or of a step it depends on)")


def test_a_template_reading_a_later_step_is_refused() -> None:
    doc = envelope(call("a", input={"x": "{{ steps.b.output }}"}), call("b", depends_on=["a"]))
    assert "step 'a' reads step 'b', which is not upstream of it" in problem_at(problems_of(doc), "definition.steps[0].input.x")


def test_a_step_reading_itself_before_it_runs_is_refused() -> None:
    doc = yaml_doc({"name": "each", "type": "loop", "service": "s", "items": "{{ steps.each.output.items }}"})
    assert problem_at(problems_of(doc), "spec.steps[0].items") == "step 'each' reads itself before it has run"


def test_a_condition_reading_a_step_not_upstream_is_refused() -> None:
    doc = yaml_doc(call("a"), call("b", condition="{{ steps.a.completed }}"))
    assert "step 'b' reads step 'a', which is not upstream of it" in problem_at(problems_of(doc), "spec.steps[1].condition")


def test_the_workflow_output_may_not_read_a_compensation_step() -> None:
    doc = yaml_doc(call("a"), compensation={"steps": [call("undo")]}, output={"values": {"u": "{{ steps.undo.output }}"}})
    assert problem_at(problems_of(doc), "spec.output.values.u") == (
        "reads compensation step 'undo', which runs only after the main flow failed")


def test_reads_of_steps_that_have_run_are_accepted() -> None:
    # given reads along depends_on (directly and transitively), a conditional edge, the step's own
    # output mapping and failure handler, compensation and the workflow output
    doc = yaml_doc(
        call("a"),
        call("b", depends_on=["a"], payload={"x": "{{ steps.a.output.x }}"}),
        call("c", depends_on=["b"], endpoint="/c/{{ steps.a.output.id }}", condition="steps.b.completed",
             output={"attempt": "{{ steps.c.attempt }}", "id": "{{ response.id }}"},
             on_failure={"action": "notify", "target": "ops", "endpoint": "/n/{{ steps.c.status }}"}),
        {"name": "gate", "type": "conditional", "depends_on": ["c"], "condition": "steps.c.output.id != null",
         "true_edge": "yes"},
        call("yes", payload={"gate": "{{ steps.gate.output.result }}", "a": "{{ steps.a.output }}"}),
        compensation={"steps": [call("undo", compensates="b", payload={"y": "{{ steps.yes.output }}"},
                                     condition="steps.c.completed and steps.undo2.skipped"),
                                call("undo2")]},
        output={"values": {"all": ["{{ steps.a.output }}", "{{ steps.yes.output }}"]}},
    )
    # when it is validated, then it is accepted
    d = parse_definition(doc)
    assert d.step("yes").depends_on == ("gate",)


def test_ordering_by_sequence_counts_as_upstream() -> None:
    doc = envelope({"name": "a", "step_type": "service_call", "service": "s", "sequence": 1},
                   {"name": "b", "step_type": "service_call", "service": "s", "sequence": 2},
                   {"name": "c", "step_type": "service_call", "service": "s", "sequence": 3,
                    "input": {"a": "{{ steps.a.output }}", "b": "${steps.b.output}"}})
    assert parse_definition(doc).step("c").depends_on == ("b",)
    same_sequence = envelope({"name": "a", "step_type": "service_call", "service": "s", "sequence": 1},
                             {"name": "b", "step_type": "service_call", "service": "s", "sequence": 1,
                              "input": {"a": "{{ steps.a.output }}"}})
    assert "step 'b' reads step 'a'" in problem_at(problems_of(same_sequence), "definition.steps[1].input.a")


def test_a_long_chain_reading_its_first_step_is_checked_quickly() -> None:
    steps = [call("s0")] + [call(f"s{i}", depends_on=[f"s{i - 1}"], payload={"x": "{{ steps.s0.output }}"})
                            for i in range(1, 3000)]
    assert len(parse_definition(bare(*steps)).steps) == 3000


# -- every example and documented definition is accepted as written ------------------------------

@pytest.mark.parametrize("path", DEFINITION_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_example_file_is_accepted(path: Path) -> None:
    bare_body = path.suffix == ".json" and "definition" not in json.loads(path.read_text())
    definition = load_definition_file(path, **({"name": path.stem, "version": "1"} if bare_body else {}))
    assert definition.steps


def _documented_definitions() -> list[tuple[str, Any]]:
    found = []
    for doc_file in (ROOT / "docs" / "language.md", ROOT / "README.md"):
        for n, (lang, body) in enumerate(re.findall(r"```(yaml|json)\n(.*?)```", doc_file.read_text(), re.S)):
            doc = yaml.safe_load(body)  # JSON is YAML
            if isinstance(doc, dict) and {"spec", "definition"} & doc.keys():
                found.append((f"{doc_file.name}#{n}", doc))
    return found


@pytest.mark.parametrize(("where", "doc"), _documented_definitions(), ids=[w for w, _ in _documented_definitions()])
def test_every_documented_definition_is_accepted(where: str, doc: Any) -> None:
    assert parse_definition(doc).steps


def test_the_keys_the_examples_rely_on_are_accepted() -> None:
    # given the user-registration example, which uses keys foldflow reads but ignores
    registration = yaml.safe_load((ROOT / "engine" / "dev" / "examples" / "user-registration.yaml").read_text())
    assert registration["metadata"]["tags"]
    assert registration["spec"]["steps"][4]["on_timeout"]["compensation_workflow"]
    assert registration["spec"]["steps"][2]["parallel"] is True
    # when it is validated, then it is accepted
    assert parse_definition(registration).name == "user-registration-workflow"


def test_a_stored_definition_loads_even_when_a_newer_check_would_refuse_it() -> None:
    """Registration is strict; loading what was stored before a check existed is not, so
    instances already running on such a definition are never dead-lettered for it."""
    import orjson

    from engine.errors import PoisonMessage
    from engine.store.catalog import parse_stored

    doc = {"name": "old", "version": "1", "definition": {
        "concurency": {"limit": 1},
        "steps": [
            {"name": "a", "step_type": "service_call", "service": "s",
             "retry_policy": {"max_attemps": 4}},
            {"name": "b", "step_type": "service_call", "service": "s", "input": {"x": "${steps.nope.output}"}},
        ]}}
    with pytest.raises(DefinitionError):
        parse_definition(doc)
    stored = parse_stored(orjson.dumps({**doc, "__name__": "old", "__version__": "1"}))
    assert [s.name for s in stored.steps] == ["a", "b"]
    with pytest.raises(PoisonMessage, match="no longer validates"):  # what never validated still does not
        parse_stored(orjson.dumps({"name": "old", "version": "1", "definition": {"steps": []}}))


def test_definitions_validate_reports_a_misspelt_top_level_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`foldflow definitions validate` refuses `definition.concurency` (exit 2), naming the path and the fix."""
    from engine.ops.cli import main

    path = tmp_path / "typo.json"
    path.write_text(json.dumps(envelope(call("a"), concurency={"key": "{{ input.user }}", "limit": 1})))
    assert main(["definitions", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "definition.concurency" in err and "did you mean 'concurrency'?" in err, err
    path.write_text(json.dumps(envelope(call("a"), concurrency={"key": "{{ input.user }}", "limit": 1})))
    assert main(["definitions", "validate", str(path)]) == 0
