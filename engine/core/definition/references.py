"""Checks that need the whole step graph: ``compensates`` targets, compensate actions, and
which steps each template or condition reads.

A step's templates are rendered when it is dispatched (its output mapping and
failure handlers once it ran), and they see the state of the instance at that
moment. A step that is not upstream of it may not have run yet, or may be
running: the template would fail, or a condition silently read null, some of
the time. So a main-flow step may read only its transitive dependencies (and
itself, once it ran); compensation, which runs after the flow, any step; the
workflow output and a workflow-wide handler, any step of the main flow.
"""

from __future__ import annotations

from engine.core.definition.fields import ANY, FLOW, OWN, Read, Reader, did_you_mean
from engine.core.definition.linking import Upstream
from engine.core.definition.model import Step
from engine.core.definition.steps import Draft


def check_references(r: Reader, steps: list[Step], compensation: list[Step], drafts: list[Draft]) -> None:
    names = {s.name for s in steps}
    for step in compensation:
        if step.compensates is not None and step.compensates not in names:
            r.add(f"compensation.{step.name}.compensates", f"unknown step {step.compensates!r}")
    wants_compensation = [(s, d) for s, d in zip(steps, drafts)
                          if (s.on_error and s.on_error.action == "compensate")
                          or (s.on_timeout and s.on_timeout.action == "compensate")]
    if wants_compensation and not compensation:
        for _step, draft in wants_compensation:
            r.add(draft.path, "compensate needs a `compensation` block with steps")
    for step, draft in zip(steps, drafts):
        if step.type == "sub_workflow" and step.workflow is not None and not step.workflow.strip():
            r.add(f"{draft.path}.workflow", "must name a workflow")


def check_reads(r: Reader, steps: list[Step], compensation: list[Step]) -> None:
    """Every ``steps.<name>`` a template or condition reads names a step that has run by then."""
    if not r.reads:
        return
    main = {s.name: s.depends_on for s in steps if s.name}  # a duplicate's name is blank
    undo = {s.name for s in compensation if s.name}
    known = sorted(main.keys() | undo)
    order = Upstream(main)
    for read in r.reads:
        if read.step not in main and read.step not in undo:
            r.add(read.path, f"reads step {read.step!r}, which does not exist{did_you_mean(read.step, known)}")
        elif (message := _misread(read, undo, order)) is not None:
            r.add(read.path, message)


def _misread(read: Read, undo: set[str], order: Upstream) -> str | None:
    owner, target = read.owner, read.step
    if owner.scope == ANY:
        return None
    if target in undo:
        return f"reads compensation step {target!r}, which runs only after the main flow failed"
    if owner.scope == FLOW or owner.step is None:
        return None
    if target == owner.step:
        if owner.scope == OWN:
            return None
        return f"step {target!r} reads itself before it has run"
    if order.runs_before(target, owner.step):
        return None
    return (f"step {owner.step!r} reads step {target!r}, which is not upstream of it, so it may not have run: "
            f"add {target!r} to the depends_on of {owner.step!r} (or of a step it depends on)")
