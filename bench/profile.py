"""Where the engine and activity workers spend their time: `python -m bench.profile`.

Runs case 2's workload (one engine worker, one activity worker, five-step linear
workflows, every start queued at once) on a redis-server of its own, attaches py-spy
to each worker process for a window in the middle of the run, and prints each one's
top functions by own time and by inclusive time. Sampling costs the workers little,
but the window shares the machine's cores with the run, so read the shares, not the
absolute figures. py-spy samples the thread that runs Python: when redis-py packs a
big pipeline on a worker thread, the main thread's samples in that window show where
it waited for the GIL."""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.foldflow_cases import throughput

_FRAME = re.compile(r"(.*?) \((.*?):\d+\)")
_PROJECT = re.compile(r".*?/(engine|bench|projections)/")


def _name(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    fn, path = m.groups()
    path = re.sub(r".*/site-packages/", "", path)
    path = re.sub(r".*/lib/python3\.\d+/", "", path)
    path = _PROJECT.sub(r"\1/", path)
    return f"{fn} ({path})"


def top(raw: Path, own: int, inclusive: int) -> str:
    """The top entries of a py-spy raw (collapsed) profile, as shares of all samples."""
    own_n: collections.Counter[str] = collections.Counter()
    incl_n: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        names = [_name(f) for f in stack.split(";")]
        total += int(n)
        own_n[names[-1]] += int(n)
        for name in set(names):
            incl_n[name] += int(n)
    rows = [f"{total} samples", "own time:"]
    rows += [f"  {100 * v / total:5.1f}%  {k}" for k, v in own_n.most_common(own)]
    rows += ["inclusive:"] + [f"  {100 * v / total:5.1f}%  {k}" for k, v in incl_n.most_common(inclusive)]
    return "\n".join(rows)


def _workers() -> dict[str, int]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        for role in ("worker", "activities"):
            if f"engine.ops.cli {role}" in args:
                found.setdefault(role, int(pid))
    return found


def profile(url: str, instances: int, delay: float, seconds: int, out: Path) -> dict[str, Path]:
    """Run the workload in a thread; sample each worker for ``seconds`` after ``delay``."""
    done: list[dict[str, object]] = []
    runner = threading.Thread(
        target=lambda: done.append(asyncio.run(throughput(url, instances, 1, 1))), daemon=True)
    runner.start()
    time.sleep(delay)
    pids = _workers()
    spies = {role: subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(max(1, seconds)), "-r", "200",
                                     "-f", "raw", "-o", str(out / f"{role}.txt")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for role, pid in pids.items()}
    for role, spy in spies.items():
        _, err = spy.communicate()
        if spy.returncode != 0:
            print(f"py-spy on the {role} (pid {pids[role]}) failed: {err.strip()[-500:]}", file=sys.stderr)
    runner.join()
    return {role: out / f"{role}.txt" for role in spies if (out / f"{role}.txt").exists()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=30_000, help="five-step instances (default 30000)")
    p.add_argument("--delay", type=float, default=4.0, help="seconds before sampling starts (default 4)")
    p.add_argument("--seconds", type=int, default=10, help="sampling window, whole seconds (default 10)")
    p.add_argument("--top", type=int, default=20, help="entries per list (default 20)")
    args = p.parse_args(argv)
    if shutil.which("py-spy") is None:
        print("py-spy is not installed: python3 -m pip install py-spy", file=sys.stderr)
        return 2
    from bench.__main__ import REDIS_ARGS
    from engine.dev.embedded import RedisServer

    with RedisServer(None, *REDIS_ARGS) as server, tempfile.TemporaryDirectory() as tmp:
        raws = profile(server.url, args.instances, args.delay, args.seconds, Path(tmp))
        for role, raw in raws.items():
            print(f"## {'engine worker' if role == 'worker' else 'activity worker'}\n{top(raw, args.top, args.top)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
