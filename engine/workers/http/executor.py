"""The HTTP executor: a task of a service that resolves through the registry, the
environment or the step's own ``url`` becomes one HTTP call, and the call's
outcome becomes the step's result.

One aiohttp session per process (a pool with a cap per host, keep-alive). Every
call carries an ``Idempotency-Key`` that is the same for each delivery and retry of
one run of the step, so the at-least-once delivery of tasks is safe for services
that honour it. What the call did (method, URL, status, headers, time, the start
of the body) goes into the result as ``call``, with secrets redacted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import aiohttp
from yarl import URL

from engine.config import Settings
from engine.core.model import Task
from engine.outbound.safety import AddressPolicy, AddressRefused, GuardedResolver, refused_in
from engine.outbound.settings import HttpSettings
from engine.runtime import tracing
from engine.workers.http import outcome
from engine.workers.http.request import BadRequest, Request, build
from engine.workers.http.secrets import MissingSecret, Secrets
from engine.workers.http.targets import ServiceDirectory, Target

log = logging.getLogger("foldflow.http")

CALL_BODY_CHARS = 2048  # the start of a response body kept in the step's history (streams.md)
CALL_HEADERS = 32
MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_UNKEPT = frozenset({"connection", "keep-alive", "transfer-encoding", "date", "server"})


class Failure(Exception):
    def __init__(self, message: str, retryable: bool, **extra: Any) -> None:
        super().__init__(message)
        self.error = {"message": message, "retryable": retryable, "kind": "http", **extra}


class Timing(NamedTuple):
    sent_at: float  # perf_counter when the request went out (its last hop)
    response_at: float  # ... when the answer was read


class HttpExecutor:
    def __init__(self, settings: Settings, http: HttpSettings, directory: ServiceDirectory,
                 secrets: Secrets | None = None) -> None:
        self.settings = settings
        self.http = http
        self.directory = directory
        self.secrets = secrets or Secrets(directory=http.secrets_dir)
        self.policy = AddressPolicy(*http.networks())
        self.session: aiohttp.ClientSession | None = None
        self.calls = 0
        self.refused = 0

    async def open(self) -> None:
        if self.session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=self.http.max_per_host, keepalive_timeout=30,
                                             resolver=GuardedResolver(self.policy), ttl_dns_cache=10)
            self.session = aiohttp.ClientSession(connector=connector, auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar())

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def serves(self, service: str) -> bool:
        return self.directory.source(service) is not None

    async def call(self, task: Task, base: dict[str, Any]) -> tuple[str, dict[str, Any], Timing | None]:
        """The result command and its data for one task, and when its request went out."""
        begun = time.perf_counter()
        meta: dict[str, Any] = {"method": (task.method or "POST").upper()}
        timing: Timing | None = None
        try:
            target = self._target(task)
            request = build(task, target.base_url or "", target.headers, self.secrets)
            meta.update(method=request.method, url=request.shown_url)
            timeout_ms = self._timeout_ms(task, target)
            status, reason, headers, body, sent_at = await self._traced(request, target, timeout_ms)
            timing = Timing(sent_at, time.perf_counter())
        except Failure as failure:
            return "step.failed", self._result(base, {"error": self._clean(failure.error)}, meta, begun), timing
        except (BadRequest, MissingSecret, AddressRefused) as exc:
            self.refused += isinstance(exc, AddressRefused)
            error = {"message": str(exc), "retryable": False, "kind": "http"}
            return "step.failed", self._result(base, {"error": self._clean(error)}, meta, begun), timing
        self.calls += 1
        http: Mapping[str, Any] = task.http or {}
        text = body.decode("utf-8", "replace")
        meta.update(status=status, headers=_headers(headers, self.secrets),
                    body=self.secrets.redact(text[:CALL_BODY_CHARS]))
        if outcome.succeeded(status, _statuses(http, "success_on_status")):
            output = self.secrets.redact_json(outcome.parsed_body(body, headers.get("Content-Type")))
            return "step.completed", self._result(base, {"output": {} if output is None else output}, meta, begun), timing
        retry = outcome.retryable(status, _statuses(http, "retry_on_status"))
        after = outcome.retry_after_ms(headers.get("Retry-After"), time.time())
        error = outcome.status_error(status, reason, text, retry, request.method, request.shown_url, after)
        return "step.failed", self._result(base, {"error": self._clean(error)}, meta, begun), timing

    def _target(self, task: Task) -> Target:
        url = (task.http or {}).get("url")
        if isinstance(url, str) and url:
            known = self.directory.target(task.service) if self.directory.source(task.service) == "registry" else None
            headers = known.headers if known is not None else {}
            return Target(task.service, "url", url, headers, known.timeout_ms if known else None,
                          known.ssl if known else True)
        target = self.directory.target(task.service)
        if target is None:
            raise Failure(self.directory.nothing_for(task.service), True)
        if target.base_url is None:
            raise Failure(target.why or f"no healthy instance of service {task.service!r}", True)
        return target

    def _timeout_ms(self, task: Task, target: Target) -> int:
        step = (task.http or {}).get("timeout_ms")
        if isinstance(step, int) and step > 0:
            return step
        return target.timeout_ms or self.http.timeout_ms

    async def _traced(self, request: Request, target: Target, timeout_ms: int
                      ) -> tuple[int, str, Mapping[str, str], bytes, float]:
        """_send, inside a CLIENT span when tracing is on: the request carries the span's traceparent."""
        if not tracing.enabled:
            return await self._send(request, target, timeout_ms)
        with tracing.http_call(request.method, request.shown_url) as span:
            carried = request._replace(headers={**request.headers, "traceparent": span.traceparent},
                                       own_headers=request.own_headers | {"traceparent"})
            answer = await self._send(carried, target, timeout_ms)
            span.answered(answer[0])
            return answer

    async def _send(self, request: Request, target: Target, timeout_ms: int
                    ) -> tuple[int, str, Mapping[str, str], bytes, float]:
        """Send it (following redirects when allowed) and read the answer; a Failure when it could not."""
        what = f"{request.method} {request.shown_url}"
        try:
            if not request.follow_redirects:  # one request: aiohttp's own total timeout bounds it
                return await self._hops(request, target, timeout_ms)
            async with asyncio.timeout(timeout_ms / 1000):  # the hops share one deadline
                return await self._hops(request, target, timeout_ms)
        except Failure:
            raise
        except aiohttp.ConnectionTimeoutError:
            raise Failure(f"{what}: could not connect within {min(self.http.connect_timeout_ms, timeout_ms)} ms",
                          True) from None
        except TimeoutError:
            raise Failure(f"{what}: no answer within {timeout_ms} ms", True) from None
        except aiohttp.ClientSSLError as exc:
            raise Failure(f"{what}: TLS failed: {exc}", False) from None
        except (aiohttp.ClientError, OSError) as exc:
            refused = refused_in(exc)
            if refused is not None:
                raise refused from None
            if isinstance(exc, aiohttp.ClientConnectorError):
                raise Failure(f"{what}: cannot connect: {exc.os_error}", True) from None
            raise Failure(f"{what}: {type(exc).__name__}: {exc}", True) from None

    async def _hops(self, request: Request, target: Target, timeout_ms: int
                    ) -> tuple[int, str, Mapping[str, str], bytes, float]:
        assert self.session is not None, "open() the executor first"
        timeout = aiohttp.ClientTimeout(total=None if request.follow_redirects else timeout_ms / 1000,
                                        sock_connect=min(self.http.connect_timeout_ms, timeout_ms) / 1000)
        method, url, headers, body = request.method, URL(request.url), dict(request.headers), request.body
        origin = url.origin()
        for hop in range(MAX_REDIRECTS + 1):
            if url.scheme not in ("http", "https") or not url.host:
                raise Failure(f"redirected to {url.with_query(None)!s}, which is not an http(s) URL", False)
            self.policy.check_host(url.host)  # an IP literal skips the resolver
            sent_at = time.perf_counter()
            async with self.session.request(method, url, headers=headers, data=body, allow_redirects=False,
                                            ssl=target.ssl, timeout=timeout) as response:
                location = response.headers.get("Location")
                if not (request.follow_redirects and response.status in _REDIRECTS and location):
                    data = await _read(response, self.settings.max_payload_bytes)
                    return response.status, response.reason or "", response.headers, data, sent_at
                if hop == MAX_REDIRECTS:
                    raise Failure(f"{request.method} {request.shown_url}: more than {MAX_REDIRECTS} redirects", False)
                url = response.url.join(URL(location))
                if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                    method, body = "GET", None
                    headers.pop("Content-Type", None)
                if url.origin() != origin:  # the service's and step's headers stay with their origin
                    headers = {k: v for k, v in headers.items() if k.lower() in request.own_headers}
        raise AssertionError("unreachable: the last hop returns or raises")

    def _clean(self, error: dict[str, Any]) -> dict[str, Any]:
        error["message"] = self.secrets.redact(str(error["message"]))
        return error

    def _result(self, base: dict[str, Any], result: dict[str, Any], meta: dict[str, Any], begun: float) -> dict[str, Any]:
        meta["duration_ms"] = round((time.perf_counter() - begun) * 1000, 3)
        return {**base, **result, "call": meta}


async def _read(response: aiohttp.ClientResponse, limit: int) -> bytes:
    if response.content_length is not None and response.content_length > limit:
        raise Failure(f"the response body is {response.content_length} bytes, over the limit of {limit} "
                      "(FOLDFLOW_MAX_PAYLOAD_BYTES)", False)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(65_536):
        size += len(chunk)
        if size > limit:
            raise Failure(f"the response body is over the limit of {limit} bytes (FOLDFLOW_MAX_PAYLOAD_BYTES)", False)
        chunks.append(chunk)
    return b"".join(chunks)


def _statuses(http: Mapping[str, Any], key: str) -> frozenset[int]:
    found = http.get(key) or ()
    return frozenset(s for s in found if isinstance(s, int)) if isinstance(found, list) else frozenset()


def _headers(headers: Mapping[str, str], secrets: Secrets) -> dict[str, str]:
    """The response headers kept in the step's history: hop-by-hop ones and Date/Server left out."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        if name.lower() in _UNKEPT:
            continue
        out[str(name)] = secrets.redact(str(value)[:200])  # istr keys: orjson takes only str
        if len(out) == CALL_HEADERS:
            break
    return out
