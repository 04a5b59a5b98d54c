"""What a sandboxed call comes to as a step result: the reply on success, else a
StepError whose message says which limit was hit or what the code raised.

The user's own failures (an exception, a limit, a result that is not JSON) are not
retryable: the same code on the same input fails the same way. A sandbox that did
not start is the machine's fault, so that one is retried.
"""

from __future__ import annotations

import signal
from typing import Any

from engine.workers.code.sandbox import CodeLimits, Outcome
from engine.workers.handler_errors import StepError

_SIGNALLED = 128  # bwrap exits 128+N when the code died of signal N


def reply(outcome: Outcome, limits: CodeLimits) -> dict[str, Any]:
    """The step's output: {"output", "duration_ms", "stdout"}; raises StepError otherwise."""
    if not outcome.started:  # the runner never ran: the machine's fault, not the code's
        why = outcome.stdout.strip()[:500] or ("no answer within the wall time" if outcome.timed_out else
                                               f"exit status {outcome.returncode}")
        raise StepError(f"the code sandbox did not start: {why}", retryable=True)
    if outcome.output_over:
        _fail(f"output larger than {limits.output_bytes} bytes (stdout and stderr; FOLDFLOW_CODE_OUTPUT_BYTES)",
              outcome)
    if outcome.result_over:
        _fail(f"result larger than {limits.result_bytes} bytes of JSON (FOLDFLOW_CODE_RESULT_BYTES)", outcome)
    if outcome.timed_out:
        _fail(f"wall time limit ({limits.wall_s:g}s) exceeded (FOLDFLOW_CODE_WALL_S)", outcome)
    answer = outcome.answer
    if answer is None:
        _fail(_no_answer(outcome, limits), outcome)
    assert answer is not None
    error = answer.get("error")
    if isinstance(error, dict):
        _fail(_described(error, limits), outcome)
    took = answer.get("duration_ms")
    return {"output": answer.get("output"), "stdout": outcome.stdout,
            "duration_ms": took if isinstance(took, int) and not isinstance(took, bool) else outcome.elapsed_ms}


def _fail(message: str, outcome: Outcome) -> None:
    printed = outcome.stdout.strip()
    if printed:
        message += f"\nprinted: {printed[-300:]}"
    raise StepError(message, retryable=False)


def _no_answer(outcome: Outcome, limits: CodeLimits) -> str:
    if outcome.corrupt:
        return "the code wrote to the sandbox's result channel itself: no result can be trusted"
    code = outcome.returncode
    died = code - _SIGNALLED if code is not None and code > _SIGNALLED else -(code or 0)
    if died == signal.SIGXCPU:
        return f"CPU time limit ({limits.cpu_s}s) exceeded (FOLDFLOW_CODE_CPU_S)"
    if died == signal.SIGKILL:
        return (f"killed (SIGKILL): the CPU time limit ({limits.cpu_s}s) with its signal ignored, "
                "or the host out of memory")
    if died > 0:
        return f"the code died of signal {_signal_name(died)} before process returned"
    return f"the code exited (status {code}) before process returned"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _described(error: dict[str, Any], limits: CodeLimits) -> str:
    kind, text = str(error.get("type") or "Exception"), str(error.get("message") or "")
    raised = f"{kind}: {text}" if text else kind
    limit = error.get("limit")
    if limit == "memory":
        head = f"memory limit ({limits.memory_mb} MiB of address space) exceeded (FOLDFLOW_CODE_MEMORY_MB): {raised}"
    elif limit == "processes":
        head = f"too many processes or threads (limit {limits.processes}, FOLDFLOW_CODE_PROCESSES): {raised}"
    elif limit == "open files":
        head = f"too many open files (limit {limits.open_files}, FOLDFLOW_CODE_OPEN_FILES): {raised}"
    elif limit == "file size":
        head = f"file larger than the sandbox's /tmp allows ({limits.tmp_mb} MiB, FOLDFLOW_CODE_TMP_MB): {raised}"
    elif limit == "not JSON-serialisable":
        head = text
    else:
        head = raised
    trace = str(error.get("traceback") or "").rstrip()
    return f"{head}\n{trace}" if trace else head
