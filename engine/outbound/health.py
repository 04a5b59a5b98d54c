"""Health checks of registered instances over HTTP (Consul-style): GET the
instance's base URL + the service's health path, without following redirects,
within the check's timeout. A 2xx passes at once; an instance turns critical only
after `failures_before_critical` failures in a row, and until then keeps the
status it had. The service's headers are not sent: their secrets are the
executor's to resolve, for calls.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import stat
from urllib.parse import urlsplit

import aiohttp

from engine.outbound.safety import AddressPolicy, GuardedResolver, refused_in
from engine.store.services import MAX_OUTPUT, Instance, InstanceCheck, ServiceRecord, ServiceRegistry, Tls

MAX_TLS_FILE = 1 << 20  # a CA bundle or client certificate larger than this is not one
_BODY_BYTES = MAX_OUTPUT * 4  # enough UTF-8 for MAX_OUTPUT characters


def checking_session(policy: AddressPolicy | None = None, *, limit_per_host: int = 8) -> aiohttp.ClientSession:
    """A session for health checks whose resolver refuses what `policy` refuses (names that
    resolve to a metadata address included). Open it inside the running loop."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy or AddressPolicy()),
                                     limit_per_host=limit_per_host)
    return aiohttp.ClientSession(connector=connector, auto_decompress=True, trust_env=False)


def _tls_file(path: str) -> tuple[str, int, int]:
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_TLS_FILE:
        raise ValueError(f"{path} is not a regular file of at most {MAX_TLS_FILE} bytes")
    return path, info.st_mtime_ns, info.st_size


@functools.lru_cache(maxsize=128)
def _context(tls: Tls, stamps: tuple[tuple[str, int, int], ...]) -> ssl.SSLContext:
    # `stamps` is in the key so that a rotated file (new mtime or size) builds a new context.
    context = ssl.create_default_context(cafile=tls.ca_bundle)
    if tls.client_cert:
        context.load_cert_chain(tls.client_cert, tls.client_key)
    return context


def ssl_context(record: ServiceRecord) -> ssl.SSLContext | bool:
    """Verified TLS with the service's CA bundle and client certificate, when it has them
    (True: the system's trust store). Raises OSError, ValueError or ssl.SSLError when a
    file is missing, not a regular file, or not a certificate or key."""
    tls = record.tls
    if tls is None or tls == Tls():
        return True
    files = tuple(_tls_file(f) for f in (tls.ca_bundle, tls.client_cert, tls.client_key) if f)
    return _context(tls, files)


def _result(url: str, ok: bool, output: str, previous: InstanceCheck | None, threshold: int,
            now_ms: int, *, critical_now: bool = False) -> InstanceCheck:
    output = output if len(output) <= MAX_OUTPUT else output[: MAX_OUTPUT - 1] + "…"
    if ok:
        return InstanceCheck(url=url, status="passing", output=output, checked_at=now_ms)
    failures = (previous.consecutive_failures if previous else 0) + 1
    status = "critical" if critical_now or failures >= threshold else (previous.status if previous else "unknown")
    return InstanceCheck(url=url, status=status, output=output, checked_at=now_ms, consecutive_failures=failures)


async def check_instance(session: aiohttp.ClientSession, record: ServiceRecord, instance: Instance,
                         previous: InstanceCheck | None, now_ms: int, *,
                         policy: AddressPolicy | None = None) -> InstanceCheck:
    """One check of one instance. Never raises for what the instance does: refused
    addresses, bad TLS files, connection errors and timeouts are failed checks."""
    health = record.health
    target = instance.url + health.path
    done = functools.partial(_result, instance.url, previous=previous, threshold=health.failures_before_critical,
                             now_ms=now_ms)
    try:
        # IP literals never reach the resolver: the policy looks at the host itself first.
        (policy or AddressPolicy()).check_host(urlsplit(target).hostname or "")
        context = ssl_context(record) if target.startswith("https:") else True
        timeout = aiohttp.ClientTimeout(total=health.timeout_ms / 1000)
        async with session.get(target, allow_redirects=False, ssl=context, timeout=timeout) as response:
            body = await response.content.read(_BODY_BYTES)
    except TimeoutError:
        return done(False, f"timed out after {health.timeout_ms} ms")
    except (aiohttp.ClientError, OSError, ValueError, ssl.SSLError) as exc:
        refused = refused_in(exc)
        if refused is not None:
            # A destination the deployment refuses will not start passing by itself: critical now.
            return done(False, f"refused: {refused}", critical_now=True)
        return done(False, f"{type(exc).__name__}: {exc}")
    start = body.decode(errors="replace").strip()
    line = f"HTTP {response.status}: {start}" if start else f"HTTP {response.status}"
    if 300 <= response.status < 400:
        line += " (redirects are not followed)"
    return done(200 <= response.status < 300, line)


async def check_service(session: aiohttp.ClientSession, registry: ServiceRegistry, record: ServiceRecord,
                        now_ms: int, *, policy: AddressPolicy | None = None) -> dict[str, InstanceCheck]:
    """Check every instance at once, store the results, return them by url."""
    previous = await registry.checks(record.id)
    results = await asyncio.gather(*(check_instance(session, record, i, previous.get(i.url), now_ms, policy=policy)
                                     for i in record.instances))
    checks = {c.url: c for c in results}
    await registry.record_checks(record.id, checks)
    return checks
