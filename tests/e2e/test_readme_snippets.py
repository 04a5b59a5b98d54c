"""Every ```python block of README.md and docs/*.md runs as written: each is saved
as a file and run with ``python`` from the repository root, with REDIS_URL,
FOLDFLOW_PREFIX and FOLDFLOW_PARTITIONS of a test redis-server (as a reader's
shell would have them), while an engine worker and an activity worker serve
that prefix. The activity worker runs the handlers the documents print (the
README's, the echo handler of docs/language.md), so the handlers a reader
copies are the ones the client snippets are answered by.

The blocks are found as tests/contract/test_docs_examples.py finds them. An
HTML comment right before a block says more about it:

    <!-- prints: TEXT -->       its output must contain TEXT
    <!-- not-run: REASON -->    a deliberate fragment: only compiled (keep these rare)
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import engine.workers.activities
from engine.config import Settings
from engine.core.definition import load_definition_file
from engine.store.connection import connect
from engine.workers.activities import ActivityWorker, Registry
from engine.workers.engine import EngineWorker
from tests.support.poll import run
from tests.support.tools import EXAMPLES, ROOT, foldflow_env

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
MARK = re.compile(r"<!--\s*(prints|not-run):\s*(.*?)\s*-->\s*$")
RUN_TIMEOUT_S = 120.0


class Snippet(NamedTuple):
    where: str  # README.md:72, the line of its opening fence
    code: str
    prints: str | None
    not_run: str | None


def snippets() -> list[Snippet]:
    found = []
    for doc in DOCUMENTS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            if m[1] != "python":
                continue
            marks = dict(re.findall(r"<!--\s*(prints|not-run):\s*(.*?)\s*-->", _mark_before(text, m.start())))
            where = f"{doc.relative_to(ROOT).as_posix()}:{text.count(chr(10), 0, m.start()) + 1}"
            found.append(Snippet(where, m[2], marks.get("prints"), marks.get("not-run")))
    return found


def _mark_before(text: str, start: int) -> str:
    """The HTML comment that ends right before a fence (blank lines between allowed), or ''."""
    match = MARK.search(text[:start].rstrip() + "\n")
    return match[0] if match else ""


SNIPPETS = snippets()


def served_registry() -> Registry:
    """The documents' own handlers (each block that registers some, executed here), and the
    echo handler for the services of the README's example that no printed handler serves."""
    saved = engine.workers.activities.default_registry
    registry = engine.workers.activities.default_registry = Registry()
    namespaces: list[dict[str, Any]] = []
    try:
        for snippet in SNIPPETS:
            if "engine.activity" in snippet.code:
                namespace: dict[str, Any] = {"__name__": f"snippet_{len(namespaces)}"}
                exec(compile(snippet.code, snippet.where, "exec"), namespace)
                namespaces.append(namespace)
    finally:
        engine.workers.activities.default_registry = saved
    echo = next(ns["echo"] for ns in namespaces if "echo" in ns)
    agent = load_definition_file(EXAMPLES / "agent-task-execution.json")
    needed = {s.service for s in agent.steps if s.service} | {h.target for h in agent.error_handlers if h.target}
    for service in sorted(needed - set(registry.services)):
        registry.register(service, None, echo)
    return registry


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[None]:
    worker = EngineWorker(connect(settings.redis_url), settings)
    acts = ActivityWorker(connect(settings.redis_url), settings, registry=served_registry())
    await worker.prepare()
    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(acts.run())]
    try:
        yield
    finally:
        worker.stop()
        acts.stop()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await worker.redis.aclose()
        await acts.redis.aclose()
        for r in results:
            if isinstance(r, BaseException):
                raise r


def test_the_documents_hold_the_snippets_and_their_marks_are_attached() -> None:
    assert len(SNIPPETS) >= 5, [s.where for s in SNIPPETS]
    assert sum(1 for s in SNIPPETS if s.not_run) <= 2, "not-run is for the odd fragment, not a way out"
    assert all(s.not_run != "" for s in SNIPPETS), "a not-run mark says why"
    for doc in DOCUMENTS:
        text = doc.read_text()
        marks = len(re.findall(r"<!--\s*(?:prints|not-run):", text))
        attached = sum(1 for m in FENCE.finditer(text) if m[1] == "python" and _mark_before(text, m.start()))
        assert marks == attached, f"{doc.name}: a prints/not-run mark that is not right before a python block"


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.where for s in SNIPPETS])
def test_the_snippet_runs_as_written(snippet: Snippet, settings: Settings, tmp_path: Path) -> None:
    if snippet.not_run:
        compile(snippet.code, snippet.where, "exec")
        pytest.skip(f"not-run: {snippet.not_run}")
    script = tmp_path / "snippet.py"
    script.write_text(snippet.code)

    async def scenario() -> tuple[int | None, str, str]:
        async with serving(settings):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(script), cwd=ROOT, env=foldflow_env(settings),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            try:
                out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                out, err = await proc.communicate()
            return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    code, out, err = run(scenario())
    assert code == 0, f"{snippet.where} exited {code}:\n{err[-4000:]}"
    if snippet.prints is not None:
        assert snippet.prints in out, f"{snippet.where} should print {snippet.prints!r}; printed:\n{out[-2000:]}"
