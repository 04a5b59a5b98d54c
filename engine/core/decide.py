"""decide: what a command causes, as events. Pure: no I/O, no clock, no randomness.

``now`` arrives as data (the worker stamps it), template rendering is a pure
function of the instance's state, and a command that does not fit the state is
answered with an event (``workflow.command_rejected``) or, when it is merely a
repeat or arrives too late (a result for an attempt that is no longer running),
with no events at all: the worker counts those and acknowledges them.

The graph logic all commands share (what runs next, dispatch per step type,
failure handling, compensation) is in decision.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.core.calls import call_meta
from engine.core.definition import Definition
from engine.core.graph import Decision, step_done
from engine.core.ids import entry_key, wait_signature
from engine.core.language.expressions import TemplateError, refuse_markers
from engine.core.model import (
    STATUS_COMPENSATING,
    STATUS_CREATED,
    STATUS_FAILED,
    STATUS_NONE,
    STATUS_PAUSED,
    STATUS_QUEUED,
    STATUS_RUNNING,
    STEP_CHILD,
    STEP_DELAYED,
    STEP_FAILED,
    STEP_RETRYING,
    STEP_SCHEDULED,
    STEP_WAITING,
    AdmitWorkflow,
    CancelWorkflow,
    CompleteStep,
    DeliverEvent,
    Envelope,
    Event,
    FailStep,
    FireTimer,
    PauseWorkflow,
    ResumeWorkflow,
    RetryWorkflow,
    SignalReceived,
    SignalWorkflow,
    StartWorkflow,
    State,
    StepCompleted,
    StepError,
    StepFailed,
    StepIterationCompleted,
    WorkflowCancelled,
    WorkflowCreated,
    WorkflowPaused,
    WorkflowQueued,
    WorkflowResumed,
    WorkflowRetried,
    WorkflowStarted,
)
from engine.core.steps import task_id_for

__all__ = ["decide", "decide_and_fold", "matches", "step_done", "task_id_for"]

# Which statuses accept which control command (the instance state machine).
_CANCELLABLE = frozenset({STATUS_CREATED, STATUS_QUEUED, STATUS_RUNNING, STATUS_PAUSED, STATUS_FAILED,
                          STATUS_COMPENSATING})
# A step result is recorded while the instance can still use it.
_ACCEPTS_RESULTS = frozenset({STATUS_RUNNING, STATUS_PAUSED, STATUS_FAILED, STATUS_COMPENSATING})
_SIGNALLABLE = frozenset({STATUS_RUNNING, STATUS_PAUSED})


def decide(state: State, envelope: Envelope, definition: Definition, now: int) -> list[Event]:
    """The events ``envelope``'s command causes on ``state`` (possibly none)."""
    return decide_and_fold(state, envelope, definition, now)[0]


def decide_and_fold(
    state: State, envelope: Envelope, definition: Definition, now: int
) -> tuple[list[Event], State]:
    """``decide``, plus the state those events fold into (which deciding computed anyway)."""
    if envelope.cmd_id is not None and envelope.cmd_id in state.seen:
        return [], state
    command = envelope.command
    if state.status == STATUS_NONE and not isinstance(command, StartWorkflow):
        return [], state  # the worker dead-letters commands for unknown instances
    decision = Decision(state, definition, now, envelope)
    handler = _HANDLERS.get(type(command))
    if handler is not None:
        handler(decision, command)
    return decision.events, decision.state


# ---------------------------------------------------------------------------
# One function per command
# ---------------------------------------------------------------------------
def _start(d: Decision, cmd: StartWorkflow) -> None:
    if d.state.status != STATUS_NONE:
        return  # a second start for the same id: idempotent, changes nothing
    adm = cmd.admission  # the engine worker's admission step (concurrency per key), as data
    d.emit(WorkflowCreated(instance_id=d.envelope.instance_id, workflow=d.definition.name,
                           version=d.definition.version, context=cmd.context, correlation_id=cmd.correlation_id,
                           parent=cmd.parent, traceparent=cmd.traceparent, priority=cmd.priority, tenant=cmd.tenant,
                           concurrency_key=adm.key if adm is not None else None))
    if adm is not None and adm.outcome == "queue":
        d.emit(WorkflowQueued(key=adm.key, limit=adm.limit, priority=cmd.priority))
        return
    if adm is not None and adm.outcome == "cancel":
        d.emit(WorkflowCancelled(reason=adm.reason))
        return
    d.emit(WorkflowStarted(timeout_at=d.deadline()))
    d.advance()


def _admit(d: Decision, cmd: AdmitWorkflow) -> None:
    if d.state.status != STATUS_QUEUED:
        return  # a repeat, or it was cancelled while it waited: nothing to start
    d.emit(WorkflowStarted(timeout_at=d.deadline()))
    d.advance()


def _current(d: Decision, step: str, attempt: int, task_id: str | None, live: str,
             iteration: int | None = None) -> bool:
    """Is this result for the attempt (and part) running now? Anything else is stale."""
    if d.state.status not in _ACCEPTS_RESULTS or not _has_step(d.definition, step):
        return False
    st = d.state.step(step)
    if st.status != live or st.attempt != attempt:
        return False
    if iteration is not None:
        definition = d.definition.step(step)
        if st.items is not None:
            return iteration == st.iteration and iteration not in st.done
        if definition.type == "validation":
            return 0 <= iteration < len(definition.validation_rules) and iteration not in st.done
        return False
    return task_id is None or st.task_id is None or task_id == st.task_id


def _parts_named(d: Decision, step: str, iteration: int | None) -> bool:
    """A loop's or validation step's results must say which item or rule they are for."""
    return iteration is not None or d.definition.step(step).type not in ("loop", "validation")


def _live(d: Decision, step: str) -> str:
    """The status a step is in while a result for it is awaited."""
    if _has_step(d.definition, step) and d.definition.step(step).type == "sub_workflow":
        return STEP_CHILD
    return STEP_SCHEDULED


def _complete(d: Decision, cmd: CompleteStep) -> None:
    if not _current(d, cmd.step, cmd.attempt, cmd.task_id, _live(d, cmd.step), cmd.iteration) \
            or not _parts_named(d, cmd.step, cmd.iteration):
        return
    step = d.definition.step(cmd.step)
    call = call_meta(cmd.call)
    if step.type == "validation" and cmd.iteration is not None:
        _validation_part(d, cmd, call)
        return
    if step.type == "loop" and cmd.iteration is not None:
        d.emit(StepIterationCompleted(step=cmd.step, attempt=cmd.attempt, iteration=cmd.iteration,
                                      output=cmd.output, call=call))
        d.advance()  # the next item goes out only while the instance runs (resume picks it up)
        return
    if d.complete_step(step, cmd.attempt, cmd.output, call=call):
        d.advance()


def _validation_part(d: Decision, cmd: CompleteStep, call: dict[str, Any] | None) -> None:
    assert cmd.iteration is not None
    step = d.definition.step(cmd.step)
    rule = step.validation_rules[cmd.iteration]
    if isinstance(cmd.output, dict) and cmd.output.get("valid") is False:
        why = cmd.output.get("message") or cmd.output.get("reason") or "the service said it is not valid"
        d.fail_step(cmd.step, cmd.attempt, StepError(
            message=f"validation rule {rule.rule!r} on field {rule.field!r} failed: {why}", retryable=False,
            kind="validation"), cmd.iteration, call=call)
        return
    d.emit(StepIterationCompleted(step=cmd.step, attempt=cmd.attempt, iteration=cmd.iteration, output=cmd.output,
                                  call=call))
    st = d.state.step(cmd.step)
    if len(st.done) == len(step.validation_rules):
        results = {r.rule: out for r, out in zip(step.validation_rules, st.results)}
        if d.complete_step(step, cmd.attempt, {"valid": True, "rules": results}):
            d.advance()


def _fail(d: Decision, cmd: FailStep) -> None:
    if not _current(d, cmd.step, cmd.attempt, cmd.task_id, _live(d, cmd.step), cmd.iteration) \
            or not _parts_named(d, cmd.step, cmd.iteration):
        return
    error = cmd.error
    step = d.definition.step(cmd.step)
    if step.type == "validation" and cmd.iteration is not None:
        rule = step.validation_rules[cmd.iteration]
        error = StepError(message=f"validation rule {rule.rule!r} on field {rule.field!r} failed: {error.message}",
                          retryable=error.retryable, kind=error.kind, type=error.type, status=error.status,
                          retry_after_ms=error.retry_after_ms)
    d.fail_step(cmd.step, cmd.attempt, error, cmd.iteration, call=call_meta(cmd.call))


def _event(d: Decision, cmd: DeliverEvent) -> None:
    if not _current(d, cmd.step, cmd.attempt, None, STEP_WAITING):
        return
    wait = d.state.step(cmd.step).wait
    if wait is None or wait.event_type != cmd.event_type or not matches(wait.filter, cmd.data):
        return
    taken = d.state.last_events.get(wait_signature(wait.event_type, wait.filter))
    if taken is not None and entry_key(cmd.event_id) <= entry_key(taken):
        return  # an earlier wait of this instance for the same thing took this event (or a later one)
    if d.complete_step(d.definition.step(cmd.step), cmd.attempt, cmd.data, event_id=cmd.event_id):
        d.advance()


def _timer(d: Decision, cmd: FireTimer) -> None:
    handler = _TIMERS.get(cmd.kind)
    if handler is not None:  # an unknown kind is a timer of a newer version: nothing to do here
        handler(d, cmd)


def _workflow_timeout(d: Decision, cmd: FireTimer) -> None:
    if d.state.status in (STATUS_RUNNING, STATUS_PAUSED) and d.state.timeout_at is not None:
        error = StepError(message=f"workflow timed out after {d.definition.timeout_ms} ms", retryable=False,
                          kind="timeout")
        d.start_compensation(None, error)  # fails outright when there is nothing to compensate


def _retry_timer(d: Decision, cmd: FireTimer) -> None:
    st = d.state.step(cmd.step)
    if st.status != STEP_RETRYING or st.attempt != cmd.attempt:
        return
    compensating = cmd.step in d.definition.compensation_steps()
    if (d.state.status == STATUS_RUNNING and not compensating) or (
            d.state.status == STATUS_COMPENSATING and compensating):
        d.dispatch(d.definition.step(cmd.step), cmd.attempt + 1)


def _delay_timer(d: Decision, cmd: FireTimer) -> None:
    if _current(d, cmd.step, cmd.attempt, None, STEP_DELAYED):
        step = d.definition.step(cmd.step)
        d.emit(StepCompleted(step=cmd.step, attempt=cmd.attempt, output={"delayed_ms": step.duration_ms}))
        d.advance()


def _step_timeout(d: Decision, cmd: FireTimer) -> None:
    st = d.state.step(cmd.step)
    live = st.status
    if live not in (STEP_SCHEDULED, STEP_WAITING, STEP_CHILD) or not _current(d, cmd.step, cmd.attempt, None, live):
        return
    if st.items is not None and st.iteration in st.done:
        # A loop's item came back before its timeout fired; the next item (a new attempt)
        # is not out yet because the instance is paused or failed. Nothing is awaited.
        return
    step = d.definition.step(cmd.step)
    what = f"event {st.wait.event_type!r}" if st.wait is not None else (
        "the child workflow" if live == STEP_CHILD else "the step's result")
    error = StepError(message=f"timed out after {step.timeout_ms} ms waiting for {what}", retryable=True,
                      kind="timeout")
    action = step.on_timeout
    if action is None:
        d.fail_step(cmd.step, cmd.attempt, error)
        return
    final = StepError(message=error.message, retryable=False, kind="timeout")
    d.emit(StepFailed(step=cmd.step, attempt=cmd.attempt, error=final, continued=action.action == "continue"))
    if action.action == "compensate" and action.target:
        d.notify(step, cmd.attempt, final, action.target, action.endpoint)
    d.after_final_failure(step, cmd.attempt, final, handler=action)


def _cancel(d: Decision, cmd: CancelWorkflow) -> None:
    if d.state.status not in _CANCELLABLE:
        d.reject(f"cannot cancel an instance that is {d.state.status}")
        return
    d.emit(WorkflowCancelled(reason=cmd.reason))


def _pause(d: Decision, cmd: PauseWorkflow) -> None:
    if d.state.status != STATUS_RUNNING:
        d.reject(f"cannot pause an instance that is {d.state.status}")
        return
    d.emit(WorkflowPaused(reason=cmd.reason))


def _resume(d: Decision, cmd: ResumeWorkflow) -> None:
    if d.state.status != STATUS_PAUSED:
        d.reject(f"cannot resume an instance that is {d.state.status}")
        return
    d.emit(WorkflowResumed())
    d.advance(include_due_retries=True)


def _retry(d: Decision, cmd: RetryWorkflow) -> None:
    if d.state.status != STATUS_FAILED:
        d.reject(f"cannot retry an instance that is {d.state.status}")
        return
    if cmd.admission is not None and cmd.admission.outcome == "refuse":
        d.reject(cmd.admission.reason or f"no concurrency slot is free for key {cmd.admission.key!r}")
        return
    failed = [n for n, st in d.state.steps.items() if st.status == STEP_FAILED and not st.continued]
    if cmd.from_step is not None:
        if not _has_step(d.definition, cmd.from_step) or cmd.from_step in d.definition.compensation_steps():
            d.reject(f"cannot retry from {cmd.from_step!r}: no such step in {d.definition.name!r}")
            return
        rewind = [cmd.from_step, *_descendants(d.definition, cmd.from_step)]
        failed = list(dict.fromkeys(rewind + failed))
    elif cmd.input is not None:
        d.reject("retry --input needs --from-step: the step the edited input is for")
        return
    else:
        rewind = []
    try:  # an edited input goes to a service as it is: it must not ask for a secret
        refuse_markers(cmd.input, "the edited input")
    except TemplateError as exc:
        d.reject(str(exc))
        return
    d.emit(WorkflowRetried(steps=failed, timeout_at=d.deadline(), from_step=cmd.from_step, input=cmd.input,
                           rewound=rewind if set(rewind) != set(failed) else []))
    d.advance(include_due_retries=True)


def _signal(d: Decision, cmd: SignalWorkflow) -> None:
    if d.state.status not in _SIGNALLABLE:
        d.reject(f"cannot signal an instance that is {d.state.status}")
        return
    d.emit(SignalReceived(name=cmd.name, payload=cmd.payload))
    d.advance()


_HANDLERS: dict[type, Callable[[Decision, Any], None]] = {
    StartWorkflow: _start,
    CompleteStep: _complete,
    FailStep: _fail,
    DeliverEvent: _event,
    FireTimer: _timer,
    CancelWorkflow: _cancel,
    PauseWorkflow: _pause,
    ResumeWorkflow: _resume,
    RetryWorkflow: _retry,
    SignalWorkflow: _signal,
    AdmitWorkflow: _admit,
}

_TIMERS: dict[str, Callable[[Decision, FireTimer], None]] = {
    "workflow_timeout": _workflow_timeout,
    "retry": _retry_timer,
    "timeout": _step_timeout,
    "delay": _delay_timer,
}




def matches(filter_: dict[str, Any], data: dict[str, Any]) -> bool:
    """An event matches a wait when every filter field equals the event's field."""
    return all(k in data and data[k] == v for k, v in filter_.items())


def _has_step(definition: Definition, name: str) -> bool:
    try:
        definition.step(name)
    except KeyError:
        return False
    return True


def _descendants(definition: Definition, name: str) -> list[str]:
    seen: dict[str, None] = {}
    todo = list(definition.dependents(name))
    while todo:
        step = todo.pop(0)
        if step not in seen:
            seen[step] = None
            todo.extend(definition.dependents(step))
    return list(seen)



