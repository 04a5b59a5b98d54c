"""The service registry (seed 000's Service Discovery): one record per service that
steps name, with its instances, health check settings, default timeout, headers,
tags and metadata, and the last health check of each instance.

Every key shares the hash tag ``{<prefix>:svc}`` (keys.py), so the scripts that
change a record, its name and the version counter together run unchanged on Redis
Cluster. Header values are stored as written: a ``{{ secrets.NAME }}`` in one is
resolved by the HTTP executor at call time, never here.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from engine.core.definition.model import parse_duration_ms
from engine.errors import InvalidInput, InvariantBroken, NotFound, Refused
from engine.store.connection import Redis
from engine.store.errors import translate_methods
from engine.store.keys import Keys
from engine.store.lua import Script, ScriptRunner
from engine.store.replies import text

log = logging.getLogger("foldflow.store")

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")  # an HTTP header name (RFC 9110 token)
MAX_URL = 2048
MAX_INSTANCES = 100
MAX_WEIGHT = 100
MAX_ITEMS = 50  # headers, tags, metadata entries each
MAX_TEXT = 1000  # a header or metadata value
MAX_OUTPUT = 1024  # characters of a check's output
MAX_CHECK_TIMEOUT_MS = 30_000
MIN_INTERVAL_MS, MAX_INTERVAL_MS = 1_000, 86_400_000
MAX_CALL_TIMEOUT_MS = 3_600_000
Status = Literal["passing", "critical", "unknown"]


class Instance(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    """Absolute http(s) base URL, no query or fragment, no trailing slash."""
    weight: int = 1
    """Share of calls relative to the other instances (1-100)."""


class HealthCheck(msgspec.Struct, frozen=True, kw_only=True):
    path: str = "/health"
    interval_ms: int = 10_000
    timeout_ms: int = 2_000
    failures_before_critical: int = 3


class Tls(msgspec.Struct, frozen=True, kw_only=True):
    """Files on the machine of the process that calls (paths, not contents)."""

    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None


class ServiceRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    instances: list[Instance]
    health: HealthCheck = HealthCheck()
    timeout_ms: int | None = None
    headers: dict[str, str] = {}
    tags: list[str] = []
    metadata: dict[str, str] = {}
    tls: Tls | None = None
    created_at: int = 0
    updated_at: int = 0


class InstanceCheck(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    status: Status = "unknown"
    output: str = ""
    checked_at: int | None = None
    consecutive_failures: int = 0


_decode_record = msgspec.json.Decoder(ServiceRecord).decode
_decode_check = msgspec.json.Decoder(InstanceCheck).decode
_encode = msgspec.json.Encoder().encode


class InvalidService(InvalidInput):
    """A service body breaks the record's rules; ``problems`` lists each as (path, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{p}: {m}" for p, m in problems))
        self.problems = problems


def aggregate(checks: list[InstanceCheck]) -> str:
    """One word for a service (Consul's rule of the worst, with `warning` for some passing):
    passing when every instance passes, critical when none does and one is critical."""
    states = {c.status for c in checks}
    if not states or states == {"unknown"}:
        return "unknown"
    if states == {"passing"}:
        return "passing"
    return "warning" if "passing" in states else "critical"


# -- parsing a body into a record --------------------------------------------
class _Parse:
    """Reads a body field by field, collecting every problem with its path."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def text(self, value: Any, path: str, *, limit: int = MAX_TEXT, empty: bool = False) -> str | None:
        if not isinstance(value, str):
            self.fail(path, "must be a string")
        elif len(value) > limit:
            self.fail(path, f"is {len(value)} characters, over the limit of {limit}")
        elif not value and not empty:
            self.fail(path, "must not be empty")
        elif any(c in value for c in "\r\n\x00"):
            self.fail(path, "must not contain CR, LF or NUL")
        else:
            return value
        return None

    def integer(self, value: Any, path: str, lo: int, hi: int) -> int | None:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            self.fail(path, f"must be an integer from {lo} to {hi}")
            return None
        return value

    def duration(self, body: Mapping[str, Any], field: str, path: str, lo: int, hi: int) -> int | None:
        """`field` as a duration ("10s", or ms) or `field_ms` in ms; None when neither is given."""
        given = [f for f in (field, f"{field}_ms") if body.get(f) is not None]
        if len(given) > 1:
            self.fail(f"{path}{field}", f"give {field} or {field}_ms, not both")
            return None
        if not given:
            return None
        value = body[given[0]]
        try:
            ms = parse_duration_ms(value) if given[0] == field else value
        except ValueError as exc:
            self.fail(f"{path}{field}", str(exc))
            return None
        if given[0] == field and not lo <= ms <= hi:
            self.fail(f"{path}{field}", f"is {ms} ms: must be from {lo} ms to {hi} ms")
            return None
        return self.integer(ms, f"{path}{given[0]}", lo, hi)

    def unknown(self, body: Mapping[str, Any], known: set[str], path: str) -> None:
        for key in sorted(set(body) - known, key=str):
            self.fail(f"{path}{key}", "is not a field of a service record")


def base_url(value: Any, path: str, parse: _Parse) -> str | None:
    url = parse.text(value, path, limit=MAX_URL)
    if url is None:
        return None
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        parse.fail(path, "has an invalid port")
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        parse.fail(path, "must be an absolute http(s) URL")
    elif parts.query or parts.fragment or "?" in url or "#" in url:
        parse.fail(path, "must have no query or fragment (endpoints add their own)")
    elif parts.username is not None or parts.password is not None:
        parse.fail(path, "must carry no credentials: put them in headers (with {{ secrets.NAME }})")
    else:
        return url.rstrip("/")
    return None


def _instances(value: Any, parse: _Parse) -> list[Instance]:
    if not isinstance(value, list) or not value:
        parse.fail("instances", "must be a non-empty list of instances ({\"url\": ...} or a URL)")
        return []
    if len(value) > MAX_INSTANCES:
        parse.fail("instances", f"has {len(value)} instances, over the limit of {MAX_INSTANCES}")
        return []
    out: list[Instance] = []
    for i, item in enumerate(value):
        path = f"instances[{i}]"
        raw = {"url": item} if isinstance(item, str) else item
        if not isinstance(raw, dict):
            parse.fail(path, "must be a URL or an object with url and weight")
            continue
        parse.unknown(raw, {"url", "weight"}, path + ".")
        url = base_url(raw.get("url"), f"{path}.url", parse)
        weight = parse.integer(raw.get("weight", 1), f"{path}.weight", 1, MAX_WEIGHT)
        if url is not None and any(o.url == url for o in out):
            parse.fail(f"{path}.url", f"{url!r} is listed twice")
        elif url is not None and weight is not None:
            out.append(Instance(url=url, weight=weight))
    return out


def _health(value: Any, parse: _Parse) -> HealthCheck:
    if value is None:
        return HealthCheck()
    if not isinstance(value, dict):
        parse.fail("health", "must be an object (path, interval, timeout, failures_before_critical)")
        return HealthCheck()
    parse.unknown(value, {"path", "interval", "interval_ms", "timeout", "timeout_ms", "failures_before_critical"},
                  "health.")
    default = HealthCheck()
    path = parse.text(value.get("path", default.path), "health.path", limit=1024)
    if path is not None and (not path.startswith("/") or "#" in path):
        parse.fail("health.path", "must start with / and have no fragment")
    interval = parse.duration(value, "interval", "health.", MIN_INTERVAL_MS, MAX_INTERVAL_MS)
    timeout = parse.duration(value, "timeout", "health.", 1, MAX_CHECK_TIMEOUT_MS)
    failures = parse.integer(value.get("failures_before_critical", default.failures_before_critical),
                             "health.failures_before_critical", 1, 100)
    return HealthCheck(path=path or default.path, interval_ms=interval or default.interval_ms,
                       timeout_ms=timeout or default.timeout_ms,
                       failures_before_critical=failures or default.failures_before_critical)


def _strings(value: Any, path: str, parse: _Parse, *, keys: re.Pattern[str] | None = None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        parse.fail(path, "must be an object of strings")
        return {}
    if len(value) > MAX_ITEMS:
        parse.fail(path, f"has {len(value)} entries, over the limit of {MAX_ITEMS}")
        return {}
    out: dict[str, str] = {}
    for key, item in value.items():
        if keys is not None and not keys.match(str(key)):
            parse.fail(f"{path}.{key}", "is not a valid header name")
        elif not 1 <= len(str(key)) <= 100:
            parse.fail(f"{path}.{key}", "a key must be 1-100 characters")
        elif (checked := parse.text(item, f"{path}.{key}", empty=True)) is not None:
            out[str(key)] = checked
    return out


def _tags(value: Any, parse: _Parse) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        parse.fail("tags", f"must be a list of at most {MAX_ITEMS} strings")
        return []
    tags = [t for i, v in enumerate(value) if (t := parse.text(v, f"tags[{i}]", limit=100)) is not None]
    return sorted(set(tags))


def _tls(value: Any, parse: _Parse) -> Tls | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        parse.fail("tls", "must be an object (ca_bundle, client_cert, client_key: file paths)")
        return None
    parse.unknown(value, {"ca_bundle", "client_cert", "client_key"}, "tls.")
    files = {k: parse.text(value[k], f"tls.{k}", limit=1024) if value.get(k) is not None else None
             for k in ("ca_bundle", "client_cert", "client_key")}
    if files["client_key"] and not files["client_cert"]:
        parse.fail("tls.client_key", "needs tls.client_cert")
    tls = Tls(**files)
    return None if tls == Tls() else tls


FIELDS = {"id", "name", "instances", "health", "timeout", "timeout_ms", "headers", "tags", "metadata", "tls"}


def parse_service(body: Any, *, service_id: str, created_at: int, now_ms: int,
                  name: str | None = None) -> ServiceRecord:
    """A body (API, CLI) as a record; InvalidService naming every problem. `name`: the
    current one, which an update's body may leave out."""
    if not isinstance(body, dict):
        raise InvalidService([("", "the body must be a JSON object")])
    parse = _Parse()
    parse.unknown(body, FIELDS, "")
    if body.get("id") is not None and body["id"] != service_id:
        parse.fail("id", f"is {body['id']!r}, but this is service {service_id}")
    given = body.get("name", name)
    if not isinstance(given, str) or not NAME.match(given):
        parse.fail("name", "must be 1-100 of a-z 0-9 . _ -, starting with a letter or digit")
    elif _UUID.match(given):
        parse.fail("name", "must not look like a UUID (ids are UUIDs)")
    instances = _instances(body.get("instances"), parse)
    record = ServiceRecord(
        id=service_id, name=given if isinstance(given, str) else "", instances=instances,
        health=_health(body.get("health"), parse),
        timeout_ms=parse.duration(body, "timeout", "", 1, MAX_CALL_TIMEOUT_MS),
        headers=_strings(body.get("headers"), "headers", parse, keys=_TOKEN),
        tags=_tags(body.get("tags"), parse), metadata=_strings(body.get("metadata"), "metadata", parse),
        tls=_tls(body.get("tls"), parse), created_at=created_at, updated_at=now_ms)
    if parse.problems:
        raise InvalidService(parse.problems)
    return record


def _decode_checks(raw: Mapping[Any, Any]) -> dict[str, InstanceCheck]:
    out = {}
    for url, check in raw.items():
        try:
            out[text(url)] = _decode_check(check)
        except msgspec.DecodeError:
            out[text(url)] = InstanceCheck(url=text(url), output="the stored check does not decode")
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- the registry in Redis --------------------------------------------------------
@translate_methods
class ServiceRegistry:
    """Records, names, checks and the version counter of one deployment's services."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis, self.keys = redis, keys
        self._scripts = ScriptRunner(redis)
        self._scripts.scripts.update({n: Script(n) for n in ("service_put", "service_remove")})

    async def version(self) -> int:
        found = await self.redis.get(self.keys.service_version)
        return 0 if found is None else int(found)

    async def all(self) -> list[ServiceRecord]:
        """Every record, by name; one that does not decode is logged and left out."""
        out = []
        for sid, raw in (await self.redis.hgetall(self.keys.service_records)).items():
            try:
                out.append(_decode_record(raw))
            except msgspec.DecodeError as exc:
                log.error("service record %s in %s does not decode, left out: %s", text(sid),
                          self.keys.service_records, exc)
        return sorted(out, key=lambda r: r.name)

    async def _raw(self, id_or_name: str) -> bytes | None:
        raw = await self.redis.hget(self.keys.service_records, id_or_name)
        if raw is None and NAME.match(id_or_name):
            sid = await self.redis.hget(self.keys.service_names, id_or_name)
            if sid is not None:
                raw = await self.redis.hget(self.keys.service_records, sid)
        return None if raw is None else raw if isinstance(raw, bytes) else str(raw).encode()

    async def get(self, id_or_name: str) -> ServiceRecord | None:
        raw = await self._raw(id_or_name)
        return None if raw is None else self._decoded(raw, id_or_name)

    @staticmethod
    def _decoded(raw: bytes, which: str) -> ServiceRecord:
        try:
            return _decode_record(raw)
        except msgspec.DecodeError as exc:
            raise InvariantBroken(f"the record of service {which!r} in Redis does not decode: {exc}") from None

    async def register(self, body: dict[str, Any], *, now_ms: int | None = None) -> ServiceRecord:
        """A new service; Refused when its name is taken (the API's 409)."""
        now = _now_ms() if now_ms is None else now_ms
        record = parse_service({k: v for k, v in body.items() if k != "id"}, service_id=str(uuid.uuid4()),
                               created_at=now, now_ms=now)
        await self._put(record, expected=b"", old_name="")
        return record

    async def update(self, id_or_name: str, body: dict[str, Any], *, now_ms: int | None = None) -> ServiceRecord:
        """Replace a record (PUT): what the body leaves out takes its default; the name may be
        left out (kept) or changed; id and created_at stay. NotFound when there is none."""
        for _ in range(5):
            raw = await self._raw(id_or_name)
            if raw is None:
                raise NotFound(f"no service {id_or_name!r} is registered")
            current = self._decoded(raw, id_or_name)
            now = _now_ms() if now_ms is None else now_ms
            record = parse_service(body, service_id=current.id, created_at=current.created_at,
                                   now_ms=max(now, current.updated_at), name=current.name)
            if await self._put(record, expected=raw, old_name=current.name):
                return record
        raise Refused(f"service {id_or_name!r} kept changing while it was updated; try again")

    async def _put(self, record: ServiceRecord, *, expected: bytes, old_name: str) -> bool:
        keys = [self.keys.service_records, self.keys.service_names, self.keys.service_version,
                self.keys.service_checks(record.id)]
        args = [record.id, record.name, _encode(record), expected, old_name, *(i.url for i in record.instances)]
        status, detail = (text(v) for v in await self._scripts.run("service_put", keys, args))
        if status == "taken":
            raise Refused(f"a service named {record.name!r} is already registered (id {detail}); "
                          "update it with PUT /services/{service_id} or `foldflow services register`")
        if status == "missing":
            raise NotFound(f"service {record.id} was removed while it was updated")
        return status == "ok"

    async def remove(self, id_or_name: str) -> bool:
        record = await self.get(id_or_name)
        if record is None:
            return False
        keys = [self.keys.service_records, self.keys.service_names, self.keys.service_version,
                self.keys.service_checks(record.id), self.keys.service_checking(record.id)]
        return bool(await self._scripts.run("service_remove", keys, [record.id, record.name]))

    async def checks(self, service_id: str) -> dict[str, InstanceCheck]:
        """Each instance's last check by url (instances never checked are not in it)."""
        return _decode_checks(await self.redis.hgetall(self.keys.service_checks(service_id)))

    async def checks_of(self, service_ids: Sequence[str]) -> dict[str, dict[str, InstanceCheck]]:
        """``checks`` of many services in one round trip (the keys share one hash tag)."""
        if not service_ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for sid in service_ids:
            pipe.hgetall(self.keys.service_checks(sid))
        return {sid: _decode_checks(raw) for sid, raw in zip(service_ids, await pipe.execute())}

    async def record_checks(self, service_id: str, checks: dict[str, InstanceCheck]) -> None:
        if not checks:
            return
        key = self.keys.service_checks(service_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping={url: _encode(c) for url, c in checks.items()})
        pipe.hexists(self.keys.service_records, service_id)
        _, exists = await pipe.execute()
        if not exists:
            # Removed while it was being checked: the removal's DEL ran before this HSET.
            await self.redis.delete(key)

    async def claim_check(self, service_id: str, interval_ms: int) -> bool:
        """True: this process checks the service now; nobody else will until interval_ms passes."""
        return bool(await self.redis.set(self.keys.service_checking(service_id), "1", nx=True,
                                         px=max(1, interval_ms)))


__all__ = ["HealthCheck", "Instance", "InstanceCheck", "InvalidService", "ServiceRecord", "ServiceRegistry", "Tls",
           "aggregate", "parse_service"]
