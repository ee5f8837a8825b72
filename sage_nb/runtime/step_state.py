"""The bookkeeping of a step job: queue logs, step events, task states, live snapshots.

:class:`StepState` keeps, for the :class:`~sage_nb.runtime.step.StepRunner`, an append-only log of
every item that entered each queue: a queue's contents at any position are a slice of its log,
between the ``total_out`` and ``total_in`` of its statistics. Step mode is single-threaded, so
queue sizes are read without taking the queue's lock.
"""

from __future__ import annotations

import queue
from typing import TYPE_CHECKING, Any

from ..communication.packet import StopSignal, safe_repr
from ..errors import BackendError, DeliveryError, error_line
from ..metrics import ConnectionSnapshot, JobSnapshot, TaskSnapshot
from .recording import Recording, StepEvent, queue_of, queued

if TYPE_CHECKING:  # pragma: no cover
    from .step import StepRunner

__all__ = ["StepState"]


def label(item: Any) -> str:
    """How an item in a queue is shown: its payload's repr (80 characters), or "stop"."""
    return "stop" if item.__class__ is StopSignal else safe_repr(item.payload, 80)


class StepState:
    """Queues, logs and snapshots of one step job; ``rec`` is its :class:`Recording`."""

    def __init__(self, runner: StepRunner, rec: Recording) -> None:
        import networkx as nx

        from .job import plan_snapshot

        self.runner = runner
        plan = runner.plan
        self.rec = rec
        self.ended: set[str] = set()
        level: dict[str, int] = {}
        for op in nx.topological_sort(plan.logical):
            level[op] = max((level[u] + 1 for u in plan.logical.predecessors(op)), default=0)
        self.depth = {n: level[c.operator] for n, c in plan.contexts.items()}
        self.qds = {n: c.input_qd for n, c in plan.contexts.items() if c.input_qd}
        self.queues = {n: qd.queue_instance for n, qd in self.qds.items()}
        if not all(isinstance(q, queue.Queue) for q in self.queues.values()):
            raise BackendError("backend='step' needs in-process queues (the default queue_factory)")
        self.qid = {n: qd.queue_id for n, qd in self.qds.items()}
        self.owner = {q: n for n, q in self.qid.items()}
        self.taken = dict.fromkeys(self.owner, 0)
        self.order = list(runner.tasks)
        self.outputs = {n: list({id(c.queue): c.queue for c in t.router.connections}.values())
                        for n, t in runner.tasks.items()}   # the queues each instance writes into
        self.conns = [(c, t, g) for t in runner.tasks.values() for g in t.router.groups
                      for c in g.connections]
        base = plan_snapshot(plan, fused=False)  # a chained edge is a queue here
        rec.shape = {"job_id": plan.job_id, "pipeline": plan.pipeline, "policy": runner.policy,
                     "plan": plan.to_dict(), "operators": base.operators,
                     "logical_edges": base.logical_edges, "instances": self.order,
                     "queues": dict(self.qid)}
        rec.queue_log = {q: [] for q in self.owner}
        self.step = 0
        self.routed_to: list[tuple[str, str]] = []
        self._taken: tuple[str, str] | None = None   # (sender, queue id) of this step's item

    # ------------------------------------------------------------------ queues
    def has_input(self, name: str) -> bool:
        q = self.queues.get(name)   # sources have none
        return q is not None and len(q.queue) > 0

    def blocked(self, name: str) -> bool:
        """True when a queue ``name`` writes into is full (backpressure)."""
        return any(0 < q.maxsize <= len(q.queue) for q in self.outputs[name])

    def enqueue(self, sender: str, conn: Any, item: Any, text: str) -> None:
        qid = conn.queue_descriptor.queue_id
        try:
            conn.queue.put(item, False)
        except queue.Full:
            raise DeliveryError(f"{sender} -> {conn.target_name}: queue {qid!r} refused a put although "
                                f"it had room; backend='step' needs queues that accept when not full"
                                ) from None
        self.rec.queue_log[qid].append(_entry(item, sender, self.step, text))
        self.runner.frames.dirty.add(qid)

    def deliver(self, name: str, conn: Any, item: Any) -> dict[str, Any]:
        """Move an outbox item into its queue; the fields of the ``"deliver"`` event."""
        text = label(item)
        self.enqueue(name, conn, item, text)
        return {**self.describe(item, "deliver"), "targets": (conn.target_name,), "outputs": (text,)}

    def routed(self, conn: Any, item: Any) -> str:
        """A delivery decided in this step (entering the queue now or waiting in the outbox)."""
        text = label(item)
        self.routed_to.append((conn.target_name, text))
        return text

    def take(self, name: str) -> Any:
        qid = self.qid[name]
        item = self.queues[name].get(False)
        self._taken = (self.rec.queue_log[qid][self.taken[qid]][3], qid)
        self.taken[qid] += 1
        self.runner.frames.dirty.add(qid)
        return item

    def queue_contents(self, instance: str, position: int, limit: int | None) -> tuple:
        if position < self.runner.head:
            return self.rec.queue_contents(instance, position, limit)
        qid = queue_of(self.rec.shape, instance)
        return queued(self.rec.queue_log[qid][self.taken[qid]:], position, limit)

    # ------------------------------------------------------------------ events
    def begin(self, index: int) -> None:
        self.step = index
        self.routed_to = []
        self._taken = None
        self.runner.trace.made = []

    def describe(self, item: Any, kind: str) -> dict[str, Any]:
        """The fields of an event about ``item`` (a packet, a stop signal or None)."""
        fields: dict[str, Any] = {"kind": kind}
        if item.__class__ is StopSignal:
            fields["sender"] = item.sender
        elif item is not None and hasattr(item, "seq"):
            fields["seq"], fields["payload"] = item.seq, safe_repr(item.payload, 80)
        if self._taken is not None:
            fields["sender"], fields["queue"] = self._taken
        return fields

    def event(self, index: int, name: str, fields: dict[str, Any]) -> StepEvent:
        made = self.runner.trace.made
        fields = {"targets": tuple(t for t, _ in self.routed_to),
                  "outputs": tuple(o for _, o in self.routed_to),
                  "routes": tuple(f"{d.group}: {d.explain()} → {', '.join(d.targets)}" for d in made),
                  **fields}
        return StepEvent(index, instance=name, **fields)

    # ------------------------------------------------------------------ snapshots
    def status(self) -> str:
        r = self.runner
        if r.exception is not None:
            return "FAILED"
        if r.cancelled:
            return "CANCELLED"
        if r.done.is_set():
            return "FINISHED"
        return "PAUSED" if r.control.paused else "RUNNING"

    def task_state(self, name: str) -> str:
        """``busy`` when it has work (input, items, or its end to run), ``backpressured`` when
        that work waits for room downstream, ``idle``/``draining`` when it has none."""
        t = self.runner.tasks[name]
        if t.state in ("failed", "cancelled"):
            return t.state
        if name in self.ended:
            return "finished"
        if name not in self.runner.work:
            return "starting"
        work = t.ctx.kind == "source" or not t._expected or self.has_input(name)
        if t.router.outbox or (work and self.blocked(name)):
            return "backpressured"
        if work:
            return "busy"
        return "draining" if t._seen else "idle"

    def task_snapshot(self, name: str, stats: Any, keys: tuple | None = None,
                      last: tuple | None = None) -> TaskSnapshot:
        """``name`` now; ``keys``/``last`` (top keys, latest payloads) are read when not given."""
        t = self.runner.tasks[name]
        ctx = t.ctx
        return TaskSnapshot(
            name, ctx.operator, ctx.parallel_index, ctx.kind, self.task_state(name), t.packets_in,
            sum(c.packets_sent for c in t.router.connections), 0.0, 0.0, t.stops_received,
            ctx.stop_signal_num, stats, self.qid.get(name), t.top_keys() if keys is None else keys,
            t.last_packets() if last is None else last,
            None if t.error is None else error_line(t.error))

    def conn_snapshot(self, k: int, stats: Any) -> ConnectionSnapshot:
        c, t, g = self.conns[k]
        return ConnectionSnapshot(
            c.source_name, c.target_name, t.ctx.operator, g.target, c.broadcast_index, c.parallel_index,
            c.target_input_index, g.strategy, getattr(g.key, "__name__", None) if g.key else None,
            c.packets_sent, c.stops_sent, c.queue_descriptor.queue_id, stats.used, stats.capacity)

    def live_snapshot(self) -> JobSnapshot:
        """Read every task and connection now (what a recorded frame must equal)."""
        s, r = self.rec.shape, self.runner
        stats = {n: qd.statistics() for n, qd in self.qds.items()}
        tasks = tuple(self.task_snapshot(n, stats.get(n)) for n in self.order)
        links = tuple(self.conn_snapshot(k, stats[c.target_name])
                      for k, (c, _, _) in enumerate(self.conns))
        return JobSnapshot(s["job_id"], s["pipeline"], "step", self.status(), 0.0, s["operators"],
                           s["logical_edges"], tasks, links, r.trace.latest(), 0, r.error,
                           {"step": r.head, "policy": s["policy"]})

    def waiting(self) -> list[str]:
        """What each unfinished instance waits for (the text of a deadlock report)."""
        out = []
        for name in self.order:
            t = self.runner.tasks[name]
            if t.router.outbox:
                out.append(f"{name}: its outbox waits for room in {t.router.outbox[0][0].target_name}")
            elif name not in self.ended:
                senders = sorted(s for s, _ in t._expected)
                out.append(f"{name}: waits for stop signals from {senders}" if senders
                           else f"{name}: waits for room downstream")
        return out


def _entry(item: Any, sender: str, step: int, text: str) -> tuple:
    if item.__class__ is StopSignal:
        return (None, "stop", f"stop from {item.sender}", item.sender, step, item.input_index, None)
    key = safe_repr(item.partition_key, 80) if item.partition_strategy is not None else None
    return (item.seq, "packet", text, sender, step, item.input_index, key)
