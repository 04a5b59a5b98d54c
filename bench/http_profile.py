"""Where the HTTP executor's CPU goes: py-spy sampling the executor process during
one extra (unmeasured) run, summarised as the functions holding the most samples,
by own time and by inclusive time. Idle samples (the event loop waiting in epoll)
are left out by py-spy, so the shares are of the process's busy time."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

from .harness import ROOT, Skip

TOP = 25


class Spy(NamedTuple):
    proc: subprocess.Popen[bytes]
    out: Path


def attach(pid: int, out: Path, rate: int = 250) -> Spy:
    binary = shutil.which("py-spy")
    if binary is None:
        raise Skip("py-spy is not installed (pip install py-spy)")
    proc = subprocess.Popen([binary, "record", "--pid", str(pid), "--format", "raw", "--function", "--nonblocking",
                             "--rate", str(rate), "--output", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    return Spy(proc, out)


def collect(spy: Spy) -> dict[str, Any]:
    """Stop py-spy (SIGINT makes it write its file) and summarise the stacks."""
    spy.proc.send_signal(signal.SIGINT)
    try:
        _, err = spy.proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        spy.proc.kill()
        _, err = spy.proc.communicate()
    if not spy.out.exists():
        return {"error": f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}"}
    return summarise(spy.out.read_text())


def summarise(raw: str) -> dict[str, Any]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";") if f]
        total += n
        own[frames[-1]] += n
        for frame in set(frames) - _ROOTS:
            inclusive[frame] += n
    def share(counts: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * v / total, 1)) for name, v in counts.most_common(TOP)]

    return {"samples": total, "own_pct": share(own), "inclusive_pct": share(inclusive)}


# Frames under every sample of the event loop's thread: they say nothing about where the time goes.
_ROOTS = frozenset({"_run_module_as_main (<frozen runpy>)", "_run_code (<frozen runpy>)",
                    "<module> (bench/http_executor_proc.py)", "main (bench/http_executor_proc.py)",
                    "run (uvloop/__init__.py)", "Runner.run (asyncio/runners.py)"})


def _short(frame: str) -> str:
    """`call (engine/workers/http/executor.py)` with the site-packages or project root cut off."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file, _, line = where.rpartition(":")
    where = file if line.isdigit() else where
    for cut in ("site-packages/", f"{ROOT}/", "lib/python3"):
        if cut in where:
            where = where.split(cut, 1)[1]
    return f"{name} ({where})" if where else name
