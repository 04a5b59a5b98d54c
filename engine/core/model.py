"""Wire messages and instance state, as msgspec Structs.

A tag is a storage contract: new fields get defaults; a field is never renamed
or retyped (streams.md lists every one). Commands arrive as entries with the
fields ``type``, ``id``, ``data`` and optional ``cmd_id``; ``data`` decodes into
the command class that ``type`` names. Events are stored with their ``type`` as
an entry field *and* inside ``data``, so ``data`` alone is self-describing.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

JSON = Any


class _Wire(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    pass


# --------------------------------------------------------------------------
# Commands (the inbox)
# --------------------------------------------------------------------------
class Command(_Wire, frozen=True, tag_field="type"):
    pass


class ParentRef(msgspec.Struct, frozen=True, kw_only=True):
    """The parent step a sub-workflow answers: its outcome becomes that step's result."""

    id: str
    step: str
    attempt: int


class Admission(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the engine's admission step decided for a start or retry of a workflow with
    ``concurrency`` (engine/workers/admission.py); the decider reads it as data."""

    outcome: str  # "run" | "queue" | "cancel" (cancel_newest) | "refuse" (a retry with no free slot)
    key: str  # the rendered concurrency key
    limit: int
    reason: str | None = None


class StartWorkflow(Command, frozen=True, kw_only=True, tag="start"):
    workflow: str
    version: str | None = None
    context: dict[str, JSON] = {}
    correlation_id: str | None = None
    parent: ParentRef | None = None
    traceparent: str | None = None  # W3C trace context: every task of the instance carries it
    priority: int = 0  # 0-9, higher is more urgent: orders the admission queue
    tenant: str | None = None  # whose start this is: a concurrency key may read it ({{ tenant }})
    admission: Admission | None = None  # set by the engine worker, never by a sender (it is overwritten)


class StepError(_Wire, frozen=True):
    message: str
    retryable: bool = True
    kind: str | None = None  # "timeout", "template", "handler", "http", ...
    type: str | None = None  # exception class name, when a handler raised
    status: int | None = None  # the HTTP status a service answered, when it answered
    retry_after_ms: int | None = None  # the service's Retry-After: the floor of the next backoff


class CompleteStep(Command, frozen=True, kw_only=True, tag="step.completed"):
    step: str
    attempt: int
    task_id: str | None = None
    output: JSON = None
    iteration: int | None = None  # which item of a loop, or rule of a validation step
    # What the HTTP call looked like (method, url, status, duration_ms, headers, body). Kept loose
    # on purpose: a malformed one is trimmed (core/calls.py), never a reason to lose the result.
    call: JSON = None


class FailStep(Command, frozen=True, kw_only=True, tag="step.failed"):
    step: str
    attempt: int
    error: StepError
    task_id: str | None = None
    iteration: int | None = None
    call: JSON = None


class CancelWorkflow(Command, frozen=True, kw_only=True, tag="cancel"):
    reason: str | None = None


class PauseWorkflow(Command, frozen=True, kw_only=True, tag="pause"):
    reason: str | None = None


class ResumeWorkflow(Command, frozen=True, kw_only=True, tag="resume"):
    pass


class RetryWorkflow(Command, frozen=True, kw_only=True, tag="retry"):
    """Run a failed instance again: every failed step gets a fresh attempt budget.

    With ``from_step`` the run rewinds to that step (it and everything after it
    run again), optionally with edited ``input`` for it.
    """

    from_step: str | None = None
    input: JSON = None
    admission: Admission | None = None  # set by the engine worker for a workflow with concurrency


class AdmitWorkflow(Command, frozen=True, kw_only=True, tag="admit"):
    """A queued instance got a concurrency slot: it starts (sent by the engine worker)."""

    key: str | None = None


class SignalWorkflow(Command, frozen=True, kw_only=True, tag="signal"):
    """A named payload for a running instance; templates read it as signals.<name>."""

    name: str
    payload: JSON = None


class DeliverEvent(Command, frozen=True, kw_only=True, tag="event"):
    """An external event routed to a waiting step (written by the router)."""

    step: str
    attempt: int
    event_type: str
    event_id: str
    data: dict[str, JSON] = {}
    correlation_id: str | None = None


class FireTimer(Command, frozen=True, kw_only=True, tag="timer"):
    """A durable timer that came due (moved from the timer set by a script)."""

    kind: str  # "retry" | "timeout" | "delay" | "workflow_timeout" (step "" and attempt 0)
    step: str
    attempt: int


AnyCommand = Union[  # noqa: UP007 - a long tagged union reads better one member a line
    StartWorkflow,
    CompleteStep,
    FailStep,
    CancelWorkflow,
    PauseWorkflow,
    ResumeWorkflow,
    RetryWorkflow,
    SignalWorkflow,
    DeliverEvent,
    FireTimer,
    AdmitWorkflow,
]

COMMAND_TYPES: dict[str, type[Command]] = {
    c.__struct_config__.tag: c for c in AnyCommand.__args__  # type: ignore[attr-defined]
}


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """A decoded inbox entry: who it is for, how to recognise a repeat, what it says."""

    instance_id: str
    entry_id: str
    command: AnyCommand
    cmd_id: str | None = None  # the sender's idempotency key, when given

    @property
    def key(self) -> str:
        return self.cmd_id or self.entry_id


# --------------------------------------------------------------------------
# Events (instance streams and the partition feeds)
# --------------------------------------------------------------------------
class Event(_Wire, frozen=True, tag_field="type"):
    # The sender's cmd_id that caused this event, recorded so a resent command
    # with the same cmd_id is recognised after a reload.
    cmd: str | None = None


class WorkflowCreated(Event, frozen=True, kw_only=True, tag="workflow.created"):
    instance_id: str
    workflow: str
    version: str
    context: dict[str, JSON] = {}
    correlation_id: str | None = None
    parent: ParentRef | None = None
    traceparent: str | None = None
    priority: int = 0
    tenant: str | None = None
    concurrency_key: str | None = None  # the slot this instance holds or waits for, when its workflow has one


class WorkflowQueued(Event, frozen=True, kw_only=True, tag="workflow.queued"):
    """No concurrency slot was free: the instance waits (no tasks) until an ``admit`` starts it."""

    key: str
    limit: int
    priority: int = 0


class WorkflowStarted(Event, frozen=True, kw_only=True, tag="workflow.started"):
    timeout_at: int | None = None  # the workflow-level deadline (config.timeout), when there is one


class StepScheduled(Event, frozen=True, kw_only=True, tag="workflow.step_scheduled"):
    step: str
    attempt: int
    task_id: str
    queue: str
    endpoint: str | None = None
    input: JSON = None
    timeout_at: int | None = None
    iteration: int | None = None  # a loop item or validation rule, by position
    items: list[JSON] | None = None  # a loop's resolved items, on its first iteration
    method: str | None = None  # the step's HTTP-style method, passed to the handler
    # The HTTP call's rendered url and headers, its status rules and timeout (only the keys set).
    http: dict[str, JSON] | None = None
    run: int | None = None  # the attempt this run of the step began at (the idempotency key's); None: attempt


class StepWaiting(Event, frozen=True, kw_only=True, tag="workflow.step_waiting"):
    step: str
    attempt: int
    event_type: str
    filter: dict[str, JSON] = {}
    timeout_at: int | None = None


class StepCompleted(Event, frozen=True, kw_only=True, tag="workflow.step_completed"):
    step: str
    attempt: int
    output: JSON = None
    event_id: str | None = None  # for an event wait: the ff:events entry that satisfied it
    call: dict[str, JSON] | None = None  # the HTTP call that answered (bounded, core/calls.py)


class StepIterationCompleted(Event, frozen=True, kw_only=True, tag="workflow.step_iteration_completed"):
    step: str
    attempt: int
    iteration: int
    output: JSON = None
    call: dict[str, JSON] | None = None


class StepSkipped(Event, frozen=True, kw_only=True, tag="workflow.step_skipped"):
    step: str
    attempt: int  # the attempts the step had used (0 when it never ran)
    reason: str


class StepDelayed(Event, frozen=True, kw_only=True, tag="workflow.step_delayed"):
    step: str
    attempt: int
    until: int


class ChildStarted(Event, frozen=True, kw_only=True, tag="workflow.child_started"):
    step: str
    attempt: int
    child_id: str
    workflow: str
    version: str | None = None
    input: dict[str, JSON] = {}
    timeout_at: int | None = None


class StepFailed(Event, frozen=True, kw_only=True, tag="workflow.step_failed"):
    step: str
    attempt: int
    error: StepError
    iteration: int | None = None
    retry_at: int | None = None  # set when another attempt is scheduled
    handler_retry: bool = False  # that attempt comes from an error handler's retry budget
    continued: bool = False  # final, but the error handler lets the workflow go on
    call: dict[str, JSON] | None = None


class NotificationScheduled(Event, frozen=True, kw_only=True, tag="workflow.notification_scheduled"):
    step: str
    attempt: int
    task_id: str
    queue: str
    endpoint: str | None = None
    input: JSON = None


class WorkflowPaused(Event, frozen=True, kw_only=True, tag="workflow.paused"):
    reason: str | None = None


class WorkflowResumed(Event, frozen=True, kw_only=True, tag="workflow.resumed"):
    pass


class WorkflowRetried(Event, frozen=True, kw_only=True, tag="workflow.retried"):
    steps: list[str] = []  # the steps that run again (reset to pending)
    timeout_at: int | None = None  # a retried run gets a fresh workflow deadline
    from_step: str | None = None
    input: JSON = None  # edited input for from_step, kept in the history as given
    # With from_step: the steps of `steps` that start a new run (from_step and after it), when
    # that is not all of them (failed steps elsewhere resume their run); empty: all of them.
    rewound: list[str] = []


class SignalReceived(Event, frozen=True, kw_only=True, tag="workflow.signal_received"):
    name: str
    payload: JSON = None


class CompensationStarted(Event, frozen=True, kw_only=True, tag="workflow.compensating"):
    steps: list[str] = []  # the compensation steps, in the order they will run
    step: str | None = None  # the step whose failure started it
    error: StepError | None = None


class WorkflowCompensated(Event, frozen=True, kw_only=True, tag="workflow.compensated"):
    step: str | None = None
    error: StepError | None = None


class WorkflowCompleted(Event, frozen=True, kw_only=True, tag="workflow.completed"):
    output: JSON = None


class WorkflowFailed(Event, frozen=True, kw_only=True, tag="workflow.failed"):
    step: str | None = None
    error: StepError | None = None


class WorkflowCancelled(Event, frozen=True, kw_only=True, tag="workflow.cancelled"):
    reason: str | None = None


class HistoryLarge(Event, frozen=True, kw_only=True, tag="workflow.history_large"):
    """The history crossed FOLDFLOW_HISTORY_WARN_EVENTS: a warning, nothing changes."""

    events: int
    threshold: int


class CommandRejected(Event, frozen=True, kw_only=True, tag="workflow.command_rejected"):
    command: str
    reason: str
    command_id: str | None = None


AnyEvent = Union[  # noqa: UP007 - a long tagged union reads better one member a line
    WorkflowCreated,
    WorkflowStarted,
    WorkflowQueued,
    StepScheduled,
    StepWaiting,
    StepCompleted,
    StepFailed,
    StepIterationCompleted,
    StepSkipped,
    StepDelayed,
    ChildStarted,
    NotificationScheduled,
    WorkflowPaused,
    WorkflowResumed,
    WorkflowRetried,
    SignalReceived,
    CompensationStarted,
    WorkflowCompensated,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowCancelled,
    HistoryLarge,
    CommandRejected,
]

EVENT_TYPES: tuple[str, ...] = tuple(
    e.__struct_config__.tag for e in AnyEvent.__args__  # type: ignore[attr-defined]
)


# --------------------------------------------------------------------------
# Tasks (what an activity worker receives)
# --------------------------------------------------------------------------
class TaskData(msgspec.Struct, kw_only=True, omit_defaults=True):
    service: str
    endpoint: str | None = None
    input: JSON = None
    context: dict[str, JSON] = {}
    workflow: str | None = None
    correlation_id: str | None = None
    kind: str = "step"  # "step" | "notification"
    iteration: int | None = None  # which loop item or validation rule
    method: str | None = None
    idempotency_key: str | None = None  # the same for every delivery and retry of one run of the step
    http: dict[str, JSON] | None = None  # StepScheduled.http
    traceparent: str | None = None


class Task(msgspec.Struct, frozen=True, kw_only=True):
    """What a handler receives: the entry fields plus the decoded data."""

    task_id: str
    instance_id: str
    step: str
    attempt: int
    reply_to: str
    service: str
    endpoint: str | None
    input: JSON
    context: dict[str, JSON]
    workflow: str | None = None
    correlation_id: str | None = None
    kind: str = "step"
    iteration: int | None = None
    method: str | None = None
    idempotency_key: str | None = None
    http: dict[str, JSON] | None = None
    traceparent: str | None = None
    entry_id: str = ""
    queue_key: str = ""


# --------------------------------------------------------------------------
# State (folded from events; never stored)
# --------------------------------------------------------------------------
STEP_PENDING = "pending"
STEP_SCHEDULED = "scheduled"
STEP_WAITING = "waiting"
STEP_RETRYING = "retrying"
STEP_COMPLETED = "completed"
STEP_FAILED = "failed"
STEP_SKIPPED = "skipped"
STEP_DELAYED = "delayed"
STEP_CHILD = "child_running"

STATUS_NONE = "none"  # no events yet: the instance does not exist
STATUS_CREATED = "created"
STATUS_QUEUED = "queued"  # waiting for a concurrency slot
STATUS_RUNNING = "running"
STATUS_PAUSED = "paused"
STATUS_FAILED = "failed"
STATUS_COMPLETED = "completed"
STATUS_CANCELLED = "cancelled"
STATUS_COMPENSATING = "compensating"
STATUS_COMPENSATED = "compensated"
TERMINAL = frozenset({STATUS_COMPLETED, STATUS_CANCELLED, STATUS_COMPENSATED})


class StepState(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    status: str = STEP_PENDING
    attempt: int = 0
    budget_from: int = 0  # attempts before this number belong to an earlier budget
    handler_retries: int = 0
    task_id: str | None = None
    output: JSON = None
    error: StepError | None = None
    wait: StepWaiting | None = None
    timeout_at: int | None = None
    retry_at: int | None = None
    continued: bool = False  # failed, but the workflow continues past it
    started_ms: int | None = None
    finished_ms: int | None = None
    reason: str | None = None  # why it was skipped
    iteration: int = 0  # a loop's current item
    items: list[JSON] | None = None  # a loop's items
    results: list[JSON] = []  # per-item (loop) or per-rule (validation) outputs so far
    done: list[int] = []  # which items / rules completed (validation: at this attempt)
    child_id: str | None = None
    run: int | None = None  # the attempt the current run began at; None: the next dispatch starts a run


class State(msgspec.Struct, kw_only=True):
    """One instance, folded. Treat as immutable: ``fold`` copies before it writes."""

    id: str = ""
    status: str = STATUS_NONE
    version: int = 0
    workflow: str | None = None
    def_version: str | None = None
    context: dict[str, JSON] = {}
    correlation_id: str | None = None
    steps: dict[str, StepState] = {}
    output: JSON = None
    error: StepError | None = None
    failed_step: str | None = None
    created_ms: int | None = None
    updated_ms: int | None = None
    finished_ms: int | None = None
    timeout_at: int | None = None
    seen: frozenset[str] = frozenset()
    last_events: dict[str, str] = {}  # wait signature (type + filter) -> the last ff:events entry a wait took
    parent: ParentRef | None = None
    signals: dict[str, JSON] = {}
    overrides: dict[str, JSON] = {}  # edited step inputs from retry --from-step --input
    compensation: list[str] = []  # the compensation steps in run order, once started
    traceparent: str | None = None
    priority: int = 0
    tenant: str | None = None
    concurrency_key: str | None = None

    def step(self, name: str) -> StepState:
        return self.steps.get(name) or _PENDING


_PENDING = StepState()

INITIAL = State()


# --------------------------------------------------------------------------
# Codecs, built once
# --------------------------------------------------------------------------
encode = msgspec.json.Encoder().encode
decode_event = msgspec.json.Decoder(AnyEvent).decode
_command_decoders = {t: msgspec.json.Decoder(c) for t, c in COMMAND_TYPES.items()}
decode_task_data = msgspec.json.Decoder(TaskData).decode


def decode_command(type_: str, data: bytes) -> Command:
    """Decode an inbox entry's ``data``; raises KeyError or msgspec errors."""
    return _command_decoders[type_].decode(data)
