import copy
import json
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from engine.core.definition import (
    Definition,
    DefinitionError,
    ErrorHandler,
    Problem,
    RetryPolicy,
    canonical_json,
    document_of,
    load_definition_file,
    parse_definition,
    parse_duration_ms,
    version_sort_key,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "engine" / "dev" / "examples"
AGENT_JSON = EXAMPLES / "agent-task-execution.json"
REGISTRATION_YAML = EXAMPLES / "user-registration.yaml"


def bare(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"steps": list(steps), **extra}


def call(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "service_call", "service": "svc", **fields}


def problems_of(source: Any, **kwargs: Any) -> list[Problem]:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(source, **kwargs)
    return caught.value.problems


def only_problem(source: Any, **kwargs: Any) -> Problem:
    problems = problems_of(source, **kwargs)
    assert len(problems) == 1, problems
    return problems[0]


# The JSON example


def test_json_example_parses() -> None:
    d = load_definition_file(AGENT_JSON)
    assert (d.name, d.version) == ("Agent Task Execution", "1.0.0")
    assert d.description == "Workflow for agent task execution process"
    assert [s.name for s in d.steps] == [
        "task_preparation", "agent_assignment", "execution_monitoring", "result_processing"
    ]
    assert [s.depends_on for s in d.steps] == [
        (), ("task_preparation",), ("agent_assignment",), ("execution_monitoring",)
    ]
    assert d.roots() == ("task_preparation",)
    assert d.dependents("agent_assignment") == ("execution_monitoring",)
    assert d.dependents("result_processing") == ()


def test_json_example_steps() -> None:
    d = load_definition_file(AGENT_JSON)
    prep = d.step("task_preparation")
    assert (prep.type, prep.service, prep.endpoint) == ("service_call", "planning-system", "/tasks/{task_id}/prepare")
    assert prep.retry_policy == RetryPolicy(max_attempts=3, backoff_base=2.0, backoff_multiplier=1000)
    assert [prep.retry_policy.delay_ms(a) for a in (1, 2, 3)] == [1000, 2000, 4000]
    wait = d.step("execution_monitoring")
    assert wait.type == "event_wait"
    assert wait.event_type == "agent.task_completed"
    assert wait.event_filter == {"task_id": "${context.task_id}", "agent_id": "${context.agent_id}"}
    assert wait.timeout_ms == 3_600_000
    assert wait.retry_policy == RetryPolicy()
    with pytest.raises(KeyError):
        d.step("nope")


def test_json_example_error_handlers() -> None:
    d = load_definition_file(AGENT_JSON)
    retry = ErrorHandler(step="agent_assignment", action="retry", max_retries=3, backoff_ms=60_000)
    notify = ErrorHandler(
        step="execution_monitoring", action="notify", target="project-coordinator",
        endpoint="/projects/{project_id}/notifications",
    )
    assert d.error_handlers == (retry, notify)
    assert d.step("agent_assignment").on_error == retry
    assert d.step("execution_monitoring").on_error == notify
    assert d.step("task_preparation").on_error is None


def test_sources_agree() -> None:
    text = AGENT_JSON.read_text()
    from_text = parse_definition(text)
    assert parse_definition(text.encode()) == from_text
    assert parse_definition(json.loads(text)) == from_text
    assert parse_definition(text, fmt="yaml") == from_text  # JSON is YAML too


def test_definition_survives_msgspec_round_trip() -> None:
    d = load_definition_file(AGENT_JSON)
    again = msgspec.json.decode(msgspec.json.encode(d), type=Definition)
    assert again == d
    assert again.step("result_processing").depends_on == ("execution_monitoring",)
    assert again.roots() == d.roots()


def test_keyword_arguments_override_the_envelope() -> None:
    d = load_definition_file(AGENT_JSON, name="renamed", version="2.0.0")
    assert (d.name, d.version) == ("renamed", "2.0.0")


# Bare definitions and ordering


def test_bare_with_name_and_version() -> None:
    d = parse_definition(bare(call("a"), call("b", depends_on=["a"])), name="wf", version="1")
    assert (d.name, d.version) == ("wf", "1")
    assert d.step("b").depends_on == ("a",)
    assert d.step("a").input is None


def test_bare_without_name_and_version() -> None:
    hint = "required (pass --name/--version for a bare definition)"
    assert problems_of(bare(call("a"))) == [Problem("name", hint), Problem("version", hint)]
    assert problems_of(bare(call("a")), name="wf") == [Problem("version", hint)]


def test_sequence_only_ordering() -> None:
    d = parse_definition(
        bare(
            call("first", sequence=1),
            call("left", sequence=5),
            call("right", sequence=5),
            call("join", sequence=9),
            call("loose"),
            call("explicit_root", sequence=10, depends_on=[]),
        ),
        name="wf", version="1",
    )
    assert d.step("first").depends_on == ()
    assert d.step("left").depends_on == ("first",)
    assert d.step("right").depends_on == ("first",)
    assert d.step("join").depends_on == ("left", "right")
    assert d.roots() == ("first", "loose", "explicit_root")
    assert d.dependents("first") == ("left", "right")


def test_depends_on_wins_over_sequence() -> None:
    d = parse_definition(
        bare(call("a", sequence=1), call("b", sequence=2), call("c", sequence=3, depends_on=["a"])),
        name="wf", version="1",
    )
    assert d.step("c").depends_on == ("a",)
    assert d.dependents("b") == ()


# Validation problems, one at a time, with exact paths


def envelope(*steps: Any, **definition: Any) -> dict[str, Any]:
    return {"name": "wf", "version": "1.0.0", "definition": {"steps": list(steps), **definition}}


@pytest.mark.parametrize(
    ("doc", "path", "message"),
    [
        ({"name": "wf", "version": "1", "definition": {}}, "definition.steps", "must be a non-empty list"),
        (envelope(), "definition.steps", "must be a non-empty list"),
        ({"name": "wf", "version": "1", "definition": {"steps": {}}}, "definition.steps", "non-empty list"),
        (envelope(call("a"), "b"), "definition.steps[1]", "must be an object, got a string"),
        (envelope({"type": "service_call", "service": "s"}), "definition.steps[0].name", "required"),
        (envelope(call("a b")), "definition.steps[0].name", "invalid step name 'a b'"),
        (envelope(call("x" * 101)), "definition.steps[0].name", "invalid step name"),
        (envelope(call("a"), call("a")), "definition.steps[1].name", "duplicate step name 'a'"),
        (envelope({"name": "a", "service": "s"}), "definition.steps[0].type", "required"),
        (envelope(call("a", type="teleport")), "definition.steps[0].type",
         "unknown step type 'teleport' (supported: service_call, event_wait, conditional, loop, validation, "
         "delay, sub_workflow)"),
        (envelope({"name": "a", "type": "service_call"}), "definition.steps[0].service",
         "required for service_call steps"),
        (envelope({"name": "a", "type": "event_wait"}), "definition.steps[0].event_type",
         "required for event_wait steps"),
        (envelope(call("a"), call("b", depends_on=["zz"])), "definition.steps[1].depends_on[0]",
         "unknown step 'zz'"),
        (envelope(call("a", depends_on=["a"])), "definition.steps[0].depends_on[0]", "depend on itself"),
        (envelope(call("a", depends_on="b")), "definition.steps[0].depends_on", "must be a list"),
        (envelope(call("a"), call("b", depends_on=["a", 3])), "definition.steps[1].depends_on[1]",
         "must be a step name"),
        (envelope(call("a", sequence="1")), "definition.steps[0].sequence", "must be an integer"),
        (envelope(call("a", timeout="soon")), "definition.steps[0].timeout", "not a duration"),
        (envelope(call("a", retry_policy={"max_attempts": 0})), "definition.steps[0].retry_policy.max_attempts",
         "must be an integer >= 1"),
        (envelope(call("a", retry_policy={"max_attempts": True})),
         "definition.steps[0].retry_policy.max_attempts", "must be an integer"),
        (envelope(call("a", retry_policy={"backoff_base": "x"})),
         "definition.steps[0].retry_policy.backoff_base", "must be a number"),
        (envelope(call("a", retry_policy=[])), "definition.steps[0].retry_policy", "must be an object"),
        (envelope(call("a", endpoint="/x/{{ nope.y }}")), "definition.steps[0].endpoint", "unknown root 'nope'"),
        (envelope(call("a", input={"k": ["ok", "{{ input.x"]})), "definition.steps[0].input.k[1]",
         "unclosed '{{'"),
        (envelope(call("a", payload={"k": "${ }"})), "definition.steps[0].payload.k", "empty expression"),
        (envelope(call("a", output={"id": "{{ response.id | x }}"})), "definition.steps[0].output.id",
         "unexpected"),
        (envelope({"name": "w", "type": "event_wait", "event_type": "e", "event_filter": {"k": "{{ f(x) }}"}}),
         "definition.steps[0].event_filter.k", "unknown function 'f'"),
        (envelope(call("a"), error_handlers=[{"step": "zz", "on_error": {"action": "retry"}}]),
         "definition.error_handlers[0].step", "unknown step 'zz'"),
        (envelope(call("a"), error_handlers=[{"step": "a", "on_error": {"action": "explode"}}]),
         "definition.error_handlers[0].on_error.action", "unknown action 'explode'"),
        (envelope(call("a"), error_handlers=[{"step": "a", "on_error": {}}]),
         "definition.error_handlers[0].on_error.action", "required"),
        (envelope(call("a"), error_handlers=[{"step": "a", "on_error": {"action": "notify"}}]),
         "definition.error_handlers[0].on_error.target", "required for notify"),
        (envelope(call("a"), error_handlers={}), "definition.error_handlers", "must be a list"),
        (envelope(call("a"), error_handlers=[{"step": "a", "on_error": {"action": "retry"}},
                                             {"step": "a", "on_error": {"action": "terminate"}}]),
         "definition.error_handlers[1]", "already has an error handler at definition.error_handlers[0]"),
        ({"version": "1", "definition": {"steps": [call("a")]}}, "name", "required"),
        ({"name": "wf", "version": "1 0", "definition": {"steps": [call("a")]}}, "version", "must be up to 64"),
        ({"name": " ", "version": "1", "definition": {"steps": [call("a")]}}, "name", "not blank"),
        ({"name": "wf", "version": "1", "description": 5, "definition": {"steps": [call("a")]}},
         "description", "must be a string"),
        ({"name": "wf", "version": "1", "definition": []}, "definition", "must be an object"),
        ({"name": "wf", "version": "1", "definition": None}, "definition", "required"),
        ({"apiVersion": "v1", "metadata": {"name": "wf", "version": "1"}}, "spec", "required"),
    ],
)
def test_single_problem(doc: dict[str, Any], path: str, message: str) -> None:
    problem = only_problem(doc)
    assert problem.path == path
    assert message in problem.message


def test_dependency_cycle_names_the_cycle() -> None:
    doc = envelope(call("a", depends_on=["c"]), call("b", depends_on=["a"]), call("c", depends_on=["b"]))
    assert only_problem(doc) == Problem("definition.steps[0].depends_on", "dependency cycle: a -> c -> b -> a")


def test_two_step_cycle() -> None:
    doc = envelope(call("root"), call("a", depends_on=["root", "b"]), call("b", depends_on=["a"]))
    assert only_problem(doc) == Problem("definition.steps[1].depends_on", "dependency cycle: a -> b -> a")


def test_long_chain_does_not_overflow() -> None:
    steps = [call("s0")] + [call(f"s{i}", depends_on=[f"s{i - 1}"]) for i in range(1, 3000)]
    assert len(parse_definition(envelope(*steps)).steps) == 3000
    steps[0] = call("s0", depends_on=["s2999"])
    assert "dependency cycle: s0 -> s2999" in only_problem(envelope(*steps)).message


def test_all_problems_at_once() -> None:
    doc = {
        "steps": [
            {"name": "ok", "type": "service_call", "service": "s"},
            {"name": "bad name", "type": "service_call"},
            {"name": "w", "type": "teleport", "depends_on": ["ghost"]},
            {"name": "ok", "type": "event_wait", "timeout": "forever"},
            7,
        ],
        "error_handlers": [{"step": "w", "on_error": {"action": "notify"}}],
    }
    problems = problems_of(doc)
    assert [(p.path, p.message.split(" (")[0]) for p in problems] == [
        ("name", "required"),
        ("version", "required"),
        ("steps[1].name", "invalid step name 'bad name'"),
        ("steps[1].service", "required for service_call steps"),
        ("steps[2].type", "unknown step type 'teleport'"),
        ("steps[3].name", "duplicate step name 'ok'"),
        ("steps[3].event_type", "required for event_wait steps"),
        ("steps[3].timeout", "not a duration: 'forever'"),
        ("steps[4]", "must be an object, got an integer"),
        ("error_handlers[0].on_error.target", "required for notify"),
        ("steps[2].depends_on[0]", "unknown step 'ghost'"),
    ]


def test_error_lists_every_problem_one_per_line() -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(bare(call("a", depends_on=["x", "y"])))
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("name: required")
    assert "steps[0].depends_on[0]: unknown step 'x'" in lines
    assert "steps[0].depends_on[1]: unknown step 'y'" in lines
    assert len(lines) == len(caught.value.problems) == 4


# Document-level problems


@pytest.mark.parametrize(
    ("source", "kwargs", "message"),
    [
        ('{"steps": [', {}, "invalid JSON"),
        ("steps: [a, b", {}, "invalid YAML"),
        ("steps: [a]\n  bad: indent", {"fmt": "yaml"}, "invalid YAML"),
        ("[1, 2]", {}, "must be a JSON object or YAML mapping, got list"),
        ("just text", {}, "got str"),
        ("", {}, "got NoneType"),
        (b"\xff\xfe{", {"fmt": "json"}, "invalid JSON"),
        ("a: &x [1]\nb: *x\n", {}, "aliases are not supported"),
        ("x" * (1 << 20) + "x", {}, "larger than the 1048576-byte limit"),
        ({"big": "x" * (1 << 20)}, {}, "larger than"),
        ({"bad": object()}, {}, "not JSON-serializable"),
        ("big: 99999999999999999999999\n", {}, "not representable as JSON"),
    ],
)
def test_document_problems(source: Any, kwargs: dict[str, Any], message: str) -> None:
    problem = only_problem(source, **kwargs)
    assert problem.path == "document"
    assert message in problem.message


def test_unknown_format_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown format 'toml'"):
        document_of("a = 1", fmt="toml")


def test_document_of_copies_mappings() -> None:
    original = {"steps": [{"name": "a"}]}
    doc = document_of(original)
    doc["steps"][0]["name"] = "changed"
    assert original["steps"][0]["name"] == "a"


# The YAML example


def test_yaml_example_parses_as_it_is() -> None:
    d = load_definition_file(REGISTRATION_YAML)
    validate = d.step("validate_input")
    assert validate.type == "validation"
    assert [(r.field, r.rule, r.service) for r in validate.validation_rules] == [
        ("email", "unique_email", "user-service"), ("username", "unique_username", "user-service")]
    wait = d.step("wait_for_verification")
    assert wait.on_timeout == ErrorHandler(step="wait_for_verification", action="compensate")
    assert [s.name for s in d.compensation] == ["cleanup_user_account", "cleanup_user_profile"]
    assert d.step("cleanup_user_profile").condition == "{{ steps.create_user_profile.completed }}"
    assert d.input_schema is not None and d.input_schema["required"] == ["username", "email", "password"]
    assert set(d.output["schema"]["properties"]) == {"user_id", "status", "activation_date"}


def registration(**first_step: Any) -> Definition:
    doc = yaml.safe_load(REGISTRATION_YAML.read_text())
    doc["spec"]["steps"][0] = {**doc["spec"]["steps"][0], **first_step}
    return parse_definition(doc)


def test_yaml_example_with_the_validation_step_swapped() -> None:
    d = registration(type="service_call", service="user-service")
    assert (d.name, d.version) == ("user-registration-workflow", "1.2.0")
    assert d.timeout_ms == 30 * 60_000
    default = RetryPolicy(max_attempts=3, backoff_base=2.0, backoff_multiplier=5_000, max_delay_ms=300_000,
                          jitter=0.1)
    assert d.step("validate_input").retry_policy == default
    assert [default.delay_ms(a) for a in (1, 2, 3, 7)] == [5_000, 10_000, 20_000, 300_000]
    assert d.step("validate_input").on_error == ErrorHandler(
        step="validate_input", action="terminate", message="Validation failed"
    )
    create = d.step("create_user_account")
    assert create.retry_policy == default  # on_failure retry: attempts from the step, backoff kept
    assert create.on_error is None
    assert (create.service, create.endpoint, create.method) == ("user-service", "/api/users", "POST")
    assert create.input["password_hash"] == "{{ hash(input.password) }}"
    assert create.output == {"user_id": "{{ response.id }}"}
    assert d.step("send_welcome_email").on_error == ErrorHandler(step="send_welcome_email", action="continue")
    wait = d.step("wait_for_verification")
    assert (wait.type, wait.event_type, wait.timeout_ms) == ("event_wait", "user.email_verified", 86_400_000)
    assert wait.event_filter == {"user_id": "{{ steps.create_user_account.output.user_id }}"}
    assert d.step("activate_user_account").depends_on == ("wait_for_verification", "create_user_profile")
    assert d.dependents("create_user_account") == ("create_user_profile", "send_welcome_email")
    assert d.roots() == ("validate_input",)
    assert [h.step for h in d.error_handlers] == ["validate_input", "send_welcome_email"]


def test_yaml_on_failure_retry_sets_attempts_only() -> None:
    d = registration(type="service_call", service="s", on_failure={"action": "retry", "max_attempts": 7})
    assert d.step("validate_input").retry_policy.max_attempts == 7
    assert d.step("validate_input").retry_policy.backoff_multiplier == 5_000


def test_yaml_paths_under_config() -> None:
    doc = yaml.safe_load(REGISTRATION_YAML.read_text())
    doc["spec"]["steps"][0] = {"name": "v", "type": "service_call", "config": {"service": 5}}
    doc["spec"]["steps"][1]["config"]["payload"]["email"] = "{{ input.email"
    doc["spec"]["config"]["retry_policy"]["backoff"] = "linear"
    assert [p.path for p in problems_of(doc)] == [
        "spec.config.retry_policy.backoff",
        "spec.steps[0].config.service",
        "spec.steps[1].config.payload.email",
        "spec.steps[1].depends_on[0]",
    ]


def test_yaml_numeric_version_and_missing_metadata() -> None:
    text = "apiVersion: workflow/v1\nmetadata: {name: wf, version: 1.2}\nspec:\n  steps:\n" \
           "    - {name: a, step_type: service_call, service: s}\n"
    assert parse_definition(text).version == "1.2"
    problems = problems_of("apiVersion: workflow/v1\nspec: {steps: [{name: a, type: service_call, service: s}]}")
    assert problems == [Problem("metadata.name", "required"), Problem("metadata.version", "required")]


def test_load_definition_file_sniffs_unknown_suffix(tmp_path: Path) -> None:
    json_file, yaml_file = tmp_path / "wf.txt", tmp_path / "wf"
    json_file.write_text(AGENT_JSON.read_text())
    yaml_file.write_text(REGISTRATION_YAML.read_text())
    assert load_definition_file(json_file).name == "Agent Task Execution"
    assert load_definition_file(yaml_file).name == "user-registration-workflow"


# Durations, versions, canonical JSON, retry delays


@pytest.mark.parametrize(
    ("value", "ms"),
    [(500, 500), (1.5, 1), ("500ms", 500), ("5s", 5_000), ("5m", 300_000), ("30m", 1_800_000),
     ("24h", 86_400_000), ("1d", 86_400_000), ("1.5s", 1_500), (" 2 h ", 7_200_000), ("250", 250), (0, 0)],
)
def test_durations(value: Any, ms: int) -> None:
    assert parse_duration_ms(value) == ms


@pytest.mark.parametrize("value", ["", "5x", "s", "-5s", -1, True, None, [], "1e3s", float("nan"), float("inf"),
                                   "9" * 400 + "d"])
def test_bad_durations(value: Any) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_ms(value)


def test_version_sort_key_examples() -> None:
    assert version_sort_key("1.10.0") > version_sort_key("1.9.0")
    assert version_sort_key("2.0") > version_sort_key("1.99.99")
    assert version_sort_key("1.2.0") > version_sort_key("1.2")
    assert version_sort_key("1.0.0") == "0000000001.0000000000.0000000000"
    assert version_sort_key("v1.0-rc1") == "v0000000001.0000000000-rc0000000001"


_numeric_versions = st.lists(st.integers(0, 10**10 - 1), min_size=1, max_size=5)


@given(_numeric_versions, _numeric_versions)
def test_version_sort_key_agrees_with_int_tuples(a: list[int], b: list[int]) -> None:
    key_a, key_b = (version_sort_key(".".join(map(str, v))) for v in (a, b))
    assert (key_a < key_b) == (tuple(a) < tuple(b))
    assert (key_a == key_b) == (a == b)


@given(st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5), max_size=8))
def test_canonical_json_ignores_key_order(doc: dict[str, Any]) -> None:
    reversed_doc = dict(reversed(list(doc.items())))
    assert canonical_json(doc) == canonical_json(reversed_doc)
    assert orjson.loads(canonical_json(doc)) == doc


def test_canonical_json_same_body_from_json_and_yaml() -> None:
    from_json = document_of(AGENT_JSON.read_text())
    from_yaml = document_of(yaml.safe_dump(copy.deepcopy(from_json), sort_keys=False), fmt="yaml")
    assert canonical_json(from_json) == canonical_json(from_yaml)
    assert canonical_json({"b": 1, "a": {"d": 2, "c": [3]}}) == b'{"a":{"c":[3],"d":2},"b":1}'


def test_retry_delays() -> None:
    policy = RetryPolicy(max_attempts=10, backoff_base=3.0, backoff_multiplier=100, max_delay_ms=2_000)
    assert [policy.delay_ms(a) for a in range(1, 6)] == [100, 300, 900, 2_000, 2_000]
    assert RetryPolicy().delay_ms(5000) == 2**53 - 1  # overflow is capped, not raised
    with pytest.raises(ValueError):
        RetryPolicy().delay_ms(0)


def test_handler_backoff_spellings() -> None:
    handlers = [
        {"step": "a", "on_error": {"action": "retry", "backoff_seconds": 1.5}},
        {"step": "b", "on_error": {"action": "retry", "backoff": "2m"}},
        {"action": "terminate"},  # workflow-wide, written without on_error
    ]
    d = parse_definition(envelope(call("a"), call("b"), call("c"), error_handlers=handlers))
    assert [h.backoff_ms for h in d.error_handlers] == [1_500, 120_000, 0]
    assert d.error_handlers[2] == ErrorHandler(step=None, action="terminate")
    # the workflow-wide handler is the default for a step without its own
    assert d.step("c").on_error == ErrorHandler(step=None, action="terminate")
    assert d.step("a").on_error is not None and d.step("a").on_error.action == "retry"


def test_compensate_needs_a_compensation_block() -> None:
    doc = envelope(call("a"), error_handlers=[{"step": "a", "on_error": {"action": "compensate"}}])
    problem = only_problem(doc)
    assert problem.path == "definition.steps[0]"
    assert "compensate needs a `compensation` block" in problem.message


def test_on_failure_conflicting_with_error_handlers() -> None:
    doc = envelope(call("a", on_failure={"action": "terminate"}),
                   error_handlers=[{"step": "a", "on_error": {"action": "continue"}}])
    assert only_problem(doc) == Problem(
        "definition.steps[0].on_failure", "conflicts with the error handler at definition.error_handlers[0]"
    )


def test_a_misspelt_step_field_is_a_problem_naming_the_closest_field() -> None:
    doc = envelope(call("a"), call("b", depend_on=["a"]))
    problem = only_problem(doc)
    assert problem == Problem("definition.steps[1].depend_on", "unknown field 'depend_on' (did you mean 'depends_on'?)")


def test_event_type_longer_than_an_event_may_be_is_refused() -> None:
    """Events over 200 characters are refused when published, so such a wait could never end."""
    wait = {"name": "w", "type": "event_wait", "event_type": "e" * 201}
    problem = only_problem(bare(wait), name="wf", version="1")
    assert problem.path == "steps[0].event_type" and "1 to 200 characters" in problem.message, problem
    ok = parse_definition(bare({**wait, "event_type": "e" * 200}), name="wf", version="1")
    assert ok.steps[0].event_type == "e" * 200
