"""Schedules end to end: a real `foldflow api`, an engine worker (whose scheduler loop polls
every 100 ms), activities and a projector on a real Redis, driven through the HTTP API and
`foldflow schedules` (in process). 1 s interval schedules start instances with ids <name>@<UTC second>;
pause, unpause, trigger, backfill, replace and delete do what they say; bad input is a
problem naming the field."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from engine.client import Client
from engine.config import Settings
from engine.core.schedules import execution_id
from engine.ops.cli import main
from engine.store.keys import Keys
from tests.support.api_stack import ApiStack
from tests.support.fault_support import TWO_STEPS
from tests.support.poll import run, wait_for

pytestmark = pytest.mark.redis
ID = re.compile(r"^[a-z0-9-]+@\d{8}T\d{6}Z$")


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    logs: Path = tmp_path_factory.mktemp("schedules-stack")
    with ApiStack(redis_url, logs, env={"FOLDFLOW_SCHEDULE_POLL_MS": "100"}) as running:
        async def register() -> None:
            client = Client(aioredis.Redis.from_url(redis_url), _settings(running))
            await client.register(TWO_STEPS)
            await client.close()
        run(register())
        yield running


def _settings(stack: ApiStack) -> Settings:
    return Settings(redis_url=stack.redis_url, prefix=stack.prefix, partitions=stack.partitions)


def _statuses(stack: ApiStack, ids: list[str]) -> dict[str, str]:
    """started (the instance stream has events) or none, read with a plain sync client."""
    keys = Keys(stack.prefix, stack.partitions)
    r = redis.Redis.from_url(stack.redis_url)
    try:
        return {i: "started" if r.xlen(keys.instance(i)) else "none" for i in ids}
    finally:
        r.close()


def _started(stack: ApiStack, ids: list[str]) -> bool:
    return all(s != "none" for s in _statuses(stack, ids).values())


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def _runs(api: str, name: str, action: str) -> list[dict[str, Any]]:
    return [r for r in httpx.get(f"{api}/schedules/{name}").json()["recent_runs"] if r["action"] == action]


def test_api_create_runs_show_pause_unpause_trigger_backfill_delete(stack: ApiStack) -> None:
    api, name = stack.url, f"every-{uuid.uuid4().hex[:6]}"
    body = {"name": name, "workflow": TWO_STEPS["name"], "every": "1s", "overlap": "allow", "context": {"n": 1}}
    made = httpx.post(f"{api}/schedules", json=body)
    assert made.status_code == 201, made.text
    assert made.headers["location"] == f"/schedules/{name}"
    upcoming = [_ms(t) for t in made.json()["next_fire_times"]]
    assert len(upcoming) == 5 and all(b - a == 1000 for a, b in itertools.pairwise(upcoming))
    assert httpx.post(f"{api}/schedules", json=body).status_code == 409

    wait_for(lambda: len(_runs(api, name, "started")) >= 2, 10, "two regular starts")
    ids = [r["execution_id"] for r in _runs(api, name, "started")]
    assert all(ID.match(i) for i in ids) and ids[0] == execution_id(name, _ms(_runs(api, name, "started")[0]["fire_time"]))
    wait_for(lambda: _started(stack, ids), 10, "the instances of the fires")

    paused = httpx.post(f"{api}/schedules/{name}/pause")
    assert paused.status_code == 200 and paused.json()["state"]["paused"] and paused.json()["next_fire_times"] == []
    assert paused.json()["state"]["next_fire"] is None
    pause_ms = int(time.time() * 1000)
    time.sleep(2.5)
    unpaused = httpx.post(f"{api}/schedules/{name}/unpause").json()
    assert not unpaused["state"]["paused"]
    wait_for(lambda: any(_ms(r["fire_time"]) > pause_ms + 2500 for r in _runs(api, name, "started")), 10,
             "a start after the unpause")
    during = [execution_id(name, t) for t in range((pause_ms // 1000 + 2) * 1000, pause_ms + 2000, 1000)]
    assert all(s == "none" for s in _statuses(stack, during).values()), "the paused time is not backfilled"

    triggered = httpx.post(f"{api}/schedules/{name}/trigger", json={})
    assert triggered.status_code == 202, triggered.text
    [tid] = triggered.json()["execution_ids"]
    assert tid.startswith(f"{name}@trigger-")
    wait_for(lambda: _started(stack, [tid]) and _runs(api, name, "triggered"), 10, "the triggered run")

    created = _ms(made.json()["state"]["created_at"])
    window = {"from": _iso(created - 10_000), "to": _iso(created - 5_000)}
    filled = httpx.post(f"{api}/schedules/{name}/backfill", json=window)
    assert filled.status_code == 202, filled.text
    back = filled.json()["execution_ids"]
    assert len(back) in (5, 6) and back == sorted(back)
    wait_for(lambda: _started(stack, back) and len(_runs(api, name, "backfilled")) == len(back), 10, "the backfill")
    too_big = httpx.post(f"{api}/schedules/{name}/backfill", json={"from": _iso(created - 3_600_000), "to": _iso(created)})
    assert too_big.status_code == 400 and "1000" in too_big.json()["detail"]

    replaced = httpx.put(f"{api}/schedules/{name}", json={**body, "name": None, "cron": "0 9 * * 1-5", "every": None,
                                                            "timezone": "Europe/Berlin"})
    assert replaced.status_code == 200, replaced.text
    nine = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in replaced.json()["next_fire_times"]]
    assert all(t.astimezone(ZoneInfo("Europe/Berlin")).hour == 9 for t in nine)
    listed = httpx.get(f"{api}/schedules").json()["items"]
    assert name in [s["name"] for s in listed]
    assert httpx.delete(f"{api}/schedules/{name}").status_code == 204
    assert httpx.get(f"{api}/schedules/{name}").status_code == 404
    assert httpx.post(f"{api}/schedules/{name}/trigger", json={}).status_code == 404


def test_api_bad_input_is_a_problem_naming_the_field(stack: ApiStack) -> None:
    api = stack.url
    bad = httpx.post(f"{api}/schedules", json={"name": "bad", "workflow": TWO_STEPS["name"], "cron": "61 * * * *",
                                               "timezone": "Mars/Base", "catchup_window": "soon"})
    assert bad.status_code == 422
    assert [e["path"] for e in bad.json()["errors"]] == ["cron", "timezone", "catchup_window"]
    assert httpx.post(f"{api}/schedules", json={"name": "x", "workflow": TWO_STEPS["name"],
                                                "every": "500ms"}).json()["errors"][0]["path"] == "every"
    unknown = httpx.post(f"{api}/schedules", json={"name": "y", "workflow": "no-such-wf", "every": "1m"})
    assert unknown.status_code == 404 and "no-such-wf" in unknown.json()["detail"]
    assert httpx.post(f"{api}/schedules", json={"name": "z", "workflow": TWO_STEPS["name"], "every": "1m",
                                                "overlap": "sometimes"}).status_code == 400
    assert httpx.get(f"{api}/schedules/nope").status_code == 404


def _cli(stack: ApiStack, *args: str) -> subprocess.CompletedProcess[str]:
    """`foldflow schedules ...` in this process (engine.ops.cli.main, as the console script runs it):
    its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    conn = ["--redis-url", stack.redis_url, "--prefix", stack.prefix, "--partitions", str(stack.partitions)]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["schedules", args[0], *conn, *args[1:]])
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def _ok(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _counters(stack: ApiStack, name: str) -> dict[str, int]:
    found: dict[str, int] = httpx.get(f"{stack.url}/schedules/{name}").json()["state"]["counters"]
    return found


def test_cli_verbs(stack: ApiStack) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    made = _ok(_cli(stack, "create", name, "--workflow", TWO_STEPS["name"], "--every", "1s", "--overlap", "allow",
                    "--context", '{"from": "cli"}', "--catchup-window", "30s"))
    assert made["schedule"]["every"] == "1s" and len(made["next_fire_times"]) == 5
    tid = _ok(_cli(stack, "trigger", name))["execution_id"]
    now = int(time.time() * 1000)
    filled = _ok(_cli(stack, "backfill", name, "--from", _iso(now - 60_000), "--to", _iso(now - 58_000)))
    assert filled["count"] in (2, 3) and all(ID.match(i) for i in filled["execution_ids"])
    wait_for(lambda: _started(stack, [tid, *filled["execution_ids"]]), 15, "the trigger and the backfill")
    wait_for(lambda: _counters(stack, name)["started"] >= 1, 15, "a regular start")
    assert _ok(_cli(stack, "pause", name))["paused"] is True
    shown = _ok(_cli(stack, "show", name, "--next", "3"))
    assert shown["state"]["paused"] and shown["state"]["counters"]["backfilled"] == filled["count"]
    bad = _cli(stack, "create", "bad name", "--workflow", TWO_STEPS["name"], "--cron", "* * *")
    assert bad.returncode == 2 and "name" in bad.stderr and "cron" in bad.stderr
    assert _ok(_cli(stack, "delete", name)) == {"deleted": name}


def test_cli_list_unpause_and_not_found(stack: ApiStack) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    _ok(_cli(stack, "create", name, "--workflow", TWO_STEPS["name"], "--cron", "*/5 * * * *", "--paused"))
    assert name in [s["name"] for s in _ok(_cli(stack, "list"))]
    unpaused = _ok(_cli(stack, "unpause", name))
    assert unpaused["paused"] is False and unpaused["next_fire"] is not None
    shown = _ok(_cli(stack, "show", name, "--next", "3"))
    assert [_ms(t) % 300_000 for t in shown["next_fire_times"]] == [0, 0, 0]
    assert _cli(stack, "show", "missing-one").returncode == 1
    _ok(_cli(stack, "delete", name))
    assert _cli(stack, "delete", name).returncode == 1
