"""The cost of durability: case 2 (2,000 instances of the 5-step linear
workflow, one engine and one activity worker) against Redis configured for
each durability mode, in one run, written to bench/DURABILITY.md.

    python -m bench.durability [--instances 2000] [--runs 3]

Modes: no persistence (the tests' and the benchmark's default), AOF with
appendfsync everysec, AOF with appendfsync always (with
FOLDFLOW_REQUIRE_FSYNC_ALWAYS=1), and a primary with one replica and
FOLDFLOW_WAIT_REPLICAS=1 (every batch of writes waits for the replica).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop

from engine.dev.embedded import RedisServer
from engine.store.connection import connect

from .foldflow_cases import throughput

OUT = Path(__file__).resolve().parent / "DURABILITY.md"
BASE = ("--maxmemory-policy", "noeviction")
MODES: list[tuple[str, tuple[str, ...], dict[str, str], bool]] = [
    ("no persistence (appendonly no)", ("--save", "", "--appendonly", "no"), {}, False),
    ("AOF, appendfsync everysec", ("--save", "", "--appendonly", "yes", "--appendfsync", "everysec"), {}, False),
    ("AOF, appendfsync always", ("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
     {"FOLDFLOW_REQUIRE_FSYNC_ALWAYS": "1"}, False),
    ("1 replica, FOLDFLOW_WAIT_REPLICAS=1", ("--save", "", "--appendonly", "no"),
     {"FOLDFLOW_WAIT_REPLICAS": "1", "FOLDFLOW_WAIT_TIMEOUT_MS": "1000"}, True),
]


async def _synced(url: str) -> None:
    client = connect(url)
    deadline = time.monotonic() + 15
    while (await client.info("replication")).get("master_link_status") != "up":
        if time.monotonic() > deadline:
            raise TimeoutError("the replica did not sync")
        await asyncio.sleep(0.05)
    await client.aclose()


def measure(args: tuple[str, ...], env: dict[str, str], replica: bool, instances: int, runs: int) -> list[float]:
    with RedisServer(None, *BASE, *args) as server:
        follower = RedisServer(None, *BASE, "--save", "", "--replicaof", "127.0.0.1", str(server.port)) \
            if replica else None
        try:
            if follower is not None:
                follower.start()
                uvloop.run(_synced(follower.url))
            return [uvloop.run(throughput(server.url, instances, 1, 1, extra_env=env))["steps_per_s"]
                    for _ in range(runs)]
        finally:
            if follower is not None:
                follower.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    rows: list[dict[str, Any]] = []
    for name, args, env, replica in MODES:
        figures = measure(args, env, replica, a.instances, a.runs)
        rows.append({"mode": name, "steps_per_s": figures, "median": statistics.median(figures)})
        print(orjson.dumps(rows[-1]).decode(), flush=True)
    base = rows[0]["median"]
    lines = ["# The cost of durability", "",
             f"`python -m bench.durability`, {time.strftime('%Y-%m-%d %H:%M')}: case 2 ({a.instances} instances x 5 "
             f"steps, 1 engine + 1 activity worker), {a.runs} runs per mode, on one 2-core machine shared by "
             "Redis, its replica, the workers and the load generator. Compare within this table only.", "",
             "| mode | median steps/s | min | max | vs no persistence |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        f = r["steps_per_s"]
        lines.append(f"| {r['mode']} | {r['median']:,.0f} | {min(f):,.0f} | {max(f):,.0f} | "
                     f"{r['median'] / base:.2f}x |")
    lines += ["", "What each mode can lose is stated in streams.md (\"Durability and delivery\")."]
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
