"""decide: what a command causes, as events. Pure: no I/O, no clock, no randomness.

``now`` arrives as data (the worker stamps it), template rendering is a pure
function of the instance's state, and a command that does not fit the state is
answered with an event (``workflow.command_rejected``) or, when it is merely a
repeat or arrives too late (a result for an attempt that is no longer running),
with no events at all: the worker counts those and acknowledges them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .definition import Definition, Step
from .evolve import evolve
from .expressions import MissingValue, TemplateError, render, render_endpoint
from .model import (
    STATUS_CANCELLED,
    STATUS_COMPLETED,
    STATUS_CREATED,
    STATUS_FAILED,
    STATUS_NONE,
    STATUS_PAUSED,
    STATUS_RUNNING,
    STEP_COMPLETED,
    STEP_FAILED,
    STEP_PENDING,
    STEP_RETRYING,
    STEP_SCHEDULED,
    STEP_WAITING,
    CancelWorkflow,
    CommandRejected,
    CompleteStep,
    DeliverEvent,
    Envelope,
    Event,
    FailStep,
    FireTimer,
    NotificationScheduled,
    PauseWorkflow,
    ResumeWorkflow,
    RetryWorkflow,
    StartWorkflow,
    State,
    StepCompleted,
    StepError,
    StepFailed,
    StepScheduled,
    StepWaiting,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowCreated,
    WorkflowFailed,
    WorkflowPaused,
    WorkflowResumed,
    WorkflowRetried,
    WorkflowStarted,
)

# Which statuses accept which control command (the instance state machine).
_CANCELLABLE = frozenset({STATUS_CREATED, STATUS_RUNNING, STATUS_PAUSED, STATUS_FAILED})
# A step result is recorded while the instance can still use it.
_ACCEPTS_RESULTS = frozenset({STATUS_RUNNING, STATUS_PAUSED, STATUS_FAILED})


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
    decision = _Decision(state, definition, now, envelope)
    handler = _HANDLERS.get(type(command))
    if handler is not None:
        handler(decision, command)
    return decision.events, decision.state


def task_id_for(instance_id: str, step: str, attempt: int) -> str:
    return f"{instance_id}:{step}:{attempt}"


def step_done(st: Any) -> bool:
    """A step its dependents may run after: completed, or failed with `continue`."""
    return bool(st.status == STEP_COMPLETED or (st.status == STEP_FAILED and st.continued))


class _Decision:
    __slots__ = ("state", "definition", "now", "envelope", "events", "_recorded")

    def __init__(self, state: State, definition: Definition, now: int, envelope: Envelope) -> None:
        self.state = state
        self.definition = definition
        self.now = now
        self.envelope = envelope
        self.events: list[Event] = []
        self._recorded = False

    def emit(self, event: Event) -> None:
        # The sender's cmd_id rides on the first event so a resend is recognised.
        if not self._recorded and self.envelope.cmd_id is not None:
            event = _with_cmd(event, self.envelope.cmd_id)
            self._recorded = True
        self.events.append(event)
        self.state = evolve(self.state, event, self.now)

    def reject(self, reason: str) -> None:
        self.emit(
            CommandRejected(
                command=_tag(self.envelope.command),
                reason=reason,
                command_id=self.envelope.key,
            )
        )

    # -- the instance graph ------------------------------------------------
    def advance(self, include_due_retries: bool = False) -> None:
        """Dispatch every step whose dependencies are done; finish when all are."""
        if self.state.status != STATUS_RUNNING:
            return
        steps = self.state.steps
        for name, st in steps.items():
            if st.status == STEP_FAILED and not st.continued:
                self.emit(WorkflowFailed(step=name, error=st.error))
                return
        for step in self.definition.steps:
            st = self.state.step(step.name)
            if st.status == STEP_PENDING:
                if all(step_done(self.state.step(dep)) for dep in step.depends_on):
                    self.dispatch(step, st.attempt + 1)
            elif include_due_retries and st.status == STEP_RETRYING:
                if st.retry_at is not None and st.retry_at <= self.now:
                    self.dispatch(step, st.attempt + 1)
            if self.state.status != STATUS_RUNNING:
                return
        if all(step_done(self.state.step(s.name)) for s in self.definition.steps):
            self.emit(WorkflowCompleted(output=self._output()))

    def dispatch(self, step: Step, attempt: int) -> None:
        scope = self.scope()
        timeout_at = self.now + step.timeout_ms if step.timeout_ms else None
        try:
            if step.type == "event_wait":
                assert step.event_type is not None
                filter_ = render(dict(step.event_filter), scope)
                self.emit(
                    StepWaiting(
                        step=step.name,
                        attempt=attempt,
                        event_type=step.event_type,
                        filter=filter_,
                        timeout_at=timeout_at,
                    )
                )
                return
            assert step.service is not None
            endpoint = render_endpoint(step.endpoint, scope) if step.endpoint else None
            payload = render(step.input, scope) if step.input is not None else {}
        except (MissingValue, TemplateError) as exc:
            error = StepError(message=f"cannot render step {step.name!r}: {_reason(exc)}", retryable=False, kind="template")
            self.fail_step(step.name, attempt, error)
            return
        self.emit(
            StepScheduled(
                step=step.name,
                attempt=attempt,
                task_id=task_id_for(self.state.id, step.name, attempt),
                queue=step.service,
                endpoint=endpoint,
                input=payload,
                timeout_at=timeout_at,
            )
        )

    def fail_step(self, name: str, attempt: int, error: StepError) -> None:
        step = self.definition.step(name)
        st = self.state.step(name)
        policy = step.retry_policy
        used = attempt - st.budget_from
        handler = step.on_error
        if error.retryable and used < policy.max_attempts:
            retry_at = self.now + policy.delay_ms(used)
            self.emit(StepFailed(step=name, attempt=attempt, error=error, retry_at=retry_at))
            return
        if (
            handler is not None
            and handler.action == "retry"
            and error.retryable
            and st.handler_retries < handler.max_retries
        ):
            retry_at = self.now + handler.backoff_ms
            self.emit(StepFailed(step=name, attempt=attempt, error=error, retry_at=retry_at, handler_retry=True))
            return
        continued = handler is not None and handler.action == "continue"
        self.emit(StepFailed(step=name, attempt=attempt, error=error, continued=continued))
        self.after_final_failure(step, attempt, error)

    def after_final_failure(self, step: Step, attempt: int, error: StepError) -> None:
        handler = step.on_error
        if handler is not None and handler.action == "notify" and handler.target:
            self.notify(step, attempt, error, handler.target, handler.endpoint)
        self.advance()

    def notify(self, step: Step, attempt: int, error: StepError, target: str, endpoint: str | None) -> None:
        try:
            rendered = render_endpoint(endpoint, self.scope()) if endpoint else None
        except (MissingValue, TemplateError):
            rendered = endpoint  # a notification goes out even when its endpoint cannot be filled
        self.emit(
            NotificationScheduled(
                step=step.name,
                attempt=attempt,
                task_id=task_id_for(self.state.id, step.name, attempt) + ":notify",
                queue=target,
                endpoint=rendered,
                input={
                    "workflow": self.state.workflow,
                    "instance_id": self.state.id,
                    "step": step.name,
                    "attempt": attempt,
                    "error": {"message": error.message, "kind": error.kind, "retryable": error.retryable},
                },
            )
        )

    def deadline(self) -> int | None:
        timeout = self.definition.timeout_ms
        return self.now + timeout if timeout else None

    # -- template scope ----------------------------------------------------
    def scope(self) -> dict[str, Any]:
        s = self.state
        steps = {
            name: {
                "output": st.output,
                "status": st.status,
                "completed": st.status == STEP_COMPLETED,
                "attempt": st.attempt,
            }
            for name, st in s.steps.items()
        }
        return {
            "input": s.context,
            "context": s.context,
            "steps": steps,
            "workflow": {
                "id": s.id,
                "name": s.workflow,
                "version": s.def_version,
                "correlation_id": s.correlation_id,
            },
        }

    def _output(self) -> dict[str, Any]:
        sinks = [s.name for s in self.definition.steps if not self.definition.dependents(s.name)]
        return {name: self.state.step(name).output for name in sinks}


# ---------------------------------------------------------------------------
# One function per command
# ---------------------------------------------------------------------------
def _start(d: _Decision, cmd: StartWorkflow) -> None:
    if d.state.status != STATUS_NONE:
        return  # a second start for the same id: idempotent, changes nothing
    d.emit(
        WorkflowCreated(
            instance_id=d.envelope.instance_id,
            workflow=d.definition.name,
            version=d.definition.version,
            context=cmd.context,
            correlation_id=cmd.correlation_id,
        )
    )
    d.emit(WorkflowStarted(timeout_at=d.deadline()))
    d.advance()


def _current_attempt(d: _Decision, step: str, attempt: int, task_id: str | None, live: str) -> bool:
    """Is this result for the attempt that is running now? Anything else is stale."""
    if d.state.status not in _ACCEPTS_RESULTS or not _has_step(d.definition, step):
        return False
    st = d.state.step(step)
    if st.status != live or st.attempt != attempt:
        return False
    return task_id is None or st.task_id is None or task_id == st.task_id


def _complete(d: _Decision, cmd: CompleteStep) -> None:
    if not _current_attempt(d, cmd.step, cmd.attempt, cmd.task_id, STEP_SCHEDULED):
        return
    d.emit(StepCompleted(step=cmd.step, attempt=cmd.attempt, output=cmd.output))
    d.advance()


def _fail(d: _Decision, cmd: FailStep) -> None:
    if not _current_attempt(d, cmd.step, cmd.attempt, cmd.task_id, STEP_SCHEDULED):
        return
    d.fail_step(cmd.step, cmd.attempt, cmd.error)


def _event(d: _Decision, cmd: DeliverEvent) -> None:
    if not _current_attempt(d, cmd.step, cmd.attempt, None, STEP_WAITING):
        return
    wait = d.state.step(cmd.step).wait
    if wait is None or wait.event_type != cmd.event_type or not matches(wait.filter, cmd.data):
        return
    d.emit(StepCompleted(step=cmd.step, attempt=cmd.attempt, output=cmd.data, event_id=cmd.event_id))
    d.advance()


def _timer(d: _Decision, cmd: FireTimer) -> None:
    if cmd.kind == "workflow_timeout":
        if d.state.status in (STATUS_RUNNING, STATUS_PAUSED) and d.state.timeout_at is not None:
            error = StepError(
                message=f"workflow timed out after {d.definition.timeout_ms} ms", retryable=False, kind="timeout"
            )
            d.emit(WorkflowFailed(error=error))
        return
    if cmd.kind == "retry":
        st = d.state.step(cmd.step)
        if d.state.status == STATUS_RUNNING and st.status == STEP_RETRYING and st.attempt == cmd.attempt:
            d.dispatch(d.definition.step(cmd.step), cmd.attempt + 1)
        return
    if cmd.kind == "timeout":
        st = d.state.step(cmd.step)
        live = st.status if st.status in (STEP_SCHEDULED, STEP_WAITING) else STEP_SCHEDULED
        if not _current_attempt(d, cmd.step, cmd.attempt, None, live):
            return
        what = f"event {st.wait.event_type!r}" if st.wait is not None else "the step's result"
        step = d.definition.step(cmd.step)
        error = StepError(
            message=f"timed out after {step.timeout_ms} ms waiting for {what}",
            retryable=True,
            kind="timeout",
        )
        d.fail_step(cmd.step, cmd.attempt, error)


def _cancel(d: _Decision, cmd: CancelWorkflow) -> None:
    if d.state.status not in _CANCELLABLE:
        d.reject(f"cannot cancel an instance that is {d.state.status}")
        return
    d.emit(WorkflowCancelled(reason=cmd.reason))


def _pause(d: _Decision, cmd: PauseWorkflow) -> None:
    if d.state.status != STATUS_RUNNING:
        d.reject(f"cannot pause an instance that is {d.state.status}")
        return
    d.emit(WorkflowPaused(reason=cmd.reason))


def _resume(d: _Decision, cmd: ResumeWorkflow) -> None:
    if d.state.status != STATUS_PAUSED:
        d.reject(f"cannot resume an instance that is {d.state.status}")
        return
    d.emit(WorkflowResumed())
    d.advance(include_due_retries=True)


def _retry(d: _Decision, cmd: RetryWorkflow) -> None:
    if d.state.status != STATUS_FAILED:
        d.reject(f"cannot retry an instance that is {d.state.status}")
        return
    failed = [n for n, st in d.state.steps.items() if st.status == STEP_FAILED and not st.continued]
    d.emit(WorkflowRetried(steps=failed, timeout_at=d.deadline()))
    for name in failed:
        d.dispatch(d.definition.step(name), d.state.step(name).attempt + 1)
        if d.state.status != STATUS_RUNNING:
            return
    d.advance(include_due_retries=True)


_HANDLERS: dict[type, Any] = {
    StartWorkflow: _start,
    CompleteStep: _complete,
    FailStep: _fail,
    DeliverEvent: _event,
    FireTimer: _timer,
    CancelWorkflow: _cancel,
    PauseWorkflow: _pause,
    ResumeWorkflow: _resume,
    RetryWorkflow: _retry,
}


def matches(filter_: dict[str, Any], data: dict[str, Any]) -> bool:
    """An event matches a wait when every filter field equals the event's field."""
    return all(k in data and data[k] == v for k, v in filter_.items())


def _with_cmd(event: Event, cmd: str) -> Event:
    return msgspec.structs.replace(event, cmd=cmd)


def _has_step(definition: Definition, name: str) -> bool:
    try:
        definition.step(name)
    except KeyError:
        return False
    return True


def _tag(command: Any) -> str:
    return str(type(command).__struct_config__.tag)


def _reason(exc: Exception) -> str:
    if isinstance(exc, MissingValue):
        return f"{exc.path} is not set"
    return str(exc)
