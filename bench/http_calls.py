"""`python -m bench.http_calls [--quick]`: HTTP service calls (issue 13), side by
side in one run. Writes bench/http_results.json and the "HTTP service calls"
section of bench/RESULTS.md.

    python -m bench.http_calls                 # the full run (about a minute on 2 cores)
    python -m bench.http_calls --quick         # tiny sizes: a smoke test, figures meaningless
    python -m bench.http_calls --profile       # + one extra HTTP run with py-spy on the executor
    python -m bench.http_calls report          # the RESULTS.md section again from http_results.json

Each round, interleaved so drift on a shared box hits each alike:
1. ceiling: a bare aiohttp client loop against the service (bench/http_ceiling.py), requests/s;
2. Python handlers: N instances of a 5-step linear workflow, one `foldflow worker` and one
   `foldflow activities --module bench.handlers`, steps/s;
3. HTTP: the same workflow on service `bench-svc` (BENCH_SVC_URL -> bench/http_service.py in its own
   process), one `foldflow worker` and one `activities --http` (bench/http_executor_proc.py, which also
   writes the executor's own overhead per call), steps/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
import uvloop

from engine.client import Client
from engine.config import Settings
from engine.dev.embedded import RedisServer, free_port
from engine.store.keys import Keys

from . import http_profile
from .api_stack import cores_busy, cpu_seconds
from .foldflow_cases import _count_completed, start_fields
from .harness import (
    REDIS_ARGS,
    ROOT,
    Skip,
    bench_settings,
    machine_info,
    percentile,
    stop_processes,
    versions,
    wait_for_leases,
    wait_for_task_groups,
    worker_env,
)
from .http_report import update_results_md

STEPS = 5
SERVICE = "bench-svc"
HANDLER_QUEUE = "bench"  # bench/handlers.py
FULL = {"runs": 3, "instances": 2000, "concurrency": 64, "refresh_ms": 200}
QUICK = {"runs": 1, "instances": 20, "concurrency": 64, "refresh_ms": 200}


def linear_definition(service: str) -> dict[str, Any]:
    body = [{"name": f"s{i}", "step_type": "service_call", "service": service, "endpoint": "/step",
             **({"depends_on": [f"s{i - 1}"]} if i else {})} for i in range(STEPS)]
    return {"name": f"bench-linear-{service}", "version": "1", "definition": {"steps": body}}


class Procs:
    """Processes with their output in log files, stopped (SIGTERM, then kill) on exit."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env = logs, env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen([sys.executable, *args], env=self.env, cwd=ROOT, stdout=log,
                                                stderr=subprocess.STDOUT)
        return self.procs[name]

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode}:\n{self.log(name)}")

    def stop(self) -> None:
        stop_processes(list(self.procs.values()), 20)


@contextmanager
def procs(logs: Path, env: dict[str, str]) -> Iterator[Procs]:
    group = Procs(logs, env)
    try:
        yield group
    finally:
        group.stop()


async def _serving(url: str, proc: Procs, name: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            proc.check()
            try:
                async with http.get(url + "/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{name} not answering at {url} after {timeout}s:\n{proc.log(name)}")


class Meter:
    """CPU seconds of each named pid, Redis, this process and the machine, between two reads."""

    def __init__(self, redis: aioredis.Redis, pids: dict[str, int]) -> None:
        self.redis, self.pids = redis, pids

    async def read(self) -> dict[str, float]:
        return await cpu_seconds(self.redis, self.pids)


def cpu_ms_per(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    return {k: round(1000 * (after[k] - before[k]) / n, 4) for k in after if k not in ("wall", "machine")}


# -- 1. the ceiling ------------------------------------------------------------------
async def ceiling(redis: aioredis.Redis, service_url: str, service_pid: int, cfg: dict[str, Any]) -> dict[str, Any]:
    from .http_ceiling import client_loop

    meter = Meter(redis, {"service": service_pid})
    before = await meter.read()
    result = await client_loop(service_url, cfg["instances"] * STEPS, cfg["concurrency"])
    after = await meter.read()
    result["cores_busy"] = cores_busy(before, after)
    result["cpu_ms_per_request"] = cpu_ms_per(before, after, result["requests"])
    return result


# -- 2 and 3. the workflow, through Python handlers or the HTTP executor --------------
async def workflow(url: str, kind: str, service_url: str, service_pid: int, cfg: dict[str, Any],
                   logs: Path, profile: bool = False) -> dict[str, Any]:
    settings: Settings = bench_settings(url)
    keys = Keys(settings.prefix, settings.partitions)
    queue = SERVICE if kind == "http" else HANDLER_QUEUE
    definition = linear_definition(queue)
    redis = aioredis.Redis.from_url(url)
    client = Client(redis, settings)
    instances = cfg["instances"]
    samples = logs / f"samples-{settings.prefix}.json"
    env = worker_env(settings, {"BENCH_SVC_URL": service_url, "FOLDFLOW_HTTP_REFRESH_MS": str(cfg["refresh_ms"]),
                                "FOLDFLOW_CONCURRENCY": str(cfg["concurrency"])})
    try:
        await client.register(definition)  # before the executor starts: it serves the queue from its first read
        with procs(logs, env) as group:
            engine = group.spawn(f"engine-{kind}", ["-m", "engine.ops.cli", "worker"])
            if kind == "http":
                acts = group.spawn("activities-http", ["-m", "bench.http_executor_proc", "--samples", str(samples)])
            else:
                acts = group.spawn("activities-handlers", ["-m", "engine.ops.cli", "activities", "--module",
                                                           "bench.handlers"])
            try:
                await wait_for_leases(redis, keys, 1)
                await wait_for_task_groups(redis, keys, queue)
            except (RuntimeError, TimeoutError):
                group.check()
                raise
            spy = http_profile.attach(acts.pid, logs / "executor.pyspy") if profile else None
            meter = Meter(redis, {"engine": engine.pid, "activities": acts.pid, "service": service_pid})
            before = await meter.read()
            started = time.perf_counter()
            pipe = redis.pipeline(transaction=False)
            for i in range(instances):
                iid = f"{kind}-{i}"
                pipe.xadd(keys.inbox(keys.partition(iid)), start_fields(iid, definition["name"]))  # type: ignore[arg-type]
            await pipe.execute()
            cursors = {keys.feed(p): "0-0" for p in range(keys.partitions)}
            await _count_completed(redis, keys, instances, cursors, started + 300)
            elapsed = time.perf_counter() - started
            after = await meter.read()
            top = http_profile.collect(spy) if spy is not None else None
        steps = instances * STEPS
        out: dict[str, Any] = {
            "kind": kind, "instances": instances, "seconds": elapsed, "steps_per_s": steps / elapsed,
            "instances_per_s": instances / elapsed, "cores_busy": cores_busy(before, after),
            "cpu_ms_per_step": cpu_ms_per(before, after, steps),
        }
        if kind == "http":
            out["overhead"] = overhead(orjson.loads(samples.read_bytes()))
            out["overhead"].update(await call_times(redis, keys, [f"{kind}-{i}" for i in range(instances)]))
        if top is not None:
            out["profile"] = top
        return out
    finally:
        await _drop_prefix(redis, settings.prefix)
        await client.close()


def overhead(raw: dict[str, Any]) -> dict[str, Any]:
    """The executor's own time per call (ms): task read -> request sent, answer read -> result reported."""
    before, after, report = raw["before_s"], raw["after_s"], raw.get("report_s", [])
    both = [b + a for b, a in zip(before, after)]
    out: dict[str, Any] = {"samples": len(before), "counters": raw.get("counters", {})}
    for name, vals in (("before", before), ("after", after), ("total", both), ("report", report)):
        for q in (50, 99):
            out[f"{name}_p{q}_ms"] = 1000 * percentile(vals, q) if vals else None
    return out


async def call_times(redis: aioredis.Redis, keys: Keys, ids: list[str], most: int = 400) -> dict[str, Any]:
    """The `call.duration_ms` the executor records in each step's history (task taken -> result built: the
    request, the service and the wire included), over up to `most` instances spread across the run."""
    chosen = ids[:: max(1, len(ids) // most)]
    pipe = redis.pipeline(transaction=False)
    for iid in chosen:
        pipe.xrange(keys.instance(iid))
    durations = []
    for entries in await pipe.execute():
        for _, f in entries:
            if f[b"type"] == b"workflow.step_completed":
                call = orjson.loads(f[b"data"]).get("call") or {}
                if isinstance(call.get("duration_ms"), int | float):
                    durations.append(float(call["duration_ms"]))
    return {"call_samples": len(durations), **{f"call_p{q}_ms": percentile(durations, q) if durations else None
                                               for q in (50, 99)}}


async def _drop_prefix(redis: aioredis.Redis, prefix: str) -> None:
    """Only this run's keys: the server may be shared (the smoke test runs on the tests' redis)."""
    batch = [k async for k in redis.scan_iter(match=f"*{prefix}*", count=1000)]
    for i in range(0, len(batch), 500):
        await redis.unlink(*batch[i:i + 500])


# -- the run -------------------------------------------------------------------------
async def run_all(url: str, cfg: dict[str, Any], profile: bool, keep_logs: bool = False) -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix="foldflow-bench-http-"))
    port = free_port()
    service_url = f"http://127.0.0.1:{port}"
    results: dict[str, Any] = {"ceiling": [], "handlers": [], "http": []}
    redis = aioredis.Redis.from_url(url)
    try:
        with procs(logs, {**os.environ, "PYTHONPATH": str(ROOT)}) as group:
            service = group.spawn("service", ["-m", "bench.http_service", "--port", str(port)])
            await _serving(service_url, group, "service")
            for round_ in range(cfg["runs"]):
                cases: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
                    "ceiling": lambda: ceiling(redis, service_url, service.pid, cfg),
                    "handlers": lambda: workflow(url, "handlers", service_url, service.pid, cfg, logs),
                    "http": lambda: workflow(url, "http", service_url, service.pid, cfg, logs),
                }
                for key, fn in cases.items():
                    print(f"[bench.http_calls] round {round_ + 1}/{cfg['runs']}: {key} ...", file=sys.stderr,
                          flush=True)
                    results[key].append(await fn())
            if profile:
                print("[bench.http_calls] profile: one more HTTP run with py-spy on the executor ...",
                      file=sys.stderr, flush=True)
                try:
                    results["profile"] = await workflow(url, "http", service_url, service.pid, cfg, logs,
                                                        profile=True)
                except Skip as exc:
                    results["profile"] = {"skipped": str(exc)}
    except Exception as exc:
        results["failed"] = f"{type(exc).__name__}: {exc}"
        results["traceback"] = traceback.format_exc()[-3000:]
        print(f"[bench.http_calls] FAILED: {exc}", file=sys.stderr, flush=True)
    finally:
        await redis.aclose()
    if "failed" not in results and not keep_logs:
        shutil.rmtree(logs, ignore_errors=True)
    if "failed" in results or keep_logs:  # printed, not recorded: a temporary path means nothing in the results
        print(f"[bench.http_calls] the processes' logs: {logs}", file=sys.stderr)
    results["processes"] = {
        "service": "python -m bench.http_service (aiohttp, uvloop; 1 process)",
        "engine": "foldflow worker (1 process)",
        "activities": "handlers: foldflow activities --module bench.handlers; HTTP: python -m "
                      "bench.http_executor_proc (= foldflow activities --http, + overhead samples); 1 process",
        "load_generator": "this process (starts, completion feed reads; the ceiling's client loop)",
        "redis": "redis-server"}
    return results


def main_run(args: argparse.Namespace) -> int:
    cfg = dict(QUICK if args.quick else FULL)
    if args.instances:
        cfg["instances"] = args.instances
    if args.concurrency:
        cfg["concurrency"] = args.concurrency
    started, machine = time.time(), machine_info()
    if args.redis_url:
        results = uvloop.run(run_all(args.redis_url, cfg, args.profile, args.keep_logs))
        redis_version = "(given server)"
    else:
        with RedisServer(None, *REDIS_ARGS) as server:
            redis_version = subprocess.run([server.binary, "--version"], capture_output=True,
                                           text=True).stdout.strip()
            results = uvloop.run(run_all(server.url, cfg, args.profile, args.keep_logs))
    doc = {"mode": "quick" if args.quick else "full", "config": cfg, "started": started,
           "duration_s": time.time() - started, "machine": machine, "loadavg_at_end": os.getloadavg(),
           "versions": {"redis-server": redis_version, **versions(
               ["foldflow", "aiohttp", "uvloop", "redis", "hiredis", "orjson", "msgspec"])},
           "results": results}
    out = Path(args.out) if args.out else ROOT / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "http_results.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    update_results_md(out / "RESULTS.md", doc)
    print(f"[bench.http_calls] wrote {out / 'http_results.json'} and the HTTP service calls section of "
          f"{out / 'RESULTS.md'} in {doc['duration_s']:.0f}s", file=sys.stderr)
    return 1 if "failed" in results else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.http_calls", description=__doc__.splitlines()[0])
    ap.add_argument("cmd", nargs="?", choices=["run", "report"], default="run")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one run: a smoke test")
    ap.add_argument("--instances", type=int, help="instances per workflow run (default: 2000; quick: 20)")
    ap.add_argument("--concurrency", type=int, help="FOLDFLOW_CONCURRENCY and the ceiling's in-flight requests "
                                                    "(default: 64, foldflow's default)")
    ap.add_argument("--profile", action="store_true", help="one more HTTP run with py-spy on the executor")
    ap.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (and py-spy's stacks)")
    ap.add_argument("--redis-url", help="an existing redis-server (default: start one); only this run's keys "
                                        "are deleted")
    ap.add_argument("--out", help="directory for http_results.json and RESULTS.md (default: bench/)")
    args = ap.parse_args(argv)
    if args.cmd == "report":
        out = Path(args.out) if args.out else ROOT / "bench"
        update_results_md(out / "RESULTS.md", orjson.loads((out / "http_results.json").read_bytes()))
        return 0
    return main_run(args)


if __name__ == "__main__":
    sys.exit(main())
