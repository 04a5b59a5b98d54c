"""Admission control from the command line: `foldflow start --priority N --tenant T`, and
`foldflow admission [--workflow W]`, which shows every concurrency key with its holders
and its queue (engine/store/admission.py). JSON on stdout."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec
import orjson

from engine.config import from_env
from engine.errors import InvalidInput
from engine.runtime.lifecycle import CONNECTION, setting_flags, setting_overrides
from engine.store.admission import Slots
from engine.store.connection import connect
from engine.store.keys import Keys


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 9:
        raise argparse.ArgumentTypeError(f"must be an integer 0-9 (higher is more urgent), got {text!r}")
    return value


async def cmd_start(args: argparse.Namespace) -> int:
    from engine.ops.cli import _load_json_arg, _with_client

    context = _load_json_arg(args.context, "--context")
    if not isinstance(context, dict):
        raise InvalidInput("--context must be a JSON object")

    async def go(client: Any) -> int:
        iid = await client.start(args.workflow, context, version=args.version, correlation_id=args.correlation_id,
                                 instance_id=args.id, priority=args.priority, tenant=args.tenant)
        print(iid)
        return 0

    return await _with_client(args, go)


async def cmd_admission(args: argparse.Namespace) -> int:
    settings = from_env(**setting_overrides(args))
    redis = connect(settings.redis_url)
    try:
        slots = Slots(redis, Keys(settings.prefix, settings.partitions))
        rows = []
        for slot in sorted((await slots.index()).values(), key=lambda s: (s.workflow, s.key)):
            if args.workflow is None or slot.workflow == args.workflow:
                holders = await slots.holders(slot.workflow, slot.key)
                rows.append({"workflow": slot.workflow, "key": slot.key, "limit": slot.limit,
                             "holders": [{"id": i, "admitted_ms": ms} for i, ms in holders],
                             "queued": await slots.queued(slot.workflow, slot.key)})
        print(orjson.dumps(msgspec.to_builtins(rows), option=orjson.OPT_INDENT_2).decode())
        return 0
    finally:
        await redis.aclose()


def add_commands(sub: Any) -> None:
    start = sub.choices["start"]
    start.add_argument("--priority", type=_priority, default=0,
                       help="0-9, higher is more urgent: orders queued starts of one concurrency key")
    start.add_argument("--tenant", help="whose start this is (a concurrency key may be {{ tenant }})")
    start.set_defaults(fn=cmd_start)
    x = sub.add_parser("admission", parents=[setting_flags(*CONNECTION)],
                       help="concurrency keys: who holds a slot, who is queued")
    x.add_argument("--workflow")
    x.set_defaults(fn=cmd_admission)
