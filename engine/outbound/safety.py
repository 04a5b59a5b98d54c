"""Where calls may go. Every address a call would connect to, whether written as an
IP or found through DNS (including each redirect hop), is checked against the
deployment's policy: link-local and cloud metadata addresses are refused unless
allowed, and so is any range the deployment denies.

The check sits in the resolver the connector uses, so a name that resolves to a
refused address is refused at connect time too: a DNS answer cannot smuggle a
metadata address past a check made earlier on the name.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from engine.outbound.settings import Network

# Link-local (which holds 169.254.169.254, the metadata address of AWS, GCP, Azure,
# OpenStack, DigitalOcean), AWS's IPv6 metadata, Alibaba's and Oracle's.
DEFAULT_DENY: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in (
    "169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32", "192.0.0.192/32",
))
_HOSTS_CACHED = 4096
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog", "metadata", "instance-data",
                            "instance-data.ec2.internal"})


class AddressRefused(OSError):
    """A call's destination is not allowed; not retryable (the definition or the registry must change)."""


class AddressPolicy:
    def __init__(self, allow: list[Network] | None = None, deny: list[Network] | None = None) -> None:
        self.allow = list(allow or ())
        self.deny = [*DEFAULT_DENY, *(deny or ())]
        self._hosts: dict[str, str | None] = {}  # host as written -> why it is refused (None: allowed)

    def refusal(self, address: str) -> str | None:
        """Why this address is refused, or None when it is allowed."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.allow if net.version == ip.version):
            return None
        for net in self.deny:
            if net.version == ip.version and ip in net:
                what = "a link-local or cloud metadata address" if net in DEFAULT_DENY else "in a denied range"
                return f"{ip} is {what} ({net}); allow it with FOLDFLOW_HTTP_ALLOW"
        return None

    def check_host(self, host: str) -> None:
        """The URL's host itself: an IP literal, or a well-known metadata name."""
        why = self._hosts.get(host, False)
        if why is False:
            why = self._host_refusal(host)
            if len(self._hosts) >= _HOSTS_CACHED:  # a policy never changes: only the cache's size is bounded
                self._hosts.clear()
            self._hosts[host] = why
        if why is not None:
            raise AddressRefused(why)

    def _host_refusal(self, host: str) -> str | None:
        bare = host.strip("[]").rstrip(".").lower()
        if bare in METADATA_NAMES and not self.allow:
            return f"host {host!r} is a cloud metadata name"
        why = self.refusal(bare)
        return None if why is None else f"host {host!r}: {why}"


class GuardedResolver(AbstractResolver):
    """The default resolver, keeping only the addresses the policy allows."""

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.policy.check_host(host)
        found = await self.inner.resolve(host, port, family)
        allowed = [r for r in found if self.policy.refusal(r["host"]) is None]
        if not allowed:
            reasons = sorted({why for r in found if (why := self.policy.refusal(r["host"]))})
            raise AddressRefused(f"host {host!r} resolves only to refused addresses: {'; '.join(reasons)}")
        return allowed

    async def close(self) -> None:
        await self.inner.close()


def refused_in(exc: BaseException) -> AddressRefused | None:
    """The refusal inside an aiohttp connection error, if that is what it was."""
    seen: set[int] = set()
    current: Any = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, AddressRefused):
            return current
        seen.add(id(current))
        current = getattr(current, "os_error", None) or current.__cause__ or current.__context__
    return None
