"""Whatever a nodes-and-edges document or an execution plan holds, parsing it either
gives a Definition or raises DefinitionError listing problems: never another error
(which the API would answer with a 500)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.definition import DefinitionError, parse_definition

words = st.sampled_from(["start", "end", "llm", "http", "code", "conditional", "crm", "a", "b", "input", "x y",
                         "{{a.output.x}}", "{{input.q}} == 1", "$.workflow_input.q", "$.a.output_data[0]", "$",
                         "python", "https://h.example/x", "POST", "{{ nope(", "{{b}}"])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), words)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(words, inner, max_size=3)), max_leaves=8)
config = st.dictionaries(st.sampled_from(["model", "prompt", "url", "method", "body", "headers", "code",
                                          "condition", "true_edge", "false_edge", "input_mapping", "api_key",
                                          "timeout", "language", "other"]), values, max_size=5)
node = st.fixed_dictionaries({"id": scalars, "type": scalars}, optional={"config": st.one_of(config, values)})
edge = st.fixed_dictionaries({}, optional={"source": scalars, "target": scalars, "weight": values})
step = st.fixed_dictionaries({}, optional={"agent_name": scalars, "next_step": scalars, "id": scalars,
                                           "input_mapping": st.one_of(st.dictionaries(words, values, max_size=3),
                                                                      values)})


def parses_or_lists_problems(document: dict[str, Any]) -> None:
    try:
        parse_definition(document)
    except DefinitionError as exc:
        assert exc.problems and all(p.path is not None and p.message for p in exc.problems)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(node, values), max_size=5), st.one_of(st.lists(st.one_of(edge, values), max_size=5), values),
       st.one_of(st.none(), words))
def test_any_nodes_document(nodes: list[Any], edges: Any, name: Any) -> None:
    parses_or_lists_problems({"name": name, "nodes": nodes, "edges": edges})


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(words, st.one_of(step, values), max_size=4), scalars)
def test_any_plan(steps: dict[str, Any], start: Any) -> None:
    parses_or_lists_problems({"id": "p", "start_step": start, "steps": steps})
