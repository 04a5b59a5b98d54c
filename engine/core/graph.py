"""One decision in the making: the working state, the events emitted so far,
and the workflow graph logic every command shares (what runs next, what a
failure leads to, compensation). How a step of each type starts is in steps.py.

Pure: no I/O, no clock (``now`` is data), no randomness (jitter is derived
from the instance, step and attempt).
"""

from __future__ import annotations

import zlib
from typing import Any

import msgspec

from engine.core.definition import Definition, ErrorHandler, Step
from engine.core.evolve import evolve
from engine.core.language.conditions import evaluate_condition
from engine.core.language.expressions import MissingValue, TemplateError, render, render_endpoint
from engine.core.model import (
    STATUS_COMPENSATING,
    STATUS_RUNNING,
    STEP_COMPLETED,
    STEP_FAILED,
    STEP_PENDING,
    STEP_RETRYING,
    STEP_SCHEDULED,
    STEP_SKIPPED,
    CancelWorkflow,
    CommandRejected,
    CompensationStarted,
    Envelope,
    Event,
    NotificationScheduled,
    PauseWorkflow,
    ResumeWorkflow,
    RetryWorkflow,
    SignalWorkflow,
    StartWorkflow,
    State,
    StepCompleted,
    StepError,
    StepFailed,
    StepSkipped,
    WorkflowCompensated,
    WorkflowCompleted,
    WorkflowFailed,
)
from engine.core.steps import DISPATCH, TemplateFailure, next_loop_item, task_id_for

_DONE = frozenset({STEP_COMPLETED, STEP_SKIPPED})
_REMEMBERED = (StartWorkflow, CancelWorkflow, PauseWorkflow, ResumeWorkflow, RetryWorkflow, SignalWorkflow)


def step_done(st: Any) -> bool:
    """A step its dependents may run after: completed, skipped, or failed with `continue`."""
    return bool(st.status in _DONE or (st.status == STEP_FAILED and st.continued))


MAX_RETRY_AFTER_MS = 86_400_000  # a Retry-After beyond a day is read as a day


class Decision:
    __slots__ = ("_recorded", "definition", "envelope", "events", "now", "state")

    def __init__(self, state: State, definition: Definition, now: int, envelope: Envelope) -> None:
        self.state = state
        self.definition = definition
        self.now = now
        self.envelope = envelope
        self.events: list[Event] = []
        self._recorded = False

    def emit(self, event: Event) -> None:
        # The sender's cmd_id rides on the first event so a resend is recognised.
        # Only commands that the state cannot tell apart from their repeat need
        # it: a result, event or timer for an attempt no longer running is
        # recognised by the attempt, so their ids are not kept.
        if not self._recorded and self.envelope.cmd_id is not None and isinstance(self.envelope.command, _REMEMBERED):
            event = msgspec.structs.replace(event, cmd=self.envelope.cmd_id)
            self._recorded = True
        self.events.append(event)
        self.state = evolve(self.state, event, self.now)

    def reject(self, reason: str) -> None:
        tag = str(type(self.envelope.command).__struct_config__.tag)
        self.emit(CommandRejected(command=tag, reason=reason, command_id=self.envelope.key))

    # -- the graph -----------------------------------------------------------
    def advance(self, include_due_retries: bool = False) -> None:
        """Dispatch every step whose dependencies are done; finish when all are."""
        if self.state.status == STATUS_COMPENSATING:
            self.advance_compensation()
            return
        if self.state.status != STATUS_RUNNING:
            return
        for name, st in self.state.steps.items():
            if st.status == STEP_FAILED and not st.continued and name not in self.compensation_names():
                self.fail_workflow(name, st.error)
                return
        for step in self.definition.steps:  # loops between items continue
            st = self.state.step(step.name)
            if step.type == "loop" and st.status == STEP_SCHEDULED and st.items is not None \
                    and st.iteration in st.done:
                self.continue_loop(step)
                if self.state.status != STATUS_RUNNING:
                    return
        progressed = True
        while progressed and self.state.status == STATUS_RUNNING:
            progressed = False
            for step in self.definition.steps:
                st = self.state.step(step.name)
                if st.status == STEP_PENDING and all(step_done(self.state.step(d)) for d in step.depends_on):
                    self.start_step(step)
                    progressed = True
                elif include_due_retries and st.status == STEP_RETRYING:
                    if st.retry_at is not None and st.retry_at <= self.now:
                        self.dispatch(step, st.attempt + 1)
                        progressed = True
                if self.state.status != STATUS_RUNNING:
                    return
            include_due_retries = False
        if self.state.status == STATUS_RUNNING and all(
            step_done(self.state.step(s.name)) for s in self.definition.steps
        ):
            self.complete_workflow()

    def start_step(self, step: Step) -> None:
        """A ready step: skipped when its branch was not taken or its condition fails, else dispatched."""
        deps = [self.state.step(d) for d in step.depends_on]
        if deps and all(d.status == STEP_SKIPPED for d in deps):
            self.emit(StepSkipped(step=step.name, attempt=self.state.step(step.name).attempt,
                                  reason="every step it depends on was skipped"))
            return
        if step.condition is not None and step.type != "conditional":
            if not evaluate_condition(step.condition, self.scope()):
                self.emit(StepSkipped(step=step.name, attempt=self.state.step(step.name).attempt,
                                      reason=f"condition {step.condition!r} is false"))
                return
        self.dispatch(step, self.state.step(step.name).attempt + 1)

    def complete_step(self, step: Step, attempt: int, raw: Any, event_id: str | None = None,
                      call: dict[str, Any] | None = None) -> bool:
        """Complete a step with its result, mapped through the step's ``output`` when it has one."""
        output = raw
        if step.output is not None:
            extra = {"response": raw, "event": raw} if event_id is not None else {"response": raw}
            try:
                output = render(step.output, self.scope(**extra))
            except (MissingValue, TemplateError) as exc:
                self.fail_step(step.name, attempt, StepError(
                    message=f"cannot map the output of {step.name!r}: {_reason(exc)}", retryable=False,
                    kind="template"), call=call)
                return False
        self.emit(StepCompleted(step=step.name, attempt=attempt, output=output, event_id=event_id, call=call))
        return True

    def continue_loop(self, step: Step) -> None:
        try:
            next_loop_item(self, step)
        except (MissingValue, TemplateError, TemplateFailure) as exc:
            st = self.state.step(step.name)
            error = StepError(message=f"cannot render step {step.name!r}: {_reason(exc)}", retryable=False,
                              kind="template")
            self.fail_step(step.name, st.attempt + 1, error, st.iteration + 1)

    def dispatch(self, step: Step, attempt: int) -> None:
        try:
            DISPATCH[step.type](self, step, attempt)
        except (MissingValue, TemplateError, TemplateFailure) as exc:
            error = StepError(message=f"cannot render step {step.name!r}: {_reason(exc)}", retryable=False,
                              kind="template")
            self.fail_step(step.name, attempt, error)

    # -- failures ------------------------------------------------------------
    def fail_step(self, name: str, attempt: int, error: StepError, iteration: int | None = None,
                  call: dict[str, Any] | None = None) -> None:
        step = self.definition.step(name)
        st = self.state.step(name)
        policy = step.retry_policy
        used = attempt - st.budget_from
        handler = step.on_error
        # A service's Retry-After is a floor: never sooner than it asked, never later than the policy would.
        floor = min(max(error.retry_after_ms or 0, 0), MAX_RETRY_AFTER_MS)
        if error.retryable and used < policy.max_attempts:
            retry_at = self.now + max(policy.delay_ms(used, self.spread(name, attempt)), floor)
            self.emit(StepFailed(step=name, attempt=attempt, error=error, retry_at=retry_at, iteration=iteration,
                                 call=call))
            return
        if handler is not None and handler.action == "retry" and error.retryable \
                and st.handler_retries < handler.max_retries:
            self.emit(StepFailed(step=name, attempt=attempt, error=error, retry_at=self.now + max(handler.backoff_ms, floor),
                                 handler_retry=True, iteration=iteration, call=call))
            return
        continued = handler is not None and handler.action == "continue"
        self.emit(StepFailed(step=name, attempt=attempt, error=error, continued=continued, iteration=iteration,
                             call=call))
        self.after_final_failure(step, attempt, error)

    def after_final_failure(self, step: Step, attempt: int, error: StepError,
                            handler: ErrorHandler | None = None) -> None:
        handler = handler or step.on_error
        if handler is not None and handler.action == "notify" and handler.target:
            self.notify(step, attempt, error, handler.target, handler.endpoint)
        # A paused instance acts on the failure when resumed (advance -> fail_workflow);
        # a failed one stays failed until retried.
        self.advance()

    def fail_workflow(self, step: str | None, error: StepError | None) -> None:
        """A step failed for good: compensate when the definition can, else fail.

        ``terminate`` and ``notify`` (on_failure, or on_timeout for a timeout)
        fail outright; anything else compensates when there is a compensation block.
        """
        handler = None
        if step is not None:
            definition = self.definition.step(step)
            timed_out = error is not None and error.kind == "timeout" and definition.on_timeout is not None
            handler = definition.on_timeout if timed_out else definition.on_error
        explicit = handler is not None and handler.action in ("terminate", "notify", "fail")
        if self.definition.compensation and not explicit:
            self.start_compensation(step, error)
        else:
            self.emit(WorkflowFailed(step=step, error=error))

    def notify(self, step: Step, attempt: int, error: StepError, target: str, endpoint: str | None) -> None:
        details = {"workflow": self.state.workflow, "instance_id": self.state.id, "step": step.name,
                   "attempt": attempt,
                   "error": {"message": error.message, "kind": error.kind, "retryable": error.retryable}}
        try:
            rendered = render_endpoint(endpoint, self.scope(), details) if endpoint else None
        except (MissingValue, TemplateError):
            rendered = endpoint  # a notification goes out even when its endpoint cannot be filled
        self.emit(NotificationScheduled(
            step=step.name, attempt=attempt, task_id=task_id_for(self.state.id, step.name, attempt) + ":notify",
            queue=target, endpoint=rendered, input=details,
        ))

    def spread(self, step: str, attempt: int) -> float:
        return zlib.crc32(f"{self.state.id}:{step}:{attempt}".encode()) / 2**32

    # -- compensation (saga) -----------------------------------------------------
    def compensation_names(self) -> frozenset[str]:
        return frozenset(s.name for s in self.definition.compensation)

    def start_compensation(self, step: str | None, error: StepError | None) -> None:
        if not self.definition.compensation:
            self.emit(WorkflowFailed(step=step, error=error))
            return
        self.emit(CompensationStarted(steps=self.compensation_order(), step=step, error=error))
        self.advance_compensation()

    def compensation_order(self) -> list[str]:
        """Undo in reverse: by when the step each one compensates completed, else reverse definition order."""
        finished = {n: st.finished_ms or 0 for n, st in self.state.steps.items() if st.status == STEP_COMPLETED}
        order = list(reversed(self.definition.compensation))
        targeted = [s for s in order if s.compensates is not None]
        if not targeted:
            return [s.name for s in order]
        ranked = sorted((s for s in targeted if s.compensates in finished),
                        key=lambda s: finished[s.compensates or ""], reverse=True)
        return [s.name for s in ranked] + [s.name for s in order if s.compensates is None]

    def advance_compensation(self) -> None:
        for name in self.state.compensation:
            st = self.state.step(name)
            if step_done(st):
                continue
            if st.status == STEP_FAILED:
                message = f"compensation step {name!r} failed: {st.error.message if st.error else 'unknown'}"
                self.emit(WorkflowFailed(step=name, error=StepError(message=message, retryable=False,
                                                                    kind="compensation")))
                return
            if st.status == STEP_PENDING:
                self.start_step(self.definition.step(name))
                if self.state.status != STATUS_COMPENSATING or not step_done(self.state.step(name)):
                    return
                continue
            return  # in flight
        if self.state.status == STATUS_COMPENSATING:
            self.emit(WorkflowCompensated(step=self.state.failed_step, error=self.state.error))

    # -- completion ------------------------------------------------------------
    def complete_workflow(self) -> None:
        try:
            output = self.output()
        except (MissingValue, TemplateError) as exc:
            self.emit(WorkflowFailed(error=StepError(message=f"cannot build the workflow output: {_reason(exc)}",
                                                     retryable=False, kind="template")))
            return
        self.emit(WorkflowCompleted(output=output))

    def output(self) -> Any:
        spec = self.definition.output
        if isinstance(spec, dict) and spec.get("values") is not None:
            return render(spec["values"], self.scope())
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(schema, dict) and isinstance(schema.get("properties"), dict):
            return self.collect(list(schema["properties"]))
        sinks = [s.name for s in self.definition.steps if not self.definition.dependents(s.name)]
        return {name: self.state.step(name).output for name in sinks}

    def collect(self, names: list[str]) -> dict[str, Any]:
        """Fields named by the output schema, from the latest step output that has each, else the input."""
        done = sorted(((st.finished_ms or 0, i, st.output) for i, st in enumerate(self.state.steps.values())
                       if st.status == STEP_COMPLETED and isinstance(st.output, dict)), reverse=True)
        out: dict[str, Any] = {}
        for name in names:
            for _, _, output in done:
                if name in output:
                    out[name] = output[name]
                    break
            else:
                if name in self.state.context:
                    out[name] = self.state.context[name]
        return out

    # -- template scope ----------------------------------------------------------
    def scope(self, **extra: Any) -> dict[str, Any]:
        s = self.state
        steps = {
            name: {"output": st.output, "status": st.status, "completed": st.status == STEP_COMPLETED,
                   "skipped": st.status == STEP_SKIPPED, "attempt": st.attempt}
            for name, st in s.steps.items()
        }
        scope = {
            "input": s.context, "context": s.context, "steps": steps, "signals": s.signals,
            "workflow": {"id": s.id, "name": s.workflow, "version": s.def_version,
                         "correlation_id": s.correlation_id},
        }
        scope.update(extra)
        return scope

    def deadline(self) -> int | None:
        timeout = self.definition.timeout_ms
        return self.now + timeout if timeout else None


def _reason(exc: Exception) -> str:
    if isinstance(exc, MissingValue):
        return f"{exc.path} is not set"
    return str(exc)
