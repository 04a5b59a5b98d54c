"""Per-service limits across the cluster, end to end on a real Redis with real
processes: limits set with `foldflow services limit`, one engine worker, two
activity worker processes (4 handler slots each) sharing the limits. The handlers
record their own start and end times (tests/support/limit_handlers.py): an
in-flight limit of 2 is never exceeded across both workers; a rate of 10 per 1 s
spreads 30 tasks over more than 2 s; waiting tasks show in `foldflow stuck` and in
`foldflow services limits`; nothing fails."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.client import Client
from engine.config import Settings
from engine.errors import UnknownInstance
from engine.ops.cli import main, parse_args
from engine.runtime.heartbeat import read_heartbeats
from engine.store.connection import connect
from engine.store.keys import Keys
from tests.support.fault_support import Procs
from tests.support.limit_handlers import IN_FLIGHT_SERVICE, RATE_SERVICE, definition, most_at_once, runs
from tests.support.poll import eventually, run
from tests.support.tools import CRASH_KNOBS, foldflow_env

pytestmark = pytest.mark.redis
HANDLERS = "tests.support.limit_handlers"


def _argv(settings: Settings, args: tuple[str, ...]) -> list[str]:
    return [*args, "--redis-url", settings.redis_url, "--prefix", settings.prefix,
            "--partitions", str(settings.partitions)]


def cli(settings: Settings, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`foldflow ARGS` in this process (no event loop running): exit code, stdout, stderr."""
    capsys.readouterr()
    code = main(_argv(settings, args))
    out, err = capsys.readouterr()
    return code, out, err


async def cli_async(settings: Settings, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """`foldflow ARGS`'s verb awaited in the running loop (the CLI's own code path): its stdout."""
    capsys.readouterr()
    parsed = parse_args(_argv(settings, args))
    assert await parsed.fn(parsed) in (0, 1)
    return capsys.readouterr().out


def ok(answer: tuple[int, str, str]) -> Any:
    code, out, err = answer
    assert code == 0, err + out
    return json.loads(out)


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Procs]:
    procs = Procs(foldflow_env(settings, CRASH_KNOBS, FOLDFLOW_CONCURRENCY="4"), tmp_path)
    try:
        yield procs
    finally:
        procs.kill_all()


async def _start(settings: Settings, name: str, service: str, n: int, ctx: dict[str, Any]) -> tuple[Client, list[str]]:
    """Once both activity workers are up (their heartbeats name the service), n instances of a one-step workflow."""
    client = Client(connect(settings.redis_url), settings)
    keys = Keys(settings.prefix, settings.partitions)

    async def both_up() -> bool:
        beats = await read_heartbeats(client.redis, keys)
        return sum(bool(hb["role"] == "activities" and service in hb["services"]) for hb in beats) == 2
    await eventually(both_up, 30, "both activity workers are up", interval=0.1)
    await client.register(orjson.dumps(definition(name, service)))
    ids = [await client.start(name, ctx, instance_id=f"{name}-{i}") for i in range(n)]
    return client, ids


async def _all_completed(client: Client, ids: list[str], timeout: float) -> None:
    async def done() -> bool:
        return all([(await client.status(i))["status"] == "completed" for i in ids])
    await eventually(done, timeout, "every instance completed", interval=0.2, retry_on=(UnknownInstance,))


def test_cli_sets_shows_and_clears_limits_and_refuses_bad_input(settings: Settings,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    shown = ok(cli(settings, capsys, "services", "limit", "svc-a", "--in-flight", "5", "--rate", "100/1m"))
    assert shown["limited"] and shown["in_flight"] == 5
    assert shown["rate"] == {"limit": 100, "per": "1m", "per_ms": 60_000}
    assert shown["usage"] == {"in_flight": 0, "tokens": 100.0, "waiting": 0, "waiting_in_flight": 0,
                              "waiting_rate": 0}
    assert [s["service"] for s in ok(cli(settings, capsys, "services", "limits"))] == ["svc-a"]
    ok(cli(settings, capsys, "services", "register", "svc-a", "http://127.0.0.1:9"))
    assert ok(cli(settings, capsys, "services", "show", "svc-a"))["limits"]["in_flight"] == 5, "shown with it"
    for bad, field in ((["--in-flight", "0"], "in_flight"), (["--rate", "10/1y"], "rate.per"),
                       (["--rate=-3/1s"], "rate"), (["--in-flight", "2", "--lease", "5ms"], "lease"), ([], "give")):
        code, _, err = cli(settings, capsys, "services", "limit", "svc-a", *bad)
        assert code == 2 and field in err, (bad, err)
    assert ok(cli(settings, capsys, "services", "limit", "svc-a", "--clear")) == {"cleared": "svc-a"}
    assert cli(settings, capsys, "services", "limit", "svc-a", "--clear")[0] == 1
    assert ok(cli(settings, capsys, "services", "limits", "svc-a"))["limited"] is False


def test_in_flight_limit_holds_across_two_workers(settings: Settings, stack: Procs, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    ok(cli(settings, capsys, "services", "limit", IN_FLIGHT_SERVICE, "--in-flight", "2"))
    log = tmp_path / "runs.log"

    async def scenario() -> None:
        for name in ("w", "a1", "a2"):
            stack.start(name, "worker" if name == "w" else "activities", *([] if name == "w" else ["--module", HANDLERS]))
        client, ids = await _start(settings, "lim-inflight", IN_FLIGHT_SERVICE, 16, {"log": str(log), "sleep": 0.1})
        try:
            await _all_completed(client, ids, 60)
        finally:
            await client.close()

    run(scenario())
    found = runs(log)
    assert len(found) == 16 and all(len(r) == 1 and r[0][1] is not None for r in found.values()), found
    intervals = [(s, e) for r in found.values() for s, e, _ in r if e is not None]
    assert most_at_once(intervals) == 2, "at most 2 at once, and the limit was used"
    assert len({pid for r in found.values() for _, _, pid in r}) == 2, "both workers ran tasks under one limit"


def test_rate_limit_spreads_tasks_and_stuck_says_rate_limited(settings: Settings, stack: Procs, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    ok(cli(settings, capsys, "services", "limit", RATE_SERVICE, "--rate", "10/1s"))
    log = tmp_path / "runs.log"
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        for name in ("w", "a1", "a2"):
            stack.start(name, "worker" if name == "w" else "activities", *([] if name == "w" else ["--module", HANDLERS]))
        client, ids = await _start(settings, "lim-rate", RATE_SERVICE, 30, {"log": str(log), "sleep": 0})

        async def waiting_shown() -> bool:
            usage = json.loads(await cli_async(settings, capsys, "services", "limits", RATE_SERVICE))["usage"]
            stuck = await cli_async(settings, capsys, "stuck", "--older-than", "0")
            seen.update(usage=usage, stuck=stuck)
            return usage["waiting_rate"] > 0 and "rate limited: service 'rated-svc' allows 10 per 1s" in stuck

        try:
            await eventually(waiting_shown, 30, "waiting tasks shown by limits and stuck", interval=0.1)
            await _all_completed(client, ids, 60)
        finally:
            await client.close()

    run(scenario())
    found = runs(log)
    assert len(found) == 30 and all(r[0][1] is not None for r in found.values())
    starts = sorted(r[0][0] for r in found.values())
    assert starts[-1] - starts[0] >= 1.8, "10 at once (the bucket's capacity), then 10 per second"
    window = max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts)
    assert window <= 22, f"{window} starts within one second: more than capacity + refill (20) and some jitter"
    assert "waiting since" in seen["stuck"], seen["stuck"]
    print(next(line for line in seen["stuck"].splitlines() if "rate limited" in line), seen["usage"])
    print(f"30 tasks at 10/1s started over {starts[-1] - starts[0]:.2f}s; busiest second {window}")
