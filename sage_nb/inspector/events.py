"""Pure functions: a step event, a breakpoint hit, a queue -> what the side panel and the graph show.

Step mode adds three pieces to the view model: the current event (its text, its routing
explanations, the instance that moved and the packets to animate along their edges), the
scrubber (position, end, what moves next) and a breakpoint hit with the queue contents of
its instance. Nodes and edges are named by their ids in the view on show, so the browser
finds them with one lookup (``.sage-packet[data-edge="split[0]->count[2]"]``).

>>> from sage_nb.runtime.recording import StepEvent
>>> ev = StepEvent(3, "packet", "split[0]", seq=1, payload="'a b'", sender="lines[0]",
...                targets=("count[2]", "count[0]"), outputs=("'a'", "'b'"))
>>> event_headline(ev)
"split[0] took packet #1 'a b' from lines[0]"
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..metrics import JobSnapshot
from .tables import connection_ids, logical_edge_ids, short_repr

__all__ = ["breakpoint_view", "edge_id", "event_headline", "event_view", "node_id", "queue_rows",
           "stepper_view"]


def node_id(snap: JobSnapshot, instance: str | None, view: str) -> str:
    """The id of ``instance``'s node in ``view``: itself (physical) or its operator (logical)."""
    if not instance:
        return ""
    if view == "physical":
        return instance
    return next((t.operator for t in snap.tasks if t.name == instance), instance)


def edge_id(snap: JobSnapshot, source: str | None, target: str | None, view: str) -> str:
    """The id of the edge ``source`` -> ``target`` (instances) in ``view``; '' when there is none."""
    if not source or not target:
        return ""
    if view == "physical":
        for cid, c in zip(connection_ids(snap), snap.connections, strict=True):
            if c.source == source and c.target == target:
                return cid
        return ""
    src, dst = node_id(snap, source, view), node_id(snap, target, view)
    for eid, e in zip(logical_edge_ids(snap), snap.logical_edges, strict=True):
        if e[0] == src and e[1] == dst:
            return eid
    return ""


def event_headline(ev: Any) -> str:
    """What happened, in words: 'count[1] took packet #4 'a' from split[0]'."""
    what = f"packet #{ev.seq} {ev.payload}" if ev.seq is not None else "a packet"
    if ev.kind == "packet":
        return f"{ev.instance} emitted {what}" if ev.sender is None else \
            f"{ev.instance} took {what} from {ev.sender}"
    if ev.kind == "stop":
        return f"{ev.instance} took a stop signal from {ev.sender}"
    if ev.kind == "finish":
        return f"{ev.instance} finished its stream" + (": stop signals go downstream" if ev.targets else "")
    if ev.kind == "deliver":
        return f"{ev.instance} delivered a waiting {'stop signal' if ev.seq is None else what}"
    if ev.kind == "discard":
        return f"{ev.instance} discarded {what} (the job is failing)"
    return f"{ev.instance}: {ev.error or ev.kind}"


def _moves(snap: JobSnapshot, ev: Any, view: str) -> list[dict[str, Any]]:
    """One packet (or stop signal) per delivery of the event, on the edge it travels."""
    moves = []
    for k, target in enumerate(ev.targets):
        output = ev.outputs[k] if k < len(ev.outputs) else ""
        moves.append({"edge": edge_id(snap, ev.instance, target, view), "target": target,
                      "node": node_id(snap, target, view), "label": short_repr(output, 14),
                      "kind": "stop" if output == "stop" else "packet"})
    return moves


def event_view(ev: Any, snap: JobSnapshot, view: str) -> dict[str, Any]:
    """The current step event for the side panel and the graph ({} before the first step)."""
    if ev is None:
        return {}
    sends = [f"{out} → {t}" for t, out in zip(ev.targets, ev.outputs, strict=False)]
    return {"index": ev.index, "kind": ev.kind, "instance": ev.instance,
            "node": node_id(snap, ev.instance, view), "text": str(ev), "title": event_headline(ev),
            "sender": ev.sender or "", "seq": ev.seq, "payload": ev.payload or "",
            "targets": list(ev.targets), "outputs": list(ev.outputs), "sends": sends,
            "routes": list(ev.routes), "error": ev.error or "",
            "in_edge": edge_id(snap, ev.sender, ev.instance, view), "moves": _moves(snap, ev, view)}


def stepper_view(snap: JobSnapshot, *, position: int, maximum: int, done: bool, readonly: bool,
                 upcoming: str | None, policy: str, truncated: bool = False,
                 view: str = "physical") -> dict[str, Any]:
    """The scrubber and the step buttons: where we are, how far it goes, what moves next."""
    at_end = done and position >= maximum
    return {"position": position, "max": maximum, "done": done, "readonly": readonly,
            "at_end": at_end, "can_back": position > 0, "can_step": not at_end,
            "upcoming": upcoming or "", "upcoming_node": node_id(snap, upcoming, view),
            "policy": policy, "truncated": truncated,
            "label": f"step {position} / {maximum}" + ("" if done else "+")}


def _age(age: float, backend: str) -> str:
    if backend == "step":
        n = round(age)
        return f"{n} step" + ("" if n == 1 else "s")
    return f"{age:.2f} s" if age < 10 else f"{age:.0f} s"


def queue_rows(queued: Sequence[Any], backend: str) -> list[dict[str, Any]]:
    """Queue contents as table rows, oldest first: position, packet, key, sender, age."""
    return [{"n": i + 1, "kind": q.kind,
             "packet": q.payload if q.seq is None else f"#{q.seq} {short_repr(q.payload, 30)}",
             "key": q.key or "", "sender": q.sender or "", "age": _age(q.age, backend)}
            for i, q in enumerate(queued)]


def breakpoint_view(hit: Any, queued: Sequence[Any], snap: JobSnapshot, view: str) -> dict[str, Any]:
    """Where and why the job is held, and what waits in that instance's queue ({} without a hit)."""
    if hit is None:
        return {}
    packet = f"#{hit.seq} {hit.payload}" if hit.seq is not None else ""
    where = hit.instance + (f" ← {hit.sender}" if hit.sender else "")
    return {"reason": hit.reason, "instance": hit.instance, "operator": hit.node,
            "node": node_id(snap, hit.instance, view), "sender": hit.sender or "",
            "edge": edge_id(snap, hit.sender, hit.instance, view), "packet": packet,
            "step": hit.step, "where": where, "queue": queue_rows(queued, snap.backend),
            "queue_title": f"Input queue of {hit.instance}, oldest first ({len(queued)} shown)"}
