"""`foldflow batch start|list|show|failures|cancel` (the API's `/batches` does the same)
and the runner role `foldflow batches` (engine/ops/batch_runner.py) that carries
batches out.

JSON on stdout. A bad spec exits 2 naming each field; an unknown batch exits 1.
`batch start --follow` returns when the batch has ended: 0 when it completed with no
failed item, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import orjson

from engine.api.batches import batch_view, decode_spec, submit
from engine.config import from_env
from engine.core.batches import DEFAULT_RATE, MAX_RATE, OPERATIONS
from engine.errors import InvalidInput
from engine.runtime.lifecycle import CONNECTION, VERB_SETTINGS, setting_flags, setting_overrides
from engine.store.batches import BatchStore
from engine.store.connection import connect
from engine.store.keys import Keys

STATUSES = ("created", "queued", "running", "paused", "failed", "completed", "cancelled", "compensating",
            "compensated")


def _json(value: Any) -> str:
    return orjson.dumps(msgspec.to_builtins(value), option=orjson.OPT_INDENT_2).decode()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _with_store(args: argparse.Namespace, fn: Callable[[BatchStore], Awaitable[int]]) -> int:
    settings = from_env(**setting_overrides(args))
    redis = connect(settings.redis_url)
    try:
        return await fn(BatchStore(redis, Keys(settings.prefix, settings.partitions)))
    finally:
        await redis.aclose()


def spec_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /batches body these flags say."""
    query = {k: v for k, v in (("status", args.status), ("workflow", args.workflow), ("version", args.version),
                               ("correlation_id", args.correlation_id), ("started_after", args.since),
                               ("started_before", args.until), ("error_contains", args.error_contains))
             if v is not None}
    body: dict[str, Any] = {"operation": args.operation, "query": query, "rate": args.rate}
    for key, value in (("reason", args.reason), ("from_step", args.from_step)):
        if value is not None:
            body[key] = value
    if args.signal is not None:
        try:
            payload = orjson.loads(args.payload)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"--payload is not valid JSON: {exc}") from None
        body["signal"] = {"name": args.signal, "payload": payload}
    elif args.payload != "null":
        raise InvalidInput("--payload needs --signal NAME")
    return body


async def _start(store: BatchStore, args: argparse.Namespace) -> int:
    batch = await submit(store, decode_spec(spec_body(args)), _now_ms())
    if not args.follow:
        print(_json(batch_view(batch)))
        return 0
    while batch.active:
        await asyncio.sleep(0.2)
        batch = await store.found(batch.id)
    print(_json(batch_view(batch)))
    return 0 if batch.state == "completed" and batch.failed == 0 else 1


def _limit(limit: int) -> int:
    if not 1 <= limit <= 1000:
        raise InvalidInput(f"--limit must be 1..1000, got {limit}")
    return limit


async def _list(store: BatchStore, args: argparse.Namespace) -> int:
    batches, nxt = await store.page(_limit(args.limit), args.cursor)
    print(_json({"items": [batch_view(b) for b in batches], "next_cursor": nxt}))
    return 0


async def _show(store: BatchStore, args: argparse.Namespace) -> int:
    print(_json(batch_view(await store.found(args.id))))
    return 0


async def _failures(store: BatchStore, args: argparse.Namespace) -> int:
    await store.found(args.id)
    rows = await store.failures(args.id, args.after, _limit(args.limit))
    print(_json({"batch_id": args.id, "items": [{"execution_id": i, "reason": r, "entry_id": e} for e, i, r in rows],
                 "next_after": rows[-1][0] if len(rows) == args.limit else None}))
    return 0


async def _cancel(store: BatchStore, args: argparse.Namespace) -> int:
    cancelled, state = await store.cancel(args.id, _now_ms())
    print(_json({"batch_id": args.id, "cancelled": cancelled, "state": state}))
    return 0 if cancelled else 1


VERBS: dict[str, Callable[[BatchStore, argparse.Namespace], Awaitable[int]]] = {
    "start": _start, "list": _list, "show": _show, "failures": _failures, "cancel": _cancel}


async def cmd_batch(args: argparse.Namespace) -> int:
    return await _with_store(args, lambda store: VERBS[args.bcmd](store, args))


async def cmd_batches(args: argparse.Namespace) -> int:
    from engine.ops.batch_runner import BatchRunner
    from engine.ops.cli import _serve

    return await _serve(lambda r, s: BatchRunner(r, s), args)


def _add_start(bsub: Any, conn: argparse.ArgumentParser) -> None:
    x = bsub.add_parser("start", parents=[conn], help="start a batch over every execution the filters match")
    x.add_argument("operation", choices=OPERATIONS)
    x.add_argument("--status", action="append", choices=STATUSES, help="any of these statuses (repeatable)")
    x.add_argument("--workflow", help="of this workflow")
    x.add_argument("--version", help="of this version of --workflow")
    x.add_argument("--correlation-id")
    x.add_argument("--since", help="created at or after: ms, ISO-8601 or an age (15m, 2d)")
    x.add_argument("--until", help="created at or before: ms, ISO-8601 or an age")
    x.add_argument("--error-contains", help="whose error contains this text (case-insensitive)")
    x.add_argument("--reason", help="cancel, pause, terminate: recorded on each execution")
    x.add_argument("--from-step", help="retry: rewind each execution to this step")
    x.add_argument("--signal", help="signal: the signal's name")
    x.add_argument("--payload", default="null", help="signal: its payload (JSON)")
    x.add_argument("--rate", type=int, default=DEFAULT_RATE, help=f"items per second at most (1..{MAX_RATE}, "
                                                                  f"default {DEFAULT_RATE})")
    x.add_argument("--follow", action="store_true",
                   help="return when it has ended (exit 1 unless every item is done); --wait would be taken "
                        "for --wait-replicas by argparse")
    x.set_defaults(fn=cmd_batch)


def add_commands(sub: Any) -> None:
    b = sub.add_parser("batch", help="batch operations: start, list, show, failures, cancel")
    bsub = b.add_subparsers(dest="bcmd", required=True)
    conn = setting_flags(*CONNECTION)
    _add_start(bsub, conn)
    x = bsub.add_parser("list", parents=[conn], help="batches, newest first")
    x.add_argument("--limit", type=int, default=50)
    x.add_argument("--cursor", help="next_cursor of the previous page")
    x.set_defaults(fn=cmd_batch)
    for verb, what in (("show", "one batch and its progress"), ("cancel", "stop a batch (items done stay done)")):
        x = bsub.add_parser(verb, parents=[conn], help=what)
        x.add_argument("id")
        x.set_defaults(fn=cmd_batch)
    x = bsub.add_parser("failures", parents=[conn], help="the items that failed, with reasons")
    x.add_argument("id")
    x.add_argument("--after", help="next_after of the previous page")
    x.add_argument("--limit", type=int, default=100)
    x.set_defaults(fn=cmd_batch)

    x = sub.add_parser("batches", parents=[setting_flags(*VERB_SETTINGS["projector"], "lease_ms", log_level=True)],
                       help="run a batch runner: carries out the batches of `foldflow batch start` and POST /batches")
    x.set_defaults(fn=cmd_batches)
