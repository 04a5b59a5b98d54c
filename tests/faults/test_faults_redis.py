"""Fault 3, Redis restarts under load: a redis-server we start ourselves with
`--appendonly yes --appendfsync everysec` on a fixed port and dir is restarted
mid-run (a) after a clean SHUTDOWN, (b) after SIGKILL, (c) after SIGKILL with
the AOF cut back to its size of one second earlier (what a power loss under
everysec can lose: writes acknowledged but not yet fsynced). The worker
processes stay up, reconnect with backoff, reload their scripts (NOSCRIPT) and
the run completes; what was lost is counted and printed.

The definition's steps have a short `timeout` and retries, so a task result
lost with the last second of writes is retried (by the step timeout, or by the
task reclaim once the restored pending entry goes idle).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from engine.client import Client
from engine.config import Settings
from engine.dev.embedded import RedisServer, free_port
from engine.store.keys import ACTIVITY_GROUP, ENGINE_GROUP, Keys
from projections import PROJECTIONS
from projections.keys import group_name
from tests.faults.test_projections_crash import check_exact
from tests.support.fault_support import Procs, check_all, completed_count, counters, histories, pending_total, start_many
from tests.support.poll import eventually, run, wait_for
from tests.support.tools import FAULT_KNOBS, foldflow_env

pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("redis_server_bin")]  # starts its own redis-servers

STEP = {"step_type": "service_call", "service": "agent-orchestrator", "timeout": 3000,
        "retry_policy": {"max_attempts": 5, "backoff_base": 1, "backoff_multiplier": 200}}
RESTART_DEF = {
    "name": "fault-restart", "version": "1",
    "definition": {"steps": [
        {**STEP, "name": "s1", "endpoint": "/a", "sequence": 1},
        {**STEP, "name": "s2", "endpoint": "/b", "sequence": 2, "depends_on": ["s1"]},
        {**STEP, "name": "s3", "endpoint": "/c", "sequence": 3, "depends_on": ["s2"]},
    ]},
}


async def starts_on_disk(r: aioredis.Redis, server: RedisServer) -> None:
    """What was written so far is in the AOF file (nothing left in Redis's AOF buffer or
    waiting for its background fsync), then fsynced by us: the file holds it for good."""
    async def written() -> bool:
        info = await r.info("persistence")
        return int(info["aof_buffer_length"]) == 0 and int(info["aof_pending_bio_fsync"]) == 0 \
            and aof_file(server) is not None
    await eventually(written, 10, "the starts are written to the AOF", interval=0.01)
    aof = aof_file(server)
    assert aof is not None
    fd = os.open(aof, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def aof_file(server: RedisServer) -> Path | None:
    d = Path(server.dir) / "appendonlydir"
    incr = sorted(d.glob("*.incr.aof"), key=lambda p: int(p.name.split(".")[-3])) if d.exists() else []
    return incr[-1] if incr else None


class AofWatch(threading.Thread):
    """Records the AOF's size every 50 ms, to cut it back to what it was a second ago."""

    def __init__(self, server: RedisServer) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.sizes: list[tuple[float, Path | None, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            f = aof_file(self.server)
            self.sizes.append((time.monotonic(), f, f.stat().st_size if f else 0))
            time.sleep(0.05)

    def size_before(self, seconds: float) -> tuple[Path | None, int]:
        cut = time.monotonic() - seconds
        older = [(f, n) for t, f, n in self.sizes if t <= cut]
        return older[-1] if older else (None, 0)


class Probe:
    """Acknowledged writes, one at a time: how many of them survive the restart."""

    def __init__(self, r: aioredis.Redis, key: str) -> None:
        self.r = r
        self.key = key
        self.acked = 0
        self.halt = False

    async def run(self) -> None:
        while not self.halt:
            try:
                await self.r.xadd(self.key, {"n": self.acked + 1})
            except (redis.exceptions.ConnectionError, OSError):
                return
            self.acked += 1
            await asyncio.sleep(0.001)

    async def survived(self) -> int:
        last = await self.r.xrevrange(self.key, count=1)
        return int(last[0][1][b"n"]) if last else 0


def aof_commands(tail: bytes) -> dict[str, int]:
    """What a cut-off piece of the AOF held: scripts (MULTI), commands by name and key kind."""
    out: dict[str, int] = {}
    kinds = {b":i:": "instance", b"}:feed": "feed", b"}:inbox": "inbox", b"}:tasks:": "tasks",
             b"}:timers": "timers", b":probe": "probe"}
    for m in re.finditer(rb"\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n(?:\$\d+\r\n([^\r]*)\r\n)?", tail):
        name = m.group(1).upper().decode()
        key = m.group(2) or b""
        kind = next((k for frag, k in kinds.items() if frag in key), "other")
        label = name if name in ("MULTI", "EXEC", "SELECT") else f"{name} {kind}"
        out[label] = out.get(label, 0) + 1
    return out


def cut_instances(tail: bytes) -> tuple[int, int]:
    """Instances whose events were in the cut; how many of them had completed."""
    touched = set(re.findall(rb"\$4\r\nXADD\r\n\$\d+\r\n(\{[^\r]*\}:i:[^\r]+)\r\n", tail))
    done = set(re.findall(rb"\$4\r\nXADD\r\n\$\d+\r\n(\{[^\r]*\}:i:[^\r]+)\r\n(?:\$\d+\r\n[^\r]*\r\n){1,3}?"
                          rb"\$\d+\r\nworkflow\.completed\r\n", tail))
    return len(touched), len(done)


async def snapshot(r: aioredis.Redis, keys: Keys, ids: list[str]) -> dict[str, int]:
    pipe = r.pipeline(transaction=False)
    for p in range(keys.partitions):
        pipe.xlen(keys.feed(p))
        pipe.xlen(keys.inbox(p))
        pipe.xlen(keys.tasks(p, "agent-orchestrator"))
    rows = await pipe.execute()
    return {"feed_entries": sum(rows[0::3]), "inbox_entries": sum(rows[1::3]), "task_entries": sum(rows[2::3]),
            "completed": await completed_count(r, keys, ids)}


def restart_run(tmp_path: Path, mode: str, instances: int, engines: int = 2) -> dict[str, Any]:
    port = free_port()
    # A power loss is simulated by cutting the AOF back to its size one second earlier,
    # which only works within one AOF file: no automatic rewrite may start a new one.
    no_rewrite = ("--auto-aof-rewrite-percentage", "0") if mode == "powerloss" else ()
    server = RedisServer(port, "--appendonly", "yes", "--appendfsync", "everysec", *no_rewrite)
    server.start()
    settings = Settings(redis_url=server.url, prefix="ffr", partitions=4)
    procs = Procs(foldflow_env(settings, FAULT_KNOBS, FOLDFLOW_BATCH_SIZE="128"), tmp_path)
    watch = AofWatch(server)
    report: dict[str, Any] = {"mode": mode, "instances": instances, "engine_workers": engines}

    async def scenario() -> None:
        r = aioredis.Redis.from_url(server.url)
        client = Client(r, settings)
        keys = Keys(settings.prefix, settings.partitions)
        await client.register(RESTART_DEF)
        ids = [f"rr-{i}" for i in range(instances)]
        await start_many(r, keys, ids, RESTART_DEF["name"])
        await starts_on_disk(r, server)  # before anything can be lost
        await r.aclose()
        watch.start()
        for i in range(engines):
            procs.start(f"w{i + 1}", "worker")
        procs.start("a1", "activities")
        procs.start("p1", "projector")
        r = aioredis.Redis.from_url(server.url)
        probe = Probe(aioredis.Redis.from_url(server.url), f"{settings.prefix}:probe")
        probing = asyncio.create_task(probe.run())
        async def progress() -> int:  # 9 events per instance; restart at about 40% of them
            return int(sum([await r.xlen(keys.feed(p)) for p in range(keys.partitions)]))

        await eventually(lambda: _at_least(progress(), instances * 9 * 2 // 5), 60, "40% of the events", interval=0.01)
        if mode == "powerloss":  # a second of AOF sizes to cut back to
            await eventually(lambda: time.monotonic() - watch.sizes[0][0] >= 1.1, 10, "a second of AOF sizes",
                             interval=0.02)
        before = await snapshot(r, keys, ids)
        assert before["completed"] < instances, f"the restart came too late to test anything: {before}"

        await r.aclose()
        seen = {n: procs.log(n).count("redis unavailable") for n in procs.procs}
        acked = probe.acked
        began = time.monotonic()
        cut = None
        if mode == "shutdown":
            sync = redis.Redis(port=port)
            try:
                sync.shutdown()
            except redis.exceptions.ConnectionError:
                pass
            assert server.proc is not None
            server.proc.wait(10)
        else:
            aof, size = watch.size_before(1.0)
            assert server.proc is not None
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait()
            if mode == "powerloss":
                now = aof_file(server)
                assert aof is not None and now == aof, "the AOF was rewritten in the last second; cannot cut it"
                with open(aof, "rb") as f:
                    f.seek(size)
                    tail = f.read()
                cut = {"bytes": len(tail), "commands": aof_commands(tail)}
                cut["instances_rolled_back"], cut["completions_lost"] = cut_instances(tail)
                os.truncate(aof, size)
        watch.halt.set()
        down = time.monotonic() - began
        # the outage is seen: by the probe (its write failed) and by every worker (it logged it)
        await eventually(lambda: probing.done() and all(procs.log(n).count("redis unavailable") > seen.get(n, 0)
                                                        for n in procs.procs), 20, "everyone sees the outage")
        server.start()
        restarted = time.monotonic()
        r = aioredis.Redis.from_url(server.url)
        probe.halt = True
        await probing
        survived = await probe.survived()
        await probe.r.aclose()
        dead = [n for n, p in procs.procs.items() if p.poll() is not None]
        assert not dead, f"workers exited during the outage: {dead}: " + "".join(procs.log(n)[-2000:] for n in dead)
        await eventually(lambda: _at_least(completed_count(r, keys, ids), instances), 90, "every instance completes")
        recovered = time.monotonic() - restarted
        hist = await histories(r, keys, ids)
        totals = check_all(hist)
        assert sum(len(h) for h in hist.values()) == (await snapshot(r, keys, ids))["feed_entries"]
        assert await eventually(lambda: _zero(pending_total(r, keys.all_inboxes(), ENGINE_GROUP)), 20, "inboxes drained")
        tasks = [keys.tasks(p, "agent-orchestrator") for p in range(keys.partitions)]
        assert await eventually(lambda: _zero(pending_total(r, tasks, ACTIVITY_GROUP)), 20, "tasks drained")
        feeds = [keys.feed(p) for p in range(keys.partitions)]

        async def projected() -> bool:
            return all([await pending_total(r, feeds, group_name(n)) == 0 for n in PROJECTIONS])

        await eventually(projected, 30, "projections drained")
        await eventually(lambda: _exact(r, settings, ids), 30, "read models equal a fold of the streams")
        dlq = sum([await r.xlen(keys.dlq(p)) for p in range(keys.partitions)])
        timeouts = sum(e["type"] == "workflow.step_failed" and e["data"]["error"].get("kind") == "timeout"
                       for h in hist.values() for e in h)
        engine_counters = [await counters(r, keys, procs.consumer(f"w{i + 1}")) for i in range(engines)]
        logs = "".join(procs.log(n) for n in procs.procs)
        report.update(
            down_s=round(down, 2), recovered_s=round(recovered, 1), before_kill=before,
            probe_acked=acked, probe_acked_lost=acked - survived, aof_cut=cut,
            dead_lettered=dlq, step_timeouts=timeouts, step_failures=totals["step_failed"],
            append_conflicts=sum(c.get("conflicts", 0) for c in engine_counters),
            diverged_reloads=sum(c.get("diverged", 0) for c in engine_counters),
            unavailable_warnings=logs.count("unavailable"), noscript_errors=logs.count("NOSCRIPT"),
            nogroup_alarms=logs.count("ALARM"))
        print("redis restart:", report)
        assert dlq == 0, "nothing dead-lettered by the restart"
        await r.aclose()

    try:
        run(scenario())
        procs.stop_all()
    finally:
        watch.halt.set()
        procs.kill_all()
        server.stop()
    return report


async def _at_least(aw: Any, n: int) -> bool:
    return bool((await aw) >= n)


async def _zero(aw: Any) -> bool:
    return (await aw) == 0


async def _exact(r: aioredis.Redis, settings: Settings, ids: list[str]) -> bool:
    try:
        await check_exact(r, settings, ids)
        return True
    except AssertionError:
        return False


@pytest.mark.parametrize("mode", ["shutdown", "sigkill", "powerloss"])
def test_redis_restart_mid_run(tmp_path: Path, mode: str) -> None:
    restart_run(tmp_path, mode, instances=800)  # the long variant below runs 10,000


def test_redis_power_loss_one_engine_worker(tmp_path: Path) -> None:
    """One engine worker keeps its partitions (and its state cache) across the loss."""
    restart_run(tmp_path, "powerloss", instances=1500, engines=1)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["shutdown", "sigkill", "powerloss"])
def test_redis_restart_mid_run_long(tmp_path: Path, mode: str) -> None:
    restart_run(tmp_path, mode, instances=10000)


def test_roles_started_before_redis_wait_for_it(tmp_path: Path) -> None:
    """Every role started while nothing answers on its port (a compose file's start order,
    a restart, a failover) retries with backoff, then does its work once Redis is up,
    and still stops cleanly on SIGTERM."""
    port = free_port()
    server = RedisServer(port)
    settings = Settings(redis_url=server.url, prefix="ffw", partitions=2)
    procs = Procs(foldflow_env(settings, FAULT_KNOBS), tmp_path)
    try:
        for role in ("worker", "activities", "projector"):
            procs.start(role, role)
        def all_retrying() -> bool:
            dead = {n: p.returncode for n, p in procs.procs.items() if p.poll() is not None}
            assert not dead, f"exited without Redis: {dead}\n" + "\n".join(procs.log(n)[-1500:] for n in dead)
            return all("redis unavailable at startup" in procs.log(n) for n in procs.procs)

        wait_for(all_retrying, 30, "every role retries while Redis is down", interval=0.1)
        server.start()

        async def scenario() -> None:
            r = aioredis.Redis.from_url(server.url)
            client = Client(r, settings)
            await client.register(RESTART_DEF)
            ids = [await client.start(RESTART_DEF["name"], {}) for _ in range(5)]
            for iid in ids:
                assert (await client.wait(iid, timeout=30)).status == "completed"
            await r.aclose()

        run(scenario())
        procs.stop_all()
    finally:
        procs.kill_all()
        server.stop()
