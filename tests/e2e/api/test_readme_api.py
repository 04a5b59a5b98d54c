"""The README's HTTP walkthrough (the ```sh block after `<!-- api-walkthrough -->`)
runs as written, with bash and curl, against a running deployment: what a reader
pastes is what works."""

from __future__ import annotations

import re
import subprocess

import httpx

from tests.support.api_stack import ApiStack
from tests.support.tools import ROOT, require_tool


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- api-walkthrough[^>]*-->\s*```sh\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert m, "README.md lost its api-walkthrough block"
    return m.group(1)


def test_the_readme_walkthrough_runs_as_written(stack: ApiStack) -> None:
    require_tool("curl", "the README's walkthrough is curl commands")
    done = subprocess.run(["bash", "-e", "-c", walkthrough()], cwd=ROOT, env={**stack.env(), "API": stack.url},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "event: workflow.completed" in out, out[-3000:]
    assert '"status":409' in out.replace(" ", ""), out[-1500:]
    final = httpx.get(f"{stack.url}/executions/exec-1").json()
    assert final["status"] == "completed" and final["correlation_id"] == "c-1"
