"""`python -m bench run [--quick]`: every case, foldflow and its peers in one run,
on a redis-server this starts (and the local PostgreSQL for DBOS). Writes
bench/RESULTS.md and bench/results.json (every raw figure, versions, machine).

    python -m bench run                 # the full run (about 10 minutes on 2 cores)
    python -m bench run --quick         # smoke run, under two minutes
    python -m bench run --cases 1,2,5   # a subset
    python -m bench report              # RESULTS.md again from results.json (+ bench/limits.md)
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from engine.dev.embedded import RedisServer

from . import foldflow_cases as fc
from . import history, peer_celery, peer_dbos, projection_case
from .harness import REDIS_ARGS, ROOT, Skip, machine_info, summary, versions
from .report import write_markdown

try:
    import uvloop

    _run: Callable[[Any], Any] = uvloop.run
except ImportError:  # pragma: no cover
    _run = asyncio.run

FULL = {"runs": 3, "ceiling_s": 3.0, "instances": 2000, "celery_chains": 2000, "dbos_workflows": 1000,
        "latency_s": 8.0, "history": [10, 1_000, 10_000, 100_000], "history_samples": 25, "grow_budget_s": 150.0,
        "fanout": 1000, "projection_instances": 2000}
QUICK = {"runs": 1, "ceiling_s": 1.0, "instances": 500, "celery_chains": 200, "dbos_workflows": 100,
         "latency_s": 3.0, "history": [10, 1_000, 10_000], "history_samples": 10, "grow_budget_s": 10.0,
         "fanout": 1000, "projection_instances": 500}


class Runner:
    def __init__(self, url: str, cfg: dict[str, Any], cases: set[int]) -> None:
        self.url, self.cfg, self.cases = url, cfg, cases
        self.results: dict[str, Any] = {}

    def case(self, key: str, number: int, fn: Callable[[], Any], runs: int | None = None) -> list[Any] | None:
        """Run fn `runs` times; record the raw figures, or why it was skipped or failed."""
        if number not in self.cases:
            return None
        raws: list[Any] = []
        t0 = time.perf_counter()
        print(f"[bench] case {number}: {key} ...", file=sys.stderr, flush=True)
        try:
            for _ in range(runs or self.cfg["runs"]):
                raws.append(fn())
        except Skip as exc:
            self.results[key] = {"case": number, "skipped": str(exc)}
            print(f"[bench]   skipped: {exc}", file=sys.stderr, flush=True)
            return None
        except Exception as exc:
            self.results[key] = {"case": number, "failed": f"{type(exc).__name__}: {exc}",
                                 "traceback": traceback.format_exc()[-3000:], "runs": raws}
            print(f"[bench]   FAILED: {exc}", file=sys.stderr, flush=True)
            return None
        self.results[key] = {"case": number, "runs": raws, "wall_s": time.perf_counter() - t0}
        return raws


def stat(raws: list[dict[str, Any]], field: str) -> dict[str, float]:
    return summary([r[field] for r in raws])


def main_run(args: argparse.Namespace) -> int:
    cfg = dict(QUICK if args.quick else FULL)
    cases = {int(c) for c in args.cases.split(",")} if args.cases else set(range(1, 9))
    started = time.time()
    with RedisServer(None, *REDIS_ARGS) as server:
        r = Runner(server.url, cfg, cases)
        redis_version = subprocess.run([server.binary, "--version"], capture_output=True, text=True).stdout.strip()
        ceil = r.case("ceiling", 1, lambda: _run(fc.ceiling(server.url, cfg["ceiling_s"])))
        one = r.case("foldflow_1e1a", 2, lambda: _run(fc.throughput(server.url, cfg["instances"], 1, 1)))
        r.case("foldflow_2e1a", 2, lambda: _run(fc.throughput(server.url, cfg["instances"], 2, 1)))
        r.case("celery", 3, lambda: peer_celery.run(server.url, cfg["celery_chains"], 2))
        r.case("dbos", 3, lambda: peer_dbos.run(cfg["dbos_workflows"]))
        if 4 in cases:
            peak = stat(one, "instances_per_s")["median"] if one else None
            if peak is None:
                peak = _run(fc.throughput(server.url, cfg["instances"], 1, 1))["instances_per_s"]
            r.case("latency", 4, lambda: _run(fc.latency(server.url, peak / 2, cfg["latency_s"])))
        if 5 in cases:
            for length in cfg["history"]:
                big = length >= 100_000
                r.case(f"history_{length}", 5, lambda n=length, b=big: _run(history.one_length(
                    server.url, n, cfg["history_samples"], 1 if b else 3, cfg["grow_budget_s"])),
                    runs=1 if length >= 10_000 else cfg["runs"])
        r.case("fanout", 6, lambda: _run(fc.fanout(server.url, cfg["fanout"])))
        if 8 in cases:
            try:
                projection_case.available()
                r.case("projections", 8, lambda: _run(projection_case.run(server.url, cfg["projection_instances"])))
            except Skip as exc:
                r.results["projections"] = {"case": 8, "skipped": str(exc)}
                print(f"[bench] case 8: skipped: {exc}", file=sys.stderr, flush=True)
        _ = ceil
    doc = {
        "mode": "quick" if args.quick else "full", "config": cfg, "started": started,
        "duration_s": time.time() - started, "machine": machine_info(),
        "versions": {"redis-server": redis_version, **versions(
            ["foldflow", "redis", "hiredis", "uvloop", "msgspec", "orjson", "celery", "kombu", "dbos", "psycopg",
             "sqlalchemy"])},
        "git": _git(), "settings": {"foldflow": fc.settings_table(), "celery": peer_celery.SETTINGS,
                                    "dbos": peer_dbos.SETTINGS, "redis-server": " ".join(REDIS_ARGS) or "defaults"},
        "results": r.results,
    }
    out = Path(args.out) if args.out else ROOT / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    (out / "RESULTS.md").write_text(write_markdown(doc))
    print(f"[bench] wrote {out / 'RESULTS.md'} and {out / 'results.json'} in {doc['duration_s']:.0f}s",
          file=sys.stderr)
    failed = [k for k, v in r.results.items() if "failed" in v]
    return 1 if failed else 0


def _git() -> dict[str, Any]:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty_files": git("status", "--porcelain").splitlines()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench")
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the benchmark cases and write RESULTS.md and results.json")
    run.add_argument("--quick", action="store_true", help="small sizes, one run each: a smoke test (< 2 min)")
    run.add_argument("--cases", help="comma-separated case numbers (default: all, 1-8)")
    run.add_argument("--out", help="directory for RESULTS.md and results.json (default: bench/)")
    rep = sub.add_parser("report", help="re-render RESULTS.md from results.json (e.g. after editing limits.md)")
    rep.add_argument("--out", help="directory holding results.json (default: bench/)")
    args = ap.parse_args(argv)
    if args.cmd == "report":
        out = Path(args.out) if args.out else ROOT / "bench"
        (out / "RESULTS.md").write_text(write_markdown(orjson.loads((out / "results.json").read_bytes())))
        return 0
    return main_run(args)


if __name__ == "__main__":
    sys.exit(main())
