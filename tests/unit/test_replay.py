"""Replay recorded histories from tests/histories/ through evolve.

Each file holds ``{"definition", "commands", "events", "ts", "expect"}``: the
events as stored (``msgspec.json.encode`` of each event, so ``type`` is inside),
the stream timestamp of each, and the state they must fold into. A change that
renames or retypes an event field, or changes what folding a stored event
means, breaks these tests; that is their job. Histories are data, never
regenerated to make a test pass. Every event type of ``AnyEvent`` must appear in
some history (``test_every_event_type_has_a_recorded_history``).

Recording, for adding a new history on purpose (``python -m tests.unit.test_replay
[NAME ...]``, from the repository root; existing files are kept unless named):
the ``agent_*`` histories are scripted through the decider (``SCRIPTS``); the
``example_*`` ones are real runs of docs/examples (``EXAMPLE_RUNS``) on fakeredis,
through the same workers and checks as tests/contract/test_docs_examples.py, with
the stored events read back from the instance stream (``recorded_from`` names the
example and any settings it ran with).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.core.decide import decide_and_fold  # noqa: E402
from engine.core.definition import parse_definition  # noqa: E402
from engine.core.evolve import evolve, fold_stored  # noqa: E402
from engine.core.model import (  # noqa: E402
    COMMAND_TYPES,
    EVENT_TYPES,
    INITIAL,
    Envelope,
    Event,
    State,
    decode_event,
    encode,
)

HISTORIES = ROOT / "tests" / "histories"
FILES = sorted(HISTORIES.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(path.read_bytes())
    return doc


def stored_events(doc: dict[str, Any]) -> list[tuple[Event, int]]:
    assert len(doc["events"]) == len(doc["ts"])
    return [(decode_event(orjson.dumps(raw)), ts) for raw, ts in zip(doc["events"], doc["ts"])]


def summary(state: State) -> dict[str, Any]:
    """What a history pins down about the state it folds into."""
    return {
        "status": state.status,
        "version": state.version,
        "workflow": state.workflow,
        "def_version": state.def_version,
        "output": state.output,
        "failed_step": state.failed_step,
        "error": None if state.error is None else state.error.message,
        "created_ms": state.created_ms,
        "updated_ms": state.updated_ms,
        "finished_ms": state.finished_ms,
        "seen": sorted(state.seen),
        "steps": {
            name: {
                "status": st.status,
                "attempt": st.attempt,
                "budget_from": st.budget_from,
                "handler_retries": st.handler_retries,
                "continued": st.continued,
                "output": st.output,
                "error": None if st.error is None else st.error.message,
            }
            for name, st in sorted(state.steps.items())
        },
    }


def test_there_are_histories_to_replay() -> None:
    assert len(FILES) >= 3


def test_every_event_type_has_a_recorded_history() -> None:
    """A new event type needs a recorded history (see the module docstring for recording one)."""
    recorded = {raw["type"] for path in FILES for raw in load(path)["events"]}
    missing = sorted(set(EVENT_TYPES) - recorded)
    assert not missing, f"event types with no history in tests/histories/: {missing}"
    assert recorded <= set(EVENT_TYPES), sorted(recorded - set(EVENT_TYPES))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_a_recorded_history_folds_into_its_recorded_state(path: Path) -> None:
    doc = load(path)
    assert summary(fold_stored(INITIAL, stored_events(doc))) == doc["expect"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_a_recorded_history_folds_the_same_one_event_at_a_time(path: Path) -> None:
    stored = stored_events(load(path))
    state = INITIAL
    for event, ts in stored:
        state = evolve(state, event, ts)
    assert state == fold_stored(INITIAL, stored)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_recorded_events_encode_back_to_what_was_stored(path: Path) -> None:
    doc = load(path)
    for raw, (event, _) in zip(doc["events"], stored_events(doc)):
        assert orjson.loads(encode(event)) == raw


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_the_definition_of_a_history_still_parses(path: Path) -> None:
    doc = load(path)
    parse_definition(doc["definition"])


# ---------------------------------------------------------------------------
# Recording (run this file as a script)
# ---------------------------------------------------------------------------
T0 = 1_700_000_000_000
IID = "agent-1"
CONTEXT = {"task_id": "t-1", "agent_id": "a-1", "project_id": "p-1"}
PREP, ASSIGN, MONITOR, RESULTS = "task_preparation", "agent_assignment", "execution_monitoring", "result_processing"
EVENT = {"task_id": "t-1", "agent_id": "a-1", "summary": "done"}


def _start(cmd_id: str | None = None) -> tuple[int, dict[str, Any], str | None]:
    return 0, {"type": "start", "workflow": "Agent Task Execution", "context": CONTEXT}, cmd_id


def _result(at: int, step: str, attempt: int, output: Any = None, error: dict[str, Any] | None = None
            ) -> tuple[int, dict[str, Any], str | None]:
    task_id = f"{IID}:{step}:{attempt}"
    if error is not None:
        return at, {"type": "step.failed", "step": step, "attempt": attempt, "task_id": task_id, "error": error}, None
    return at, {"type": "step.completed", "step": step, "attempt": attempt, "task_id": task_id, "output": output}, None


def _event(at: int, attempt: int) -> tuple[int, dict[str, Any], str | None]:
    return at, {"type": "event", "step": MONITOR, "attempt": attempt, "event_type": "agent.task_completed",
                "event_id": f"{T0 + at}-0", "data": EVENT}, None


def _timer(at: int, kind: str, step: str, attempt: int) -> tuple[int, dict[str, Any], str | None]:
    return at, {"type": "timer", "kind": kind, "step": step, "attempt": attempt}, None


def _control(at: int, kind: str, cmd_id: str | None = None, **data: Any) -> tuple[int, dict[str, Any], str | None]:
    return at, {"type": kind, **data}, cmd_id


SCRIPTS: dict[str, list[tuple[int, dict[str, Any], str | None]]] = {
    "agent_happy_path_with_retry": [
        _start("start-1"),
        _result(100, PREP, 1, error={"message": "planning-system unavailable", "kind": "handler"}),
        _timer(1_100, "retry", PREP, 1),
        _result(1_500, PREP, 2, output={"prepared": True}),
        _result(2_000, ASSIGN, 1, output={"agent": "a-1"}),
        _event(60_000, 1),
        _result(61_000, RESULTS, 1, output={"stored": True}),
    ],
    "agent_failed_then_retried": [
        _start(),
        _result(100, PREP, 1, output={"prepared": True}),
        _result(200, ASSIGN, 1, error={"message": "agent pool empty", "retryable": False}),
        _control(10_000, "retry", "op-retry-1"),
        _result(10_100, ASSIGN, 2, output={"agent": "a-1"}),
        _control(10_200, "pause", "op-pause-1", reason="maintenance"),
        _control(10_300, "resume"),
        _timer(3_610_100, "timeout", MONITOR, 1),
        _control(3_700_000, "retry", "op-retry-2"),
        _event(3_800_000, 2),
        _result(3_800_100, RESULTS, 1, error={"message": "timeout talking to db"}),
        _timer(3_801_100, "retry", RESULTS, 1),
        _result(3_801_200, RESULTS, 2, output={"stored": True}),
    ],
    "agent_cancelled_while_waiting": [
        _start(),
        _result(100, PREP, 1, output={"prepared": True}),
        _result(200, ASSIGN, 1, output={"agent": "a-1"}),
        _control(300, "pause", "op-pause-1"),
        _control(400, "pause", "op-pause-2"),
        _control(500, "cancel", "op-cancel-1", reason="task withdrawn"),
        _event(600, 1),
        _control(700, "resume", "op-resume-1"),
    ],
    # admission control: the engine worker found no free slot for the start's concurrency key
    "agent_queued_then_admitted": [
        (0, {**_start()[1], "priority": 7, "tenant": "acme",
             "admission": {"outcome": "queue", "key": "acme", "limit": 1}}, "start:agent-1"),
        _control(5_000, "admit", "admit:agent-1", key="acme"),
        _result(5_100, PREP, 1, output={"prepared": True}),
        _control(5_200, "cancel", "op-cancel-1", reason="done for now"),
    ],
}


# name -> (the docs/examples file, Settings overrides of its run); together with SCRIPTS
# they cover every event type.
EXAMPLE_RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "example_compensation": ("compensation.yaml", {}),  # compensating, compensated
    "example_sub_workflow": ("sub-workflow.yaml", {}),  # child_started
    "example_loop_long_history": ("loop.yaml", {"history_warn_events": 8}),  # iteration_completed, history_large
    "example_delay": ("delay.yaml", {}),  # step_delayed
    "example_control_pause_signal": ("control-pause-signal.yaml", {}),  # signal_received
    "example_step_condition": ("step-condition.yaml", {}),  # step_skipped
}


def _wanted(name: str, names: set[str] | None) -> bool:
    """Named ones are recorded afresh; without names, only those with no file yet."""
    return name in names if names is not None else not (HISTORIES / f"{name}.json").exists()


def record(names: set[str] | None = None) -> None:
    source = orjson.loads((ROOT / "engine" / "dev" / "examples" / "agent-task-execution.json").read_bytes())
    definition = parse_definition(source)
    HISTORIES.mkdir(exist_ok=True)
    for name, script in SCRIPTS.items():
        if not _wanted(name, names):
            continue
        state, events, stamps, commands = INITIAL, [], [], []
        for n, (at, data, cmd_id) in enumerate(script):
            command = msgspec.json.decode(orjson.dumps(data), type=COMMAND_TYPES[data["type"]])
            envelope = Envelope(instance_id=IID, entry_id=f"{T0 + at}-{n}", command=command, cmd_id=cmd_id)
            new, state = decide_and_fold(state, envelope, definition, T0 + at)
            events += [orjson.loads(encode(e)) for e in new]
            stamps += [T0 + at] * len(new)
            commands.append({"at": T0 + at, "cmd_id": cmd_id, "command": data})
        doc = {"definition": source, "commands": commands, "events": events, "ts": stamps, "expect": summary(state)}
        (HISTORIES / f"{name}.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"{name}: {len(events)} events, {state.status}")


def record_examples(names: set[str] | None = None) -> None:
    import asyncio

    import fakeredis
    import yaml

    from engine.config import Settings
    from tests.contract.test_docs_examples import EXAMPLES, run_example

    for name, (file, overrides) in EXAMPLE_RUNS.items():
        if not _wanted(name, names):
            continue
        path = EXAMPLES / file
        server = fakeredis.FakeServer()
        settings = Settings(prefix="rec", partitions=4, block_ms=20, timer_poll_ms=20, claim_idle_ms=1_000,
                            breaker_threshold=0, **overrides)
        ran = asyncio.run(run_example(path, lambda: fakeredis.FakeAsyncRedis(server=server), settings))
        text = path.read_text()
        source = orjson.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        state = fold_stored(INITIAL, ran["events"])
        commands = []
        for entry_id, fields in ran["commands"]:
            data = orjson.loads(fields["data"])
            commands.append({"at": int(entry_id.split("-")[0]), "cmd_id": fields.get("cmd_id"),
                             "command": {"type": fields["type"], **(data if isinstance(data, dict) else {})}})
        doc = {"recorded_from": {"example": f"docs/examples/{file}", "settings": overrides},
               "definition": source, "commands": commands,
               "events": [orjson.loads(encode(e)) for e, _ in ran["events"]], "ts": [ts for _, ts in ran["events"]],
               "expect": summary(state)}
        (HISTORIES / f"{name}.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"{name}: {len(doc['events'])} events, {state.status}, types "
              f"{sorted({e['type'] for e in doc['events']})}")


if __name__ == "__main__":
    wanted = set(sys.argv[1:]) or None
    record(wanted)
    record_examples(wanted)
