"""The monitor: every status change of a bridge run, published once to
``<prefix>:workflow.monitoring.updates``.

It reads the partition feeds in its own consumer group (``bridge:monitor``), as
each projection does (streams.md, "Read models"), and keeps a guard per run in
its record: ``mv``, the last event version it handled. Per batch and run it takes
the events right after the guard (filling a hole from the instance stream, when
another bridge holds the events in between), and one ``bridge_monitor.lua`` call
per partition publishes their updates, moves the guard and acknowledges the feed
entries, or refuses the run when its guard moved underneath, which reloads and
tries again. A repeat is at or below the guard and is only acknowledged; a bridge
killed before its call leaves the entries pending for XAUTOCLAIM. Entries of
instances the bridge did not start are acknowledged and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import orjson

from engine.bridge.updates import updates
from engine.errors import PoisonMessage
from engine.runtime.consume import Entry
from engine.store.events import Store
from engine.store.runs import BRIDGE_SOURCE, MONITOR_GROUP, MonitorBlock, RunStore
from projections.base import Applied
from projections.runner import _contiguous, _has_gap  # the projector's hole rules, shared
from projections.store import ViewStore, decode_entry

log = logging.getLogger("foldflow.bridge")
MAX_ROUNDS = 8
Items = list[tuple[Applied, str]]  # (event, feed entry id)


class MonitorStats:
    def __init__(self) -> None:
        self.monitor_entries = 0
        self.monitor_published = 0
        self.monitor_refused = 0
        self.monitor_filled = 0
        self.monitor_dead_lettered = 0


class Monitor:
    def __init__(self, runs: RunStore, store: Store, views: ViewStore, consumer: str,
                 clock: Callable[[], float]) -> None:
        self.runs, self.store, self.views, self.consumer = runs, store, views, consumer
        self.clock = clock
        self.stats = MonitorStats()

    async def handle(self, entries: list[Entry]) -> None:
        """One batch of feed entries (read or reclaimed), partition by partition."""
        self.stats.monitor_entries += len(entries)
        by_partition: dict[int, dict[str, Items]] = {}
        poison: list[tuple[Entry, str]] = []
        for entry in entries:
            stream, entry_id, fields = entry
            try:
                iid = fields[b"id"].decode()
                item = decode_entry(fields)
            except (KeyError, UnicodeDecodeError, PoisonMessage) as exc:
                poison.append((entry, f"the bridge monitor cannot read this feed entry: {exc}"))
                continue
            p = self.runs.keys.stream_partition(stream)
            by_partition.setdefault(p, {}).setdefault(iid, []).append((item, entry_id))
        if poison:
            await self._dead_letter(poison)
        for p, work in by_partition.items():
            for _ in range(MAX_ROUNDS):
                if not work:
                    break
                work = await self._round(p, work)
            else:
                log.warning("monitor: %d runs of partition %d kept being refused; redelivery retries", len(work), p)

    async def _round(self, p: int, work: dict[str, Items]) -> dict[str, Items]:
        """One guarded call for the partition; returns the runs it refused."""
        ids = list(work)
        guards = dict(zip(ids, await self.runs.guards(p, ids)))
        acks: list[str] = []
        blocks: list[MonitorBlock] = []
        runs = [i for i in ids if guards[i][0] == BRIDGE_SOURCE]
        acks += [eid for i in ids if guards[i][0] != BRIDGE_SOURCE for _it, eid in work[i]]
        gaps = [i for i in runs if _has_gap(guards[i][1], work[i])]
        fills = dict(zip(gaps, await self.views.read_instances([(p, i) for i in gaps])))
        for run_id in runs:
            _s, mv, status = guards[run_id]
            items = work[run_id]
            acks += [eid for it, eid in items if it.version <= mv]
            applied = _contiguous(mv, items, fills.get(run_id, []))
            if not applied:
                continue
            self.stats.monitor_filled += sum(1 for a in applied if a.version not in {it.version for it, _ in items})
            messages, new_status = updates(run_id, status, [(a.version, a.ts, a.event) for a in applied])
            last = applied[-1].version
            entry_ids = [eid for it, eid in items if mv < it.version <= last]
            blocks.append(MonitorBlock(run_id, mv, last, new_status if new_status != status else "",
                                       [orjson.dumps(m) for m in messages], entry_ids))
        if not acks and not blocks:
            return {}
        refused = set(await self.runs.publish(p, MONITOR_GROUP, acks, blocks))
        retry: dict[str, Items] = {}
        for i, block in enumerate(blocks):
            if i in refused:
                self.stats.monitor_refused += 1
                retry[block.run_id] = work[block.run_id]
            else:
                self.stats.monitor_published += len(block.messages)
        return retry

    async def _dead_letter(self, poison: Sequence[tuple[Entry, str]]) -> None:
        keys = self.runs.keys
        items = [(stream, keys.dlq(keys.stream_partition(stream)), MONITOR_GROUP, entry_id, reason, fields, 1)
                 for (stream, entry_id, fields), reason in poison]
        for (stream, entry_id, _f), reason in poison:
            log.warning("dead-lettered %s %s: %s", stream, entry_id, reason)
        await self.store.dead_letter_many(items, self.consumer, int(self.clock() * 1000))
        self.stats.monitor_dead_lettered += len(poison)

