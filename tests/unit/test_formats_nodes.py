"""Seed 001's nodes and edges (engine/core/formats/nodes.py): what each node type
becomes, that the translated definition runs both routes of its conditional in
the pure decider, and that every problem is reported at the path of the
document as written."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from engine.core.decide import decide_and_fold
from engine.core.definition import Definition, DefinitionError, parse_definition
from engine.core.formats import CODE_SERVICE, HTTP_SERVICE, LLM_SERVICE
from engine.core.model import INITIAL, CompleteStep, Envelope, StartWorkflow, State
from tests.support.tools import ROOT

EXAMPLE = orjson.loads((ROOT / "docs" / "examples" / "customer-support.json").read_bytes())
T0 = 1_700_000_000_000


def doc(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(EXAMPLE)
    out.update(changes)
    return out


def problems(document: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(document)
    return [(p.path, p.message) for p in caught.value.problems]


def test_the_customer_support_workflow_becomes_native_steps() -> None:
    d = parse_definition(EXAMPLE)
    assert (d.name, d.version) == ("Customer Support Workflow", "1")  # version defaults to "1"
    assert [s.name for s in d.steps] == ["classify", "route", "technical_support", "general_support"]
    classify = d.step("classify")
    assert (classify.type, classify.service, classify.method, classify.endpoint) == (
        "service_call", LLM_SERVICE, "POST", "/v1/chat/completions")
    assert classify.depends_on == ()  # an edge from start makes a root
    assert classify.input == {"model": "gpt-4", "temperature": 0, "max_tokens": 50, "messages": [
        {"role": "user", "content": "Classify this customer inquiry as technical or general, answer JSON "
                                    "{\"category\": ...}: {{ input.message }}"}]}
    assert classify.headers == {"Authorization": "Bearer {{ secrets.OPENAI_API_KEY }}"}
    assert classify.output == {"output": "{{ from_json(response.choices.0.message.content) }}",
                               "model": "{{ response.model }}", "usage": "{{ default(response.usage, null) }}"}
    route = d.step("route")
    assert route.condition == "steps.classify.output.output.category == 'technical'"
    assert (route.true_edge, route.false_edge, route.depends_on) == ("technical_support", "general_support",
                                                                     ("classify",))
    assert d.step("technical_support").headers == {}  # no api_key, no Authorization header
    ticket = d.step("general_support")
    assert (ticket.service, ticket.method, ticket.url) == (HTTP_SERVICE, "POST", "https://tickets.example.com/v1/tickets")
    assert ticket.input == {"message": "{{ input.message }}", "category": "{{ steps.classify.output.output.category }}"}
    assert ticket.output == {"output": "{{ response }}"}


def chat(category: str) -> dict[str, Any]:
    content = orjson.dumps({"category": category}).decode()
    return {"model": "gpt-4-0613", "choices": [{"message": {"role": "assistant", "content": content}}]}


def drive(d: Definition, message: str, category: str) -> State:
    state, n = INITIAL, 0

    def send(command: Any) -> None:
        nonlocal state, n
        n += 1
        _, state = decide_and_fold(state, Envelope(instance_id="i-1", entry_id=f"{n}-0", command=command), d, T0)

    send(StartWorkflow(workflow=d.name, context={"message": message}))
    send(CompleteStep(step="classify", attempt=1, task_id="i-1:classify:1", output=chat(category)))
    taken = "technical_support" if category == "technical" else "general_support"
    send(CompleteStep(step=taken, attempt=1, task_id=f"i-1:{taken}:1",
                      output=chat("answered") if category == "technical" else {"ticket": "T-1"}))
    return state


@pytest.mark.parametrize(("category", "taken", "skipped"), [("technical", "technical_support", "general_support"),
                                                            ("billing", "general_support", "technical_support")])
def test_each_route_of_the_conditional_is_taken_by_what_the_model_said(category: str, taken: str,
                                                                       skipped: str) -> None:
    state = drive(parse_definition(EXAMPLE), "help", category)
    assert state.status == "completed"
    assert state.step("classify").output == {"output": {"category": category}, "model": "gpt-4-0613", "usage": None}
    assert state.step("route").output == {"result": category == "technical", "edge": taken}
    assert state.step(taken).status == "completed"
    assert state.step(skipped).status == "skipped"
    if taken == "general_support":
        assert state.step(taken).output == {"output": {"ticket": "T-1"}}


def test_a_reply_that_is_not_json_is_the_text_itself() -> None:
    d = parse_definition(EXAMPLE)
    state = INITIAL
    for n, command in enumerate([StartWorkflow(workflow=d.name, context={"message": "hi"}),
                                 CompleteStep(step="classify", attempt=1, task_id="i-1:classify:1", output={
                                     "model": "m", "usage": {"total_tokens": 3},
                                     "choices": [{"message": {"content": "just words"}}]})]):
        _, state = decide_and_fold(state, Envelope(instance_id="i-1", entry_id=f"{n}-0", command=command), d, T0)
    assert state.step("classify").output == {"output": "just words", "model": "m", "usage": {"total_tokens": 3}}
    assert state.step("route").output == {"result": False, "edge": "general_support"}


def test_code_and_custom_nodes() -> None:
    source = "def process(input_data):\n    return {'n': len('{{x}}'), 'q': \"it's\"}\n"
    d = parse_definition({"name": "n", "nodes": [
        {"id": "start", "type": "start"},
        {"id": "score", "type": "code", "config": {"language": "python", "code": source,
                                                    "input_mapping": {"text": "{{input.text}}"}}},
        {"id": "plain", "type": "code", "config": {"code": "def process(input_data):\n    return 1\n"}},
        {"id": "crm_lookup", "type": "crm", "config": {"customer": "{{input.customer}}", "score": "{{score.output.n}}",
                                                        "limit": 5}},
        {"id": "end", "type": "end"}],
        "edges": [{"source": "start", "target": "score"}, {"source": "score", "target": "crm_lookup"},
                  {"source": "score", "target": "plain"}, {"source": "crm_lookup", "target": "end"}]})
    score = d.step("score")
    assert score.service == CODE_SERVICE and score.output is None  # the code worker replies {"output": ...}
    assert score.input["code"].startswith("{{ '") and score.input["input"] == {"text": "{{ input.text }}"}
    assert d.step("plain").input["input"] == "{{ input }}"  # no mapping: the workflow input
    assert d.step("plain").input["code"] == "def process(input_data):\n    return 1\n"
    crm = d.step("crm_lookup")
    assert (crm.service, crm.depends_on, crm.output) == ("crm", ("score",), {"output": "{{ response }}"})
    assert crm.input == {"customer": "{{ input.customer }}", "score": "{{ steps.score.output.output.n }}", "limit": 5}
    from engine.core.language.expressions import render

    assert render(score.input, {"input": {"text": "t"}})["code"] == source  # the source arrives as written


def test_a_conditional_edge_to_the_end_takes_no_step_and_templates_read_its_result() -> None:
    d = parse_definition({"name": "n", "nodes": [
        {"id": "gate", "type": "conditional", "config": {"condition": "{{input.n}} > 2 and not {{input.quiet}}",
                                                         "true_edge": "notify", "false_edge": "end"}},
        {"id": "notify", "type": "alerts", "config": {"edge": "{{gate.output.edge}}"}},
        {"id": "end", "type": "end"}], "edges": [{"source": "notify", "target": "end"}]})
    gate = d.step("gate")
    assert (gate.true_edge, gate.false_edge) == ("notify", None)
    assert gate.condition == "input.n > 2 and not input.quiet"
    assert d.step("notify").input == {"edge": "{{ steps.gate.output.edge }}"}


PROBLEMS = [
    (lambda d: d["nodes"][2]["config"].update(condition="{{nope.output.x}} == 'a'"),
     "nodes[2].config.condition", "unknown node 'nope'"),
    (lambda d: d["nodes"][2]["config"].update(condition="{{classify.output.x}} === 'a'"),
     "nodes[2].config.condition", "unexpected '='"),
    (lambda d: d["nodes"][2]["config"].update(true_edge="ghost"), "nodes[2].config.true_edge", "unknown node 'ghost'"),
    (lambda d: d["nodes"][2]["config"].pop("condition"), "nodes[2].config.condition", "required"),
    (lambda d: d["edges"][3].update(target="ghost"), "edges[3].target", "unknown node 'ghost'"),
    (lambda d: d["edges"][1].update(source="clasify"), "edges[1].source", "did you mean 'classify'"),
    (lambda d: d["edges"].append({"source": "end", "target": "route"}), "edges[6].source", "end node"),
    (lambda d: d["edges"].append({"source": "route", "target": "start"}), "edges[6].target", "start node"),
    (lambda d: d["edges"].append({"source": "route", "target": "route"}), "edges[6].target", "cannot follow itself"),
    (lambda d: d["edges"].append({"source": "technical_support", "target": "classify"}), "nodes[1]",
     "dependency cycle"),
    (lambda d: d["nodes"][3]["config"].update(prompt="{{general_support.output}}"), "nodes[3].config.prompt",
     "add an edge from 'general_support' to 'technical_support'"),
    (lambda d: d["nodes"][1]["config"].update(prompt="{{ foo(input.x) }}"), "nodes[1].config.prompt",
     "unknown function 'foo'"),
    (lambda d: d["nodes"][1]["config"].update(prompt="{{ start.output }}"), "nodes[1].config.prompt",
     "'start' is a start node, which has no output"),
    (lambda d: d["nodes"][3]["config"].update(prompt="{{ route.result }}"), "nodes[3].config.prompt",
     "read route.output.result"),
    (lambda d: d["nodes"][1]["config"].update(tempreature=1), "nodes[1].config.tempreature", "'temperature'"),
    (lambda d: d["nodes"][1]["config"].update(timeout="5 parsecs"), "nodes[1].config.timeout", "not a duration"),
    (lambda d: d["nodes"][1]["config"].update(retry_policy={"max_attempts": 0}),
     "nodes[1].config.retry_policy.max_attempts", ""),
    (lambda d: d["nodes"][1]["config"].update(api_key=7), "nodes[1].config.api_key", "must be a string"),
    (lambda d: d["nodes"][1]["config"].pop("model"), "nodes[1].config.model", "required for llm nodes"),
    (lambda d: d["nodes"][4]["config"].update(url="ftp://x"), "nodes[4].config.url", "absolute http"),
    (lambda d: d["nodes"][4]["config"].update(method="FETCH"), "nodes[4].config.method", "must be one of GET"),
    (lambda d: d["nodes"][4]["config"].update(headers={"Host": "x"}), "nodes[4].config.headers.Host", "Host"),
    (lambda d: d["nodes"][4]["config"].update(body={"a": "{{ input.x"}), "nodes[4].config.body.a", "unclosed"),
    (lambda d: d["nodes"][1].update(id="bad id"), "nodes[1].id", "invalid node id"),
    (lambda d: d["nodes"][3].update(id="classify"), "nodes[3].id", "duplicate node id 'classify'"),
    (lambda d: d["nodes"][3].update(id="input"), "nodes[3].id", "reserved"),
    (lambda d: d["nodes"][3].pop("type"), "nodes[3].type", "required"),
    (lambda d: d["nodes"][3].update(colour="red"), "nodes[3].colour", "unknown field"),
    (lambda d: d["nodes"].append({"id": "c", "type": "code", "config": {"language": "js", "code": "x"}}),
     "nodes[6].config.language", "only 'python'"),
    (lambda d: d["nodes"].append({"id": "c", "type": "code", "config": {}}), "nodes[6].config.code", "required"),
    (lambda d: d["nodes"].append(3), "nodes[6]", "must be an object"),
    (lambda d: d["nodes"][3].update(type=CODE_SERVICE), "nodes[3].type", "reserved: write type 'code'"),
    (lambda d: d.pop("name"), "name", "required"),
    (lambda d: d.update(version="1 0"), "version", "must be up to 64"),
    (lambda d: d.update(nodes=[]), "nodes", "non-empty"),
    (lambda d: d.update(edges={}), "edges", "must be a list"),
    (lambda d: d.update(owner="me"), "owner", "unknown field"),
]


@pytest.mark.parametrize(("change", "path", "message"), PROBLEMS, ids=[p[1] + ":" + p[2] for p in PROBLEMS])
def test_each_problem_names_the_path_of_the_original_document(change: Any, path: str, message: str) -> None:
    document = doc()
    change(document)
    found = problems(document)
    assert any(p == path and message in m for p, m in found), found


def test_a_stored_document_loads_without_the_closed_key_checks() -> None:
    document = doc()
    document["nodes"][3]["colour"] = "red"
    assert parse_definition(document, strict=False).step("technical_support").service == LLM_SERVICE


def test_name_and_version_arguments_win() -> None:
    d = parse_definition(doc(version="7"), name="other", version="2")
    assert (d.name, d.version) == ("other", "2")
    assert parse_definition(doc(version="7")).version == "7"
