"""Seed 001's nodes and edges, as a native document.

``{"name", "description"?, "version"?, "nodes": [{"id", "type", "config"}],
"edges": [{"source", "target"}]}``: each node but the ``start``/``end``
markers becomes the step of the same name, each edge a ``depends_on`` (an edge
from ``start`` makes a root), and each node type a native step:

- ``llm``: a service_call to ``model-service`` (``config.service`` may name
  another), ``POST /v1/chat/completions`` in OpenAI's shape;
- ``http``: a call of the node's absolute ``url`` (service ``foldflow.http``);
- ``code``: a task for ``foldflow.code``, which runs it in a sandbox;
- ``conditional``: a native conditional step;
- any other type T: a service_call to service T with the node's config as payload.

Every task node's step output holds the node's output under ``output`` (see
rewrite.py for how templates read it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

from engine.core.definition.fields import did_you_mean
from engine.core.definition.model import Problem
from engine.core.definition.vocabulary import STEP_NAME
from engine.core.formats.paths import PathMap, Translation
from engine.core.formats.rewrite import CONDITIONAL, KEPT_ROOTS, TASK, Rewriter, Scope, literal
from engine.core.formats.services import CODE_SERVICE, HTTP_SERVICE, LLM_SERVICE

DOC_FIELDS: Final = ("name", "description", "version", "nodes", "edges")
NODE_FIELDS: Final = ("id", "type", "config", "name", "description", "position")
EDGE_FIELDS: Final = ("id", "source", "target", "label")
MARKERS: Final = ("start", "end")
TASK_OPTIONS: Final = ("timeout", "retry_policy")  # native step fields a task node may set in its config
CONFIG_FIELDS: Final = {
    "llm": ("model", "prompt", "temperature", "max_tokens", "api_key", "service", *TASK_OPTIONS),
    "http": ("method", "url", "headers", "body", *TASK_OPTIONS),
    "code": ("language", "code", "input_mapping", *TASK_OPTIONS),
    "conditional": ("condition", "true_edge", "false_edge"),
    "start": (),
    "end": (),
}
METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")  # what the HTTP executor sends
CHAT_ENDPOINT: Final = "/v1/chat/completions"
LLM_OUTPUT: Final = {"output": "{{ from_json(response.choices.0.message.content) }}",
                     "model": "{{ response.model }}", "usage": "{{ default(response.usage, null) }}"}
WHOLE_OUTPUT: Final = {"output": "{{ response }}"}
WORDING: Final = (
    (re.compile(r"add '([^']+)' to the depends_on of '([^']+)' \(or of a step it depends on\)"),
     r"add an edge from '\1' to '\2' (or to a node before it)"),
    (re.compile(r"\bstep '"), "node '"),
    (re.compile(r"required \(pass --name/--version for a bare definition\)"), "required (or pass --name)"),
)


class _Nodes:
    """One translation: the problems found, where each native part came from, the edges by target."""

    def __init__(self, doc: dict[str, Any], strict: bool) -> None:
        self.doc, self.strict = doc, strict
        self.problems: list[Problem] = []
        self.paths = PathMap()
        self.kinds: dict[str, str] = {}  # node id -> TASK, CONDITIONAL or its marker type
        self.index: dict[str, int] = {}  # node id -> its position in nodes
        self.incoming: dict[str, list[tuple[str, int]]] = {}  # node id -> (source, edge index)
        self.rw = Rewriter(Scope(self.kinds), self.problems)

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def closed(self, raw: dict[str, Any], path: str, fields: tuple[str, ...]) -> None:
        if not self.strict:
            return
        for key in raw:
            if key not in fields:
                hint = did_you_mean(str(key), fields) or (f" (known: {', '.join(fields)})" if fields else " (none)")
                self.add(f"{path}.{key}" if path else str(key), f"unknown field {key!r}{hint}")


def translate_nodes(doc: dict[str, Any], *, strict: bool = True) -> Translation:
    t = _Nodes(doc, strict)
    t.closed(doc, "", DOC_FIELDS)
    native: dict[str, Any] = {"version": doc.get("version") if doc.get("version") is not None else "1"}
    for key in ("name", "description", "version"):
        if key in doc:
            native[key] = doc[key]
            t.paths.add(key, key)
    nodes = doc.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        t.add("nodes", "must be a non-empty list of nodes")
        nodes = []
    _collect(t, nodes)
    _edges(t, doc.get("edges"))
    steps: list[dict[str, Any]] = []
    t.paths.add("steps", "nodes")
    for j, raw in enumerate(nodes):
        node_id = raw.get("id") if isinstance(raw, dict) else None
        if isinstance(node_id, str) and t.kinds.get(node_id) not in (None, *MARKERS) and t.index[node_id] == j:
            steps.append(_step(t, raw, j, len(steps)))
    if not steps and nodes:
        t.add("nodes", "has no node that does anything (only start and end markers)")
    native["steps"] = steps
    return Translation(native, t.paths, t.problems, WORDING)


def _collect(t: _Nodes, nodes: list[Any]) -> None:
    for j, raw in enumerate(nodes):
        path = f"nodes[{j}]"
        if not isinstance(raw, dict):
            t.add(path, "must be an object with id, type and config")
            continue
        t.closed(raw, path, NODE_FIELDS)
        node_id, kind = raw.get("id"), raw.get("type")
        if not isinstance(kind, str) or not kind:
            t.add(f"{path}.type", "required: a node type (start, end, llm, http, code, conditional, or a service)")
        if not isinstance(node_id, str):
            t.add(f"{path}.id", "required: the node's id, a string")
        elif not STEP_NAME.fullmatch(node_id):
            t.add(f"{path}.id", f"invalid node id {node_id!r} (1 to 100 of A-Z a-z 0-9 _ . -)")
        elif node_id in KEPT_ROOTS:
            t.add(f"{path}.id", f"{node_id!r} is reserved: templates read it as {{{{{node_id}.x}}}}")
        elif node_id in t.index:
            t.add(f"{path}.id", f"duplicate node id {node_id!r} (first at nodes[{t.index[node_id]}])")
        elif isinstance(kind, str) and kind:
            t.index[node_id] = j
            t.kinds[node_id] = kind if kind in MARKERS else CONDITIONAL if kind == "conditional" else TASK


def _edges(t: _Nodes, edges: Any) -> None:
    if not isinstance(edges, list):
        t.add("edges", "must be a list of edges ({source, target})")
        return
    for e, raw in enumerate(edges):
        path = f"edges[{e}]"
        if not isinstance(raw, dict):
            t.add(path, "must be an object with source and target")
            continue
        t.closed(raw, path, EDGE_FIELDS)
        source, target = _end(t, raw, "source", path), _end(t, raw, "target", path)
        if source is None or target is None:
            continue
        if source == target:
            t.add(f"{path}.target", f"a node cannot follow itself ({source!r})")
        elif t.kinds[target] == "start":
            t.add(f"{path}.target", f"{target!r} is a start node: nothing leads to it")
        elif t.kinds[source] == "end":
            t.add(f"{path}.source", f"{source!r} is an end node: nothing follows it")
        elif t.kinds[source] != "start" and t.kinds[target] != "end":
            t.incoming.setdefault(target, []).append((source, e))


def _end(t: _Nodes, raw: dict[str, Any], key: str, path: str) -> str | None:
    value = raw.get(key)
    if not isinstance(value, str):
        t.add(f"{path}.{key}", "required: a node id")
    elif value not in t.kinds:
        t.add(f"{path}.{key}", f"unknown node {value!r}{did_you_mean(value, list(t.kinds))}")
    else:
        return value
    return None


def _step(t: _Nodes, node: dict[str, Any], j: int, i: int) -> dict[str, Any]:
    node_id, kind, where, native = node["id"], node["type"], f"nodes[{j}]", f"steps[{i}]"
    config = node.get("config")
    if config is None:
        config = {}
    elif not isinstance(config, dict):
        t.add(f"{where}.config", "must be an object")
        config = {}
    if kind in CONFIG_FIELDS:
        t.closed(config, f"{where}.config", CONFIG_FIELDS[kind])
    deps: dict[str, None] = {}
    for k, (source, e) in enumerate(t.incoming.get(node_id, [])):
        deps.setdefault(source, None)
        t.paths.add(f"{native}.depends_on[{k}]", f"edges[{e}].source")
    step: dict[str, Any] = {"name": node_id, "depends_on": list(deps)}
    description = node.get("description") if node.get("description") is not None else node.get("name")
    if description is not None:
        step["description"] = description
        t.paths.add(f"{native}.description", f"{where}.{'description' if 'description' in node else 'name'}")
    for native_key, original in (("", where), (".name", f"{where}.id"), (".type", f"{where}.type"),
                                 (".depends_on", where)):
        t.paths.add(native + native_key, original)
    build = _BUILDERS.get(kind, _custom)
    step.update(build(t, config, f"{where}.config", native))
    if kind in CONFIG_FIELDS and kind != "conditional":
        for option in TASK_OPTIONS:
            if option in config:
                step[option] = config[option]
                t.paths.add(f"{native}.{option}", f"{where}.config.{option}", same_below=True)
    if kind not in CONFIG_FIELDS:
        step["service"] = kind
        t.paths.add(f"{native}.service", f"{where}.type")
        if kind in _RESERVED:
            t.add(f"{where}.type", f"{kind!r} is reserved: write type {_RESERVED[kind]!r}")
    return step


def _llm(t: _Nodes, config: dict[str, Any], cfg: str, native: str) -> dict[str, Any]:
    for key in ("model", "prompt"):
        if config.get(key) is None:
            t.add(f"{cfg}.{key}", "required for llm nodes")
    prompt = config.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        t.add(f"{cfg}.prompt", "must be a string (a template is fine)")
    payload: dict[str, Any] = {"model": t.rw.value(config.get("model"), f"{cfg}.model"),
                               "messages": [{"role": "user", "content": t.rw.value(prompt, f"{cfg}.prompt")}]}
    t.paths.add(f"{native}.payload.messages", f"{cfg}.prompt")
    for key in ("temperature", "max_tokens"):
        if key in config:
            payload[key] = t.rw.value(config[key], f"{cfg}.{key}")
    for key in ("model", "temperature", "max_tokens"):
        t.paths.add(f"{native}.payload.{key}", f"{cfg}.{key}", same_below=True)
    t.paths.add(f"{native}.payload", cfg)
    step = {"type": "service_call", "service": config.get("service", LLM_SERVICE), "method": "POST",
            "endpoint": CHAT_ENDPOINT, "payload": payload, "output": LLM_OUTPUT}
    t.paths.add(f"{native}.service", f"{cfg}.service")
    api_key = config.get("api_key")
    if api_key is not None:
        if not isinstance(api_key, str):
            t.add(f"{cfg}.api_key", "must be a string, usually {{secrets.NAME}}")
        else:
            step["headers"] = {"Authorization": "Bearer " + t.rw.text(api_key, f"{cfg}.api_key")}
            t.paths.add(f"{native}.headers", f"{cfg}.api_key")
    return step


def _http(t: _Nodes, config: dict[str, Any], cfg: str, native: str) -> dict[str, Any]:
    if config.get("url") is None:
        t.add(f"{cfg}.url", "required for http nodes: an absolute http:// or https:// URL")
    method = config.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in METHODS:
        t.add(f"{cfg}.method", f"must be one of {', '.join(METHODS)}, got {method!r}")
    step: dict[str, Any] = {"type": "service_call", "service": HTTP_SERVICE, "method": method,
                            "url": t.rw.value(config.get("url"), f"{cfg}.url"), "output": WHOLE_OUTPUT}
    for native_key, key in (("method", "method"), ("url", "url"), ("headers", "headers"), ("payload", "body")):
        t.paths.add(f"{native}.{native_key}", f"{cfg}.{key}", same_below=True)
    if config.get("headers") is not None:
        step["headers"] = t.rw.value(config["headers"], f"{cfg}.headers")
    if config.get("body") is not None:
        step["payload"] = t.rw.value(config["body"], f"{cfg}.body")
    return step


def _code(t: _Nodes, config: dict[str, Any], cfg: str, native: str) -> dict[str, Any]:
    language = config.get("language", "python")
    if language != "python":
        t.add(f"{cfg}.language", f"only 'python' is supported, got {language!r}")
    code = config.get("code")
    if not isinstance(code, str) or not code.strip():
        t.add(f"{cfg}.code", "required for code nodes: Python source defining process(input_data)")
    mapping = config.get("input_mapping")
    if mapping is not None and not isinstance(mapping, dict):
        t.add(f"{cfg}.input_mapping", "must be an object of templates")
    given = t.rw.value(mapping, f"{cfg}.input_mapping") if isinstance(mapping, dict) else "{{ input }}"
    for native_key, key in (("code", "code"), ("input", "input_mapping"), ("language", "language")):
        t.paths.add(f"{native}.payload.{native_key}", f"{cfg}.{key}", same_below=True)
    t.paths.add(f"{native}.payload", cfg)
    # The source is sent as written: a template-looking `{{` in Python code is not one.
    payload = {"language": "python", "code": literal(code), "input": given}
    return {"type": "service_call", "service": CODE_SERVICE, "payload": payload}


def _conditional(t: _Nodes, config: dict[str, Any], cfg: str, native: str) -> dict[str, Any]:
    step: dict[str, Any] = {"type": "conditional"}
    condition = config.get("condition")
    if isinstance(condition, bool):
        step["condition"] = condition
    elif isinstance(condition, str):
        step["condition"] = t.rw.condition(condition, f"{cfg}.condition")
    else:
        t.add(f"{cfg}.condition", "required for conditional nodes: a condition such as "
                                  "{{classify.output.category}} == 'technical'")
    t.paths.add(f"{native}.condition", f"{cfg}.condition")
    for key in ("true_edge", "false_edge"):
        target = config.get(key)
        t.paths.add(f"{native}.{key}", f"{cfg}.{key}")
        if target is None:
            continue
        if not isinstance(target, str) or target not in t.kinds:
            shown = target if isinstance(target, str) else repr(target)
            hint = did_you_mean(target, list(t.kinds)) if isinstance(target, str) else ""
            t.add(f"{cfg}.{key}", f"unknown node {shown!r}{hint}")
        elif t.kinds[target] == "start":
            t.add(f"{cfg}.{key}", f"{target!r} is a start node")
        elif t.kinds[target] != "end":  # an edge to the end takes no step: the other branch is still skipped
            step[key] = target
    return step


def _custom(t: _Nodes, config: dict[str, Any], cfg: str, native: str) -> dict[str, Any]:
    t.paths.add(f"{native}.payload", cfg, same_below=True)
    return {"type": "service_call", "payload": t.rw.value(config, cfg), "output": WHOLE_OUTPUT}


_RESERVED: Final = {HTTP_SERVICE: "http", CODE_SERVICE: "code"}  # their tasks need what those types build
_BUILDERS: Final[dict[str, Callable[[_Nodes, dict[str, Any], str, str], dict[str, Any]]]] = {
    "llm": _llm, "http": _http, "code": _code, "conditional": _conditional,
}
