"""docs/language.md, "Testing a definition", stays true: each `foldflow definitions
test` command of its sh block runs as written and ends as its comment says."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import orjson
import pytest

from engine.ops.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]


def commands() -> list[tuple[list[str], str]]:
    text = (ROOT / "docs" / "language.md").read_text()
    section = text.split("## Testing a definition", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None, "the section has no sh block"
    out = []
    for command in block[1].replace("\\\n", " ").splitlines():
        line, _, comment = command.partition("#")
        words = shlex.split(line)
        assert words[:3] == ["foldflow", "definitions", "test"], command
        out.append((words[1:], comment.strip()))
    return out


@pytest.mark.parametrize(("args", "says"), commands(), ids=lambda v: v[2] if isinstance(v, list) else None)
def test_the_documented_commands_end_as_documented(args: list[str], says: str, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    code = cli_main(args)
    run = orjson.loads(capsys.readouterr().out)
    expected = int(m[1]) if (m := re.search(r"exit (\d)", says)) else 0
    status = re.sub(r"^exit \d: ", "", says).split()[0].strip(":,")  # "exit 1: compensated, ..." -> compensated
    assert (code, run["status"]) == (expected, status), (says, run.get("reason"), run["state"].get("error"))
    if "simulated_ms" in says:
        assert str(run["simulated_ms"]) in says


def test_the_documented_python_test_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "docs" / "language.md").read_text()
    section = text.split("## Testing a definition", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert block is not None, "the section has no python block"
    monkeypatch.chdir(ROOT)
    namespace: dict[str, object] = {}
    exec(compile(block[1], "test_retry_backoff.py", "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_") and callable(f)]
    assert tests
    for test in tests:
        test()
