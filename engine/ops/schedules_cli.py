"""`foldflow schedules create|list|show|pause|unpause|trigger|backfill|delete`: schedules from
the command line (engine/store/schedule_ops.py; the API's `/schedules` does the same).

JSON on stdout. Errors go through engine.ops.cli's handling: a bad schedule exits 2 naming
each field, an unknown schedule or workflow exits 1.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import orjson

from engine.config import from_env
from engine.core.schedules import OVERLAPS, Schedule, execution_id, iso_ms
from engine.errors import InvalidInput, NotFound
from engine.runtime.lifecycle import CONNECTION, setting_flags, setting_overrides
from engine.store.catalog import Catalog
from engine.store.connection import connect
from engine.store.events import Store
from engine.store.keys import Keys
from engine.store.schedule_ops import ScheduleOps, parse_time, schedule_of
from engine.store.schedules import ScheduleStore


def _print(value: Any) -> None:
    print(orjson.dumps(msgspec.to_builtins(value), option=orjson.OPT_INDENT_2).decode())


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _with_ops(args: argparse.Namespace, fn: Callable[[ScheduleOps], Awaitable[int]]) -> int:
    settings = from_env(**setting_overrides(args))
    redis = connect(settings.redis_url)
    try:
        keys = Keys(settings.prefix, settings.partitions)
        return await fn(ScheduleOps(ScheduleStore(redis, keys), Catalog(Store(redis, keys))))
    finally:
        await redis.aclose()


def create_body(args: argparse.Namespace) -> Schedule:
    try:
        context = orjson.loads(args.context)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"--context is not valid JSON: {exc}") from None
    if not isinstance(context, dict):
        raise InvalidInput("--context must be a JSON object")
    body: dict[str, Any] = {"name": args.name, "workflow": args.workflow, "context": context,
                            "overlap": args.overlap, "timezone": args.timezone, "paused": args.paused}
    for key in ("cron", "every", "version", "correlation_id", "note", "catchup_window"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    return schedule_of(body)


async def _create(ops: ScheduleOps, args: argparse.Namespace) -> int:
    _print(await ops.create(create_body(args)))
    return 0


async def _list(ops: ScheduleOps, args: argparse.Namespace) -> int:
    _print([{"name": v.name, "workflow": v.schedule.workflow, "cron": v.schedule.cron, "every": v.schedule.every,
             "paused": v.state.paused, "next_fire": v.state.next_fire, "last_execution_id": v.state.last_execution_id}
            for v in await ops.all()])
    return 0


async def _show(ops: ScheduleOps, args: argparse.Namespace) -> int:
    _print(await ops.show(args.name, args.next))
    return 0


async def _pause(ops: ScheduleOps, args: argparse.Namespace) -> int:
    _print((await ops.set_paused(args.name, args.scmd == "pause")).state)
    return 0


async def _trigger(ops: ScheduleOps, args: argparse.Namespace) -> int:
    _print({"name": args.name, "execution_id": await ops.trigger(args.name, _now_ms(), args.overlap),
            "status": "requested"})
    return 0


async def _backfill(ops: ScheduleOps, args: argparse.Namespace) -> int:
    times = await ops.backfill(args.name, parse_time(args.from_, "--from"), parse_time(args.to, "--to"), _now_ms(),
                               args.overlap)
    _print({"name": args.name, "fire_times": [iso_ms(t) for t in times],
            "execution_ids": [execution_id(args.name, t) for t in times], "count": len(times), "status": "requested"})
    return 0


async def _delete(ops: ScheduleOps, args: argparse.Namespace) -> int:
    if not await ops.store.delete(args.name):
        raise NotFound(f"no schedule {args.name!r}")
    _print({"deleted": args.name})
    return 0


VERBS: dict[str, Callable[[ScheduleOps, argparse.Namespace], Awaitable[int]]] = {
    "create": _create, "list": _list, "show": _show, "pause": _pause, "unpause": _pause, "trigger": _trigger,
    "backfill": _backfill, "delete": _delete}


async def cmd_schedules(args: argparse.Namespace) -> int:
    return await _with_ops(args, lambda ops: VERBS[args.scmd](ops, args))


def _create_parser(ssub: Any, conn: argparse.ArgumentParser) -> None:
    x = ssub.add_parser("create", parents=[conn], help="create a schedule (the name must be new)")
    x.add_argument("name", help="1-100 of A-Z a-z 0-9 _ . - (part of every execution id it starts)")
    x.add_argument("--workflow", required=True, help="a registered workflow")
    when = x.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='a 5-field cron expression, e.g. "0 9 * * 1-5"')
    when.add_argument("--every", help="an interval aligned to the epoch, e.g. 30s, 15m, 1h (at least 1s)")
    x.add_argument("--context", default="{}", help="the context of every start (a JSON object)")
    x.add_argument("--overlap", default="skip", choices=OVERLAPS, help="when the previous run still runs")
    x.add_argument("--timezone", default="UTC", help="IANA time zone of the cron expression (default UTC)")
    x.add_argument("--catchup-window", dest="catchup_window", help="after downtime, fire times this recent start "
                   "(default 1m; older ones are recorded as missed)")
    x.add_argument("--version", help="pin a version of the workflow (default: the latest at each start)")
    x.add_argument("--correlation-id", dest="correlation_id")
    x.add_argument("--note")
    x.add_argument("--paused", action="store_true", help="create it paused")
    x.set_defaults(fn=cmd_schedules)


def add_commands(sub: Any) -> None:
    s = sub.add_parser("schedules", help="schedules: create, list, show, pause, unpause, trigger, backfill, delete")
    ssub = s.add_subparsers(dest="scmd", required=True)
    conn = setting_flags(*CONNECTION)
    _create_parser(ssub, conn)
    x = ssub.add_parser("list", parents=[conn], help="every schedule")
    x.set_defaults(fn=cmd_schedules)
    x = ssub.add_parser("show", parents=[conn], help="a schedule: definition, state, next fire times, recent runs")
    x.add_argument("name")
    x.add_argument("--next", type=int, default=5, help="next fire times shown (default 5)")
    x.set_defaults(fn=cmd_schedules)
    for verb, what in (("pause", "stop starting runs (triggers and backfills still run)"),
                       ("unpause", "start again from now (the paused time is not backfilled)"),
                       ("delete", "delete a schedule (its runs keep running)")):
        x = ssub.add_parser(verb, parents=[conn], help=what)
        x.add_argument("name")
        x.set_defaults(fn=cmd_schedules)
    for verb, what in (("trigger", "start one run now (id <name>@trigger-<ms>)"),
                       ("backfill", "start every fire time in [--from, --to] (at most 1000)")):
        x = ssub.add_parser(verb, parents=[conn], help=what)
        x.add_argument("name")
        x.add_argument("--overlap", choices=OVERLAPS, help="default: the schedule's (trigger), allow (backfill)")
        if verb == "backfill":
            x.add_argument("--from", dest="from_", required=True, help="ISO 8601 time (UTC unless an offset is given)")
            x.add_argument("--to", required=True, help="ISO 8601 time, not in the future")
        x.set_defaults(fn=cmd_schedules)
