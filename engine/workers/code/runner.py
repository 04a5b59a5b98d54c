"""The program that runs INSIDE the sandbox, once per call: stdlib only, since the
sandbox holds the interpreter and nothing else (no foldflow, no site-packages).

    python -I -S -B -c <this file's source> RESULT_FD CPU_S MEMORY_BYTES PROCESSES OPEN_FILES FILE_BYTES

It writes ``ready\\n`` to RESULT_FD once it runs (so the worker can tell a sandbox
that never started from code that died), sets its limits, reads
``{"code": ..., "input": ...}`` from stdin, defines the code, calls
``process(input)`` and writes one JSON document to RESULT_FD:
``{"output": ..., "duration_ms": n}`` or ``{"error": {"type", "message",
"traceback", "limit"}}``. Prints go to stdout, never to RESULT_FD, so a print
cannot pass for a result; code that writes to RESULT_FD itself corrupts the
channel, which the worker reports as such.

The limits are set here, before the user's code exists in the process: RLIMIT_CPU
(SIGXCPU, then SIGKILL one second later), RLIMIT_AS (allocations raise
MemoryError), RLIMIT_NPROC (fork raises BlockingIOError), RLIMIT_NOFILE,
RLIMIT_FSIZE (a file larger than that fails) and no core dumps.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import sys
import time
from typing import Any

CODE_FILE = "<code>"
MAX_TRACEBACK_FRAMES = 8
MAX_TEXT = 1500


def main(argv: list[str]) -> None:
    result_fd, cpu_s, memory, processes, open_files, file_bytes = (int(a) for a in argv[1:7])
    os.write(result_fd, b"ready\n")
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_CPU, cpu_s, cpu_s + 1)
    _limit(resource.RLIMIT_AS, memory)
    _limit(resource.RLIMIT_NPROC, processes)
    _limit(resource.RLIMIT_FSIZE, file_bytes)
    request = json.loads(sys.stdin.buffer.read())
    sys.stdin.close()
    os.close(0)
    _limit(resource.RLIMIT_NOFILE, open_files)
    me = os.getpid()
    started = time.perf_counter()
    answer = _call(request.get("code"), request.get("input"))
    if os.getpid() != me:
        os._exit(0)  # a process the code forked got back here: only the runner answers
    answer["duration_ms"] = int((time.perf_counter() - started) * 1000)
    _answer(result_fd, answer)
    _flush()
    # Now, not after joining threads the code left running: the answer is given.
    os._exit(0)


def _limit(which: int, soft: int, hard: int | None = None) -> None:
    resource.setrlimit(which, (soft, soft if hard is None else hard))


def _call(code: Any, data: Any) -> dict[str, Any]:
    if not isinstance(code, str):
        return _refusal("TypeError", "code must be a string of Python source")
    namespace: dict[str, Any] = {"__name__": "__code__", "__builtins__": __builtins__}
    try:
        exec(compile(code, CODE_FILE, "exec"), namespace)  # running it is the point: the sandbox contains it
        process = namespace.get("process")
        if not callable(process):
            return _refusal("NameError", "the code defines no function process(input_data)")
        output = process(data)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: every way out is a failure to report
        return {"error": _error(exc, code)}
    finally:
        _flush()
    try:
        json.dumps(output, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return _refusal("TypeError", f"process returned a value that is not JSON-serialisable: {exc}",
                        limit="not JSON-serialisable")
    except MemoryError:
        return _refusal("MemoryError", "", limit="memory")
    return {"output": output}


def _flush() -> None:
    """What the code printed, out before the result; a stdout the code closed or broke is its own loss."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


def _refusal(kind: str, message: str, limit: str | None = None) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, "traceback": "", "limit": limit}}


def _error(exc: BaseException, code: str) -> dict[str, Any]:
    # Imported only on this path: they cost a call that succeeds several milliseconds.
    import linecache
    import traceback

    linecache.cache[CODE_FILE] = (len(code), None, code.splitlines(True), CODE_FILE)
    try:
        message = str(exc)
    except BaseException:
        message = "<unprintable>"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == CODE_FILE]
    if isinstance(exc, SyntaxError) and exc.filename == CODE_FILE:
        message = f"{exc.msg} (line {exc.lineno})"
    shown = "".join(traceback.format_list(frames[-MAX_TRACEBACK_FRAMES:]))
    return {"type": type(exc).__name__, "message": message[:MAX_TEXT], "traceback": shown[-MAX_TEXT:],
            "limit": _limit_hit(exc)}


def _limit_hit(exc: BaseException) -> str | None:
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, BlockingIOError) and exc.errno == errno.EAGAIN:
        return "processes"
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
        return "processes"  # threads count against RLIMIT_NPROC too
    if isinstance(exc, OSError) and exc.errno == errno.EMFILE:
        return "open files"
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return "file size"
    return None


def _answer(fd: int, answer: dict[str, Any]) -> None:
    try:
        body = json.dumps(answer, allow_nan=False).encode()
    except MemoryError:
        body = json.dumps({"error": {"type": "MemoryError", "message": "", "traceback": "",
                                     "limit": "memory"}}).encode()
    view = memoryview(body)
    while view:
        view = view[os.write(fd, view):]


if __name__ == "__main__":
    main(sys.argv)
