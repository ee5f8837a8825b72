"""What a step-mode inspector watches: a step job (``backend="step"``) or a loaded recording.

:class:`StepSource` is a :class:`~sage_nb.inspector.source.Source` that can also move. On a
job, ``step()`` and ``seek(i)`` call ``job.step()`` and ``job.seek(i)`` (so a cell that steps
the job and the widget's buttons move the same cursor); on a
:class:`~sage_nb.runtime.recording.Recording` they move a cursor of its own over the recorded
frames: a read-only replay that needs none of the pipeline's code.

Like every source it reads through the job's public API only: ``snapshot()``, ``position``,
``recording()``, ``upcoming()``, ``breakpoint_hit`` and ``queue_contents()``.
"""

from __future__ import annotations

import threading
from typing import Any

from ..metrics import JobSnapshot
from .source import Source

__all__ = ["StepSource", "is_recording", "is_step_job"]


def is_step_job(target: Any) -> bool:
    """True for a job of ``backend="step"``."""
    return getattr(target, "backend", None) == "step" and callable(getattr(target, "recording", None))


def is_recording(target: Any) -> bool:
    """True for a :class:`~sage_nb.runtime.recording.Recording` (recorded or loaded)."""
    from ..runtime.recording import Recording

    return isinstance(target, Recording)


class StepSource(Source):
    """A step job or a recording, seen one position at a time (``position`` events applied).

    ``read()`` returns a snapshot when anything visible changed since the last one (the
    position, the events recorded, the end of the job, a breakpoint); ``finished`` is true
    once nothing can change by itself: the job ended (or it is a recording) and Play is off.
    """

    shares_cpu = False   # a step job only moves when stepped: Play may use the time it needs

    def __init__(self, target: Any) -> None:
        self._job = None if is_recording(target) else target
        self.rec = target if self._job is None else target.recording()
        self.readonly = self._job is None
        job_id = self.rec.shape["job_id"]
        self.key = f"recording:{job_id}:{id(target)}" if self.readonly else f"job:{job_id}"
        self.label = str(self.rec.shape["pipeline"])
        self.policy = str(self.rec.shape.get("policy", ""))
        self.playing = False
        self._pos = 0                 # the recording's own cursor (a job keeps its own)
        self._head = 0                # the furthest position seen (beyond a full recording: now)
        self._mark: tuple[Any, ...] | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ where we are
    def job(self) -> Any:
        return self._job

    @property
    def position(self) -> int:
        return self._pos if self._job is None else int(self._job.position)

    @property
    def length(self) -> int:
        """Events recorded so far (all of a loaded recording's)."""
        return len(self.rec.events)

    @property
    def maximum(self) -> int:
        """The scrubber's end: the last position that can be shown."""
        self._head = max(self._head, self.length, self.position)
        return self._head

    @property
    def done(self) -> bool:
        """True when no further event can be recorded (the job ended; always for a recording)."""
        return self._job is None or bool(self._job.done)

    @property
    def at_end(self) -> bool:
        return self.done and self.position >= self.maximum

    @property
    def finished(self) -> bool:  # type: ignore[override]
        return self.done and not self.playing

    @property
    def plan(self) -> dict[str, Any]:
        """The compiled plan as data (``ExecutionGraph.to_dict()``), kept in the recording."""
        return self.rec.shape.get("plan") or {}

    def event(self, position: int | None = None) -> Any:
        """The event that led to ``position`` (default: the current one); None at 0."""
        i = self.position if position is None else position
        return self.rec.events[i - 1] if 0 < i <= len(self.rec.events) else None

    def next_event(self) -> Any:
        """The event the next step replays, when it is recorded (else None: it is not known yet)."""
        i = self.position
        return self.rec.events[i] if 0 <= i < len(self.rec.events) else None

    def upcoming(self) -> str | None:
        """The instance the next step moves (None at the end)."""
        if self._job is not None:
            return self._job.upcoming()
        nxt = self.next_event()
        return None if nxt is None else nxt.instance

    # ------------------------------------------------------------------ moving
    def step(self) -> Any:
        """One step forward; the event, or None at the end."""
        with self._lock:
            if self._job is not None:
                return self._job.step()
            if self._pos >= self.length:
                return None
            self._pos += 1
            return self.rec.events[self._pos - 1]

    def seek(self, position: int) -> None:
        """Show the state after the first ``position`` events (clamped to what is recorded:
        past a full recording's last event, only the job's present can be shown)."""
        if isinstance(position, bool) or not isinstance(position, int):
            raise TypeError(f"seek() needs an int position, not {position!r}")
        with self._lock:
            target = max(0, min(position, self.maximum))
            if self.length < target < self.maximum:
                target = self.length
            if self._job is None:
                self._pos = target
            elif target != self.position:
                self._job.seek(target)

    # ------------------------------------------------------------------ reading
    def snapshot(self) -> JobSnapshot:
        with self._lock:
            if self._job is not None:
                return self._job.snapshot()
            return self.rec.snapshot(self._pos)

    def snapshot_at(self, position: int) -> JobSnapshot:
        """The recorded snapshot at ``position``, without moving (for the HTML player)."""
        return self.rec.snapshot(position)

    def queue_contents(self, instance: str, limit: int | None = 20) -> tuple[Any, ...]:
        """What waits in ``instance``'s input queue at the current position, oldest first."""
        try:
            if self._job is not None:
                return tuple(self._job.queue_contents(instance, limit))
            return tuple(self.rec.queue_contents(instance, self._pos, limit))
        except (KeyError, ValueError, IndexError):   # a source has no queue
            return ()

    def halt(self) -> tuple[Any, tuple[Any, ...]] | None:
        if self._job is None:
            return None
        hit = getattr(self._job, "breakpoint_hit", None)
        return None if hit is None else (hit, self.queue_contents(hit.instance))

    def _now(self) -> tuple[Any, ...]:
        job = self._job
        if job is None:
            return (self._pos,)
        return (job.position, self.length, bool(job.done), bool(job.paused), job.breakpoint_hit)

    def changed(self) -> bool:
        return self._now() != self._mark

    def invalidate(self) -> None:
        """Forget what was shown: the next ``read()`` returns a snapshot."""
        self._mark = None

    def read(self) -> JobSnapshot | None:
        with self._lock:
            now = self._now()
            if now == self._mark:
                return None
            self._mark = now
            return self.snapshot()

    def control(self, action: str) -> None:
        """'resume' releases a breakpoint hit; stepping itself never pauses the job."""
        if action == "resume" and self._job is not None and not self._job.done:
            self._job.resume()
