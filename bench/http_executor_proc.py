"""`foldflow activities --http` as bench/http_calls.py runs it: the same objects
cmd_activities builds (HttpServing inside an ActivityWorker under
engine.runtime.lifecycle.serve, uvloop, the same settings from the environment),
plus, once SIGTERM has drained it, the executor's own per-call overhead samples
written to a JSON file, so the bench reports exact percentiles rather than
histogram bucket bounds, and how long each result report was awaited (which
`after_s` includes).

    python -m bench.http_executor_proc --samples out.json [--profile out.prof]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop

from engine.config import from_env
from engine.core.model import Task
from engine.ops.logs import configure_logging
from engine.outbound.settings import http_settings
from engine.runtime.lifecycle import serve
from engine.store.connection import connect, pool_size
from engine.workers.activities import ActivityWorker
from engine.workers.http.serving import HttpServing


async def run(samples: Path) -> int:
    settings = from_env()
    client = connect(settings.redis_url, max_connections=pool_size(settings.concurrency))
    serving = HttpServing(client, settings, http_settings())
    worker = ActivityWorker(client, settings, http=serving)
    report_s = _time_reports(worker)
    try:
        code = await serve(worker, client, settings)
    finally:
        await client.aclose()
        samples.write_bytes(orjson.dumps({"before_s": list(serving.before_s), "after_s": list(serving.after_s),
                                          "report_s": report_s, "counters": worker.counters()}))
    return code


def _time_reports(worker: ActivityWorker) -> list[float]:
    """How long each result script is awaited (the part of `after_s` that is the Redis round trip and the
    wait to join a batch, not the executor's own work): bench-only, around the worker's report()."""
    times: list[float] = []
    report = worker.report

    async def timed(task: Task, command: str, data: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        try:
            await report(task, command, data)
        finally:
            times.append(time.perf_counter() - t0)

    worker.report = timed  # type: ignore[method-assign]
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.http_executor_proc", description=__doc__.splitlines()[0])
    ap.add_argument("--samples", required=True, help="JSON file for before_s/after_s, written on exit")
    ap.add_argument("--profile", help="write a cProfile of the whole run here (pstats format)")
    args = ap.parse_args(argv)
    configure_logging(os.environ.get("FOLDFLOW_LOG_LEVEL", "WARNING"))
    if not args.profile:
        return int(uvloop.run(run(Path(args.samples))))
    profiler = cProfile.Profile()
    try:
        return int(profiler.runcall(uvloop.run, run(Path(args.samples))))
    finally:
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    sys.exit(main())
