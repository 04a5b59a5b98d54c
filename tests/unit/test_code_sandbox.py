"""Code nodes in a real bubblewrap sandbox: each escape attempt is contained and
reported with its reason, and the happy path answers.

Every case runs once, all of them concurrently in one event loop (several sandboxes
at once, as a worker runs them), in a module-scoped fixture; each test then reads
its own case. Without bwrap the tests skip locally and fail under CI."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest

from engine.config import Settings
from engine.core.model import Task
from engine.errors import ConfigError
from engine.ops.cli import main as cli_main
from engine.workers.code.interpreter import Interpreter
from engine.workers.code.preflight import check_sandbox, require_enabled
from engine.workers.code.sandbox import CodeLimits, Outcome, Sandbox, limits_from_env
from engine.workers.code.serving import CodeServing
from engine.workers.code.verdict import reply
from engine.workers.handler_errors import StepError
from tests.support.tools import ROOT, require_tool

LIMITS = CodeLimits(cpu_s=1, wall_s=20, memory_mb=64, processes=16, output_bytes=64 * 1024, tmp_mb=4)
SECRET = "FOLDFLOW_TEST_SECRET_TOKEN"


def _case(body: str, data: Any = None, *, limits: CodeLimits = LIMITS) -> tuple[str, Any, CodeLimits]:
    return body, data, limits


# Each case: the code, the input, the sandbox's limits.
CASES: dict[str, tuple[str, Any, CodeLimits]] = {
    "happy": _case("import json\ndef process(input_data):\n    print('working on', input_data['n'])\n"
                   "    with open('/tmp/scratch', 'w') as fh:\n        fh.write('tmp is writable')\n"
                   "    return {'n': input_data['n'] + 1, 'tmp': open('/tmp/scratch').read()}", {"n": 41}),
    "exception": _case("def helper(d):\n    return d['missing']\n\ndef process(input_data):\n    return helper(input_data)",
                       {"present": 1}),
    "socket": _case("import socket\ndef process(input_data):\n    s = socket.socket()\n    s.settimeout(2)\n"
                    "    s.connect(('127.0.0.1', input_data['port']))\n    return 'connected'"),
    "internet": _case("import socket\ndef process(input_data):\n    socket.create_connection(('1.1.1.1', 53), 2)\n"
                      "    return 'connected'"),
    "host_file": _case("def process(input_data):\n    return open(input_data).read()", str(ROOT / "pyproject.toml")),
    "etc_passwd": _case("import os\ndef process(input_data):\n    return open('/etc/passwd').read()"),
    "listing": _case("import os\ndef process(input_data):\n    return sorted(os.listdir('/'))"),
    "write_outside_tmp": _case("def process(input_data):\n    open('/usr/evil', 'w').write('x')"),
    "environment": _case("import os\ndef process(input_data):\n    return dict(os.environ)"),
    "fork_bomb": _case("import os\ndef process(input_data):\n    while True:\n        os.fork()"),
    "thread_bomb": _case("import threading, time\ndef process(input_data):\n    while True:\n"
                         "        threading.Thread(target=time.sleep, args=(3600,)).start()"),
    "thread_left_running": _case("import threading, time\ndef process(input_data):\n"
                                 "    threading.Thread(target=time.sleep, args=(3600,)).start()\n    return 'done'"),
    "allocate": _case("def process(input_data):\n    hoard = []\n    while True:\n        hoard.append(bytearray(1 << 20))"),
    "infinite_loop": _case("def process(input_data):\n    while True:\n        pass"),
    "sleep_forever": _case("import time\ndef process(input_data):\n    time.sleep(3600)",
                           limits=CodeLimits(wall_s=1.5)),
    "print_gigabytes": _case("def process(input_data):\n    line = 'x' * 65536\n    for _ in range(16384):\n"
                             "        print(line)"),
    "not_json": _case("def process(input_data):\n    return {'when': object()}"),
    "forged_print": _case("import json\ndef process(input_data):\n"
                          "    print(json.dumps({'output': 'forged', 'duration_ms': 0}))\n    return 'real'"),
    "forged_fd": _case("import os, sys\ndef process(input_data):\n    for fd in range(3, 4096):\n        try:\n"
                       "            os.write(fd, b'{\"output\": \"forged\", \"duration_ms\": 0}')\n"
                       "        except OSError:\n            pass\n    return 'real'"),
    "syntax_error": _case("def process(input_data)\n    return 1"),
    "no_process": _case("def handle(input_data):\n    return 1"),
    "exit": _case("import os\ndef process(input_data):\n    os._exit(3)"),
}


@pytest.fixture(scope="module")
def outcomes() -> Iterator[dict[str, tuple[Outcome, float]]]:
    require_tool("bwrap", "code nodes run in bubblewrap (Debian package bubblewrap)")
    os.environ[SECRET] = "hunter2"  # the worker has a secret; the sandbox must not
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    sandboxes: dict[CodeLimits, Sandbox] = {}

    async def one(name: str) -> tuple[Outcome, float]:
        code, data, limits = CASES[name]
        sandbox = sandboxes.setdefault(limits, Sandbox(limits))
        started = time.perf_counter()
        outcome = await sandbox.run(code, {"port": port} if name == "socket" else data)
        return outcome, time.perf_counter() - started

    async def every() -> dict[str, tuple[Outcome, float]]:
        Sandbox(LIMITS).interpreter  # noqa: B018 - describe the interpreter once, before the concurrent calls
        names = list(CASES)
        return dict(zip(names, await asyncio.gather(*(one(n) for n in names))))

    try:
        yield asyncio.run(every())
    finally:
        listener.close()
        os.environ.pop(SECRET, None)


def _ok(outcomes: dict[str, tuple[Outcome, float]], name: str) -> dict[str, Any]:
    return reply(outcomes[name][0], CASES[name][2])


def _failure(outcomes: dict[str, tuple[Outcome, float]], name: str) -> StepError:
    with pytest.raises(StepError) as caught:
        reply(outcomes[name][0], CASES[name][2])
    return caught.value


def test_happy_path_answers_with_output_stdout_and_duration(outcomes: dict[str, tuple[Outcome, float]]) -> None:
    answer = _ok(outcomes, "happy")
    assert answer["output"] == {"n": 42, "tmp": "tmp is writable"}
    assert answer["stdout"] == "working on 41\n"
    assert isinstance(answer["duration_ms"], int) and answer["duration_ms"] >= 0


def test_an_exception_reports_type_message_and_the_users_traceback_only(outcomes: dict[str, Any]) -> None:
    error = _failure(outcomes, "exception")
    assert not error.retryable
    assert error.message.startswith("KeyError: 'missing'")
    assert 'File "<code>", line 2, in helper' in error.message and "line 5, in process" in error.message
    assert "runner" not in error.message and "<string>" not in error.message


def test_no_network_not_even_the_hosts_loopback(outcomes: dict[str, Any]) -> None:
    for name in ("socket", "internet"):
        error = _failure(outcomes, name)
        assert error.message.startswith(("ConnectionRefusedError", "OSError")), error.message
        assert "connected" not in error.message


def test_host_files_are_invisible(outcomes: dict[str, Any]) -> None:
    assert (ROOT / "pyproject.toml").exists() and os.path.exists("/etc/passwd")
    assert _failure(outcomes, "host_file").message.startswith("FileNotFoundError")
    assert _failure(outcomes, "etc_passwd").message.startswith("FileNotFoundError")
    # Only the interpreter's own directories, /dev and /tmp exist at the root.
    listing = _ok(outcomes, "listing")["output"]
    assert "etc" not in listing and "work" not in listing and "home" not in listing
    assert {"dev", "tmp"} <= set(listing)


def test_nothing_is_writable_outside_tmp(outcomes: dict[str, Any]) -> None:
    assert "Read-only file system" in _failure(outcomes, "write_outside_tmp").message


def test_no_environment_and_no_secrets(outcomes: dict[str, Any]) -> None:
    env = _ok(outcomes, "environment")["output"]
    assert SECRET not in env and "PATH" not in env and "REDIS_URL" not in env
    assert set(env) <= {"HOME", "PWD"}


def test_a_fork_bomb_hits_the_process_limit(outcomes: dict[str, Any]) -> None:
    error = _failure(outcomes, "fork_bomb")
    assert error.message.startswith("too many processes or threads (limit 16")
    assert not error.retryable


def test_threads_count_as_processes_and_one_left_running_does_not_hold_the_answer(outcomes: dict[str, Any]) -> None:
    assert _failure(outcomes, "thread_bomb").message.startswith("too many processes or threads (limit 16,")
    assert _ok(outcomes, "thread_left_running")["output"] == "done"


def test_unbounded_allocation_hits_the_memory_limit(outcomes: dict[str, Any]) -> None:
    assert _failure(outcomes, "allocate").message.startswith("memory limit (64 MiB of address space) exceeded")


def test_an_infinite_loop_hits_the_cpu_limit(outcomes: dict[str, Any]) -> None:
    assert _failure(outcomes, "infinite_loop").message.startswith("CPU time limit (1s) exceeded")


def test_sleeping_forever_hits_the_wall_time(outcomes: dict[str, Any]) -> None:
    assert _failure(outcomes, "sleep_forever").message.startswith("wall time limit (1.5s) exceeded")


def test_printing_gigabytes_is_cut_off(outcomes: dict[str, Any]) -> None:
    outcome, _ = outcomes["print_gigabytes"]
    error = _failure(outcomes, "print_gigabytes")
    assert error.message.startswith(f"output larger than {64 * 1024} bytes")
    assert outcome.output_over and len(outcome.stdout) == 4096


def test_a_result_that_is_not_json_fails_the_attempt(outcomes: dict[str, Any]) -> None:
    error = _failure(outcomes, "not_json")
    assert "not JSON-serialisable" in error.message and "object" in error.message


def test_prints_cannot_forge_a_result(outcomes: dict[str, Any]) -> None:
    answer = _ok(outcomes, "forged_print")
    assert answer["output"] == "real" and "forged" in answer["stdout"]
    assert "result channel" in _failure(outcomes, "forged_fd").message


def test_broken_code_is_reported(outcomes: dict[str, Any]) -> None:
    assert _failure(outcomes, "syntax_error").message.startswith("SyntaxError: expected ':' (line 1)")
    assert "defines no function process(input_data)" in _failure(outcomes, "no_process").message
    assert _failure(outcomes, "exit").message.startswith("the code exited (status 3) before process returned")


def test_median_overhead_per_call() -> None:
    """One call after another: the sandbox's own time (start, interpreter, teardown) beyond
    the code's. Not a speed claim: the number is printed for the report (pytest -s)."""
    require_tool("bwrap", "code nodes run in bubblewrap (Debian package bubblewrap)")
    sandbox = Sandbox(LIMITS)

    async def calls() -> list[int]:
        out = []
        for n in range(3):
            outcome = await sandbox.run("def process(input_data):\n    return input_data", n)
            assert reply(outcome, LIMITS)["output"] == n
            out.append(outcome.elapsed_ms - (outcome.answer or {})["duration_ms"])
        return out

    overhead = asyncio.run(calls())
    print(f"\nsandbox overhead per call, median of {len(overhead)}: {statistics.median(overhead)} ms")
    assert all(ms >= 0 for ms in overhead)


def test_a_sandbox_that_cannot_start_is_retryable() -> None:
    with pytest.raises(StepError) as caught:
        reply(Outcome(started=False, stdout="bwrap: No permissions"), LIMITS)
    error = caught.value
    assert error.retryable and "did not start: bwrap: No permissions" in error.message


@pytest.mark.parametrize(("code", "expected"), [(128 + signal.SIGXCPU, "CPU time limit (1s) exceeded"),
                                                (-signal.SIGKILL, "killed (SIGKILL)"),
                                                (128 + signal.SIGSEGV, "the code died of signal SIGSEGV")])
def test_deaths_by_signal_are_named(code: int, expected: str) -> None:
    with pytest.raises(StepError) as caught:
        reply(Outcome(started=True, returncode=code), LIMITS)
    error = caught.value
    assert error.message.startswith(expected) and not error.retryable


def test_limits_come_from_the_environment_and_bad_ones_are_named() -> None:
    limits = limits_from_env({"FOLDFLOW_CODE_CPU_S": "3", "FOLDFLOW_CODE_WALL_S": "2.5"})
    assert (limits.cpu_s, limits.wall_s, limits.memory_mb) == (3, 2.5, 256)
    with pytest.raises(ConfigError) as caught:
        limits_from_env({"FOLDFLOW_CODE_MEMORY_MB": "lots", "FOLDFLOW_CODE_PROCESSES": "0", "FOLDFLOW_CODE_UID": "0"})
    assert "FOLDFLOW_CODE_MEMORY_MB: expected a number" in str(caught.value)
    assert "FOLDFLOW_CODE_PROCESSES: must be positive" in str(caught.value)
    assert "FOLDFLOW_CODE_UID: must be positive (uid 0 is exempt from the process limit)" in str(caught.value)


def test_code_nodes_must_be_enabled() -> None:
    with pytest.raises(ConfigError, match="set FOLDFLOW_CODE_NODES=sandbox"):
        require_enabled(Settings(code_nodes="off"), {})
    require_enabled(Settings(code_nodes="sandbox"), {})


def test_a_missing_bwrap_is_a_config_error_and_a_retryable_call() -> None:
    sandbox = Sandbox(CodeLimits(bwrap="no-such-bwrap-here"))
    with pytest.raises(ConfigError, match="install bubblewrap"):
        sandbox.command()
    outcome = asyncio.run(sandbox.run("def process(input_data):\n    return 1", None))
    with pytest.raises(StepError) as caught:
        reply(outcome, sandbox.limits)
    assert caught.value.retryable and "no-such-bwrap-here not found" in caught.value.message


@pytest.mark.parametrize(("payload", "problem"), [("print(1)", "must be an object"),
                                                  ({"language": "ruby", "code": "x"}, "only python"),
                                                  ({"input": 1}, "input.code: required")])
def test_malformed_tasks_fail_for_good_naming_the_field(payload: Any, problem: str) -> None:
    task = Task(task_id="i:s:1", instance_id="i", step="s", attempt=1, reply_to="r", service="foldflow.code",
                endpoint=None, input=payload, context={})
    command, data = asyncio.run(CodeServing(Sandbox(LIMITS)).call(task, {"step": "s", "attempt": 1}))
    assert command == "step.failed" and problem in data["error"]["message"]
    assert data["error"]["retryable"] is False


def test_activities_code_refuses_to_start_unless_enabled(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("FOLDFLOW_CODE_NODES", raising=False)
    assert cli_main(["activities", "--code"]) == 2
    assert "set FOLDFLOW_CODE_NODES=sandbox" in capsys.readouterr().err


def test_activities_code_refuses_to_start_without_a_working_sandbox(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FOLDFLOW_CODE_NODES", "sandbox")
    monkeypatch.setenv("FOLDFLOW_CODE_BWRAP", "no-such-bwrap-here")
    assert cli_main(["activities", "--code"]) == 2
    err = capsys.readouterr().err
    assert "code sandbox preflight failed" in err and "no-such-bwrap-here not found on PATH" in err


class _Leaky(Sandbox):
    """A sandbox whose probe answers as a broken one would."""

    def __init__(self, found: dict[str, Any]) -> None:
        super().__init__(LIMITS, Interpreter(executable="/usr/bin/python3", version="3", stdlib=[], libraries=[],
                                             hidden=[]))
        self.found = found

    async def run(self, code: str, data: Any) -> Outcome:
        output = {"doubled": 42} if data == 21 else self.found
        return Outcome(answer={"output": output, "duration_ms": 1})


def test_the_preflight_names_every_isolation_failure() -> None:
    leaky = _Leaky({"reached": ["127.0.0.1:6379"], "visible": ["/etc/passwd"], "environment": ["API_KEY"],
                    "root_writable": True})
    with pytest.raises(ConfigError) as caught:
        asyncio.run(check_sandbox(leaky))
    text = str(caught.value)
    for problem in ("reached the network (127.0.0.1:6379)", "host files are visible in the sandbox (/etc/passwd)",
                    "environment variables (API_KEY)", "can write outside /tmp"):
        assert problem in text
    asyncio.run(check_sandbox(_Leaky({"reached": [], "visible": [], "environment": [], "root_writable": False})))
