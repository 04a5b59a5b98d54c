"""`foldflow admission [--workflow W]`: every concurrency key with its holders and its queue
(engine/store/admission.py), JSON on stdout. `foldflow start --priority N --tenant T` is
engine.ops.cli's start."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec
import orjson

from engine.config import from_env
from engine.runtime.lifecycle import CONNECTION, setting_flags, setting_overrides
from engine.store.admission import Slots
from engine.store.connection import connect
from engine.store.keys import Keys


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
    x = sub.add_parser("admission", parents=[setting_flags(*CONNECTION)],
                       help="concurrency keys: who holds a slot, who is queued")
    x.add_argument("--workflow")
    x.set_defaults(fn=cmd_admission)
