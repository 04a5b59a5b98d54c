"""Setting flags before and after the verb, without Redis: what parses, which value
wins, and that each verb's --help lists the settings it reads and no others.
(tests/e2e/test_cli_flags_roles.py runs the roles with the flags after the verb.)"""

from __future__ import annotations

import argparse
import re

import pytest

from engine.config import Settings
from engine.ops.cli import _settings, build_parser, parse_args
from engine.runtime.lifecycle import CONNECTION, VERB_SETTINGS

ROLES = {"worker": ["worker"], "activities": ["activities", "--module", "m"], "projector": ["projector"]}
SETTING_FLAG = {"--" + f.replace("_", "-"): f for f in Settings.__struct_fields__}
NO_SETTINGS = {("definitions", "validate"), ("demo",)}  # validate never touches Redis; the demo uses REDIS_URL
NO_SETTINGS.add(("definitions", "test"))  # a test run is in memory: no Redis either


def _flags(fields: tuple[str, ...] | set[str]) -> set[str]:
    return {"--" + f.replace("_", "-") for f in fields}


def help_of(capsys: pytest.CaptureFixture[str], *verb: str) -> str:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*verb, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def setting_flags_in(text: str) -> set[str]:
    return {f for f in re.findall(r"--[a-z][a-z-]*", text) if f in SETTING_FLAG}


def leaf_verbs(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every command line's verb path (`dlq list`, `projector`, `projector status`) and its parser."""
    found = {path: parser} if path else {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action._name_parser_map.items():
                found.update(leaf_verbs(sub, (*path, name)))
    return found


@pytest.mark.parametrize("role", sorted(ROLES))
def test_metrics_port_after_the_verb(role: str) -> None:
    args = build_parser().parse_args([*ROLES[role], "--metrics-port", "9123"])
    assert args.metrics_port == 9123
    assert _settings(args).metrics_port == 9123


@pytest.mark.parametrize("role", sorted(ROLES))
def test_metrics_port_before_the_verb_still_works(role: str) -> None:
    args = build_parser().parse_args(["--metrics-port", "9124", *ROLES[role]])
    assert _settings(args).metrics_port == 9124


def test_after_the_verb_wins_and_a_verb_does_not_reset_what_came_before() -> None:
    args = build_parser().parse_args(["--metrics-port", "1", "--prefix", "early", "--block-ms", "7",
                                      "worker", "--metrics-port", "2", "--lease-ms", "900"])
    s = _settings(args)
    assert (s.metrics_port, s.prefix, s.block_ms, s.lease_ms) == (2, "early", 7, 900)
    assert build_parser().parse_args(["--log-level", "DEBUG", "worker"]).log_level == "DEBUG"
    assert build_parser().parse_args(["--log-level", "DEBUG", "worker", "--log-level", "ERROR"]).log_level == "ERROR"


def test_nested_verbs_take_the_flag_at_every_level_the_innermost_wins() -> None:
    def prefix(*argv: str) -> str:
        return _settings(build_parser().parse_args(list(argv))).prefix

    assert prefix("--prefix", "a", "projector", "status") == "a"
    assert prefix("--prefix", "a", "projector", "--prefix", "b", "status") == "b"
    assert prefix("--prefix", "a", "projector", "--prefix", "b", "status", "--prefix", "c") == "c"
    assert prefix("--prefix", "a", "dlq", "list", "--prefix", "d") == "d"
    args = build_parser().parse_args(["dlq", "list", "--partition", "3", "--partitions", "16"])
    assert (args.partition, args.partitions) == ("3", 16)


def test_role_knobs_after_the_verb_reach_the_settings() -> None:
    s = _settings(build_parser().parse_args(["activities", "--module", "m", "--concurrency", "3", "--batch-size", "9",
                                             "--consumer", "me", "--task-claim-idle-ms", "5000"]))
    assert (s.concurrency, s.batch_size, s.consumer, s.task_claim_idle_ms) == (3, 9, "me", 5000)


@pytest.mark.parametrize("role", sorted(ROLES))
def test_role_help_lists_exactly_the_settings_it_reads(role: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(capsys, role)
    assert "--metrics-port" in text and "--log-level" in text
    assert setting_flags_in(text) == _flags(VERB_SETTINGS[role])


def test_worker_help_leaves_out_what_the_engine_worker_does_not_read(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(capsys, "worker")
    for other in ("--concurrency", "--task-claim-idle-ms", "--breaker-threshold", "--breaker-cooldown-ms"):
        assert other not in text
    assert "--lease-ms" not in help_of(capsys, "activities")
    assert "--cache-size" not in help_of(capsys, "projector")


@pytest.mark.parametrize("verb", [("status",), ("history",), ("dlq", "list"), ("dlq", "replay"), ("top",),
                                  ("stuck",), ("projector", "status"), ("executions", "list"),
                                  ("correlation", "show"), ("definitions", "register")])
def test_operator_help_lists_the_connection_flags_and_no_worker_settings(
        verb: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(capsys, *verb)
    assert setting_flags_in(text) == _flags(CONNECTION)


def test_every_verb_that_reads_settings_takes_the_connection_flags_after_it() -> None:
    verbs = leaf_verbs(build_parser())
    assert ("projector", "status") in verbs and ("dlq", "list") in verbs
    for path, parser in verbs.items():
        options = set(parser._option_string_actions)
        if path in NO_SETTINGS:
            assert not options & set(SETTING_FLAG) - {"--log-format"}, path
        elif not any(isinstance(a, argparse._SubParsersAction) and a.required for a in parser._actions):
            assert _flags(CONNECTION) <= options, path


def test_every_setting_is_taken_after_some_verb() -> None:
    after = set().union(*VERB_SETTINGS.values())
    assert after == set(Settings.__struct_fields__)


def test_a_flag_the_verb_does_not_take_is_refused_with_that_verbs_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        parse_args(["status", "i-1", "--metrics-port", "9100"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: foldflow status ") and "unrecognized arguments: --metrics-port 9100" in err
    assert "--block-ms" not in err  # not the top level's usage, which lists every setting
    with pytest.raises(SystemExit):
        parse_args(["projector", "status", "--only", "x"])
    assert capsys.readouterr().err.startswith("usage: foldflow projector status ")
