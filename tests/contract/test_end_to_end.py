"""The agent-task-execution example end to end, with two engine workers and one
activity worker in this process, on a real redis-server and on fakeredis."""

from __future__ import annotations

from typing import Any

from engine.store.keys import Keys
from tests.support.helpers import Cluster, check_history
from tests.support.poll import eventually, run


def test_agent_example_runs_end_to_end(cluster_backend: Any, agent_example: bytes) -> None:
    factory, settings = cluster_backend

    async def scenario() -> None:
        async with Cluster(factory, settings) as c:
            definition, created = await c.client.register(agent_example)
            assert created
            ids = []
            for i in range(20):
                ctx = {"project_id": "p-1", "task_id": f"t-{i}", "agent_id": f"a-{i % 4}", "flaky": i % 5 == 0}
                ids.append(await c.client.start(definition.name, ctx, correlation_id=f"c-{i}"))
            for iid in ids:
                state = await c.client.wait(iid, timeout=30)
                assert state.status == "completed", await c.client.status(iid)
            for i, iid in enumerate(ids):
                status = await c.client.status(iid)
                assert status["id"] == iid and status["workflow"] == "Agent Task Execution"
                assert status["version"] == "1.0.0" and status["correlation_id"] == f"c-{i}"
                assert set(status["steps"]) == {"task_preparation", "agent_assignment", "execution_monitoring",
                                                "result_processing"}
                assert all(s["status"] == "completed" for s in status["steps"].values())
                assert status["steps"]["agent_assignment"]["attempt"] == (2 if i % 5 == 0 else 1)
                assert status["steps"]["execution_monitoring"]["output"] == {
                    "task_id": f"t-{i}", "agent_id": f"a-{i % 4}", "result": "done"}
                assert status["steps"]["task_preparation"]["output"]["endpoint"] == f"/tasks/t-{i}/prepare"
                history = await c.client.history(iid)
                check_history(history)
                types = [e["type"] for e in history]
                assert types[:3] == ["workflow.created", "workflow.started", "workflow.step_scheduled"]
                assert types[-1] == "workflow.completed"
                if i % 5 == 0:
                    failed = [e for e in history if e["type"] == "workflow.step_failed"]
                    assert len(failed) == 1 and failed[0]["data"]["retry_at"] > failed[0]["ts"]
            # Every worker took part: the load is shared through the consumer group.
            assert all(w.stats.events > 0 for w in c.workers), [w.stats.as_dict() for w in c.workers]

    run(scenario())


def test_cancel_pause_resume_and_rejections(cluster_backend: Any, agent_example: bytes) -> None:
    factory, settings = cluster_backend

    async def scenario() -> None:
        async with Cluster(factory, settings) as c:
            c.agents.stop()  # nobody answers the event wait: the instance stays waiting
            definition, _ = await c.client.register(agent_example)
            iid = await c.client.start(definition.name, {"project_id": "p", "task_id": "t", "agent_id": "a"})

            async def waiting() -> bool:
                st = await c.client.state(iid)
                return st.step("execution_monitoring").status == "waiting"

            await eventually(waiting)
            await c.client.pause(iid)
            await c.client.wait(iid, statuses=frozenset({"paused"}))
            await c.client.pause(iid)  # invalid: already paused -> rejected and recorded
            await c.client.resume(iid)
            await c.client.wait(iid, statuses=frozenset({"running"}))
            await c.client.cancel(iid, reason="operator")
            state = await c.client.wait(iid)
            assert state.status == "cancelled"
            await c.client.resume(iid)  # invalid: cancelled

            async def two_rejections() -> list[dict[str, Any]]:
                h = await c.client.history(iid)
                r = [e for e in h if e["type"] == "workflow.command_rejected"]
                return r if len(r) == 2 else []

            rejected = await eventually(two_rejections)
            assert rejected[0]["data"]["command"] == "pause" and "paused" in rejected[0]["data"]["reason"]
            assert rejected[1]["data"]["command"] == "resume" and "cancelled" in rejected[1]["data"]["reason"]
            # the wait and its timeout are gone with the cancellation
            keys = Keys(settings.prefix, settings.partitions)
            p = keys.partition(iid)
            assert await c.client.redis.zcard(keys.timers(p)) == 0

    run(scenario())


def test_event_wait_times_out_and_notifies(cluster_backend: Any) -> None:
    factory, settings = cluster_backend
    definition = {
        "name": "short-wait", "version": "1",
        "definition": {
            "steps": [
                {"name": "wait", "step_type": "event_wait", "event_type": "never.happens",
                 "event_filter": {"k": "${context.k}"}, "timeout": 200},
            ],
            "error_handlers": [
                {"step": "wait", "on_error": {"action": "notify", "target": "project-coordinator",
                                              "endpoint": "/projects/{k}/notifications"}},
            ],
        },
    }

    async def scenario() -> None:
        async with Cluster(factory, settings) as c:
            c.agents.stop()  # the event never comes
            await c.client.register(definition)
            iid = await c.client.start("short-wait", {"k": "v"})
            state = await c.client.wait(iid, timeout=20)
            assert state.status == "failed"
            assert state.error is not None and state.error.kind == "timeout"
            history = await c.client.history(iid)
            notes = [e for e in history if e["type"] == "workflow.notification_scheduled"]
            assert len(notes) == 1 and notes[0]["data"]["endpoint"] == "/projects/v/notifications"

            async def notified() -> bool:
                return c.activities.completed >= 1

            await eventually(notified)

    run(scenario())


def test_retry_a_failed_instance(cluster_backend: Any) -> None:
    factory, settings = cluster_backend
    definition = {"name": "fails-once", "version": "1", "definition": {"steps": [
        {"name": "a", "step_type": "service_call", "service": "agent-orchestrator", "endpoint": "/x"},
    ]}}

    async def scenario() -> None:
        async with Cluster(factory, settings) as c:
            await c.client.register(definition)
            # flaky: the handler fails attempt 1; max_attempts defaults to 1, so the instance fails
            iid = await c.client.start("fails-once", {"flaky": True})
            state = await c.client.wait(iid)
            assert state.status == "failed" and state.failed_step == "a"
            await c.client.retry(iid)
            state = await c.client.wait(iid, statuses=frozenset({"completed"}))
            assert state.step("a").attempt == 2
            check_history(await c.client.history(iid))

    run(scenario())
