"""Where a service's calls go: the registry first, then ``<SERVICE>_URL`` in the
environment (``agent-orchestrator`` -> ``AGENT_ORCHESTRATOR_URL``, as seed 000
configures its services). A Python handler comes before both; the activity
worker checks that before it asks here.

The registry is re-read only when its version counter moves, and each service's
instance checks every refresh, so the hot path reads nothing from Redis. An
instance whose checks say ``critical`` is skipped; ``unknown`` (never checked
yet) and ``passing`` ones take turns, in proportion to their weights.
"""

from __future__ import annotations

import itertools
import logging
import ssl
from collections.abc import Mapping
from typing import NamedTuple

from engine.outbound.health import ssl_context
from engine.store.queues import env_name
from engine.store.services import InstanceCheck, ServiceRecord, ServiceRegistry

log = logging.getLogger("foldflow.http")
_MAX_WEIGHT = 100


class Target(NamedTuple):
    service: str
    source: str  # "registry" | "env" | "url"
    base_url: str | None  # None: no instance may be called now (see why)
    headers: Mapping[str, str]
    timeout_ms: int | None
    ssl: ssl.SSLContext | bool
    why: str | None = None


class _Known(NamedTuple):
    record: ServiceRecord
    ssl: ssl.SSLContext | bool
    turns: itertools.cycle[str] | None  # healthy instance urls, repeated by weight
    checks: dict[str, InstanceCheck]


class ServiceDirectory:
    def __init__(self, registry: ServiceRegistry, env: Mapping[str, str]) -> None:
        self.registry = registry
        self.env = env
        self.version = -1
        self._known: dict[str, _Known] = {}  # service name -> what the registry says
        self.refreshes = 0

    def source(self, service: str) -> str | None:
        """How a service resolves: "registry", "env", or None (it does not)."""
        if service in self._known:
            return "registry"
        return "env" if self.env.get(env_name(service)) else None

    def names(self) -> list[str]:
        return sorted(self._known)

    def record(self, service: str) -> ServiceRecord | None:
        known = self._known.get(service)
        return None if known is None else known.record

    async def refresh(self) -> bool:
        """Re-read what changed; True when the set of registered services did."""
        version = await self.registry.version()
        changed = version != self.version
        if changed:
            records = await self.registry.all()
            old = self._known
            self._known = {}
            for record in records:
                try:
                    context = ssl_context(record)
                except (OSError, ssl.SSLError, ValueError) as exc:
                    log.warning("service %r: its TLS files cannot be loaded (%s); calls to it fail until fixed",
                                record.name, exc)
                    context = True
                previous = old.get(record.name)
                checks = previous.checks if previous is not None and previous.record.id == record.id else {}
                self._known[record.name] = _Known(record, context, None, checks)
            self.version = version
            names_changed = set(old) != set(self._known)
        else:
            names_changed = False
        found = await self.registry.checks_of([known.record.id for known in self._known.values()])
        for name, known in list(self._known.items()):
            checks = found.get(known.record.id, {})
            self._known[name] = known._replace(checks=checks, turns=_turns(known.record, checks))
        self.refreshes += 1
        return names_changed or changed

    def checked(self, service: str, checks: dict[str, InstanceCheck]) -> None:
        """Checks this process just made: used at once, not at the next refresh."""
        known = self._known.get(service)
        if known is not None:
            merged = {**known.checks, **checks}
            self._known[service] = known._replace(checks=merged, turns=_turns(known.record, merged))

    def target(self, service: str) -> Target | None:
        known = self._known.get(service)
        if known is not None:
            record = known.record
            if known.turns is None:
                states = ", ".join(f"{url}: {c.status} ({c.output})" for url, c in known.checks.items()) or "none"
                return Target(service, "registry", None, record.headers, record.timeout_ms, known.ssl,
                              f"no healthy instance of service {service!r} (checks: {states})")
            return Target(service, "registry", next(known.turns), record.headers, record.timeout_ms, known.ssl)
        url = self.env.get(env_name(service))
        if url:
            return Target(service, "env", url, {}, None, True)
        return None

    def nothing_for(self, service: str) -> str:
        return (f"service {service!r} resolves to nothing: no handler, no registered service, "
                f"no {env_name(service)}")


def _turns(record: ServiceRecord, checks: Mapping[str, InstanceCheck]) -> itertools.cycle[str] | None:
    usable = [i for i in record.instances if (c := checks.get(i.url)) is None or c.status != "critical"]
    if not usable:
        return None
    # Interleaved, so that a heavy instance does not take its whole share in a row.
    shares = [[i.url] * max(1, min(int(i.weight or 1), _MAX_WEIGHT)) for i in usable]
    return itertools.cycle([url for turn in itertools.zip_longest(*shares) for url in turn if url])
