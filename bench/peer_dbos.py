"""Peer: DBOS Transact (pip package `dbos`) on the local PostgreSQL, workflows of
5 trivial steps. Runs in a child process (`python -m bench.peer_dbos URL N`),
because DBOS is a process-wide singleton; it prints one JSON line.

DBOS is a library: workflows run inside the application process, durably
checkpointed in Postgres. Its documented way to run many workflows at once
from one process is to start them asynchronously and await their handles
(`DBOS.start_workflow_async`), with async workflows and steps; that is what this
does. Postgres plays the part Redis plays for foldflow.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .harness import ROOT, Skip, proc_cpu_seconds

STEPS = 5
DB = "foldflow_bench_dbos"
SETTINGS = {
    "system_database_url": f"postgresql://postgres@127.0.0.1:5432/{DB} (dropped and recreated each run)",
    "workflow": f"@DBOS.workflow async, {STEPS} sequential @DBOS.step async calls, each returns x + 1",
    "load": "DBOS.start_workflow_async for every workflow, then asyncio.gather of the handles' get_result",
    "processes": "1 (DBOS runs workflows in the application process)",
    "log_level": "WARNING", "sys_db_pool_size": 20, "everything else": "DBOS defaults",
    "postgres": "local PostgreSQL server as installed (its defaults: fsync on, synchronous_commit on)",
}


def _postgres_cpu() -> float:
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue
        if "(postgres)" in raw[:64]:
            total += proc_cpu_seconds(int(stat.parent.name))
    return total


def _child(url: str, workflows: int) -> dict[str, Any]:
    from dbos import DBOS, DBOSConfig

    config: DBOSConfig = {"name": "foldflow-bench", "system_database_url": url, "log_level": "WARNING",
                          "sys_db_pool_size": 20}
    DBOS(config=config)

    @DBOS.step()
    async def step(x: int) -> int:
        return x + 1

    @DBOS.workflow()
    async def flow(x: int) -> int:
        for _ in range(STEPS):
            x = await step(x)
        return x

    DBOS.launch()

    async def go() -> dict[str, Any]:
        warm = await DBOS.start_workflow_async(flow, 0)
        assert await warm.get_result() == STEPS
        pg0, me0 = _postgres_cpu(), proc_cpu_seconds(os.getpid())
        t0 = time.perf_counter()
        handles = [await DBOS.start_workflow_async(flow, 0) for _ in range(workflows)]
        sent = time.perf_counter() - t0
        results = await asyncio.gather(*(h.get_result() for h in handles))
        elapsed = time.perf_counter() - t0
        if any(r != STEPS for r in results):
            raise RuntimeError("a DBOS workflow returned a wrong value")
        return {"workflows": workflows, "seconds": elapsed, "start_seconds": sent,
                "steps_per_s": workflows * STEPS / elapsed, "workflows_per_s": workflows / elapsed,
                "cpu_seconds": {"dbos_process": proc_cpu_seconds(os.getpid()) - me0,
                                "postgres_all_backends": _postgres_cpu() - pg0}}

    try:
        return asyncio.run(go())
    finally:
        DBOS.destroy()


def _reset_database() -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True, connect_timeout=3) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{DB}"')


def run(workflows: int, timeout: float = 600.0) -> dict[str, Any]:
    try:
        import dbos
    except ImportError as exc:
        raise Skip(f"dbos is not installed ({exc}); pip install dbos") from exc
    try:
        _reset_database()
    except Exception as exc:
        raise Skip(f"no PostgreSQL answering at 127.0.0.1:5432 as user postgres: {exc}") from exc
    url = f"postgresql://postgres@127.0.0.1:5432/{DB}"
    proc = subprocess.run([sys.executable, "-m", "bench.peer_dbos", url, str(workflows)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"DBOS run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(lines[-1])
    out["dbos"] = dbos.__version__ if hasattr(dbos, "__version__") else None
    return out


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], int(sys.argv[2]))), flush=True)
