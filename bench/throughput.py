"""Case 2 alone, for quick experiments on the hot path: N instances of the
5-step linear workflow on a redis-server this starts; one JSON line per run.

    python -m bench.throughput [--instances 2000] [--engines 1] [--activities 1] [--runs 3]

`python -m bench run` is the full harness (every case, peers, RESULTS.md).
"""

from __future__ import annotations

import argparse
import statistics

import orjson
import uvloop

from engine.dev.embedded import RedisServer

from .foldflow_cases import throughput
from .harness import REDIS_ARGS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=2000)
    ap.add_argument("--engines", type=int, default=1)
    ap.add_argument("--activities", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with RedisServer(None, *REDIS_ARGS) as server:
        results = [uvloop.run(throughput(server.url, args.instances, args.engines, args.activities))
                   for _ in range(args.runs)]
    for r in results:
        print(orjson.dumps(r).decode())
    print(orjson.dumps({"median_steps_per_s": statistics.median(r["steps_per_s"] for r in results)}).decode())


if __name__ == "__main__":
    main()
