"""foldflow's own cases: the Redis ceiling (1), step throughput with its Redis
cost (2, 7), latency at half the peak rate (4) and fan-out (6). Each function
is one run and returns plain figures; __main__ repeats and summarises them."""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any

import orjson
import redis.asyncio as aioredis

from engine.client import Client
from engine.config import Settings
from engine.store.keys import Keys
from engine.store.lua import Script

from .harness import (
    bench_settings,
    commandstats_delta,
    foldflow_workers,
    info,
    percentile,
    proc_cpu_seconds,
    wait_for_leases,
    wait_for_task_groups,
)

STEPS = 5
QUEUE = "bench"


def linear_definition(steps: int = STEPS) -> dict[str, Any]:
    body = [{"name": f"s{i}", "step_type": "service_call", "service": QUEUE, "endpoint": f"/s{i}",
             **({"depends_on": [f"s{i - 1}"]} if i else {})} for i in range(steps)]
    return {"name": "bench-linear", "version": "1", "definition": {"steps": body}}


def fanout_definition(branches: int) -> dict[str, Any]:
    body: list[dict[str, Any]] = [{"name": "a", "step_type": "service_call", "service": QUEUE, "endpoint": "/a"}]
    body += [{"name": f"b{i}", "step_type": "service_call", "service": QUEUE, "endpoint": "/b",
              "depends_on": ["a"]} for i in range(branches)]
    body.append({"name": "z", "step_type": "service_call", "service": QUEUE, "endpoint": "/z",
                 "depends_on": [f"b{i}" for i in range(branches)]})
    return {"name": f"bench-fan-{branches}", "version": "1", "definition": {"steps": body}}


def start_fields(iid: str, workflow: str) -> dict[str, Any]:
    return {"type": "start", "id": iid, "data": orjson.dumps({"workflow": workflow}), "cmd_id": f"start:{iid}"}


# -- case 1: the ceiling -------------------------------------------------------------
async def ceiling(url: str, seconds: float, batch: int = 256) -> dict[str, Any]:
    """EVALSHA of foldflow's own append.lua (one event, new instance each call: the
    version check, two XADDs), awaited one at a time and then pipelined."""
    redis = aioredis.Redis.from_url(url)
    keys = Keys(f"ceil{time.time_ns() % 10**6}", 8)
    script = Script("append")
    await redis.script_load(script.source)
    data = orjson.dumps({"type": "workflow.step_completed", "step": "s1", "attempt": 1, "output": {"t": 1}})

    def call(i: int) -> list[Any]:
        p = i % 8
        ks = [keys.feed(p), keys.inbox(p), keys.timers(p), keys.lease(p), keys.instance(f"c{i}", p)]
        # one decision per call: instance KEYS[5], expected version 0, no inbox entries, one event, no ops
        return [script.sha, 5, *ks, "engine", "c", "0", 1, 5, f"c{i}", 0, "", 1, 0, 1, "workflow.step_completed",
                data, 0]

    out: dict[str, Any] = {}
    try:
        i = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(100):
                await redis.execute_command("EVALSHA", *call(i))
                i += 1
        out["awaited_per_s"] = i / (time.perf_counter() - t0)
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            pipe = redis.pipeline(transaction=False)
            for _ in range(batch):
                pipe.execute_command("EVALSHA", *call(i))
                i += 1
                n += 1
            await pipe.execute()
        out["pipelined_per_s"] = n / (time.perf_counter() - t0)
        out["pipeline_batch"] = batch
    finally:
        await redis.flushall()
        await redis.aclose()
    return out


# -- case 2 (+7): step throughput ----------------------------------------------------
async def _count_completed(redis: aioredis.Redis, keys: Keys, want: int, cursors: dict[str, str],
                           deadline: float, seen: dict[str, int] | None = None) -> None:
    done = 0
    while done < want:
        reply = await redis.xread(cursors, count=5000, block=200)
        now = time.time_ns()
        for stream, entries in reply or []:
            cursors[stream.decode()] = entries[-1][0].decode()
            for _, f in entries:
                if f[b"type"] == b"workflow.completed":
                    done += 1
                    if seen is not None:
                        seen[f[b"id"].decode()] = now
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{done}/{want} instances completed before the deadline")


async def throughput(url: str, instances: int, engines: int, activities: int,
                     timeout: float = 600.0, extra_env: dict[str, str] | None = None,
                     flush: bool = True) -> dict[str, Any]:
    settings = bench_settings(url)
    keys = Keys(settings.prefix, settings.partitions)
    redis = aioredis.Redis.from_url(url)
    client = Client(redis, settings)
    await client.register(linear_definition())
    try:
        with foldflow_workers(settings, engines, activities, extra_env) as procs:
            await wait_for_leases(redis, keys, engines)
            await wait_for_task_groups(redis, keys, QUEUE)
            pids = {role: [p.pid for p in ps] for role, ps in procs.items()}
            cmd0, cpu0, mem0 = await info(redis, "commandstats"), await info(redis, "cpu"), await info(redis, "memory")
            wcpu0 = {role: sum(proc_cpu_seconds(pid) for pid in ps) for role, ps in pids.items()}
            me0 = resource.getrusage(resource.RUSAGE_SELF)
            started = time.perf_counter()
            pipe = redis.pipeline(transaction=False)
            for i in range(instances):
                iid = f"b-{i}"
                pipe.xadd(keys.inbox(keys.partition(iid)), start_fields(iid, "bench-linear"))
            await pipe.execute()
            cursors = {keys.feed(p): "0-0" for p in range(keys.partitions)}
            await _count_completed(redis, keys, instances, cursors, started + timeout)
            elapsed = time.perf_counter() - started
            me1 = resource.getrusage(resource.RUSAGE_SELF)
            wcpu1 = {role: sum(proc_cpu_seconds(pid) for pid in ps) for role, ps in pids.items()}
            cmd1, cpu1, mem1 = await info(redis, "commandstats"), await info(redis, "cpu"), await info(redis, "memory")
        steps = instances * STEPS
        calls = commandstats_delta(cmd0, cmd1)
        redis_cpu = (cpu1["used_cpu_sys"] + cpu1["used_cpu_user"]) - (cpu0["used_cpu_sys"] + cpu0["used_cpu_user"])
        worker_cpu = {role: wcpu1[role] - wcpu0[role] for role in wcpu0}
        gen_cpu = (me1.ru_utime + me1.ru_stime) - (me0.ru_utime + me0.ru_stime)
        return {
            "instances": instances, "engines": engines, "activities": activities, "prefix": settings.prefix,
            "seconds": elapsed, "steps_per_s": steps / elapsed, "instances_per_s": instances / elapsed,
            "cost": {
                "redis_calls_per_step": {k: v / steps for k, v in calls.items()},
                "redis_calls_per_step_total": sum(calls.values()) / steps,
                "redis_calls_per_step_client": sum(v for k, v in calls.items() if k in CLIENT_COMMANDS) / steps,
                "memory_bytes_per_instance": (mem1["used_memory"] - mem0["used_memory"]) / instances,
                "cpu_seconds": {"redis": redis_cpu, **worker_cpu, "load_generator": gen_cpu},
                "cpu_cores_busy": {"redis": redis_cpu / elapsed,
                                   **{k: v / elapsed for k, v in worker_cpu.items()},
                                   "load_generator": gen_cpu / elapsed},
                "cpu_ms_per_step": {"redis": 1000 * redis_cpu / steps,
                                    **{k: 1000 * v / steps for k, v in worker_cpu.items()}},
            },
        }
    finally:
        if flush:
            await redis.flushall()
        await client.close()


# Commands the workers send themselves (round trips); the rest of commandstats are
# calls made inside scripts, plus the load generator's start XADDs and feed XREADs.
CLIENT_COMMANDS = {"evalsha", "eval", "xreadgroup", "xautoclaim", "xrange", "hget", "hsetnx", "hello",
                   "script|load", "xgroup|create", "client|setinfo", "select", "sadd", "mget", "zadd"}


# -- case 4: latency at a fixed rate ------------------------------------------------
async def latency(url: str, rate: float, seconds: float) -> dict[str, Any]:
    """Open-loop starts at `rate` instances/s; each handler stamps the wall clock it ran at."""
    settings = bench_settings(url)
    keys = Keys(settings.prefix, settings.partitions)
    redis = aioredis.Redis.from_url(url)
    client = Client(redis, settings)
    await client.register(linear_definition())
    total = max(1, int(rate * seconds))
    sent: dict[str, int] = {}
    completed: dict[str, int] = {}
    try:
        with foldflow_workers(settings, 1, 1):
            await wait_for_leases(redis, keys, 1)
            await wait_for_task_groups(redis, keys, QUEUE)
            cursors = {keys.feed(p): (await redis.xinfo_stream(keys.feed(p)))["last-generated-id"].decode()
                       if await redis.exists(keys.feed(p)) else "0-0" for p in range(keys.partitions)}
            watcher = asyncio.create_task(_count_completed(aioredis.Redis.from_url(url), keys, total, cursors,
                                                           time.perf_counter() + seconds + 120, completed))
            t0 = time.perf_counter()
            i = 0
            while i < total:
                due = min(total, int((time.perf_counter() - t0) * rate) + 1)
                if due > i:
                    pipe = redis.pipeline(transaction=False)
                    now = time.time_ns()
                    for j in range(i, due):
                        iid = f"l-{j}"
                        sent[iid] = now
                        pipe.xadd(keys.inbox(keys.partition(iid)), start_fields(iid, "bench-linear"))
                    await pipe.execute()
                    i = due
                await asyncio.sleep(0.001)
            achieved = total / (time.perf_counter() - t0)
            await watcher
        # The handlers' stamps, from each instance's history.
        pipe = redis.pipeline(transaction=False)
        for iid in sent:
            pipe.xrange(keys.instance(iid))
        first, between, whole = [], [], []
        for iid, entries in zip(sent, await pipe.execute()):
            stamps: dict[int, int] = {}
            for _, f in entries:
                if f[b"type"] == b"workflow.step_completed":
                    d = orjson.loads(f[b"data"])
                    stamps[int(d["step"][1:])] = d["output"]["t"]
            first.append((stamps[0] - sent[iid]) / 1e6)
            between += [(stamps[k + 1] - stamps[k]) / 1e6 for k in range(STEPS - 1)]
            whole.append((completed[iid] - sent[iid]) / 1e6)
        return {"target_rate": rate, "achieved_rate": achieved, "instances": total,
                **{f"{name}_{q}_ms": percentile(vals, q) for name, vals in
                   (("start_to_first_task", first), ("result_to_next_task", between),
                    ("start_to_completed", whole)) for q in (50, 99)}}
    finally:
        await redis.flushall()
        await client.close()


# -- case 6: fan-out ---------------------------------------------------------------
async def fanout(url: str, branches: int, timeout: float = 300.0) -> dict[str, Any]:
    settings = bench_settings(url)
    keys = Keys(settings.prefix, settings.partitions)
    redis = aioredis.Redis.from_url(url)
    client = Client(redis, settings)
    definition = fanout_definition(branches)
    await client.register(definition)
    try:
        with foldflow_workers(settings, 1, 1):
            await wait_for_leases(redis, keys, 1)
            await wait_for_task_groups(redis, keys, QUEUE)
            iid = "fan-1"
            t_start = time.time_ns()
            await redis.xadd(keys.inbox(keys.partition(iid)), start_fields(iid, definition["name"]))
            state = await client.wait(iid, timeout=timeout)
            if state.status != "completed":
                raise RuntimeError(f"fan-out instance ended {state.status}")
        # Event times from the instance stream's entry ids (Redis clock, ms) and the
        # handlers' own stamps (wall clock, ns): the engine's `ts` is one per batch.
        sched: dict[str, float] = {}
        ran: dict[str, float] = {}
        end = 0.0
        for eid, f in await redis.xrange(keys.instance(iid)):
            etype, at = f[b"type"], float(eid.split(b"-")[0])
            if etype == b"workflow.step_scheduled":
                sched[orjson.loads(f[b"data"])["step"]] = at
            elif etype == b"workflow.step_completed":
                d = orjson.loads(f[b"data"])
                ran[d["step"]] = d["output"]["t"] / 1e6
            elif etype == b"workflow.completed":
                end = at
        branch_names = [f"b{i}" for i in range(branches)]
        all_dispatched = max(sched[b] for b in branch_names)
        last_branch = max(ran[b] for b in branch_names)
        return {"branches": branches,
                "dispatch_all_ms": all_dispatched - ran["a"],
                "all_branches_ran_ms": last_branch - ran["a"],
                "join_ms": sched["z"] - last_branch,
                "start_to_completed_ms": end - t_start / 1e6}
    finally:
        await redis.flushall()
        await client.close()


def settings_table() -> dict[str, Any]:
    s = Settings()
    return {"partitions": 8, "batch_size": s.batch_size, "block_ms": s.block_ms, "concurrency": s.concurrency,
            "cache_size": s.cache_size, "timer_poll_ms": s.timer_poll_ms, "lease_ms": s.lease_ms,
            "event loop": "uvloop (foldflow CLI)", "redis client": "redis-py asyncio + hiredis",
            "handlers": "async, return {'t': time.time_ns()}", "load": "all starts XADDed at once, pipelined"}
