"""From drafts to the step graph: dependencies, conditional edges, error handlers.

Ordering rule: a step depends on the steps in ``depends_on`` when that key is
present (``[]`` makes a root); otherwise, if it has ``sequence`` s, on every step
whose sequence is the greatest sequence below s; otherwise it is a root. A
conditional's edges depend on it as well.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

import msgspec

from engine.core.definition.fields import Reader
from engine.core.definition.model import ErrorHandler, Step
from engine.core.definition.steps import Draft


def resolve(r: Reader, drafts: list[Draft]) -> list[Step]:
    sequences = sorted({d.step.sequence for d in drafts if d.step.sequence is not None})
    by_sequence: dict[int, dict[str, None]] = {}
    for d in drafts:
        if d.step.sequence is not None and d.step.name:
            by_sequence.setdefault(d.step.sequence, {})[d.step.name] = None
    steps = []
    for d in drafts:
        if d.declared is not None:
            deps = _declared(r, d)
        elif d.step.sequence is not None and (i := bisect.bisect_left(sequences, d.step.sequence)):
            deps = tuple(by_sequence[sequences[i - 1]])
        else:
            deps = ()
        steps.append(msgspec.structs.replace(d.step, depends_on=deps))
    first = {d.step.name: d for d in drafts if d.step.name and r.seen.get(d.step.name) == d.path}
    graph = {s.name: s.depends_on for s in steps if s.name in first}
    for cycle in cycles(graph):
        r.add(first[cycle[0]].deps_path, "dependency cycle: " + " -> ".join(cycle))
    return steps


def _declared(r: Reader, draft: Draft) -> tuple[str, ...]:
    deps: dict[str, None] = {}
    for j, dep in draft.declared or ():
        if dep == draft.step.name:
            r.add(f"{draft.deps_path}[{j}]", "a step cannot depend on itself")
        elif dep not in r.seen:
            r.add(f"{draft.deps_path}[{j}]", f"unknown step {dep!r}")
        else:
            deps[dep] = None
    return tuple(deps)


def attach(r: Reader, steps: list[Step], drafts: list[Draft],
           handlers: list[tuple[ErrorHandler, str]]) -> tuple[list[Step], tuple[ErrorHandler, ...]]:
    by_step: dict[str, tuple[ErrorHandler, str]] = {}
    for handler, path in handlers:
        if handler.step is not None and handler.step in by_step:
            r.add(path, f"step {handler.step!r} already has an error handler at {by_step[handler.step][1]}")
        elif handler.step is not None:
            by_step[handler.step] = (handler, path)
    # A handler without a step is the workflow-wide default for steps that have none.
    default = next((h for h, _ in handlers if h.step is None), None)
    attached, from_steps = [], []
    for step, draft in zip(steps, drafts):
        if step.on_error is not None:
            from_steps.append(step.on_error)
            if step.name in by_step:
                r.add(draft.on_failure_path, f"conflicts with the error handler at {by_step[step.name][1]}")
        elif step.name in by_step:
            step = msgspec.structs.replace(step, on_error=by_step[step.name][0])
        elif default is not None:
            step = msgspec.structs.replace(step, on_error=default)
        attached.append(step)
    return attached, tuple(h for h, _ in handlers) + tuple(from_steps)


def link_edges(r: Reader, steps: list[Step], drafts: list[Draft]) -> list[Step]:
    """A conditional's edges run after it: add it to their dependencies."""
    edges: dict[str, str] = {}
    for step, draft in zip(steps, drafts):
        if step.type != "conditional":
            continue
        for key in ("true_edge", "false_edge"):
            target = getattr(step, key)
            if target is None:
                continue
            if target not in r.seen or target == step.name:
                r.add(f"{draft.path}.{key}", f"unknown step {target!r}")
            else:
                edges[target] = step.name
    return [msgspec.structs.replace(s, depends_on=s.depends_on + (edges[s.name],))
            if s.name in edges and edges[s.name] not in s.depends_on else s for s in steps]


class Upstream:
    """Which steps run before which: each step's transitive dependencies, as one bit per step.

    Masks are ORed along a post-order walk, so a chain of thousands of steps
    costs one pass and a few kilobytes, not a set per step. Steps on a cycle
    (refused already) get what is reachable without looping.
    """

    def __init__(self, graph: Mapping[str, Sequence[str]]) -> None:
        self._bit = {name: 1 << i for i, name in enumerate(graph)}
        self._masks: dict[str, int] = {}
        for start in graph:
            if start not in self._masks:
                self._walk(graph, start)

    def _walk(self, graph: Mapping[str, Sequence[str]], start: str) -> None:
        masks, bit = self._masks, self._bit
        masks[start] = 0  # a cycle back here contributes nothing until the walk finishes it
        stack = [(start, iter(graph[start]))]
        while stack:
            node, deps = stack[-1]
            dep = next(deps, None)
            if dep is None:
                stack.pop()
                masks[node] = 0
                for d in graph[node]:
                    if d in bit:
                        masks[node] |= bit[d] | masks[d]
            elif dep in graph and dep not in masks:
                masks[dep] = 0
                stack.append((dep, iter(graph[dep])))

    def runs_before(self, dep: str, step: str) -> bool:
        return dep in self._bit and step in self._masks and bool(self._masks[step] & self._bit[dep])


def cycles(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Each dependency cycle once, as a closed walk; iterative, so long chains cannot overflow."""
    state: dict[str, bool] = {}  # True while on the DFS stack, False once finished
    found: list[list[str]] = []
    for start in graph:
        if start in state:
            continue
        state[start] = True
        stack = [(start, iter(graph[start]))]
        while stack:
            node, deps = stack[-1]
            nxt = next(deps, None)
            if nxt is None:
                state[node] = False
                stack.pop()
            elif state.get(nxt) is True:
                trail = [n for n, _ in stack]
                found.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state and nxt in graph:
                state[nxt] = True
                stack.append((nxt, iter(graph[nxt])))
    return found
