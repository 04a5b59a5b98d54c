"""Shared plumbing of `python -m bench run`: the redis-server, worker processes,
CPU accounting from /proc, INFO deltas, and small statistics helpers."""

from __future__ import annotations

import asyncio
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from engine.config import Settings
from engine.store.keys import Keys

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

# redis-server as every case runs it: no persistence, so the figures measure the
# engine, not the disk (the README's Durability section says what that risks).
REDIS_ARGS = ("--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction")


class Skip(Exception):
    """A case or peer that cannot run here; the message says why."""


# -- statistics ----------------------------------------------------------------
def summary(values: Sequence[float]) -> dict[str, float]:
    vals = [float(v) for v in values]
    if not vals:
        return {}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


# -- machine and versions ------------------------------------------------------
def machine_info() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "mem_gib": round(mem_kb / 2**20, 1),
            "platform": platform.platform(), "python": sys.version.split()[0],
            "loadavg_at_start": os.getloadavg()}


def versions(names: Sequence[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# -- CPU accounting ------------------------------------------------------------
def proc_cpu_seconds(pid: int, with_children: bool = False) -> float:
    """utime+stime of a process (and its reaped children) from /proc/<pid>/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and every live descendant (Celery's prefork children)."""
    total = proc_cpu_seconds(pid, with_children=True)
    for child in _children(pid):
        total += tree_cpu_seconds(child)
    return total


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


async def info(redis: aioredis.Redis, section: str) -> dict[str, Any]:
    return dict(await redis.info(section))


def commandstats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    out = {}
    for key, val in after.items():
        name = key.removeprefix("cmdstat_")
        calls = int(val["calls"]) - int(before.get(key, {}).get("calls", 0))
        if calls:
            out[name] = calls
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# -- foldflow processes ----------------------------------------------------------
def bench_settings(url: str, partitions: int = 8, **kw: Any) -> Settings:
    return Settings(redis_url=url, prefix=f"bench{uuid.uuid4().hex[:6]}", partitions=partitions, **kw)


def worker_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": settings.redis_url,
           "FOLDFLOW_PREFIX": settings.prefix, "FOLDFLOW_PARTITIONS": str(settings.partitions),
           "FOLDFLOW_LOG_LEVEL": "WARNING"}
    env.update(extra or {})
    return env


@contextmanager
def foldflow_workers(settings: Settings, engines: int, activities: int,
                     extra_env: dict[str, str] | None = None) -> Iterator[dict[str, list[subprocess.Popen[bytes]]]]:
    """Engine and activity worker processes (the CLI, as users run them); stopped on exit."""
    env = worker_env(settings, extra_env)
    procs = {
        "engine": [subprocess.Popen([sys.executable, "-m", "engine.ops.cli", "worker"], env=env, cwd=ROOT)
                   for _ in range(engines)],
        "activities": [subprocess.Popen([sys.executable, "-m", "engine.ops.cli", "activities", "--module",
                                         "bench.handlers"], env=env, cwd=ROOT) for _ in range(activities)],
    }
    try:
        yield procs
    finally:
        everyone = procs["engine"] + procs["activities"]
        for p in everyone:
            if p.poll() is None:
                p.terminate()
        for p in everyone:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


async def wait_for_leases(redis: aioredis.Redis, keys: Keys, holders: int, timeout: float = 30.0) -> None:
    """Until every partition's lease is held, by `holders` distinct engine workers."""
    deadline = time.monotonic() + timeout
    while True:
        values = await redis.mget([keys.lease(p) for p in range(keys.partitions)])
        if all(values) and len(set(values)) >= holders:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"engine workers did not take the partitions within {timeout}s: {values}")
        await asyncio.sleep(0.05)


async def wait_for_task_groups(redis: aioredis.Redis, keys: Keys, queue: str, timeout: float = 30.0) -> None:
    """Until the activity worker has created its consumer groups (it is reading)."""
    deadline = time.monotonic() + timeout
    stream = keys.tasks(keys.partitions - 1, queue)
    while True:
        try:
            if await redis.xinfo_groups(stream):
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"activity worker did not start within {timeout}s")
        await asyncio.sleep(0.05)


def replace_section(path: Path, begin: str, end: str, new: str) -> None:
    """Put ``new`` (which starts with ``begin`` and ends with ``end``) in place of that section of
    RESULTS.md, or append it: each bench owns its section and leaves the rest as it was."""
    text = path.read_text() if path.exists() else "# foldflow benchmark results\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + new.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + new
    path.write_text(text)


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM each, then wait; whoever does not leave within ``timeout`` is killed."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fmt(v: float | None, digits: int = 0) -> str:
    """A figure as RESULTS.md shows it: thousands separated, a dash when there is none."""
    return "–" if v is None or math.isnan(v) else f"{v:,.{digits}f}"


def table_row(label: str, values: list[float | None], unit: str, digits: int = 0, note: str = "") -> str:
    """One row of a results table: median, min and max of the runs that gave a figure."""
    s = summary([v for v in values if v is not None and not math.isnan(v)])
    if not s:
        return f"| {label} | – | – | – | {unit} | 0 | {note} |"
    return (f"| {label} | {fmt(s['median'], digits)} | {fmt(s['min'], digits)} | {fmt(s['max'], digits)} | {unit} | "
            f"{int(s['n'])} | {note} |")
