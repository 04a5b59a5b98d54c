"""End-to-end step throughput: N instances of a 5-step linear workflow with
trivial handlers; engine and activity workers as separate processes, on a
redis-server this script starts. Prints one JSON line per run.

    python -m bench.throughput [--instances 2000] [--engines 1] [--activities 1] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from engine.client import Client
from engine.config import Settings
from engine.embedded import RedisServer
from engine.keys import Keys

ROOT = Path(__file__).resolve().parent.parent
STEPS = 5


def definition() -> dict[str, Any]:
    steps = [{"name": f"s{i}", "step_type": "service_call", "service": "bench", "endpoint": f"/s{i}",
              **({"depends_on": [f"s{i - 1}"]} if i else {})} for i in range(STEPS)]
    return {"name": "bench-linear", "version": "1", "definition": {"steps": steps}}


async def one_run(url: str, instances: int, engines: int, activities: int) -> dict[str, Any]:
    settings = Settings(redis_url=url, prefix=f"bench{uuid.uuid4().hex[:6]}", partitions=8)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": url, "FOLDFLOW_PREFIX": settings.prefix,
           "FOLDFLOW_PARTITIONS": str(settings.partitions), "FOLDFLOW_LOG_LEVEL": "WARNING"}
    redis = aioredis.Redis.from_url(url)
    client = Client(redis, settings)
    await client.register(definition())
    procs = [subprocess.Popen([sys.executable, "-m", "engine.cli", "worker"], env=env, cwd=ROOT)
             for _ in range(engines)]
    procs += [subprocess.Popen([sys.executable, "-m", "engine.cli", "activities", "--module", "bench.handlers"],
                               env=env, cwd=ROOT) for _ in range(activities)]
    keys = Keys(settings.prefix, settings.partitions)
    try:
        await asyncio.sleep(1.0)  # workers up, leases taken
        started = time.perf_counter()
        pipe = redis.pipeline(transaction=False)
        for i in range(instances):
            iid = f"b-{i}"
            pipe.xadd(keys.inbox(keys.partition(iid)), {"type": "start", "id": iid,
                                                         "data": orjson.dumps({"workflow": "bench-linear"})})
        await pipe.execute()
        done = 0
        cursors = {keys.feed(p): "0-0" for p in range(keys.partitions)}
        while done < instances:
            reply = await redis.xread(cursors, count=5000, block=1000)
            for stream, entries in reply or []:
                cursors[stream.decode()] = entries[-1][0].decode()
                done += sum(1 for _, f in entries if f[b"type"] == b"workflow.completed")
            if time.perf_counter() - started > 600:
                raise TimeoutError(f"{done}/{instances} after 600 s")
        elapsed = time.perf_counter() - started
        return {"instances": instances, "engines": engines, "activities": activities, "seconds": round(elapsed, 3),
                "instances_per_s": round(instances / elapsed, 1),
                "steps_per_s": round(instances * STEPS / elapsed, 1)}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        await client.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=2000)
    ap.add_argument("--engines", type=int, default=1)
    ap.add_argument("--activities", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with RedisServer() as server:
        results = [asyncio.run(one_run(server.url, args.instances, args.engines, args.activities))
                   for _ in range(args.runs)]
    for r in results:
        print(orjson.dumps(r).decode())
    med = statistics.median(r["steps_per_s"] for r in results)
    print(orjson.dumps({"median_steps_per_s": med, "runs": len(results)}).decode())


if __name__ == "__main__":
    main()
