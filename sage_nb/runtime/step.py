"""The step backend: a deterministic, single-threaded scheduler for teaching and debugging.

``p.run(backend="step")`` compiles the same :class:`~sage_nb.compiler.ExecutionGraph`, with the
same routers, queues and :class:`BaseTask` pieces as the threads backend, but nothing runs until
the user steps: no thread is started. One step moves one packet (or one stop signal) one hop:

- a source emits one item and routes it; or
- an instance takes the head of its input queue, runs the user function on it and routes the
  output(s); or, after its last stop signal, ends its stream (``close()``, then one stop signal
  on each of its connections).

**Readiness.** An instance is ready when it has something to do and every queue it writes into
has room (backpressure: queues keep their bounded capacity). When one input makes more outputs
than a queue has room for (a ``flat_map``), the rest waits in the instance's outbox; the instance
then only delivers (one ``"deliver"`` step per item) until the outbox is empty.

**Policy** (``p.run(backend="step", policy=...)``), among the ready instances:

- ``"round_robin"`` (default): the next ready instance after the one that moved last, in the
  plan's fixed instance order (the compiler's topological order);
- ``"depth_first"``: "follow the packet to the sink": the ready instance furthest downstream
  (longest path from a source), ties broken by the fixed order.

The same input and policy give the same events, every run (packets are numbered per job). When
nothing is ready and the job has not ended, the step is an ``"error"`` event naming what each
instance waits for, and the job fails: a deadlock is reported, never a hang. Services are called
synchronously. Time is counted in steps: snapshots report ``elapsed == 0.0`` and
``extra["step"]``, and a routing decision's ``time`` is the index of its step.
"""

from __future__ import annotations

import itertools
import threading
from typing import TYPE_CHECKING, Any

from ..errors import BackendError, ProtocolError
from ..metrics import ErrorInfo, JobSnapshot
from .dispatcher import Dispatcher
from .recording import RECORD_LIMIT, Recording, StepEvent
from .step_actions import StepActions
from .step_frames import FrameRecorder
from .step_router import StepRouter, StepTrace
from .step_state import StepState

if TYPE_CHECKING:  # pragma: no cover
    from ..compiler import ExecutionGraph
    from .task import BaseTask

__all__ = ["POLICIES", "StepRunner"]

POLICIES = ("round_robin", "depth_first")


class StepRunner(StepActions, Dispatcher):
    """Runs a plan one step at a time in the caller's thread (the runner of ``backend="step"``).

    Offers the :class:`Dispatcher` interface (so ``job.status`` and ``job.results()`` work
    unchanged) plus :meth:`step`, :meth:`run_until`, :meth:`run_to_end`, :meth:`seek`,
    :meth:`snapshot` and :meth:`queue_contents`. ``head`` counts the events so far;
    ``position`` is the state on view (``head`` unless the user went back).
    """

    breakpoints: Any = None   # set by Job.break_when (a sage_nb.runtime.breakpoints.Breakpoints)
    trace: StepTrace          # (the Dispatcher's trace: a StepTrace here)

    def __init__(self, plan: ExecutionGraph, *, policy: str = "round_robin",
                 record_limit: int = RECORD_LIMIT, put_timeout: float | None = None,
                 batch_size: int | None = None, linger: float | None = None) -> None:
        if policy not in POLICIES:
            raise BackendError(f"unknown step policy {policy!r}; use one of {list(POLICIES)}")
        if batch_size not in (None, 1):  # one step moves one packet one hop
            raise BackendError(f"backend='step' moves packets one by one: batch_size must be 1, "
                               f"got {batch_size!r}")
        super().__init__(plan, trace=StepTrace(), batch_size=1, linger=linger)
        self.policy = policy
        self.work: dict[str, Any] = {}   # instance -> its process function or source iterator
        self.state = StepState(self, Recording({}, record_limit))
        for task in self.tasks.values():
            task.router = StepRouter(self.state, task)
            task.router.tracer = self.trace
        self.frames = FrameRecorder(self.state)
        self.order = list(self.tasks)
        self._rank = {n: k for k, n in enumerate(self.order)}
        self._deepest = sorted(self.order, key=lambda n: -self.state.depth[n])   # stable sort
        self.position = self.head = 0
        self.lock = threading.RLock()   # a step and a snapshot never interleave
        self._seq = itertools.count(1)
        self._rr = 0
        self._failure: tuple[BaseTask, BaseException, Any] | None = None   # held by a breakpoint
        self._services_open = False

    @property
    def recording(self) -> Recording:
        return self.state.rec

    # ------------------------------------------------------------------ runner interface
    def start(self) -> None:
        """Nothing runs until the user steps."""

    def drain(self) -> None:
        """Stop the sources and run what was already emitted to the end, here and now."""
        self.control.stopping = True
        with self.lock:
            self.position = self.head
            self.run_to_end(breakpoints=False)

    def cancel(self) -> None:
        with self.lock:
            if self.done.is_set():
                return
            self.cancelled = self.exception is None
            self.control.cancel_all()
            for name, task in self.tasks.items():
                if name not in self.state.ended:
                    task.state = "failed" if task.state == "failed" else "cancelled"
                    task._close(quiet=True)
            self._end_job()

    def snapshot(self) -> JobSnapshot:
        """The snapshot at ``position``: recorded, or read from the live job at the head."""
        with self.lock:
            if self.position < self.head:
                return self.recording.snapshot(self.position)
            return self.state.live_snapshot()

    def queue_contents(self, instance: str, limit: int | None = 20) -> tuple:
        with self.lock:
            return self.state.queue_contents(instance, self.position, limit)

    # ------------------------------------------------------------------ moving
    def step(self, n: int = 1, *, breakpoints: bool = True) -> list[StepEvent]:
        """Up to ``n`` steps; fewer at the end of the job or when a breakpoint fires."""
        out: list[StepEvent] = []
        with self.lock:
            if self.breakpoints is not None:
                self.breakpoints.clear()
            self.control.unpause()
            while len(out) < n:
                ev = self._next()
                if ev is None:
                    break
                out.append(ev)
                if breakpoints and self.hit():
                    break
        return out

    def hit(self) -> bool:
        """Whether a breakpoint holds the job."""
        return self.breakpoints is not None and self.breakpoints.current is not None

    def run_until(self, predicate: Any, max_steps: int | None = None) -> StepEvent | None:
        """Step until ``predicate(event)`` is true (that event is returned), a breakpoint fires
        or the job ends (None); at most ``max_steps`` steps."""
        for _ in range(max_steps) if max_steps is not None else itertools.count():
            got = self.step()
            if not got:
                return None
            if predicate(got[0]):
                return got[0]
            if self.hit():
                return None
        return None

    def run_to_end(self, max_steps: int | None = None, *, breakpoints: bool = True) -> None:
        """Step until the job ends (or a breakpoint fires, or after ``max_steps`` steps)."""
        left = max_steps
        while left is None or left > 0:
            batch = self.step(256 if left is None else min(256, left), breakpoints=breakpoints)
            if left is not None:
                left -= len(batch)
            if not batch or (breakpoints and self.hit()):
                return

    def seek(self, position: int) -> StepEvent | None:
        """View the state after the first ``position`` events; returns the event that led there."""
        with self.lock:
            recorded = len(self.recording.frames) - 1
            if type(position) is not int or not (0 <= position <= recorded or position == self.head):
                raise IndexError(f"position {position!r} is not recorded: use 0..{recorded}"
                                 + (f" or {self.head} (now)" if self.head > recorded else ""))
            self.position = position
            if self.breakpoints is not None:
                self.breakpoints.clear()
            events = self.recording.events
            return events[position - 1] if 0 < position <= len(events) else None

    # ------------------------------------------------------------------ one step
    def _next(self) -> StepEvent | None:
        rec = self.recording
        if self.position < self.head:
            if self.position >= len(rec.events):   # beyond the recording's cap: back to now
                self.position = self.head
            else:
                self.position += 1
                if self.breakpoints is not None:
                    self.breakpoints.replay(self.position)
                return rec.events[self.position - 1]
        if self.done.is_set():
            return None
        self.head = self.position = index = self.head + 1
        self.trace.step = index
        if self.breakpoints is not None:
            self.breakpoints.step = index
        if self._failure is not None:
            self._commit(*self._failure)
        self.state.begin(index)
        name, action = self._pick() if self._open_services() else (None, None)
        if self.done.is_set():   # a service could not start
            assert self.error is not None  # (set with done by _open_services)
            ev = StepEvent(index, "error", self.error.instance, error=self.error.message)
        else:
            ev = (self._act(index, name, action)  # type: ignore[arg-type]  # (set with name)
                  if name else self._deadlock(index))
        if len(self.state.ended) == len(self.order) and not any(
                t.router.outbox for t in self.tasks.values()):
            self._end_job()
        self.frames.record(ev, name)
        return ev

    def upcoming(self) -> str | None:
        """The instance the next step moves (recorded when replaying); None at the end.

        Nothing runs: this is what the scheduler will pick. A source's next item, and where
        the outputs go, are only known once the step runs user code.
        """
        with self.lock:
            if self.position < min(self.head, len(self.recording.events)):
                return self.recording.events[self.position].instance
            if self.done.is_set():
                return None
            return self._pick(commit=False)[0]

    def _pick(self, commit: bool = True) -> tuple[str | None, str | None]:
        """The first ready instance in the policy's order, and what it will do."""
        if self.policy == "depth_first":
            candidates = self._deepest
        else:
            candidates = self.order[self._rr:] + self.order[:self._rr]
        for name in candidates:
            action = self._action(name)
            if action is not None:
                if commit:
                    self._rr = (self._rank[name] + 1) % len(self.order)
                return name, action
        return None, None

    def _action(self, name: str) -> str | None:
        task, st = self.tasks[name], self.state
        out = task.router.outbox
        if out:
            q = out[0][0].queue
            return "deliver" if not 0 < q.maxsize <= len(q.queue) else None
        if name in st.ended:
            return None
        if task.state == "failed":
            if task.ctx.kind == "source" or not task._expected:
                return "finish"
            return "take" if st.has_input(name) else None
        if st.blocked(name):
            return None
        if task.ctx.kind == "source":
            return "emit"
        if not task._expected:
            return "finish"
        return "take" if st.has_input(name) else None

    def _deadlock(self, index: int) -> StepEvent:
        waiting = self.state.waiting()
        message = "deadlock: nothing can move and the job has not ended; " + "; ".join(waiting)
        self.exception = ProtocolError(message)
        first = waiting[0].split(":")[0]
        self.error = ErrorInfo(self.plan.contexts[first].operator, first, message, None, "")
        self._end_job()
        return StepEvent(index, "error", first, error=message)

    def _end_job(self) -> None:
        if self._failure is not None:
            self._commit(*self._failure)
        for runner in self.services.values():
            close = getattr(runner.obj, "close", None)
            if callable(close):
                close()
        self.done.set()
