"""Hand-built snapshots and a fake job for the inspector tests (plus checks of the fakes).

``make_snapshot`` builds a consistent :class:`JobSnapshot` (every upstream instance is
connected to every downstream instance, queues shared per target instance) from a few
arguments; ``FakeJob`` hands out snapshots the way ``Job.snapshot()`` does and records
``pause()`` / ``resume()`` calls.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sage_nb.communication.local_queue import QueueStats
from sage_nb.communication.router import RoutingDecision
from sage_nb.metrics import (
    ConnectionSnapshot,
    ErrorInfo,
    JobSnapshot,
    OperatorSnapshot,
    TaskSnapshot,
)

HOSTILE = "<img src=x onerror=alert(1)>"
SCRIPT_END = "</script><b>x</b>"

OPS = (("src", "source", 1), ("count", "map", 4), ("out", "sink", 1))
EDGES = (("src", "count", "hash", "word", 0), ("count", "out", "round_robin", None, 0))


def make_snapshot(*, ops: Sequence[tuple[str, str, int]] = OPS,
                  edges: Sequence[tuple[str, str, str, str | None, int]] = EDGES,
                  status: str = "RUNNING", elapsed: float = 1.0, job_id: str = "fake-1",
                  states: dict[str, str] | None = None, used: dict[str, int] | None = None,
                  capacity: int | None = 100, sent: dict[str, int] | None = None,
                  stops: dict[str, tuple[int, int]] | None = None,
                  top_keys: dict[str, tuple[tuple[str, int], ...]] | None = None,
                  blocked: dict[str, float] | None = None,
                  trace: Sequence[RoutingDecision] = (), error: ErrorInfo | None = None,
                  stall: str | None = None) -> JobSnapshot:
    """A snapshot of ``ops`` (name, kind, parallelism) joined by ``edges`` (all-to-all per edge).

    ``used``: queue fill per instance; ``sent``: packets per connection id ``"a[0]->b[1]"``.
    """
    states, used, sent = states or {}, used or {}, sent or {}
    stops, top_keys, blocked = stops or {}, top_keys or {}, blocked or {}
    instances = {name: tuple(f"{name}[{i}]" for i in range(n)) for name, _, n in ops}
    kinds = {name: kind for name, kind, _ in ops}
    conns = []
    for src, dst, strategy, key_label, inp in edges:
        for s in instances[src]:
            for j, t in enumerate(instances[dst]):
                conns.append(ConnectionSnapshot(
                    s, t, src, dst, 0, j, inp, strategy, key_label, sent.get(f"{s}->{t}", 0), 0,
                    f"{t}.in", used.get(t, 0), capacity))
    tasks = []
    for name, kind, _ in ops:
        for i, inst in enumerate(instances[name]):
            incoming = [c for c in conns if c.target == inst]
            queue = None if kind == "source" else QueueStats(
                used.get(inst, 0), capacity, used.get(inst, 0), sum(c.packets_sent for c in incoming),
                sum(c.packets_sent for c in incoming) - used.get(inst, 0))
            r, e = stops.get(inst, (0, len(incoming)))
            tasks.append(TaskSnapshot(
                inst, name, i, kind, states.get(inst, "busy"), sum(c.packets_sent for c in incoming),
                sum(c.packets_sent for c in conns if c.source == inst), 0.1 * elapsed,
                blocked.get(inst, 0.0), r, e, queue, None if queue is None else f"{inst}.in",
                top_keys.get(inst, ()), ("'w1'", "'w2'"), None))
    operators = tuple(OperatorSnapshot(n, kinds[n], len(instances[n]), instances[n]) for n, _, _ in ops)
    return JobSnapshot(job_id, "fakepipe", "threads", status, elapsed, operators, tuple(edges), tuple(tasks),
                       tuple(conns), tuple(trace), 0, error, stall=stall)


def decision(seq: int, sender: str, group: str, strategy: str, *, key: Any = None, size: int = 4,
             chosen: Sequence[int] = (0,), rr: tuple[int, int] | None = None,
             targets: Sequence[str] | None = None) -> RoutingDecision:
    from sage_nb.communication.partition import stable_hash

    targets = tuple(targets) if targets is not None else tuple(f"{group}[{i}]" for i in chosen)
    return RoutingDecision(seq, sender, group, strategy, key, stable_hash(key) if strategy == "hash" else None,
                           size, tuple(chosen), targets, rr[0] if rr else None, rr[1] if rr else None, 0.0)


def finished(snap: JobSnapshot) -> JobSnapshot:
    """The same job, ended: every task finished, every queue empty."""
    tasks = tuple(replace(t, state="finished", stops_received=t.stops_expected,
                          queue=None if t.queue is None else replace(t.queue, used=0)) for t in snap.tasks)
    conns = tuple(replace(c, used=0) for c in snap.connections)
    return replace(snap, status="FINISHED", elapsed=snap.elapsed + 1, tasks=tasks, connections=conns)


class FakeJob:
    """Stands in for ``sage_nb.runtime.job.Job``: ``snapshot()`` returns ``current`` (which a
    test replaces), ``finish()`` switches to the final snapshot and makes ``done`` true."""

    def __init__(self, snap: JobSnapshot | None = None, job_id: str = "fake-1") -> None:
        self.job_id = job_id
        self.pipeline_name = "fakepipe"
        self.current = snap or make_snapshot(job_id=job_id)
        self.calls = 0
        self.actions: list[str] = []
        self.polled = threading.Event()      # set on every snapshot() call
        self._done = threading.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def paused(self) -> bool:
        return self.current.status == "PAUSED"

    def snapshot(self) -> JobSnapshot:
        self.calls += 1
        self.polled.set()
        return self.current

    def finish(self) -> None:
        self.current = finished(self.current)
        self._done.set()

    def pause(self) -> None:
        self.actions.append("pause")
        self.current = replace(self.current, status="PAUSED")

    def resume(self) -> None:
        self.actions.append("resume")
        self.current = replace(self.current, status="RUNNING")


# ----------------------------------------------------------------------------- checks of the fakes
def test_make_snapshot_is_consistent():
    snap = make_snapshot(used={"count[1]": 7}, sent={"src[0]->count[1]": 9})
    assert [t.name for t in snap.tasks] == ["src[0]", "count[0]", "count[1]", "count[2]", "count[3]", "out[0]"]
    assert len(snap.connections) == 4 + 4
    assert snap.task("count[1]").queue.used == 7
    assert snap.task("count[1]").packets_in == 9
    assert snap.task("out[0]").stops_expected == 4


def test_fake_job_finishes():
    job = FakeJob()
    assert not job.done and job.snapshot().status == "RUNNING"
    job.finish()
    assert job.done and job.snapshot().status == "FINISHED"
    assert {t.state for t in job.snapshot().tasks} == {"finished"}
