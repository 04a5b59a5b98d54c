"""The web UI at /ui in headless Chromium, over a real deployment: the list shows
a run started over HTTP; the execution page shows each step and its attempts; a
step that completes while the page is open appears without a reload; a retry
from a step with an edited input works from the page; a 10,000-event history
opens and scrolls. Each page is saved as a screenshot: in docs/ui/ (the README's and
docs/ui.md's pictures) with FOLDFLOW_UI_SCREENSHOTS=1, else in a temporary folder, so
that a test run leaves the checkout as it was."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from playwright.sync_api import expect

from engine.core.codec import command_fields
from engine.store.connection import connect
from engine.store.keys import Keys
from tests.e2e.ui.conftest import SECRET, UiStack
from tests.support.api_stack import ApiStack
from tests.support.tools import EXAMPLES, ROOT

SHOTS = (ROOT / "docs" / "ui" if os.environ.get("FOLDFLOW_UI_SCREENSHOTS") == "1"
         else Path(tempfile.mkdtemp(prefix="foldflow-ui-")))
DEMO = "Agent Task Execution"
CHECK = {"name": "UI Check", "version": "1.0.0", "description": "a charge the UI retries with an edited amount",
         "definition": {"steps": [
             {"name": "prepare", "step_type": "service_call", "service": "ui-check", "endpoint": "/prepare",
              "sequence": 1},
             {"name": "charge", "step_type": "service_call", "service": "ui-check", "endpoint": "/charge",
              "sequence": 2, "input": {"amount": "${context.amount}"}, "retry_policy": {"max_attempts": 1}}]}}
CONTEXT = {"project_id": "p-ui", "task_id": "t-ui", "agent_id": "a-ui"}


def until(check: Callable[[], Any], timeout: float, what: str, ok: Callable[[Any], bool] = bool) -> Any:
    """Poll check() until ok(value): Playwright's sync API owns this thread's event loop, so
    tests.support.poll.eventually (asyncio.run) cannot run here. The timeout only stops a hang."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r} after {timeout} s")
        time.sleep(0.05)


def in_thread(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine on an event loop of its own thread (this one's belongs to Playwright)."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised below, in the test's thread
            out["error"] = exc

    worker = threading.Thread(target=target)
    worker.start()
    worker.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def api(stack: ApiStack) -> str:
    for body in (EXAMPLES.joinpath("agent-task-execution.json").read_bytes(), CHECK):
        kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        r = httpx.post(stack.url + "/workflows", headers={"Content-Type": "application/json"}, **kwargs)
        assert r.status_code in (200, 201), r.text
    return stack.url


def start(api: str, workflow: str, context: dict[str, Any], **extra: Any) -> str:
    iid = f"ui-{uuid.uuid4().hex[:10]}"
    r = httpx.post(api + "/executions", json={"workflow_id": workflow, "execution_id": iid, "context": context, **extra},
                   timeout=10)
    assert r.status_code in (200, 202), r.text
    return iid


def status_of(api: str, iid: str) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"{api}/executions/{iid}", timeout=10).json()
    return doc


def wait_status(api: str, iid: str, *statuses: str, current: str | None = None) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        doc = status_of(api, iid)
        ok = doc.get("status") in statuses and (current is None or current in doc.get("current_steps", []))
        return doc if ok else None
    return until(check, 20, f"{iid} {statuses} {current or ''}")  # type: ignore[no-any-return]


class Flood(threading.Thread):
    """Sends the signals on a thread (and loop) of its own; `error` is what stopped it, if anything."""

    def __init__(self, stack: ApiStack, iid: str, count: int) -> None:
        super().__init__(daemon=True)
        self.stack, self.iid, self.count = stack, iid, count
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(_signals(self.stack, self.iid, self.count))
        except BaseException as exc:  # reported by the test that needs the signals
            self.error = exc


@pytest.fixture(scope="module", autouse=True)
def long_history(api: str, stack: ApiStack) -> Iterator[Flood]:
    """An execution waiting for an event, sent 10,000 signals at the start of the module:
    the engine applies them while the other tests run (the test of it comes last)."""
    iid = start(api, DEMO, {**CONTEXT, "task_id": "t-long"}, correlation_id="c-ui-long")
    wait_status(api, iid, "running", current="execution_monitoring")
    flood = Flood(stack, iid, 10_000)
    flood.start()
    yield flood
    flood.join()


def test_the_list_shows_a_run_started_over_http_and_new_ones_live(api: str, page: Any) -> None:
    first = start(api, DEMO, {**CONTEXT, "task_id": "t-list"}, correlation_id="c-ui-list")
    wait_status(api, first, "running", current="execution_monitoring")
    page.goto(api + "/ui")
    row = page.locator(f'#executions-body tr[data-id="{first}"]')
    row.wait_for()
    assert "running" in row.inner_text() and DEMO in row.inner_text() and "c-ui-list" in row.inner_text()
    page.locator('#live-state[data-state="live"]').wait_for()
    second = start(api, DEMO, {**CONTEXT, "task_id": "t-list"}, correlation_id="c-ui-list")  # while the page is open: no reload
    page.locator(f'#executions-body tr[data-id="{second}"]').wait_for()
    page.select_option('select[name="status"]', "running")
    page.fill('input[name="correlation_id"]', "c-ui-list")
    page.click('form.filters button[type="submit"]')
    # Locators, not wait_for_function: its polling evaluates a string in the page, which the UI's
    # Content-Security-Policy (script-src 'self', no unsafe-eval) refuses whenever the first check fails.
    expect(page.locator("#executions-body tr[data-id]")).to_have_count(2, timeout=30_000)
    assert "correlation_id=c-ui-list" in page.url
    shot(page, "executions")


def test_the_execution_page_shows_steps_attempts_and_a_step_completing_live(api: str, page: Any) -> None:
    iid = start(api, DEMO, {**CONTEXT, "flaky": True}, correlation_id="c-ui-live")
    wait_status(api, iid, "running", current="execution_monitoring")
    page.goto(f"{api}/ui/executions/{iid}")
    step = page.locator("#step-agent_assignment")
    step.locator("tr.attempt").nth(1).wait_for()  # the simulated failure, then the retry
    assert step.locator("tr.attempt").count() == 2
    assert "failed" in step.locator("tr.attempt").nth(0).inner_text()
    assert "completed" in step.locator("tr.attempt").nth(1).inner_text()
    assert page.locator('#graph g.node[data-step="task_preparation"]').get_attribute("class").count("st-completed")
    assert page.locator('#timeline rect.bar[data-step="agent_assignment"]').count() == 2
    assert page.locator('#graph g.node[data-step="execution_monitoring"].st-waiting').count() == 1
    page.locator('#live-state[data-state="live"]').wait_for()
    page.evaluate("window.__same_page = true")
    r = httpx.post(api + "/events", json={"type": "agent.task_completed", "correlation_id": "c-ui-live",
                                           "data": {"task_id": "t-ui", "agent_id": "a-ui"}})
    assert r.status_code == 202, r.text
    page.locator('#graph g.node[data-step="result_processing"].st-completed').wait_for()
    page.locator("#execution-header .badge.st-completed").wait_for()
    assert page.evaluate("window.__same_page") is True  # updated in place, not reloaded
    assert page.locator("#step-execution_monitoring tr.attempt .badge.st-completed").count() == 1
    page.locator('#history .hrow[data-version="1"]').wait_for()
    page.check("#history-failures")
    page.locator('#history .hrow.failure').first.wait_for()
    assert "step_failed" in page.locator("#history .hrow.failure").first.inner_text()
    page.locator("#history .hrow.failure").first.click()
    assert "agent pool busy" in page.locator("#event-detail").inner_text()
    page.select_option("#history-mode", "raw")
    assert '"type":"workflow.step_failed"' in page.locator("#history .hrow.failure.raw").first.inner_text()
    page.select_option("#history-mode", "compact")
    shot(page, "execution")


def test_a_retry_from_a_step_with_edited_input_works_from_the_page(api: str, page: Any) -> None:
    iid = start(api, "UI Check", {"amount": 500})
    wait_status(api, iid, "failed")
    page.goto(f"{api}/ui/executions/{iid}")
    page.locator("#execution-error").wait_for()
    assert "over the limit" in page.locator("#execution-error").inner_text()
    page.select_option("#retry-step", "charge")
    assert '"amount": 500' in page.input_value("#retry-input")
    page.fill("#retry-input", '{"amount": 50')  # not JSON: named, and nothing can be sent
    assert "invalid JSON" in page.inner_text("#retry-input-status")
    assert page.is_disabled("#retry-send")
    page.fill("#retry-input", '{"amount": 50}')
    assert page.inner_text("#retry-input-status") == "valid JSON"
    shot(page, "retry")
    page.click("#retry-send")
    page.locator("#execution-header .badge.st-completed").wait_for()
    attempts = httpx.get(f"{api}/executions/{iid}/steps").json()["steps"][1]["attempts"]
    assert attempts[-1]["input"] == {"amount": 50} and attempts[-1]["status"] == "completed"
    last = page.locator("#step-charge tr.attempt").last
    last.locator("summary", has_text="output").click()
    assert '"charged": 50' in last.inner_text()


async def _signals(stack: ApiStack, iid: str, count: int) -> None:
    """count signal commands in the execution's inbox, as `foldflow signal` writes each, pipelined."""
    keys = Keys(stack.prefix, stack.partitions)
    redis = connect(stack.redis_url)
    try:
        inbox = keys.inbox(keys.partition(iid))
        for first in range(0, count, 1000):
            pipe = redis.pipeline(transaction=False)
            for i in range(first, min(count, first + 1000)):
                pipe.xadd(inbox, command_fields("signal", iid, {"name": "tick", "payload": i}, f"tick:{iid}:{i}"))
            await pipe.execute()
    finally:
        await redis.aclose()


def _dead_letter(stack: ApiStack, iid: str) -> str:
    """A signal for iid in its partition's dead-letter stream, as a worker moves a command there."""
    keys = Keys(stack.prefix, stack.partitions)
    p = keys.partition(iid)

    async def add() -> str:
        redis = connect(stack.redis_url)
        try:
            original = {k: v.decode() if isinstance(v, bytes) else v for k, v in
                        command_fields("signal", iid, {"name": "from-dlq", "payload": {"ok": True}}, f"dlq:{iid}").items()}
            entry = await redis.xadd(keys.dlq(p), {
                "reason": "ui test: a command the engine could not take", "source": keys.inbox(p),
                "entry_id": "1-0", "group": "engine", "ts": str(int(time.time() * 1000)), "deliveries": "3",
                "fields": json.dumps(original)})
            return f"{p}/{entry.decode() if isinstance(entry, bytes) else entry}"
        finally:
            await redis.aclose()
    return str(in_thread(add()))


def test_definitions_services_dead_letters_and_workers_pages(api: str, stack: ApiStack, page: Any) -> None:
    page.goto(api + "/ui/definitions")
    page.locator("#definitions-body a", has_text="UI Check").click()
    page.locator('#graph g.node[data-step="charge"]').wait_for()
    assert '"amount": "${context.amount}"' in page.inner_text("#definition-source")
    assert "1.0.0" in page.inner_text("#versions")
    shot(page, "definition")

    r = httpx.post(api + "/services", json={"name": "ui-svc", "instances": ["http://127.0.0.1:9/"],
                                            "health": {"interval_ms": 1000, "timeout_ms": 200,
                                                                       "failures_before_critical": 1}})
    assert r.status_code in (201, 409), r.text
    page.goto(api + "/ui/services")
    card = page.locator('section.card[data-service="ui-svc"]')
    card.wait_for()
    card.locator("button", has_text="Check now").click()
    page.locator('section.card[data-service="ui-svc"] .badge.st-critical').first.wait_for()
    shot(page, "services")

    iid = start(api, DEMO, {**CONTEXT, "task_id": "t-dlq"}, correlation_id="c-ui-dlq")
    wait_status(api, iid, "running", current="execution_monitoring")
    ref = _dead_letter(stack, iid)
    page.goto(api + "/ui/dead-letters")
    page.locator("#dlq-body tr", has_text=ref).click()
    page.locator("#dlq-replay").wait_for()
    assert "from-dlq" in page.inner_text("#dlq-detail")
    shot(page, "dead-letters")
    page.click("#dlq-replay")
    page.locator(".result", has_text=f"Replay {ref}: done").wait_for()
    state = until(lambda: httpx.get(f"{api}/executions/{iid}/state").json()["state"], 20, "the replayed signal",
                  ok=lambda s: "from-dlq" in s.get("signals", {}))
    assert state["signals"]["from-dlq"] == {"ok": True}
    assert httpx.get(f"{api}/dead-letters/{ref}").status_code == 404

    page.goto(api + "/ui/workers")
    page.locator("#workers-body td", has_text="engine").first.wait_for()
    roles = page.inner_text("#workers-body")
    assert "activities" in roles and "projector" in roles
    assert "ui-check" in roles  # the queues the activity worker serves
    page.locator("#lag-body tr").first.wait_for()
    shot(page, "workers")


def _token(scope: str) -> str:
    return jwt.encode({"sub": "ui-test", "scope": scope, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


def test_with_auth_the_ui_asks_for_a_token_and_offers_what_its_scope_allows(api: str, stack: UiStack,
                                                                           page: Any) -> None:
    iid = start(api, DEMO, {**CONTEXT, "task_id": "t-auth"}, correlation_id="c-ui-auth")
    wait_status(api, iid, "running", current="execution_monitoring")
    secured = stack.secured_url
    assert httpx.get(f"{secured}/executions").status_code == 401
    page.goto(f"{secured}/ui/executions/{iid}")
    page.locator("#token-dialog[open]").wait_for()
    page.fill("#token-input", _token("read"))
    page.click("#token-form button[type=submit]")
    page.locator("#execution-header .badge.st-running").wait_for()
    page.locator('#live-state[data-state="live"]').wait_for()  # the stream sent the token too
    assert "write scope" in page.inner_text("#actions")
    assert page.locator("#action-cancel").count() == 0
    assert page.evaluate("sessionStorage.getItem('foldflow.token')") is not None
    page.evaluate(f"sessionStorage.setItem('foldflow.token', {_token('write')!r})")
    page.reload()
    page.click("#action-cancel")
    page.locator("#execution-header .badge.st-cancelled").wait_for()


def test_a_10000_event_history_opens_and_scrolls(api: str, long_history: Flood, page: Any) -> None:
    long_history.join()
    assert long_history.error is None, long_history.error
    iid = long_history.iid
    events = until(lambda: status_of(api, iid)["events"], 60, "10,000 signals applied", ok=lambda n: n >= 10_000)
    began = time.monotonic()
    page.goto(f"{api}/ui/executions/{iid}")
    page.locator('#history .hrow[data-version="1"]').wait_for()
    opened = time.monotonic() - began
    began = time.monotonic()
    page.eval_on_selector("#history", "el => { el.scrollTop = el.scrollHeight; }")
    page.locator(f'#history .hrow[data-version="{events}"]').wait_for(timeout=30_000)
    to_end = time.monotonic() - began
    assert page.locator("#history .hrow").count() < 200  # virtualised: only the rows in view exist
    began = time.monotonic()
    page.eval_on_selector("#history", "el => { el.scrollTop = el.scrollHeight / 2; }")
    expect(page.locator("#history .hrow[data-version]").nth(10)).to_be_attached(timeout=30_000)  # more than 10 rows
    back = time.monotonic() - began
    print(f"\n{events}-event history: first rows {opened:.2f} s, scrolled to the last {to_end:.2f} s, "
          f"back to the middle {back:.2f} s")
    shot(page, "long-history")
