"""One running deployment (worker, projector, activities with the UI tests'
handlers, API) and one headless Chromium (Debian's, never a downloaded one)
per module; each test opens its own page."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.dev.embedded import free_port
from tests.support.api_stack import ApiStack
from tests.support.tools import missing, spawn

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


SECRET = "ui-test-secret-of-at-least-32-bytes!"


class UiStack(ApiStack):
    """The stack, and a second API on it that wants a JWT (FOLDFLOW_JWT_SECRET): started
    with the others, so the processes start side by side."""

    def __init__(self, redis_url: str, logs: Path) -> None:
        super().__init__(redis_url, logs, activities="tests.e2e.ui.handlers")
        self.secured_port = free_port()

    @property
    def secured_url(self) -> str:
        return f"http://127.0.0.1:{self.secured_port}"

    def start(self) -> UiStack:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs["api-auth"] = spawn(["api", "--port", str(self.secured_port)],
                                       self.env(FOLDFLOW_JWT_SECRET=SECRET), self.logs / "api-auth.log")
        super().start()
        self._wait_ready("api-auth", self.secured_url)
        return self


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiStack]:
    with UiStack(redis_url, tmp_path_factory.mktemp("ui-stack")) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the UI tests drive Chromium with the playwright package (pip install -e '.[test]')")
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        missing("the UI tests need Debian's chromium (.ci/run installs it)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    tab = context.new_page()
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    # The browser logs every refused request; a 401 is how the UI learns it needs a token.
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and "status of 401" not in msg.text
           else None)
    tab.set_default_timeout(15_000)
    try:
        yield tab
        # A script error or a CSP violation on any page fails the test that saw it.
        assert not errors, errors
    finally:
        context.close()
