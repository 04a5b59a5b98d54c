"""The HTTP executor against real aiohttp services on loopback ports, with the
registry on fakeredis: every failure class of issue 13, one call each (the retry
loop around them is the engine's, run end to end in tests/e2e/http)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterator
from typing import Any

import fakeredis
import orjson
import pytest

from engine.config import Settings
from engine.core.model import Task
from engine.outbound.safety import AddressPolicy
from engine.outbound.settings import HttpSettings, http_settings
from engine.store.keys import Keys
from engine.store.services import InstanceCheck, ServiceRegistry
from engine.workers.http.executor import HttpExecutor
from engine.workers.http.outcome import retry_after_ms
from engine.workers.http.secrets import Secrets
from engine.workers.http.targets import ServiceDirectory
from tests.support.http_services import FakeService, ServiceFarm

BASE = {"step": "s", "attempt": 1, "task_id": "i-1:s:1"}


@pytest.fixture(scope="module")
def farm() -> Iterator[ServiceFarm]:
    with ServiceFarm() as f:
        yield f


@pytest.fixture
def svc(farm: ServiceFarm, request: pytest.FixtureRequest) -> FakeService:
    return farm.add(f"svc-{request.node.name[:40]}")


class Rig:
    """An executor on its own event loop; the tests drive it synchronously (the suite has no asyncio plugin)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, executor: HttpExecutor, registry: ServiceRegistry) -> None:
        self.loop, self.executor, self.registry = loop, executor, registry

    def run(self, coro: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def call(self, **fields: Any) -> tuple[str, dict[str, Any]]:
        task = Task(**{"task_id": "i-1:s:1", "instance_id": "i-1", "step": "s", "attempt": 1, "reply_to": "x",
                       "service": "svc", "endpoint": "/do", "input": {"a": 1}, "context": {"c": 2},
                       "idempotency_key": "ff:i-1:s:1", **fields})
        command, data, _ = self.run(self.executor.call(task, dict(BASE)))
        return command, data

    def refresh(self) -> None:
        self.run(self.executor.directory.refresh())


def make_rig(env: dict[str, str] | None = None, http: HttpSettings | None = None,
             settings: Settings | None = None) -> Rig:
    loop = asyncio.new_event_loop()
    registry = ServiceRegistry(fakeredis.FakeAsyncRedis(), Keys("t", 2))
    env = {"FOLDFLOW_SECRET_API_TOKEN": "s3cr3t-token-value"} if env is None else env
    executor = HttpExecutor(settings or Settings(max_payload_bytes=10_000), http or HttpSettings(timeout_ms=2_000),
                            ServiceDirectory(registry, env), Secrets(env))
    rig = Rig(loop, executor, registry)
    rig.run(executor.open())
    return rig


@pytest.fixture
def rig() -> Iterator[Rig]:
    made = make_rig()
    yield made
    made.run(made.executor.close())
    made.loop.close()


def register(rig: Rig, *urls: str, **extra: Any) -> None:
    rig.run(rig.registry.register({"name": "svc", "instances": [{"url": u} for u in urls], **extra}))
    rig.refresh()


def test_2xx_completes_with_the_json_body_and_records_the_call(rig: Rig, svc: FakeService) -> None:
    svc.route("POST", "/do", lambda s: (201, {"id": "u-1"}, {"X-Trace": "t"}))
    register(rig, svc.url)
    command, data = rig.call()
    assert command == "step.completed" and data["output"] == {"id": "u-1"}
    call = data["call"]
    assert call["method"] == "POST" and call["url"] == svc.url + "/do" and call["status"] == 201
    assert call["headers"]["X-Trace"] == "t" and call["duration_ms"] > 0
    seen = svc.requests("POST", "/do")[0]
    assert seen.body == {"a": 1}
    assert seen.headers["Idempotency-Key"] == "ff:i-1:s:1" and seen.headers["X-Correlation-ID"] == "i-1"


def test_text_body_is_the_output_and_no_payload_sends_input_and_context(rig: Rig, svc: FakeService) -> None:
    svc.route("POST", "/do", lambda s: (200, "plain words"))
    register(rig, svc.url)
    command, data = rig.call(input={})
    assert command == "step.completed" and data["output"] == "plain words"
    assert svc.requests("POST", "/do")[0].body == {"input": {}, "context": {"c": 2}}


def test_get_without_payload_sends_no_body(rig: Rig, svc: FakeService) -> None:
    svc.route("GET", "/do", lambda s: (200, {"ok": True}))
    register(rig, svc.url)
    command, _ = rig.call(input={}, method="get")
    assert command == "step.completed" and svc.requests("GET", "/do")[0].body is None


@pytest.mark.parametrize("status", [408, 425, 429, 500, 503])
def test_retryable_statuses(rig: Rig, svc: FakeService, status: int) -> None:
    svc.route("POST", "/do", lambda s: (status, {"e": "busy"}, {"Retry-After": "3"}))
    register(rig, svc.url)
    command, data = rig.call()
    error = data["error"]
    assert command == "step.failed" and error["retryable"] is True and error["status"] == status
    assert error["retry_after_ms"] == 3000 and f"HTTP {status}" in error["message"]


def test_404_is_not_retryable_and_says_status_and_body(rig: Rig, svc: FakeService) -> None:
    svc.route("POST", "/do", lambda s: (404, {"detail": "no such task t-9"}))
    register(rig, svc.url)
    command, data = rig.call()
    assert command == "step.failed" and data["error"]["retryable"] is False
    assert "HTTP 404" in data["error"]["message"] and "no such task t-9" in data["error"]["message"]


def test_step_overrides_retry_and_success_statuses(rig: Rig, svc: FakeService) -> None:
    svc.route("POST", "/do", lambda s: (409, {"dup": True}))
    register(rig, svc.url)
    command, data = rig.call(http={"success_on_status": [409]})
    assert command == "step.completed" and data["output"] == {"dup": True}
    command, data = rig.call(http={"retry_on_status": [409]})
    assert command == "step.failed" and data["error"]["retryable"] is True


def test_timeout_is_retryable(rig: Rig, svc: FakeService) -> None:
    async def slow(seen: Any) -> tuple[int, Any]:
        await asyncio.sleep(1.0)
        return 200, {}
    svc.route("POST", "/do", slow)
    register(rig, svc.url)
    command, data = rig.call(http={"timeout_ms": 150})
    assert command == "step.failed" and data["error"]["retryable"] is True
    assert "no answer within 150 ms" in data["error"]["message"]


def test_connection_refused_is_retryable(rig: Rig, farm: ServiceFarm) -> None:
    down = farm.add("down-svc")
    farm.stop("down-svc")
    register(rig, down.url)
    command, data = rig.call()
    assert command == "step.failed" and data["error"]["retryable"] is True
    assert "cannot connect" in data["error"]["message"]


def test_body_over_the_limit_fails_for_good(rig: Rig, svc: FakeService) -> None:
    svc.route("POST", "/do", lambda s: (200, b"x" * 20_000))
    register(rig, svc.url)
    command, data = rig.call()
    assert command == "step.failed" and data["error"]["retryable"] is False
    assert "over the limit of 10000" in data["error"]["message"]


def test_unhealthy_instance_is_skipped_and_none_healthy_is_retryable(rig: Rig, farm: ServiceFarm) -> None:
    good, bad = farm.add("good-svc"), farm.add("bad-svc")
    good.route("POST", "/do", lambda s: (200, {"who": "good"}))
    bad.route("POST", "/do", lambda s: (200, {"who": "bad"}))
    register(rig, good.url, bad.url)
    record = rig.run(rig.registry.get("svc"))
    assert record is not None
    rig.run(rig.registry.record_checks(record.id, {
        bad.url: InstanceCheck(url=bad.url, status="critical", output="HTTP 500", checked_at=1, consecutive_failures=3)}))
    rig.refresh()
    outputs = [(rig.call())[1]["output"]["who"] for _ in range(4)]
    assert outputs == ["good"] * 4 and not bad.requests()
    rig.run(rig.registry.record_checks(record.id, {
        good.url: InstanceCheck(url=good.url, status="critical", output="HTTP 500", checked_at=1, consecutive_failures=3)}))
    rig.refresh()
    command, data = rig.call()
    assert command == "step.failed" and data["error"]["retryable"] is True
    assert "no healthy instance of service 'svc'" in data["error"]["message"]


def test_healthy_instances_take_turns(rig: Rig, farm: ServiceFarm) -> None:
    a, b = farm.add("turn-a"), farm.add("turn-b")
    for s, who in ((a, "a"), (b, "b")):
        s.route("POST", "/do", lambda seen, who=who: (200, {"who": who}))
    register(rig, a.url, b.url)
    outputs = [(rig.call())[1]["output"]["who"] for _ in range(4)]
    assert sorted(outputs) == ["a", "a", "b", "b"]


def test_environment_url_resolves_when_the_registry_does_not(svc: FakeService) -> None:
    svc.route("POST", "/tasks/t-1/prepare", lambda s: (200, {"prepared": True}))
    rig = make_rig({"PLANNING_SYSTEM_URL": svc.url})
    try:
        rig.refresh()
        command, data = rig.call(service="planning-system", endpoint="/tasks/t-1/prepare", input={})
        directory = rig.executor.directory
        assert directory.source("planning-system") == "env" and directory.source("nobody") is None
    finally:
        rig.run(rig.executor.close())
        rig.loop.close()
    assert command == "step.completed" and data["output"] == {"prepared": True}


def test_unresolvable_service_is_retryable_and_names_every_way(rig: Rig) -> None:
    command, data = rig.call(service="ghost-service")
    assert command == "step.failed" and data["error"]["retryable"] is True
    assert data["error"]["message"] == ("service 'ghost-service' resolves to nothing: no handler, no registered "
                                        "service, no GHOST_SERVICE_URL")


def test_redirects_are_not_followed_unless_allowed_then_at_most_three(rig: Rig, svc: FakeService) -> None:
    svc.route("POST", "/do", lambda s: (302, "", {"Location": "/r1"}))
    svc.route("GET", "/r1", lambda s: (200, {"landed": True}))
    svc.route("POST", "/loop", lambda s: (307, "", {"Location": "/loop"}))
    register(rig, svc.url)
    command, data = rig.call()
    assert command == "step.failed" and data["error"]["retryable"] is False and "redirects are not followed" in data["error"]["message"]
    command, data = rig.call(http={"follow_redirects": True})
    assert command == "step.completed" and data["output"] == {"landed": True}
    command, data = rig.call(endpoint="/loop", http={"follow_redirects": True})
    assert command == "step.failed" and "more than 3 redirects" in data["error"]["message"]
    assert len(svc.requests("POST", "/loop")) == 4


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "http://[fe80::1]/x",
                                 "http://metadata.google.internal/computeMetadata/v1/"])
def test_metadata_and_link_local_addresses_are_refused(rig: Rig, url: str) -> None:
    command, data = rig.call(endpoint=None, http={"url": url})
    assert command == "step.failed" and data["error"]["retryable"] is False
    assert "FOLDFLOW_HTTP_ALLOW" in data["error"]["message"] or "metadata" in data["error"]["message"]


def test_a_denied_range_is_refused_and_allow_reopens_it(svc: FakeService) -> None:
    svc.route("POST", "/do", lambda s: (200, {}))
    for allow, expected in (("", "step.failed"), ("127.0.0.0/8", "step.completed")):
        rig = make_rig({}, http_settings({"FOLDFLOW_HTTP_DENY": "127.0.0.0/8", "FOLDFLOW_HTTP_ALLOW": allow}))
        try:
            command, data = rig.call(service="x", http={"url": svc.url.replace("127.0.0.1", "localhost")})
        finally:
            rig.run(rig.executor.close())
            rig.loop.close()
        assert command == expected, data


def test_secrets_are_sent_but_never_recorded(rig: Rig, svc: FakeService) -> None:
    svc.route("POST", "/do/.*", lambda s: (500, {"echo": s.headers.get("Authorization")}))
    register(rig, svc.url, headers={"Authorization": "Bearer {{ secrets.api_token }}"})
    command, data = rig.call(endpoint="/do/{{ secrets.api_token }}",
                                   input={"token": "{{ secrets.api_token }}"},
                                   http={"headers": {"X-Key": "{{ secrets.api_token }}"}})
    seen = svc.requests("POST")[0]
    assert seen.headers["Authorization"] == "Bearer s3cr3t-token-value" and seen.headers["X-Key"] == "s3cr3t-token-value"
    assert seen.body == {"token": "s3cr3t-token-value"} and seen.path.endswith("s3cr3t-token-value")
    assert command == "step.failed"
    assert b"s3cr3t-token-value" not in orjson.dumps(data)
    assert "{{ secrets.api_token }}" in data["call"]["url"]


def test_a_missing_secret_fails_for_good_naming_it(rig: Rig, svc: FakeService) -> None:
    register(rig, svc.url)
    command, data = rig.call(http={"headers": {"X-Key": "{{ secrets.nope }}"}})
    assert command == "step.failed" and data["error"]["retryable"] is False
    assert "secret 'nope' is not set" in data["error"]["message"] and not svc.requests()


def test_secrets_from_a_mounted_directory(tmp_path: Any) -> None:
    (tmp_path / "db_password").write_text("from-a-file\n")
    secrets = Secrets({}, str(tmp_path))
    assert secrets.fill("p={{ secrets.db_password }}") == "p=from-a-file"
    assert secrets.redact("echo from-a-file") == "echo {{ secrets.db_password }}"


def test_retry_after_as_seconds_or_date() -> None:
    now = time.time()
    assert retry_after_ms("7", now) == 7000
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 60))
    assert 58_000 <= (retry_after_ms(date, now) or 0) <= 61_000
    assert retry_after_ms("soon", now) is None and retry_after_ms(None, now) is None


def test_policy_refuses_mapped_and_allows_configured() -> None:
    policy = AddressPolicy()
    assert policy.refusal("::ffff:169.254.169.254") is not None
    assert policy.refusal("10.0.0.1") is None
    assert AddressPolicy(allow=list(http_settings({"FOLDFLOW_HTTP_ALLOW": "169.254.0.0/16"}).networks()[0])
                         ).refusal("169.254.169.254") is None


def test_an_idle_reader_yields_to_the_loop() -> None:
    """An executor with nothing to serve yet reads no streams: its read must still wait, or its
    loop spins a core and starves the registry refresh and the signal handlers."""
    from engine.runtime.consume import GroupReader

    async def main() -> bool:
        reader = GroupReader(fakeredis.FakeAsyncRedis(), "activities", "c", [])
        ran = asyncio.Event()

        async def other() -> None:
            ran.set()

        task = asyncio.create_task(other())
        assert await reader.read(10, 5) == []
        yielded = ran.is_set()  # `other` can only have run if the read gave the loop a turn
        await task
        return yielded

    assert asyncio.run(main())


def test_tls_is_verified_with_the_services_ca_bundle_and_client_certificate(tmp_path: Any, farm: ServiceFarm) -> None:
    import ssl

    from tests.e2e.test_security import make_certificates, make_client_certificate
    from tests.support.tools import require_tool

    require_tool("openssl", "the TLS test makes its own CA and certificates")
    ca, cert, key = make_certificates(tmp_path)
    client_cert, client_key = make_client_certificate(tmp_path, tmp_path / "client")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
    server.load_cert_chain(str(cert), str(key))
    server.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the service wants the caller's certificate
    svc = farm.add("tls-service", tls=server)
    svc.route("POST", "/do", lambda s: (200, {"over": "tls"}))
    rig = make_rig()
    try:
        register(rig, svc.url)  # no CA bundle: the service's certificate is not trusted
        command, data = rig.call()
        assert command == "step.failed" and data["error"]["retryable"] is False and "TLS" in data["error"]["message"]
        record = rig.run(rig.registry.get("svc"))
        assert record is not None
        rig.run(rig.registry.update("svc", {"instances": [svc.url], "tls": {
            "ca_bundle": str(ca), "client_cert": str(client_cert), "client_key": str(client_key)}}))
        rig.refresh()
        command, data = rig.call()
        assert command == "step.completed" and data["output"] == {"over": "tls"}, data
    finally:
        rig.run(rig.executor.close())
        rig.loop.close()
