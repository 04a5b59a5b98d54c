"""`foldflow dlq list|show|replay|drop` against a real Redis: dead letters made
by the workers' own code paths, inspected and replayed as an operator would."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import redis.asyncio as aioredis

from engine.config import Settings
from engine.ops.cli import main
from engine.store.events import Store
from engine.store.keys import ACTIVITY_GROUP, ENGINE_GROUP, Keys
from engine.workers.router import EventRouter
from tests.support.helpers import Cluster
from tests.support.poll import eventually, run
from tests.support.tools import ROOT, foldflow_env

pytestmark = pytest.mark.redis


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("FOLDFLOW_PREFIX", settings.prefix)
    monkeypatch.setenv("FOLDFLOW_PARTITIONS", str(settings.partitions))
    return settings


def dlq(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    """Run `foldflow dlq ...` in this process: (exit code, parsed JSON or text, stderr)."""
    code = main(["dlq", *args])
    out, err = capsys.readouterr()
    try:
        return code, json.loads(out), err
    except json.JSONDecodeError:
        return code, out, err


async def _dead_letter(r: aioredis.Redis, store: Store, stream: str, group: str, dlq_key: str,
                       fields: dict[str, str], reason: str) -> str:
    """Dead-letter one entry the way the workers do (dead_letter.lua on a pending entry)."""
    await store.ensure_group(stream, group)
    entry_id = (await r.xadd(stream, fields)).decode()
    await r.xreadgroup(group, "op", {stream: ">"})
    await store.dead_letter_many([(stream, dlq_key, group, entry_id, reason, {k.encode(): v.encode()
                                  for k, v in fields.items()}, 3)], "op", 1_700_000_000_000)
    return entry_id


async def _seed(settings: Settings) -> dict[str, Any]:
    """Dead letters in partitions 1 and 2, and in the events dlq (the router's own path)."""
    keys = Keys(settings.prefix, settings.partitions)
    r = aioredis.Redis.from_url(settings.redis_url)
    store = Store(r, keys)
    await store.load_scripts()
    try:
        cmd = {"type": "cancel", "id": "x-1", "data": "{}", "cmd_id": "c-1"}
        a = await _dead_letter(r, store, keys.inbox(1), ENGINE_GROUP, keys.dlq(1), cmd, "unknown instance 'x-1'")
        task = {"task_id": "t", "id": "x", "step": "s", "attempt": "one", "reply_to": keys.inbox(2), "data": "{}"}
        b = await _dead_letter(r, store, keys.tasks(2, "billing"), ACTIVITY_GROUP, keys.dlq(2), task,
                               "field 'attempt' is not an integer")
        feed = {"type": "workflow.created", "id": "x", "data": "?"}
        c = await _dead_letter(r, store, keys.feed(2), "proj:executions", keys.dlq(2), feed, "unreadable feed entry")
        router = EventRouter(r, keys, store, "op", settings)
        await router.prepare()
        ev_id = (await r.xadd(keys.events, {"type": "agent.done", "data": "[1]"})).decode()
        await router.route(await router.reader.read(10, None))  # read first: dead_letter.lua checks the owner
        (d, _), = await r.xrange(f"{keys.events}:dlq")
        return {"inbox": a, "task": b, "feed": c, "event": ev_id, "event_dlq_id": d.decode(), "keys": keys}
    finally:
        await r.aclose()


async def _xadd_same_id(settings: Settings, keys: Keys) -> None:
    r = aioredis.Redis.from_url(settings.redis_url)
    try:
        for key in (keys.dlq(0), keys.dlq(3)):
            await r.xadd(key, {"reason": "hand-made", "source": keys.events, "fields": "{}"}, id="5-0")
    finally:
        await r.aclose()


def test_list_show_filters_and_errors(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    seeded = run(_seed(env))
    code, letters, _ = dlq(capsys, "list")
    assert code == 0 and len(letters) == 4
    assert [d["id"] for d in letters] == sorted((d["id"] for d in letters),
                                                key=lambda i: tuple(map(int, i.split("-"))))
    by_source = {d["source"]: d for d in letters}
    keys: Keys = seeded["keys"]
    inbox = by_source[keys.inbox(1)]
    assert inbox["partition"] == 1 and inbox["entry_id"] == seeded["inbox"] and inbox["deliveries"] == 3
    assert inbox["fields"] == {"type": "cancel", "id": "x-1", "data": "{}", "cmd_id": "c-1"}
    assert inbox["replayable"] and inbox["refusal"] is None
    feed = by_source[keys.feed(2)]
    assert not feed["replayable"] and "not one of this deployment's" in feed["refusal"]
    event = by_source[keys.events]
    assert event["partition"] == "events" and event["reason"] == "data must be a JSON object, got list"
    assert event["fields"] == {"type": "agent.done", "data": "[1]"} and event["replayable"]

    assert {d["source"] for d in dlq(capsys, "list", "--partition", "2")[1]} == {keys.tasks(2, "billing"),
                                                                                   keys.feed(2)}
    assert [d["source"] for d in dlq(capsys, "list", "--partition", "events")[1]] == [keys.events]
    assert [d["source"] for d in dlq(capsys, "list", "--reason-contains", "ATTEMPT")[1]] == [keys.tasks(2, "billing")]
    assert len(dlq(capsys, "list", "--limit", "2")[1]) == 2
    code, text, _ = dlq(capsys, "list", "--table")
    assert code == 0 and text.splitlines()[0].split()[:3] == ["REF", "WHEN", "SOURCE"]
    assert all(d["ref"] in text for d in letters) and inbox["ref"] == f"1/{inbox['id']}"

    code, shown, _ = dlq(capsys, "show", inbox["ref"])
    assert code == 0 and shown == inbox
    assert dlq(capsys, "show", inbox["id"], "--partition", "1")[1] == inbox
    code, text, _ = dlq(capsys, "show", inbox["ref"], "--table")
    assert code == 0 and "unknown instance 'x-1'" in text

    code, _, err = dlq(capsys, "show", "1-1")
    assert code == 1 and "not found" in err
    code, _, err = dlq(capsys, "show", inbox["id"], "--partition", "3")
    assert code == 1 and keys.dlq(3) in err
    # ids repeat across streams: a bare id found in two dlqs must be named by its ref
    run(_xadd_same_id(env, keys))
    code, _, err = dlq(capsys, "show", "5-0")
    assert code == 2 and "0/5-0 or 3/5-0" in err
    assert dlq(capsys, "show", "3/5-0")[1]["dlq"] == keys.dlq(3)
    for bad in (["show", "nope"], ["show", "9/5-0"], ["show", "1/5-0", "--partition", "2"], ["list", "--partition", "99"], ["list", "--partition", "x"],
                ["list", "--limit", "0"], ["replay"], ["drop", inbox["id"], "--all"],
                ["replay", inbox["id"], "--reason-contains", "x"]):
        code, _, err = dlq(capsys, *bad)
        assert code == 2 and err.startswith("foldflow: ") and "Traceback" not in err, (bad, err)


def test_replay_task_event_and_refusals(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    seeded = run(_seed(env))
    keys: Keys = seeded["keys"]
    letters = {d["source"]: d for d in dlq(capsys, "list")[1]}

    # a source outside the deployment's inboxes, task streams and events: refused, kept
    code, _, err = dlq(capsys, "replay", letters[keys.feed(2)]["ref"])
    assert code == 2 and "replay refused" in err

    # a task: back on its task stream with its original fields, gone from the dlq (one script)
    task = letters[keys.tasks(2, "billing")]
    code, out, _ = dlq(capsys, "replay", task["ref"])
    assert code == 0 and out["source"] == keys.tasks(2, "billing")
    # a second replay of the same dead letter finds nothing (not found: 1), and writes nothing
    code, _, err = dlq(capsys, "replay", task["id"], "--partition", "2")
    assert code == 1 and "not found" in err

    # an external event: XADD to ff:events, then XDEL from ff:events:dlq
    event = letters[keys.events]
    code, ev, _ = dlq(capsys, "replay", event["ref"])
    assert code == 0 and ev["source"] == keys.events

    async def check() -> None:
        r = aioredis.Redis.from_url(env.redis_url)
        try:
            entries = await r.xrange(keys.tasks(2, "billing"), min=out["new_id"], max=out["new_id"])
            assert entries and entries[0][1] == {k.encode(): v.encode() for k, v in task["fields"].items()}
            replayed = await r.xrange(keys.events, min=ev["new_id"], max=ev["new_id"])
            assert replayed[0][1] == {b"type": b"agent.done", b"data": b"[1]"}
            assert await r.xlen(f"{keys.events}:dlq") == 0
            assert await r.xlen(keys.dlq(2)) == 1  # the refused feed entry is still there
        finally:
            await r.aclose()

    run(check())

    # --all: what can be replayed is, the rest is reported and the exit code says so
    code, report, err = dlq(capsys, "replay", "--all")
    assert code == 2 and "not replayed" in err
    assert [x["id"] for x in report["replayed"]] == [letters[keys.inbox(1)]["id"]]
    assert [x["id"] for x in report["refused"]] == [letters[keys.feed(2)]["id"]]


def test_drop_one_and_all_matching(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    run(_seed(env))
    letters = dlq(capsys, "list")[1]
    first = letters[0]["ref"]
    code, out, _ = dlq(capsys, "drop", first)
    assert code == 0 and out["dropped"][0]["ref"] == first
    assert dlq(capsys, "drop", first)[0] == 1
    code, out, _ = dlq(capsys, "drop", "--all", "--reason-contains", "feed")
    assert code == 0 and len(out["dropped"]) == 1
    left = {d["reason"] for d in dlq(capsys, "list")[1]}
    assert len(left) == 2 and not any("feed" in r for r in left)
    code, out, _ = dlq(capsys, "drop", "--all")
    assert code == 0 and len(out["dropped"]) == 2 and dlq(capsys, "list")[1] == []


def test_a_dead_lettered_start_replays_once_its_definition_exists(settings: Settings, agent_example: bytes) -> None:
    """The operator's loop: a start for a workflow not registered yet is dead-lettered;
    register the definition, `foldflow dlq replay --all --reason-contains 'unknown workflow'`
    (a real process), and the instance runs to completion."""
    settings = Settings(**{**{f: getattr(settings, f) for f in settings.__struct_fields__}, "breaker_threshold": 0})
    keys = Keys(settings.prefix, settings.partitions)

    async def scenario() -> None:
        async with Cluster(lambda: aioredis.Redis.from_url(settings.redis_url), settings) as c:
            r = c.client.redis
            p = keys.partition("late-1")
            await r.xadd(keys.inbox(p), {"type": "start", "id": "late-1", "data": json.dumps({
                "workflow": "Agent Task Execution",
                "context": {"project_id": "p", "task_id": "t", "agent_id": "a"}})})

            async def dead_lettered() -> bool:
                return await r.xlen(keys.dlq(p)) == 1

            await eventually(dead_lettered)
            await c.client.register(agent_example)
            proc = subprocess.run(
                [sys.executable, "-m", "engine.ops.cli", "dlq", "replay", "--all", "--reason-contains", "unknown workflow"],
                env=foldflow_env(settings),
                capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert proc.returncode == 0, proc.stderr
            assert len(json.loads(proc.stdout)["replayed"]) == 1
            assert (await c.client.wait("late-1", timeout=30)).status == "completed"
            assert await r.xlen(keys.dlq(p)) == 0

    run(scenario())
