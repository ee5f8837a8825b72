"""The stall watch: a running job in which nothing has moved for a while although an instance
waits for room in a full queue.

That is a deadlock (a function waiting for packets queued behind the one it holds, as a join
that reads its build side first) or a function that hangs; a slow function looks the same
for as long as it takes. So by default the job only says so, once: a :class:`StallWarning`,
``job.stall`` and the inspector's status line name the waiting instances, the full queues
and the instances holding them. ``p.run(stall_timeout=s)`` fails the job instead when
nothing moved for ``s`` seconds (:class:`StallError`, in the instance that holds the rest).

>>> from sage_nb.metrics import ConnectionSnapshot, JobSnapshot, TaskSnapshot
>>> def task(name, state, n):
...     return TaskSnapshot(name, name[:-3], 0, "map", state, n, n, 0.0, 0.0, 0, 1, None, None)
>>> edge = ConnectionSnapshot("src[0]", "join[0]", "src", "join", 0, 0, 0, "round_robin",
...                           None, 5, 0, "q", 2, 2)
>>> def snap(n):
...     return JobSnapshot("j", "p", "threads", "RUNNING", 1.0, (), (),
...                        (task("src[0]", "backpressured", n), task("join[0]", "busy", 3)), (edge,))
>>> watch = StallWatch()
>>> watch.observe(snap(5), now=0.0) is None   # the first reading: nothing to compare yet
True
>>> print(watch.observe(snap(5), now=12.0))
nothing moved for 12 s: join[0] is busy (in its function); src[0] waits for room in join[0]'s full queue (2/2)
>>> watch.observe(snap(6), now=13.0) is None  # a packet moved
True
>>> watch.observe(snap(6), now=30.0).culprit
'join[0]'
>>> starting = JobSnapshot("j", "p", "ray", "RUNNING", 1.0, (), (),
...                        (task("src[0]", "backpressured", 6), task("join[0]", "starting", 0)), (edge,))
>>> watch.observe(starting, now=40.0) is None, watch.observe(starting, now=60.0) is None  # (start-up)
(True, True)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import StallError, StallWarning

if TYPE_CHECKING:  # pragma: no cover
    from ..metrics import JobSnapshot, TaskSnapshot

__all__ = ["STALL_AFTER", "Stall", "StallError", "StallWarning", "StallWatch", "warn"]

STALL_AFTER = 10.0   # seconds without progress before a stalled job is reported
POLL = 1.0           # seconds between two readings of a running job

_DOING = {"busy": "is busy (in its function)", "idle": "is idle", "paused": "is paused",
          "backpressured": "waits too"}


@dataclass(frozen=True)
class Stall:
    """Nothing moved for ``seconds`` although the ``waiting`` instances wait for room in a full
    queue; ``holding``: the instances whose queues those are, and what they do."""

    seconds: float
    waiting: tuple[str, ...]   # "src[0] waits for room in join[0]'s full queue (2/2)"
    holding: tuple[str, ...]   # "join[0] is busy (in its function)"
    culprit: str               # the instance that holds the rest (not waiting itself)

    def __str__(self) -> str:
        return f"nothing moved for {self.seconds:.0f} s: " + "; ".join(self.holding + self.waiting)

    def advice(self, failing: bool = False) -> str:
        """What to do about it: for the warning, or for the error of ``stall_timeout``."""
        why = f"{self.culprit} may wait for packets queued behind the one it holds (a deadlock) or hang"
        if failing:
            return f"{why}. A function this slow on purpose: pass a longer stall_timeout, or None to only warn"
        return (f"{why}; job.stop() ends the job, p.run(stall_timeout=s) fails such a job by itself. A "
                f"function this slow on purpose is left to finish")


class StallWatch:
    """Compares successive snapshots of one job; :meth:`observe` says whether it stalls."""

    def __init__(self) -> None:
        self._progress: tuple[tuple[int, ...], ...] | None = None
        self._since = 0.0

    def observe(self, snap: JobSnapshot, now: float) -> Stall | None:
        """The stall as of ``now`` (seconds, monotonic), or None: the job moved, is not
        running (paused, ended), or no instance waits for room."""
        progress = tuple((t.packets_in, t.in_bundle, t.packets_out, t.stops_received) for t in snap.tasks)
        if progress != self._progress or snap.status != "RUNNING":
            self._progress, self._since = progress, now
            return None
        tasks = {t.name: t for t in snap.tasks}
        full = [c for c in snap.connections
                if tasks[c.source].state == "backpressured" and c.capacity and c.used >= c.capacity]
        if not full or now <= self._since:
            return None
        waiting = tuple(f"{c.source} waits for room in {c.target}'s full queue ({c.used}/{c.capacity})"
                        for c in full)
        held = [tasks[n] for n in dict.fromkeys(c.target for c in full)]
        if any(t.state == "starting" for t in held):  # (a Ray actor still starting up: not a stall)
            return None
        culprits = [t for t in held if t.state != "backpressured"] or held
        return Stall(now - self._since, waiting, tuple(_doing(t) for t in culprits), culprits[0].name)


def _doing(t: TaskSnapshot) -> str:
    return f"{t.name} {_DOING.get(t.state, 'is ' + t.state)}"


def warn(stall: Stall) -> None:
    warnings.warn(f"job stalled, {stall}. {stall.advice()}", StallWarning, stacklevel=2)
