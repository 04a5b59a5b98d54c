"""foldflow survives Redis Cluster resharding under load: a master is added and
the slots of some partitions are moved to it, key by key, while real worker
processes run.

While a slot migrates, a partition's keys are split between two nodes: a script
whose keys are not all on one node is refused (TRYAGAIN, or ASK to the target,
which refuses a multi-key call it cannot serve whole), a single-key command for
a key already moved is redirected (ASK). Workers treat those as "Redis not
answering right now" and retry; once the slot is assigned to the new node the
clients follow MOVED. Nothing may be lost, run twice or dead-lettered.

The last two tests pin down, call by call, what a script may not do on a
migrating slot (touch a key it deleted itself), for fire_timers.lua and for
append.lua (each failed before those scripts were changed to remove last).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from engine.config import Settings
from engine.dev.embedded import RedisClusterServer, RedisServer, _cluster_port
from engine.store.connection import connect
from engine.store.events import TRANSIENT
from engine.store.keys import ACTIVITY_GROUP, ENGINE_GROUP, RELAY_GROUP, Keys
from tests.support.fault_support import Procs, check_all, completed_count, histories, pending_total, start_many
from tests.support.poll import eventually, wait_for
from tests.support.tools import CRASH_KNOBS, foldflow_env, started_cluster

pytestmark = pytest.mark.redis

SERVICE = "agent-orchestrator"
STEPS = 4
FEED_CHUNK = 10  # instances started every FEED_EVERY_S until the slots have moved
FEED_EVERY_S = 0.1
MAX_INSTANCES = 1500
MOVE = 2  # partitions whose slots move to the new master
KEY_PAUSE_S = 0.01  # between two MIGRATEs: scripts run while a partition is split over two nodes

FLOW = {"name": "reshard", "version": "1", "definition": {"steps": [
    {"name": f"s{i}", "step_type": "service_call", "service": SERVICE, "timeout": 3000,
     "retry_policy": {"max_attempts": 5, "backoff_base": 1, "backoff_multiplier": 200},
     **({"depends_on": [f"s{i - 1}"]} if i else {})} for i in range(STEPS)]}}


@pytest.fixture
def reshard_cluster() -> Iterator[RedisClusterServer]:
    """A cluster of its own (3 masters, no replicas): the test adds a master and moves slots."""
    # 2 s: on a loaded machine a 1 s node timeout has seen a starved master failed over; stopping
    # the cluster stops the added node too (it is appended to its nodes)
    yield from started_cluster(masters=3, replicas=0, node_timeout_ms=2000)


def _sync(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=10)


def _cmd(port: int, *args: Any) -> Any:
    client = _sync(port)
    try:
        return client.execute_command(*args)  # type: ignore[no-untyped-call]
    finally:
        client.close()


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _node_id(port: int) -> str:
    return _text(_cmd(port, "CLUSTER", "MYID"))


def _slot_owner(port: int, slot: int) -> int:
    """The port of the master serving ``slot``, as the node on ``port`` sees it."""
    for start, end, master, *_ in _cmd(port, "CLUSTER", "SLOTS"):
        if int(start) <= slot <= int(end):
            return int(master[1])
    raise AssertionError(f"slot {slot} is not served")


def add_master(cluster: RedisClusterServer) -> RedisServer:
    """A 4th node with the cluster's own flags, joined with ``redis-cli --cluster add-node``."""
    node = RedisServer(_cluster_port(), *cluster.nodes[0].extra)
    for _ in range(5):  # the port was free when chosen; another process may take it first
        try:
            node.start()
            break
        except RuntimeError:
            node.stop()
            node = RedisServer(_cluster_port(), *cluster.nodes[0].extra)
    else:
        raise RuntimeError("could not start the new node")
    cluster.nodes.append(node)  # stopped with the cluster
    subprocess.run([shutil.which("redis-cli") or "redis-cli", "--cluster", "add-node", f"127.0.0.1:{node.port}",
                    f"127.0.0.1:{cluster.nodes[0].port}"], check=True, capture_output=True, timeout=60)
    new_id = _node_id(node.port)
    def joined() -> bool:  # every node knows the newcomer, and it knows the whole cluster
        known = all(new_id in _text(_cmd(n.port, "CLUSTER", "NODES")) for n in cluster.nodes)
        info = _text(_cmd(node.port, "CLUSTER", "INFO"))
        return known and "cluster_state:ok" in info and f"cluster_known_nodes:{len(cluster.nodes)}" in info

    wait_for(joined, 30, "the new node joins the cluster")
    return node


def migrate_slot(cluster: RedisClusterServer, slot: int, dst: int, log: list[str]) -> int:
    """Move ``slot`` to the node on port ``dst`` as ``redis-cli --cluster reshard`` does, one key per
    MIGRATE with a pause in between; returns how many keys moved."""
    src = _slot_owner(dst, slot)
    src_id, dst_id = _node_id(src), _node_id(dst)
    _cmd(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    _cmd(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    moved = 0
    source = _sync(src)
    try:
        while True:
            keys = source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1)  # type: ignore[no-untyped-call]
            if not keys:
                break
            reply = source.execute_command("MIGRATE", "127.0.0.1", dst, "", 0, 5000,  # type: ignore[no-untyped-call]
                                           "KEYS", *keys)
            moved += _text(reply) == "OK"
            time.sleep(KEY_PAUSE_S)
    finally:
        source.close()
    # the target first (it serves the slot before the source sends MOVED there), then the source, then the rest
    for port in [dst, src, *(n.port for n in cluster.nodes if n.port not in (src, dst))]:
        _cmd(port, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    log.append(f"slot {slot}: {moved} keys {src} -> {dst}")
    return moved


def _log_counts(text: str) -> dict[str, int]:
    return {
        # redis-py follows MOVED and ASK itself; these count what surfaced in the logs
        "TRYAGAIN": len(re.findall(r"TRYAGAIN", text)),
        "MOVED": len(re.findall(r"\bMOVED\b", text)),
        "ASK": len(re.findall(r"\bASK\b", text)),
        "TTL exhausted": text.count("TTL exhausted"),
        "redis unavailable": text.count("redis unavailable"),
        # a script refused midway (it touched a key it had deleted): its writes before stand, the rest are lost
        "non-local key": text.count("non local key"),
        "NOGROUP alarms": text.count("ALARM: consumer group"),
        "tracebacks": text.count("Traceback"),
    }


def test_resharding_under_load_loses_nothing(reshard_cluster: RedisClusterServer, tmp_path: Path) -> None:
    cluster = reshard_cluster
    settings = Settings(redis_url=cluster.url, prefix="reshard", partitions=8, block_ms=50, timer_poll_ms=20,
                        claim_idle_ms=1_000, breaker_threshold=0)
    keys = Keys(settings.prefix, settings.partitions)
    env = foldflow_env(settings, CRASH_KNOBS)
    env["FOLDFLOW_TASK_CLAIM_IDLE_MS"] = "2000"
    procs = Procs(env, tmp_path)
    for name, role in (("engine-a", "worker"), ("engine-b", "worker"), ("activities", "activities"),
                       ("projector", "projector")):
        procs.start(name, role)
    ids: list[str] = []
    report: dict[str, Any] = {}
    moves: list[str] = []
    client_retries: list[int] = []

    async def scenario() -> None:
        from engine.client import Client

        r = connect(settings.redis_url)
        client = Client(r, settings)
        feeding = asyncio.Event()
        feeding.set()

        async def feed() -> None:
            """New instances all along, until the slots have moved: the move happens under load."""
            while feeding.is_set() and len(ids) < MAX_INSTANCES:
                chunk = [f"rs-{n}" for n in range(len(ids), len(ids) + FEED_CHUNK)]
                while True:  # as a caller would: a start is idempotent by instance id, send it again
                    try:
                        await start_many(r, keys, chunk, "reshard", context=lambda i: {"flaky": i % 7 == 0})
                        break
                    except TRANSIENT:
                        client_retries.append(1)
                        await asyncio.sleep(0.05)
                ids.extend(chunk)
                await asyncio.sleep(FEED_EVERY_S)

        await client.register(FLOW)
        feeder = asyncio.create_task(feed())
        try:
            await eventually(lambda: completed_count(r, keys, list(ids)), 120, "the first instances complete",
                             ok=lambda n: n >= 50)
            new = await asyncio.to_thread(add_master, cluster)
            slots = {p: int(_cmd(cluster.nodes[0].port, "CLUSTER", "KEYSLOT", keys.tag(p))) for p in range(8)}
            owners = {p: _slot_owner(cluster.nodes[0].port, s) for p, s in slots.items()}
            chosen: list[int] = []  # partitions of different masters
            for p in range(8):
                if len(chosen) < MOVE and owners[p] not in {owners[q] for q in chosen}:
                    chosen.append(p)
            started_before_move = len(ids)
            open_at_move = started_before_move - await completed_count(r, keys, list(ids))
            moved_keys: list[int] = []

            def move_all() -> None:
                for p in chosen:
                    moved_keys.append(migrate_slot(cluster, slots[p], new.port, moves))

            move_started = time.monotonic()
            await asyncio.to_thread(move_all)
            move_done = time.monotonic()
            feeding.clear()
            await feeder
            await eventually(lambda: completed_count(r, keys, ids), 180, "every instance completes",
                             ok=lambda n: n == len(ids))
            finished = time.monotonic()

            # the moved partitions live on the new node now, every key of them
            for p in chosen:
                assert _slot_owner(cluster.nodes[0].port, slots[p]) == new.port
                assert _slot_owner(new.port, slots[p]) == new.port
                assert int(_cmd(owners[p], "CLUSTER", "COUNTKEYSINSLOT", slots[p])) == 0
                on_new = {_text(k) for k in _cmd(new.port, "CLUSTER", "GETKEYSINSLOT", slots[p], 100_000)}
                mine = [i for i in ids if keys.partition(i) == p]
                assert {keys.inbox(p), keys.feed(p), keys.tasks(p, SERVICE)} <= on_new
                assert {keys.instance(i) for i in mine} <= on_new

            hist = await histories(r, keys, ids)
            totals = check_all(hist)
            assert all(h[-1]["type"] == "workflow.completed" for h in hist.values())
            inboxes = keys.all_inboxes()
            tasks = [keys.tasks(p, SERVICE) for p in range(8)]
            outboxes = [keys.outbox(p) for p in range(8)]
            assert await pending_total(r, inboxes, ENGINE_GROUP) == 0
            assert await pending_total(r, tasks, ACTIVITY_GROUP) == 0
            assert await pending_total(r, outboxes, RELAY_GROUP) == 0
            dlq = {p: await r.xlen(keys.dlq(p)) for p in range(8)}
            assert not any(dlq.values()), (dlq, await r.xrange(keys.dlq(next(p for p, n in dlq.items() if n))))
            assert await r.xlen(f"{keys.events}:dlq") == 0
            # the projector followed the moved feeds too: nothing of them left pending
            await eventually(lambda: pending_total(r, [keys.feed(p) for p in range(8)], "proj:executions"), 60,
                             "the projector drains the feeds", ok=lambda n: n == 0)

            failed = [e["data"] for h in hist.values() for e in h if e["type"] == "workflow.step_failed"]
            report.update(
                instances=len(ids), open_at_move=open_at_move, started_during_move=len(ids) - started_before_move,
                partitions=chosen,
                slots=[slots[p] for p in chosen], keys_moved=sum(moved_keys),
                move_s=round(move_done - move_started, 2), complete_after_move_s=round(finished - move_done, 2),
                events=totals["events"], retries=sum(
                    e["type"] == "workflow.step_scheduled" and e["data"]["attempt"] > 1
                    for h in hist.values() for e in h),
                timeouts=sum(f["error"].get("kind") == "timeout" for f in failed),
                handler_failures=sum(f["error"].get("kind") == "handler" for f in failed),
            )
        finally:
            feeding.clear()
            await feeder
            await client.close()

    try:
        asyncio.run(scenario())
        dead = {n: p.returncode for n, p in procs.procs.items() if p.poll() is not None}
        assert not dead, f"worker processes died: {dead}"
    finally:
        procs.stop_all(check=False)
    logs = {n: procs.log(n) for n in procs.procs}
    workers = [_log_counts(t) for n, t in logs.items() if n != "projector"]
    counts = {k: sum(c[k] for c in workers) for k in workers[0]}
    projector = _log_counts(logs["projector"])
    bad = [n for n, p in procs.procs.items() if p.returncode != 0]
    assert not bad, f"unclean exits {bad}: " + "\n".join(logs[n][-3000:] for n in bad)
    assert counts["NOGROUP alarms"] == 0 and projector["NOGROUP alarms"] == 0, (counts, projector)
    assert counts["non-local key"] == 0, (
        "a script was refused midway on a migrating slot (a key it touched was gone): a decision was applied "
        "in part; see test_a_decision_stays_whole_while_its_slot_migrates", counts)
    print(f"\nreshard: {report['instances']} instances ({report['open_at_move']} open when the move began, "
          f"{report['started_during_move']} started during it, {len(client_retries)} start batches sent again), "
          f"partitions {report['partitions']} (slots {report['slots']}) moved to a new master, "
          f"{report['keys_moved']} keys in {report['move_s']}s; all completed {report['complete_after_move_s']}s "
          f"after the move; {report['events']} events, {report['retries']} retried attempts, "
          f"{report['timeouts']} step timeouts, {report['handler_failures']} handler failures; engine and activity "
          "worker logs: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + "; projector log: "
          + ", ".join(f"{k} {v}" for k, v in projector.items()) + "; " + "; ".join(moves))
    crashed = {n: t for n, t in logs.items() if "Traceback" in t and n != "projector"}
    assert not crashed, "\n".join(crashed.values())[-6000:]


# -- one script call on a migrating slot ------------------------------------------------------
# While a slot is MIGRATING, its source node runs a script only when every key in KEYS is
# still there; inside the script, each command is checked again, and a command on a key the
# node does not hold (one the script itself just deleted: the ZREM of a set's last member)
# is refused: "Script attempted to access a non local key in a cluster node". Redis does not
# roll a script back, so what it wrote before that command stands and the rest is not done.


@pytest.fixture(scope="module")
def small_cluster() -> Iterator[RedisClusterServer]:
    yield from started_cluster(masters=3, replicas=0, node_timeout_ms=2000)


class _Migrating:
    """The slot of one partition set MIGRATING to another master (no key moved yet), then STABLE."""

    def __init__(self, cluster: RedisClusterServer, keys: Keys, p: int) -> None:
        self.slot = int(_cmd(cluster.nodes[0].port, "CLUSTER", "KEYSLOT", keys.tag(p)))
        self.src = _slot_owner(cluster.nodes[0].port, self.slot)
        self.dst = next(n.port for n in cluster.nodes if n.port != self.src)

    def __enter__(self) -> _Migrating:
        _cmd(self.dst, "CLUSTER", "SETSLOT", self.slot, "IMPORTING", _node_id(self.src))
        _cmd(self.src, "CLUSTER", "SETSLOT", self.slot, "MIGRATING", _node_id(self.dst))
        return self

    def __exit__(self, *exc: object) -> None:
        for port in (self.src, self.dst):
            _cmd(port, "CLUSTER", "SETSLOT", self.slot, "STABLE")


def _ids_in(keys: Keys, p: int, n: int) -> list[str]:
    out: list[str] = []
    i = 0
    while len(out) < n:
        if keys.partition(f"mig-{i}") == p:
            out.append(f"mig-{i}")
        i += 1
    return out


def test_fire_timers_on_a_migrating_slot(small_cluster: RedisClusterServer) -> None:
    """The last due timer fired on a migrating slot: its ZREM deletes the set, which the script
    must not touch afterwards (it read the next timer first)."""
    from engine.store.events import Store
    from engine.store.plan import timer_member

    keys = Keys("migtimers", 8)

    async def go() -> list[tuple[int, int]]:
        r = connect(small_cluster.url)
        store = Store(r, keys)
        try:
            await store.load_scripts()
            iid = _ids_in(keys, 0, 1)[0]
            await r.zadd(keys.timers(0), {timer_member(iid, "timeout", "s", 1): 1})
            await r.xadd(keys.inbox(0), {"type": "x"})
            with _Migrating(small_cluster, keys, 0):
                results = await store.fire_timers()
            assert await r.xlen(keys.inbox(0)) == 2  # the timer fired, once
            return results
        finally:
            await r.aclose()

    assert asyncio.run(go())[0] == (1, -1)


def test_a_decision_stays_whole_while_its_slot_migrates(small_cluster: RedisClusterServer) -> None:
    """Each decision is all or nothing (streams.md, "Scripts"), also while its slot migrates:
    its events are written if and only if its inbox entry is acknowledged and its effects done.
    Failed (decisions applied in part) while append.lua removed each member with its own
    command, before the XACKs: a second removal from a set the first emptied was refused."""
    from engine.core.model import SignalReceived
    from engine.store.events import AppendRequest, Store
    from engine.store.plan import Effects, timer_member

    keys = Keys("migappend", 8)
    p = 0
    group, consumer = ENGINE_GROUP, "c1"
    ids = _ids_in(keys, p, 6)

    async def go() -> list[str]:
        r = connect(small_cluster.url)
        store = Store(r, keys)
        broken: list[str] = []
        try:
            await store.load_scripts()
            await r.set(keys.lease(p), consumer)  # every key the call names exists on the source
            await r.xadd(keys.feed(p), {"type": "x"})
            await r.zadd(keys.finished(p), {"someone-else": 1})
            await store.ensure_group(keys.inbox(p), group)
            for scenario in range(3):
                a, b = ids[2 * scenario: 2 * scenario + 2]
                last = {}
                for iid in (a, b):
                    last[iid] = _text(await r.xadd(keys.instance(iid, p), {
                        "type": "workflow.signal_received", "version": 1, "ts": 1,
                        "data": '{"type":"workflow.signal_received","name":"x"}'}))
                entry = {iid: _text(await r.xadd(keys.inbox(p), {"type": "signal", "id": iid})) for iid in (a, b)}
                await r.xreadgroup(group, consumer, {keys.inbox(p): ">"})
                only, fired = timer_member(a, "timeout", "s", 1), timer_member(b, "timeout", "t", 1)
                await r.delete(keys.timers(p))
                await r.zadd(keys.timers(p), {only: 1})  # the only timer: removing it deletes the set
                fa, fb = Effects(), Effects()
                event = [SignalReceived(name="y")]
                if scenario == 0:  # one decision disarms two timeouts, one already fired, and finishes
                    fa.timers_rem += [only, fired]
                    fa.finished = True
                    reqs = [AppendRequest(a, p, 1, [entry[a]], event, fa, 2, expected_last=last[a])]
                elif scenario == 1:  # two decisions of one call: the first disarms the last timer, the second arms one
                    fa.timers_rem.append(only)
                    fb.timers_add.append((10**13, timer_member(b, "timeout", "s", 2)))
                    reqs = [AppendRequest(a, p, 1, [entry[a]], [], fa, 2, expected_last=last[a]),
                            AppendRequest(b, p, 1, [entry[b]], event, fb, 2, expected_last=last[b])]
                else:  # two decisions of one call: each disarms a timer, the second one's already fired
                    fa.timers_rem.append(only)
                    fb.timers_rem.append(fired)
                    reqs = [AppendRequest(a, p, 1, [entry[a]], event, fa, 2, expected_last=last[a]),
                            AppendRequest(b, p, 1, [entry[b]], event, fb, 2, expected_last=last[b])]
                with _Migrating(small_cluster, keys, p):
                    try:
                        await store.append_many(reqs, group, consumer)
                    except Exception:
                        pass
                for req in reqs:
                    iid = req.instance_id
                    written = await r.xlen(keys.instance(iid, p)) > 1
                    acked = not await r.xpending_range(keys.inbox(p), group, min=entry[iid], max=entry[iid],
                                                       count=1)
                    done = {"acked": acked}
                    if req.effects.finished:
                        done["finished"] = await r.zscore(keys.finished(p), iid) is not None
                    for _, member in req.effects.timers_add:
                        done["timer armed"] = await r.zscore(keys.timers(p), member) is not None
                    if req.events and any(v != written for v in done.values()):
                        broken.append(f"scenario {scenario}, {iid}: events written={written} but {done}")
            return broken
        finally:
            await r.aclose()

    broken = asyncio.run(go())
    assert not broken, broken
