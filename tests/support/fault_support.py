"""Shared plumbing for the fault tests (tests/faults/): real worker
processes, bulk starts, bulk history checks and small measurements."""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from engine.core.codec import command_fields
from engine.store.keys import Keys

from .helpers import check_history
from .tools import spawn

TWO_STEPS = {
    "name": "fault-two-steps", "version": "1",
    "definition": {"steps": [
        {"name": "s1", "step_type": "service_call", "service": "agent-orchestrator", "endpoint": "/a",
         "sequence": 1},
        {"name": "s2", "step_type": "service_call", "service": "agent-orchestrator", "endpoint": "/b",
         "sequence": 2, "depends_on": ["s1"]},
    ]},
}



ROLE_ARGS = {
    "worker": ["worker"],
    "activities": ["activities", "--module", "engine.dev.demo_handlers"],
    "projector": ["projector"],
}


class Procs:
    """Named worker processes (`python -m engine.ops.cli ...`), each logging to a file."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.generation: Counter[str] = Counter()

    def start(self, name: str, role: str, *extra: str) -> subprocess.Popen[bytes]:
        self.generation[name] += 1
        args = [*ROLE_ARGS[role], "--consumer", f"{name}.{self.generation[name]}", *extra]
        proc = spawn(args, self.env, self.logs / f"{name}.{self.generation[name]}.log")
        self.procs[name] = proc
        return proc

    def consumer(self, name: str) -> str:
        return f"{name}.{self.generation[name]}"

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def log(self, name: str) -> str:
        return "".join((self.logs / f"{name}.{g}.log").read_text(errors="replace")
                       for g in range(1, self.generation[name] + 1))

    def stop_all(self, check: bool = True) -> None:
        """SIGTERM every live process; with check, each must exit cleanly (0)."""
        live = {n: p for n, p in self.procs.items() if p.poll() is None}
        for p in live.values():
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
        bad = []
        for n, p in live.items():
            try:
                code = p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                code = -9
            if code != 0:
                bad.append((n, code))
        if check and bad:
            raise AssertionError(f"unclean exits {bad}: " + "\n".join(self.log(n)[-3000:] for n, _ in bad))

    def kill_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()


async def start_many(redis: aioredis.Redis, keys: Keys, ids: list[str], workflow: str,
                     context: Callable[[int], dict[str, Any]] = lambda i: {}, batch: int = 2000,
                     version: str | None = None) -> None:
    """XADD one start command per id, pipelined in batches."""
    for lo in range(0, len(ids), batch):
        pipe = redis.pipeline(transaction=False)
        for i in range(lo, min(lo + batch, len(ids))):
            iid = ids[i]
            data: dict[str, Any] = {"workflow": workflow, "context": context(i), "correlation_id": f"c-{i % 10}"}
            if version:
                data["version"] = version
            pipe.xadd(keys.inbox(keys.partition(iid)), command_fields("start", iid, data, f"start:{iid}"))
        await pipe.execute()


async def histories(redis: aioredis.Redis, keys: Keys, ids: list[str], batch: int = 1000) -> dict[str, list[dict[str, Any]]]:
    """Each instance's stored events as check_history wants them (stored versions, not positions)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for lo in range(0, len(ids), batch):
        chunk = ids[lo: lo + batch]
        pipe = redis.pipeline(transaction=False)
        for iid in chunk:
            pipe.xrange(keys.instance(iid))
        for iid, rows in zip(chunk, await pipe.execute()):
            out[iid] = [{"version": int(f[b"version"]), "type": f[b"type"].decode(), "ts": int(f[b"ts"]),
                         "entry_id": eid.decode(), "data": orjson.loads(f[b"data"])} for eid, f in rows]
    return out


def last_types(hist: dict[str, list[dict[str, Any]]]) -> Counter[str]:
    return Counter(h[-1]["type"] if h else "<none>" for h in hist.values())


async def completed_count(redis: aioredis.Redis, keys: Keys, ids: list[str], batch: int = 2000) -> int:
    """How many instances' last event is workflow.completed (one XREVRANGE each, pipelined)."""
    n = 0
    for lo in range(0, len(ids), batch):
        pipe = redis.pipeline(transaction=False)
        for iid in ids[lo: lo + batch]:
            pipe.xrevrange(keys.instance(iid), count=1)
        for rows in await pipe.execute():
            n += bool(rows) and rows[0][1][b"type"] == b"workflow.completed"
    return n


def check_all(hist: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """check_history on every history; returns totals (events, failed attempts, retries)."""
    totals: Counter[str] = Counter()
    for iid, h in hist.items():
        try:
            check_history(h)
        except AssertionError as exc:
            raise AssertionError(f"history of {iid} is wrong: {exc}\n{h}") from exc
        totals["events"] += len(h)
        totals["step_failed"] += sum(e["type"] == "workflow.step_failed" for e in h)
    return dict(totals)


async def pending_total(redis: aioredis.Redis, streams: Iterable[str], group: str) -> int:
    n = 0
    for s in streams:
        try:
            n += int((await redis.xpending(s, group))["pending"])
        except aioredis.ResponseError:
            pass
    return n



async def counters(redis: aioredis.Redis, keys: Keys, consumer: str) -> dict[str, int]:
    """A worker's counters from its heartbeat hash (FOLDFLOW_HEARTBEAT_MS apart)."""
    raw = await redis.hget(f"{keys.prefix}:hb:{consumer}", "counters")
    return orjson.loads(raw) if raw else {}


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0
