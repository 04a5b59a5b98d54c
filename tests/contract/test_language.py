"""The full workflow language end to end, on a real redis-server and on
fakeredis: the user-registration example as it is (happy path, a forced
failure that compensates, a verification timeout that compensates), input
validation, a 100-branch fan-out, conditionals, loops, delays, sub-workflows,
an event published before its wait began, signals, retry from a step, and the
circuit breaker."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import msgspec
import yaml

from engine.core.model import Task
from engine.errors import InvalidInput
from engine.store.keys import Keys
from engine.workers.activities import Registry
from engine.workers.handler_errors import StepError
from tests.support.helpers import Cluster, check_history
from tests.support.poll import eventually, run
from tests.support.tools import EXAMPLES

REGISTRATION = (EXAMPLES / "user-registration.yaml").read_text()
ADA = {"username": "ada", "email": "ada@example.com", "password": "correct-horse", "profile_data": {"lang": "en"}}


def registration_services() -> Registry:
    """The services user-registration.yaml calls, simulated; 'fail-activation' users fail activation."""
    reg = Registry()
    calls: list[str] = []

    def record(task: Task) -> None:
        calls.append(task.step)

    @reg.handler("user-service", "validate_input")
    def validate(task: Task) -> dict[str, Any]:
        record(task)
        return {"valid": True, "rule": task.input["rule"]}

    @reg.handler("user-service", "create_user_account")
    def create(task: Task) -> dict[str, Any]:
        record(task)
        assert task.input["password_hash"] == hashlib.sha256(task.context["password"].encode()).hexdigest()
        return {"id": "u-" + task.input["username"], "status": task.input["status"]}

    @reg.handler("profile-service", "create_user_profile")
    def profile(task: Task) -> dict[str, Any]:
        record(task)
        return {"profile_id": "p-" + task.input["user_id"], "profile_data": task.input["profile_data"]}

    @reg.handler("notification-service")
    def notify(task: Task) -> dict[str, Any]:
        record(task)
        return {"sent": True, "to": task.input.get("to") or task.input.get("user_id")}

    @reg.handler("user-service", "activate_user_account")
    def activate(task: Task) -> dict[str, Any]:
        record(task)
        if task.context["username"] == "fail-activation":
            raise StepError("activation service rejected the account", retryable=False)
        return {"status": "active", "activation_date": "2026-11-23T00:00:00Z"}

    @reg.handler("user-service", "cleanup_user_account")
    def cleanup_account(task: Task) -> dict[str, Any]:
        record(task)
        return {"deleted": task.endpoint}

    @reg.handler("profile-service", "cleanup_user_profile")
    def cleanup_profile(task: Task) -> dict[str, Any]:
        record(task)
        return {"deleted": task.endpoint}

    reg.calls = calls  # type: ignore[attr-defined]
    return reg


def test_user_registration_happy_path(cluster_backend: Any) -> None:
    factory, settings = cluster_backend

    async def scenario() -> None:
        async with Cluster(factory, settings, registration_services()) as c:
            definition, _ = await c.client.register(REGISTRATION)
            iid = await c.client.start(definition.name, ADA, correlation_id="reg-1")
            state = await c.client.wait(iid, timeout=30)
            status = await c.client.status(iid)
            assert state.status == "completed", status
            assert status["output"] == {"user_id": "u-ada", "status": "active",
                                        "activation_date": "2026-11-23T00:00:00Z"}
            assert status["steps"]["create_user_account"]["output"] == {"user_id": "u-ada"}
            assert status["steps"]["validate_input"]["output"]["valid"] is True
            assert status["steps"]["wait_for_verification"]["output"]["user_id"] == "u-ada"
            history = await c.client.history(iid)
            check_history(history)
            activate = next(e for e in history if e["type"] == "workflow.step_scheduled"
                            and e["data"]["step"] == "activate_user_account")
            assert activate["data"]["endpoint"] == "/api/users/u-ada/activate"
            # the two branches after create_user_account were dispatched together
            create_done = next(i for i, e in enumerate(history) if e["type"] == "workflow.step_completed"
                               and e["data"]["step"] == "create_user_account")
            assert {e["data"]["step"] for e in history[create_done + 1:create_done + 3]} == {
                "create_user_profile", "send_welcome_email"}

    run(scenario())


def test_user_registration_compensates_a_failed_activation(cluster_backend: Any) -> None:
    factory, settings = cluster_backend
    services = registration_services()

    async def scenario() -> None:
        async with Cluster(factory, settings, services) as c:
            definition, _ = await c.client.register(REGISTRATION)
            iid = await c.client.start(definition.name, {**ADA, "username": "fail-activation"})
            state = await c.client.wait(iid, timeout=30)
            assert state.status == "compensated", await c.client.status(iid)
            history = await c.client.history(iid)
            check_history(history)
            types = [e["type"] for e in history]
            assert "workflow.compensating" in types and types[-1] == "workflow.compensated"
            comp = next(e for e in history if e["type"] == "workflow.compensating")
            # reverse order: the profile (created later) is removed before the account
            assert comp["data"]["steps"] == ["cleanup_user_profile", "cleanup_user_account"]
            assert comp["data"]["step"] == "activate_user_account"
            order = [e["data"]["step"] for e in history if e["type"] == "workflow.step_scheduled"]
            assert order[-2:] == ["cleanup_user_profile", "cleanup_user_account"]
            cleanup = next(e for e in history if e["type"] == "workflow.step_scheduled"
                           and e["data"]["step"] == "cleanup_user_account")
            assert cleanup["data"]["endpoint"] == "/api/users/u-fail-activation"

    run(scenario())


def test_user_registration_compensates_a_verification_timeout(cluster_backend: Any) -> None:
    factory, settings = cluster_backend
    doc = yaml.safe_load(REGISTRATION)
    doc["metadata"]["version"] = "1.2.0-short"
    wait = next(s for s in doc["spec"]["steps"] if s["name"] == "wait_for_verification")
    wait["config"]["timeout"] = "300ms"

    async def scenario() -> None:
        async with Cluster(factory, settings, registration_services()) as c:
            c.agents.stop()  # nobody verifies the email
            definition, _ = await c.client.register(doc)
            iid = await c.client.start(definition.name, ADA, version="1.2.0-short")
            state = await c.client.wait(iid, timeout=30)
            assert state.status == "compensated", await c.client.status(iid)
            history = await c.client.history(iid)
            failed = next(e for e in history if e["type"] == "workflow.step_failed")
            assert failed["data"]["step"] == "wait_for_verification" and failed["data"]["error"]["kind"] == "timeout"
            ran = [e["data"]["step"] for e in history if e["type"] == "workflow.step_completed"]
            # the profile existed, so its cleanup ran (its condition held), then the account's
            assert ran[-2:] == ["cleanup_user_profile", "cleanup_user_account"]

    run(scenario())


def test_bad_input_is_refused_with_every_violation(cluster_backend: Any) -> None:
    factory, settings = cluster_backend

    async def scenario() -> None:
        async with Cluster(factory, settings, registration_services()) as c:
            definition, _ = await c.client.register(REGISTRATION)
            try:
                await c.client.start(definition.name, {"username": "ab", "email": "not-an-email"})
            except InvalidInput as exc:
                message = str(exc)
            else:
                raise AssertionError("bad input was accepted")
            assert "'password' is a required property" in message
            assert "username: 'ab' is too short" in message
            assert "email: 'not-an-email' is not a 'email'" in message
            # the same start written straight to the inbox is dead-lettered; no instance exists
            keys = Keys(settings.prefix, settings.partitions)
            await c.client.send("start", "bad-input-1", {"workflow": definition.name, "context": {"username": 5}})

            async def dead() -> Any:
                entries = await c.client.redis.xrange(keys.dlq(keys.partition("bad-input-1")))
                return [f for _, f in entries if b"input schema" in f[b"reason"]]

            (entry,) = await eventually(dead)
            assert b"username: 5 is not of type 'string'" in entry[b"reason"]
            assert await c.client.redis.exists(keys.instance("bad-input-1")) == 0

    run(scenario())


def _flow(name: str, steps: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "workflow/v1", "kind": "Workflow", "metadata": {"name": name, "version": "1"},
            "spec": {"steps": steps, **spec}}


def echo_services() -> Registry:
    reg = Registry()

    @reg.handler("echo")
    def echo(task: Task) -> dict[str, Any]:
        return {"step": task.step, "input": task.input, "iteration": task.iteration}

    return reg


def test_fan_out_of_100_branches_joins(cluster_backend: Any) -> None:
    factory, settings = cluster_backend
    branches = [{"name": f"b{i}", "type": "service_call", "service": "echo", "depends_on": ["start"],
                 "payload": {"i": i}} for i in range(100)]
    flow = _flow("fan-out", [{"name": "start", "type": "service_call", "service": "echo"}, *branches,
                             {"name": "join", "type": "service_call", "service": "echo",
                              "depends_on": [b["name"] for b in branches]}])

    async def scenario() -> None:
        async with Cluster(factory, settings, echo_services()) as c:
            await c.client.register(flow)
            iid = await c.client.start("fan-out", {})
            state = await c.client.wait(iid, timeout=60)
            assert state.status == "completed"
            history = await c.client.history(iid)
            check_history(history)
            start_done = next(i for i, e in enumerate(history) if e["type"] == "workflow.step_completed")
            # every branch was dispatched in the same decision, right after the fan-out point
            assert [e["data"]["step"] for e in history[start_done + 1:start_done + 101]] == [f"b{i}" for i in range(100)]
            join = [e for e in history if e["type"] == "workflow.step_scheduled" and e["data"]["step"] == "join"]
            assert len(join) == 1
            assert all(state.step(f"b{i}").status == "completed" for i in range(100))

    run(scenario())


def test_conditional_loop_delay_and_sub_workflow(cluster_backend: Any) -> None:
    factory, settings = cluster_backend
    child = _flow("child", [{"name": "work", "type": "service_call", "service": "echo",
                             "payload": {"n": "{{ input.n }}"}}],
                  output={"values": {"child_result": "{{ steps.work.output.input.n }}"}})
    parent = _flow("parent", [
        {"name": "check", "type": "conditional", "condition": "len(input.items) > 2 and input.mode == 'bulk'",
         "true_edge": "bulk", "false_edge": "single"},
        {"name": "bulk", "type": "loop", "items": "{{ input.items }}", "service": "echo",
         "payload": {"item": "{{ item }}", "at": "{{ index }}"}},
        {"name": "single", "type": "service_call", "service": "echo"},
        {"name": "after", "type": "service_call", "service": "echo", "depends_on": ["single"]},
        {"name": "pause", "type": "delay", "duration": "200ms", "depends_on": ["bulk"]},
        {"name": "skipped_by_condition", "type": "service_call", "service": "echo", "depends_on": ["pause"],
         "condition": "input.mode == 'never'"},
        {"name": "delegate", "type": "sub_workflow", "workflow": "child", "depends_on": ["pause"],
         "input": {"n": "{{ len(input.items) }}"}},
    ])

    async def scenario() -> None:
        async with Cluster(factory, settings, echo_services()) as c:
            await c.client.register(child)
            await c.client.register(parent)
            iid = await c.client.start("parent", {"items": ["a", "b", "c"], "mode": "bulk"}, correlation_id="k-1")
            state = await c.client.wait(iid, timeout=30)
            status = await c.client.status(iid)
            assert state.status == "completed", status
            steps = status["steps"]
            assert steps["check"]["output"] == {"result": True, "edge": "bulk"}
            assert steps["single"]["status"] == "skipped" and steps["after"]["status"] == "skipped"
            assert [o["input"] for o in steps["bulk"]["output"]["items"]] == [
                {"item": "a", "at": 0}, {"item": "b", "at": 1}, {"item": "c", "at": 2}]
            assert steps["pause"]["output"] == {"delayed_ms": 200}
            assert steps["skipped_by_condition"]["status"] == "skipped"
            assert steps["delegate"]["output"] == {"child_result": 3}
            child_id = state.step("delegate").child_id
            assert child_id is not None
            child_status = await c.client.status(child_id)
            assert child_status["status"] == "completed" and child_status["correlation_id"] == "k-1"
            history = await c.client.history(iid)
            skipped = [e["data"] for e in history if e["type"] == "workflow.step_skipped"]
            assert {s["step"]: s["reason"] for s in skipped}["skipped_by_condition"] == \
                "condition \"input.mode == 'never'\" is false"
            delayed = next(e for e in history if e["type"] == "workflow.step_delayed")
            done = next(e for e in history if e["type"] == "workflow.step_completed" and e["data"]["step"] == "pause")
            assert done["ts"] - delayed["ts"] >= 200

    run(scenario())


def test_an_event_published_before_the_wait_began_still_counts(cluster_backend: Any) -> None:
    factory, settings = cluster_backend
    reg = Registry()
    gate = asyncio.Event()

    @reg.handler("slow")
    async def slow(task: Task) -> dict[str, Any]:
        await gate.wait()
        return {}

    flow = _flow("early-event", [
        {"name": "first", "type": "service_call", "service": "slow"},
        {"name": "wait", "type": "wait_for_event", "depends_on": ["first"],
         "config": {"event_type": "order.paid", "filter": {"order": "{{ input.order }}"}, "timeout": "20s"}},
    ])

    async def scenario() -> None:
        async with Cluster(factory, settings, reg) as c:
            c.agents.stop()
            await c.client.register(flow)
            await c.client.publish("order.paid", {"order": "o-1", "amount": 3})  # before the instance: ignored
            iid = await c.client.start("early-event", {"order": "o-1"})
            await eventually(lambda: _scheduled(c, iid, "first"))
            await c.client.publish("order.paid", {"order": "o-2"})  # another order: not this one
            paid = await c.client.publish("order.paid", {"order": "o-1", "amount": 7})  # before the wait began
            gate.set()
            state = await c.client.wait(iid, timeout=20)
            assert state.status == "completed"
            assert state.step("wait").output == {"order": "o-1", "amount": 7}
            completed = next(e for e in await c.client.history(iid) if e["type"] == "workflow.step_completed"
                             and e["data"]["step"] == "wait")
            assert completed["data"]["event_id"] == paid

    run(scenario())


async def _scheduled(c: Cluster, iid: str, step: str) -> bool:
    try:
        return (await c.client.state(iid)).step(step).status == "scheduled"
    except Exception:
        return False


def test_signal_and_retry_from_a_step_with_edited_input(cluster_backend: Any) -> None:
    factory, settings = cluster_backend
    reg = Registry()

    @reg.handler("strict")
    def strict(task: Task) -> dict[str, Any]:
        if task.input.get("amount", 0) > 100:
            raise StepError(f"amount {task.input['amount']} over the limit", retryable=False)
        return {"charged": task.input["amount"]}

    @reg.handler("echo")
    def echo(task: Task) -> dict[str, Any]:
        return {"input": task.input}

    flow = _flow("charge", [
        {"name": "prepare", "type": "service_call", "service": "echo"},
        {"name": "charge", "type": "service_call", "service": "strict", "depends_on": ["prepare"],
         "payload": {"amount": "{{ input.amount }}"}},
        {"name": "receipt", "type": "service_call", "service": "echo", "depends_on": ["charge"],
         "payload": {"note": "{{ default(signals.note, 'none') }}"}},
    ])

    async def scenario() -> None:
        async with Cluster(factory, settings, reg) as c:
            await c.client.register(flow)
            iid = await c.client.start("charge", {"amount": 500})
            state = await c.client.wait(iid)
            assert state.status == "failed" and state.failed_step == "charge"
            await c.client.retry(iid, from_step="charge", input={"amount": 50})
            await c.client.wait(iid, statuses=frozenset({"running", "completed"}))
            state = await c.client.wait(iid, statuses=frozenset({"completed"}))
            assert state.step("charge").output == {"charged": 50}
            history = await c.client.history(iid)
            retried = next(e for e in history if e["type"] == "workflow.retried")
            # the edit is an audited event, the original attempt stays in the history
            assert retried["data"]["from_step"] == "charge" and retried["data"]["input"] == {"amount": 50}
            assert set(retried["data"]["steps"]) == {"charge", "receipt"}
            assert any(e["type"] == "workflow.step_failed" and e["data"]["step"] == "charge" for e in history)
            await c.client.signal(iid, "note", "late")  # completed: refused and recorded

            async def refused() -> bool:
                return any(e["type"] == "workflow.command_rejected" for e in await c.client.history(iid))

            await eventually(refused)

    run(scenario())


def test_circuit_breaker_opens_and_closes(cluster_backend: Any) -> None:
    factory, base = cluster_backend
    settings = msgspec.structs.replace(base, breaker_threshold=3, breaker_cooldown_ms=400)
    reg = Registry()
    calls: list[float] = []

    @reg.handler("flaky")
    async def flaky(task: Task) -> dict[str, Any]:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) <= 3:
            raise RuntimeError("service down")
        return {"ok": True}

    flow = _flow("breaker", [{"name": "call", "type": "service_call", "service": "flaky",
                              "retry_policy": {"max_attempts": 6, "backoff_base": 1, "backoff_multiplier": 10}}])

    async def scenario() -> None:
        async with Cluster(factory, settings, reg) as c:
            await c.client.register(flow)
            iid = await c.client.start("breaker", {})
            state = await c.client.wait(iid, timeout=30)
            assert state.status == "completed" and state.step("call").attempt == 4
            assert c.activities.breakers.opened == 1
            # the 4th attempt waited out the cool-down instead of failing
            assert calls[3] - calls[2] >= 0.35
            assert await c.activities.breakers.state("flaky") == "closed"

    run(scenario())


def test_versions_side_by_side(cluster_backend: Any) -> None:
    factory, settings = cluster_backend

    def version(v: str, endpoint: str) -> dict[str, Any]:
        doc = _flow("versioned", [{"name": "only", "type": "service_call", "service": "echo", "endpoint": endpoint},
                                  {"name": "gate", "type": "wait_for_event", "depends_on": ["only"],
                                   "event_type": "go", "filter": {"k": "{{ input.k }}"}}])
        doc["metadata"]["version"] = v
        return doc

    async def scenario() -> None:
        async with Cluster(factory, settings, echo_services()) as c:
            c.agents.stop()
            await c.client.register(version("1.9.0", "/v1"))
            old = await c.client.start("versioned", {"k": "old"})
            await eventually(lambda: _waiting(c, old))
            await c.client.register(version("1.10.0", "/v2"))  # registered while `old` runs
            new = await c.client.start("versioned", {"k": "new"})  # latest: 1.10.0
            pinned = await c.client.start("versioned", {"k": "pinned"}, version="1.9.0")
            for iid in (old, new, pinned):
                await eventually(lambda iid=iid: _waiting(c, iid))
            for k in ("old", "new", "pinned"):
                await c.client.publish("go", {"k": k})
            versions = {}
            for iid in (old, new, pinned):
                state = await c.client.wait(iid, timeout=20)
                assert state.status == "completed"
                versions[iid] = (state.def_version, state.step("only").output["step"])
                history = await c.client.history(iid)
                versions[iid] += (history[2]["data"]["endpoint"],)
            assert versions[old] == ("1.9.0", "only", "/v1")
            assert versions[new] == ("1.10.0", "only", "/v2")
            assert versions[pinned] == ("1.9.0", "only", "/v1")
            listing = await c.client.definitions()
            assert listing == [{"name": "versioned", "versions": ["1.9.0", "1.10.0"], "latest": "1.10.0"}]

    run(scenario())


async def _waiting(c: Cluster, iid: str) -> bool:
    try:
        return (await c.client.state(iid)).step("gate").status == "waiting"
    except Exception:
        return False


def test_sub_workflow_failures_reach_the_parent(cluster_backend: Any) -> None:
    factory, settings = cluster_backend
    waiting_child = _flow("waits-forever", [{"name": "w", "type": "wait_for_event", "event_type": "never",
                                              "filter": {"k": "{{ input.k }}"}}])
    parent = _flow("parent-of-trouble", [
        {"name": "missing", "type": "sub_workflow", "workflow": "no-such-workflow", "on_failure": {"action": "continue"}},
        {"name": "slow", "type": "sub_workflow", "workflow": "waits-forever", "timeout": "300ms",
         "input": {"k": "x"}, "on_failure": {"action": "continue"}},
        {"name": "held", "type": "sub_workflow", "workflow": "waits-forever", "input": {"k": "y"},
         "depends_on": ["missing", "slow"]},
    ])

    async def scenario() -> None:
        async with Cluster(factory, settings, echo_services()) as c:
            c.agents.stop()
            await c.client.register(waiting_child)
            await c.client.register(parent)
            iid = await c.client.start("parent-of-trouble", {})

            async def held() -> Any:
                state = await c.client.state(iid)
                return state if state.step("held").status == "child_running" else None

            state = await eventually(held)
            missing, slow = state.step("missing"), state.step("slow")
            assert missing.status == "failed" and missing.error is not None
            assert "could not start" in missing.error.message and "no-such-workflow" in missing.error.message
            assert slow.status == "failed" and slow.error is not None and slow.error.kind == "timeout"
            child = state.step("held").child_id
            assert child is not None
            await eventually(lambda: _status_is(c, child, "running"))
            await c.client.cancel(iid)  # cancelling the parent cancels the child it waits for
            await c.client.wait(iid)
            assert (await c.client.wait(child, timeout=20)).status == "cancelled"

    run(scenario())


async def _status_is(c: Cluster, iid: str, status: str) -> bool:
    try:
        return (await c.client.state(iid)).status == status
    except Exception:
        return False
