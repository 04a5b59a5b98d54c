"""Operator verbs: `foldflow health`, `foldflow top`, `foldflow stuck`."""

from __future__ import annotations

import argparse
import re
import sys
import urllib.error
import urllib.request
from typing import Any

import orjson

from engine.config import Settings, from_env
from engine.errors import InvalidInput
from engine.runtime.lifecycle import CONNECTION, VERB_SETTINGS, setting_flags, setting_overrides
from engine.store.connection import connect
from engine.store.keys import Keys


# -- verbs ----------------------------------------------------------------------
def _settings(args: argparse.Namespace) -> Settings:
    return from_env(**setting_overrides(args))


async def cmd_health(args: argparse.Namespace) -> int:
    """Exec probe: ask the local worker's health endpoint, or check Redis directly."""
    settings = _settings(args)
    port = args.port or settings.metrics_port
    if port and not args.direct:
        url = f"http://{args.host}:{port}/health/{args.check}"
        try:
            with urllib.request.urlopen(url, timeout=args.timeout) as resp:  # noqa: ASYNC210 - a one-shot CLI probe with nothing else on its loop
                body = resp.read()
                code = resp.status
        except urllib.error.HTTPError as exc:
            body, code = exc.read(), exc.code
        except (urllib.error.URLError, OSError) as exc:
            print(orjson.dumps({"status": "fail", "error": f"{url}: {exc}"}).decode())
            return 1
        sys.stdout.write(body.decode(errors="replace"))
        return 0 if code == 200 else 1
    from engine.runtime.health import Probe
    from engine.runtime.role import Bystander

    redis = connect(settings.redis_url, socket_timeout=args.timeout, socket_connect_timeout=args.timeout)
    try:
        probe = Probe(redis, Keys(settings.prefix, settings.partitions), "cli", Bystander(),
                      stuck_after_ms=settings.stuck_after_ms, alive=lambda: True, stopping=lambda: False)
        ok, body = await (probe.dependencies() if args.check == "dependencies" else probe.readiness())
        if args.check == "readiness":
            body["checks"].pop("groups", None)  # a direct check has no worker, hence no groups of its own
            ok = all(v == "ok" for v in body["checks"].values())
            body["status"] = "ok" if ok else "fail"
        print(orjson.dumps(body).decode())
        return 0 if ok else 1
    finally:
        await redis.aclose()


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration_ms(text: str) -> int:
    m = _DURATION.match(text)
    if not m:
        raise InvalidInput(f"--older-than {text!r}: expected a duration such as 90s, 10m, 2h")
    unit = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}[m.group(2) or "s"]
    return int(float(m.group(1)) * unit)


async def cmd_stuck(args: argparse.Namespace) -> int:
    from engine.runtime.stuck import find_stuck
    from projections.keys import ViewKeys

    older = parse_duration_ms(args.older_than)
    settings = _settings(args)
    keys = Keys(settings.prefix, settings.partitions)
    # The projector's status indexes name instances with nothing in flight (a paused one,
    # say); they are small for paused and created, and every running instance with --deep.
    statuses = ("paused", "created", "running") if args.deep else ("paused", "created")
    vk = ViewKeys(keys)
    listed = [vk.index(p, status=st) for p in range(keys.partitions) for st in statuses]
    redis = connect(settings.redis_url)
    try:
        found = await find_stuck(redis, keys, older, deep=args.deep, limit=args.limit, listed=listed)
    finally:
        await redis.aclose()
    if args.json:
        print(orjson.dumps([{f: getattr(s, f) for f in s.__struct_fields__} for s in found],
                           option=orjson.OPT_INDENT_2).decode())
        return 0
    if not found:
        print(f"no stuck instances (no progress for {args.older_than}{'' if args.deep else ', in-flight, paused and created only'})")
        return 0
    print(f"{len(found)} stuck instance(s), no progress for {args.older_than} or more:")
    for s in found:
        print(f"\n{s.instance_id}  {s.workflow}  {s.status}  idle {s.idle_s:.0f}s  partition {s.partition}"
              + (f"  correlation {s.correlation_id}" if s.correlation_id else ""))
        for reason in s.waits_for:
            print(f"  - {reason}")
    return 0


async def cmd_top(args: argparse.Namespace) -> int:
    from engine.ops.top import run_top

    settings = _settings(args)
    return await run_top(settings, interval=args.interval, once=args.once, iterations=args.iterations)


def add_commands(sub: Any) -> None:
    conn = setting_flags(*CONNECTION)
    x = sub.add_parser("health", parents=[setting_flags(*VERB_SETTINGS["health"])],
                       help="exec probe: exit 0 when the worker (or Redis) is healthy")
    x.add_argument("check", nargs="?", default="readiness", choices=("liveness", "readiness", "dependencies"))
    x.add_argument("--port", type=int, help="the worker's metrics port (default FOLDFLOW_METRICS_PORT)")
    x.add_argument("--host", default="127.0.0.1")
    x.add_argument("--direct", action="store_true", help="check Redis directly instead of a worker's endpoint")
    x.add_argument("--timeout", type=float, default=3.0, help="seconds")
    x.set_defaults(fn=cmd_health)

    x = sub.add_parser("stuck", parents=[conn], help="instances without progress, with what each waits for")
    x.add_argument("--older-than", default="10m", help="no progress for this long (90s, 10m, 2h; default 10m)")
    x.add_argument("--deep", action="store_true", help="also every running instance the projections list, and "
                                                        "the partition feeds (slow; finds running instances with "
                                                        "nothing in flight)")
    x.add_argument("--limit", type=int, default=1000)
    x.add_argument("--json", action="store_true")
    x.set_defaults(fn=cmd_stuck)

    x = sub.add_parser("top", parents=[conn],
                       help="live terminal view: throughput, instances, lag, workers, slowest steps")
    x.add_argument("--interval", type=float, default=1.0, help="refresh every this many seconds")
    x.add_argument("--once", action="store_true", help="print one frame and exit")
    x.add_argument("--iterations", type=int, default=0, help="exit after this many frames (0: until q/Ctrl-C)")
    x.set_defaults(fn=cmd_top)
