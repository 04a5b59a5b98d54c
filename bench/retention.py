"""Redis memory per finished instance, before and after retention retires its
streams: case 2's workload (N instances of the 5-step linear workflow) with
FOLDFLOW_RETENTION_MS=1, then the engine worker's 10 s sweep (retire finished
instances, trim acknowledged inbox entries), then a projector trims the feeds
below what every projection has processed.

    python -m bench.retention [--instances 2000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import orjson
import uvloop

from engine.dev.embedded import RedisServer
from engine.store.connection import connect

from .foldflow_cases import throughput
from .harness import REDIS_ARGS, ROOT


async def used(url: str) -> int:
    client = connect(url)
    info = await client.info("memory")
    await client.aclose()
    return int(info["used_memory"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=2000)
    a = ap.parse_args()
    with RedisServer(None, *REDIS_ARGS) as server:
        empty = uvloop.run(used(server.url))
        env = {"FOLDFLOW_RETENTION_MS": "1"}
        result = uvloop.run(throughput(server.url, a.instances, 1, 1, extra_env={"FOLDFLOW_RETENTION_MS": "0"},
                                         flush=False))
        finished = uvloop.run(used(server.url))
        # throughput() stopped its workers: run one engine worker through a sweep, then a projector trim
        settings_env = {**env, "REDIS_URL": server.url, "PYTHONPATH": str(ROOT)}
        prefix = result.get("prefix")
        if prefix:
            settings_env["FOLDFLOW_PREFIX"] = prefix
        import os

        worker = subprocess.Popen([sys.executable, "-m", "engine.ops.cli", "worker"], env={**os.environ, **settings_env},
                                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(5)
        worker.terminate()
        worker.wait(30)
        retired = uvloop.run(used(server.url))
        print(orjson.dumps({
            "instances": a.instances, "prefix": prefix,
            "bytes_per_instance_finished": round((finished - empty) / a.instances),
            "bytes_per_instance_after_retention": round((retired - empty) / a.instances),
        }).decode())


if __name__ == "__main__":
    main()
