"""What an activity worker started with ``--code`` serves: the queue of
``foldflow.code`` (engine.core.formats.CODE_SERVICE), each task one sandboxed call.

A task's input is ``{"language": "python", "code": "<source defining
process(input_data)>", "input": <JSON>}``; the step's output is ``{"output":
<process's return value>, "duration_ms": n, "stdout": "<the first 4 KiB printed>"}``
(streams.md, "Code nodes"). As many calls run at once as the worker's concurrency
allows, each in its own sandbox.
"""

from __future__ import annotations

import logging
from typing import Any

from engine.config import Settings
from engine.core.formats import CODE_SERVICE
from engine.core.model import Task
from engine.workers.code.preflight import check_sandbox, require_enabled
from engine.workers.code.sandbox import Sandbox, limits_from_env
from engine.workers.code.verdict import reply
from engine.workers.handler_errors import StepError, handler_error

log = logging.getLogger("foldflow.code")
LANGUAGES = ("python",)


async def code_serving(settings: Settings) -> CodeServing:
    """What ``--code`` serves, once the deployment enables code nodes and the sandbox's
    preflight holds; ConfigError (exit 2) naming what failed otherwise."""
    require_enabled(settings)
    sandbox = Sandbox(limits_from_env())
    await check_sandbox(sandbox)
    log.info("code nodes: sandbox ready (%s, python %s %s, %d host files bound read-only)", sandbox.bwrap,
             sandbox.interpreter.version, sandbox.interpreter.executable, len(sandbox.bound()))
    return CodeServing(sandbox)


class CodeServing:
    service = CODE_SERVICE

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.calls = 0
        self.failed = 0
        self.unstarted = 0

    def takes(self, task: Task) -> bool:
        return task.service == CODE_SERVICE

    async def call(self, task: Task, base: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Run the task's code once in a fresh sandbox; the result command and its data."""
        self.calls += 1
        try:
            code, data = _request(task.input)
            outcome = await self.sandbox.run(code, data)
            if not outcome.started:
                self.unstarted += 1
            output = reply(outcome, self.sandbox.limits)
        except StepError as exc:
            self.failed += 1
            return "step.failed", {**base, "error": handler_error(exc, self.takes)}  # a StepError: as given
        except Exception as exc:  # a bug here must fail the attempt (retryably), not leave the task pending
            log.exception("code task %s: the sandbox call failed", task.task_id)
            self.failed += 1
            return "step.failed", {**base, "error": handler_error(StepError(f"code sandbox error: {exc!r}"),
                                                                  self.takes)}
        return "step.completed", {**base, "output": output}

    def counters(self) -> dict[str, int]:
        return {"code_calls": self.calls, "code_failed": self.failed, "code_sandbox_unstarted": self.unstarted}


def _request(payload: Any) -> tuple[str, Any]:
    """The code and its input from a task's input; a malformed one fails for good, naming the field."""
    if not isinstance(payload, dict):
        raise StepError(f"a {CODE_SERVICE} task's input must be an object with language, code and input, "
                        f"got {type(payload).__name__}", retryable=False)
    language = payload.get("language", "python")
    if language not in LANGUAGES:
        raise StepError(f"input.language: only {', '.join(LANGUAGES)} is supported, got {language!r}",
                        retryable=False)
    code = payload.get("code")
    if not isinstance(code, str) or not code.strip():
        raise StepError("input.code: required, Python source defining process(input_data)", retryable=False)
    return code, payload.get("input")

