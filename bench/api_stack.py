"""The processes `python -m bench.api` measures: a `foldflow api` (the CLI,
as users run it) and an engine worker on a redis-server under a fresh prefix,
plus the ceiling (bench/api_ceiling.py) on the same server under a prefix of
its own. No activity worker: the benched workflow's one step is served by
nothing, so a start creates one task that waits in its stream and no task work
competes for the two cores."""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from engine.client import Client
from engine.config import Settings
from engine.dev.embedded import free_port
from engine.store.keys import Keys

from .harness import CLK_TCK, ROOT, bench_settings, info, proc_cpu_seconds, stop_processes, wait_for_leases, worker_env

QUEUE = "bench-api-idle"
WORKFLOW = {"name": "bench-api-one-step", "version": "1", "description": "one step, served by nothing",
            "definition": {"steps": [{"name": "wait", "step_type": "service_call", "service": QUEUE,
                                      "endpoint": "/idle"}]}}


class BenchStack:
    def __init__(self, redis_url: str, max_subscriptions: int) -> None:
        self.redis_url = redis_url
        self.settings: Settings = bench_settings(redis_url)
        self.ceiling_prefix = f"ceil{uuid.uuid4().hex[:6]}"
        self.api_port, self.ceiling_port = free_port(), free_port()
        self.logs = Path(tempfile.mkdtemp(prefix="foldflow-bench-api-"))
        self.env = worker_env(self.settings, {"FOLDFLOW_API_MAX_SUBSCRIPTIONS": str(max_subscriptions)})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.redis = aioredis.Redis.from_url(redis_url)
        self.client = Client.from_url(redis_url, self.settings)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def ceiling(self) -> str:
        return f"http://127.0.0.1:{self.ceiling_port}"

    def _spawn(self, name: str, args: list[str]) -> None:
        with open(self.logs / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen([sys.executable, *args], env=self.env, cwd=ROOT, stdout=log,
                                                stderr=subprocess.STDOUT)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    async def start(self) -> BenchStack:
        self._spawn("worker", ["-m", "engine.ops.cli", "worker"])
        self._spawn("api", ["-m", "engine.ops.cli", "api", "--port", str(self.api_port)])
        self._spawn("ceiling", ["-m", "bench.api_ceiling", "--port", str(self.ceiling_port), "--redis-url",
                                self.redis_url, "--prefix", self.ceiling_prefix])
        await self._ready("api", self.api + "/health/readiness", "GET")
        await self._ready("ceiling", self.ceiling + "/executions", "POST")
        await wait_for_leases(self.redis, Keys(self.settings.prefix, self.settings.partitions), 1)
        await self.client.register(WORKFLOW)
        return self

    async def _ready(self, name: str, url: str, method: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"{name} exited {self.procs[name].returncode}:\n{self.log(name)}")
                try:
                    async with http.request(method, url, json={"workflow_id": "probe"}) as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError(f"{name} not ready at {url} after {timeout}s:\n{self.log(name)}")

    async def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each process, Redis and this load generator."""
        return await cpu_seconds(self.redis, {name: p.pid for name, p in self.procs.items()})

    async def stop(self) -> None:
        stop_processes(list(self.procs.values()), 10)
        await self.client.close()
        await self.redis.aclose()

    async def __aenter__(self) -> BenchStack:
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


async def cpu_seconds(redis: aioredis.Redis, pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named pid, Redis, this process and the machine, and the wall clock."""
    out = {name: proc_cpu_seconds(pid) for name, pid in pids.items()}
    cpu = await info(redis, "cpu")
    out["redis"] = float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["load_generator"] = usage.ru_utime + usage.ru_stime
    out["machine"] = machine_busy_seconds()
    out["wall"] = time.monotonic()
    return out


def machine_busy_seconds() -> float:
    """CPU seconds every core spent not idle since boot (/proc/stat): the bench and everything else."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle, iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def cores_busy(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    seconds = after["wall"] - before["wall"]
    busy = {k: round((after[k] - before.get(k, 0.0)) / seconds, 2) for k in after if k != "wall" and seconds > 0}
    if "machine" in busy:  # what else ran on the box meanwhile (other users' work included)
        busy["other"] = round(max(0.0, busy.pop("machine") - sum(busy.values())), 2)
    return busy


def with_cpu(result: dict[str, Any], before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    result["cores_busy"] = cores_busy(before, after)
    return result
