"""Micro-batching options, and the flusher that bounds how long a routed packet may wait.

On the threads backend a router buffers the packets it routes to each connection and
ships a buffer with one put when it holds ``batch_size`` packets, when its task is about
to wait for input, before a pause and before the stop signals. Light traffic never waits
for a full batch: a task ships to a receiver that is waiting for input at once, and the
job's :class:`Flusher` ships whatever waited ``linger`` seconds (a slow source, slow user
code). ``batch_size=1`` routes and delivers packet by packet (the teaching view). On a
round-robin or ``key_by`` edge between thread tasks, an in-memory source's chunk, the items a
generator source gathered and a map's or filter's output for them travel as one
:class:`~sage_nb.communication.packet.Bundle` entry (plain payloads, trace ids, keys) instead.

>>> check_batching(None, None)
(1024, 0.005)
>>> check_batching(0, None)
Traceback (most recent call last):
...
sage_nb.errors.BackendError: batch_size must be an int in [1, 65536], got 0; use batch_size=1 to deliver packet by packet
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..communication.local_queue import QueueShutDown
from ..errors import BackendError, Cancelled

if TYPE_CHECKING:  # pragma: no cover
    from ..communication.router import BaseRouter
    from .task import BaseTask

__all__ = ["BATCH_MAX", "DEFAULT_BATCH_SIZE", "DEFAULT_LINGER", "MAX_BATCH_SIZE", "MAX_LINGER", "QUEUE_BATCHES", "Flusher",
           "check_batching"]

BATCH_MAX = 256            # entries a task takes from its input queue in one call
DEFAULT_BATCH_SIZE = 1024  # packets per connection per put (make bench: 256 reached half the rate)
QUEUE_BATCHES = 16         # batches a queue holds by default: fewer, and the threads hand over at every one
DEFAULT_LINGER = 0.005     # seconds a routed packet may wait for its batch
MAX_BATCH_SIZE = 65_536
MAX_LINGER = 10.0


def check_batching(batch_size: Any, linger: Any) -> tuple[int, float]:
    """The validated ``(batch_size, linger)``; None means the default."""
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE
    if type(batch_size) is not int or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise BackendError(f"batch_size must be an int in [1, {MAX_BATCH_SIZE}], got {batch_size!r}; "
                           f"use batch_size=1 to deliver packet by packet")
    if linger is None:
        linger = DEFAULT_LINGER
    if isinstance(linger, bool) or not isinstance(linger, int | float) or not 0 < linger <= MAX_LINGER:
        raise BackendError(f"linger must be a number of seconds in (0, {MAX_LINGER}], got {linger!r}; "
                           f"e.g. linger=0.002 lets a packet wait at most 2 ms for its batch")
    return batch_size, float(linger)


class Flusher:
    """Ships every buffer that waited ``linger`` seconds: checks twice per ``linger`` while a
    buffer holds packets, and sleeps while none does (a router wakes it when one of its buffers
    stops being empty; :meth:`stop` when the job ends).

    A buffer is shipped when it was not empty at the previous check and no batch left on its
    connection since; a source's gathered items likewise are routed when no bundle of them left
    since (it also looks while a source pulls a slice of items: its code may block mid-slice);
    what a task's user code made of a bundle in hand goes on once it waited ``linger`` (the
    task's code may block in the middle of the bundle).
    The flusher does not wait on a full queue (it puts what fits; gathered items go only when
    every queue of their edge has room for all of them, and only another producer filling one
    meanwhile makes it wait, as cancellably as any put) nor on a router that is shipping: the
    task does that itself. An error while it ships for a router (not a stop) goes to
    ``failed``, which fails the job as that router's task would, and it goes on.
    """

    def __init__(self, routers: list[BaseRouter], linger: float, done: threading.Event,
                 cancel: threading.Event, failed: Callable[[BaseRouter, BaseException], Any] | None = None,
                 tasks: Sequence[BaseTask] = ()) -> None:
        self.routers = routers
        self.tasks = tasks  # their results of a bundle in hand go on too while user code runs
        self.asleep = False  # it waits to be woken (not only for its next look)
        self.failed = failed  # told when shipping for a router raised here (the job fails, naming its task)
        self.tick = linger / 2
        self.done, self.cancel = done, cancel
        self.wake = threading.Event()
        for r in routers:
            r.wake = self.wake.set
        for t in tasks:
            t.poke = self.poke

    def poke(self) -> None:
        """A task has results of a bundle in hand: wake the flusher if it sleeps."""
        if self.asleep:
            self.wake.set()

    def stop(self) -> None:
        """Wake the flusher so that it sees the job ended (``done`` or ``cancel`` is set)."""
        self.wake.set()

    def run(self) -> None:
        seen: dict[int, int] = {}
        # a chained connection is handed over by its sender's thread, never from here
        conns = [(r, c) for r in self.routers for c in r.connections if not c.chained]
        wake, done, cancel = self.wake, self.done, self.cancel
        while not done.is_set() and not cancel.is_set():
            wake.clear()  # before looking: a buffer that fills after the look wakes us
            self.asleep, waiting = True, False  # (so does a task's bundle from now on)
            try:
                for r in self.routers:  # a source's items, kept while it was busy in user code
                    if r.gathered or r.slicing:
                        waiting = True
                        _when_still(seen, r, "gather_routes", lambda r=r: r.route_gathered(block=False))
                for r, c in conns:
                    if c.batch:
                        waiting = True
                        _when_still(seen, c, "batches_sent", lambda r=r, c=c: r._ship(c, block=False))
                for t in self.tasks:  # a map's results of a bundle, made before its code blocked
                    if t._pending is not None:
                        waiting, r = True, t.router
                        t._results_due(False)
            except (Cancelled, QueueShutDown):  # the job is stopping
                return
            except BaseException as exc:  # e.g. a payload's repr for the routing trace, put_timeout
                if self.failed is None:
                    raise
                self.failed(r, exc)
            if waiting:
                self.asleep = False
                done.wait(self.tick)
            else:  # (a second at most: the job's end is seen even without stop())
                wake.wait(1.0)


def _when_still(seen: dict[int, int], what: Any, departures: str, send: Any) -> None:
    """``send()`` if nothing left ``what`` since the previous look (its count of departures,
    the attribute ``departures``, is what it was then)."""
    k = id(what)
    if seen.get(k) == getattr(what, departures):
        send()
    seen[k] = getattr(what, departures)
