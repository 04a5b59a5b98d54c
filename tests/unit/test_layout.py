"""The layout's promises, checked: what README's Layout section and the docstrings
of engine/store/keys.py and projections/keys.py say of the whole tree.
(The import rules are import-linter contracts in .importlinter, run by .ci/run.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*ROOT.glob("engine/**/*.py"), *ROOT.glob("projections/**/*.py")])
KEY_MODULES = {ROOT / "engine/store/keys.py", ROOT / "projections/keys.py"}
# An explicit schema: every event and command of the wire contract, one tagged union.
LONG_MODULES = {ROOT / "engine/core/model.py"}
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 45
# Tables rather than logic: argparse sub-command trees and a match-per-event fold.
LONG_FUNCTIONS = {
    ("engine/ops/cli.py", "build_parser"),
    ("projections/cli.py", "add_commands"),
    ("projections/executions.py", "fold_record"),
}
KEY_BUILT_FROM_PREFIX = re.compile(r"""f["'][^"']*\{[\w.]*prefix\}:""")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_the_tree_has_sources() -> None:
    assert len(SOURCES) > 50 and (ROOT / "engine/core/decide.py") in SOURCES


def test_every_key_is_built_in_a_keys_module() -> None:
    offenders = [f"{_rel(p)}:{n}" for p in SOURCES if p not in KEY_MODULES
                 for n, line in enumerate(p.read_text().splitlines(), 1) if KEY_BUILT_FROM_PREFIX.search(line)]
    assert offenders == []


def test_modules_stay_small() -> None:
    big = {_rel(p): n for p in SOURCES if p not in LONG_MODULES and (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert big == {}


def test_functions_stay_short() -> None:
    long: dict[str, int] = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and (_rel(path), node.name) not in LONG_FUNCTIONS:
                    long[f"{_rel(path)}:{node.name}"] = lines
    assert long == {}


def test_only_the_store_and_dev_import_redis_in_engine() -> None:
    """The same rule as the import-linter contract, for a run of the unit tier alone."""
    allowed = ("engine/store/", "engine/dev/", "projections/store.py")
    offenders = []
    for path in SOURCES:
        if _rel(path).startswith(allowed):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{_rel(path)}: {n}" for n in names if n == "redis" or n.startswith("redis.")]
    assert offenders == []
