"""The debugging half of :class:`~sage_nb.runtime.job.Job`: stepping, replay and breakpoints.

Stepping, going back and recordings need ``backend="step"``; breakpoints and queue contents
work on ``"threads"`` and ``"step"``.

>>> import sage_nb as snb
>>> p = snb.Pipeline("doc-step")
>>> p.from_iterable(["a b"], name="lines").flat_map(str.split, name="split").sink(name="out")
Stream('out')
>>> job = p.run(backend="step")
>>> print(job.step())
#1 lines[0] packet #1 'a b' → split[0]
>>> [str(e) for e in job.step(2)]
["#2 split[0] packet #1 'a b' from lines[0] → out[0], out[0]", "#3 out[0] packet #1 'a' from split[0]"]
>>> [p.payload for p in job.queue_contents("out[0]")]
["'b'"]
>>> job.back().index, job.position
(2, 2)
>>> job.run_to_end().results("out")
['a', 'b']
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..communication.packet import Bundle, safe_repr
from ..errors import BackendError

if TYPE_CHECKING:  # pragma: no cover - loaded on first use: `import sage_nb` stays fast
    from pathlib import Path

    from .breakpoints import Breakpoint, BreakpointHit, Breakpoints
    from .job import Job
    from .recording import QueuedPacket, Recording, StepEvent
    from .step import StepRunner

__all__ = ["DebugControls"]


class DebugControls:
    """Mixed into ``Job``; reads ``self.runner``, ``self.plan``, ``self.backend``."""

    runner: Any
    plan: Any
    backend: str
    _bps: Breakpoints | None = None

    if TYPE_CHECKING:  # the job's (Job)
        @property
        def job_id(self) -> str: ...

        def stop(self, drain: bool = False, timeout: float | None = None) -> Job: ...

        def _raise_if_failed(self) -> None: ...

    # ------------------------------------------------------------------ stepping (step backend)
    def step(self, n: int | None = None) -> StepEvent | list[StepEvent] | None:
        """Move one packet one hop and return the :class:`StepEvent` (None once the job ended).

        ``step(n)`` makes up to ``n`` steps and returns their list (shorter at the end or when a
        breakpoint fires). After :meth:`back` or :meth:`seek`, stepping replays the recording.
        """
        if n is None:
            got = self._stepper().step(1)
            return got[0] if got else None
        if type(n) is not int or n < 0:
            raise ValueError(f"step(n) needs an int n >= 0, got {n!r}")
        return self._stepper().step(n)

    def run_until(self, predicate: Callable[[StepEvent], Any], *,
                  max_steps: int | None = None) -> StepEvent | None:
        """Step until ``predicate(event)`` is true and return that event; None if the job ended,
        a breakpoint fired (see :attr:`breakpoint_hit`) or ``max_steps`` passed first.
        For example ``job.run_until(lambda e: e.instance == "count[2]" and e.kind == "packet")``.
        """
        return self._stepper().run_until(predicate, max_steps)

    def run_to_end(self, *, max_steps: int | None = None) -> Any:
        """Step until the job ends, a breakpoint fires, or after ``max_steps`` steps; returns the job."""
        self._stepper().run_to_end(max_steps)
        return self

    def back(self, n: int = 1) -> StepEvent | None:
        """Show the state ``n`` events earlier; returns the event that led there (None at 0)."""
        r = self._stepper()
        return r.seek(max(0, r.position - n))

    def seek(self, position: int) -> StepEvent | None:
        """Show the state after the first ``position`` events (0: before the first).

        ``job.snapshot()`` and ``job.queue_contents()`` then describe that state exactly;
        stepping continues from it by replaying the recording, then runs live again.
        ``job.status`` and ``job.results()`` always describe the job now.
        """
        return self._stepper().seek(position)

    def upcoming(self) -> str | None:
        """The instance the next :meth:`step` moves, without moving it (None at the end):
        ask "where will this packet go?", then step and compare with ``event.targets``."""
        return self._stepper().upcoming()

    @property
    def position(self) -> int:
        """How many events the state on view has applied (every event so far, unless you went back)."""
        return self._stepper().position

    def recording(self) -> Recording:
        """The events so far and the state after each (``snapshot(i)``, ``queue_contents``)."""
        return self._stepper().recording

    def save_recording(self, path: str | Path) -> Path:
        """Write the recording as JSON; ``sage_nb.load_recording(path)`` reads it, without the code."""
        r = self._stepper()
        with r.lock:
            return r.recording.save(path)

    def _stepper(self) -> StepRunner:
        from .step import StepRunner

        if not isinstance(self.runner, StepRunner):
            raise BackendError(f"stepping and recordings need a step job: p.run(backend='step'); "
                               f"this job runs on backend={self.backend!r}")
        return self.runner

    def _wait_step(self, timeout: float | None) -> Any:
        """``job.wait()`` on the step backend: run the job to its end here, ignoring breakpoints."""
        r = self._stepper()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            r.seek(r.head)
            while not r.done.is_set():
                r.step(64, breakpoints=False)
                if deadline is not None and time.monotonic() >= deadline and not r.done.is_set():
                    raise TimeoutError(f"job {self.job_id!r} still running after {timeout} s; "
                                       f"call job.stop() to end it")
        except KeyboardInterrupt:
            self.stop(drain=False)
            raise
        self._raise_if_failed()
        return self

    # ------------------------------------------------------------------ breakpoints (threads, step)
    def break_when(self, *, packet: Callable[[Any], Any] | None = None, first_packet: Any = None,
                   load_above: float | None = None, error: bool = False,
                   on: str | None = None) -> Breakpoint:
        """Pause the job when a condition holds (exactly one of them); returns a :class:`Breakpoint`.

        ``packet=pred`` (a packet with ``pred(packet)`` true enters a queue), ``first_packet=``
        a node, an instance or a ``(source, target)`` connection, ``load_above=0.8`` (a queue at
        least that full), ``error=True`` (pause instead of failing); ``on=`` a node or instance
        restricts ``packet``, ``load_above`` and ``error``. See :mod:`sage_nb.runtime.breakpoints`.
        On threads, start the job with ``p.run(paused=True)``, set breakpoints, then ``resume()``.
        """
        if not error and self.backend == "threads" and self.plan.options.get("chained"):
            raise BackendError(
                "packet, first_packet and load_above breakpoints watch packets entering queues, and "
                "a chained operator (chain=True) gets its packets without one: run the pipeline "
                "with chain=False to set them (error=True works with chaining)")
        if self._bps is None:
            from .breakpoints import Breakpoints

            if self.backend not in ("threads", "step"):
                raise BackendError(f"breakpoints need backend='threads' or 'step', not {self.backend!r}")
            self._bps = Breakpoints(self.plan, self.runner, blocking=self.backend == "threads")
            if self.backend == "step":
                self.runner.breakpoints = self._bps
        return self._bps.add(packet=packet, first_packet=first_packet, load_above=load_above,
                             error=error, on=on)

    @property
    def breakpoint_hit(self) -> BreakpointHit | None:
        """Why the job is paused at a breakpoint (instance, packet, reason), or None."""
        return None if self._bps is None else self._bps.current

    def queue_contents(self, instance: str, limit: int | None = 20) -> tuple[QueuedPacket, ...]:
        """The packets waiting in ``instance``'s input queue, oldest first (at most ``limit``)."""
        if self.backend == "step":
            return self.runner.queue_contents(instance, limit)
        ctx = self.plan.contexts.get(instance)
        if ctx is None or ctx.input_qd is None:
            raise (KeyError if ctx is None else ValueError)(
                f"no input queue for {instance!r}; instances with one: "
                f"{sorted(n for n, c in self.plan.contexts.items() if c.input_qd is not None)}")
        from .recording import QueuedPacket

        peek = getattr(ctx.input_qd.queue_instance, "peek", None)
        if peek is None:
            raise BackendError(f"queue_contents needs backend='threads' or 'step', not {self.backend!r}")
        n = limit or 1 << 30
        task = getattr(self.runner, "tasks", {}).get(instance)  # a batch it took as the job paused: first
        held = [p for m in (task.held if task is not None else ()) for p in
                (m.packets() if m.__class__ is Bundle else (m,))]
        now = time.monotonic()
        return tuple(_queued(QueuedPacket, item, now) for item in (held + peek(n))[:n])


def _queued(make: type[QueuedPacket], item: Any, now: float) -> QueuedPacket:
    if not hasattr(item, "seq"):   # a stop signal
        return make(None, "stop", f"stop from {item.sender}", item.sender, item.input_index,
                            None, 0.0)
    key = safe_repr(item.partition_key, 80) if item.partition_strategy is not None else None
    return make(item.seq, "packet", safe_repr(item.payload, 80), None, item.input_index, key,
                        max(0.0, now - item.created))
