"""CLI verbs of the read side: ``projector`` (run, status, rebuild, trim),
``executions`` (list, show, steps, events) and ``correlation show``. JSON by
default, ``--table`` for people; errors go through engine.ops.cli's handling
(NotFound: exit 1, InvalidInput: exit 2)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from engine.config import Settings, from_env
from engine.runtime.lifecycle import CONNECTION, VERB_SETTINGS, setting_flags
from engine.store.connection import Redis, connect
from engine.store.keys import Keys

from .catalog import PROJECTIONS
from .queries import Queries, parse_time


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {k: getattr(args, k, None) for k in Settings.__struct_fields__}  # every setting has a flag
    return from_env(**overrides)


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def _when(ms: Any) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(ms) / 1000)) + f".{int(ms) % 1000:03d}"


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, (dict, list)):
        return orjson.dumps(v).decode()
    return str(v)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _kv(record: dict[str, Any]) -> str:
    width = max(len(k) for k in record)
    return "\n".join(f"{k.ljust(width)}  {_cell(v)}" for k, v in record.items())


async def _with_queries(args: argparse.Namespace, fn: Callable[[Queries], Awaitable[Any]]) -> int:
    settings = _settings(args)
    queries = Queries.from_url(settings.redis_url, settings)
    try:
        out = await fn(queries)
    finally:
        await queries.close()
    print(out)
    return 0


# -- executions ------------------------------------------------------------------
def _execution_rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "created": _when(r.get("created_ms")), "updated": _when(r.get("updated_ms")),
             "steps": ",".join(r.get("current_steps") or []) or "-"} for r in items]


async def cmd_executions_list(args: argparse.Namespace) -> int:
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None

    async def go(q: Queries) -> str:
        page = await q.executions(status=args.status, workflow=args.workflow, since=since, until=until,
                            limit=args.limit, cursor=args.cursor)
        if not args.table:
            return _json(page)
        body = table(_execution_rows(page["items"]), ["id", "workflow", "status", "created", "updated", "steps"])
        tail = f"\n{len(page['items'])} of {page['count']}"
        return body + tail + (f"; next page: --cursor {page['next_cursor']}" if page["next_cursor"] else "")

    return await _with_queries(args, go)


async def cmd_executions_show(args: argparse.Namespace) -> int:
    async def go(q: Queries) -> str:
        record = await q.execution(args.id)
        return _kv(record) if args.table else _json(record)

    return await _with_queries(args, go)


async def cmd_executions_steps(args: argparse.Namespace) -> int:
    async def go(q: Queries) -> str:
        steps = await q.steps(args.id)
        if not args.table:
            return _json(steps)
        rows = [{**s, "started": _when(s.get("started_ms")),
                 "error": (s.get("error") or {}).get("message")} for s in steps]
        return table(rows, ["step", "attempt", "kind", "status", "started", "duration_ms", "error"])

    return await _with_queries(args, go)


async def cmd_executions_events(args: argparse.Namespace) -> int:
    async def go(q: Queries) -> str:
        events = await q.lifecycle(args.id)
        return table(events, ["timestamp", "type", "id"]) if args.table else _json(events)

    return await _with_queries(args, go)


async def cmd_correlation_show(args: argparse.Namespace) -> int:
    async def go(q: Queries) -> str:
        found = await q.correlation(args.id)
        if not args.table:
            return _json(found)
        parts = [f"correlation {args.id}", "",
                 table(_execution_rows(found["executions"]), ["id", "workflow", "status", "created", "updated"]),
                 "", table([{**e, "execution": e.get("data", {}).get("execution_id")} for e in found["timeline"]],
                           ["timestamp", "type", "execution", "id"])]
        return "\n".join(parts)

    return await _with_queries(args, go)


# -- projector -------------------------------------------------------------------
async def cmd_projector(args: argparse.Namespace) -> int:
    from engine.runtime.lifecycle import serve

    from .runner import Projector

    settings = _settings(args)
    client = connect(settings.redis_url)
    projector = Projector(client, settings, args.only, trim_every_ms=int(args.trim_every * 1000))
    try:
        # Metrics, health, heartbeat and the graceful two-signal shutdown, as every role has.
        return await serve(projector, client, settings)
    finally:
        await client.aclose()


async def _with_redis(args: argparse.Namespace, fn: Callable[[Redis, Settings], Awaitable[str]]) -> int:
    settings = _settings(args)
    client = connect(settings.redis_url)
    try:
        print(await fn(client, settings))
    finally:
        await client.aclose()
    return 0


async def cmd_projector_status(args: argparse.Namespace) -> int:
    from .status import projector_status

    async def go(redis: Redis, settings: Settings) -> str:
        rows = await projector_status(redis, Keys(settings.prefix, settings.partitions), time.time_ns() // 1_000_000)
        if not args.table:
            return _json(rows)
        return table(rows, ["projection", "partition", "lag_entries", "lag_seconds", "pending", "checkpoint"])

    return await _with_redis(args, go)


async def cmd_projector_rebuild(args: argparse.Namespace) -> int:
    from .catalog import select
    from .rebuild import Rebuilder

    names = list(PROJECTIONS) if args.name == "all" else [args.name]
    select(names)  # unknown names are bad input before Redis is touched

    async def go(redis: Redis, settings: Settings) -> str:
        return _json(await Rebuilder(redis, settings).rebuild(names))

    return await _with_redis(args, go)


async def cmd_projector_trim(args: argparse.Namespace) -> int:
    from .trim import trim_feeds

    async def go(redis: Redis, settings: Settings) -> str:
        removed = await trim_feeds(redis, Keys(settings.prefix, settings.partitions))
        return _json({"removed": {str(p): n for p, n in removed.items()}})

    return await _with_redis(args, go)


# -- parser ------------------------------------------------------------------------
def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    names = ", ".join(PROJECTIONS)
    conn = setting_flags(*CONNECTION)
    x = sub.add_parser("projector", parents=[setting_flags(*VERB_SETTINGS["projector"], log_level=True)],
                       help="run the projection worker, or: status | rebuild NAME | trim")
    x.add_argument("--only", action="append", metavar="NAME", help=f"run only these projections ({names})")
    x.add_argument("--trim-every", type=float, default=0.0, metavar="SECONDS",
                   help="trim the feeds below what every projection group processed, this often (0: never)")
    x.set_defaults(fn=cmd_projector)
    psub = x.add_subparsers(dest="pcmd")
    y = psub.add_parser("status", parents=[conn], help="lag per projection and partition")
    y.add_argument("--table", action="store_true")
    y.set_defaults(fn=cmd_projector_status)
    y = psub.add_parser("rebuild", parents=[conn], help="rebuild a read model from the instance streams, while running")
    y.add_argument("name", help=f"{names}, or all")
    y.set_defaults(fn=cmd_projector_rebuild)
    y = psub.add_parser("trim", parents=[conn], help="trim the feeds once, below what every projection group processed")
    y.set_defaults(fn=cmd_projector_trim)

    e = sub.add_parser("executions", help="query executions (from the read models)")
    esub = e.add_subparsers(dest="xcmd", required=True)
    y = esub.add_parser("list", parents=[conn], help="executions newest first, with filters and a cursor")
    y.add_argument("--status")
    y.add_argument("--workflow")
    y.add_argument("--since", help="ms since epoch, ISO-8601, or an age: 15m, 1h, 2d")
    y.add_argument("--until", help="as --since")
    y.add_argument("--limit", type=int, default=50)
    y.add_argument("--cursor")
    y.add_argument("--table", action="store_true")
    y.set_defaults(fn=cmd_executions_list)
    for verb, fn, what in (("show", cmd_executions_show, "one execution's record"),
                           ("steps", cmd_executions_steps, "its step history, one row per attempt"),
                           ("events", cmd_executions_events, "its lifecycle events")):
        y = esub.add_parser(verb, parents=[conn], help=what)
        y.add_argument("id")
        y.add_argument("--table", action="store_true")
        y.set_defaults(fn=fn)

    c = sub.add_parser("correlation", help="everything under a correlation id")
    csub = c.add_subparsers(dest="ccmd", required=True)
    y = csub.add_parser("show", parents=[conn])
    y.add_argument("id")
    y.add_argument("--table", action="store_true")
    y.set_defaults(fn=cmd_correlation_show)
