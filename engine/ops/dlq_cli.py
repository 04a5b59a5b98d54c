"""`foldflow dlq list|show|replay|drop`: inspect and replay dead letters.

JSON by default, ``--table`` for people. Errors go through engine.ops.cli's
handling: a dead letter that is not there exits 1, bad input (a malformed id,
an unknown partition, a replay refused because of its source) exits 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import orjson

from engine.config import Settings, from_env
from engine.errors import InvalidInput
from engine.ops.dlq import DeadLetter, DeadLetters, deployment_keys, parse_partition
from engine.runtime.lifecycle import CONNECTION, setting_flags
from engine.store.connection import connect
from engine.store.keys import Keys


def _settings(args: argparse.Namespace) -> Settings:
    return from_env(**{k: getattr(args, k, None) for k in Settings.__struct_fields__})


def _json(value: Any) -> str:
    return orjson.dumps(msgspec.to_builtins(value), option=orjson.OPT_INDENT_2).decode()


async def _with_dlq(args: argparse.Namespace, fn: Callable[[DeadLetters, argparse.Namespace], Awaitable[int]]) -> int:
    settings = _settings(args)
    redis = connect(settings.redis_url)
    try:
        keys = await deployment_keys(redis, Keys(settings.prefix, settings.partitions))
        args.partition = parse_partition(args.partition, keys)
        return await fn(DeadLetters(redis, keys), args)
    finally:
        await redis.aclose()


def _when(letter: DeadLetter) -> str:
    ms = letter.ts if letter.ts is not None else int(letter.id.split("-")[0])
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


def _short(text: str, width: int = 70) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def table(letters: Sequence[DeadLetter]) -> str:
    columns = ("ref", "when", "source", "deliveries", "replayable", "reason")
    rows = [[d.ref, _when(d), d.source, "-" if d.deliveries is None else str(d.deliveries),
             "yes" if d.replayable else "no", _short(d.reason)] for d in letters]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _kv(letter: DeadLetter) -> str:
    record = msgspec.to_builtins(letter)
    width = max(len(k) for k in record)
    return "\n".join(f"{k.ljust(width)}  {v if isinstance(v, str) else orjson.dumps(v).decode()}"
                     for k, v in record.items())


def _selection(args: argparse.Namespace) -> None:
    """ID or --all, never both; filters only with --all."""
    if args.all == (args.id is not None):
        raise InvalidInput(f"dlq {args.dcmd}: give a dead letter id or --all (with optional filters), not both")
    if args.id is not None and (args.reason_contains is not None or args.limit is not None):
        raise InvalidInput(f"dlq {args.dcmd}: --reason-contains and --limit go with --all")


async def _list(dlq: DeadLetters, args: argparse.Namespace) -> int:
    letters = await dlq.find(partition=args.partition, reason_contains=args.reason_contains, limit=args.limit)
    print(table(letters) if args.table else _json(letters))
    return 0


async def _show(dlq: DeadLetters, args: argparse.Namespace) -> int:
    letter = await dlq.get(args.id, args.partition)
    print(_kv(letter) if args.table else _json(letter))
    return 0


async def _replay(dlq: DeadLetters, args: argparse.Namespace) -> int:
    if args.id is not None:
        letter = await dlq.get(args.id, args.partition)
        new = await dlq.replay(letter)
        print(_json({"ref": letter.ref, "id": letter.id, "dlq": letter.dlq, "source": letter.source, "new_id": new}))
        return 0
    letters = await dlq.find(partition=args.partition, reason_contains=args.reason_contains, limit=args.limit)
    report = await dlq.replay_many(letters)
    print(_json(report))
    if report["refused"]:
        print(f"foldflow: {len(report['refused'])} dead letter(s) not replayed (see \"refused\")", file=sys.stderr)
        return 2
    return 0


async def _drop(dlq: DeadLetters, args: argparse.Namespace) -> int:
    if args.id is not None:
        letter = await dlq.get(args.id, args.partition)
        await dlq.drop(letter)
        print(_json({"dropped": [{"ref": letter.ref, "id": letter.id, "dlq": letter.dlq}], "missing": []}))
        return 0
    letters = await dlq.find(partition=args.partition, reason_contains=args.reason_contains, limit=args.limit)
    print(_json(await dlq.drop_many(letters)))
    return 0


async def cmd_dlq(args: argparse.Namespace) -> int:
    if args.dcmd in ("replay", "drop"):
        _selection(args)
    fn = {"list": _list, "show": _show, "replay": _replay, "drop": _drop}[args.dcmd]
    return await _with_dlq(args, fn)


def add_commands(sub: Any) -> None:
    d = sub.add_parser("dlq", help="dead letters: list, show, replay, drop")
    dsub = d.add_subparsers(dest="dcmd", required=True)
    part = "only this dlq: a partition number, or 'events' for <prefix>:events:dlq"
    conn = setting_flags(*CONNECTION)

    x = dsub.add_parser("list", parents=[conn], help="dead letters over every dlq, oldest first (JSON; --table)")
    x.add_argument("--partition", help=part)
    x.add_argument("--reason-contains", help="only those whose reason contains this text (case-insensitive)")
    x.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    x.add_argument("--table", action="store_true")
    x.set_defaults(fn=cmd_dlq)

    x = dsub.add_parser("show", parents=[conn], help="one dead letter, with its original fields")
    x.add_argument("id", help="its ref <partition>/<id> or its id in the dlq (from dlq list)")
    x.add_argument("--partition", help=part + " (when the id is in several)")
    x.add_argument("--table", action="store_true")
    x.set_defaults(fn=cmd_dlq)

    for verb, what in (("replay", "put the original entry back on its source stream and delete the dead letter"),
                       ("drop", "delete dead letters")):
        x = dsub.add_parser(verb, parents=[conn], help=what)
        x.add_argument("id", nargs="?", help="one dead letter's ref <partition>/<id> or id (or --all)")
        x.add_argument("--all", action="store_true", help="every dead letter that matches the filters")
        x.add_argument("--partition", help=part)
        x.add_argument("--reason-contains", help="with --all: only those whose reason contains this text")
        x.add_argument("--limit", type=int, help="with --all: at most this many, oldest first")
        x.set_defaults(fn=cmd_dlq)
