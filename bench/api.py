"""`python -m bench.api [--quick]`: the HTTP API's performance (issue 12), side by
side in one run, against the ceiling measured in the same run. Writes
bench/api_results.json and the "HTTP API" section of bench/RESULTS.md.

    python -m bench.api              # the full run (about 3 minutes on 2 cores)
    python -m bench.api --quick      # tiny sizes: a smoke test, figures meaningless
    python -m bench.api report       # the RESULTS.md section again from api_results.json

1. starts/s, closed loop: POST /executions on `foldflow api` (default wait for
   the engine's start, and ?wait_ms=0) and POST /executions on the bare
   endpoint (bench/api_ceiling.py: one XADD), interleaved, each `runs` times.
2. starts at a fixed offered rate (open loop): p50/p99, offered and achieved.
3. GET /executions/{execution_id} at a fixed offered rate: p50/p99.
4. SSE fan-out to 100 and 1,000 subscribers, and RSS per idle subscription.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import orjson
import uvloop

from engine.dev.embedded import RedisServer

from . import api_load, api_sse
from .api_report import update_results_md
from .api_stack import WORKFLOW, BenchStack, with_cpu
from .harness import REDIS_ARGS, ROOT, Skip, commandstats_delta, info, machine_info, summary, versions

FULL = {"runs": 3, "throughput_s": 5.0, "concurrency": 32, "rate": 1000.0, "rate_s": 5.0, "fanout": [100, 1000],
        "sse_rounds": 10}
QUICK = {"runs": 1, "throughput_s": 0.5, "concurrency": 4, "rate": 100.0, "rate_s": 0.5, "fanout": [5, 20],
         "sse_rounds": 2}


def start_plan(workflow: str, query: str = "") -> api_load.Plan:
    def plan(i: int) -> tuple[str, str, bytes | None]:
        return "POST", "/executions" + query, orjson.dumps({"workflow_id": workflow, "context": {"n": i}})
    return plan


async def _probe(stack: BenchStack) -> None:
    """Skip, saying why, when the API does not serve the routes measured here yet."""
    async with aiohttp.ClientSession(stack.api) as http:
        async with http.post("/executions?wait_ms=0", json={"workflow_id": WORKFLOW["name"], "context": {}}) as r:
            if r.status not in (200, 202):
                raise Skip(f"POST /executions answered {r.status}: {(await r.read())[:200]!r}")


async def _measured(stack: BenchStack, work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    before, stats = await stack.cpu(), await info(stack.redis, "commandstats")
    result = await work
    calls = commandstats_delta(stats, await info(stack.redis, "commandstats"))
    calls.pop("info", None)
    answered = result.get("answered", result.get("requests")) or 1
    # every client's commands (the API's, the engine worker's, inside scripts too) over the answered requests
    result["redis_commands_per_request"] = {k: round(v / answered, 2) for k, v in calls.items()}
    return with_cpu(result, before, await stack.cpu())


async def throughput(stack: BenchStack, cfg: dict[str, Any], api: bool) -> dict[str, Any]:
    name = str(WORKFLOW["name"])
    targets = {"ceiling": (stack.ceiling, start_plan(name)), "api": (stack.api, start_plan(name)),
               "api_wait0": (stack.api, start_plan(name, "?wait_ms=0"))}
    if not api:
        del targets["api"], targets["api_wait0"]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
    for _ in range(cfg["runs"]):
        for key, (base, plan) in targets.items():  # interleaved, so drift on a shared box hits each alike
            runs[key].append(await _measured(stack, api_load.closed_loop(base, plan, cfg["concurrency"],
                                                                        cfg["throughput_s"])))
    return runs


def rates(cfg: dict[str, Any], peak: float | None) -> list[float]:
    """The goal's fixed rate; half the measured peak when that is lower (what the stack can carry); a light
    load (a tenth of the goal's rate), for the latency floor."""
    out = [float(cfg["rate"])]
    if peak and peak / 2 < cfg["rate"]:
        out.append(round(peak / 2, -1) or peak / 2)
    light = cfg["rate"] / 10
    return out + [light] if light < min(out) else out


def peak_of(runs: list[dict[str, Any]] | None) -> float | None:
    return summary([r["per_s"] for r in runs])["median"] if runs else None


async def start_latency(stack: BenchStack, cfg: dict[str, Any], peaks: dict[str, Any]) -> list[dict[str, Any]]:
    name = str(WORKFLOW["name"])
    out = []
    for key, base in (("ceiling", stack.ceiling), ("api", stack.api)):
        if key not in peaks:
            continue
        for rate in rates(cfg, peak_of(peaks[key])):
            res = await _measured(stack, api_load.open_loop(base, start_plan(name), rate, cfg["rate_s"],
                                                            keep_bodies=2000 if key == "api" else 0))
            out.append({"target": key, **res})
    return out


def execution_ids(bodies: list[bytes]) -> list[str]:
    ids = []
    for body in bodies:
        try:
            ids.append(str(msgspec.json.decode(body)["execution_id"]))
        except (msgspec.DecodeError, KeyError, TypeError):
            continue
    return ids


async def read_latency(stack: BenchStack, cfg: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    if not ids:
        raise Skip("no execution ids from the starts")

    def plan(i: int) -> tuple[str, str, bytes | None]:
        return "GET", f"/executions/{ids[i % len(ids)]}", None

    peak = await _measured(stack, api_load.closed_loop(stack.api, plan, cfg["concurrency"], cfg["throughput_s"]))
    opened = []
    for rate in rates(cfg, peak["per_s"]):
        res = await _measured(stack, api_load.open_loop(stack.api, plan, rate, cfg["rate_s"]))
        res.pop("bodies")
        opened.append(res)
    return {"distinct_executions": len(ids), "throughput": peak, "open": opened}


async def fan_out(stack: BenchStack, cfg: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for n in cfg["fanout"]:
        iid = await stack.client.start(str(WORKFLOW["name"]), {"fanout": n})
        await stack.client.wait(iid, timeout=10, statuses=frozenset({"running"}))
        t0 = time.perf_counter()
        before = await stack.cpu()
        res = await api_sse.fan_out(stack.api, stack.client, iid, n, stack.procs["api"].pid,
                                    rounds=cfg["sse_rounds"])
        res["seconds"] = time.perf_counter() - t0
        out[str(n)] = with_cpu(res, before, await stack.cpu())
    return out


async def _case(results: dict[str, Any], key: str, fn: Callable[[], Awaitable[Any]]) -> Any:
    print(f"[bench.api] {key} ...", file=sys.stderr, flush=True)
    try:
        results[key] = {"result": await fn()}
    except Skip as exc:
        results[key] = {"skipped": str(exc)}
    except Exception as exc:
        results[key] = {"failed": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
    if "result" not in results[key]:
        print(f"[bench.api]   {next(iter(results[key].values()))}", file=sys.stderr, flush=True)
        return None
    return results[key]["result"]


CASES = ("throughput", "start_latency", "read_latency", "fanout")


async def run_all(url: str, cfg: dict[str, Any], cases: set[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}

    async def case(key: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        return await _case(results, key, fn) if key in cases else None

    async with BenchStack(url, max_subscriptions=max(cfg["fanout"]) + 50) as stack:
        await _case(results, "probe", lambda: _probe(stack))
        probe = results.pop("probe")
        api = "result" in probe
        if not api:
            results["starts_through_the_api"] = probe
        peaks = await case("throughput", lambda: throughput(stack, cfg, api)) or {}
        lat = await case("start_latency", lambda: start_latency(stack, cfg, peaks))
        ids = [i for r in lat or [] for i in execution_ids(r.pop("bodies"))]
        await case("read_latency", lambda: read_latency(stack, cfg, ids))
        await case("fanout", lambda: fan_out(stack, cfg))
        results["processes"] = {"api": "foldflow api (1 process)", "worker": "foldflow worker (1 process)",
                                "ceiling": "python -m bench.api_ceiling (1 process)",
                                "load_generator": "this process (aiohttp, uvloop)", "redis": "redis-server"}
    return results


def main_run(args: argparse.Namespace) -> int:
    cfg = dict(QUICK if args.quick else FULL)
    started, machine = time.time(), machine_info()
    with RedisServer(None, *REDIS_ARGS) as server:
        results = uvloop.run(run_all(server.url, cfg, set(args.cases.split(",")) if args.cases else set(CASES)))
    doc = {"mode": "quick" if args.quick else "full", "config": cfg, "started": started,
           "duration_s": time.time() - started, "machine": machine, "loadavg_at_end": os.getloadavg(),
           "versions": versions(["foldflow", "litestar", "uvicorn", "uvloop", "httptools", "msgspec", "redis",
                                 "hiredis", "aiohttp"]),
           "results": results}
    out = Path(args.out) if args.out else ROOT / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "api_results.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    update_results_md(out / "RESULTS.md", doc)
    print(f"[bench.api] wrote {out / 'api_results.json'} and the HTTP API section of {out / 'RESULTS.md'} "
          f"in {doc['duration_s']:.0f}s", file=sys.stderr)
    return 1 if any("failed" in v for v in results.values() if isinstance(v, dict)) else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.splitlines()[0])
    ap.add_argument("cmd", nargs="?", choices=["run", "report"], default="run")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one run: a smoke test")
    ap.add_argument("--cases", help=f"comma-separated, of {','.join(CASES)} (default: all)")
    ap.add_argument("--out", help="directory for api_results.json and RESULTS.md (default: bench/)")
    args = ap.parse_args(argv)
    if args.cmd == "report":
        out = Path(args.out) if args.out else ROOT / "bench"
        update_results_md(out / "RESULTS.md", orjson.loads((out / "api_results.json").read_bytes()))
        return 0
    return main_run(args)


if __name__ == "__main__":
    sys.exit(main())
