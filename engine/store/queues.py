"""The queues registered definitions send tasks to, so that an HTTP executor knows
what it could serve without scanning the keyspace: written when a definition is
registered, read by ``foldflow activities --http``."""

from __future__ import annotations

import re

from engine.core.definition import Definition
from engine.errors import StoreUnavailable
from engine.store.connection import Redis
from engine.store.errors import TRANSIENT
from engine.store.keys import Keys
from engine.store.replies import text


def env_name(service: str) -> str:
    """The environment variable that gives a service's base URL: agent-orchestrator -> AGENT_ORCHESTRATOR_URL."""
    return re.sub(r"[^A-Za-z0-9]", "_", service).upper() + "_URL"


def definition_queues(definition: Definition) -> dict[str, str]:
    """queue -> "url" when some step of it gives an absolute url, else ""."""
    out: dict[str, str] = {}
    for step in definition.steps + definition.compensation:
        if step.service:
            has_url = bool(step.url)
            out[step.service] = "url" if has_url or out.get(step.service) == "url" else ""
        for rule in step.validation_rules:
            out.setdefault(rule.service, "")
        for handler in (step.on_error, step.on_timeout):
            target = getattr(handler, "target", None)
            if target:
                out.setdefault(target, "")
    for handler in definition.error_handlers:
        target = getattr(handler, "target", None)
        if target:
            out.setdefault(target, "")
    return out


async def index_queues(redis: Redis, keys: Keys, definition: Definition) -> None:
    queues = definition_queues(definition)
    if not queues:
        return
    pipe = redis.pipeline(transaction=False)
    for queue, mark in queues.items():
        # "url" wins over "": another definition's plain use of the queue must not hide it.
        if mark:
            pipe.hset(keys.service_queues, queue, mark)
        else:
            pipe.hsetnx(keys.service_queues, queue, mark)
    try:
        await pipe.execute()
    except TRANSIENT as exc:
        raise StoreUnavailable(f"redis unavailable indexing queues: {exc}") from exc


async def used_queues(redis: Redis, keys: Keys) -> dict[str, str]:
    try:
        raw = await redis.hgetall(keys.service_queues)
    except TRANSIENT as exc:
        raise StoreUnavailable(f"redis unavailable reading {keys.service_queues}: {exc}") from exc
    return {text(k): text(v) for k, v in raw.items()}
