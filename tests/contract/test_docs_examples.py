"""docs/language.md and docs/examples stay true: every example runs end to end,
on a real redis-server and on fakeredis, to the final status it documents, and
every definition shown in the reference parses.

Convention (also described in docs/language.md, "Running the examples"): a YAML
example starts with comment lines `# <key>: <JSON>`; a JSON example has a
sidecar `<name>.run.json` with the same keys:

    context        the start context (default {})
    expect         the final status the run must reach (required)
    name, version  registration name/version (bare definitions only)
    start_version  start this version instead of the latest
    correlation_id the start's correlation id
    register       other example files to register first (a sub-workflow's child)
    settings       Settings overrides for the workers (the breaker's threshold, ...)
    answer_waits   false: no simulated publisher answers the event waits
    then           commands sent after the start, in order (see _perform)
    refuse         start contexts that the input schema must refuse
    check          {"dotted.path.into.status": expected value}
    events         event types the history must hold, or {type: subset of its data}

Every service an example calls is served by the echo handler printed in
docs/language.md (the `# echo_handlers.py` block), executed from the document
itself, so the handler a reader copies is the one tested here.
"""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
import yaml

import engine.workers.activities
from engine.core.definition import Definition, load_definition_file, parse_definition
from engine.errors import InvalidInput
from engine.ops.cli import main as cli_main
from engine.workers.activities import Registry
from tests.support.helpers import Cluster
from tests.support.poll import eventually, run
from tests.support.tools import ROOT

DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
LANGUAGE = DOCS / "language.md"
HEADER_KEYS = frozenset({"context", "expect", "name", "version", "start_version", "correlation_id", "register",
                         "settings", "answer_waits", "then", "refuse", "check", "events"})
FINAL = frozenset({"completed", "failed", "cancelled", "compensated"})


def example_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.iterdir()
                  if p.suffix in (".yaml", ".yml", ".json") and not p.name.endswith(".run.json"))


def run_spec(path: Path) -> dict[str, Any]:
    """The run header of an example (leading `# key: JSON` lines, or the .run.json sidecar)."""
    if path.suffix == ".json":
        sidecar = path.with_name(path.stem + ".run.json")
        spec: dict[str, Any] = orjson.loads(sidecar.read_bytes()) if sidecar.exists() else {}
    else:
        spec = {}
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break  # the header is the leading comment block
            match = re.match(r"#\s*([a-z_]+):\s*(.+)$", line)
            if match and match[1] in HEADER_KEYS:
                spec[match[1]] = orjson.loads(match[2])
    unknown = set(spec) - HEADER_KEYS
    assert not unknown, f"{path.name}: unknown run keys {sorted(unknown)}"
    assert spec.get("expect") in FINAL, f"{path.name}: 'expect' must be one of {sorted(FINAL)}"
    return spec


def load(path: Path, spec: dict[str, Any] | None = None) -> Definition:
    spec = run_spec(path) if spec is None else spec
    return load_definition_file(path, name=spec.get("name"), version=spec.get("version"))


def fmt_of(path: Path) -> str:
    return "json" if path.suffix == ".json" else "yaml"


# -- the document ------------------------------------------------------------------
def fenced_blocks(text: str) -> list[tuple[str, str]]:
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)]


def echo_module() -> dict[str, Any]:
    """Execute the `# echo_handlers.py` block of docs/language.md; its handlers land in a scratch registry."""
    blocks = [body for lang, body in fenced_blocks(LANGUAGE.read_text())
              if lang == "python" and body.startswith("# echo_handlers.py")]
    assert len(blocks) == 1, "docs/language.md must hold exactly one `# echo_handlers.py` python block"
    saved = engine.workers.activities.default_registry
    engine.workers.activities.default_registry = Registry()
    namespace: dict[str, Any] = {"__name__": "echo_handlers"}
    try:
        exec(compile(blocks[0], "echo_handlers.py", "exec"), namespace)
        namespace["__registry__"] = engine.workers.activities.default_registry
    finally:
        engine.workers.activities.default_registry = saved
    return namespace


ECHO = echo_module()


def services_of(definition: Definition) -> set[str]:
    """Every queue a definition can put a task on: steps, rules, compensation, notify targets."""
    found: set[str] = set()
    for step in definition.steps + definition.compensation:
        if step.service:
            found.add(step.service)
        found.update(rule.service for rule in step.validation_rules)
        for handler in (step.on_error, step.on_timeout):
            if handler is not None and handler.target:
                found.add(handler.target)
    found.update(h.target for h in definition.error_handlers if h.target)
    return found


def echo_registry(services: set[str]) -> Registry:
    reg = Registry()
    for service in sorted(services or {"orders"}):  # an activity worker needs one queue to serve
        reg.register(service, None, ECHO["echo"])
    return reg


# -- running one example -------------------------------------------------------------
def lookup(value: Any, path: str) -> Any:
    for key in path.split("."):
        if isinstance(value, list) and key.isdigit():
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            raise AssertionError(f"no {key!r} on the way to {path!r} in {value!r}")
    return value


def contains(actual: Any, expected: Any) -> bool:
    """Is expected a subset of actual (objects by key, everything else equal)?"""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and contains(actual[k], v) for k, v in expected.items())
    return bool(actual == expected)


async def _perform(c: Cluster, iid: str, action: dict[str, Any], n: int) -> None:
    """One `then` item: await a status, publish an event, or send a control command.

    {"await": STATUS} | {"publish": TYPE, "data": {...}} | {"pause": REASON} | {"resume": null}
    | {"cancel": REASON} | {"signal": NAME, "payload": ...} | {"retry": {"from_step": S, "input": ...}}
    """
    verb = next(iter(action))
    arg = action[verb]
    if verb == "await":
        await c.client.wait(iid, timeout=20, statuses=frozenset({arg}))
        return
    if verb == "publish":
        await c.client.publish(arg, action.get("data", {}))
        return
    cmd_id = f"docs-{n}"
    if verb in ("pause", "cancel"):
        await getattr(c.client, verb)(iid, arg, cmd_id=cmd_id)
    elif verb == "resume":
        await c.client.resume(iid, cmd_id=cmd_id)
    elif verb == "signal":
        await c.client.signal(iid, arg, action.get("payload"), cmd_id=cmd_id)
    elif verb == "retry":
        await c.client.retry(iid, from_step=arg.get("from_step"), input=arg.get("input"), cmd_id=cmd_id)
    else:
        raise AssertionError(f"unknown action {action!r}")
    await _applied(c, iid, cmd_id)


async def _applied(c: Cluster, iid: str, cmd_id: str) -> None:
    """Until the command has been decided (applied or refused): its cmd_id is on an event."""
    async def seen() -> bool:
        return any(e["data"].get("cmd") == cmd_id for e in await c.client.history(iid))

    await eventually(seen, timeout=20)


async def run_example(path: Path, factory: Any, base_settings: Any) -> dict[str, Any]:
    """Run one example to its documented end and check it; returns the instance id, its
    stored events and the commands its inbox received (the replay test records these)."""
    spec = run_spec(path)
    settings = msgspec.structs.replace(base_settings, **spec.get("settings", {}))
    extra = [EXAMPLES / name for name in spec.get("register", [])]
    definition = load(path, spec)
    services = services_of(definition).union(*(services_of(load(p)) for p in extra))
    missing = services - set(ECHO["SERVICES"])
    assert not missing, f"{path.name}: add {sorted(missing)} to SERVICES in the echo_handlers.py block"
    async with Cluster(factory, settings, echo_registry(services)) as c:
        if spec.get("answer_waits") is False:
            c.agents.stop()
            await asyncio.wait_for(c.tasks[-1], 5)  # its last read is done: it publishes nothing more
        for other in extra:
            await c.client.register(other.read_bytes(), fmt=fmt_of(other))
        registered, _ = await c.client.register(path.read_bytes(), fmt=fmt_of(path), name=spec.get("name"),
                                                version=spec.get("version"))
        for bad in spec.get("refuse", []):
            with pytest.raises(InvalidInput):
                await c.client.start(registered.name, bad)
        iid = await c.client.start(registered.name, spec.get("context", {}), version=spec.get("start_version"),
                                   correlation_id=spec.get("correlation_id"))
        for n, action in enumerate(spec.get("then", [])):
            await _perform(c, iid, action, n)
        state = await c.client.wait(iid, timeout=20)
        status = await c.client.status(iid)
        assert state.status == spec["expect"], orjson.dumps(status, option=orjson.OPT_INDENT_2).decode()
        for where, expected in spec.get("check", {}).items():
            assert lookup(status, where) == expected, (where, lookup(status, where), expected)
        history = await c.client.history(iid)
        check_history(history)
        wanted = spec.get("events", {})
        for event_type, subset in (wanted.items() if isinstance(wanted, dict) else ((t, {}) for t in wanted)):
            found = [e["data"] for e in history if e["type"] == event_type]
            assert any(contains(data, subset) for data in found), (event_type, subset, found)
        await extra_checks(path.stem, c, iid, status, history)
        stored = await c.client.store.read_events(iid)
        keys = c.client.store.keys
        inbox = await c.client.redis.xrange(keys.inbox(keys.partition(iid)))
        commands = [(entry_id.decode(), {k.decode(): v.decode() for k, v in fields.items()})
                    for entry_id, fields in inbox if fields.get(b"id") == iid.encode()]
        return {"iid": iid, "events": [(event, ts) for _, event, ts in stored], "commands": commands}


def check_history(history: list[dict[str, Any]]) -> None:
    """Versions are 1..n; every step event names its step (and its attempt, but for
    skips, which have none); no attempt (or loop item, or rule) is scheduled or
    completed twice; nothing but refusals follows a final event."""
    assert [e["version"] for e in history] == list(range(1, len(history) + 1))
    seen: dict[str, set[Any]] = {"workflow.step_completed": set(), "workflow.step_scheduled": set(),
                                 "workflow.step_waiting": set()}
    for e in history:
        data = e["data"]
        if e["type"].startswith("workflow.step_"):
            assert "step" in data and ("attempt" in data or e["type"] == "workflow.step_skipped"), e
        if e["type"] in seen:
            key = (data["step"], data["attempt"], data.get("iteration"))
            assert key not in seen[e["type"]], e
            seen[e["type"]].add(key)
    for i, e in enumerate(history):
        if e["type"] in ("workflow.completed", "workflow.cancelled", "workflow.compensated"):
            assert {x["type"] for x in history[i + 1:]} <= {"workflow.command_rejected"}, history[i:]


async def extra_checks(name: str, c: Cluster, iid: str, status: dict[str, Any],
                       history: list[dict[str, Any]]) -> None:
    """What a status path cannot say: timing, the breaker, the child instance."""
    if name == "circuit-breaker":
        assert c.activities.breakers.opened == 1
        assert await c.activities.breakers.state("flaky-api") == "closed"
        failed = next(e for e in history if e["type"] == "workflow.step_failed" and e["data"]["attempt"] == 2)
        done = next(e for e in history if e["type"] == "workflow.step_completed")
        assert done["ts"] - failed["ts"] >= 400  # attempt 3 waited out the 500 ms cool-down
    if name == "sub-workflow":
        child = await c.client.status(f"{iid}.credit_check.1")
        assert child["status"] == "completed" and child["correlation_id"] == "corr-1"
        assert child["workflow"] == "sub-workflow-child"
    if name == "early-event":
        waiting = next(e for e in history if e["type"] == "workflow.step_waiting")
        done = next(e for e in history if e["type"] == "workflow.step_completed"
                    and e["data"]["step"] == "wait_for_invoice")
        # the event is older than the wait: it was published during the delay
        assert int(done["data"]["event_id"].split("-")[0]) < waiting["ts"]
    if name == "delay":
        delayed = next(e for e in history if e["type"] == "workflow.step_delayed")
        done = next(e for e in history if e["type"] == "workflow.step_completed" and e["data"]["step"] == "cool_off")
        assert done["ts"] - delayed["ts"] >= 500


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.name)
def test_example_runs_to_its_documented_status(path: Path, cluster_backend: Any) -> None:
    factory, settings = cluster_backend
    run(run_example(path, factory, settings))


# -- static checks ---------------------------------------------------------------------
def test_every_example_validates_with_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    for path in example_files():
        spec = run_spec(path)
        args = ["definitions", "validate", str(path)]
        if spec.get("name"):
            args += ["--name", spec["name"], "--version", spec["version"]]
        assert cli_main(args) == 0, (path.name, capsys.readouterr().err)


def test_the_examples_and_the_document_name_each_other() -> None:
    text = LANGUAGE.read_text()
    named = set(re.findall(r"docs/examples/([\w.-]+\.(?:ya?ml|json))", text))
    files = {p.name for p in EXAMPLES.iterdir()}
    assert named <= files, f"the document names missing files: {sorted(named - files)}"
    unnamed = {p.name for p in example_files()} - named
    assert not unnamed, f"examples the document never mentions: {sorted(unnamed)}"


def test_definitions_in_the_document_parse() -> None:
    blocks = fenced_blocks(LANGUAGE.read_text())
    checked = 0
    for lang, body in blocks:
        if lang not in ("yaml", "json"):
            continue
        doc = yaml.safe_load(body) if lang == "yaml" else orjson.loads(body)  # every such block loads
        if not isinstance(doc, dict) or not {"steps", "spec", "definition"} & set(doc):
            continue  # a fragment (a retry policy, a filter, ...), not a definition
        bare = "steps" in doc and "name" not in doc
        parse_definition(body, fmt=lang, name="doc-snippet" if bare else None, version="1" if bare else None)
        checked += 1
    assert checked >= 4, f"only {checked} definitions found in docs/language.md"


def test_python_in_the_document_compiles() -> None:
    for lang, body in fenced_blocks(LANGUAGE.read_text()):
        if lang == "python":
            compile(body, "language.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    assert callable(ECHO["echo"]) and ECHO["SERVICES"]
    assert set(ECHO["__registry__"].services) == set(ECHO["SERVICES"])
